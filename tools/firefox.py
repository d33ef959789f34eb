"""Firefox ESR for the browser tests and benchmarks: Selenium over WebDriver BiDi, behind the part
of Playwright's sync ``Page`` API that the tests use.

Playwright drives only its own patched Firefox builds, never Debian's ``firefox-esr``. So the
second engine is driven through geckodriver (built from crates.io by tools/bootstrap.py) with
Selenium, and :class:`FirefoxPage` answers the same calls as a Playwright page: ``goto``,
``evaluate``, ``wait_for_function``, ``locator``, ``click``, ``screenshot``, ``on("console")``...
A test written for Chromium runs on Firefox unchanged (``python3 run_tests.py --browser firefox``).

What each engine is told, side by side:

============================  ====================================  ==========================================
                              Chromium (tools/realstack.py)         Firefox (:data:`BASE_PREFS`)
============================  ====================================  ==========================================
offline                       ``--proxy-server`` to a dead port     ``network.proxy.*`` to a dead port
fake microphone / camera      ``--use-fake-device-for-media-stream``  ``media.navigator.streams.fake`` (a tone)
no permission prompt          ``--use-fake-ui-for-media-stream``    ``media.navigator.permission.disabled``
autoplay allowed              ``--autoplay-policy=no-user-...``     ``media.autoplay.default`` = 0
WebRTC on loopback            ``--allow-loopback-in-peer-...``      ``media.peerconnection.ice.loopback``
============================  ====================================  ==========================================

Tests describe a browser by Chromium's flags (``browser_args``); :func:`prefs_for_chromium_args`
turns the ones that change behaviour into Firefox preferences. Firefox has no way to play a WAV
file as its fake microphone: its fake device is a tone, whatever ``--use-file-for-fake-audio-capture``
says.

Headless Firefox on a machine without a sound card has no audio output, and then no running
``AudioContext`` (Chromium fakes one): each Firefox gets a PulseAudio daemon of its own with one null
sink (:class:`NullAudio`), so the avatar's voice is played, and heard by the tests' audio tap.

Every request the page makes is reported by BiDi's ``network.beforeRequestSent`` (the off-loopback
check of the fixtures), console lines by ``log.entryAdded``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BASE_PREFS", "FIREFOX", "GECKODRIVER", "FirefoxBrowser", "FirefoxEngine", "FirefoxPage",
           "prefs_for_chromium_args", "version"]

ROOT = Path(__file__).resolve().parent.parent
FIREFOX = Path("/usr/bin/firefox-esr")
GECKODRIVER = ROOT / ".tools" / "bin" / "geckodriver"  # tools/bootstrap.py builds it

DEAD_PORT = 9  # nothing listens there: a request sent to it fails at once
SCRIPT_TIMEOUT_S = 120  # the longest a page call (evaluate, a harness run) may take

BASE_PREFS: dict[str, Any] = {
    # fake media devices without a prompt (the tests' microphone)
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "permissions.default.microphone": 1,
    "permissions.default.camera": 1,
    # autoplay allowed, for media elements and Web Audio alike
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "media.autoplay.block-webaudio": False,
    # WebRTC between loopback addresses, with real IPs rather than mDNS names
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    # offline: whatever is not on loopback goes to a proxy that is not there (Firefox never
    # proxies loopback addresses), so it fails inside the browser
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.http_port": DEAD_PORT,
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.ssl_port": DEAD_PORT,
    "network.proxy.socks": "127.0.0.1",
    "network.proxy.socks_port": DEAD_PORT,
    "network.proxy.socks_remote_dns": True,
    "network.proxy.no_proxies_on": "",
    # and nothing of its own in the background (geckodriver already turns most of it off)
    "app.update.disabledForTesting": True,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.region.network.url": "",
    "browser.search.geoip.url": "",
    "browser.newtabpage.enabled": False,
    "browser.startup.homepage": "about:blank",
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.server": f"http://127.0.0.1:{DEAD_PORT}/",
    "services.settings.server": f"http://127.0.0.1:{DEAD_PORT}/",
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "dom.push.connection.enabled": False,
}


def prefs_for_chromium_args(args: Sequence[str]) -> dict[str, Any]:
    """The Firefox preferences for a browser the tests describe with Chromium's flags: autoplay
    needs a gesture (``--autoplay-policy=user-gesture-required``), and without
    ``--use-fake-ui-for-media-stream`` the microphone is denied (Chromium's headless prompt
    answers no; Firefox is told to)."""
    prefs = dict(BASE_PREFS)
    if "--autoplay-policy=user-gesture-required" in args:
        prefs.update({"media.autoplay.default": 5, "media.autoplay.blocking_policy": 1,
                      "media.autoplay.block-webaudio": True})
    if "--use-fake-ui-for-media-stream" not in args:
        prefs.update({"media.navigator.permission.disabled": False, "permissions.default.microphone": 2,
                      "permissions.default.camera": 2})
    return prefs


def version() -> str:
    """``Mozilla Firefox 153.8.0esr``, say."""
    return subprocess.run([str(FIREFOX), "--version"], capture_output=True, text=True, timeout=60).stdout.strip()


# ------------------------------------------------------------------------------------- browser


class FirefoxBrowser:
    """One Firefox (one WebDriver session); each :meth:`new_page` is a tab of it.

    ``netns``: a :class:`tools.netimpair.NetNamespace` to run geckodriver and Firefox in; the
    WebDriver and BiDi ports are then forwarded from this namespace into it."""

    def __init__(self, *, prefs: dict[str, Any] | None = None, netns: Any = None, headless: bool = True,
                 log_dir: Path | None = None) -> None:
        from selenium import webdriver
        from selenium.webdriver.firefox.options import Options

        for path, what in ((FIREFOX, "firefox-esr"), (GECKODRIVER, "geckodriver")):
            if not path.exists():
                raise RuntimeError(f"{path} is missing ({what}): run `python3 tools/bootstrap.py browser`")
        options = Options()
        options.binary_location = str(FIREFOX)
        if headless:
            options.add_argument("-headless")
        options.enable_bidi = True
        for name, value in (BASE_PREFS if prefs is None else prefs).items():
            options.set_preference(name, value)
        self._forwards: list[_PortForward] = []
        self._geckodriver: subprocess.Popen | None = None
        self._group: int | None = None  # geckodriver's process group: Firefox and its helpers too
        self.audio = NullAudio()
        self.log_dir = Path(log_dir) if log_dir is not None else self.audio.directory
        self._handlers: dict[str, Callable[[str, Any], None]] = {}  # context -> page's event sink
        self._lock = threading.Lock()
        if netns is None:
            from selenium.webdriver.firefox.service import Service

            try:
                service = Service(executable_path=str(GECKODRIVER), env=dict(os.environ, **self.audio.env),
                                  log_output=str(self.log_dir / "geckodriver.log"),
                                  popen_kw={"start_new_session": True})
                self.driver = webdriver.Firefox(options=options, service=service)
                self._group = service.process.pid
            except BaseException:
                self.audio.close()
                raise
        else:
            self.driver = self._start_in_namespace(netns, options)
        # a page call that never answers fails the test after these, instead of hanging it
        self.driver.set_script_timeout(SCRIPT_TIMEOUT_S)
        self.driver.command_executor.client_config.timeout = SCRIPT_TIMEOUT_S + 30
        self.driver.script.add_console_message_handler(lambda e: self._route("console", e))
        self.driver.script.add_javascript_error_handler(lambda e: self._route("pageerror", e))
        self.driver.network.add_event_handler("before_request_sent", lambda e: self._route("request", e))
        self._spare_tab: str | None = self.driver.current_window_handle

    def _start_in_namespace(self, netns: Any, options: Any):
        from selenium import webdriver

        from .devstack import free_port

        port, bidi_port = free_port(), free_port()
        self.geckodriver_log = self.log_dir / "geckodriver.log"
        with self.geckodriver_log.open("wb") as log:
            self._geckodriver = subprocess.Popen(
                netns.wrap([str(GECKODRIVER), "--host", "127.0.0.1", "--port", str(port), "--websocket-port",
                            str(bidi_port)]),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(os.environ, **self.audio.env),
                start_new_session=True)
        self._group = self._geckodriver.pid
        self._forwards = [_PortForward(netns, port), _PortForward(netns, bidi_port)]
        deadline = time.monotonic() + 30
        while True:
            try:
                with contextlib.closing(netns.call(socket.create_connection, ("127.0.0.1", port), 1)):
                    break
            except OSError:
                if time.monotonic() > deadline or self._geckodriver.poll() is not None:
                    self.close()
                    raise RuntimeError("geckodriver did not start inside the network namespace")
                time.sleep(0.1)
        return webdriver.Remote(command_executor=f"http://127.0.0.1:{port}", options=options)

    def _route(self, kind: str, event: Any) -> None:
        context = _event_context(kind, event)
        with self._lock:
            sink = self._handlers.get(context) if context else None
            sinks = [sink] if sink else ([] if context else list(self._handlers.values()))
        for sink in sinks:
            sink(kind, event)

    # the parts of Playwright's Browser the tests use
    def new_context(self, viewport: dict | None = None, **_ignored: Any) -> FirefoxContext:
        return FirefoxContext(self, viewport)

    def new_page(self, viewport: dict | None = None, **_ignored: Any) -> FirefoxPage:
        return self.new_context(viewport).new_page()

    def close(self) -> None:
        driver = getattr(self, "driver", None)
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
            self.driver = None
        if self._group is not None:  # whatever quit() left: Firefox outlives a killed geckodriver
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._group, signal.SIGKILL)
        if self._geckodriver is not None:
            self._geckodriver.wait(timeout=10)
        for forward in self._forwards:
            forward.close()
        self.audio.close()


class FirefoxContext:
    """Stands for a Playwright BrowserContext: its pages are tabs of the one Firefox."""

    def __init__(self, browser: FirefoxBrowser, viewport: dict | None) -> None:
        self.browser, self.viewport = browser, viewport
        self.pages: list[FirefoxPage] = []
        self._request_listeners: list[Callable] = []

    def new_page(self) -> FirefoxPage:
        page = FirefoxPage(self)
        self.pages.append(page)
        if self.viewport:
            page.set_viewport_size(self.viewport)
        return page

    def on(self, event: str, callback: Callable) -> None:
        if event != "request":
            raise ValueError(f"FirefoxContext.on({event!r}): only 'request' is supported")
        self._request_listeners.append(callback)

    def close(self) -> None:
        for page in list(self.pages):
            page.close()


@dataclass(frozen=True)
class ConsoleMessage:
    """What Playwright's ConsoleMessage offers that the tests read."""

    type: str
    text: str


