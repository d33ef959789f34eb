"""The table of shared constants in docs/wire-format.md §7 is checked against the code: every
Python module attribute and JavaScript ``const`` it names has the value the table gives, so the
docs, the player, the worker and the transform worker cannot drift apart unnoticed.

CPython only (it imports the avatar worker, which needs the LiveKit SDK).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "wire-format.md"

# Entries the checker cannot read as a module attribute or a JS number, with the reason.
NOT_CHECKED = {
    ("CARRIER_MAGIC", "avatarplayer/browser/js/motion-transform.js"): "a byte array, checked below",
    ("TRAILER", "avatarplayer/wire/motion.py"): "private",
    ("VP8_KEYFRAME_PREFIX", "tests/vectors/manifest.json"): "checked by tests/unit/test_vectors.py",
    ("COMPACT_HEADER", "avatarplayer/wire/compact.py"): "a struct, checked below",
    ("video_track_name", "avatar_worker/config.py"): "a dataclass default, checked below",
    ("video_track_name", "avatar_worker/cli.py"): "an option default",
    ("audio_track_name", "avatar_worker/config.py"): "a dataclass default, checked below",
    ("audio_track_name", "avatar_worker/cli.py"): "an option default",
    ("RTP_TICKS_PER_FRAME", "tests/browser/test_transform_probe.py"): "a test constant",
}


def table() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(constant, value, [(file, name in that file)]) for each row of the table."""
    text = DOC.read_text()
    section = text[text.index("## 7. Constants shared"):]
    section = section[:section.index("\n## ", 5)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        constant, value, where = cells[0].strip("`"), cells[1], cells[2]
        places = []
        for match in re.finditer(r"`([\w/.-]+\.(?:py|js|json))`(?:\s*\(`([\w.]+)`)?", where):
            places.append((match.group(1), match.group(2) or constant))
        rows.append((constant, value, places))
    return rows


def literal(value: str):
    code = re.match(r"`([^`]*)`", value)
    assert code, f"value {value!r} is not a code literal"
    return ast.literal_eval(code.group(1))


ROWS = table()


def test_the_table_is_there_and_names_files_that_exist():
    assert len(ROWS) >= 30
    for constant, _, places in ROWS:
        assert places, f"{constant}: no file named"
        for path, _ in places:
            assert (ROOT / path).exists(), f"{constant}: {path} does not exist"


@pytest.mark.parametrize("constant, value, places", ROWS, ids=[r[0] for r in ROWS])
def test_each_constant_has_the_documented_value(constant, value, places):
    if constant == "VP8_KEYFRAME_PREFIX":
        from avatarplayer.wire.motion import VP8_KEYFRAME_PREFIX

        assert VP8_KEYFRAME_PREFIX.hex() == re.match(r"`([0-9a-f]+)`", value).group(1)
        return
    expected = literal(value)
    for path, name in places:
        if (constant, path) in NOT_CHECKED:
            continue
        if path.endswith(".py"):
            module = importlib.import_module(path[:-3].replace("/", "."))
            assert hasattr(module, name), f"{path} has no {name}"
            assert getattr(module, name) == expected, f"{path}:{name} is {getattr(module, name)!r}, the doc says {expected!r}"
        elif path.endswith(".js"):
            source = (ROOT / path).read_text()
            found = re.search(rf"\bconst {re.escape(name)}\s*=\s*([^;]+);", source)
            assert found, f"{path} has no const {name}"
            assert ast.literal_eval(found.group(1).strip()) == expected, f"{path}:{name} = {found.group(1)}"
        else:
            pytest.fail(f"{constant}: cannot check {path}; add it to NOT_CHECKED with a reason")


def test_the_entries_read_another_way():
    from avatar_worker.config import LiveKitSettings
    from avatarplayer.constants import CARRIER_MAGIC
    from avatarplayer.wire.compact import COMPACT_HEADER

    rows = {constant: literal(value) for constant, value, _ in ROWS if constant != "VP8_KEYFRAME_PREFIX"}
    js = (ROOT / "avatarplayer" / "browser" / "js" / "motion-transform.js").read_text()
    magic = re.search(r"\bconst MAGIC\s*=\s*\[([^\]]+)\]", js)
    assert magic, "motion-transform.js: no MAGIC byte array"
    assert bytes(int(b, 0) for b in magic.group(1).split(",")) == CARRIER_MAGIC == rows["CARRIER_MAGIC"]
    assert COMPACT_HEADER.size == rows["COMPACT_HEADER"]
    fields = {f: getattr(LiveKitSettings, "__dataclass_fields__")[f].default
              for f in ("video_track_name", "audio_track_name")}
    assert fields == {"video_track_name": rows["video_track_name"], "audio_track_name": rows["audio_track_name"]}
    from tools.webapp import web_config

    assert web_config()["transformWorker"] == rows["TRANSFORM_WORKER_URL"]
