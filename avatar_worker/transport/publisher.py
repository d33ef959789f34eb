"""The LiveKit side: connect, publish the audio and motion tracks, stay published.

What the Python SDK (livekit 1.2.1, Rust core) does by itself, and what is left to us:

- A network blip or an SFU hiccup: the SDK resumes the signal connection / restarts ICE
  ("reconnecting" → "reconnected") and keeps the publications.
- A full reconnect (e.g. the server restarted and is back within the SDK's retry window): the SDK
  rejoins and republishes the local tracks itself ("local_track_republished", new track SIDs).
- When the SDK gives up, or the server ends our session for any reason but our own
  ``disconnect()``, the room emits "disconnected" and is dead. We then join again with a fresh
  token and publish new tracks fed by the same sources, until stopped. Seen here:
  SERVER_SHUTDOWN (graceful server stop), ROOM_CLOSED every ``room.empty_timeout`` seconds while
  nobody else is in the room (an ``agent`` participant does not keep a room open on its own, so
  the server closes it and we come back ~0.1 s later), and DUPLICATE_IDENTITY: someone joined
  with our identity and the server dropped us. Only the worker holds the API secret that mints
  its identity, so the newcomer is an impostor (or a second worker misconfigured with the same
  identity): we take the identity back, which drops it in turn. PARTICIPANT_REMOVED,
  ROOM_DELETED, signal and connection failures are rejoined the same way: the worker exists to
  be in that room, and a process that stays alive but absent is never restarted by anyone.
- Backoff (:class:`RejoinBackoff`): the first rejoin after a stable connection (``stable_after``
  seconds, 20 by default) goes at once; every further one waits 1 s, doubling up to 30 s, so
  two parties fighting over the identity, or a server that keeps dropping us, never make a
  tight loop. While we wait, a server seen unreachable and reachable again cuts the wait short
  (it is back: join now). Each attempt is logged with its reason; the summary counts the rejoins
  and the disconnections per reason. Only ``close()``/``abort()`` (a clean shutdown) stop it.
- A server restarted on the same address: the SDK's own attempts back off, so after a 5–6 s
  outage it came back 1.4–4 s after the server did. While it reconnects we probe the server's
  port; once the server has been seen unreachable and is reachable again, the SDK gets
  ``resume_grace`` seconds to recover by itself, and then we drop its attempt and join afresh
  (frames flow again 0.4–0.9 s after the server is up). A graceful stop (SERVER_SHUTDOWN) is a
  plain rejoin: ~0.1–0.2 s.

The motion track is fed through ``rtc.EncodedVideoSource``: every frame we capture is sent as-is
(``video_encoder=ENCODER_BACKEND_PRE_ENCODED``); the source does not pace, the streamer does.
Frames are handed to the native source only while the track is published on a connected room,
so the send log's ``sent`` means "given to WebRTC". (Checked with frame-id metadata: frames
captured before publication are not queued up and sent late; the first frames after publication
may be dropped while the encoder starts; worker → SFU → subscriber takes 13–20 ms on loopback.)

Data messages (:meth:`Publisher.send_data`) are queued and sent in order by two pump tasks, one for
reliable and one for lossy messages, so the real-time loop never waits on the SDK. Other parts of
the worker see every room the publisher joins through :class:`RoomHook` objects (data they
receive, participants leaving, remote audio tracks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from livekit import rtc

from ..audio.pcm import CHANNELS, SAMPLE_RATE
from ..config import LiveKitSettings
from ..token import mint_token

__all__ = ["LiveKitSettings", "Publisher", "PublisherError", "RejoinBackoff", "RoomHook", "VIDEO_SIZE",
           "server_address"]

log = logging.getLogger("avatar_worker.publisher")  # the name it always logged under (serve.py, tests filter on it)

VIDEO_SIZE = (16, 16)
"""The carrier's VP8 key frame is 16x16 (``avatarplayer.wire.motion.VP8_KEYFRAME_PREFIX``)."""

