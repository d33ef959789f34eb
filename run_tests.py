#!/usr/bin/env python3
"""Run the whole test suite, installing what it needs first.

    python3 run_tests.py                 # everything: CPython unit tests, the core suite in Pyodide, browser tests
    python3 run_tests.py tests/unit -x   # any pytest arguments narrow the run
    python3 run_tests.py -m "not live"   # the fast suite: no real LiveKit server (tests/conftest.py)

Set-up (venv, npm packages, Pyodide wheels, Debian packages, the LiveKit server) is done by
tools/bootstrap.py: idempotent and cached, so a second run starts testing at once.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent

from tools import bootstrap


def main(argv: list[str]) -> int:
    needs_browser = any((ROOT / "tests" / "browser").glob("test_*.py"))
    python = bootstrap.browser() if needs_browser else bootstrap.core()
    os.chdir(ROOT)
    os.execv(str(python), [str(python), "-m", "pytest", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
