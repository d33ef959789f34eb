"""avatar_worker/transport/rejoin.py: the rejoin backoff and loop, and a join step that ends when the
room is lost. No server, no network."""

from __future__ import annotations

import asyncio
import time

import pytest

from avatar_worker.transport.publisher import Publisher, PublisherError, RejoinBackoff

from .helpers import SETTINGS


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeRoom:
    def __init__(self) -> None:
        self.connected = True

    def isconnected(self) -> bool:
        return self.connected

    async def disconnect(self) -> None:
        self.connected = False


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


def test_a_join_step_ends_when_the_room_is_lost() -> None:
    """The SDK's connect or publish may wait forever once the room is gone (dropped again as a
    duplicate while joining): each step waits for the room as well, and for a time limit."""
    from livekit import rtc

    from avatar_worker.transport.rejoin import _settle

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def fails() -> None:
        raise RuntimeError("refused")

    async def go() -> list[object]:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[int] = loop.create_future()
        never: asyncio.Future[int] = loop.create_future()
        loop.call_later(0.05, lost.set_result, rtc.DisconnectReason.DUPLICATE_IDENTITY)
        started = time.monotonic()
        results: list[object] = [await _settle(forever(), lost, 10.0), time.monotonic() - started]
        results.append(await _settle(forever(), never, 0.05))
        results.append(await _settle(fails(), never, 1.0))
        results.append(await _settle(asyncio.sleep(0), never, 1.0))
        return results

    lost, took, timed_out, failed, ok = asyncio.run(go())
    assert lost == "the room was lost (DUPLICATE_IDENTITY)" and took < 2.0
    assert timed_out == "no answer within 0.05 s"
    assert isinstance(failed, RuntimeError) and str(failed) == "refused"
    assert ok is None
