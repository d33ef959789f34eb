#!/usr/bin/env python3
"""The smallest start: the static bundle, a local LiveKit server and the avatar worker.

    python3 examples/static/run.py          # prints the page's URL; Ctrl-C stops everything

1. the set-up (tools/bootstrap.py demo; cached, about a second when nothing changed), then it
   continues in .venv's interpreter;
2. ``python -m avatarplayer.bundle examples/static/site`` (git-ignored);
3. a loopback LiveKit server (tools/devstack.py) and the avatar worker in room ``avatar-static``;
   the worker gets the API key and secret through its environment, never its command line;
4. serves ``site/`` on 127.0.0.1 with the standard library's HTTP server, and prints the page's URL
   with ``?url=…&token=…``: a viewer token minted here (subscribe and publish data only, a
   server-chosen identity, one hour). The API secret never reaches the browser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SITE = HERE / "site"
SPEECH = "Hello! I am played by Python in your browser, from a static folder."
"""What the avatar says every 10 s with ``--mode speech``."""

sys.path.insert(0, str(ROOT))

from examples import local  # noqa: E402  (the repository is on sys.path now)


def log(message: str) -> None:
    print(f"[static] {message}", flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 examples/static/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=8080, help="the page's port on 127.0.0.1 (0: a free one)")
    p.add_argument("--room", default="avatar-static")
    p.add_argument("--mode", choices=("demo", "speech"), default="demo",
                   help="demo: the avatar greets whoever joins; speech: it says a sentence every 10 s")
    p.add_argument("--out", type=Path, default=SITE, help="where to write the bundle (default: %(default)s)")
    p.add_argument("--skip-setup", action="store_true", help="do not run tools/bootstrap.py")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    local.setup_and_reexec(__file__, skip_setup=args.skip_setup)

    from avatarplayer import bundle

    files = bundle.build(args.out)
    log(f"bundle: {len(files)} files in {args.out}/")
    return local.serve_site(log, args.out, port=args.port, room=args.room, mode=args.mode, speech_text=SPEECH,
                            workdir_prefix="avatarplayer-static-")


if __name__ == "__main__":
    sys.exit(main())
