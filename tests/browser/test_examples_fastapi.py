"""examples/fastapi/run.py as a user runs it (minus the set-up, done already): uvicorn serves the
bundle and ``POST /api/token``; the page, with no ``?url=&token=``, asks that endpoint on Connect,
joins the room and the face draws the real avatar worker's speech.

- local: run.py starts its own LiveKit server and the worker;
- ``--external``: the session's LiveKit server plays the external one (LiveKit Cloud, say); run.py
  gets it only through LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET, AVATAR_ROOM in its
  environment, starts no server and no worker, and the test runs the worker itself.

The ``browser_page`` fixture fails the test on any request that leaves loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.realstack import start_worker

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "examples" / "fastapi" / "run.py"
BOOT_TIMEOUT_S = 120.0
URL_TIMEOUT_S = 120.0


def stats(page) -> dict:
    return json.loads(page.evaluate("window.avatarStats ? window.avatarStats() : 'null'") or "null") or {}


def process_group(pid: int) -> str:
    return subprocess.run(["ps", "-ww", "-o", "args=", "-g", str(pid)], capture_output=True, text=True).stdout


class App:
    def __init__(self, process: subprocess.Popen, log_path: Path) -> None:
        self.process, self.log_path = process, log_path
        self.url: str | None = None
        self.url_s: float | None = None
        self.exit_code: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_app(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[App]:
    """run.py in a session of its own; waits for the URL it prints (fails without one); Ctrl-C at the end."""
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, str(RUN), "--port", "0", "--skip-setup", "--out",
                                    str(tmp_path / "site"), *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    app = App(process, log_path)
    try:
        started = time.monotonic()
        while app.url is None and time.monotonic() - started < URL_TIMEOUT_S and process.poll() is None:
            app.url = next((line.split("open ", 1)[1].strip() for line in app.log().splitlines()
                            if line.startswith("[fastapi] open http")), None)
            time.sleep(0.1)
        if app.url is None:
            pytest.fail(f"run.py printed no URL (exit {process.poll()}):\n{app.log()}", pytrace=False)
        app.url_s = time.monotonic() - started
        yield app
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGINT)
        try:
            app.exit_code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def connect_and_play(page, app: App, responses: list, extra: str = "") -> dict:
    """The page from the app's URL, Connect (the token endpoint), until the face got frames."""
    page.on("response", lambda r: responses.append((r.request.method, r.status, r.url)))
    page.goto(app.url, wait_until="domcontentloaded")
    try:
        page.wait_for_function("window.avatarStats !== undefined", timeout=BOOT_TIMEOUT_S * 1000)
        assert stats(page)["state"] == "disconnected", stats(page)  # no credentials in the URL: it waits
        page.click("#connect")
        page.wait_for_function("JSON.parse(window.avatarStats()).state === 'connected'", timeout=30_000, polling=200)
        page.wait_for_function("JSON.parse(window.avatarStats()).face.framesReceived > 25", timeout=60_000,
                               polling=200)
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__}: {str(exc).splitlines()[0]}\nstats={stats(page)}\n"
                    f"status={page.locator('#status').inner_text()}\nrun.py:\n{app.log()}\n{extra}", pytrace=False)
    result = stats(page)
    result["status"] = page.locator("#status").inner_text()
    return result


def check_played(result: dict, responses: list, base: str) -> None:
    face, summary = result["face"], result["summary"]
    assert result["status"] == "connected" and result["state"] == "connected", result
    assert result["motionPath"] == "script", result  # the packaged transform worker ran (no fallback)
    assert face["framesReceived"] > 25 and face["decodeErrors"] == 0, face
    assert summary["packetsMalformed"] == 0, summary
    token_calls = [(m, s) for m, s, u in responses if u == f"{base}api/token"]
    assert token_calls == [("POST", 200)], responses
    bad = [(s, u) for _, s, u in responses if s >= 400]
    assert not bad, f"requests failed: {bad}"


def test_run_py_serves_the_page_and_the_token_endpoint_with_its_own_server_and_worker(browser_page, browser_log,
                                                                                      tmp_path: Path):
    responses: list = []
    with run_app(tmp_path) as app:
        group = process_group(app.process.pid)
        config = next(Path(a.split("--config ", 1)[1].split()[0]) for a in group.splitlines() if "--config " in a)
        secret = config.read_text().split("keys: {", 1)[1].split('"')[1]  # tools/devstack.py's config
        result = connect_and_play(browser_page, app, responses)
    print(f"\nrun.py printed the URL after {app.url_s:.1f} s; face={result['face']}")
    check_played(result, responses, app.url)
    assert app.url.startswith("http://127.0.0.1:") and "token" not in app.url, app.url
    assert "avatar_worker" in group and "livekit-server" in group and "uvicorn" not in group, group
    assert len(secret) >= 32 and secret not in group, "the API secret is on a command line"
    assert secret not in app.log()
    assert app.exit_code == 0, f"run.py exited with {app.exit_code} on Ctrl-C:\n{app.log()}"
    leftover = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-g", str(app.process.pid)], capture_output=True,
                              text=True).stdout
    assert not leftover.strip(), f"outlived run.py: {leftover}"
    assert not browser_log.off_loopback, browser_log.off_loopback


def test_run_py_external_uses_only_the_environments_server(livekit_server, browser_page, browser_log, tmp_path: Path):
    room = f"fastapi-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "AVATAR_"))}
    env.update(LIVEKIT_URL=livekit_server.url, LIVEKIT_API_KEY=livekit_server.api_key,
               LIVEKIT_API_SECRET=livekit_server.api_secret, AVATAR_ROOM=room)
    responses: list = []
    worker = start_worker(livekit_server, room, tmp_path / "worker", "--mode", "speech", "--text",
                          "Hello! The token came from a FastAPI app.", "--lead-in-ms", "500")
    try:
        with run_app(tmp_path, "--external", env=env) as app:
            group = process_group(app.process.pid)
            result = connect_and_play(browser_page, app, responses, extra=f"worker:\n{worker.tail()}")
    finally:
        worker.stop()
    print(f"\nrun.py --external printed the URL after {app.url_s:.1f} s; face={result['face']}")
    check_played(result, responses, app.url)
    # the worker's own send log: it reached this room on this server, where the page met it
    assert any(rec.get("kind") == "frame" and rec.get("sent") for rec in worker.sent()), worker.tail()
    assert "avatar_worker" not in group and "livekit-server" not in group, group  # it started neither
    assert livekit_server.api_secret not in group and livekit_server.api_secret not in app.log()
    assert f"(external): run the avatar worker in room {room!r}" in app.log(), app.log()
    assert app.exit_code == 0, f"run.py exited with {app.exit_code} on Ctrl-C:\n{app.log()}"
    assert not browser_log.off_loopback, browser_log.off_loopback
