"""``--republish-after N``: swap the motion track for a fresh one in the middle of the first turn.

After the first turn's ``N``-th frame has gone out, the motion track is unpublished and a new
one (same name, new track sid, same source) is published; the turn's frames go on, on the new
track. Frames due while the swap is under way are refused by the publisher and logged with
``"sent": false``. Two send-log records::

    {"kind": "republish", "event": "start", "seq": <last seq sent on the old track>, "t_ms"}
    {"kind": "republish", "event": "done", "seq": <next seq to go out>, "t_ms",
     "old_sid", "new_sid", "took_ms"}          # "ok": false and no sids if it failed
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .streamer import SendLog, TurnObserver
from ..turns import Turn

__all__ = ["RepublishAfter"]

log = logging.getLogger("avatar_worker.republish")  # the name it always logged under (serve.py, tests filter on it)


class RepublishAfter(TurnObserver):
    """Calls ``republish`` once, after ``frames`` frames of the first turn (a ``TurnObserver``)."""

    def __init__(self, republish: Callable[[], Awaitable[tuple[str, str] | None]], frames: int, *,
                 send_log: SendLog | None = None, wall_clock: Callable[[], float] = time.time) -> None:
        if frames < 1:
            raise ValueError("frames must be >= 1")
        self.republish = republish
        self.frames = frames
        self.send_log = send_log
        self._wall = wall_clock
        self.task: asyncio.Task[None] | None = None
        self._next_seq: int | None = None
        """While the first turn plays: the seq of its next frame."""

    def frame_sent(self, turn: Turn, number: int, frames: int) -> None:
        if number != 1:
            return
        self._next_seq = turn.first_seq + frames
        if frames == self.frames and self.task is None:
            self._log({"event": "start", "seq": turn.first_seq + frames - 1})
            log.info("republishing the motion track after %d frames of the first turn", frames)
            self.task = asyncio.get_running_loop().create_task(self._run(), name="republish")

    def turn_ended(self, turn: Turn, number: int, completed: bool) -> None:
        if number == 1 and self.task is None:
            log.warning("--republish-after %d: the first turn ended after fewer frames", self.frames)

    async def _run(self) -> None:
        began = time.monotonic()
        sids = await self.republish()
        record: dict[str, Any] = {"event": "done", "seq": self._next_seq, "ok": sids is not None,
                                  "took_ms": round((time.monotonic() - began) * 1000, 1)}
        if sids is not None:
            record["old_sid"], record["new_sid"] = sids
        self._log(record)

    def _log(self, record: dict[str, Any]) -> None:
        if self.send_log is not None:
            self.send_log.write({"kind": "republish", "t_ms": round(self._wall() * 1000, 3), **record})

    async def close(self) -> None:
        """Cancel a republish still under way."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
