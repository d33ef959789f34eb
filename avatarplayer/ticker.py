"""A 40 ms clock on absolute deadlines (a naive ``sleep(0.04)`` loop drifts ~1 ms per tick)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Ticker"]


class Ticker:
    """Calls ``on_tick(now_ms)`` every ``interval_ms`` against ``start + n * interval``.

    When the event loop falls more than one interval behind (a blocked main thread), the missed
    deadlines are dropped, counted in ``overruns``, and the schedule restarts from now: rendering
    a burst of stale frames would look worse than skipping them.
    """

    def __init__(self, interval_ms: float, on_tick: Callable[[float], None], clock: Callable[[], float]) -> None:
        self.interval_ms = interval_ms
        self._on_tick = on_tick
        self._clock = clock
        self._task: asyncio.Task | None = None
        self.ticks = 0
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
            if now - deadline > self.interval_ms:
                self.overruns += 1
                deadline = now
            self.lateness_ms_total += max(0.0, now - deadline)
            self.ticks += 1
            self._on_tick(now)
            deadline += self.interval_ms
            await asyncio.sleep(max(0.0, deadline - self._clock()) / 1000.0)
