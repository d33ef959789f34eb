# Over 400 lines: AvatarPlayer is the public API (connect, events, microphone, summary) and the
# 40 ms tick that drives the pipeline; the data path itself is in pipeline.py.
"""AvatarPlayer: connection state, events, the 40 ms render clock, and the renderer calls.

The player owns no browser objects itself: the provider (:class:`~avatarplayer.browser.livekit.LiveKitProvider`)
does the JavaScript interop and hands it packets and room state through :class:`ProviderSink`.
So everything here also runs under CPython with a stand-in provider, in unit tests.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Protocol

from . import options
from .constants import FRAME_INTERVAL_MS, MAX_BUFFER_DELAY_MS, STALL_TIMEOUT_MS
from .errors import ConnectConfigError, ConnectError, MediaDeviceError
from .wire.datamsg import AgentStatus, TranscriptChunk, parse_data_message
from .events import ConnectionState, EventEmitter, PlayerEvent
from .pipeline import MotionPipeline, Stalled, SyncChanged
from .summary import SessionSummary
from .sync import AudioStats, SyncMode
from .ticker import Ticker
from .turns import Frame, Transition, TurnEnded, TurnStarted

__all__ = ["AvatarPlayer", "ConnectConfig", "Provider", "ProviderSink", "Renderer"]


class Renderer(Protocol):
    """What the player calls. Optional extras, used when present: ``turn_started(cid)``,
    ``turn_ended(cid, reason)``, ``stalled()``, ``transition(message)``."""

    def yield_frames_data(self, frames: Sequence[bytes], conversation_id: str) -> None:
        """Render these motion frames (each a protobuf ``Message``) now, in order; called every
        40 ms tick that has a frame, with the turn's conversation id."""
        ...

    def yield_audio_data(self, data: bytes, is_last: bool) -> str | None:
        """Audio carried inside motion packets, if the avatar sends any (LiveKit's audio track is
        played by the browser, not through here)."""
        ...


@dataclass(frozen=True, slots=True)
class ConnectConfig:
    """Where to connect: the LiveKit server's URL, an access token, and (for the app's own
    bookkeeping) the room's name. Built by :meth:`of` from whatever ``connect()`` was given."""

    url: str
    token: str
    room_name: str | None = None

    @classmethod
    def of(cls, config: Any = None, **kwargs: Any) -> ConnectConfig:
        """From a ``ConnectConfig``, a dict (the demo token endpoint's ``serverUrl``/``roomName``
        JSON as is), the JS object ``(await js.fetch(...)).json()`` gives, any object with the
        attributes, and/or keyword arguments (which win). Raises ``ValueError`` naming the field."""
        if isinstance(config, ConnectConfig):
            return config
        if config is not None and not isinstance(config, Mapping) and callable(getattr(config, "to_py", None)):
            config = config.to_py()  # a JS object, e.g. what ``await (await js.fetch(...)).json()`` gives
        values = dict(config) if isinstance(config, Mapping) else {}
        if config is not None and not isinstance(config, Mapping):
            values = {k: getattr(config, k) for k in ("url", "token", "room_name") if hasattr(config, k)}
        values.update({k: v for k, v in kwargs.items() if v is not None})
        if "serverUrl" in values:  # the token endpoint's JSON, as is
            values.setdefault("url", values.pop("serverUrl"))
        if "roomName" in values:
            values.setdefault("room_name", values.pop("roomName"))
        url, token = values.get("url"), values.get("token")
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError(f"url must be a ws://, wss://, http:// or https:// URL, got {url!r}")
        if not isinstance(token, str) or not token:
            raise ValueError("token must be a non-empty str (a LiveKit access token)")
        return cls(url, token, values.get("room_name"))


