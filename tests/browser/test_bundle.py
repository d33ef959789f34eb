"""The static bundle (``python -m avatarplayer.bundle``) served by a plain stdlib HTTP server under a
path prefix, against the real LiveKit server and the real avatar worker: the page boots from the
bundle's own files only, connects with ``?url=&token=``, and the face draws the avatar's speech.

The ``browser_page`` fixture fails the test on any request that leaves loopback.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from avatarplayer import bundle
from tools.realstack import start_worker
from tools.webapp import TokenEndpoint

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "examples" / "static" / "run.py"
BOOT_TIMEOUT_S = 120.0
PREFIX = "apps/avatar"  # the bundle is served below a path prefix: its URLs must all be relative


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's name)
        pass


class TokenHandler(QuietHandler):
    """The static files, and ``POST /api/token`` answered by the demo's endpoint (tools/webapp.py)."""

    endpoint = None

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        if self.path != "/api/token" or self.endpoint is None:
            self.send_error(404)
            return
        status, kind, body = self.endpoint(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def serve_folder(root: Path, handler_class: type = QuietHandler) -> Iterator[str]:
    """``python -m http.server --bind 127.0.0.1`` in a thread: the base URL."""
    handler = functools.partial(handler_class, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="bundle-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def stats(page) -> dict:
    return json.loads(page.evaluate("window.avatarStats ? window.avatarStats() : 'null'") or "null") or {}


def test_the_bundle_page_connects_and_the_face_speaks(livekit_server, browser_page, browser_log, tmp_path: Path):
    started = time.monotonic()
    files = bundle.build(tmp_path / "site" / PREFIX)
    build_s = time.monotonic() - started
    room = f"bundle-{uuid.uuid4().hex[:8]}"
    worker = start_worker(livekit_server, room, tmp_path / "worker", "--mode", "speech", "--text",
                          "Hello! This face is played from a static folder.", "--lead-in-ms", "500")
    token = livekit_server.token(f"viewer-{uuid.uuid4().hex[:8]}", room, can_publish=False,
                                 can_subscribe=True, can_publish_data=True)
    responses: list[tuple[int, str]] = []
    browser_page.on("response", lambda r: responses.append((r.status, r.url)))
    try:
        with serve_folder(tmp_path / "site") as base:
            query = urllib.parse.urlencode({"url": livekit_server.url, "token": token})
            page_url = f"{base}/{PREFIX}/?{query}"
            started = time.monotonic()
            browser_page.goto(page_url, wait_until="domcontentloaded")
            try:
                browser_page.wait_for_function("window.avatarStats !== undefined", timeout=BOOT_TIMEOUT_S * 1000)
                boot_s = time.monotonic() - started
                browser_page.wait_for_function("JSON.parse(window.avatarStats()).state === 'connected'",
                                               timeout=30_000, polling=200)
                browser_page.wait_for_function("JSON.parse(window.avatarStats()).face.framesReceived > 50",
                                               timeout=60_000, polling=200)
            except Exception as exc:
                pytest.fail(f"{type(exc).__name__}: {str(exc).splitlines()[0]}\nstats={stats(browser_page)}\n"
                            f"status={browser_page.locator('#status').inner_text()}\nworker:\n{worker.tail()}",
                            pytrace=False)
            canvas = "document.getElementById('avatar').toDataURL()"
            first = browser_page.evaluate(canvas)
            browser_page.wait_for_timeout(300)
            moved = browser_page.evaluate(canvas) != first
            # the page's CSP lets a worker start from a Blob URL (how the package can start its transform worker)
            blob_worker = browser_page.evaluate("""() => new Promise((resolve) => {
              const url = URL.createObjectURL(new Blob(["postMessage('up')"], {type: "text/javascript"}));
              const worker = new Worker(url);
              worker.onmessage = (e) => resolve(e.data);
              worker.onerror = () => resolve("refused");
              setTimeout(() => resolve("timeout"), 5000);
            })""")
            result = stats(browser_page)
            browser_page.screenshot(path=str(tmp_path / "bundle-page.png"))
            status_line = browser_page.locator("#status").inner_text()
            csp = [line for line in browser_log.console if "Content Security Policy" in line or "EvalError" in line]
    finally:
        worker.stop()

    face, summary = result["face"], result["summary"]
    fetched = sorted({urllib.parse.urlsplit(u).path for s, u in responses if u.startswith(base)})
    print(f"\nscreenshot: {tmp_path / 'bundle-page.png'}\nbundle: {len(files)} files, built in {build_s:.1f} s; page booted in {boot_s:.1f} s; "
          f"fetched {len(fetched)} of them: {fetched}\nface={face}")
    assert status_line == "connected", status_line
    assert blob_worker == "up", blob_worker
    assert result["motionPath"] == "script", result  # the packaged transform worker ran (no fallback)
    assert face["framesReceived"] > 50 and face["decodeErrors"] == 0, face
    assert summary["framesRendered"] > 50 and summary["packetsMalformed"] == 0, summary
    assert moved, "the canvas did not change while the avatar spoke"
    bad = [(s, u) for s, u in responses if s >= 400]
    assert not bad, f"requests failed: {bad}"
    # every file the page fetched came from the bundle, under its prefix
    assert all(p.startswith(f"/{PREFIX}/") for p in fetched), fetched
    assert f"/{PREFIX}/vendor/pyodide/pyodide.asm.wasm" in fetched and any("/wheels/avatarplayer-" in p for p in fetched)
    assert not csp, "\n".join(csp)
    assert not browser_log.off_loopback, browser_log.off_loopback


def test_the_bundle_page_asks_the_token_endpoint_when_it_has_no_url_and_token(livekit_server, browser_page,
                                                                               browser_log, tmp_path: Path):
    """No ``?url=&token=``, an empty form: Connect POSTs to ``--token-endpoint`` (here the demo's
    endpoint, whose JSON names the token ``token``) and connects with its answer."""
    room = f"bundle-{uuid.uuid4().hex[:8]}"
    bundle.build(tmp_path / "site" / PREFIX, token_endpoint="/api/token")
    endpoint = TokenEndpoint(livekit_server, room, room)
    handler = type("Handler", (TokenHandler,), {"endpoint": endpoint})
    worker = start_worker(livekit_server, room, tmp_path / "worker", "--mode", "speech", "--text",
                          "The token came from the endpoint.", "--lead-in-ms", "500")
    try:
        with serve_folder(tmp_path / "site", handler) as base:
            # a plain static server first: no token endpoint there, and the page says so
            browser_page.goto(f"{base}/{PREFIX}/", wait_until="domcontentloaded")
            try:
                browser_page.wait_for_function("window.avatarStats !== undefined", timeout=BOOT_TIMEOUT_S * 1000)
                assert stats(browser_page)["state"] == "disconnected"  # no credentials: it waits for a click
                handler.endpoint = None
                browser_page.click("#connect")
                browser_page.wait_for_function(
                    "document.getElementById('status').textContent.startsWith('could not connect')", timeout=10_000)
                refused = browser_page.locator("#status").inner_text()
                assert browser_page.locator("#connect").is_enabled(), "Connect must be usable again"
                handler.endpoint = endpoint
                browser_page.click("#connect")
                browser_page.wait_for_function("JSON.parse(window.avatarStats()).face.framesReceived > 25",
                                               timeout=60_000, polling=200)
            except Exception as exc:
                pytest.fail(f"{type(exc).__name__}: {str(exc).splitlines()[0]}\nstats={stats(browser_page)}\n"
                            f"status={browser_page.locator('#status').inner_text()}\nworker:\n{worker.tail()}",
                            pytrace=False)
            result = stats(browser_page)
    finally:
        worker.stop()
    assert refused == "could not connect: /api/token answered HTTP 404 without a token: paste a server URL and a token", refused
    assert result["state"] == "connected" and result["face"]["decodeErrors"] == 0, result
    assert not browser_log.off_loopback, browser_log.off_loopback


def test_examples_static_run_py_prints_a_url_that_plays(browser_page, browser_log, tmp_path: Path):
    """``python3 examples/static/run.py`` as a user runs it (minus the set-up, done already): the URL it
    prints plays the demo agent's greeting; no secret on any command line; Ctrl-C stops it all."""
    out = tmp_path / "site"
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, str(RUN), "--port", "0", "--skip-setup", "--out", str(out)],
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        started = time.monotonic()
        url = None
        while url is None and time.monotonic() - started < 120 and process.poll() is None:
            url = next((line.split("open ", 1)[1].strip() for line in log_path.read_text().splitlines()
                        if line.startswith("[static] open http")), None)
            time.sleep(0.2)
        assert url, f"no URL printed:\n{log_path.read_text()}"
        url_s = time.monotonic() - started
        group = subprocess.run(["ps", "-ww", "-o", "args=", "-g", str(process.pid)], capture_output=True, text=True).stdout
        config = next(Path(a.split("--config ", 1)[1].split()[0]) for a in group.splitlines() if "--config " in a)
        secret = config.read_text().split("keys: {", 1)[1].split('"')[1]  # tools/devstack.py's config
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        assert params["url"][0].startswith("ws://127.0.0.1:") and params["token"][0].count(".") == 2, url
        browser_page.goto(url, wait_until="domcontentloaded")
        try:
            browser_page.wait_for_function("window.avatarStats && JSON.parse(window.avatarStats()).face.framesReceived > 25",
                                           timeout=BOOT_TIMEOUT_S * 1000, polling=200)
        except Exception as exc:
            pytest.fail(f"{type(exc).__name__}: {str(exc).splitlines()[0]}\nstats={stats(browser_page)}\n"
                        f"{log_path.read_text()}", pytrace=False)
        result = stats(browser_page)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGINT)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = None
    print(f"\nrun.py printed the URL after {url_s:.1f} s; face={result['face']}")
    assert result["state"] == "connected" and result["face"]["decodeErrors"] == 0, result
    assert code == 0, f"run.py exited with {code} on Ctrl-C:\n{log_path.read_text()}"
    leftover = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-g", str(process.pid)], capture_output=True, text=True).stdout
    assert not leftover.strip(), f"outlived run.py: {leftover}"
    assert "avatar_worker" in group and "livekit-server" in group, group
    assert len(secret) >= 32 and secret not in group, "the API secret is on a command line"
    assert secret not in url and secret not in log_path.read_text()
    assert not browser_log.off_loopback, browser_log.off_loopback
