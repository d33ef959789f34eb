"""A turn that starts as soon as the viewer subscribed (no lead-in, like the demo's greeting), on
the real stack: the viewer is in the room first, then the avatar worker joins and speaks (speech
mode, ``--lead-in-ms 0``, ``--agent-data``) into a loopback LiveKit server. The page's audio clock
locks only some hundreds of ms into the turn; the real player in Pyodide (Chromium) must still
render every frame of it, the first ones on its own clock, the rest on the voice's.

(The demo page's own check, with the face renderer, is test_demo_page.py's
``test_the_greeting_renders_from_its_first_frame``.)
"""

from __future__ import annotations

import hashlib
import uuid

from tools.realstack import start_worker

from .parity import events_of, explain, open_harness, wait_for

TEXT = "Hello! I start speaking the moment you are here, and you see my very first words."


def test_a_turn_without_a_lead_in_renders_its_first_frames(browser_page, app, livekit_server, tmp_path):
    room = f"e2e-{uuid.uuid4().hex[:10]}"
    open_harness(browser_page, app, livekit_server, room)  # the viewer is there first, as a demo visitor is
    worker = start_worker(livekit_server, room, tmp_path, "--mode", "speech", "--text", TEXT,
                          "--lead-in-ms", "0", "--tail-ms", "1500", "--agent-data")
    try:
        run = wait_for(browser_page, lambda r: "turn-ended" in r.event_names(), timeout_s=90)
    finally:
        worker.stop()
    why = explain(run, worker)
    s = run.summary
    sent = {rec["msg_sha256"]: rec["seq"] for rec in worker.sent() if rec.get("kind") == "frame"}
    rendered = [sent.get(hashlib.sha256(bytes.fromhex(h)).hexdigest()) for h in run.results["frames"]]
    changes = [(e[0], e[1]) for e in events_of(run, "sync-changed")]
    print(f"\nrendered {len(rendered)} of {len(sent)} frames; dropped {s['framesDropped']} "
          f"(overflow {s['framesDroppedOverflow']}); held for sync {s['framesHeldForSync']}; sync {changes}")
    assert s["framesDroppedOverflow"] == 0 and s["framesDropped"] == 0, why
    assert rendered == sorted(sent.values()), why  # every frame, the first ones included, in order
    assert s["syncMode"] == "audio" and s["framesHeldForSync"] > 0, why  # and it did follow the voice
