"""Fixtures for real-stack browser tests: a LiveKit server, a static file server, a browser.

Everything runs on loopback. Missing pieces (the server binary, Chromium, Firefox, Playwright,
Selenium) FAIL the test instead of skipping it: `python3 run_tests.py` installs them
(tools/bootstrap.py browser), and a browser suite that silently skips proves nothing.

The browser is Debian's Chromium through Playwright, or with ``--browser firefox`` Firefox ESR
through Selenium (tools/firefox.py), whose pages answer the same Playwright calls. Tests describe
a browser of their own by Chromium's flags (``browser_args``); on Firefox they become preferences.

    def test_x(livekit_server, static_server, browser_page):
        token = livekit_server.token("viewer", room="r1")
        browser_page.goto(static_server.url("/web/dev/transform-probe.html") + f"?url={livekit_server.url}&token={token}")
"""

from __future__ import annotations

import math
import struct
import sys
import warnings
import wave
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from tools import bootstrap
from tools.devstack import LiveKitServer
from tools.realstack import CHROMIUM_ARGS, is_loopback_url
from tools.httpserve import StaticServer
from tools.webapp import build_app
from tools import firefox

CHROMIUM = Path("/usr/bin/chromium")



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/browser is a `browser` test."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item, so fixtures can tell at teardown whether a test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))


# ------------------------------------------------------------------------------- LiveKit server


@pytest.fixture(scope="session")
def livekit_server(tmp_path_factory: pytest.TempPathFactory):
    """One loopback LiveKit server for the session (tests use distinct room names)."""
    try:
        server = LiveKitServer(tmp_path_factory.mktemp("livekit")).start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


# ------------------------------------------------------------------------------- static files


@pytest.fixture(scope="module")
def app(livekit_server):
    """The web app (tools/webapp.py) on loopback: pages, vendored JS, the wheels of the package as
    it is in the work tree, and a token endpoint for rooms named ``e2e-…``."""
    bootstrap.ensure_web_wheels()
    with build_app(livekit_server, rooms=r"e2e-[a-z0-9-]+", default_room="e2e-default", dev=True) as server:
        yield server


@pytest.fixture(scope="session")
def static_server():
    """Serves web/, node_modules/ and the player's JavaScript (tools.httpserve.DEFAULT_MOUNTS) on 127.0.0.1."""
    if not (ROOT / "node_modules" / "livekit-client").is_dir():
        pytest.fail("node_modules is missing: run `python3 tools/bootstrap.py core`", pytrace=False)
    with StaticServer(ROOT) as server:
        yield server


# ------------------------------------------------------------------------------- Chromium


def write_tone_wav(path: Path, seconds: float = 3.0, hz: float = 440.0, rate: int = 48000) -> Path:
    """A 48 kHz mono 16-bit tone: Chromium's fake microphone plays it in a loop."""
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * i / rate)))
                      for i in range(int(seconds * rate)))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return path


@pytest.fixture(scope="session")
def fake_audio_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake microphone's audio file (override this fixture to use speech)."""
    return write_tone_wav(tmp_path_factory.mktemp("media") / "tone.wav")


@pytest.fixture(scope="session")
def browser_args(fake_audio_wav: Path) -> list[str]:
    """Chromium command-line flags; override or extend in a test module."""
    return [*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={fake_audio_wav}"]


@pytest.fixture(scope="package")
def playwright_instance(request: pytest.FixtureRequest):
    """Package-scoped on purpose: Playwright's sync API runs an asyncio loop in the main thread
    while it lives, and asyncio.run() in any test collected after tests/browser would fail.

    With ``--browser firefox`` this is a :class:`tools.firefox.FirefoxEngine` instead: whatever
    launches a browser from it (``own_browser_page``, ``tools.realstack.impaired_browser``)
    launches Firefox."""
    if request.config.getoption("--browser") == "firefox":
        yield firefox.FirefoxEngine()
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run `python3 tools/bootstrap.py core`", pytrace=False)
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="package")
def browser(playwright_instance, browser_args: list[str]):
    """Debian Chromium (never a Playwright download), headless, off-network; or Firefox ESR."""
    if isinstance(playwright_instance, firefox.FirefoxEngine):
        browser = _launch_firefox(playwright_instance, browser_args)
        yield browser
        browser.close()
        return
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `python3 tools/bootstrap.py browser`", pytrace=False)
    browser = playwright_instance.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=browser_args)
    yield browser
    browser.close()


