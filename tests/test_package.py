"""What the avatarplayer wheel carries: the player's own JavaScript (the transform worker above
all: a page serves nothing for it), the type marker, and the tree's modules, no stale ones."""

from __future__ import annotations

import zipfile
from importlib.resources import files
from pathlib import Path

from tools import bootstrap

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = ("avatarplayer/py.typed", "avatarplayer/browser/js/motion-transform.js",
                "avatarplayer/browser/js/pc_hook.js", "avatarplayer/browser/js/data_filter.js",
                "avatarplayer/browser/js/read_playout.js", "avatarplayer/face/js/replay.js")


def test_the_transform_worker_is_package_data_and_the_default() -> None:
    from avatarplayer import LiveKitProvider

    source = files("avatarplayer.browser").joinpath("js", "motion-transform.js").read_text()
    assert "onrtctransform" in source and "const COMPACT_HEADER = 20;" in source
    assert LiveKitProvider().transform_worker_url is None  # started from the packaged copy


def test_the_web_wheel_has_the_package_data_and_only_the_trees_modules() -> None:
    wheels = sorted(bootstrap.ensure_web_wheels().glob("avatarplayer-*.whl"))
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    assert set(PACKAGE_DATA) <= names, set(PACKAGE_DATA) - names
    shipped = {n for n in names if n.startswith("avatarplayer/") and n.endswith((".py", ".js"))}
    in_tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "avatarplayer").rglob("*")
               if p.suffix in (".py", ".js") and "__pycache__" not in p.parts}
    assert shipped == in_tree, {"stale in the wheel": shipped - in_tree, "missing": in_tree - shipped}
