"""Captions on the face's clock, on the real stack: the avatar worker speaks a synthesized sentence
(speech mode, ``--agent-data``) into a loopback LiveKit server and sends it word by word, ahead of
time; the real player in Pyodide (Chromium) must emit each word's ``transcript`` event only once
the frame it is heard at has been rendered, in step with the face."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from tools.realstack import start_worker

from .parity import events_of, explain, open_harness, wait_for

TEXT = "Captions follow my face, word by word, and never run ahead of my voice."
WORDS = TEXT.split()


@pytest.fixture
def room():
    return f"e2e-{uuid.uuid4().hex[:10]}"


def test_captions_never_appear_before_their_frame_renders(browser_page, app, livekit_server, room, tmp_path):
    worker = start_worker(livekit_server, room, tmp_path, "--mode", "speech", "--text", TEXT, "--agent-data",
                          "--lead-in-ms", "1500", "--tail-ms", "1500")
    try:
        open_harness(browser_page, app, livekit_server, room)
        run = wait_for(browser_page, lambda r: "turn-ended" in r.event_names()
                       and r.event_names().count("transcript") >= len(WORDS), timeout_s=90)
    finally:
        worker.stop()
    why = explain(run, worker)
    # which seq each rendered frame had: its Message's SHA-256 in the worker's send log
    sent = {rec["msg_sha256"]: rec["seq"] for rec in worker.sent() if rec.get("kind") == "frame"}
    rendered = [(sent.get(hashlib.sha256(bytes.fromhex(h)).hexdigest()), t)
                for h, t in zip(run.results["frames"], run.results["times"])]
    assert rendered and None not in [seq for seq, _ in rendered], why
    captions = [(e[1][0], e[2]) for e in run.results["events"] if e[0] == "transcript"]
    assert "".join(c["text"] for c, _ in captions) == TEXT, why  # the whole sentence ...
    assert [c["text"].strip() for c, _ in captions] == WORDS, why  # ... one word at a time
    arrived = [e[2] for e in run.results["events"] if e[0] == "data-message" and e[1][0]["type"] == "transcript_chunk"]
    leads, after = [], []
    for (caption, shown_at), arrived_at in zip(captions, arrived):
        seq = caption["seq"]
        assert isinstance(seq, int) and caption["turn_seq"] <= seq, why
        # the first frame at or after the word's own (a lost frame does not hold its word back)
        frame_at = next((t for s, t in rendered if s >= seq), None)
        assert frame_at is not None, f"{caption} shown, its frame never rendered\n" + why
        assert shown_at >= frame_at, f"{caption} shown {frame_at - shown_at:.1f} ms before its frame\n" + why
        assert shown_at - frame_at < 45, f"{caption} shown {shown_at - frame_at:.1f} ms after its frame\n" + why
        leads.append(shown_at - arrived_at)
        after.append(shown_at - frame_at)
    print(f"\n{len(captions)} captions: held {min(leads):.0f}..{max(leads):.0f} ms after arrival, "
          f"shown {min(after):.1f}..{max(after):.1f} ms after their frame rendered")
    # the words arrived well ahead (the worker sends them 480 ms early): the player held them
    assert min(leads) > 100, f"held only {leads} ms\n" + why
    s = run.summary
    assert s["captionsHeld"] == len(WORDS) and s["captionsDiscarded"] == 0 and s["captionsExpired"] == 0, why
    assert [e[0]["status"] for e in events_of(run, "agent-status")][:2] == ["speaking", "listening"], why