@dataclass(frozen=True)
class Request:
    url: str


class FirefoxPage:
    """A tab, with the subset of Playwright's sync ``Page`` API the browser tests use."""

    def __init__(self, context: FirefoxContext) -> None:
        self.context = context
        self._browser = context.browser
        driver = self._browser.driver
        if context.browser._spare_tab is not None:  # the window's first tab, or the last one closed
            self.handle, context.browser._spare_tab = context.browser._spare_tab, None
        else:
            driver.switch_to.new_window("tab")
            self.handle = driver.current_window_handle
        # the page's tab in front: Firefox paces the timers of a background tab more coarsely
        with contextlib.suppress(Exception):
            driver.browsing_context.activate(context=self.handle)
        self.off_loopback: list[str] = []
        self.crashed = False
        self.closed = False
        self._listeners: dict[str, list[Callable]] = {}
        self._console_waiters: list[tuple[Callable, threading.Event]] = []
        self._preload_scripts: list[str] = []
        with context.browser._lock:
            context.browser._handlers[self.handle] = self._on_event
        self.on("request", self._check_loopback)

    # ---------------------------------------------------------------------------- events
    def _on_event(self, kind: str, event: Any) -> None:
        if kind == "console":
            message = ConsoleMessage(type=_console_type(getattr(event, "level", "log")), text=str(event.text or ""))
            for predicate, done in list(self._console_waiters):
                with contextlib.suppress(Exception):
                    if predicate(message):
                        done.set()
            self._emit("console", message)
        elif kind == "pageerror":
            self._emit("pageerror", str(getattr(event, "text", event)))
        elif kind == "request":
            request = Request(url=event.get("request", {}).get("url", ""))
            self._emit("request", request)
            for listener in list(self.context._request_listeners):
                listener(request)

    def _emit(self, event: str, value: Any) -> None:
        for callback in list(self._listeners.get(event, ())):
            callback(value)

    def _check_loopback(self, request: Request) -> None:
        from .realstack import is_loopback_url

        if not is_loopback_url(request.url):
            self.off_loopback.append(request.url)

    def on(self, event: str, callback: Callable) -> None:
        """``console``, ``pageerror``, ``request``; ``websocket`` and ``crash`` are accepted and
        never fire (a WebSocket's handshake is a ``request`` here)."""
        self._listeners.setdefault(event, []).append(callback)

    @contextlib.contextmanager
    def expect_console_message(self, predicate: Callable[[ConsoleMessage], bool],
                               timeout: float = 30_000) -> Iterator[None]:
        done = threading.Event()
        waiter = (predicate, done)
        self._console_waiters.append(waiter)
        try:
            yield
            if not done.wait(timeout / 1000):
                raise TimeoutError(f"no matching console message within {timeout / 1000:.0f} s")
        finally:
            self._console_waiters.remove(waiter)

    # ----------------------------------------------------------------------------- driving
    def _driver(self):
        from selenium.common.exceptions import NoSuchWindowException

        driver = self._browser.driver
        try:
            current = driver.current_window_handle
        except NoSuchWindowException:  # the last page's tab is gone
            current = None
        if current != self.handle:
            driver.switch_to.window(self.handle)
        return driver

    def goto(self, url: str, wait_until: str = "load", timeout: float | None = None) -> None:
        self._driver()
        wait = {"load": "complete", "domcontentloaded": "interactive", "commit": "none"}.get(wait_until, "complete")
        self._browser.driver.browsing_context.navigate(context=self.handle, url=url, wait=wait)

    def evaluate(self, expression: str, arg: Any = None) -> Any:
        """Like Playwright's: a function is called with ``arg``, anything else is an expression;
        a promise is awaited."""
        script = f"const __value = ({expression});\nreturn typeof __value === 'function' ? __value(arguments[0]) : __value;"
        return self._driver().execute_script(script, arg)

    def wait_for_function(self, expression: str, arg: Any = None, timeout: float = 30_000,
                          polling: float | str = 100) -> Any:
        interval = 0.1 if polling == "raf" else float(polling) / 1000
        deadline = time.monotonic() + timeout / 1000
        while True:
            value = self.evaluate(expression, arg)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"wait_for_function: not true within {timeout / 1000:.0f} s: {expression[:120]}")
            time.sleep(interval)

    def wait_for_timeout(self, ms: float) -> None:
        time.sleep(ms / 1000)

    def locator(self, selector: str) -> FirefoxLocator:
        return FirefoxLocator(self, selector)

    def click(self, selector: str, timeout: float = 30_000) -> None:
        self.locator(selector).click(timeout=timeout)

    def screenshot(self, path: str | None = None, **_ignored: Any) -> bytes:
        png = self._driver().get_screenshot_as_png()
        if path:
            Path(path).write_bytes(png)
        return png

    def set_viewport_size(self, size: dict) -> None:
        self._driver()
        self._browser.driver.browsing_context.set_viewport(
            context=self.handle, viewport={"width": int(size["width"]), "height": int(size["height"])})

    def add_init_script(self, script: str) -> None:
        added = self._browser.driver.script.add_preload_script(f"() => {{\n{script}\n}}", contexts=[self.handle])
        self._preload_scripts.append(added["script"] if isinstance(added, dict) else added)

    def close(self) -> None:
        """Close the tab. A browser keeps one tab open: the last one is replaced by a fresh one
        (its init scripts and state must not reach the next page)."""
        if self.closed:
            return
        self.closed = True
        browser = self._browser
        with browser._lock:
            browser._handlers.pop(self.handle, None)
        with contextlib.suppress(Exception):
            # through BiDi, whose commands time out (WebDriver's classic "switch to window" once
            # waited forever on a tab being left), and without switching to the closing tab
            driver = browser.driver
            for script in self._preload_scripts:
                driver.script.remove_preload_script(script=script)
            if len(driver.window_handles) == 1:
                browser._spare_tab = driver.browsing_context.create(type="tab")
            driver.browsing_context.close(context=self.handle)
            remaining = browser._spare_tab or driver.window_handles[0]
            driver.switch_to.window(remaining)
        if self in self.context.pages:
            self.context.pages.remove(self)

    def is_closed(self) -> bool:
        return self.closed


