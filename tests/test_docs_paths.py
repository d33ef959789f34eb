"""Every file or folder the docs name exists: a module moved without its docs fails here.

Checked: backticked paths in README.md and docs/*.md that start at a top-level folder of the repo
(``avatarplayer/browser/livekit.py``, ``tools/``, ``avatarplayer/browser/js/*.js``). In a table
cell, a bare file name after such a path (```avatarplayer/pipeline.py`, `sync.py```) is read in
that path's folder, as a reader would.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("avatarplayer", "avatar_worker", "tools", "tests", "web", "bench", "docs",
       "requirements", ".ci", "examples")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = re.compile(r"`([^`\s]+)`")
FILE = re.compile(r"^[\w.*-]+\.(py|js|mjs|md|json|toml|txt|html|css|yaml)$")


def named_paths(text: str) -> list[tuple[int, str]]:
    """(line number, path) for each path the text names."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        table = line.lstrip().startswith("|")
        for cell in line.split("|") if table else [line]:
            folder: str | None = None
            for token in CODE.findall(cell):
                token = token.rstrip(",.:;").split("?")[0]
                if token.split("/")[0] in TOP and "/" in token:
                    found.append((number, token))
                    if table:  # shorthand is read in table cells only
                        folder = token if token.endswith("/") else token.rsplit("/", 1)[0] + "/"
                elif folder is not None and FILE.match(token) and "/" not in token:
                    found.append((number, folder + token))
                elif folder is not None and re.match(r"^[\w-]+/[\w./*-]+$", token) and not token.startswith(("http", "lk.")):
                    # `js/replay.js` after `avatarplayer/face/canvas.py`: in that folder; `wire/motion.py`
                    # after `avatarplayer/pipeline.py`: in the package's
                    near, top = folder + token, folder.split("/")[0] + "/" + token
                    found.append((number, near if exists(near) or not exists(top) else top))
    return found


OUTPUTS = ("bench/out/",)
"""Folders of generated files (git-ignored): docs may name what a run writes there."""


def exists(path: str) -> bool:
    if path.startswith(OUTPUTS):
        return True
    if any(c in path for c in "*?["):
        return any(ROOT.glob(path))
    return (ROOT / path.rstrip("/")).exists()


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_path_the_docs_name_exists(doc: Path) -> None:
    missing = [f"{doc.name}:{n}: {p}" for n, p in named_paths(doc.read_text()) if not exists(p)]
    assert missing == []


def test_the_checker_reads_paths_and_shorthand() -> None:
    text = "| 1 | `avatarplayer/pipeline.py`, `sync.py`, `wire/motion.py` | `MotionPipeline.tick` |\n" \
           "see `tools/nothing-here.py`"
    assert named_paths(text) == [(1, "avatarplayer/pipeline.py"), (1, "avatarplayer/sync.py"),
                                 (1, "avatarplayer/wire/motion.py"), (2, "tools/nothing-here.py")]
    assert not exists("tools/nothing-here.py") and exists("avatarplayer/browser/js/*.js")
