"""The demo as users run it: ``python3 serve.py`` (LiveKit server + avatar worker + web app) and the
PyScript page ``web/index.html`` in Debian's Chromium.

``serve.py`` runs as a subprocess on free ports, exactly as a user starts it (set-up included), and
the page is driven like a user would: wait for Python, click Connect, watch the avatar speak, click
Disconnect. Every request the page makes is logged by the ``browser_page`` fixture (conftest.py),
and one that leaves loopback fails the test. Nothing here skips: a stack that cannot start fails.

Screenshots (idle and speaking) go to the test's tmp folder; their paths are printed (``-s``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import statistics
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from tools.devstack import free_port

from .conftest import boot_own_browser

ROOT = Path(__file__).resolve().parents[2]
SERVE = ROOT / "serve.py"
EXTERNAL_ENV = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")
START_TIMEOUT_S = 240.0  # serve.py runs the (cached, idempotent) set-up first
PYTHON_READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


@dataclass
class Demo:
    """A running ``serve.py`` (its own process group: serve.py, livekit-server, the worker)."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
            return "\n".join([line for line in text.splitlines() if "avatar_worker.pacing" not in line][-lines:])
        except OSError as exc:
            return f"<no serve.py output: {exc}>"

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, sig: int = signal.SIGTERM, to_group: bool = False) -> int | None:
        """Signal serve.py (or its whole group, like Ctrl-C in a terminal); its exit code, or None
        if it had to be killed."""
        if self.process.poll() is not None:
            return self.process.returncode
        (os.killpg if to_group else os.kill)(self.process.pid, sig)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)