class FirefoxLocator:
    """Playwright's Locator, for the calls the tests make; it waits like Playwright's does."""

    def __init__(self, page: FirefoxPage, selector: str) -> None:
        self.page, self.selector = page, selector

    def _elements(self):
        from selenium.webdriver.common.by import By

        return self.page._driver().find_elements(By.CSS_SELECTOR, self.selector)

    def _element(self, timeout: float = 30_000):
        deadline = time.monotonic() + timeout / 1000
        while True:
            found = self._elements()
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no element matches {self.selector!r}")
            time.sleep(0.1)

    def click(self, timeout: float = 30_000) -> None:
        from selenium.common.exceptions import WebDriverException

        deadline = time.monotonic() + timeout / 1000
        while True:
            try:
                self._element(timeout).click()
                return
            except WebDriverException:  # not visible, not enabled or covered yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def is_visible(self) -> bool:
        found = self._elements()
        return bool(found) and found[0].is_displayed()

    def is_enabled(self) -> bool:
        return self._element().is_enabled()

    def is_disabled(self) -> bool:
        return not self.is_enabled()

    def inner_text(self) -> str:
        return self.page.evaluate("(s) => document.querySelector(s).innerText", self.selector)

    def text_content(self) -> str:
        return self.page.evaluate("(s) => document.querySelector(s).textContent", self.selector)

    def all_inner_texts(self) -> list[str]:
        return self.page.evaluate("(s) => Array.from(document.querySelectorAll(s), e => e.innerText)", self.selector)

    def count(self) -> int:
        return len(self._elements())

    def screenshot(self, path: str | None = None, **_ignored: Any) -> bytes:
        png = self._element().screenshot_as_png
        if path:
            Path(path).write_bytes(png)
        return png