_WHY = {
    rtc.DisconnectReason.DUPLICATE_IDENTITY:
        "another participant joined with our identity; taking it back, which drops it (only the worker "
        "should hold it: a second worker with the same --identity?)",
    rtc.DisconnectReason.PARTICIPANT_REMOVED: "removed from the room by the server API",
    rtc.DisconnectReason.ROOM_DELETED: "the room was deleted",
    rtc.DisconnectReason.ROOM_CLOSED: "the server closed the room",
    rtc.DisconnectReason.SERVER_SHUTDOWN: "the server is shutting down",
}
"""What an involuntary disconnection means, for the log (the others are signal or connection
failures)."""


def _reason_name(reason: int) -> str:
    try:
        return rtc.DisconnectReason.Name(reason)  # type: ignore[arg-type]
    except ValueError:
        return f"reason {reason}"


class RejoinBackoff:
    """How long to wait before each rejoin attempt (pure: the clock is injectable).

    The first attempt after a connection that lasted ``stable_after`` seconds (or the first ever)
    goes at once; each further one waits ``first`` seconds, doubling up to ``cap``. A connection
    that lasts ``stable_after`` seconds starts the count afresh.
    """

    def __init__(self, first: float = 1.0, cap: float = 30.0, *, stable_after: float = 20.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < first <= cap:
            raise ValueError("the backoff needs 0 < first <= cap")
        self.first = first
        self.cap = cap
        self.stable_after = stable_after
        self._clock = clock
        self.attempts = 0
        """Attempts since the connection was last stable."""
        self._connected_at: float | None = None

    def connected(self) -> None:
        """Joined and published."""
        self._connected_at = self._clock()

    def lost(self) -> None:
        """The connection is gone: a stable one resets the count."""
        if self._connected_at is not None and self._clock() - self._connected_at >= self.stable_after:
            self.attempts = 0
        self._connected_at = None

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt (which this counts)."""
        delay = 0.0 if self.attempts == 0 else min(self.cap, self.first * 2.0 ** min(self.attempts - 1, 32))
        self.attempts += 1
        return delay


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


@dataclass(frozen=True, slots=True)
class _Outgoing:
    payload: bytes
    topic: str
    reliable: bool
    destinations: tuple[str, ...]


def server_address(url: str) -> tuple[str, int]:
    """Host and TCP port of a LiveKit URL (ws, wss, http or https)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    return parts.hostname, parts.port or (443 if parts.scheme in ("wss", "https") else 80)


async def _reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


async def _settle(step: Awaitable[Any], lost: asyncio.Future[int], timeout: float) -> BaseException | str | None:
    """Run ``step`` until it is done, the room is ``lost`` or ``timeout`` passes: None if it
    succeeded, else what went wrong (its exception, or why it was given up)."""
    task = asyncio.ensure_future(step)
    try:
        await asyncio.wait({task, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        if lost.done():
            return f"the room was lost ({_reason_name(lost.result())})"
        return f"no answer within {timeout:g} s"
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is not None and not str(exc):
        return f"{type(exc).__name__} ({exc!r})"
    return exc


async def _quietly_leave(room: rtc.Room) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(room.disconnect(), 5.0)


class Publisher:
    """Owns the room, the audio and video sources, and their publications.

    Usable as a :class:`avatar_worker.transport.streamer.MotionSink`. The sources live as long as the
    publisher; rooms and tracks come and go with reconnections.
    """

    LOSSY_QUEUE = 64
    """Lossy data messages waiting to be sent; more are dropped (stale motion is useless)."""
    RELIABLE_QUEUE = 1024

    def __init__(self, settings: LiveKitSettings, *, rejoin: bool = True,
                 rejoin_backoff: tuple[float, float] = (1.0, 30.0), stable_after: float = 20.0,
                 resume_grace: float = 0.5, probe_interval: float = 0.25) -> None:
        self.settings = settings
        self.rejoin = rejoin
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
        if self.video_source is None:
            self.video_source = rtc.EncodedVideoSource(*VIDEO_SIZE)
            # The queue only has to absorb scheduling jitter: we capture in 40 ms pieces on time.
            self.audio_source = rtc.AudioSource(SAMPLE_RATE, CHANNELS, queue_size_ms=200)
        if not self._pumps:
            for reliable, size in ((True, self.RELIABLE_QUEUE), (False, self.LOSSY_QUEUE)):
                queue: asyncio.Queue[_Outgoing] = asyncio.Queue(size)
                self._queues[reliable] = queue
                self._pumps.append(asyncio.create_task(self._pump(queue), name=f"data-pump-{reliable}"))
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

    async def _publish(self, room: rtc.Room) -> None:
        assert self.audio_source is not None
        s = self.settings
        self._video_pub = await self._publish_video(room)
        audio = rtc.LocalAudioTrack.create_audio_track(s.audio_track_name, self.audio_source)
        audio_options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        self._audio_pub = await room.local_participant.publish_track(audio, audio_options)

    async def _publish_video(self, room: rtc.Room) -> rtc.LocalTrackPublication:
        """A new motion track on the (long-lived) video source, published on ``room``."""
        assert self.video_source is not None
        s = self.settings
        video = rtc.LocalVideoTrack.create_video_track(s.video_track_name, self.video_source)
        video_options = rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA,
            video_codec=rtc.VideoCodec.VP8,
            video_encoder=rtc.VideoEncoderBackend.ENCODER_BACKEND_PRE_ENCODED,
            simulcast=False,
            # A motion frame may not be skipped to save bandwidth: it is the avatar's pose.
            # the SDK's IntEnum carries the proto values; its stubs only name the proto type
            degradation_preference=rtc.DegradationPreference.MAINTAIN_FRAMERATE,  # type: ignore[arg-type]
            video_encoding=rtc.VideoEncoding(max_bitrate=s.video_max_bitrate, max_framerate=50.0),
        )
        return await room.local_participant.publish_track(video, video_options)

    def _watch(self, room: rtc.Room) -> None:
        @room.on("reconnecting")
        def _reconnecting() -> None:
            if room is self.room:
                # Frames captured while nothing is sent would sit in the passthrough queue.
                self._live = self._connected = False
                self._lost()
                self._notify("reconnecting")
                log.warning("connection lost; the SDK is reconnecting")
                if self.rejoin and (self._probe_task is None or self._probe_task.done()):
                    self._probe_task = asyncio.get_running_loop().create_task(self._probe_server(room))

        @room.on("reconnected")
        def _reconnected() -> None:
            if room is self.room:
                self._live = self._video_pub is not None
                self._connected = True
                self._recovered()
                self._notify("reconnected")
                log.info("reconnected")

        @room.on("local_track_republished")
        def _republished(publication: rtc.LocalTrackPublication, previous_sid: str) -> None:
            log.info("SDK republished %s after a full reconnect (%s -> %s)",
                     publication.name, previous_sid, publication.sid)

        seen = False

        @room.on("disconnected")
        def _disconnected(reason: rtc.DisconnectReason.ValueType) -> None:
            nonlocal seen
            # A room is lost once: a second report (before the rejoin task has replaced
            # self.room) would count the loss twice.
            if room is not self.room or seen:
                return
            seen = True
            self._live = self._connected = False
            self._lost()
            self._notify("disconnected")
            name = _reason_name(reason)
            if self._closing or reason == rtc.DisconnectReason.CLIENT_INITIATED:
                log.debug("left the room (%s)", name)
                return
            self.disconnects[name] = self.disconnects.get(name, 0) + 1
            why = f"{name}: {_WHY.get(reason, 'signal or connection failure')}"
            if not self.rejoin:
                log.error("disconnected from the room (%s); not rejoining (rejoin is off)", why)
                return
            log.warning("disconnected from the room (%s); rejoining", why)
            self._start_rejoin(name)

        @room.on("participant_connected")
        def _joined(participant: rtc.RemoteParticipant) -> None:
            log.info("participant %r joined", participant.identity)
            self._changed.set()

        @room.on("participant_disconnected")
        def _left(participant: rtc.RemoteParticipant) -> None:
            log.info("participant %r left", participant.identity)
            self._changed.set()

        @room.on("local_track_subscribed")
        def _subscribed(track: rtc.Track) -> None:
            log.info("local track %r subscribed", track.name)
            self._changed.set()

    def _start_rejoin(self, why: str) -> None:
        """Rejoin in a task (unless one is at it already); ``why``: the reason, for the log."""
        if self._closing:
            return
        if self._rejoin_task is None or self._rejoin_task.done():
            self._rejoin_task = asyncio.get_running_loop().create_task(self._rejoin_loop(why), name="rejoin")

    def _lost(self) -> None:
        if self._lost_at is None:
            self._lost_at = time.monotonic()

    def _recovered(self) -> None:
        if self._lost_at is not None:
            took = time.monotonic() - self._lost_at
            self._lost_at = None
            self.rejoin_took.append(round(took, 3))
            log.info("publishing again %.2f s after the connection was lost", took)

    async def _probe_server(self, room: rtc.Room) -> None:
        """While ``room`` reconnects: once the server was unreachable and answers again, give
        the SDK ``resume_grace`` seconds, then join afresh (see the module docstring)."""
        try:
            host, port = server_address(self.settings.url)
        except ValueError:
            return
        seen_down = False
        back_since: float | None = None
        while room is self.room and not self._connected and not self._closing:
            if await _reachable(host, port):
                if seen_down:
                    now = time.monotonic()
                    back_since = back_since or now
                    if now - back_since >= self.resume_grace:
                        log.warning("the server is back but the SDK is still reconnecting; joining again")
                        self.disconnects["SDK_STUCK"] = self.disconnects.get("SDK_STUCK", 0) + 1
                        self._start_rejoin("SDK_STUCK")
                        return
            else:
                seen_down, back_since = True, None
            await asyncio.sleep(self.probe_interval)

    async def _rejoin_loop(self, why: str) -> None:
        """Join again until it works or we are closed, waiting as :attr:`backoff` says."""
        old = self.room
        self.room = None
        self._video_pub = self._audio_pub = None
        self.backoff.lost()
        if old is not None:
            await _quietly_leave(old)  # may be the SDK's own reconnection, still under way
        failed = False
        while not self._closing:
            delay = self.backoff.next_delay()
            attempt = self.backoff.attempts
            if delay > 0:
                log.warning("rejoin attempt %d (after %s) in %.1f s", attempt, why, delay)
                await self._wait_to_rejoin(delay, probe=failed)
                if self._closing:
                    return
            else:
                log.warning("rejoin attempt %d (after %s) now", attempt, why)
            self.rejoin_attempts += 1
            try:
                await self._join()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PublisherError, or anything the SDK raises: try again
                failed = True
                log.warning("rejoin attempt %d failed: %s", attempt, exc)
                continue
            room = self.room
            if room is None or not room.isconnected():  # dropped again while we were publishing
                failed = False
                log.warning("rejoin attempt %d: the room was lost again at once", attempt)
                self.room = None
                self._video_pub = self._audio_pub = None
                self._live = self._connected = False
                self.backoff.lost()
                if room is not None:
                    await _quietly_leave(room)
                continue
            self.rejoins += 1
            log.warning("rejoined the room (attempt %d, after %s); %d rejoin(s) so far", attempt, why, self.rejoins)
            self._changed.set()
            return

    async def _wait_to_rejoin(self, delay: float, *, probe: bool) -> None:
        """Sleep ``delay`` seconds; with ``probe`` (the last attempt failed), cut it short once the
        server's port, seen closed meanwhile, opens again."""
        try:
            host, port = server_address(self.settings.url)
        except ValueError:
            probe = False
        if not probe:
            await asyncio.sleep(delay)
            return
        deadline = time.monotonic() + delay
        seen_down = False
        while not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if await _reachable(host, port, timeout=min(0.5, left)):
                if seen_down:
                    log.info("the server answers again; rejoining now")
                    return
            else:
                seen_down = True
            await asyncio.sleep(max(0.0, min(self.probe_interval, deadline - time.monotonic())))

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

    async def _release_sources(self) -> None:
        for source in (self.video_source, self.audio_source):
            if source is not None:
                with contextlib.suppress(Exception):  # bounded: a stuck native close must not keep us alive
                    await asyncio.wait_for(source.aclose(), 3.0)
        self.video_source = self.audio_source = None

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

    # ------------------------------------------------------------------------ data messages

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

    # --------------------------------------------------------------------------- republish

    async def republish_video(self, gap: float = 0.3) -> tuple[str, str] | None:
        """Unpublish the motion track and publish a fresh one on the same source: same name, new
        track sid. Frames captured meanwhile are refused. Returns ``(old_sid, new_sid)``, or
        None when not connected (or the room changed meanwhile).

        ``gap`` seconds pass between the two: the SDK tells the server about an unpublication
        only with its next (debounced) renegotiation, so a new track published at once reaches
        viewers ~0.1 s *before* the old one is gone. With the gap viewers see the old track
        unsubscribed first, then the new one subscribed.
        """
        room, old = self.room, self._video_pub
        if room is None or old is None or not self._connected:
            return None
        old_sid = old.sid
        self._live = False
        try:
            await room.local_participant.unpublish_track(old_sid)
            if self._video_pub is old:
                self._video_pub = None
            await asyncio.sleep(gap)
            if room is not self.room:
                return None
            self._video_pub = await self._publish_video(room)
        except Exception as exc:
            log.error("republishing the motion track failed: %s", exc)
            return None
        finally:
            if room is self.room and self._connected and self._video_pub is not None:
                self._live = True
        log.info("republished %r: %s -> %s", self.settings.video_track_name, old_sid, self._video_pub.sid)
        return old_sid, self._video_pub.sid

    # ---------------------------------------------------------------------------- the sink

    def capture_video(self, frame: bytes, timestamp_us: int) -> bool:
        """Send one carrier frame as a VP8 key frame. False while not published."""
        source = self.video_source
        if not self._live or source is None:
            return False
        accepted = source.capture_frame(rtc.EncodedVideoFrame(
            data=frame,
            width=VIDEO_SIZE[0],
            height=VIDEO_SIZE[1],
            codec=rtc.VideoCodec.VP8,
            frame_type=rtc.EncodedFrameType.ENCODED_FRAME_KEY,
            timestamp_us=timestamp_us,
        ))
        self._frames_since_feedback += 1
        if self._frames_since_feedback >= 25:
            self._frames_since_feedback = 0
            self._poll_feedback(source)
        return accepted

    def _poll_feedback(self, source: rtc.EncodedVideoSource) -> None:
        feedback = source.take_feedback()
        if feedback.keyframe_requested:
            # Every frame is already a key frame: nothing to do but note that someone asked.
            self.keyframe_requests += 1
            log.info("key frame requested by a receiver (every frame is a key frame)")
        if feedback.rate_control is not None:
            log.debug("rate control: %d bit/s at %.1f fps", feedback.rate_control.target_bitrate_bps,
                      feedback.rate_control.framerate_fps)

    def audio_backlog_ms(self) -> float:
        """Audio queued in the source but not sent yet (the SDK's estimate, from what was captured
        and when)."""
        source = self.audio_source
        return 0.0 if source is None or not self._live else 1000.0 * source.queued_duration

    def drop_audio_backlog(self) -> None:
        if self.audio_source is not None and self._live:
            self.audio_source.clear_queue()

    async def capture_audio(self, pcm: bytes) -> None:
        """Queue 40 ms of audio. Silently skipped while not connected (nothing would play it)."""
        source = self.audio_source
        if source is None or not self._live:
            return
        frame = rtc.AudioFrame(pcm, SAMPLE_RATE, CHANNELS, len(pcm) // (2 * CHANNELS))
        await source.capture_frame(frame)


