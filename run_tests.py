#!/usr/bin/env python3
"""Run the whole test suite, installing what it needs first.

    python3 run_tests.py                 # everything: CPython unit tests, the core suite in Pyodide,
                                         # browser tests on Chromium, then the Firefox lane
    python3 run_tests.py tests/unit -x   # any pytest arguments narrow the run (both lanes)
    python3 run_tests.py -m "not live"   # the fast suite: no real LiveKit server (tests/conftest.py)
    python3 run_tests.py --browser firefox tests/browser/test_player_e2e.py   # one lane only

Two pytest runs: the first with Chromium as the browser, the second with ``--browser firefox``,
which selects only the browser tests marked ``firefox`` (the Firefox lane, listed in README.md). A
``--browser`` argument runs that lane alone.

Set-up (venv, npm packages, Pyodide wheels, Debian packages, geckodriver, the LiveKit server) is
done by tools/bootstrap.py: idempotent and cached, so a second run starts testing at once.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent

from tools import bootstrap

NO_TESTS_COLLECTED = 5  # pytest's exit code when the arguments select nothing (e.g. no Firefox test)


def main(argv: list[str]) -> int:
    needs_browser = any((ROOT / "tests" / "browser").glob("test_*.py"))
    python = bootstrap.browser() if needs_browser else bootstrap.core()
    os.chdir(ROOT)
    pytest = [str(python), "-m", "pytest"]
    if any(arg == "--browser" or arg.startswith("--browser=") for arg in argv):
        os.execv(pytest[0], [*pytest, *argv])
    chromium = subprocess.run([*pytest, *argv]).returncode
    print("\n===== the Firefox lane: the browser tests marked `firefox`, on Firefox ESR =====\n", flush=True)
    firefox = subprocess.run([*pytest, "--browser", "firefox", *argv]).returncode
    if firefox == NO_TESTS_COLLECTED:
        firefox = 0
    return chromium or firefox


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
