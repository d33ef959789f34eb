"""Event names, connection states, and the emitter that isolates handler failures."""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["PlayerEvent", "ConnectionState", "EventEmitter"]


class PlayerEvent(enum.StrEnum):
    """Every event :meth:`AvatarPlayer.on` accepts."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ERROR = "error"
    """Payload: the exception."""
    CONNECTION_STATE_CHANGED = "connection-state-changed"
    """Payload: the new :class:`ConnectionState`; in order, never twice in a row."""
    STALLED = "stalled"
    """Inside a turn, no motion frame for 3 s (once per silent window)."""
    TURN_STARTED = "turn-started"
    """Payload: the conversation id."""
    TURN_ENDED = "turn-ended"
    """Payloads: the conversation id and the reason ("end", "transition-end", "idle", ...)."""
    MOTION_TRACK_ATTACHED = "motion-track-attached"
    """Payload: how packets are read: "script", "streams" or "data" (the data-packet carrier,
    the last fallback). Fires again when the transform is re-attached or the carrier changes."""
    AUDIO_BLOCKED = "audio-blocked"
    """The browser's autoplay policy blocked the avatar's audio: call ``start_audio()`` from a
    user gesture."""
    AUDIO_PLAYBACK_CHANGED = "audio-playback-changed"
    """Payload: True when the avatar's audio can play, False when it is blocked."""
    DATA_MESSAGE = "data-message"
    """Payload: a :class:`~avatarplayer.wire.datamsg.DataMessage` (every data message but motion)."""
    TRANSCRIPT = "transcript"
    """Payload: a :class:`~avatarplayer.wire.datamsg.TranscriptChunk` (``transcript_chunk`` messages)."""
    AGENT_STATUS = "agent-status"
    """Payload: an :class:`~avatarplayer.wire.datamsg.AgentStatus` (``agent_status`` messages)."""
    SYNC_CHANGED = "sync-changed"
    """Payloads: the mode, "audio" (frames are released when their audio is heard) or
    "independent" (on arrival), and the reason: "locked", "no-audio", "audio-stalled", "no-rtp",
    "audio-delay" (:class:`~avatarplayer.sync.SyncReason`). Fires when sync is gained or lost, e.g.
    "independent"/"audio-stalled" while the voice has stopped but motion goes on."""


class ConnectionState(enum.StrEnum):
    """The player's connection state (:attr:`AvatarPlayer.connection_state` is its value)."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"


Handler = Callable[..., Any]


class EventEmitter:
    """``on``/``off``/``emit`` for :class:`PlayerEvent` names. Handlers may be plain or ``async``;
    an exception in one is logged and never reaches the emitter or the other handlers."""

    def __init__(self, logger: logging.Logger) -> None:
        self._handlers: dict[PlayerEvent, list[Handler]] = {e: [] for e in PlayerEvent}
        self._logger = logger
        self._tasks: set[asyncio.Task] = set()
        self.handler_errors = 0

    @staticmethod
    def _event(name: str) -> PlayerEvent:
        try:
            return PlayerEvent(name)
        except ValueError:
            known = ", ".join(e.value for e in PlayerEvent)
            raise ValueError(f"unknown event {name!r}; known events: {known}") from None

    def on(self, name: str, handler: Handler) -> Handler:
        if not callable(handler):
            raise TypeError(f"handler for {name!r} must be callable, got {type(handler).__name__}")
        self._handlers[self._event(name)].append(handler)
        return handler

    def off(self, name: str, handler: Handler | None = None) -> None:
        """Remove ``handler`` (or every handler of ``name``)."""
        handlers = self._handlers[self._event(name)]
        if handler is None:
            handlers.clear()
        elif handler in handlers:
            handlers.remove(handler)

    def emit(self, name: PlayerEvent, *args: Any) -> None:
        for handler in list(self._handlers[name]):
            try:
                result = handler(*args)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(lambda t, n=name: self._async_done(t, n))
            except Exception:
                self.handler_errors += 1
                self._logger.exception("a %r handler raised; the player carries on", name.value)

    def _async_done(self, task: asyncio.Task, name: PlayerEvent) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.handler_errors += 1
            self._logger.error("an async %r handler raised; the player carries on", name.value,
                               exc_info=task.exception())
