"""A 40 ms clock on absolute deadlines (a naive ``sleep(0.04)`` loop drifts ~1 ms per tick)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Ticker"]

_EARLY_TOLERANCE_MS = 1.0
"""Timers fire up to about a millisecond early against the clock; within that, the tick is due
(sleeping again for a fraction of a millisecond would cost a second timer per tick)."""


class Ticker:
    """Calls ``on_tick(now_ms)`` every ``interval_ms`` against ``start + n * interval``.

    When the event loop falls behind (a busy main thread), the missed ticks run at once, so the
    motion catches up with the audio that kept playing and no frame piles up in the jitter buffer.
    After a stall longer than ``max_catch_up`` ticks the schedule restarts from now instead
    (counted in ``overruns``): a burst of seconds of stale motion would look worse than a jump.
    """

    def __init__(self, interval_ms: float, on_tick: Callable[[float], None], clock: Callable[[], float],
                 max_catch_up: int = 5) -> None:
        self.interval_ms = interval_ms
        self._on_tick = on_tick
        self._clock = clock
        self.max_catch_up = max_catch_up
        self._task: asyncio.Task | None = None
        self.ticks = 0
        self.caught_up = 0
        """Ticks run late, back to back, to catch up."""
        self.overruns = 0
        self.lateness_ms_total = 0.0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        deadline = self._clock()
        while True:
            now = self._clock()
            if now < deadline - _EARLY_TOLERANCE_MS:  # woke early: not due yet
                await asyncio.sleep((deadline - now) / 1000.0)
                continue
            behind = int((now - deadline) // self.interval_ms)
            if behind > self.max_catch_up:
                self.overruns += 1
                deadline, behind = now, 0
            self.caught_up += behind
            for _ in range(behind + 1):
                self.lateness_ms_total += max(0.0, now - deadline)
                self.ticks += 1
                self._on_tick(now)
                deadline += self.interval_ms
            await asyncio.sleep(max(0.0, deadline - self._clock()) / 1000.0)
