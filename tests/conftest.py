"""Markers for the whole suite, so a fast run can leave the real stack out:

    python3 run_tests.py -m "not live"      # CPython unit tests, tools, the core suite in Pyodide

``live``: the test starts a real LiveKit server (and usually Chromium or the avatar worker):
everything under ``tests/browser/``, every test that uses a ``livekit_server`` fixture, files
named ``*_live.py``, and tests marked ``live`` by hand.

``--browser firefox`` runs the browser tests on Firefox ESR instead of Chromium: only those marked
``firefox`` (the Firefox lane; tests/browser/conftest.py), nothing else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BROWSER = HERE / "browser"
LIVE_FIXTURES = {"livekit_server", "livekit_server_binary"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--browser", choices=("chromium", "firefox"), default="chromium",
                     help="the engine of the browser tests: Debian's Chromium (every browser test) or "
                          "Firefox ESR (the tests marked `firefox`, and nothing else)")


def pytest_report_header(config: pytest.Config) -> str:
    engine = config.getoption("--browser")
    if engine == "firefox":
        from tools import bootstrap, firefox

        if firefox.FIREFOX.exists():
            return (f"browser: {firefox.version()}, geckodriver {bootstrap.GECKODRIVER_VERSION} "
                    "(Selenium, WebDriver BiDi)")
    return f"browser: {engine}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--browser") == "firefox":
        chosen = [item for item in items if item.get_closest_marker("firefox")]
        config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
        items[:] = chosen
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if (BROWSER in path.parents or path.stem.endswith("_live")
                or LIVE_FIXTURES & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.live)
