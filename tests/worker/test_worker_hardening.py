"""Issue 10, the worker side, without a server: the rejoin backoff, the secret kept out of
``repr`` and off the command line. The live tests are in test_worker_live.py (an impostor takes
the worker's identity) and test_agents_contract.py (a non-agent participant, an oversized stream).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from avatar_worker.config import LiveKitSettings
from avatar_worker.publisher import Publisher, PublisherError, RejoinBackoff

SECRET = "the-api-secret-nobody-may-see-0123456789"
SETTINGS = LiveKitSettings(url="ws://127.0.0.1:1", api_key="devkey", api_secret=SECRET, room="r")


# ------------------------------------------------------------------------------- rejoining


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_backoff_first_at_once_then_doubling_to_the_cap() -> None:
    clock = Clock()
    backoff = RejoinBackoff(1.0, 30.0, stable_after=20.0, clock=clock)
    backoff.connected()
    clock.now = 100.0
    backoff.lost()
    assert [backoff.next_delay() for _ in range(8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.attempts == 8


def test_backoff_short_connections_keep_counting_a_stable_one_resets() -> None:
    """Someone who takes the identity back each time: every connection is short, so the waits grow
    (never a tight loop); once a connection held for ``stable_after`` seconds, it starts afresh."""
    clock = Clock()
    backoff = RejoinBackoff(1.0, 30.0, stable_after=20.0, clock=clock)
    delays = []
    for _ in range(7):
        backoff.connected()
        clock.now += 0.5  # dropped again half a second later
        backoff.lost()
        delay = backoff.next_delay()
        delays.append(delay)
        clock.now += delay
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    backoff.connected()
    clock.now += 20.0
    backoff.lost()
    assert backoff.next_delay() == 0.0 and backoff.next_delay() == 1.0
    with pytest.raises(ValueError):
        RejoinBackoff(0.0, 1.0)


class FakeRoom:
    def __init__(self) -> None:
        self.connected = True

    def isconnected(self) -> bool:
        return self.connected

    async def disconnect(self) -> None:
        self.connected = False


def test_rejoin_loop_backs_off_between_failed_attempts_and_logs_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    publisher = Publisher(SETTINGS, rejoin_backoff=(0.05, 0.2))
    attempts: list[float] = []

    async def join() -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 6:
            raise PublisherError("server unreachable")
        publisher.room = FakeRoom()  # type: ignore[assignment]
        publisher.backoff.connected()

    publisher._join = join  # type: ignore[method-assign]

    async def go() -> None:
        publisher._start_rejoin("DUPLICATE_IDENTITY: test")
        assert publisher._rejoin_task is not None
        await asyncio.wait_for(publisher._rejoin_task, 5)

    caplog.set_level("WARNING", logger="avatar_worker.publisher")
    asyncio.run(go())
    gaps = [round(b - a, 3) for a, b in zip(attempts, attempts[1:])]
    assert len(attempts) == 6 and publisher.rejoins == 1 and publisher.rejoin_attempts == 6
    for gap, planned in zip(gaps, (0.05, 0.1, 0.2, 0.2, 0.2)):
        assert planned - 0.01 <= gap < planned + 0.5, gaps
    text = caplog.text
    assert "rejoin attempt 1 (after DUPLICATE_IDENTITY: test) now" in text
    assert "rejoin attempt 3 (after DUPLICATE_IDENTITY: test) in 0.1 s" in text
    assert "rejoin attempt 5 failed: server unreachable" in text
    assert "rejoined the room (attempt 6, after DUPLICATE_IDENTITY: test)" in text


def test_a_clean_shutdown_stops_the_rejoin_loop() -> None:
    publisher = Publisher(SETTINGS, rejoin_backoff=(0.05, 0.05))
    attempts: list[float] = []

    async def join() -> None:
        attempts.append(time.monotonic())
        raise PublisherError("server unreachable")

    publisher._join = join  # type: ignore[method-assign]

    async def go() -> None:
        publisher._start_rejoin("SIGNAL_CLOSE: test")
        await asyncio.sleep(0.3)
        await asyncio.wait_for(publisher.close(), 5)
        seen = len(attempts)
        await asyncio.sleep(0.3)
        assert len(attempts) == seen
        assert publisher._rejoin_task is not None and publisher._rejoin_task.done()
        publisher._start_rejoin("after close")  # nothing: closed for good
        assert publisher._rejoin_task.done()

    asyncio.run(go())
    assert 2 <= len(attempts) <= 8, attempts
