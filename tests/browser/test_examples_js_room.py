"""``python3 examples/js-room/run.py`` as a user runs it (minus the set-up, done already): the page's
JavaScript app creates and connects the livekit-client Room, the Python player draws the face from
that same Room, and ``player.disconnect()`` leaves the app's room connected.

Real LiveKit server, real avatar worker (``--mode demo``: it greets whoever joins), Debian's
Chromium; the ``browser_page`` fixture fails the test on any request that leaves loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "examples" / "js-room" / "run.py"
BOOT_TIMEOUT_S = 120.0


def stats(page) -> dict:
    return json.loads(page.evaluate("window.avatarStats ? window.avatarStats() : 'null'") or "null") or {}


def participants(page) -> list[str]:
    return page.locator("#participants li").all_inner_texts()


def start_run_py(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, str(RUN), "--port", "0", "--skip-setup", "--out", str(tmp_path / "site")],
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    return process, log_path


def printed_url(process: subprocess.Popen, log_path: Path) -> str:
    started = time.monotonic()
    url = None
    while url is None and time.monotonic() - started < 120 and process.poll() is None:
        url = next((line.split("open ", 1)[1].strip() for line in log_path.read_text().splitlines()
                    if line.startswith("[js-room] open http")), None)
        time.sleep(0.2)
    assert url, f"no URL printed:\n{log_path.read_text()}"
    return url


def stop_run_py(process: subprocess.Popen) -> int | None:
    """Ctrl-C, as a user stops it: its exit code (None if it had to be killed)."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGINT)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return None


def wait_for_frames(page, log_path: Path, frames: int = 25) -> None:
    try:
        page.wait_for_function(f"window.avatarStats && JSON.parse(window.avatarStats()).face.framesReceived > {frames}",
                               timeout=BOOT_TIMEOUT_S * 1000, polling=200)
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__}: {str(exc).splitlines()[0]}\nstats={stats(page)}\n"
                    f"room={page.locator('#room-state').inner_text()}\n{log_path.read_text()}", pytrace=False)


def test_the_js_app_owns_the_room_and_the_player_draws_from_it(browser_page, browser_log, tmp_path: Path):
    process, log_path = start_run_py(tmp_path)
    responses: list[tuple[int, str]] = []
    browser_page.on("response", lambda r: responses.append((r.status, r.url)))
    try:
        started = time.monotonic()
        url = printed_url(process, log_path)
        url_s = time.monotonic() - started
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        assert params["url"][0].startswith("ws://127.0.0.1:") and params["token"][0].count(".") == 2, url
        browser_page.goto(url, wait_until="domcontentloaded")
        wait_for_frames(browser_page, log_path)
        playing = stats(browser_page)
        listed = participants(browser_page)  # the app's own list, from its own room events
        room_state = browser_page.locator("#room-state").inner_text()
        browser_page.screenshot(path=str(tmp_path / "js-room-page.png"))
        # the player lets go: player.disconnect() through the page's API, as the app's Leave does first
        browser_page.evaluate("window.avatarPlayer.stop()")
        browser_page.wait_for_function("JSON.parse(window.avatarStats()).state === 'disconnected'", timeout=10_000)
        browser_page.wait_for_timeout(1000)  # a disconnect of the app's room would show by now
        after = browser_page.evaluate("""() => ({state: window.appRoom.state,
            remotes: [...window.appRoom.remoteParticipants.keys()], sameRoom: JSON.parse(window.avatarStats()).sameRoom})""")
        listed_after = participants(browser_page)
        # the app leaves its room itself: its Leave button (stop() again is harmless, then room.disconnect())
        browser_page.click("#leave")
        browser_page.wait_for_function("window.appRoom.state === 'disconnected'", timeout=10_000)
        rejoinable = browser_page.locator("#join").is_enabled()
    finally:
        code = stop_run_py(process)
    why = f"stats={playing}\nafter={after}\n{log_path.read_text()}"
    print(f"\nscreenshot: {tmp_path / 'js-room-page.png'}\nrun.py printed the URL after {url_s:.1f} s; "
          f"participants={listed}; face={playing['face']}")
    assert playing["sameRoom"] is True, why  # the player's room is the app's window.appRoom
    assert room_state == "connected", room_state
    assert "avatar-worker" in listed and any(name.endswith("(you)") for name in listed), listed
    assert playing["state"] == "connected" and playing["motionPath"] == "script", why
    face = playing["face"]
    assert face["framesReceived"] > 25 and face["decodeErrors"] == 0, why
    assert playing["summary"]["packetsMalformed"] == 0, why
    assert after["state"] == "connected" and "avatar-worker" in after["remotes"], why  # the player left it alone
    assert after["sameRoom"] is True, why  # the player still names the app's room
    assert "avatar-worker" in listed_after, listed_after
    assert rejoinable, "Join must be usable again after Leave"
    bad = [(s, u) for s, u in responses if s >= 400]
    assert not bad, f"requests failed: {bad}"
    fetched = {urllib.parse.urlsplit(u).path for _, u in responses}
    assert {"/app.js", "/main.py", "/vendor/livekit-client/livekit-client.esm.mjs"} <= fetched, fetched
    assert code == 0, f"run.py exited with {code} on Ctrl-C:\n{log_path.read_text()}"
    assert not browser_log.off_loopback, browser_log.off_loopback


LISTENERS = "() => Object.fromEntries(['trackSubscribed', 'dataReceived', 'disconnected'].map(n => [n, window.appRoom.listenerCount(n)]))"


def test_the_app_disconnects_its_room_under_the_player_and_joins_again(browser_page, browser_log, tmp_path: Path):
    """The app disconnects its room while the player still reads it (no ``stop()`` first): the
    player goes to ``disconnected``; the app joins again and starts the player, which releases the
    last session first, so its listeners are on the room once, not twice (the player's bug fixed
    with this test), and ``stop()`` takes them all off."""
    process, log_path = start_run_py(tmp_path)
    try:
        url = printed_url(process, log_path)
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        browser_page.goto(url, wait_until="domcontentloaded")
        wait_for_frames(browser_page, log_path, 5)
        first = browser_page.evaluate(LISTENERS)
        browser_page.evaluate("window.appRoom.disconnect()")
        browser_page.wait_for_function("JSON.parse(window.avatarStats()).state === 'disconnected'", timeout=10_000)
        browser_page.evaluate(f"window.appRoom.connect({json.dumps(params['url'][0])}, {json.dumps(params['token'][0])})")
        browser_page.evaluate("window.avatarPlayer.start()")
        again = stats(browser_page)
        second = browser_page.evaluate(LISTENERS)
        browser_page.evaluate("window.avatarPlayer.stop()")
        browser_page.wait_for_function("JSON.parse(window.avatarStats()).state === 'disconnected'", timeout=10_000)
        stopped = browser_page.evaluate(LISTENERS)
        room_state = browser_page.evaluate("window.appRoom.state")
    finally:
        stop_run_py(process)
    why = f"first={first} second={second} stopped={stopped} stats={again}"
    assert again["state"] == "connected" and again["sameRoom"] is True and again["motionPath"] == "script", why
    assert second == first, why  # one set of the player's listeners on the app's room
    assert all(stopped[n] < first[n] for n in first), why  # and none once it stopped
    assert room_state == "connected", room_state
    assert not browser_log.off_loopback, browser_log.off_loopback
