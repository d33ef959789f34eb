"""Replay (issue 5, point 5): the avatar worker plays a recorded animation (serialized ``Message``s
plus PCM) and the renderer in the browser receives exactly those bytes, in order."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys


from avatar_worker.modes.replay import read_messages
from tools.realstack import ROOT, start_worker

from .parity import explain, new_room, open_harness, wait_for


def test_a_recording_reaches_the_renderer_byte_for_byte(browser_page, app, livekit_server, tmp_path):
    recording = tmp_path / "rec"
    made = subprocess.run([sys.executable, "-m", "avatar_worker.record", "--text", "Replaying a recorded turn.",
                           "--seed", "3", "--out", str(recording)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    messages = read_messages(recording / "messages.bin")
    assert len(messages) >= 25 and len(set(messages)) > len(messages) // 2, "a recording worth replaying"
    room = new_room()
    worker = start_worker(livekit_server, room, tmp_path / "worker", "--mode", "replay", "--replay-dir",
                          str(recording), "--tail-ms", "1500")
    try:
        open_harness(browser_page, app, livekit_server, room)
        run = wait_for(browser_page, lambda r: "turn-ended" in r.event_names(), timeout_s=90)
    finally:
        worker.stop()
    why = explain(run, worker) + f"\nrecording: {json.loads(made.stdout.splitlines()[-1])}"
    assert run.frames == messages, f"rendered {len(run.frames)} frames, recorded {len(messages)}\n" + why
    sent = [r for r in worker.sent() if r.get("kind") == "frame"]
    assert [r["msg_sha256"] for r in sent] == [hashlib.sha256(m).hexdigest() for m in messages], why
    assert run.summary["turns"] == 1 and run.summary["framesSkipped"] == 0, why