class Provider(Protocol):
    """What the player needs of a provider (:class:`~avatarplayer.LiveKitProvider` is the one this
    package ships). Optional extras, used when present: ``poll(now_ms)`` about once a second,
    ``poll_audio(now_ms, playout=, stats=)``, ``start_audio()``, ``start_publishing()``,
    ``stop_publishing()``, ``publish_audio(track)``, ``unpublish_audio()``, ``room``,
    ``untrusted_counts()``, ``control_messages_malformed``, ``shares_connected_room()``."""

    async def open(self, sink: ProviderSink, url: str, token: str) -> None: ...

    async def close(self) -> None: ...


class ProviderSink(Protocol):
    """What a provider calls back into the player (the player is the sink)."""

    def on_packet(self, packet: bytes, arrival_ms: float, rtp_timestamp: float | None = None) -> None: ...
    def on_audio_stats(self, stats: AudioStats) -> None: ...
    def on_audio_playout(self, rtp_timestamp: float, delivered_ms: float) -> None: ...
    def on_audio_arrivals(self, rtp_timestamp: float, transit_ms: float) -> None: ...
    def on_room_state(self, state: ConnectionState, error: BaseException | None = None) -> None: ...
    def on_passed_through(self, count: int) -> None: ...
    def on_error(self, error: BaseException) -> None: ...
    def on_motion_attached(self, mode: str) -> None: ...
    def on_audio_playback(self, can_play: bool) -> None: ...
    def on_data(self, payload: bytes, topic: str | None, identity: str | None) -> None: ...


CLOSE_TIMEOUT_S = 5.0
"""How long closing the room may take before the player goes on without it (a livekit-client
stuck in its own reconnect may never finish closing)."""

AUDIO_STATS_EVERY = 12
"""Ticks between two reads of the audio receiver's statistics (about twice a second). Where its
audio plays (the synchronization source) is read as often as the playout clock asks
(:meth:`~avatarplayer.sync.PlayoutClock.playout_reading_due`)."""


if sys.platform == "emscripten":  # pragma: no cover - Pyodide
    # Epoch milliseconds from ``performance``: sub-millisecond, and the clock the transform worker
    # stamps arrivals with (``time.time()`` there is ``Date.now()``, whole ms).
    from .browser.jsutil import now_ms as _default_clock
else:
    def _default_clock() -> float:
        """Epoch milliseconds."""
        return time.time() * 1000.0