# -------------------------------------------------------------------------------------- helpers


def _event_context(kind: str, event: Any) -> str | None:
    if kind == "request":
        return event.get("context") if isinstance(event, dict) else None
    source = getattr(event, "source", None)
    if isinstance(source, dict):
        return source.get("context")
    return getattr(source, "context", None)


def _console_type(level: str) -> str:
    return {"warn": "warning"}.get(str(level), str(level))



class NullAudio:
    """A PulseAudio daemon of its own, with a null sink as the default output: where a headless
    Firefox plays sound on a machine without a sound card. It listens on a Unix socket only
    (which also reaches a Firefox inside a network namespace); ``env`` points a client at it."""

    def __init__(self, timeout_s: float = 15.0) -> None:
        binary = shutil.which("pulseaudio")
        if binary is None:
            raise RuntimeError("pulseaudio is missing (Firefox's audio output): run `python3 tools/bootstrap.py browser`")
        self.directory = Path(tempfile.mkdtemp(prefix="avp-pulse-"))
        self.socket = self.directory / "native"
        script = self.directory / "default.pa"
        script.write_text("load-module module-null-sink sink_name=avatarplayer\n"
                          f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
                          "set-default-sink avatarplayer\n")
        self.log = self.directory / "pulseaudio.log"
        env = dict(os.environ, HOME=str(self.directory), XDG_RUNTIME_DIR=str(self.directory),
                   XDG_CONFIG_HOME=str(self.directory))
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, "-n", "-F", str(script), "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no",
                 "--disallow-exit", "--disable-shm"],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                self.close()
                raise RuntimeError(f"pulseaudio did not start:\n{tail}")
            time.sleep(0.05)
        self.env = {"PULSE_SERVER": f"unix:{self.socket}"}

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)


