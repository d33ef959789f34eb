"""Helpers shared by the parity tests (issue 4): the harness page, Python run inside it, workers."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tools.realstack import HarnessRun, harness_url, read_harness, start_worker, wait_for  # noqa: F401 (re-exported)


def scripted_seqs(frames: list[bytes], total: int) -> list[int | None]:
    """The worker's seq of each frame, from its scripted payload ``payload_for(0..total-1)``
    (None for a frame the script never made)."""
    from avatar_worker.modes.scripted import payload_for

    seq_of = {payload_for(seq): seq for seq in range(total)}
    return [seq_of.get(frame) for frame in frames]


def assert_in_order(frames: list[bytes], total: int, why: str) -> list[int]:
    """Every frame is a scripted one, none twice, in order; returns their seqs."""
    seqs = scripted_seqs(frames, total)
    assert None not in seqs, "the renderer got a frame the worker never sent\n" + why
    assert seqs == sorted(set(seqs)), "rendered out of order or twice\n" + why
    return seqs


def frames_vs_script(frames: list[bytes], total: int) -> str:
    """How rendered frames differ from the scripted ``payload_for(0..total-1)``, in one short
    line ('' when identical), so a failure message is not a diff of hundreds of payloads."""
    seqs = scripted_seqs(frames, total)
    if seqs == list(range(total)):
        return ""
    missing = sorted(set(range(total)) - set(seqs))
    known = [seq for seq in seqs if seq is not None]
    disorder = [(a, b) for a, b in zip(known, known[1:]) if b <= a]
    return (f"{len(frames)} of {total} frames; missing seqs {missing[:20]}; "
            f"{seqs.count(None)} not scripted; out of order or repeated at {disorder[:10]}")


def new_room() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


def open_harness(page, app, server, room: str, *, identity: str = "viewer", can_publish: bool = False,
                 **params: str) -> None:
    token = server.token(identity, room, can_publish=can_publish)
    page.goto(harness_url(app, server, token, **params))
    deadline = time.monotonic() + 60
    while page.evaluate("window.harness && window.harness.phase") in (None, "booting"):
        if time.monotonic() > deadline:
            pytest.fail("the harness page did not boot in 60 s")
        time.sleep(0.2)


def turn_end(run: HarnessRun) -> bool:
    return "turn-ended" in run.event_names()


def play(page, app, server, room: str, tmp_path, *worker_args: str, until=turn_end, timeout_s: float = 90,
         **params: str):
    """The usual parity run: a scripted worker with ``worker_args``, the harness page (``params``
    in its query), then wait until ``until(run)``; the worker is stopped either way.
    Returns ``(run, worker)``."""
    worker = start_worker(server, room, tmp_path, *worker_args)
    try:
        open_harness(page, app, server, room, **params)
        run = wait_for(page, until, timeout_s=timeout_s)
    finally:
        worker.stop()
    return run, worker


def py(page, code: str):
    """Run Python (statements, ``await`` allowed) in the harness page's namespace; the value of the
    last expression comes back as JSON. An exception in it fails the test with the traceback."""
    return json.loads(page.evaluate("(code) => window.harness.run(code)", code))


def explain(run: HarnessRun, *workers) -> str:
    text = run.explain() + f"\ncarrier={run.results.get('carrier')} fallbacks={run.results.get('fallbacks')}"
    for worker in workers:
        text += "\nworker:\n" + worker.tail()
    return text


def events_of(run: HarnessRun, name: str) -> list[list]:
    """The payloads of every ``name`` event, in order."""
    return [e[1] for e in run.results.get("events", []) if e[0] == name]
