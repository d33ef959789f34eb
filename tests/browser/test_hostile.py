"""A hostile participant in the avatar's room (tests/browser/intruder.py): the player must keep
rendering the real avatar byte for byte, stay alive, and count what it ignored.

Real stack: LiveKit server, the scripted avatar worker (kind agent), Pyodide's player in Chromium,
and the intruder on livekit's Python SDK as an ordinary participant that was (wrongly) allowed to
publish video.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tools.realstack import start_worker, wait_for

from .intruder import BURST, CARRIER_FRAMES, SPOOFED_TEXT
from .parity import assert_in_order, events_of, explain, frames_vs_script, new_room, open_harness, turn_end

INTRUDER = Path(__file__).with_name("intruder.py")


def start_intruder(server, room: str, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "intruder.json"
    token = server.token("intruder", room, can_publish=True)  # kind standard; any source (a lax grant)
    env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_TOKEN=token)
    log = (tmp_path / "intruder.log").open("wb")
    process = subprocess.Popen([sys.executable, str(INTRUDER), "--out", str(out), *args], env=env,
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process, out


def finish_intruder(process: subprocess.Popen, out: Path, tmp_path: Path, timeout_s: float = 60) -> dict:
    try:
        process.wait(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
    log = (tmp_path / "intruder.log").read_text(errors="replace")
    assert process.returncode == 0 and out.exists(), f"the intruder failed ({process.returncode}):\n{log[-3000:]}"
    return json.loads(out.read_text())


def wait_connected(page, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while page.evaluate("window.harness && window.harness.phase") != "connected":
        assert time.monotonic() < deadline, "the player did not connect"
        time.sleep(0.2)


def test_an_intruder_cannot_drive_the_face_or_the_events(browser_page, app, livekit_server, tmp_path):
    room = new_room()
    worker = start_worker(livekit_server, room, tmp_path / "worker", "--frames", "500", "--tail-ms", "1500")
    try:
        open_harness(browser_page, app, livekit_server, room)
        wait_connected(browser_page)
        intruder, out = start_intruder(livekit_server, room, tmp_path, "--delay", "1")
        attack = finish_intruder(intruder, out, tmp_path)
        run = wait_for(browser_page, turn_end, timeout_s=90)
        alive = browser_page.evaluate("1 + 1")  # the page still answers after the burst
    finally:
        worker.stop()
    why = explain(run, worker) + f"\nintruder: {json.dumps(attack)[:2000]}"
    sent = attack["sent"]
    assert sent.get("video-published") == 1 and attack["video_frames"] > 50, why
    assert sent.get("burst") == BURST and sent.get("carrier") == CARRIER_FRAMES and sent.get("transcript") == 5, why
    assert alive == 2 and run.phase == "connected", why
    assert frames_vs_script(run.frames, 500) == "", why  # the real avatar's turn, byte for byte
    s = run.summary
    assert s["framesDropped"] == 0 and s["packetsMalformed"] == 0 and s["turns"] == 1, why
    assert run.results["motionMode"] == "script" and run.results["fallbacks"] == [], why
    # nothing the intruder said became an event
    assert not [e for e in events_of(run, "transcript") if SPOOFED_TEXT in json.dumps(e)], why
    assert events_of(run, "agent-status") == [] and events_of(run, "data-message") == [], why
    # ... and everything it sent is counted
    ignored = s["untrustedReasons"]
    assert ignored.get("motion-track") == 1, why
    assert ignored.get("data", 0) >= BURST + 10, why
    assert ignored.get("control", 0) >= sent.get("deep-control", 0) + sent.get("fake-ack", 0) >= 1, why
    assert ignored.get("data-carrier") == CARRIER_FRAMES, why
    assert s["untrustedIgnored"] == sum(ignored.values()), why
    audio = run.results["audioElements"]
    assert audio and all(a["identity"] != attack["identity"] for a in audio), why


def test_an_intruder_cannot_feed_the_data_carrier(browser_page, app, livekit_server, tmp_path):
    """On the data-packet carrier, motion packets are data messages: only the avatar's count,
    even when the intruder sends well-formed ones first and acknowledges the carrier for it."""
    room = new_room()
    # a lead-in: frames sent before the player's carrier request reached the worker are not for it
    worker = start_worker(livekit_server, room, tmp_path / "worker", "--frames", "200", "--lead-in-ms", "4000",
                          "--tail-ms", "1500")
    try:
        open_harness(browser_page, app, livekit_server, room, mode="data")
        wait_connected(browser_page)
        intruder, out = start_intruder(livekit_server, room, tmp_path, "--attacks", "deep,carrier", "--linger", "1")
        attack = finish_intruder(intruder, out, tmp_path)
        run = wait_for(browser_page, turn_end, timeout_s=90)
    finally:
        worker.stop()
    why = explain(run, worker) + f"\nintruder: {json.dumps(attack)[:2000]}"
    assert attack["sent"].get("carrier") == CARRIER_FRAMES, why
    assert run.results["carrier"] == "data" and run.phase == "connected", why
    seqs = assert_in_order(run.frames, 200, why)  # every frame rendered is the avatar's, in order
    assert len(seqs) >= 197, why  # (data messages are lossy: REDUNDANT covers single losses)
    assert run.summary["untrustedReasons"].get("data-carrier") == CARRIER_FRAMES, why
    assert [e for e in events_of(run, "data-message") if e[0].get("participant_identity") == attack["identity"]] == [], why
