"""A 40 ms clock on absolute deadlines (a naive ``sleep(0.04)`` loop drifts ~1 ms per tick)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Ticker"]

_EARLY_TOLERANCE_MS = 1.0
"""Timers fire up to about a millisecond early against the clock; within that, the tick is due
(sleeping again for a fraction of a millisecond would cost a second timer per tick)."""


MAX_PHASE_SHIFT = 0.5
"""A due time later than the regular deadline is followed up to this many intervals later."""


class Ticker:
    """Calls ``on_tick(now_ms)`` every ``interval_ms`` against ``start + n * interval``.

    When the event loop falls behind (a busy main thread), the missed ticks run at once, so the
    motion catches up with the audio that kept playing and no frame piles up in the jitter buffer.
    After a stall longer than ``max_catch_up`` ticks the schedule restarts from now instead
    (counted in ``overruns``): a burst of seconds of stale motion would look worse than a jump.

    ``next_due`` (optional) tells when the next frame should render (its audio is heard then).
    The next tick moves to that time when it is earlier than the regular deadline (at once if it
    has passed: the face is behind the voice) or at most half an interval later, so the schedule
    locks onto the frames' due times instead of rendering each up to 40 ms late.
    """

    def __init__(self, interval_ms: float, on_tick: Callable[[float], None], clock: Callable[[], float],
                 max_catch_up: int = 5, next_due: Callable[[], float | None] | None = None) -> None:
        self.interval_ms = interval_ms
        self._on_tick = on_tick
        self._clock = clock
        self._next_due = next_due
        self.max_catch_up = max_catch_up
        self.phase_shifts = 0
        """Deadlines moved onto a frame's due time."""
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
            behind = max(0, int((now - deadline) // self.interval_ms))
            if behind > self.max_catch_up:
                self.overruns += 1
                deadline, behind = now, 0
            self.caught_up += behind
            for _ in range(behind + 1):
                self.lateness_ms_total += max(0.0, now - deadline)
                self.ticks += 1
                self._on_tick(now)
                deadline += self.interval_ms
            deadline = self._locked(deadline)
            await asyncio.sleep(max(0.0, deadline - self._clock()) / 1000.0)

    def _locked(self, deadline: float) -> float:
        """The regular ``deadline``, or the next frame's due time when it is close to it."""
        if self._next_due is None:
            return deadline
        due = self._next_due()
        if due is None or due - deadline > MAX_PHASE_SHIFT * self.interval_ms:
            return deadline
        self.phase_shifts += due != deadline
        # never sooner than a quarter interval after the tick that just ran: whatever a bug in
        # the due times, the clock must not spin
        return max(due, deadline - 0.75 * self.interval_ms)