class AvatarPlayer:
    """Plays an avatar's motion (and lets the browser play its voice) from a LiveKit room.

    ::

        player = AvatarPlayer(LiveKitProvider(), renderer)
        player.on("stalled", lambda: print("motion stalled"))
        await player.connect(url=server_url, token=token)
    """

    def __init__(
        self,
        provider: Provider,
        renderer: Renderer,
        *,
        log_level: str = "warning",
        enable_jitter_buffer: bool = True,
        max_buffer_delay_ms: float = MAX_BUFFER_DELAY_MS,
        stall_timeout_ms: float = STALL_TIMEOUT_MS,
        connect_timeout_s: float = 15.0,
        reconnect_timeout_s: float = 30.0,
        sync: str = "audio",
        sync_offset_ms: float = 0.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        for method in ("open", "close"):
            if not callable(getattr(provider, method, None)):
                raise TypeError(f"provider must be a LiveKitProvider (missing {method}()), got {type(provider).__name__}")
        self.logger = logging.getLogger(f"avatarplayer.{id(self):x}")
        self.logger.setLevel(options.log_level(log_level))
        self.logger.propagate = log_level != "none"
        self._renderer = _adapt_renderer(renderer)
        options.flag("enable_jitter_buffer", enable_jitter_buffer)
        options.milliseconds("max_buffer_delay_ms", max_buffer_delay_ms, low=0, high=10_000)
        options.milliseconds("stall_timeout_ms", stall_timeout_ms, low=1, high=600_000)
        if isinstance(connect_timeout_s, bool) or not isinstance(connect_timeout_s, (int, float)) or connect_timeout_s <= 0:
            raise ValueError(f"connect_timeout_s must be a positive number of seconds, got {connect_timeout_s!r}")
        if (isinstance(reconnect_timeout_s, bool) or not isinstance(reconnect_timeout_s, (int, float))
                or reconnect_timeout_s <= 0):
            raise ValueError(f"reconnect_timeout_s must be a positive number of seconds, got {reconnect_timeout_s!r}")
        if sync not in tuple(SyncMode):
            raise ValueError(f"sync must be one of {', '.join(repr(m.value) for m in SyncMode)}, got {sync!r}")
        options.milliseconds("sync_offset_ms", sync_offset_ms, low=-1000, high=1000)
        self.provider = provider
        self.connect_timeout_s = float(connect_timeout_s)
        self.reconnect_timeout_s = float(reconnect_timeout_s)
        self._reconnect_watch: asyncio.Future | None = None
        self._clock = clock or _default_clock
        self._events = EventEmitter(self.logger)
        self._pipeline = MotionPipeline(enable_jitter_buffer=enable_jitter_buffer,
                                        max_buffer_delay_ms=max_buffer_delay_ms,
                                        stall_timeout_ms=stall_timeout_ms, sync=sync,
                                        sync_offset_ms=sync_offset_ms)
        self._ticker = Ticker(FRAME_INTERVAL_MS, self._on_tick, self._clock, next_due=self._pipeline.next_due)
        self._state = ConnectionState.DISCONNECTED
        self._config: ConnectConfig | None = None
        self._grant_source: Callable[[], Any] | None = None
        self._closing = False
        self.motion_mode: str | None = None
        """How motion packets reach the player: "script", "streams" or "data" (None before)."""
        self.can_play_audio = True
        """False while the browser blocks the avatar's audio (autoplay policy): see start_audio()."""

    # ------------------------------------------------------------------------------ events

    def on(self, name: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``handler`` on event ``name`` (see :class:`~avatarplayer.events.PlayerEvent`)."""
        return self._events.on(name, handler)

    def off(self, name: str, handler: Callable[..., Any] | None = None) -> None:
        """Remove ``handler`` from event ``name`` (every handler of it without ``handler``)."""
        self._events.off(name, handler)

    # -------------------------------------------------------------------------- connection

    @property
    def connection_state(self) -> str:
        """``"disconnected"``, ``"connecting"``, ``"connected"``, ``"reconnecting"`` or ``"failed"``."""
        return self._state.value

    @property
    def is_connected(self) -> bool:
        """True while the room is connected (not while reconnecting)."""
        return self._state is ConnectionState.CONNECTED

    @property
    def session_summary(self) -> SessionSummary:
        """The counters of this connection so far: frames, drops, stalls, turns, sync, what was
        ignored (a fresh snapshot each time; see :class:`~avatarplayer.SessionSummary`)."""
        summary = self._pipeline.summary(self._clock())
        counts = getattr(self.provider, "untrusted_counts", None)
        if not callable(counts):
            return summary
        ignored = dict(counts())
        return replace(summary, untrusted_ignored=sum(ignored.values()),
                       untrusted_reasons=MappingProxyType(ignored),
                       control_messages_malformed=int(getattr(self.provider, "control_messages_malformed", 0)))

    def get_native_client(self) -> Any:
        """The livekit-client ``Room`` (a JS object), or None before ``connect``."""
        return getattr(self.provider, "room", None)

    async def connect(self, config: Any = None, *, url: str | None = None, token: str | None = None,
                      room_name: str | None = None) -> None:
        """Join the room. Accepts keyword arguments, a dict or the JS object of
        ``await (await js.fetch("/api/token", ...)).json()`` (the token endpoint's JSON works as
        is), or a :class:`ConnectConfig`; with a shared room the app connected itself
        (``LiveKitProvider(room=...)``), no arguments at all.

        Or a **grant source**: a function (plain or ``async``) that returns any of those. It is
        called now and again on every :meth:`reconnect`, so each connection gets a fresh token
        from the app's server (which may also give the visitor a fresh avatar: see the demo's
        token endpoint, docs/player-guide.md).

        On failure the state becomes ``failed``, an ``error`` event fires and
        :class:`ConnectError` is raised (:class:`ConnectConfigError` for bad arguments).
        """
        if self._state in (ConnectionState.CONNECTING, ConnectionState.CONNECTED, ConnectionState.RECONNECTING):
            raise RuntimeError(f"already {self._state.value}: call disconnect() first")
        if _is_grant_source(config):
            self._grant_source = config
            self._set_state(ConnectionState.CONNECTING)
            try:
                config = config()
                if inspect.isawaitable(config):
                    config = await config
            except Exception as exc:
                self._config = None
                self._set_state(ConnectionState.FAILED)
                error = ConnectError(f"the grant source failed: {exc}", "grant")
                self._events.emit(PlayerEvent.ERROR, error)
                raise error from exc
        elif config is not None or url is not None or token is not None:
            self._grant_source = None
        try:
            if config is None and url is None and token is None and _shares_connected_room(self.provider):
                cfg = ConnectConfig("", "", room_name)  # the app's room is connected already
            else:
                cfg = ConnectConfig.of(config, url=url, token=token, room_name=room_name)
        except ValueError as exc:
            self._config = None
            self._set_state(ConnectionState.FAILED)
            error = ConnectConfigError(f"connect() arguments: {exc}")
            self._events.emit(PlayerEvent.ERROR, error)
            raise error from exc
        self._config = cfg
        self._pipeline.start_session(self._clock())
        self._closing = False
        self._set_state(ConnectionState.CONNECTING)
        try:
            await asyncio.wait_for(self.provider.open(self, cfg.url, cfg.token), self.connect_timeout_s)
            audio_path_ms = getattr(self.provider, "audio_path_ms", None)
            if isinstance(audio_path_ms, (int, float)) and not isinstance(audio_path_ms, bool):
                self._pipeline.clock.audio_path_ms = float(audio_path_ms)  # this browser's (sync.py)
        except BaseException as exc:
            error = _connect_error(exc, cfg, self.connect_timeout_s)
            await self._safe_close()
            self._set_state(ConnectionState.FAILED)
            self._events.emit(PlayerEvent.ERROR, error)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise error from exc
        self._ticker.start()
        self._set_state(ConnectionState.CONNECTED)
        self._events.emit(PlayerEvent.CONNECTED)

    async def disconnect(self) -> None:
        """Leave the room; the renderer is told the turn ended (reason ``disconnect``)."""
        self._closing = True
        await self._ticker.stop()
        self._dispatch(self._pipeline.close(self._clock(), "disconnect"))
        await self._safe_close()
        if self._state is not ConnectionState.DISCONNECTED:
            self._set_state(ConnectionState.DISCONNECTED)
            self._events.emit(PlayerEvent.DISCONNECTED)

    async def reconnect(self) -> None:
        """Disconnect if needed, pause briefly, and connect again with the last configuration."""
        if self._config is None and self._grant_source is None:
            raise RuntimeError("reconnect() needs a previous connect()")
        if self._state is not ConnectionState.DISCONNECTED:
            await self.disconnect()
        await asyncio.sleep(0.2)
        reconnects = self._pipeline.reconnect_count + 1
        await self.connect(self._grant_source or self._config)
        self._pipeline.reconnect_count = reconnects

    # ------------------------------------------------------------------------------- audio

    async def start_audio(self) -> None:
        """Resume the avatar's audio after the browser blocked autoplay. Call it from a user
        gesture (a click handler); the ``audio-playback-changed`` event reports the outcome."""
        await self._provider_call("start_audio")

    async def start_publishing(self) -> None:
        """Ask for the microphone and publish it. Raises :class:`MediaDeviceError` (and emits
        ``error``) when permission is denied or there is no microphone."""
        await self._provider_call("start_publishing")

    async def stop_publishing(self) -> None:
        """Unpublish and stop the microphone."""
        await self._provider_call("stop_publishing")

    async def publish_audio(self, track: Any) -> None:
        """Publish any audio ``MediaStreamTrack`` (an audio element's capture, WebAudio, ...)
        instead of the microphone."""
        await self._provider_call("publish_audio", track)

    async def unpublish_audio(self) -> None:
        """Unpublish the track given to :meth:`publish_audio`; the track itself keeps running."""
        await self._provider_call("unpublish_audio")

    async def _provider_call(self, name: str, *args: Any) -> None:
        if not self.is_connected and name != "start_audio":
            raise RuntimeError(f"{name}() needs a connected player (state {self._state.value})")
        method = getattr(self.provider, name, None)
        if method is None:
            raise NotImplementedError(f"{type(self.provider).__name__} has no {name}()")
        try:
            await method(*args)
        except MediaDeviceError as exc:
            self.logger.error("%s", exc)
            self._events.emit(PlayerEvent.ERROR, exc)
            raise

    async def _safe_close(self) -> None:
        try:
            await asyncio.wait_for(self.provider.close(), CLOSE_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.logger.warning("closing the room took over %g s: left behind", CLOSE_TIMEOUT_S)
        except Exception:
            self.logger.exception("closing the room failed")

    def _set_state(self, state: ConnectionState) -> None:
        if state is self._state:
            return
        self.logger.info("connection state %s -> %s", self._state.value, state.value)
        self._state = state
        self._watch_reconnecting()
        self._events.emit(PlayerEvent.CONNECTION_STATE_CHANGED, state.value)

    # ------------------------------------------------------------------- provider callbacks

    def on_packet(self, packet: bytes, arrival_ms: float, rtp_timestamp: float | None = None) -> None:
        """(From the provider.) A motion packet of the avatar arrived at ``arrival_ms`` (page
        clock), with its RTP timestamp when the video carrier gave one."""
        events = self._pipeline.receive_packet(packet, arrival_ms, rtp_timestamp)
        if events:
            self._dispatch(events)

    def on_room_state(self, state: ConnectionState, error: BaseException | None = None) -> None:
        """livekit-client's own reconnect and disconnect, mapped by the provider."""
        if self._closing or self._state in (ConnectionState.CONNECTING, ConnectionState.DISCONNECTED):
            return
        if state is ConnectionState.CONNECTED and self._state is ConnectionState.RECONNECTING:
            self._pipeline.reconnect_count += 1
        if state in (ConnectionState.FAILED, ConnectionState.DISCONNECTED):
            self._dispatch(self._pipeline.close(self._clock(), "disconnect"))
            asyncio.ensure_future(self._ticker.stop())
        self._set_state(state)
        if error is not None:
            self._events.emit(PlayerEvent.ERROR, error)
        if state is ConnectionState.DISCONNECTED:
            self._events.emit(PlayerEvent.DISCONNECTED)

    def _watch_reconnecting(self) -> None:
        """Runs on every state change: while ``reconnecting``, a deadline; any other state ends it."""
        if self._state is ConnectionState.RECONNECTING:
            if self._reconnect_watch is None or self._reconnect_watch.done():
                self._reconnect_watch = asyncio.ensure_future(self._give_up_reconnecting())
        elif self._reconnect_watch is not None:
            self._reconnect_watch.cancel()
            self._reconnect_watch = None

    async def _give_up_reconnecting(self) -> None:
        """livekit-client's reconnect never ended (Firefox: its signal connection can wait
        forever once the server restarts): after ``reconnect_timeout_s`` the room is closed, the
        state is ``failed`` and an ``error`` (cause ``"reconnect-timeout"``) says so, so that the
        app can :meth:`reconnect`."""
        await asyncio.sleep(self.reconnect_timeout_s)
        if self._state is not ConnectionState.RECONNECTING or self._closing:
            return
        self._reconnect_watch = None
        error = ConnectError(f"still reconnecting after {self.reconnect_timeout_s:g} s: gave up",
                             "reconnect-timeout")
        self.logger.warning("%s", error)
        self._closing = True  # the room's own events while it closes are not the player's
        self._dispatch(self._pipeline.close(self._clock(), "disconnect"))
        await self._ticker.stop()
        await self._safe_close()
        self._set_state(ConnectionState.FAILED)
        self._events.emit(PlayerEvent.ERROR, error)

    def on_audio_stats(self, stats: AudioStats) -> None:
        """The avatar audio receiver's counters (the provider reads them about twice a second):
        the clock that frames follow (see :mod:`avatarplayer.sync`)."""
        self._pipeline.observe_audio(stats)

    def on_audio_playout(self, rtp_timestamp: float, delivered_ms: float) -> None:
        """The avatar audio receiver's synchronization source: the RTP timestamp of the audio
        delivered last and when (read as often as the playout clock asks)."""
        self._pipeline.observe_audio_playout(rtp_timestamp, delivered_ms, self._clock())

    def on_audio_arrivals(self, rtp_timestamp: float, transit_ms: float) -> None:
        """The transform worker's report on the avatar's audio packets: the median of arrival
        minus position, positions counted from ``rtp_timestamp`` (twice a second)."""
        self._pipeline.observe_audio_arrivals(rtp_timestamp, transit_ms)

    def on_passed_through(self, count: int) -> None:
        """(From the provider.) Video frames the transform passed on untouched so far."""
        self._pipeline.frames_passed_through = count

    def on_error(self, error: BaseException) -> None:
        """A failure the app should know about that does not change the connection state."""
        self._events.emit(PlayerEvent.ERROR, error)

    def on_motion_attached(self, mode: str) -> None:
        """(From the provider.) Motion now arrives by ``mode``: "script", "streams" or "data"."""
        self.motion_mode = mode
        self._events.emit(PlayerEvent.MOTION_TRACK_ATTACHED, mode)

    def on_audio_playback(self, can_play: bool) -> None:
        """livekit-client's audio playback status: False when autoplay was blocked."""
        if can_play == self.can_play_audio:
            return
        self.can_play_audio = can_play
        if not can_play:
            self.logger.warning("the browser blocked the avatar's audio (autoplay policy): "
                                "call start_audio() from a user gesture")
            self._events.emit(PlayerEvent.AUDIO_BLOCKED)
        self._events.emit(PlayerEvent.AUDIO_PLAYBACK_CHANGED, can_play)

    def on_data(self, payload: bytes, topic: str | None, identity: str | None) -> None:
        """A data message from another participant (motion packets on the data carrier's topic
        never get here): typed events for the agent's transcript and status."""
        message = parse_data_message(payload, topic, identity)
        self._events.emit(PlayerEvent.DATA_MESSAGE, message)
        if isinstance(message, TranscriptChunk):
            # a timed chunk waits until the frame it is spoken at renders (avatarplayer/captions.py)
            self._captions(self._pipeline.captions.offer(message, self._clock()))
        elif isinstance(message, AgentStatus):
            self._events.emit(PlayerEvent.AGENT_STATUS, message)

    # ------------------------------------------------------------------------------ render

    def _on_tick(self, now_ms: float) -> None:
        ticks = self._ticker.ticks
        if ticks % 25 == 0 and hasattr(self.provider, "poll"):
            try:
                self.provider.poll(now_ms)
            except Exception:
                self.logger.exception("the provider's watchdog failed")
        if self._pipeline.follows_audio and hasattr(self.provider, "poll_audio"):
            playout = self._pipeline.clock.playout_reading_due(now_ms)
            stats = ticks % AUDIO_STATS_EVERY == 0
            if playout or stats:
                try:
                    self.provider.poll_audio(now_ms, playout=playout, stats=stats)
                except Exception:
                    self.logger.exception("reading the audio receiver's playout failed")
        events = self._pipeline.tick(now_ms)
        if events:
            self._dispatch(events)
        captions = self._pipeline.captions
        if captions.waiting:
            self._captions(captions.expire(now_ms))

    def _dispatch(self, events: list) -> None:
        frames: list[bytes] = []
        conversation_id = ""
        seq = 0
        for event in events:
            if isinstance(event, Frame):
                if frames and event.conversation_id != conversation_id:
                    self._render(frames, conversation_id, seq)
                    frames = []
                frames.append(event.message)
                conversation_id = event.conversation_id
                seq = event.seq
                continue
            if frames:
                self._render(frames, conversation_id, seq)
                frames = []
            if isinstance(event, TurnStarted):
                self._hook("turn_started", event.conversation_id)
                self._events.emit(PlayerEvent.TURN_STARTED, event.conversation_id)
            elif isinstance(event, TurnEnded):
                self._hook("turn_ended", event.conversation_id, event.reason)
                self._events.emit(PlayerEvent.TURN_ENDED, event.conversation_id, event.reason)
                self._captions(self._pipeline.captions.turn_ended())
            elif isinstance(event, Stalled):
                self.logger.warning("motion stalled: no frame for %.0f ms inside a turn", self._pipeline.stall.timeout_ms)
                self._hook("stalled")
                self._events.emit(PlayerEvent.STALLED)
            elif isinstance(event, SyncChanged):
                self.logger.info("motion follows %s (%s)", "the audio" if event.mode is SyncMode.AUDIO
                                 else "its own clock", event.reason.value)
                self._events.emit(PlayerEvent.SYNC_CHANGED, event.mode.value, event.reason.value)
            elif isinstance(event, Transition):
                self._hook("transition", event.message)
        if frames:
            self._render(frames, conversation_id, seq)

    def _render(self, frames: list[bytes], conversation_id: str, last_seq: int) -> None:
        try:
            self._renderer.yield_frames_data(frames, conversation_id)
        except Exception:
            self._pipeline.renderer_errors += 1
            self.logger.exception("the renderer raised; playback continues")
        self._captions(self._pipeline.captions.rendered(last_seq))

    def _captions(self, chunks: list[TranscriptChunk]) -> None:
        for chunk in chunks:
            self._events.emit(PlayerEvent.TRANSCRIPT, chunk)

    def _hook(self, name: str, *args: Any) -> None:
        hook = getattr(self._renderer, name, None)
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            self._pipeline.renderer_errors += 1
            self.logger.exception("renderer.%s raised; playback continues", name)


def _adapt_renderer(renderer: Any) -> Any:
    if callable(getattr(renderer, "yield_frames_data", None)):
        return renderer
    if getattr(renderer, "yieldFramesData", None) is not None:  # a JavaScript renderer
        from .browser.jsrenderer import JsRenderer

        return JsRenderer(renderer)
    raise TypeError(f"renderer must have yield_frames_data(frames, conversation_id) (or a JS yieldFramesData), "
                    f"got {type(renderer).__name__}")


def _shares_connected_room(provider: Any) -> bool:
    check = getattr(provider, "shares_connected_room", None)
    return bool(check()) if callable(check) else False


def _is_grant_source(config: Any) -> bool:
    """A Python function that returns the grant (not a JS object, nor a mapping or a config)."""
    return (callable(config) and not isinstance(config, (ConnectConfig, Mapping, type))
            and not hasattr(config, "to_py"))


def _connect_error(exc: BaseException, cfg: ConnectConfig, timeout_s: float) -> ConnectError:
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return ConnectError(f"connecting to {cfg.url} timed out after {timeout_s:g} s", "timeout")
    text = str(exc)
    lowered = text.lower()
    if "401" in text or "unauthorized" in lowered or "token" in lowered and ("invalid" in lowered or "expired" in lowered):
        return ConnectError(f"the server at {cfg.url} rejected the token: {text}", "token")
    return ConnectError(f"could not connect to {cfg.url}: {text}", "unreachable")
