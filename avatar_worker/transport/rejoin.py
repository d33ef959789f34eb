"""Staying in the room: what the publisher does when the connection is lost (a part of
:class:`avatar_worker.transport.publisher.Publisher`).

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from livekit import rtc

if TYPE_CHECKING:
    from ..config import LiveKitSettings

__all__ = ["RejoinBackoff", "RejoinSupervisor", "server_address"]

log = logging.getLogger("avatar_worker.publisher")  # the name it always logged under (serve.py, tests filter on it)

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



class RejoinSupervisor:
    """The publisher's rejoin supervision: watches each room's connection state, and when the
    room is lost for good joins again (:meth:`_rejoin_loop`) as :class:`RejoinBackoff` says,
    probing the server meanwhile. Mixed into :class:`avatar_worker.transport.publisher.Publisher`,
    whose state it shares."""

    settings: LiveKitSettings
    rejoin: bool
    ends_on: frozenset[str]
    ended: asyncio.Event
    ended_reason: str | None
    backoff: RejoinBackoff
    resume_grace: float
    probe_interval: float
    room: rtc.Room | None
    _video_pub: rtc.LocalTrackPublication | None
    _audio_pub: rtc.LocalTrackPublication | None
    _live: bool
    _connected: bool
    _closing: bool
    _rejoin_task: asyncio.Task[None] | None
    _probe_task: asyncio.Task[None] | None
    _lost_at: float | None
    _changed: asyncio.Event
    rejoin_took: list[float]
    rejoins: int
    rejoin_attempts: int
    disconnects: dict[str, int]

    async def _join(self) -> None:
        raise NotImplementedError  # the publisher's

    def _notify(self, state: str) -> None:
        raise NotImplementedError  # the publisher's

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
            if name in self.ends_on:
                log.info("disconnected from the room (%s); the session ends with it", why)
                self.ended_reason = name
                self.ended.set()
                return
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
