"""The LiveKit side: connect, publish the audio and motion tracks, stay published.

:class:`Publisher` owns the room, the sources and the publications; its jobs are in three parts
it is built from:

- :mod:`avatar_worker.transport.rejoin`: staying in the room (the SDK's own reconnection, our
  rejoins after an involuntary disconnection, the backoff, probing a restarted server);
- :mod:`avatar_worker.transport.tracks`: the audio and motion tracks, publishing and capturing;
- :mod:`avatar_worker.transport.dataqueue`: data messages, queued and pumped.

Other parts of the worker see every room the publisher joins through :class:`RoomHook` objects
(data they receive, participants leaving, remote audio tracks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from livekit import rtc

from ..config import LiveKitSettings
from ..token import mint_token
from .dataqueue import DataQueue, _Outgoing
from .rejoin import RejoinBackoff, RejoinSupervisor, _quietly_leave, _settle, server_address
from .tracks import VIDEO_SIZE, TrackCapture

__all__ = ["LiveKitSettings", "Publisher", "PublisherError", "RejoinBackoff", "RoomHook", "VIDEO_SIZE",
           "server_address"]

log = logging.getLogger("avatar_worker.publisher")  # the name it always logged under (serve.py, tests filter on it)


class PublisherError(RuntimeError):
    """Could not connect or publish (bad URL, rejected token, server unreachable)."""


class RoomHook(Protocol):
    """Something that watches every room the publisher joins (the first and each rejoin)."""

    def attach(self, room: rtc.Room) -> None:
        """Register event handlers on ``room``, before it connects."""
        ...

    def joined(self, room: rtc.Room) -> None:
        """``room`` is connected and our tracks are published (its participants are known)."""
        ...


class Publisher(RejoinSupervisor, TrackCapture, DataQueue):
    """Owns the room, the audio and video sources, and their publications.

    Usable as a :class:`avatar_worker.transport.streamer.MotionSink`. The sources live as long as the
    publisher; rooms and tracks come and go with reconnections.
    """

    def __init__(self, settings: LiveKitSettings, *, rejoin: bool = True,
                 rejoin_backoff: tuple[float, float] = (1.0, 30.0), stable_after: float = 20.0,
                 resume_grace: float = 0.5, probe_interval: float = 0.25,
                 ends_on: frozenset[str] = frozenset()) -> None:
        self.settings = settings
        self.rejoin = rejoin
        self.ends_on = ends_on
        """Disconnect reasons (``ROOM_CLOSED``, ...) after which the worker does not rejoin but
        ends: a dispatched session (avatar_worker/dispatch.py) ends with its room."""
        self.ended = asyncio.Event()
        """Set when a disconnect with a reason in ``ends_on`` ended the session."""
        self.ended_reason: str | None = None
        self.backoff = RejoinBackoff(*rejoin_backoff, stable_after=stable_after)
        self.resume_grace = resume_grace
        self.probe_interval = probe_interval
        self.hooks: list[RoomHook] = []
        self.video_source: rtc.EncodedVideoSource | None = None
        self.audio_source: rtc.AudioSource | None = None
        self.room: rtc.Room | None = None
        self._video_pub: rtc.LocalTrackPublication | None = None
        self._audio_pub: rtc.LocalTrackPublication | None = None
        self._live = False
        """The video track is published on a connected room: frames may go to the source."""
        self._connected = False
        """The room is connected (not reconnecting): data messages may go out."""
        self._closing = False
        self._rejoin_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._queues: dict[bool, asyncio.Queue[_Outgoing]] = {}
        self._pumps: list[asyncio.Task[None]] = []
        self.data_dropped = 0
        """Data messages not sent: not connected, queue full, or refused by the SDK."""
        self.rejoin_took: list[float] = []
        """Seconds from losing the connection to being published again, per recovery."""
        self._lost_at: float | None = None
        self._changed = asyncio.Event()
        self._frames_since_feedback = 0
        self.keyframe_requests = 0
        self.rejoins = 0
        """Successful rejoins."""
        self.rejoin_attempts = 0
        self.disconnects: dict[str, int] = {}
        """Involuntary disconnections by reason (``DUPLICATE_IDENTITY``, ``ROOM_CLOSED``, ...), and
        ``SDK_STUCK`` when we dropped the SDK's own reconnection (the server was back)."""
        self.on_state: Callable[[str], None] | None = None

    # --------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Create the sources, join the room and publish both tracks (raises PublisherError)."""
        self._create_sources()
        self._start_pumps()
        await self._join()

    async def _join(self) -> None:
        s = self.settings
        token = mint_token(s.api_key, s.api_secret, room=s.room, identity=s.identity, name=s.name,
                           attributes=s.attributes or None)
        room = rtc.Room()
        self._watch(room)
        lost: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        @room.on("disconnected")
        def _lost(reason: rtc.DisconnectReason.ValueType) -> None:
            if not lost.done():
                lost.set_result(reason)

        for hook in self.hooks:
            hook.attach(room)
        # Only what a hook asks for is subscribed (remote audio for --audio-report): anything
        # else would only cost bandwidth and CPU.
        options = rtc.RoomOptions(auto_subscribe=False, connect_timeout=s.connect_timeout)
        # A room lost on the way (e.g. dropped again as a duplicate) may leave the SDK's connect or
        # publish waiting for an answer that never comes: each step waits for the room as well.
        try:
            failure = await _settle(room.connect(s.url, token, options), lost, s.connect_timeout + 5)
        except asyncio.CancelledError:
            await _quietly_leave(room)
            raise
        if failure is not None:
            await _quietly_leave(room)
            raise PublisherError(f"could not join room {s.room!r} at {s.url}: {failure}") from (
                failure if isinstance(failure, BaseException) else None)
        self.room = room
        try:
            failure = await _settle(self._publish(room), lost, s.connect_timeout)
        except asyncio.CancelledError:
            await _quietly_leave(room)
            raise
        if failure is not None:
            if self.room is room:
                self.room = None
                self._video_pub = self._audio_pub = None
            await _quietly_leave(room)
            raise PublisherError(f"could not publish in room {s.room!r}: {failure}") from (
                failure if isinstance(failure, BaseException) else None)
        self._live = self._connected = True
        self.backoff.connected()
        self._recovered()
        self._notify("connected")
        log.info("joined room %r as %r (sid %s); publishing %r and %r",
                 s.room, s.identity, room.local_participant.sid, s.video_track_name, s.audio_track_name)
        for hook in self.hooks:
            try:
                hook.joined(room)
            except Exception:
                log.exception("room hook %r failed", hook)

    async def close(self) -> None:
        """Unpublish both tracks, leave the room, release the sources. Idempotent."""
        if not self._closing and self._connected:
            await self.flush_data()  # e.g. the last agent status: it would be lost with the pump
        self._closing = True
        self._live = self._connected = False
        await self._stop_tasks()
        room = self.room
        if room is not None and room.isconnected():
            for pub in (self._video_pub, self._audio_pub):
                if pub is None:
                    continue
                try:
                    await asyncio.wait_for(room.local_participant.unpublish_track(pub.sid), 3.0)
                except Exception as exc:  # leaving the room unpublishes anyway
                    log.warning("unpublishing %s failed: %s", pub.name, exc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(room.disconnect(), 5.0)
        self._video_pub = self._audio_pub = None
        await self._release_sources()
        self._notify("closed")

    async def abort(self) -> None:
        """Leave without unpublishing first: a worker that dies mid-turn, as seen by the room."""
        self._closing = True
        self._live = self._connected = False
        await self._stop_tasks()
        if self.room is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.room.disconnect(), 5.0)
        await self._release_sources()
        self._notify("closed")

    async def _stop_tasks(self) -> None:
        tasks = [t for t in (self._rejoin_task, self._probe_task, *self._pumps) if t is not None]
        self._pumps = []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)  # a task stuck in native code must not hang the exit

    def _notify(self, state: str) -> None:
        self._changed.set()
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                log.exception("on_state callback failed")

    # ------------------------------------------------------------------------------ status

    @property
    def live(self) -> bool:
        """True while frames are being published."""
        return self._live

    def other_participants(self) -> list[rtc.RemoteParticipant]:
        """Everyone in the room but us."""
        if self.room is None or not self.room.isconnected():
            return []
        return list(self.room.remote_participants.values())

    def other_identities(self) -> list[str]:
        """The identities of everyone in the room but us."""
        return [participant.identity for participant in self.other_participants()]

    async def wait_for_viewer(self, *, subscribed_timeout: float = 10.0) -> rtc.RemoteParticipant:
        """Wait until another participant is in the room and, if possible, subscribed to us.

        The SDK reports ``local_track_subscribed`` when a remote participant subscribes to the
        motion track; we wait for that up to ``subscribed_timeout`` seconds after the join and
        go on anyway afterwards (the caller adds a lead-in of idle heartbeats either way).
        """
        while True:
            others = self.other_participants()
            if others:
                break
            self._changed.clear()
            await self._changed.wait()
        viewer = others[0]
        pub = self._video_pub
        if pub is not None:
            try:
                await asyncio.wait_for(pub.wait_for_subscription(), subscribed_timeout)
                log.info("motion track subscribed; viewer %r", viewer.identity)
            except asyncio.TimeoutError:
                log.warning("no subscription to the motion track after %.0f s; going on", subscribed_timeout)
        return viewer
