#!/usr/bin/env python3
"""A page whose JavaScript app owns the livekit-client Room and hands it to the Python player.

    python3 examples/js-room/run.py          # prints the page's URL; Ctrl-C stops everything

1. the set-up (tools/bootstrap.py browser; cached), then it continues in .venv's interpreter;
2. ``python -m avatarplayer.bundle examples/js-room/site`` (git-ignored), then this folder's
   ``index.html``, ``app.js`` and ``main.py`` over the bundle's page (OVERLAY);
3. a loopback LiveKit server (tools/devstack.py) and the avatar worker in room ``avatar-js-room``;
   the worker gets the API key and secret through its environment, never its command line;
4. serves ``site/`` on 127.0.0.1 with the standard library's HTTP server, and prints the page's URL
   with ``?url=…&token=…``: a viewer token minted here (subscribe and publish data only, a
   server-chosen identity, one hour). The API secret never reaches the browser.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SITE = HERE / "site"
OVERLAY = ("index.html", "app.js", "main.py")
"""This example's own files, copied over the bundle's page."""
SETUP_DONE_ENV = "AVATARPLAYER_SETUP_DONE"
TOKEN_TTL_S = 3600

sys.path.insert(0, str(ROOT))


def log(message: str) -> None:
    print(f"[js-room] {message}", flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 examples/js-room/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=8080, help="the page's port on 127.0.0.1 (0: a free one)")
    p.add_argument("--room", default="avatar-js-room")
    p.add_argument("--mode", choices=("demo", "speech"), default="demo",
                   help="demo: the avatar greets whoever joins; speech: it says a sentence every 10 s")
    p.add_argument("--out", type=Path, default=SITE, help="where to write the site (default: %(default)s)")
    p.add_argument("--skip-setup", action="store_true", help="do not run tools/bootstrap.py")
    return p.parse_args()


def setup_and_reexec(args: argparse.Namespace) -> None:
    """The set-up once, then this script again in .venv's interpreter (it has livekit-api)."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    if os.environ.get(SETUP_DONE_ENV) != "1" and not args.skip_setup:
        from tools import bootstrap

        bootstrap.browser()
        os.environ[SETUP_DONE_ENV] = "1"
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])


def build(out: Path) -> list[str]:
    """The bundle, then this example's page over the bundle's: the files written, relative to ``out``."""
    from avatarplayer import bundle

    files = bundle.build(out)
    for name in OVERLAY:
        shutil.copyfile(HERE / name, out / name)
    return sorted({*files, *OVERLAY})


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's name)
        pass


def start_worker(server, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "avatar_worker", "--mode", args.mode, "--room", args.room, "--realtime",
           "--log-level", "warning"]
    if args.mode == "speech":
        cmd += ["--text", "Hello! The app's JavaScript owns this room; Python draws my face.",
                "--repeat-every-s", "10"]
    env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key,
               LIVEKIT_API_SECRET=server.api_secret, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)


def main() -> int:
    args = parse_args()
    setup_and_reexec(args)

    from tools.devstack import LiveKitServer

    files = build(args.out)
    log(f"site: {len(files)} files in {args.out}/ (the bundle, and {', '.join(OVERLAY)} from {HERE.name}/)")

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    worker = web = None
    with tempfile.TemporaryDirectory(prefix="avatarplayer-js-room-") as workdir, LiveKitServer(Path(workdir)) as server:
        try:
            worker = start_worker(server, args)
            handler = functools.partial(QuietHandler, directory=str(args.out))
            web = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler)
            threading.Thread(target=web.serve_forever, name="http", daemon=True).start()
            token = server.token(f"viewer-{secrets.token_hex(8)}", args.room, ttl_s=TOKEN_TTL_S,
                                 can_publish=False, can_subscribe=True, can_publish_data=True)
            query = urllib.parse.urlencode({"url": server.url, "token": token})
            log(f"LiveKit server {server.url}, avatar worker in room {args.room!r} (--mode {args.mode})")
            log(f"open http://127.0.0.1:{web.server_address[1]}/?{query}")
            log("Ctrl-C stops everything")
            while not stop.wait(0.5):
                if worker.poll() is not None:
                    log(f"the avatar worker exited with {worker.returncode}")
                    return 1
        finally:
            if worker is not None and worker.poll() is None:
                worker.terminate()
                try:
                    worker.wait(10)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait(5)
            if web is not None:
                web.shutdown()
                web.server_close()
            log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
