"""avatar_worker/transport/pacing.py: the absolute-deadline frame clock, on a fake time. No server, no
network."""

from __future__ import annotations

import asyncio

import pytest

from avatar_worker.transport.pacing import FrameClock
from avatarplayer.constants import FRAME_INTERVAL_MS


class FakeTime:
    """A monotonic clock that only moves when slept on (plus optional work per sleep)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.extra: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + (self.extra.pop(0) if self.extra else 0.0)


class TestFrameClock:
    def test_deadlines_are_absolute(self) -> None:
        ft = FakeTime()
        clock = FrameClock(0.04, monotonic=ft.monotonic, sleep=ft.sleep, precise_s=0)

        async def go() -> list[float]:
            clock.start()
            out = []
            for _ in range(5):
                tick = await clock.tick()
                out.append(tick.deadline)
                ft.now += 0.013  # work done after each tick must not shift later deadlines
            return out

        deadlines = asyncio.run(go())
        assert deadlines == pytest.approx([100.0, 100.04, 100.08, 100.12, 100.16])
        assert ft.sleeps[1] == pytest.approx(0.027)

    def test_late_ticks_are_counted_and_big_stalls_rebase(self) -> None:
        ft = FakeTime()
        clock = FrameClock(0.04, monotonic=ft.monotonic, sleep=ft.sleep, precise_s=0,
                           late_threshold_s=0.01, resync_after_s=0.2)

        async def go() -> None:
            clock.start()
            await clock.tick()
            ft.now += 0.06  # tick 1 due at +0.04 starts at +0.06: 20 ms late
            await clock.tick()
            ft.now += 0.5  # a half-second stall
            t = await clock.tick()
            assert t.deadline == pytest.approx(ft.now)  # rebased, not a burst of missed ticks
            t = await clock.tick()
            assert t.deadline == pytest.approx(ft.now)

        asyncio.run(go())
        assert clock.late == 1 and clock.resyncs == 1

    def test_real_clock_keeps_25_fps(self) -> None:
        async def go() -> list[float]:
            clock = FrameClock()
            stamps = []
            for _ in range(26):
                await clock.tick()
                stamps.append(clock._monotonic())
            return stamps

        stamps = asyncio.run(go())
        total = stamps[-1] - stamps[0]
        assert total == pytest.approx(25 * FRAME_INTERVAL_MS / 1000, abs=0.01)
