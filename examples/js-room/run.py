#!/usr/bin/env python3
"""A page whose JavaScript app owns the livekit-client Room and hands it to the Python player.

    python3 examples/js-room/run.py          # prints the page's URL; Ctrl-C stops everything

1. the set-up (tools/bootstrap.py demo; cached), then it continues in .venv's interpreter;
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
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SITE = HERE / "site"
SPEECH = "Hello! The app's JavaScript owns this room; Python draws my face."
"""What the avatar says every 10 s with ``--mode speech``."""
OVERLAY = ("index.html", "app.js", "main.py")
"""This example's own files, copied over the bundle's page."""

sys.path.insert(0, str(ROOT))

from examples import local  # noqa: E402  (the repository is on sys.path now)


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


def build(out: Path) -> list[str]:
    """The bundle, then this example's page over the bundle's: the files written, relative to ``out``."""
    from avatarplayer import bundle

    files = bundle.build(out)
    for name in OVERLAY:
        shutil.copyfile(HERE / name, out / name)
    return sorted({*files, *OVERLAY})


def main() -> int:
    args = parse_args()
    local.setup_and_reexec(__file__, skip_setup=args.skip_setup)

    files = build(args.out)
    log(f"site: {len(files)} files in {args.out}/ (the bundle, and {', '.join(OVERLAY)} from {HERE.name}/)")
    return local.serve_site(log, args.out, port=args.port, room=args.room, mode=args.mode, speech_text=SPEECH,
                            workdir_prefix="avatarplayer-js-room-")


if __name__ == "__main__":
    sys.exit(main())