def start_demo(workdir: Path, *extra: str) -> Demo:
    """``serve.py --port P --livekit-port L [extra...]`` on free ports; returns once the page answers."""
    port, livekit_port = free_port(), free_port()
    log_path = workdir / "serve.log"
    env = {k: v for k, v in os.environ.items() if k not in EXTERNAL_ENV}  # always our own server
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(SERVE), "--port", str(port), "--livekit-port", str(livekit_port), *extra],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # a group of its own: the test can clean up everything it started
    demo = Demo(process, f"http://127.0.0.1:{port}/", log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            demo.kill()
            pytest.fail(f"serve.py exited with {process.returncode} before serving:\n{demo.log_tail()}", pytrace=False)
        try:
            with urllib.request.urlopen(demo.url, timeout=2) as response:
                if response.status == 200 and b"demo ready" in log_path.read_bytes():
                    return demo
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            demo.kill()
            pytest.fail(f"serve.py did not serve {demo.url} within {START_TIMEOUT_S:.0f} s:\n{demo.log_tail()}",
                        pytrace=False)
        time.sleep(0.25)


@pytest.fixture
def demo(tmp_path: Path):
    demo = start_demo(tmp_path)
    yield demo
    demo.stop()  # a no-op when the test stopped it already; SIGKILL to the group if SIGTERM fails
    if demo.group_alive():  # something serve.py started outlived it
        demo.kill()


def read_demo(page) -> dict:
    return page.evaluate("JSON.parse(JSON.stringify(window.demo))")


def wait_demo(page, demo: Demo, expression: str, timeout_s: float, what: str) -> None:
    try:
        page.wait_for_function(expression, timeout=timeout_s * 1000, polling=200)
    except Exception as exc:  # playwright's TimeoutError, or the page crashed
        state = page.evaluate("window.demo ? JSON.stringify(window.demo) : 'no window.demo'")
        pytest.fail(f"{what}: not reached within {timeout_s:.0f} s ({type(exc).__name__})\n"
                    f"window.demo = {state}\n--- serve.py ---\n{demo.log_tail()}", pytrace=False)


@pytest.mark.firefox
def test_demo_page_connects_speaks_and_disconnects(demo: Demo, browser_page, browser_log, tmp_path: Path):
    page = browser_page
    page.set_viewport_size({"width": 1100, "height": 820})

    page.goto(demo.url, wait_until="domcontentloaded")
    assert page.locator("#boot").is_visible(), "the boot progress must show while Python loads"
    assert "Loading Python" in page.locator("#boot").inner_text()

    wait_demo(page, demo, "window.demo && window.demo.phase === 'ready'", PYTHON_READY_TIMEOUT_S, "Python ready")
    assert not page.locator("#boot").is_visible(), "the boot progress must go away once main.py runs"
    assert page.locator("#state").inner_text() == "disconnected"
    assert page.locator("#connect").is_enabled() and page.locator("#disconnect").is_disabled()
    page.wait_for_timeout(300)
    idle_png = tmp_path / "demo-idle.png"
    page.screenshot(path=str(idle_png))

    page.click("#connect")
    wait_demo(page, demo, "window.demo.state === 'connected'", 30, "state connected")
    wait_demo(page, demo, "window.demo.framesRendered > 50", 45, "50 frames rendered while the avatar speaks")

    # the canvas really moves while the avatar speaks
    canvas = "document.getElementById('avatar').toDataURL()"
    first = page.evaluate(canvas)
    page.wait_for_timeout(250)
    assert page.evaluate(canvas) != first, "the canvas did not change between two frames"
    page.wait_for_timeout(700)  # let the panel (2 Hz) catch up
    speaking_png = tmp_path / "demo-speaking.png"
    page.screenshot(path=str(speaking_png))

    state = read_demo(page)
    summary = state["summary"]
    assert page.locator("#state").inner_text() == "connected"
    assert state["rendererMode"] == "face", "frames were not decoded into FLAME values (bar-chart fallback)"
    assert summary["framesRendered"] > 50, summary
    assert summary["packetsMalformed"] == 0 and summary["rendererErrors"] == 0, summary
    assert 20 <= summary["averageFps"] <= 30, summary
    assert int(page.locator("#s-framesRendered").inner_text()) > 0, "the live panel is not refreshed"
    # the demo's provider has defaults: the transform worker came from the wheel (a Blob URL) and
    # ran; had it failed, the provider would have fallen back to the data carrier
    assert page.locator("#s-mode").inner_text() == "script", page.locator("#s-mode").inner_text()
    assert not state["errors"], state["errors"]

    page.click("#disconnect")
    wait_demo(page, demo, "window.demo.state === 'disconnected'", 15, "state disconnected")
    assert page.locator("#state").inner_text() == "disconnected"
    assert page.locator("#connect").is_enabled()

    timings = read_demo(page)["timings"]
    print(f"\nscreenshots: {idle_png} {speaking_png}\ntimings (ms since navigation start): {json.dumps(timings)}"
          f"\nrequests: {len(browser_log.requests)}, off loopback: {len(browser_log.off_loopback)}")
    assert browser_log.requests, "no request was logged"
    assert not browser_log.off_loopback, browser_log.off_loopback
    # the page runs under the app's Content-Security-Policy (tools/webapp.py): nothing was refused
    violations = [line for line in browser_log.console if "Content Security Policy" in line or "EvalError" in line]
    assert not violations, "\n".join(violations)

    # SIGTERM (what `kill` or a service manager sends) stops serve.py and everything it started
    code = demo.stop(signal.SIGTERM)
    assert code == 0, f"serve.py exited with {code} on SIGTERM:\n{demo.log_tail()}"
    assert not demo.group_alive(), f"processes started by serve.py outlived it:\n{demo.log_tail()}"


def test_ctrl_c_stops_everything(demo: Demo):
    """Ctrl-C in a terminal signals the whole foreground group: serve.py, the server and the worker."""
    code = demo.stop(signal.SIGINT, to_group=True)
    assert code == 0, f"serve.py exited with {code} on Ctrl-C:\n{demo.log_tail()}"
    assert not demo.group_alive(), f"processes started by serve.py outlived it:\n{demo.log_tail()}"
    log = demo.log_path.read_text(errors="replace")
    for line in ("avatar worker stopped", "web server stopped", "LiveKit server stopped"):
        assert line in log, f"{line!r} missing:\n{demo.log_tail()}"


def test_serve_refuses_a_remote_host_without_allow_remote(monkeypatch):
    """serve.py's own refusal (not an argparse error), before the set-up and before anything starts."""
    refusal = "serve.py: refusing --host 0.0.0.0: the demo page and its token endpoint have no authentication"
    env = {k: v for k, v in os.environ.items() if k not in EXTERNAL_ENV}
    result = subprocess.run([sys.executable, str(SERVE), "--host", "0.0.0.0", "--port", str(free_port())], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stderr.startswith(refusal) and "Pass --allow-remote" in result.stderr, result.stderr
    assert "usage:" not in result.stderr
    assert result.stdout == "", f"serve.py did something before refusing:\n{result.stdout}"

    # in this process: main() exits before the set-up, the port check or any server start
    spec = importlib.util.spec_from_file_location("serve_refusal", SERVE)
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    calls = []
    for name in ("setup_and_reexec", "external_settings", "port_in_use"):
        monkeypatch.setattr(serve, name, lambda *a, _name=name, **k: calls.append(_name))
    monkeypatch.setattr(sys, "argv", ["serve.py", "--host", "0.0.0.0"])
    with pytest.raises(SystemExit) as exited:
        serve.main()
    assert str(exited.value.code).startswith(refusal) and calls == [], (exited.value.code, calls)
    monkeypatch.setattr(sys, "argv", ["serve.py", "--host", "0.0.0.0", "--allow-remote"])
    monkeypatch.setattr(serve, "setup_and_reexec", lambda *a: sys.exit("set-up reached"))
    with pytest.raises(SystemExit) as exited:
        serve.main()
    assert exited.value.code == "set-up reached"  # with --allow-remote it goes on to the set-up


# The canvas regions (fractions of its width and height) that hold the eyes and the mouth of the
# reference face; generous, so that the small head sway keeps them inside.
REGIONS = {"eyes": (0.34, 0.30, 0.66, 0.46), "mouth": (0.38, 0.52, 0.62, 0.68)}

SAMPLE_JS = """(regions) => {
  const canvas = document.getElementById("avatar");
  const ctx = canvas.getContext("2d");
  const grids = {}, darks = {};
  for (const [name, [x0, y0, x1, y1]] of Object.entries(regions)) {
    const x = Math.round(x0 * canvas.width), y = Math.round(y0 * canvas.height);
    const w = Math.round((x1 - x0) * canvas.width), h = Math.round((y1 - y0) * canvas.height);
    const px = ctx.getImageData(x, y, w, h).data;
    const gx = 12, gy = 8, sums = new Array(gx * gy).fill(0), counts = new Array(gx * gy).fill(0);
    let dark = 0;
    for (let j = 0; j < h; j++) for (let i = 0; i < w; i++) {
      const k = (j * w + i) * 4, cell = Math.floor(j * gy / h) * gx + Math.floor(i * gx / w);
      const luma = 0.299 * px[k] + 0.587 * px[k + 1] + 0.114 * px[k + 2];
      sums[cell] += luma;
      counts[cell] += 1;
      if (luma < 70) dark += 1;
    }
    grids[name] = sums.map((s, i) => s / counts[i]);
    darks[name] = dark / (w * h);
  }
  return { grids, darks, face: JSON.parse(window.demo.faceSnapshot()) };
}"""


def grid_distance(a: list[float], b: list[float]) -> float:
    """Mean absolute luminance difference (0..255) between two region grids."""
    return sum(abs(x - y) for x, y in zip(a, b)) / len(a)


def sample_face(page, seconds: float, every_ms: int = 80) -> list[dict]:
    samples = []
    for _ in range(int(seconds * 1000 / every_ms)):
        samples.append(page.evaluate(SAMPLE_JS, REGIONS))
        page.wait_for_timeout(every_ms)
    return samples


def spread(samples: list[dict], region: str) -> float:
    """The largest change of a region between any two samples."""
    grids = [s["grids"][region] for s in samples]
    return max(grid_distance(a, b) for i, a in enumerate(grids) for b in grids[i + 1:])


@pytest.mark.firefox
def test_the_face_blinks_in_idle_and_its_mouth_moves_with_speech(demo: Demo, browser_page, tmp_path: Path):
    """Pixels, not counters: a face that does not move fails. In idle the eye region changes (a
    blink) while the mouth stays still; while the avatar speaks the mouth region changes far more
    than it does in idle. Canvas screenshots of both are kept next to the test's tmp files."""
    page = browser_page
    page.set_viewport_size({"width": 1100, "height": 820})
    page.goto(demo.url, wait_until="domcontentloaded")
    wait_demo(page, demo, "window.demo && window.demo.phase === 'ready'", PYTHON_READY_TIMEOUT_S,
              "Python ready")
    idle = sample_face(page, 7.0)
    if not any(s["face"]["blink"] >= 0.7 for s in idle[5:]):  # blinks come every 2-6 s
        idle += sample_face(page, 6.0)
    page.locator("#avatar").screenshot(path=str(tmp_path / "face-idle.png"))
    assert all(s["face"]["mode"] == "idle" for s in idle), idle[-1]["face"]
    blinks = [s for s in idle if s["face"]["blink"] >= 0.7]
    assert blinks, "no blink in 7 s of idle"
    pairs = list(zip(idle, idle[1:]))  # neighbouring samples, 80 ms apart
    closing = [grid_distance(idle[j]["grids"]["eyes"], s["grids"]["eyes"])  # vs open eyes just before
               for i, s in enumerate(idle) if s["face"]["blink"] >= 0.7
               for j in [next((j for j in range(i - 1, max(-1, i - 5), -1) if idle[j]["face"]["blink"] < 0.05), None)]
               if j is not None]
    steady = [grid_distance(a["grids"]["eyes"], b["grids"]["eyes"]) for a, b in pairs
              if a["face"]["blink"] < 0.05 and b["face"]["blink"] < 0.05]
    assert closing, "no sample caught the eyes closing"
    blink_change, open_change = max(closing), statistics.median(steady)
    closed_mouth = statistics.median(s["face"]["jaw"] for s in idle)
    mouth_reference = min(idle, key=lambda s: abs(s["face"]["jaw"] - closed_mouth))["grids"]["mouth"]
    idle_mouth = [grid_distance(s["grids"]["mouth"], mouth_reference) for s in idle]

    page.click("#connect")
    wait_demo(page, demo, "window.demo.framesRendered > 10", 60, "the avatar speaking")
    speaking = [s for s in sample_face(page, 4.0) if s["face"]["mode"] == "turn"]
    page.locator("#avatar").screenshot(path=str(tmp_path / "face-speaking.png"))
    assert len(speaking) >= 20, "the turn ended too soon to sample it"
    jaws = [s["face"]["jaw"] for s in speaking]
    mouth = [grid_distance(s["grids"]["mouth"], mouth_reference) for s in speaking]
    follows = statistics.correlation(jaws, mouth)
    print(f"\nface: eyes change {blink_change:.1f} in a blink vs {open_change:.1f} open; mouth change idle "
          f"max {max(idle_mouth):.1f}, speaking max {max(mouth):.1f}; jaw {min(jaws):.2f}..{max(jaws):.2f}; "
          f"pixels follow the jaw: r = {follows:.2f}; screenshots in {tmp_path}")
    assert blink_change >= 4.0 and blink_change >= 3 * open_change, \
        f"closing the eyes changed their pixels by {blink_change:.1f}, open eyes by {open_change:.1f} per 80 ms"
    assert max(jaws) - min(jaws) >= 0.3, f"the jaw did not follow the speech: {jaws}"
    assert max(mouth) >= 1.5 * max(idle_mouth), f"the mouth moved {max(mouth):.1f} speaking, {max(idle_mouth):.1f} idle"
    assert follows >= 0.6, f"the mouth pixels do not follow the jaw (r = {follows:.2f})"


def speech_wav(path: Path, sentence: str = "Hello avatar, can you hear me?") -> Path:
    """1 s of silence, a spoken sentence, 2 s of silence: Chromium's fake microphone loops it, so
    the demo agent hears one utterance every few seconds. The leading silence is the user's: the
    capture starts as Microphone is clicked, and the worker subscribes to the new track a few
    hundred ms later (speech from the very first sample would lose its first word)."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), sentence], check=True, timeout=30)
    subprocess.run(["sox", "-D", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(path), "pad", "1", "2"],
                   check=True, timeout=30)
    return path


QUESTION = "What time is it?"


def test_talking_to_the_avatar_through_the_microphone(demo: Demo, playwright_instance, browser_args, tmp_path):
    """The user clicks Microphone and asks the time (Chromium's fake microphone plays an espeak-ng
    WAV): the demo agent recognises the words (Whisper), shows them as the user's line, thinks, and
    answers the intent; the greeting came within a second of the connection."""
    wav = speech_wav(tmp_path / "speech.wav", QUESTION)
    args = [a for a in browser_args if not a.startswith("--use-file-for-fake-audio-capture")]

    def boot(page) -> None:
        page.goto(demo.url, wait_until="domcontentloaded")
        wait_demo(page, demo, "window.demo && window.demo.phase === 'ready'", PYTHON_READY_TIMEOUT_S, "Python ready")

    browser, page = boot_own_browser(playwright_instance, [*args, f"--use-file-for-fake-audio-capture={wav}"],
                                     boot)
    try:
        page.click("#connect")
        wait_demo(page, demo, "window.demo.agentStatus === 'listening' && window.demo.transcript.length >= 1", 60,
                  "the greeting, then listening")
        greeted = read_demo(page)
        page.click("#mic")
        wait_demo(page, demo, "window.demo.mic === 'on'", 20, "the microphone on")
        wait_demo(page, demo, "window.demo.transcript.some(l => l.role === 'user' && l.final) && "
                  "window.demo.transcript.some(l => l.role === 'agent' && /^It\\s+is/.test(l.text) && l.final)",
                  60, "an answer to the question")
        page.wait_for_timeout(600)
        page.screenshot(path=str(tmp_path / "demo-conversation.png"))
        state = read_demo(page)
        items = page.locator("#transcript li").all_inner_texts()
    finally:
        browser.close()
    lines = state["transcript"]
    print(f"\ntranscript: {lines}\nscreenshot: {tmp_path / 'demo-conversation.png'}")
    assert greeted["transcript"][0]["role"] == "agent" and greeted["framesRendered"] > 25, greeted
    timings = greeted["timings"]
    greeting_s = (timings["firstFrameMs"] - timings["connectedMs"]) / 1000
    print(f"greeting: the first frame (released as its audio plays) {greeting_s:.2f} s after 'connected'; "
          f"greeting summary {greeted['summary']}")
    # generous, as timed tests are here: the 1 s target is bench/conversation.py's to measure
    # (greeting median 0.18 s); a fixed lead-in before the greeting (the issue saw 4.7 s) fails this
    assert greeting_s <= 2.5, timings
    first_user = next(i for i, line in enumerate(lines) if line["role"] == "user")
    said = ["what", "time", "is", "it"]
    heard = re.findall(r"[a-z']+", lines[first_user]["text"].lower())
    assert sum(word in heard for word in said) >= 0.8 * len(said), lines
    answers = [" ".join(line["text"].split()) for line in lines[first_user + 1:] if line["role"] == "agent"]
    assert answers and re.fullmatch(r"It is \d{1,2}:\d\d [ap]\.m\.", answers[0]), lines  # answered after it
    assert state["framesRendered"] > greeted["framesRendered"] + 25, "the reply was not animated"
    assert any(text.startswith("You") for text in items) and any(text.startswith("Avatar") for text in items), items
    assert not state["errors"] and not page.off_loopback, (state["errors"], page.off_loopback)


@pytest.mark.firefox
def test_the_page_explains_blocked_sound_and_a_denied_microphone(demo: Demo, playwright_instance, browser_args):
    """A browser that blocks autoplay and denies the microphone: the page says so, and the
    "Enable sound" button (a user gesture calling start_audio()) brings the sound back."""
    args = [a for a in browser_args
            if not a.startswith(("--use-fake-ui-for-media-stream", "--autoplay-policy"))]

    def boot(page) -> None:
        with page.expect_console_message(lambda m: "blocked the avatar's audio" in m.text, timeout=120_000):
            page.goto(demo.url + "?autoconnect=1", wait_until="domcontentloaded")  # no click: no gesture

    browser, page = boot_own_browser(playwright_instance, [*args, "--autoplay-policy=user-gesture-required"], boot)
    try:
        assert page.locator("#audio-blocked").is_visible()
        page.click("#enable-audio")
        wait_demo(page, demo, "window.demo.audioBlocked === false", 15, "sound enabled by the click")
        assert not page.locator("#audio-blocked").is_visible()
        assert page.evaluate("Array.from(document.querySelectorAll('audio')).every(a => !a.paused)")

        page.click("#mic")
        wait_demo(page, demo, "window.demo.mic === 'off' && "
                  "!document.getElementById('mic-denied').hidden", 20, "the denied-microphone message")
        text = page.locator("#mic-denied").inner_text()
        state = read_demo(page)
    finally:
        browser.close()
    assert "blocked" in text and "Microphone" in text, text
    assert state["state"] == "connected", state  # a denied microphone does not end the session
    assert not page.off_loopback, page.off_loopback


def test_the_greeting_renders_from_its_first_frame(demo: Demo, browser_page):
    """The greeting starts as soon as the visitor subscribed, before the page's audio clock has
    locked: its first frames must still be rendered (in sync once the clock locks), not dropped
    as jitter-buffer overflow."""
    page = browser_page
    page.goto(demo.url, wait_until="domcontentloaded")
    wait_demo(page, demo, "window.demo && window.demo.phase === 'ready'", PYTHON_READY_TIMEOUT_S, "Python ready")
    page.click("#connect")
    wait_demo(page, demo, "window.demo.agentStatus === 'listening' && window.demo.transcript.length >= 1", 60,
              "the greeting, then listening")
    page.wait_for_timeout(700)  # the panel's summary is refreshed at 2 Hz
    state = read_demo(page)
    summary = state["summary"]
    events = page.locator("#events li").all_inner_texts()
    print(f"\ngreeting: {summary['framesRendered']} frames rendered, {summary['framesDropped']} dropped "
          f"({summary['framesDroppedOverflow']} overflow), {summary['framesHeldForSync']} held for sync; "
          f"events {events[::-1]}")
    assert summary["turns"] == 1 and summary["framesRendered"] > 50, summary
    assert summary["framesDroppedOverflow"] == 0 and summary["framesDropped"] == 0, (summary, events)
    assert summary["framesRendered"] + summary["framesBuffered"] == summary["framesReceived"], summary
    assert summary["syncMode"] == "audio" and summary["framesHeldForSync"] > 0, summary
