"""The LiveKit Agents avatar contract on the wire, for agents mode (:mod:`avatar_worker.modes.agents`):
the byte streams and RPCs between an agent and the worker, and who may use them.

The contract, as the ``livekit-agents`` package implements its sending side
(``livekit.agents.voice.avatar.DataStreamAudioOutput``) and its reference receiving side
(``DataStreamAudioReceiver`` + ``AvatarRunner``); checked against livekit-agents 1.2.18 (pinned
in requirements/agents.txt) and 1.8.9:

- The worker joins as a participant of kind ``agent`` with the attribute
  ``lk.publish_on_behalf`` = the agent's identity (``--agent-identity``): the agent's room I/O
  then treats the worker's microphone track as its own speech (transcription sync) and never
  mistakes the worker for the user. Audio and motion tracks are published at once: an agent
  built with ``wait_remote_track=KIND_VIDEO`` sends nothing before the video track is there.
- Speech comes as byte streams on topic ``lk.audio_stream`` from the agent, addressed to the
  worker: raw interleaved int16 PCM, stream attributes ``sample_rate`` and ``num_channels``
  (decimal strings). One stream is one *segment*; closing the stream ends it. The agent pushes
  faster than real time; a segment may stay open through pauses of its TTS (filled here with
  silent frames, the mouth at rest). As in
  livekit-agents >= 1.8, a new stream while an older one is still open means the older one's
  trailer got lost (it ends there), and so does :data:`~avatar_worker.modes.agents_playback.STREAM_IDLE_TIMEOUT_S`
  without data.
- RPC ``lk.clear_buffer`` (payload empty), registered by the worker: only the agent may call it
  (see below); the worker stops at once — the turn is interrupted and closed with TRANSITION_END
  on the next 40 ms tick, queued frames and the audio source's queue are dropped, the rest of the
  open stream is not read — and answers ``"ok"``.
- Who may drive the avatar: RPCs and streams are taken only from the participant whose identity
  is ``--agent-identity`` *and* whose kind is ``agent`` (looked up in the room's participants: a
  token minted with that identity but another kind does not pass). Anyone else's
  ``lk.clear_buffer`` gets an RPC error (code :data:`RPC_REFUSED`, saying who may call it), and
  their streams are not read at all: the reader is closed at once (it unsubscribes, so nothing
  more reaches it), or, if it cannot be closed, drained with every chunk thrown away as it comes.
  Refusals are counted (``agent_rpc_rejected``, ``agent_streams_refused``) and logged once per
  participant, not per call or packet.
- RPC ``lk.playback_finished`` on the agent, once per segment, payload
  ``{"playback_position": <seconds of the segment's audio played>, "interrupted": <bool>}``
  (exactly these two keys: the agent builds its ``PlaybackFinishedEvent`` from them):
  ``false`` after the turn's natural end, ``true`` after ``lk.clear_buffer`` (0.0 for segments
  dropped before they started). The agent answers ``"ok"`` (or ``"reject"`` when the caller is
  not the avatar it expects). Up to 3 tries, 0.1 s apart, like the reference receiver.
- RPC ``lk.playback_started`` on the agent (payload empty) when a segment's first frame goes
  out. Only livekit-agents >= 1.8 with ``wait_playback_start=True`` registers it; an agent that
  does not answers "unsupported method", which is logged once and otherwise ignored.

:class:`AgentLink` is this part of :class:`avatar_worker.modes.agents.AgentsMode`; how a segment
becomes a turn is in :mod:`avatar_worker.modes.agents_playback`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livekit import rtc

    from ..transport.streamer import SendLog
    from .agents_playback import Segment

__all__ = [
    "AUDIO_STREAM_TOPIC",
    "PARTICIPANT_WAIT_S",
    "PUBLISH_ON_BEHALF",
    "RPC_CLEAR_BUFFER",
    "RPC_PLAYBACK_FINISHED",
    "RPC_PLAYBACK_STARTED",
    "RPC_REFUSED",
    "AgentLink",
]

log = logging.getLogger("avatar_worker.agents")  # the name it always logged under (serve.py, tests filter on it)

AUDIO_STREAM_TOPIC = "lk.audio_stream"
RPC_CLEAR_BUFFER = "lk.clear_buffer"
RPC_PLAYBACK_FINISHED = "lk.playback_finished"
RPC_PLAYBACK_STARTED = "lk.playback_started"
PUBLISH_ON_BEHALF = "lk.publish_on_behalf"
"""The participant attribute naming the agent the worker publishes for (livekit-agents'
``ATTRIBUTE_PUBLISH_ON_BEHALF``)."""
RPC_TRIES = 3
MAX_DRAINS = 16
"""Refused streams read and discarded at once, for a reader that cannot be closed."""
MAX_REFUSALS_LOGGED = 1024
"""Senders whose refusals are logged (once each); beyond, they are only counted."""
RPC_REFUSED = 403
"""The RPC error code a participant other than the agent gets for ``lk.clear_buffer``."""
NOT_IN_ROOM = "not a participant of the room"
PARTICIPANT_WAIT_S = 2.0
"""How long a stream from the agent's identity waits for the agent to be announced as a
participant before it is judged (the header can come first)."""


def _is_agent_kind(participant: Any) -> bool:
    from livekit import rtc

    return bool(getattr(participant, "kind", None) == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)


def _kind_name(participant: Any) -> str:
    from livekit import rtc

    kind = getattr(participant, "kind", None)
    try:
        return rtc.ParticipantKind.Name(kind).removeprefix("PARTICIPANT_KIND_")  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return repr(kind)


def _close_reader(reader: Any) -> bool:
    """Close a byte-stream reader (unsubscribes it: nothing more reaches it); False if it cannot."""
    close = getattr(reader, "close", None)
    if close is None:
        return False
    try:
        close()
    except Exception as exc:
        log.debug("closing a byte-stream reader failed: %s", exc)
        return False
    return True


class AgentLink:
    """The worker's end of the contract: registers the byte-stream handler and the
    ``lk.clear_buffer`` RPC on each room (a room hook), tells the agent apart from everyone else,
    refuses the others' streams and calls, and performs the RPCs on the agent in order.

    A part of :class:`avatar_worker.modes.agents.AgentsMode`, whose state it shares; the mode
    provides ``_on_stream`` (a stream from the agent), ``_interrupt``, ``_poke``, ``_log`` and
    ``_ensure_loop_objects``."""

    agent_identity: str
    room: rtc.Room | None
    send_log: SendLog | None
    counts: dict[str, int]
    _wall: Callable[[], float]
    _rpc_out: asyncio.Queue[tuple[str, str]] | None
    _drains: set[asyncio.Task[None]]
    _refusals_logged: set[tuple[str, str]]
    _waiting: set[asyncio.Future[None]]
    _agent_seen: bool
    _agent_left: bool
    _started_unsupported: bool

    # ---------------------------------------------------------------------- RoomHook

    def attach(self, room: rtc.Room) -> None:
        """Before the room connects: the ``lk.audio_stream`` handler, the agent's comings and goings."""
        def _on_stream(reader: rtc.ByteStreamReader, participant_identity: str) -> None:
            self._on_stream(reader, participant_identity, room)

        room.register_byte_stream_handler(AUDIO_STREAM_TOPIC, _on_stream)

        @room.on("participant_connected")
        def _joined(participant: rtc.RemoteParticipant) -> None:
            if participant.identity == self.agent_identity and _is_agent_kind(participant):
                self._agent_seen, self._agent_left = True, False
                log.info("agent %r joined", participant.identity)

        @room.on("participant_disconnected")
        def _left(participant: rtc.RemoteParticipant) -> None:
            if participant.identity == self.agent_identity and room is self.room:
                log.info("agent %r left", participant.identity)
                self._agent_left = True
                self._interrupt("agent-left", notify=False)
                self._poke()

    def joined(self, room: rtc.Room) -> None:
        """Connected: register ``lk.clear_buffer``; note whether the agent is here already."""
        self.room = room
        self._ensure_loop_objects()

        def _clear_buffer(data: rtc.RpcInvocationData) -> str:
            return self._on_clear_buffer(data, room)

        room.local_participant.register_rpc_method(RPC_CLEAR_BUFFER, _clear_buffer)
        if any(p.identity == self.agent_identity and _is_agent_kind(p) for p in room.remote_participants.values()):
            self._agent_seen, self._agent_left = True, False

    # -------------------------------------------------------------------- incoming

    def _on_stream_when_known(self, reader: rtc.ByteStreamReader, identity: str, room: rtc.Room | None) -> None:
        """The agent's stream header can arrive before the SDK has announced the agent as a
        participant (seen in a full-suite run): wait for it, for a bounded time, then decide."""

        async def decide() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + PARTICIPANT_WAIT_S
            while room is not None and identity not in room.remote_participants and loop.time() < deadline:
                await asyncio.sleep(0.02)
            self._on_stream(reader, identity, room, waited=True)

        task = asyncio.ensure_future(decide())
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    def _not_the_agent(self, identity: str, room: rtc.Room | None) -> str | None:
        """None if ``identity`` is the agent, in ``room`` as a participant of kind agent; else why
        its RPCs and streams are refused."""
        if identity != self.agent_identity:
            return f"not the agent {self.agent_identity!r}"
        participant = room.remote_participants.get(identity) if room is not None else None
        if participant is None:
            return NOT_IN_ROOM
        if not _is_agent_kind(participant):
            return f"a participant of kind {_kind_name(participant)}, not an agent"
        return None

    def _refused(self, what: str, identity: str, why: str, record: dict[str, Any]) -> None:
        """Logged once per participant and kind of thing (never per packet); the caller counts."""
        key = (what, identity)
        if key in self._refusals_logged or len(self._refusals_logged) >= MAX_REFUSALS_LOGGED:
            return
        self._refusals_logged.add(key)
        log.warning("refusing %s from %r: %s (only the agent %r, a participant of kind agent, is heard); "
                    "further ones from %r are only counted", what, identity, why, self.agent_identity, identity)
        self._log({**record, "from": identity, "reason": why})

    def _drop(self, reader: rtc.ByteStreamReader) -> None:
        """Read nothing of a refused stream. Closing the reader unsubscribes it, so nothing more
        reaches it; a reader that cannot be closed is drained instead (chunks thrown away as they
        come, counted), so nothing piles up in it either."""
        if _close_reader(reader):
            return
        if len(self._drains) >= MAX_DRAINS:
            log.error("a refused stream could not be closed and %d are being drained already", MAX_DRAINS)
            return
        task = asyncio.get_running_loop().create_task(self._drain(reader), name="agent-stream-drain")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self, reader: rtc.ByteStreamReader) -> None:
        with contextlib.suppress(Exception):
            async for data in reader:
                self.counts["agent_bytes_discarded"] += len(data)

    def _stop_reading(self, segment: Segment) -> None:
        """No more of ``segment``'s stream is read (cleared, superseded or cut)."""
        reader, segment.reader = segment.reader, None
        if reader is not None:
            _close_reader(reader)

    def _on_clear_buffer(self, data: rtc.RpcInvocationData, room: rtc.Room | None = None) -> str:
        why = self._not_the_agent(data.caller_identity, room if room is not None else self.room)
        if why is not None:
            from livekit import rtc

            self.counts["agent_rpc_rejected"] += 1
            self._refused(f"RPC {RPC_CLEAR_BUFFER}", data.caller_identity, why,
                          {"kind": "agent-rpc", "direction": "in", "method": RPC_CLEAR_BUFFER,
                           "caller": data.caller_identity, "answer": "refused"})
            raise rtc.RpcError(RPC_REFUSED, f"{RPC_CLEAR_BUFFER} refused: only the agent {self.agent_identity!r}, "
                                            f"a participant of kind agent, may call it (the caller is {why})")
        arrived = self._wall() * 1000
        self.counts["agent_clear_buffer"] += 1
        stopped = self._interrupt("clear_buffer")
        self._log({"kind": "agent-rpc", "direction": "in", "method": RPC_CLEAR_BUFFER,
                   "caller": data.caller_identity, "answer": "ok", "segments": stopped,
                   "arrived_ms": round(arrived, 3)})
        self.interruptions.append({"arrived_ms": arrived, "segments": stopped})
        return "ok"

    # --------------------------------------------------------------------- outgoing RPCs

    def _call(self, method: str, payload: str) -> None:
        self._ensure_loop_objects()
        assert self._rpc_out is not None
        self._rpc_out.put_nowait((method, payload))

    async def _send_rpcs(self) -> None:
        """Performs the queued RPCs on the agent one after the other (playback_started of a
        segment always before its playback_finished)."""
        from livekit import rtc

        assert self._rpc_out is not None
        while True:
            method, payload = await self._rpc_out.get()
            if method == RPC_PLAYBACK_STARTED and self._started_unsupported:
                continue
            result = "failed"
            for attempt in range(RPC_TRIES):
                room = self.room
                if room is None or not room.isconnected():
                    result = "not connected"
                    await asyncio.sleep(0.1)
                    continue
                try:
                    result = await room.local_participant.perform_rpc(
                        destination_identity=self.agent_identity, method=method, payload=payload)
                    break
                except rtc.RpcError as exc:
                    result = f"error {exc.code}: {exc.message}"
                    if exc.code == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD and method == RPC_PLAYBACK_STARTED:
                        self._started_unsupported = True
                        log.info("the agent does not take %s (livekit-agents < 1.8, or "
                                 "wait_playback_start off); not calling it again", method)
                        break
                    if exc.code == rtc.RpcError.ErrorCode.RECIPIENT_NOT_FOUND:
                        break  # the agent is gone: nobody to tell
                except Exception as exc:
                    result = f"error: {exc}"
                if attempt < RPC_TRIES - 1:
                    await asyncio.sleep(0.1)
            unsupported = method == RPC_PLAYBACK_STARTED and self._started_unsupported
            if result != "ok" and not unsupported:
                log.warning("%s(%s) on %r: %s", method, payload, self.agent_identity, result)
                if result != "reject":
                    self.counts["agent_rpc_failed"] += 1
            self._log({"kind": "agent-rpc", "direction": "out", "method": method, "to": self.agent_identity,
                       "payload": payload, "result": result})