def _launch_firefox(engine: firefox.FirefoxEngine, args: list[str]) -> firefox.FirefoxBrowser:
    try:
        return engine.launch(args)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


def own_browser_page(playwright_instance, args: list[str]):
    """A browser of its own, for flags that must differ from the shared browser's (autoplay
    policy, no fake permission UI). Returns ``(browser, page)``; close the browser when done.
    Requests off loopback are collected in ``page.off_loopback``."""
    if isinstance(playwright_instance, firefox.FirefoxEngine):
        browser = _launch_firefox(playwright_instance, args)
        return browser, browser.new_context(viewport={"width": 1100, "height": 820}).new_page()
    browser = playwright_instance.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
    page = browser.new_context(viewport={"width": 1100, "height": 820}).new_page()
    page.off_loopback = []
    page.context.on("request", lambda req: None if is_loopback_url(req.url) else page.off_loopback.append(req.url))
    page.crashed = False
    page.on("crash", lambda _page: setattr(page, "crashed", True))
    return browser, page


def boot_own_browser(playwright_instance, args: list[str], boot):
    """:func:`own_browser_page`, then ``boot(page)`` (load the page, wait until it is ready).

    If the page's renderer process crashes during the boot, the browser is launched once more:
    full CI runs saw a second Chromium's first page crash while Pyodide booted (2 in about 40
    launches; never in the shared browser, never when the test ran alone). The crash is printed,
    as a warning in the run's summary. Anything else, including a second crash or one after the boot, fails.
    The evidence, and a hunt that did not reproduce it: docs/platform.md, "Renderer crashes".
    Returns ``(browser, page)``."""
    for attempt in (1, 2):
        browser, page = own_browser_page(playwright_instance, args)
        try:
            boot(page)
            return browser, page
        except Exception as exc:
            browser.close()
            if not page.crashed or attempt == 2:
                raise
            # a warning, not a print: pytest shows it in the summary of a passing run too
            warnings.warn(f"the page of a separate Chromium crashed while booting; launched a fresh one "
                          f"({str(exc).splitlines()[0]})", RuntimeWarning, stacklevel=2)
    raise AssertionError("unreachable")


@dataclass
class BrowserLog:
    """What a page did: console lines, every request URL, and requests that left loopback."""

    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    off_loopback: list[str] = field(default_factory=list)

    def dump(self, limit: int = 400) -> str:
        lines = self.console[-limit:]
        return "\n".join(lines) if lines else "<no console output>"


@pytest.fixture
def browser_log() -> BrowserLog:
    return BrowserLog()


@pytest.fixture
def browser_page(browser, browser_log: BrowserLog, request: pytest.FixtureRequest):
    """A fresh page in a fresh context. Fails the test on any request to a non-loopback host
    (Chromium's dead proxy makes them fail too) and prints the console output when the test fails.

    Playwright delivers these events only while the test is inside a Playwright call. So the
    log is complete once the page is closed, not while the test waits on something else."""
    context = browser.new_context()
    page = context.new_page()

    def on_request(req) -> None:
        browser_log.requests.append(req.url)
        if not is_loopback_url(req.url):
            browser_log.off_loopback.append(req.url)

    def on_websocket(ws) -> None:
        browser_log.requests.append(ws.url)
        if not is_loopback_url(ws.url):
            browser_log.off_loopback.append(ws.url)

    context.on("request", on_request)
    page.on("websocket", on_websocket)
    page.on("console", lambda msg: browser_log.console.append(f"[{msg.type}] {msg.text}"))
    page.on("pageerror", lambda err: browser_log.console.append(f"[pageerror] {err}"))
    page.on("crash", lambda _: browser_log.console.append("[crash] page crashed"))

    yield page

    try:
        context.close()
    except Exception as exc:  # a crashed browser must not hide the test's own result
        browser_log.console.append(f"[teardown] context.close failed: {exc}")
    if _failed(request):
        sys.stdout.write(f"\n----- browser console ({len(browser_log.console)} lines) -----\n{browser_log.dump()}\n")
    if browser_log.off_loopback:
        pytest.fail("requests left loopback:\n  " + "\n  ".join(browser_log.off_loopback), pytrace=False)
