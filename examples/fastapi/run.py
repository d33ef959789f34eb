#!/usr/bin/env python3
"""The avatar page behind a FastAPI app (app.py): a token endpoint and the bundle, served by uvicorn.

    python3 examples/fastapi/run.py              # a local LiveKit server and the avatar worker too
    python3 examples/fastapi/run.py --external   # LIVEKIT_URL/KEY/SECRET's server; run the worker yourself

1. the set-up (tools/bootstrap.py demo; cached), then it continues in .venv's interpreter;
2. ``python -m avatarplayer.bundle examples/fastapi/site --token-endpoint api/token`` (git-ignored):
   the page asks the app's endpoint, relative to itself, for a token;
3. local (the default): a loopback LiveKit server (tools/devstack.py) and the avatar worker in the
   room; the worker gets the API key and secret through its environment, never its command line.
   ``--external``: nothing of that; the settings come from the environment only (LIVEKIT_URL,
   LIVEKIT_API_KEY, LIVEKIT_API_SECRET, AVATAR_ROOM), see README.md;
4. uvicorn serves the app on 127.0.0.1 and it prints the page's URL. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SITE = HERE / "site"
SPEECH = "Hello! I am played by Python in your browser, served by FastAPI."
"""What the avatar says every 10 s with ``--mode speech``."""
TOKEN_ENDPOINT = "api/token"  # relative: the page finds the endpoint next to itself, under any prefix

sys.path.insert(0, str(ROOT))

from examples import local  # noqa: E402  (the repository is on sys.path now)


def log(message: str) -> None:
    print(f"[fastapi] {message}", flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 examples/fastapi/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=8000, help="the app's port on 127.0.0.1 (0: a free one)")
    p.add_argument("--external", action="store_true",
                   help="use the LiveKit server of LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET (environment); "
                        "start no server and no worker")
    p.add_argument("--room", default=None, help="the avatar's room (default: $AVATAR_ROOM, else avatar-fastapi)")
    p.add_argument("--mode", choices=("demo", "speech"), default="demo",
                   help="local only: demo: the avatar greets whoever joins; speech: a sentence every 10 s")
    p.add_argument("--out", type=Path, default=SITE, help="where to write the bundle (default: %(default)s)")
    p.add_argument("--skip-setup", action="store_true", help="do not run tools/bootstrap.py")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    local.setup_and_reexec(__file__, skip_setup=args.skip_setup)

    import uvicorn

    from avatarplayer import bundle
    from app import Settings, create_app  # examples/fastapi/app.py (this folder is sys.path[0])
    from tools.devstack import LiveKitServer

    room = args.room or os.environ.get("AVATAR_ROOM") or "avatar-fastapi"
    if args.external:
        try:
            settings = Settings.from_env(dict(os.environ, AVATAR_ROOM=room))
        except ValueError as exc:
            log(f"--external: {exc} (see examples/fastapi/README.md)")
            return 2

    files = bundle.build(args.out, token_endpoint=TOKEN_ENDPOINT)
    log(f"bundle: {len(files)} files in {args.out}/")

    stop = local.stop_event()

    worker = web = thread = None
    with contextlib.ExitStack() as stack:
        if not args.external:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="avatarplayer-fastapi-")))
            server = stack.enter_context(LiveKitServer(workdir))
            settings = Settings(url=server.url, api_key=server.api_key, api_secret=server.api_secret, room=room)
        try:
            if not args.external:
                worker = local.start_worker(server, room, args.mode, SPEECH)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", args.port))
            config = uvicorn.Config(create_app(settings, args.out), log_level="warning", access_log=False,
                                    lifespan="off")
            web = uvicorn.Server(config)
            # in a thread: uvicorn leaves the signals to this one (in the main thread it would re-raise Ctrl-C)
            thread = threading.Thread(target=web.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
            thread.start()
            while not web.started:
                if not thread.is_alive() or stop.wait(0.05):
                    log("uvicorn did not start")
                    return 1
            if args.external:
                log(f"LiveKit server {settings.url} (external): run the avatar worker in room {room!r} yourself")
            else:
                log(f"LiveKit server {settings.url}, avatar worker in room {room!r} (--mode {args.mode})")
            log(f"open http://127.0.0.1:{sock.getsockname()[1]}/")
            log("Ctrl-C stops everything")
            while not stop.wait(0.5):
                if worker is not None and worker.poll() is not None:
                    log(f"the avatar worker exited with {worker.returncode}")
                    return 1
                if not thread.is_alive():
                    log("uvicorn stopped")
                    return 1
        finally:
            local.stop_process(worker)
            if web is not None and thread is not None:
                web.should_exit = True
                deadline = time.monotonic() + 10
                while thread.is_alive() and time.monotonic() < deadline:
                    thread.join(0.1)
            log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
