"""Data messages: queued, and sent in order by pump tasks (a part of
:class:`avatar_worker.transport.publisher.Publisher`).

Data messages (:meth:`Publisher.send_data`) are queued and sent in order by two pump tasks, one for
reliable and one for lossy messages, so the real-time loop never waits on the SDK. Other parts of
the worker see every room the publisher joins through :class:`RoomHook` objects (data they
receive, participants leaving, remote audio tracks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from livekit import rtc

__all__ = ["DataQueue"]

log = logging.getLogger("avatar_worker.publisher")  # the name it always logged under (serve.py, tests filter on it)


@dataclass(frozen=True, slots=True)
class _Outgoing:
    payload: bytes
    topic: str
    reliable: bool
    destinations: tuple[str, ...]


class DataQueue:
    """The publisher's data messages: :meth:`send_data` queues (never blocks), one pump task per
    queue (reliable, lossy) sends in order. Mixed into
    :class:`avatar_worker.transport.publisher.Publisher`, whose state it shares."""


    LOSSY_QUEUE = 64
    """Lossy data messages waiting to be sent; more are dropped (stale motion is useless)."""
    RELIABLE_QUEUE = 1024

    room: rtc.Room | None
    _connected: bool
    _queues: dict[bool, asyncio.Queue[_Outgoing]]
    _pumps: list[asyncio.Task[None]]
    data_dropped: int

    def _start_pumps(self) -> None:
        """One queue and pump task for reliable messages, one for lossy ones (once)."""
        if not self._pumps:
            for reliable, size in ((True, self.RELIABLE_QUEUE), (False, self.LOSSY_QUEUE)):
                queue: asyncio.Queue[_Outgoing] = asyncio.Queue(size)
                self._queues[reliable] = queue
                self._pumps.append(asyncio.create_task(self._pump(queue), name=f"data-pump-{reliable}"))

    def send_data(self, payload: bytes, *, topic: str, reliable: bool,
                  destinations: Sequence[str] = ()) -> bool:
        """Queue a data message (sent in order by a pump task; never blocks).

        ``destinations`` empty means everyone else. False, and nothing queued, while not
        connected, when nobody else is in the room, or when the queue is full (counted in
        :attr:`data_dropped`, except "nobody there").
        """
        queue = self._queues.get(reliable)
        room = self.room
        if queue is None or room is None or not self._connected:
            self.data_dropped += 1
            return False
        if not room.remote_participants:
            return False
        try:
            queue.put_nowait(_Outgoing(payload, topic, reliable, tuple(destinations)))
        except asyncio.QueueFull:
            self.data_dropped += 1
            return False
        return True

    async def _pump(self, queue: asyncio.Queue[_Outgoing]) -> None:
        while True:
            item = await queue.get()
            try:
                await self._publish_data(item)
            finally:
                queue.task_done()

    async def _publish_data(self, item: _Outgoing) -> None:
        room = self.room
        if room is None or not self._connected:
            self.data_dropped += 1
            return
        try:
            await asyncio.wait_for(room.local_participant.publish_data(
                item.payload, reliable=item.reliable, topic=item.topic,
                destination_identities=list(item.destinations)), 5.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # e.g. the connection dropped meanwhile
            self.data_dropped += 1
            log.debug("data message on %r not sent: %s", item.topic, exc or type(exc).__name__)

    async def flush_data(self, timeout: float = 2.0) -> bool:
        """Wait until the queued reliable messages went out (True) or ``timeout`` passed."""
        queue = self._queues.get(True)
        if queue is None or not self._pumps:
            return True
        try:
            await asyncio.wait_for(queue.join(), timeout)
        except asyncio.TimeoutError:
            return False
        return True
