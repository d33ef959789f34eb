"""The core unit suite (tests/unit) and the renderer's (tests/renderer) must pass inside Pyodide
too, the runtime the player and the reference face ship in. Tests marked ``processes`` (they start
node or a fresh interpreter) are left out there: Pyodide cannot start processes.

Runs ``node tools/pyodide_run.mjs --pytest tests/unit tests/renderer -m "not processes" -q`` (Pyodide from node_modules, the
pure-Python wheels from .cache/wheels/pyodide, nothing from the network) and checks that

* the run really was Pyodide: the runner's banner says ``sys.platform=emscripten`` and
  ``sys.version=3.14.*``;
* pytest inside Pyodide exited 0 with no failures or errors;
* at least as many tests passed there as CPython collects from tests/unit right now, so a test
  that silently vanishes (an import that fails only under Pyodide, a skip) is noticed.

This test FAILS, never skips, when node, the npm pyodide package or the wheels are missing:
``python3 tools/bootstrap.py core`` (or ``python3 run_tests.py``) installs them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.pyodide

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tools" / "pyodide_run.mjs"
PYODIDE_ENTRY = ROOT / "node_modules" / "pyodide" / "pyodide.mjs"
WHEELS = ROOT / ".cache" / "wheels" / "pyodide"
SUITE = ["tests/unit", "tests/renderer"]
SELECT = ["-m", "not processes"]  # Pyodide cannot start processes
PYODIDE_TIMEOUT_S = 900
COLLECT_TIMEOUT_S = 300
FIX = "run `python3 tools/bootstrap.py core` (or `python3 run_tests.py`) first"

BANNER = re.compile(r"^\[pyodide_run\] (?P<fields>.*)$", re.MULTILINE)
SUMMARY = re.compile(r"^=*\s*(?P<body>(?:\d+ \w+|no tests ran)(?:, \d+ \w+)*) in [\d.]+s\b.*$", re.MULTILINE)
COLLECTED = re.compile(r"^(?:(?P<n>\d+)(?:/\d+)?|no) tests? collected", re.MULTILINE)  # "375/378 ... (3 deselected)"


def _tail(text: str, lines: int = 200) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _summary_counts(output: str) -> dict[str, int]:
    """Counts from pytest's last summary line, e.g. '3 failed, 140 passed, 2 warnings in 6.9s'."""
    matches = list(SUMMARY.finditer(output))
    if not matches:
        return {}
    counts: dict[str, int] = {}
    for part in matches[-1]["body"].split(", "):
        n, _, word = part.partition(" ")
        if n.isdigit():
            word = {"error": "errors", "warning": "warnings"}.get(word, word)
            counts[word] = counts.get(word, 0) + int(n)
    return counts


def _cpython_collected() -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *SUITE, *SELECT],
        cwd=ROOT, capture_output=True, text=True, timeout=COLLECT_TIMEOUT_S,
    )
    output = proc.stdout + proc.stderr
    found = COLLECTED.search(output)
    assert proc.returncode in (0, 5) and found, (
        f"CPython could not collect {SUITE} (exit {proc.returncode}):\n{_tail(output)}"
    )
    return int(found["n"] or 0)


def test_unit_suite_passes_inside_pyodide() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH: the Pyodide suite cannot run; {FIX}")
    if not PYODIDE_ENTRY.is_file():
        pytest.fail(f"{PYODIDE_ENTRY.relative_to(ROOT)} is missing (npm package pyodide); {FIX}")
    if not any(WHEELS.glob("pytest-*.whl")):
        pytest.fail(f"no pytest wheel in {WHEELS.relative_to(ROOT)}; {FIX}")

    collected = _cpython_collected()
    assert collected > 0, f"CPython collects no test from {SUITE}: nothing to compare the Pyodide run with"

    env = {k: v for k, v in os.environ.items() if k != "PYODIDE_RUN_CHILD"}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [node, str(RUNNER), "--pytest", *SUITE, *SELECT, "-q"],
            cwd=ROOT, capture_output=True, text=True, timeout=PYODIDE_TIMEOUT_S, env=env,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(f"the Pyodide run took over {PYODIDE_TIMEOUT_S} s:\n{_tail(out)}")
    elapsed = time.monotonic() - started
    output = proc.stdout + ("\n--- stderr ---\n" + proc.stderr if proc.stderr.strip() else "")
    report = f"Pyodide run: exit {proc.returncode} after {elapsed:.1f} s\n{_tail(output)}"

    banner = BANNER.search(proc.stdout)
    if not banner:
        pytest.fail(f"the runner printed no [pyodide_run] banner: not a Pyodide run?\n{report}", pytrace=False)
    fields = dict(f.split("=", 1) for f in banner["fields"].split() if "=" in f)
    if fields.get("sys.platform") != "emscripten" or not fields.get("sys.version", "").startswith("3.14."):
        pytest.fail(f"not Pyodide's Python 3.14 on emscripten: {banner[0]}\n{report}", pytrace=False)

    counts = _summary_counts(proc.stdout)
    passed = counts.get("passed", 0)
    problems = []
    if not counts:
        problems.append("no pytest summary line in the Pyodide output")
    if proc.returncode != 0:
        problems.append(f"pytest inside Pyodide exited {proc.returncode}")
    if counts.get("failed", 0) or counts.get("errors", 0):
        problems.append(f"{counts.get('failed', 0)} failed, {counts.get('errors', 0)} errors inside Pyodide")
    if passed < collected:
        problems.append(f"{passed} tests passed inside Pyodide, CPython collects {collected} from {SUITE}")
    if problems:
        pytest.fail("; ".join(problems) + "\n" + report, pytrace=False)
    print(f"{banner[0]}\nPyodide: {counts} in {elapsed:.1f} s wall; CPython collects {collected}")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("143 passed in 6.90s", {"passed": 143}),
        ("1 failed, 143 passed, 2 warnings in 6.90s", {"failed": 1, "passed": 143, "warnings": 2}),
        ("===== 3 passed, 1 skipped, 1 error in 0.10s =====", {"passed": 3, "skipped": 1, "errors": 1}),
        ("no tests ran in 0.01s", {}),
    ],
)
def test_summary_parser(line: str, expected: dict[str, int]) -> None:
    assert _summary_counts(f"....\n{line}\n") == expected
