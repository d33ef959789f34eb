"""The real pipeline end to end: LiveKit server, avatar worker, transform worker, Pyodide player.

Every test runs the real avatar worker (scripted mode: known seqs and payloads, a send log) into
a loopback LiveKit server, and the real AvatarPlayer inside Pyodide in Debian's Chromium, with a
renderer that records what it receives. Failure messages carry the player's session summary.
"""

from __future__ import annotations

import statistics
import uuid

import pytest

from avatar_worker.modes.scripted import payload_for
from tools.realstack import harness_url, start_worker, wait_for

from .parity import frames_vs_script

CLIENTS = ["2.23.0", "2.16.1"]

pytestmark = pytest.mark.firefox  # the Firefox lane runs these too


@pytest.fixture
def room():
    return f"e2e-{uuid.uuid4().hex[:10]}"


def viewer_token(livekit_server, room):
    return livekit_server.token("viewer", room, can_publish=False)


def open_player(browser_page, app, livekit_server, room, **params):
    browser_page.goto(harness_url(app, livekit_server, viewer_token(livekit_server, room), **params))


@pytest.mark.parametrize("lk, page", [(CLIENTS[0], "pyodide"), (CLIENTS[1], "pyodide"), (CLIENTS[0], "pyscript")])
def test_scripted_turn_of_500_frames_arrives_whole_in_order_and_paced(browser_page, app, livekit_server, room,
                                                                      tmp_path, lk, page):
    worker = start_worker(livekit_server, room, tmp_path, "--frames", "500", "--tail-ms", "1500")
    try:
        open_player(browser_page, app, livekit_server, room, lk=lk, page=page)
        run = wait_for(browser_page, lambda r: len(r.results.get("frames", [])) >= 500
                       and "turn-ended" in r.event_names(), timeout_s=90)
    finally:
        worker.stop()
    why = run.explain() + "\nworker:\n" + worker.tail()
    assert run.phase == "connected", why
    assert frames_vs_script(run.frames, 500) == "", why  # every frame, in order, byte-identical
    sent = worker.sent_frames()
    assert sorted(sent) == list(range(500)), why
    times = run.results["times"]
    intervals = [b - a for a, b in zip(times, times[1:])]
    assert statistics.mean(intervals) == pytest.approx(40, abs=2), why
    s = run.summary
    assert (s["framesRendered"], s["framesReceived"], s["framesSkipped"], s["framesDropped"]) == (500, 500, 0, 0), why
    assert s["packetsMalformed"] == 0 and s["rendererErrors"] == 0 and s["turns"] == 1, why
    assert s["lastRenderedSeq"] == 499 and s["jitterBufferEmittedCount"] == 500, why
    assert s["packetsReceived"] >= 500 + s["packetsIdle"], why
    assert len(set(run.results["conversations"])) == 1, why
    assert run.results["motionMode"] == "script", why
    assert run.event_names().count("turn-started") == 1 and run.event_names().count("turn-ended") == 1, why
    # autoplay is allowed here: no false alarm while the browser opens its audio output (Firefox)
    assert "audio-blocked" not in run.event_names() and run.results["canPlayAudio"] is True, why


def test_injected_loss_reorder_duplicates_and_bad_packets_keep_order(browser_page, app, livekit_server, room, tmp_path):
    worker = start_worker(livekit_server, room, tmp_path, "--frames", "400", "--loss", "0.05", "--reorder", "0.05",
                          "--duplicate", "0.05", "--bad", "0.02", "--seed", "11", "--tail-ms", "1500")
    try:
        open_player(browser_page, app, livekit_server, room)
        run = wait_for(browser_page, lambda r: "turn-ended" in r.event_names(), timeout_s=90)
    finally:
        worker.stop()
    why = run.explain() + "\nworker:\n" + worker.tail()
    records = worker.sent()
    bad_sent = sum(1 for r in records if r.get("kind") == "bad" and r.get("sent"))
    sent = worker.sent_frames()
    lost_on_purpose = 400 - len(sent)
    assert lost_on_purpose > 0 and bad_sent > 0, "the injection did nothing: " + worker.tail()

    expected = {seq: payload_for(seq) for seq in sent}
    rendered_seqs = []
    for frame in run.frames:
        seq = next((s for s, p in expected.items() if p == frame), None)
        assert seq is not None, "the renderer got a frame the worker never sent\n" + why
        rendered_seqs.append(seq)
    assert rendered_seqs == sorted(set(rendered_seqs)), "rendered out of order or twice\n" + why
    s = run.summary
    assert s["packetsMalformed"] >= 1, why  # the injected bad packets were counted, not raised
    assert s["framesRendered"] == len(rendered_seqs), why
    assert s["framesReceived"] == s["framesRendered"] + s["framesDropped"] + s["framesBuffered"], why
    # a reordered frame trades places with its neighbour (40 ms, inside the buffer's delay) and a
    # duplicate is dropped: every frame the worker sent renders, and every loss is a skip
    assert sorted(rendered_seqs) == sorted(sent), why
    assert s["framesDropped"] == s["framesDroppedDuplicate"] + s["framesDroppedStale"], why
    assert s["framesSkipped"] >= 1, why
    assert "error" not in run.event_names() and s["rendererErrors"] == 0, why


def test_worker_leaving_mid_turn_stalls_once_then_disconnect_ends_cleanly(browser_page, app, livekit_server, room,
                                                                          tmp_path):
    worker = start_worker(livekit_server, room, tmp_path, "--frames", "500", "--leave-after", "100")
    try:
        open_player(browser_page, app, livekit_server, room)
        run = wait_for(browser_page, lambda r: "stalled" in r.event_names(), timeout_s=60)
        why = run.explain() + "\nworker:\n" + worker.tail()
        assert "stalled" in run.event_names(), why
        wait_for(browser_page, lambda r: False, timeout_s=4)  # a second window must not fire again
        browser_page.evaluate("window.harness.disconnect()")
        run = wait_for(browser_page, lambda r: r.results.get("state") == "disconnected", timeout_s=20)
    finally:
        worker.stop()
    why = run.explain() + "\nworker:\n" + worker.tail()
    names = run.event_names()
    assert names.count("stalled") == 1, why
    assert 90 <= run.summary["framesRendered"] <= 100, why
    last_frame_ms = run.results["times"][-1]
    stalled_ms = next(e[2] for e in run.results["events"] if e[0] == "stalled")
    assert 2900 <= stalled_ms - last_frame_ms <= 3600, why  # 3 s of silence, seen at a 40 ms tick
    assert run.states() == ["connecting", "connected", "disconnected"], why
    assert names[-1] == "disconnected", why
    assert run.summary["stallCount"] == 1 and run.summary["stalledDurationMs"] >= 3000, why
    hooks = [h[0] for h in run.results["hooks"]]
    assert hooks == ["turn_started", "stalled", "turn_ended"], why  # the renderer can blend to idle
    assert run.results["hooks"][-1][2] == "disconnect", why
