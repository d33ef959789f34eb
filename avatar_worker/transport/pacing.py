"""A 25 fps clock paced against absolute deadlines.

Tick ``n`` is due at ``start + n * interval``. Sleeping a fixed 40 ms per loop would accumulate
every wake-up delay and every bit of work done between sleeps into a slow drift; sleeping *until
a deadline* keeps the long-run rate exact and leaves only the wake-up jitter of each tick.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from avatarplayer.constants import FRAME_INTERVAL_MS

__all__ = ["FrameClock", "TickTime", "try_realtime"]

log = logging.getLogger("avatar_worker.pacing")  # the name it always logged under (serve.py, tests filter on it)


@dataclass(frozen=True, slots=True)
class TickTime:
    """When a tick was due and when it actually started (both ``time.monotonic`` seconds)."""

    index: int
    deadline: float
    now: float

    @property
    def lateness(self) -> float:
        """Seconds past the deadline (never negative)."""
        return max(0.0, self.now - self.deadline)


class FrameClock:
    """Yields ticks on absolute deadlines; counts and logs late ones.

    ``late_threshold_s`` decides what counts as a late tick (the event loop usually wakes a
    fraction of a millisecond after the deadline). When the loop falls further behind than
    ``resync_after_s`` (a stalled process, a suspended VM) the schedule is rebased on *now*
    instead of firing the missed ticks back to back: a burst of motion frames would be worse for
    the receiver than a gap, and the WebRTC encoder queue drops frames that arrive together.
    """

    def __init__(
        self,
        interval_s: float = FRAME_INTERVAL_MS / 1000,
        *,
        late_threshold_s: float = 0.010,
        resync_after_s: float = 0.200,
        precise_s: float = 0.002,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.interval = interval_s
        self.late_threshold = late_threshold_s
        self.resync_after = max(resync_after_s, interval_s)
        self.precise = max(0.0, precise_s)
        self._monotonic = monotonic
        self._sleep = sleep
        self._origin: float | None = None
        self._next = 0
        self._index = 0
        self.late = 0
        """Ticks that started more than ``late_threshold_s`` after their deadline."""
        self.resyncs = 0
        """Times the schedule was rebased after falling too far behind."""
        self.max_lateness = 0.0

    def start(self, origin: float | None = None) -> None:
        """Anchor tick 0 at ``origin`` (default: now)."""
        self._origin = self._monotonic() if origin is None else origin
        self._next = 0

    @property
    def started(self) -> bool:
        return self._origin is not None

    def deadline(self, ahead: int = 0) -> float:
        """The deadline of the next tick (or of the ``ahead``-th one after it)."""
        if self._origin is None:
            raise RuntimeError("FrameClock.start() was not called")
        return self._origin + (self._next + ahead) * self.interval

    async def sleep_until(self, when: float) -> None:
        """Sleep until the monotonic time ``when`` (no-op if it has passed).

        The event loop wakes up to ~1 ms late (epoll timeouts are whole milliseconds, rounded
        up), so the loop sleeps until ``precise_s`` before the deadline and the rest is a short
        blocking ``time.sleep``, which Linux serves from high-resolution timers.
        """
        delay = when - self._monotonic()
        if delay > self.precise:
            await self._sleep(delay - self.precise)
            delay = when - self._monotonic()
        if delay > 0 and self._sleep is asyncio.sleep:
            time.sleep(delay)
        elif delay > 0:
            await self._sleep(delay)

    async def tick(self) -> TickTime:
        """Wait for the next deadline and return its timing."""
        if self._origin is None:
            self.start()
        deadline = self.deadline()
        await self.sleep_until(deadline)
        now = self._monotonic()
        lateness = now - deadline
        if lateness > self.resync_after:
            log.warning("frame clock %.0f ms behind: rebasing the schedule instead of bursting",
                        lateness * 1000)
            self.resyncs += 1
            self._origin = now - self._next * self.interval
            deadline = now
        elif lateness > self.late_threshold:
            self.late += 1
            log.info("tick %d late by %.1f ms", self._index, lateness * 1000)
        self.max_lateness = max(self.max_lateness, lateness)
        tick = TickTime(self._index, deadline, now)
        self._next += 1
        self._index += 1
        return tick


def try_realtime(priority: int = 10) -> bool:
    """Move the calling thread, and the threads it starts from now on, to SCHED_RR, if allowed.

    On a loaded host the tick jitter is almost all CPU scheduling: measured here with load ~5 on
    2 cores, 500 frames had a capture-interval stdev of 4.8 ms (max 93 ms) in the normal class
    and 0.03–0.08 ms (max 40.7 ms) under SCHED_RR. Call it before the LiveKit SDK starts its
    threads, so they inherit the class: the SDK's callback thread takes the GIL for every event.
    The process uses <10 % of a core and sleeps between ticks, and the kernel's RT throttling
    caps real-time threads anyway. Needs CAP_SYS_NICE (root, or ``setcap``); False otherwise.
    """
    if not hasattr(os, "sched_setscheduler"):
        log.warning("real-time scheduling is not available on this platform")
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))  # 0: the calling thread
    except OSError as exc:
        log.warning("could not switch to real-time scheduling (%s); pacing follows the host's load", exc)
        return False
    log.info("real-time scheduling: SCHED_RR priority %d", priority)
    return True
