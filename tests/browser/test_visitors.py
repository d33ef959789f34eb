"""Many visitors at once, as users run the demo: ``python3 serve.py --workers 2 --nodes 2`` and three
Chromium pages of ``web/index.html``. Each visitor gets a room and an avatar of their own, dispatched
by LiveKit to one of the two worker processes, whichever LiveKit node the visitor connected
through; nobody hears anyone else; killing one worker process ends only its own sessions, and those
visitors get a fresh avatar by reconnecting.

Nothing here skips: a stack that cannot start fails.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from .conftest import CHROMIUM, is_loopback_url
from .test_demo_page import PYTHON_READY_TIMEOUT_S, read_demo, speech_wav, start_demo, wait_demo

VISITORS = 3


@pytest.fixture
def demo2(tmp_path: Path):
    # two sessions at most per worker: the third visitor's job must go to the other one (LiveKit
    # picks among available workers at random, weighted by their reported load)
    # two LiveKit nodes sharing a Redis: the token endpoint hands out each node in turn, and the
    # workers (registered through node 0) still get every visitor's job
    demo = start_demo(tmp_path, "--workers", "2", "--sessions-per-worker", "2", "--nodes", "2")
    yield demo
    demo.stop()
    if demo.group_alive():
        demo.kill()


def sessions_by_worker(log: str) -> dict[str, str]:
    """room -> the serve.py prefix of the worker that ran its latest session ([worker], [worker2])."""
    found: dict[str, str] = {}
    for label, room in re.findall(r"^\[(worker\d*)\] .*avatar_worker\.dispatch: job \S+: a session in room "
                                  r"'([^']+)'", log, re.M):
        found[room] = label
    return found


def worker_pids(log: str) -> dict[str, int]:
    """serve.py's worker label -> pid, from its start-up lines."""
    pids = {}
    for number, pid in re.findall(r"avatar worker (\d+) registered for dispatch .* \(pid (\d+)\)", log):
        pids["worker" if number == "1" else f"worker{number}"] = int(pid)
    return pids


def test_three_visitors_get_their_own_avatar_and_a_killed_worker_costs_only_its_own_sessions(
        demo2, playwright_instance, browser_args, tmp_path):
    wav = speech_wav(tmp_path / "speech.wav")
    args = [a for a in browser_args if not a.startswith("--use-file-for-fake-audio-capture")]
    browser = playwright_instance.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                  args=[*args, f"--use-file-for-fake-audio-capture={wav}"])
    off_loopback: list[str] = []
    try:
        pages = []
        for _ in range(VISITORS):
            context = browser.new_context(viewport={"width": 1100, "height": 820})
            context.on("request", lambda req: None if is_loopback_url(req.url) else off_loopback.append(req.url))
            page = context.new_page()
            page.goto(demo2.url, wait_until="domcontentloaded")
            pages.append(page)
        for page in pages:
            wait_demo(page, demo2, "window.demo && window.demo.phase === 'ready'", PYTHON_READY_TIMEOUT_S,
                      "Python ready")

        # 1. three visitors, three rooms, three greetings
        for page in pages:
            page.click("#connect")
            page.wait_for_timeout(1500)  # let the workers report their load between dispatches
        for page in pages:
            wait_demo(page, demo2, "window.demo.agentStatus === 'listening' && window.demo.transcript.length >= 1 "
                      "&& window.demo.framesRendered > 25", 90, "a greeting of one's own")
        states = [read_demo(page) for page in pages]
        rooms = [state["roomName"] for state in states]
        assert len(set(rooms)) == VISITORS and all(room.startswith("visit-") for room in rooms), rooms
        assert len({state["serverUrl"] for state in states}) == 2, "the visitors all used one LiveKit node"
        log = demo2.log_path.read_text(errors="replace")
        ran = sessions_by_worker(log)
        assert set(rooms) <= set(ran), (rooms, ran)
        assert len(set(ran[room] for room in rooms)) == 2, f"a worker took more than its 2 sessions: {ran}\n{demo2.log_tail(200)}"
        for state in states:
            assert [line["role"] for line in state["transcript"]] == ["agent"], state["transcript"]

        # 2. the first visitor speaks: only its own avatar hears it and answers
        pages[0].click("#mic")
        wait_demo(pages[0], demo2, "window.demo.transcript.some(l => l.role === 'user') && "
                  "window.demo.transcript.filter(l => l.role === 'agent').length >= 2", 60,
                  "a reply to what the first visitor said")
        pages[0].wait_for_timeout(3000)  # time for a stray answer in the other rooms
        for page in pages[1:]:
            state = read_demo(page)
            assert [line["role"] for line in state["transcript"]] == ["agent"], \
                f"another visitor's microphone reached this room: {state['transcript']}"
        # the sessions' own ears: one avatar subscribed to the first visitor's microphone, no other
        listening = re.findall(r"demo: listening to '([^']+)'", demo2.log_path.read_text(errors="replace"))
        assert listening.count(states[0]["identity"]) == 1, (listening, states[0]["identity"])

        # 3. while the first visitor's avatar speaks, kill its worker process (and its job processes)
        wait_demo(pages[0], demo2, "window.demo.agentStatus === 'speaking'", 60, "the avatar answering again")
        victim = ran[rooms[0]]
        os.killpg(worker_pids(log)[victim], signal.SIGKILL)
        hit = [i for i, room in enumerate(rooms) if ran[room] == victim]
        spared = [i for i in range(VISITORS) if i not in hit]
        assert spared, ran
        # mid-turn, the motion stops: a stall (between turns nothing is expected, so nothing stalls)
        wait_demo(pages[0], demo2, "window.demo.summary && window.demo.summary.stallCount >= 1", 30,
                  "the first visitor sees its avatar stall")
        pages[0].click("#mic")  # the visitor stops talking
        pages[0].wait_for_timeout(2000)
        for i in spared:
            state = read_demo(pages[i])
            assert state["state"] == "connected" and state["summary"]["stallCount"] == 0, \
                f"visitor {i + 1}, on the other worker, was affected: {state['summary']}"

        # 4. Reconnect: the same room, a fresh avatar, a new greeting
        for i in hit:
            pages[i].click("#reconnect")
            # the session's counters start again at the reconnect: frames of the fresh avatar's greeting
            wait_demo(pages[i], demo2, "window.demo.state === 'connected' && window.demo.summary.reconnectCount >= 1 "
                      "&& window.demo.summary.turns >= 1 && window.demo.summary.framesRendered > 25", 90,
                      f"visitor {i + 1}'s fresh avatar greeting")
            assert read_demo(pages[i])["roomName"] == rooms[i], "a reconnect must resume the visitor's own room"
        for i in spared:
            assert read_demo(pages[i])["summary"]["stallCount"] == 0
        errors = [(i, read_demo(page)["errors"]) for i, page in enumerate(pages)]
        assert not any(e for _, e in errors), errors
    finally:
        browser.close()
    assert not off_loopback, off_loopback