class _PortForward:
    """Forwards ``127.0.0.1:port`` of this namespace to the same port inside ``netns`` (where
    geckodriver and Firefox run), one thread pair per connection."""

    def __init__(self, netns: Any, port: int) -> None:
        self.netns, self.port = netns, port
        self.listener = socket.create_server(("127.0.0.1", port))
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name=f"forward-{port}").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                inner = self.netns.call(socket.create_connection, ("127.0.0.1", self.port), 10)
            except OSError:
                client.close()
                continue
            inner.settimeout(None)  # the connect's time-out would end an idle connection after 10 s
            self.sockets += [client, inner]
            for a, b in ((client, inner), (inner, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would leave it there,
        # holding a file descriptor number that the next listener may reuse (and then it would
        # accept that listener's connections and forward them into this, dead, namespace)
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


class FirefoxEngine:
    """What the browser fixtures hold instead of Playwright on the Firefox lane: it launches
    Firefox for a browser described by Chromium's flags (:func:`prefs_for_chromium_args`)."""

    def launch(self, args: Sequence[str] = (), *, netns: Any = None, log_dir: Path | None = None) -> FirefoxBrowser:
        """``log_dir``: where geckodriver's log (Firefox's own output included) is kept."""
        return FirefoxBrowser(prefs=prefs_for_chromium_args(args), netns=netns, log_dir=log_dir)
