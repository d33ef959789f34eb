"""What the examples' ``run.py`` scripts share: the set-up, the local avatar worker, a static site
served on loopback with a viewer token in its URL, and stopping it all on Ctrl-C.

Imported as ``examples.local`` (each ``run.py`` puts the repository on ``sys.path`` first).
"""

from __future__ import annotations

import functools
import http.server
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP_DONE_ENV = "AVATARPLAYER_SETUP_DONE"
TOKEN_TTL_S = 3600


def setup_and_reexec(script: str, *, skip_setup: bool) -> None:
    """The set-up once (tools/bootstrap.py demo, cached), then ``script`` again in .venv's
    interpreter (it has livekit-api and the examples' packages)."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    if os.environ.get(SETUP_DONE_ENV) != "1" and not skip_setup:
        from tools import bootstrap

        bootstrap.demo()
        os.environ[SETUP_DONE_ENV] = "1"
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        os.execv(str(venv_python), [str(venv_python), script, *sys.argv[1:]])


def start_worker(server, room: str, mode: str, speech_text: str) -> subprocess.Popen:
    """The avatar worker in ``room``; the API key and secret go through its environment, never its
    command line."""
    cmd = [sys.executable, "-m", "avatar_worker", "--mode", mode, "--room", room, "--realtime", "--log-level", "warning"]
    if mode == "speech":
        cmd += ["--text", speech_text, "--repeat-every-s", "10"]
    env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key,
               LIVEKIT_API_SECRET=server.api_secret, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)


def stop_process(process: subprocess.Popen | None) -> None:
    """Terminate ``process`` (killed after 10 s) if it still runs."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def stop_event() -> threading.Event:
    """Set by Ctrl-C or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's name)
        pass


def serve_site(log: Callable[[str], None], site: Path, *, port: int, room: str, mode: str, speech_text: str,
               workdir_prefix: str) -> int:
    """A loopback LiveKit server and the avatar worker in ``room``; ``site`` served on 127.0.0.1 by
    the standard library; prints the page's URL with ``?url=…&token=…`` (a viewer token minted
    here: subscribe and publish data only, a server-chosen identity, one hour). Runs until Ctrl-C;
    the exit code."""
    from tools.devstack import LiveKitServer

    stop = stop_event()
    worker = web = None
    with tempfile.TemporaryDirectory(prefix=workdir_prefix) as workdir, LiveKitServer(Path(workdir)) as server:
        try:
            worker = start_worker(server, room, mode, speech_text)
            handler = functools.partial(QuietHandler, directory=str(site))
            web = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
            threading.Thread(target=web.serve_forever, name="http", daemon=True).start()
            token = server.token(f"viewer-{secrets.token_hex(8)}", room, ttl_s=TOKEN_TTL_S,
                                 can_publish=False, can_subscribe=True, can_publish_data=True)
            query = urllib.parse.urlencode({"url": server.url, "token": token})
            log(f"LiveKit server {server.url}, avatar worker in room {room!r} (--mode {mode})")
            log(f"open http://127.0.0.1:{web.server_address[1]}/?{query}")
            log("Ctrl-C stops everything")
            while not stop.wait(0.5):
                if worker.poll() is not None:
                    log(f"the avatar worker exited with {worker.returncode}")
                    return 1
        finally:
            stop_process(worker)
            if web is not None:
                web.shutdown()
                web.server_close()
            log("stopped")
    return 0
