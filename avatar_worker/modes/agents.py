"""Agents mode (``--mode agents``): the LiveKit Agents avatar contract, so any LiveKit Agents voice
pipeline drives the avatar.

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
  trailer got lost (it ends there), and so does :data:`STREAM_IDLE_TIMEOUT_S` without data.
- Each segment is played as one turn (docs/wire-format.md: TRANSITION, START ... END,
  TRANSITION_END), resampled and downmixed to 48 kHz mono, with motion generated from its
  envelope by the same path as speech mode (:class:`avatar_worker.motion_gen.MotionGenerator`,
  :func:`avatarplayer.wire.messages.build_message`, :func:`avatar_worker.turns.build_turn`).
  Playback starts once :data:`PREBUFFER_FRAMES` frames are in (or the segment is complete).
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
- Bounded buffering: a segment's audio waiting to play is at most :data:`MAX_SEGMENT_BUFFER_S`,
  all segments' together :data:`MAX_BUFFERED_S`, a stream brings at most :data:`MAX_SEGMENT_BYTES`
  bytes, and at most :data:`MAX_OPEN_SEGMENTS` segments are open at once. A stream over a cap is
  *cut*: no more of it is read (log: ``stream X from Y cut at N bytes: over the cap (...)``), what
  came plays as a normal turn (END, TRANSITION_END), and the agent hears
  ``interrupted: true`` with the position played. A stream beyond the open segments is not read
  and reported finished at once (position 0, interrupted), so the agent does not wait for it.
- RPC ``lk.playback_finished`` on the agent, once per segment, payload
  ``{"playback_position": <seconds of the segment's audio played>, "interrupted": <bool>}``
  (exactly these two keys: the agent builds its ``PlaybackFinishedEvent`` from them):
  ``false`` after the turn's natural end, ``true`` after ``lk.clear_buffer`` (0.0 for segments
  dropped before they started). The agent answers ``"ok"`` (or ``"reject"`` when the caller is
  not the avatar it expects). Up to 3 tries, 0.1 s apart, like the reference receiver.
- RPC ``lk.playback_started`` on the agent (payload empty) when a segment's first frame goes
  out. Only livekit-agents >= 1.8 with ``wait_playback_start=True`` registers it; an agent that
  does not answers "unsupported method", which is logged once and otherwise ignored.

The send log (``--send-log``) gets, besides the streamer's per-packet records:

- ``{"kind": "turn", "event": "start", "segment", "t_ms", "first_seq", "stream_id", "sample_rate",
  "num_channels"}`` as a segment's turn starts (its TRANSITION or START packet goes out next);
- ``{"kind": "turn", "event": "end", "reason": "end" | "interrupted" | "cut", "segment", "t_ms",
  "first_seq", "last_seq", "frames", "audio_s"}`` once the turn is over (``last_seq``: the last
  frame sent; the TRANSITION_END record follows or precedes it within one tick);
- ``{"kind": "agent-rpc", "direction": "in" | "out", "method", "caller" | "to", "t_ms", "answer"
  | "result", ...}`` for every RPC (``in``: ``answer`` is ``"ok"``, or ``"refused"`` for the first
  refused call of each participant);
- ``{"kind": "agent-stream", "event": "open" | "close" | "cut" | "refused" | "ignored", "segment",
  "stream_id", "t_ms", ...}`` (``refused``: the first refused stream of each participant).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from avatarplayer.wire.messages import build_message
from avatarplayer.wire.motion import Flags

from ..audio import pcm as pcm_audio
from ..config import WorkerConfig
from ..motion_gen import MotionGenerator
from ..transport.streamer import TurnObserver
from ..turns import TRANSITION_END_PACKET, Emission, Tick, Turn, TurnFrame, build_turn

if TYPE_CHECKING:
    from livekit import rtc

    from ..transport.publisher import Publisher
    from ..transport.streamer import MotionStreamer, SendLog, TurnResult

__all__ = [
    "AUDIO_STREAM_TOPIC",
    "PUBLISH_ON_BEHALF",
    "RPC_CLEAR_BUFFER",
    "RPC_PLAYBACK_FINISHED",
    "RPC_PLAYBACK_STARTED",
    "AgentsMode",
    "PcmConverter",
    "Segment",
    "chunk_turn",
]

log = logging.getLogger("avatar_worker.agents")  # the name it always logged under (serve.py, tests filter on it)

AUDIO_STREAM_TOPIC = "lk.audio_stream"
RPC_CLEAR_BUFFER = "lk.clear_buffer"
RPC_PLAYBACK_FINISHED = "lk.playback_finished"
RPC_PLAYBACK_STARTED = "lk.playback_started"
PUBLISH_ON_BEHALF = "lk.publish_on_behalf"
"""The participant attribute naming the agent the worker publishes for (livekit-agents'
``ATTRIBUTE_PUBLISH_ON_BEHALF``)."""

PREBUFFER_FRAMES = 3
"""40 ms frames a segment needs before its turn starts (unless it is complete already)."""
LOW_WATER = 2
"""Top up the streamer's queue when fewer than this many of the segment's frames wait in it."""
HIGH_WATER = 6
"""... up to this many. Queued frames are dropped at once on ``lk.clear_buffer``, so this adds
nothing to the interruption latency."""
STREAM_IDLE_TIMEOUT_S = 10.0
"""An open segment with no data for this long is taken as ended (its trailer got lost)."""
RPC_TRIES = 3

MAX_SEGMENT_BUFFER_S = 60.0
"""A segment's audio waiting to be played may not exceed this: a stream that brings more is cut."""
MAX_SEGMENT_BYTES = 32 * 1024 * 1024
"""Bytes one stream may bring in all (whatever its format: 5.8 minutes at 48 kHz mono)."""
MAX_BUFFERED_S = 120.0
"""All segments' audio waiting to be played, together."""
MAX_OPEN_SEGMENTS = 8
"""Segments not yet over (buffering, playing or queued behind); a stream beyond is not read."""
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

_RESAMPLE_QUALITY = "medium"


def _wall_ms() -> float:
    return round(time.time() * 1000, 3)


# ----------------------------------------------------------------------------------- audio


class PcmConverter:
    """Interleaved int16 PCM at any rate and channel count → 48 kHz mono int16, streaming.

    Channels are averaged; the rate is converted with the LiveKit SDK's sox resampler, which
    keeps its state across pushes (no clicks at chunk boundaries). Bytes that do not make a
    whole sample frame wait for the next push.
    """

    def __init__(self, sample_rate: int, num_channels: int) -> None:
        if not 8_000 <= sample_rate <= 192_000:
            raise ValueError(f"unsupported sample_rate {sample_rate}")
        if not 1 <= num_channels <= 8:
            raise ValueError(f"unsupported num_channels {num_channels}")
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self._rest = b""
        self._resampler: Any = None
        if sample_rate != pcm_audio.SAMPLE_RATE:
            from livekit import rtc

            self._resampler = rtc.AudioResampler(sample_rate, pcm_audio.SAMPLE_RATE, num_channels=1,
                                                 quality=rtc.AudioResamplerQuality(_RESAMPLE_QUALITY))
        self.samples_in = 0
        """Sample frames (per channel) taken in so far."""

    def push(self, data: bytes) -> bytes:
        """Convert ``data`` (any length); returns what is ready (may be empty)."""
        data = self._rest + bytes(data)
        step = 2 * self.num_channels
        usable = len(data) - len(data) % step
        self._rest = data[usable:]
        if not usable:
            return b""
        self.samples_in += usable // step
        mono = _downmix(data[:usable], self.num_channels)
        if self._resampler is None:
            return mono
        return b"".join(bytes(frame.data) for frame in self._resampler.push(bytearray(mono)))

    def flush(self) -> bytes:
        """The resampler's tail, at the end of the input."""
        self._rest = b""
        if self._resampler is None:
            return b""
        return b"".join(bytes(frame.data) for frame in self._resampler.flush())


def _downmix(pcm: bytes, channels: int) -> bytes:
    if channels == 1:
        return pcm
    import numpy as np  # a dependency of the livekit SDK

    samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels).astype(np.int32)
    mono = np.clip(np.rint(samples.mean(axis=1)), -32768, 32767).astype("<i2")
    return mono.tobytes()


# ------------------------------------------------------------------------------- segments


@dataclass
class _Chunk:
    """A piece of a segment's turn handed to the streamer as one :class:`Turn`."""

    segment: Segment
    turn: Turn
    samples: tuple[int, ...]
    """Samples of the agent's audio in each frame (short for the last frame, 0 for fillers)."""
    future: asyncio.Future[TurnResult]
    first: bool = False
    final: bool = False
    closing: bool = False
    """A lone TRANSITION_END closing an interrupted turn."""
    started: bool = False


@dataclass
class Segment:
    """One byte stream from the agent: its audio in 40 ms frames, and how far it has played."""

    number: int
    stream_id: str
    sample_rate: int
    num_channels: int
    converter: PcmConverter | None = None
    label: str = ""
    ready: deque[tuple[bytes, int]] = field(default_factory=deque)
    """48 kHz mono frames not yet handed to the streamer, with their real sample counts."""
    input_closed: bool = False
    cleared: bool = False
    state: str = "waiting"
    """``waiting`` (buffering), ``playing``, ``flushed`` (all frames queued), ``interrupting``
    (cleared, its turn being closed), ``done`` (playback_finished sent)."""
    chunks: list[_Chunk] = field(default_factory=list)
    context: list[TurnFrame] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    frames_queued: int = 0
    frames_sent: int = 0
    samples_played: int = 0
    samples_received: int = 0
    """48 kHz samples of real audio received (after conversion)."""
    dropped_s: float = 0.0
    """Audio that was still in the audio source's queue when the segment was cleared."""
    last_data_at: float = field(default_factory=time.monotonic)
    closing_chunk: _Chunk | None = None
    final_chunk: _Chunk | None = None
    notify: bool = True
    """Tell the agent when it is over (not once the agent has left)."""
    sender: str = ""
    reader: Any = None
    """The byte-stream reader while it is being read (closed to stop reading)."""
    bytes_in: int = 0
    """Bytes of the stream taken in (in the agent's format)."""
    cut: bool = False
    """The stream brought more than the caps allow: the rest was not read (see :meth:`AgentsMode._take`)."""
    _pcm: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        if not self.label:
            self.label = f"agent-{self.number}"

    def push(self, data: bytes) -> None:
        """Take a chunk of the stream (in the agent's format)."""
        if self.converter is None:
            self.converter = PcmConverter(self.sample_rate, self.num_channels)
        self.bytes_in += len(data)
        self._take(self.converter.push(data))
        self.last_data_at = time.monotonic()

    @property
    def buffered_s(self) -> float:
        """Audio received and not yet handed to the streamer."""
        samples = len(self.ready) * pcm_audio.SAMPLES_PER_FRAME + len(self._pcm) // 2
        return samples / pcm_audio.SAMPLE_RATE

    @property
    def input_bytes_per_s(self) -> int:
        return 2 * max(1, self.sample_rate) * max(1, self.num_channels)

    def _take(self, pcm: bytes) -> None:
        self._pcm += pcm
        self.samples_received += len(pcm) // 2
        size = pcm_audio.BYTES_PER_FRAME
        while len(self._pcm) >= size:
            self.ready.append((bytes(self._pcm[:size]), pcm_audio.SAMPLES_PER_FRAME))
            del self._pcm[:size]

    def close_input(self) -> None:
        """The stream ended: flush the resampler, pad the last frame with silence."""
        if self.input_closed:
            return
        self.input_closed = True
        if self.converter is not None:
            self._take(self.converter.flush())
        if self._pcm:
            real = len(self._pcm) // 2
            self.ready.append((bytes(self._pcm) + bytes(pcm_audio.BYTES_PER_FRAME - len(self._pcm)), real))
            self._pcm.clear()

    @property
    def duration_s(self) -> float:
        return self.samples_received / pcm_audio.SAMPLE_RATE

    @property
    def position_s(self) -> float:
        """Seconds of the segment's audio played (heard, as far as we can tell)."""
        return max(0.0, self.samples_played / pcm_audio.SAMPLE_RATE - self.dropped_s)

    @property
    def started(self) -> bool:
        return any(chunk.started for chunk in self.chunks)

    def ended_on_wire(self) -> bool:
        """Its final chunk played to the end (its TRANSITION_END went out)."""
        final = self.final_chunk
        return (final is not None and final.future.done() and not final.future.cancelled()
                and final.future.result().completed)


def chunk_turn(
    frames: list[TurnFrame],
    first_seq: int,
    *,
    first: bool,
    final: bool,
    context: Sequence[TurnFrame] = (),
    transition: bool = True,
    redundant: bool = False,
    compression: Any = None,
    label: str = "agent",
) -> Turn:
    """A piece of a turn, planned by :func:`avatar_worker.turns.build_turn`.

    The first piece has the TRANSITION (if ``transition``) and START, only the final one END and
    the TRANSITION_END, and every frame's REDUNDANT copy carries the previous two frames of the
    turn even across pieces (``context``: the last frames of the previous piece). Played back
    to back on the streamer, the pieces are one turn on the wire.
    """
    if not frames:
        raise ValueError("a chunk needs at least one frame")
    ctx = [] if first else list(context)[-2:]
    extra = [] if final else [TurnFrame(b"")]  # takes the END flag (and is cut off again)
    lead = 1 if first and transition else 0
    full = build_turn([*ctx, *frames, *extra], first_seq - len(ctx), transition=first and transition,
                      redundant=redundant, compression=compression, label=label)
    mine = full.ticks[lead + len(ctx): lead + len(ctx) + len(frames)]
    ticks = (*full.ticks[:lead], *mine, *(full.ticks[-1:] if final else ()))
    return Turn(tuple(ticks), first_seq, len(frames), label)


def closing_turn(first_seq: int, label: str) -> Turn:
    """A lone TRANSITION_END (no frames): closes a turn interrupted between two chunks."""
    tick = Tick((Emission(TRANSITION_END_PACKET, "transition_end", int(Flags.TRANSITION_END)),))
    return Turn((tick,), first_seq, 0, label)


# ---------------------------------------------------------------------------------- mode


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



class AgentsMode(TurnObserver):
    """The ``agents`` mode runner (see :mod:`avatar_worker.modes`): room hook, turn observer and
    turn driver in one."""

    def __init__(self, config: WorkerConfig, *, wall_clock: Callable[[], float] = time.time) -> None:
        if not config.agent_identity:
            raise ValueError("agents mode needs the agent's identity (--agent-identity)")
        self.config = config
        self.agent_identity = config.agent_identity
        self.generator = MotionGenerator(config.seed)
        self.segments: list[Segment] = []
        self.room: rtc.Room | None = None
        self.streamer: MotionStreamer | None = None
        self.publisher: Publisher | None = None
        self.send_log: SendLog | None = None
        self._wall = wall_clock
        self._chunks: dict[int, _Chunk] = {}
        self._numbers = 0
        self._wake: asyncio.Event | None = None
        self._rpc_out: asyncio.Queue[tuple[str, str]] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._drains: set[asyncio.Task[None]] = set()
        self._refusals_logged: set[tuple[str, str]] = set()
        self._waiting: set[asyncio.Future[None]] = set()
        self._agent_seen = False
        self._agent_left = False
        self._started_unsupported = False
        self.counts = {
            "agent_segments": 0,
            "agent_segments_completed": 0,
            "agent_segments_interrupted": 0,
            "agent_clear_buffer": 0,
            "agent_rpc_rejected": 0,
            "agent_underrun_frames": 0,
            "agent_rpc_failed": 0,
            # byte streams on lk.audio_stream from anyone but the agent: not read
            "agent_streams_refused": 0,
            # bytes of refused streams read only to be thrown away (a reader that would not close)
            "agent_bytes_discarded": 0,
            # the agent's streams cut at a cap, and those not read at all (too many segments open)
            "agent_segments_cut": 0,
            "agent_segments_refused": 0,
        }
        self.interruptions: list[dict[str, Any]] = []
        """Per ``lk.clear_buffer``: when it arrived and which segment it stopped."""

    # --------------------------------------------------------------------- ModeRunner

    async def prepare(self) -> None:
        return None

    def install(self, publisher: Any, messages: Any, observers: list[Any]) -> None:
        self.publisher = publisher
        self.send_log = getattr(messages, "send_log", None)
        publisher.hooks.append(self)
        observers.append(self)

    async def drive(self, streamer: MotionStreamer, lead_in: Callable[[], Awaitable[None]]) -> str:
        """Feed the segments to ``streamer`` as they come; returns once the agent left (only
        with ``exit_when_done`` does the run end then)."""
        self.streamer = streamer
        self._ensure_loop_objects()
        assert self._wake is not None
        log.info("agents mode: waiting for audio from agent %r on %r", self.agent_identity, AUDIO_STREAM_TOPIC)
        while True:
            # asyncio.timeout, not wait_for: wait_for (3.11) swallows a cancel that comes just as
            # the event is set (a poke right before the run ends), and this loop would go on
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()
            self._feed()
            if self.config.exit_when_done and self._agent_seen and self._agent_left and not self.segments:
                log.info("agent %r left; nothing left to play", self.agent_identity)
                return "agent-left"

    def summary(self) -> dict[str, Any]:
        return {**self.counts, "agent_identity": self.agent_identity}

    async def close(self) -> None:
        tasks = [*self._readers, *self._drains, *([self._sender] if self._sender is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _ensure_loop_objects(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._rpc_out is None:
            self._rpc_out = asyncio.Queue()
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_rpcs(), name="agents-rpc")

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _log(self, record: dict[str, Any]) -> None:
        if self.send_log is not None:
            self.send_log.write({**record, "t_ms": round(self._wall() * 1000, 3)})

    # ---------------------------------------------------------------------- RoomHook

    def attach(self, room: rtc.Room) -> None:
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

    def _on_stream(self, reader: rtc.ByteStreamReader, participant_identity: str, room: rtc.Room | None = None,
                   *, waited: bool = False) -> None:
        info = reader.info
        room = room if room is not None else self.room
        why = self._not_the_agent(participant_identity, room)
        if why == NOT_IN_ROOM and participant_identity == self.agent_identity and not waited:
            self._on_stream_when_known(reader, participant_identity, room)
            return
        if why is not None:
            self.counts["agent_streams_refused"] += 1
            self._refused(f"audio streams on {AUDIO_STREAM_TOPIC}", participant_identity, why,
                          {"kind": "agent-stream", "event": "refused", "stream_id": info.stream_id})
            self._drop(reader)
            return
        if len(self.segments) >= MAX_OPEN_SEGMENTS:
            # not read; reported over at once, or the agent would wait for it forever
            self.counts["agent_segments_refused"] += 1
            self._refused("audio streams beyond the open segments", participant_identity,
                          f"{MAX_OPEN_SEGMENTS} segments are open already",
                          {"kind": "agent-stream", "event": "refused", "stream_id": info.stream_id})
            self._drop(reader)
            self._call(RPC_PLAYBACK_FINISHED, json.dumps({"playback_position": 0.0, "interrupted": True}))
            return
        attrs = dict(info.attributes or {})
        try:
            rate, channels = int(attrs["sample_rate"]), int(attrs["num_channels"])
            converter = PcmConverter(rate, channels)
        except (KeyError, ValueError) as exc:
            # unplayable, but the agent counts it as a segment: it is reported finished at once
            # (position 0), or the agent would wait for it
            log.error("audio stream %s without a usable sample_rate / num_channels (%s): not played",
                      info.stream_id, exc)
            self._log({"kind": "agent-stream", "event": "ignored", "from": participant_identity,
                       "stream_id": info.stream_id, "attributes": attrs})
            self._drop(reader)
            self._numbers += 1
            self.counts["agent_segments"] += 1
            self.segments.append(Segment(self._numbers, info.stream_id, 0, 0, input_closed=True))
            self._poke()
            return
        for older in self.segments:
            if not older.input_closed:
                log.warning("segment %d: a new stream began before its own ended; ending it", older.number)
                older.close_input()
                self._stop_reading(older)
        self._numbers += 1
        segment = Segment(self._numbers, info.stream_id, rate, channels, converter, sender=participant_identity,
                          reader=reader)
        self.segments.append(segment)
        self.counts["agent_segments"] += 1
        self._log({"kind": "agent-stream", "event": "open", "segment": segment.number,
                   "stream_id": info.stream_id, "sample_rate": rate, "num_channels": channels})
        task = asyncio.get_running_loop().create_task(self._read(segment, reader), name=f"agent-stream-{segment.number}")
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)
        self._poke()

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

    def _take(self, segment: Segment, data: bytes) -> bool:
        """Take a chunk of ``segment``'s stream within the caps; False (the segment is cut) when it
        would go over one: :data:`MAX_SEGMENT_BYTES` in all, :data:`MAX_SEGMENT_BUFFER_S` of its own
        audio waiting to play, :data:`MAX_BUFFERED_S` of everyone's."""
        per_s = segment.input_bytes_per_s
        waiting = sum(s.buffered_s for s in self.segments if s.state != "done")
        room_for = {
            f"{MAX_SEGMENT_BYTES} bytes per stream": MAX_SEGMENT_BYTES - segment.bytes_in,
            f"{MAX_SEGMENT_BUFFER_S:g} s of audio waiting to play per segment":
                int((MAX_SEGMENT_BUFFER_S - segment.buffered_s) * per_s),
            f"{MAX_BUFFERED_S:g} s of audio waiting to play in all": int((MAX_BUFFERED_S - waiting) * per_s),
        }
        cap, allowed = min(room_for.items(), key=lambda item: item[1])
        if len(data) <= allowed:
            segment.push(data)
            return True
        step = 2 * segment.num_channels
        allowed = max(0, allowed - allowed % step)
        if allowed:
            segment.push(data[:allowed])
        segment.cut = True
        self.counts["agent_segments_cut"] += 1
        log.warning("stream %s from %r cut at %d bytes: over the cap (%s); segment %d plays what came",
                    segment.stream_id, segment.sender, segment.bytes_in, cap, segment.number)
        self._log({"kind": "agent-stream", "event": "cut", "segment": segment.number,
                   "stream_id": segment.stream_id, "bytes": segment.bytes_in, "cap": cap})
        return False

    async def _read(self, segment: Segment, reader: rtc.ByteStreamReader) -> None:
        error = None
        try:
            async for data in reader:
                if segment.cleared or segment.input_closed:
                    break  # the rest of a cleared (or superseded) stream is not read
                if not self._take(segment, data):
                    break  # cut
                self._poke()
        except asyncio.CancelledError:
            _close_reader(reader)
            raise
        except Exception as exc:  # rtc.StreamError: aborted, or the room went away
            error = str(exc) or type(exc).__name__
            log.warning("segment %d: audio stream failed: %s", segment.number, error)
        finally:
            if segment.reader is reader:
                self._stop_reading(segment)
        if not segment.cleared:
            segment.close_input()
        self._log({"kind": "agent-stream", "event": "close", "segment": segment.number,
                   "stream_id": segment.stream_id, "audio_s": round(segment.duration_s, 3),
                   "cleared": segment.cleared, "cut": segment.cut, **({"error": error} if error else {})})
        self._poke()

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

    # -------------------------------------------------------------------- interrupting

    def _interrupt(self, why: str, *, notify: bool = True) -> list[int]:
        """Stop every segment now; returns the numbers of those that were stopped. ``notify``:
        send their ``lk.playback_finished`` (not to an agent that has left)."""
        active = [s for s in self.segments if s.state != "done" and not s.ended_on_wire()]
        if not active:
            return []
        streamer = self.streamer
        # a chunk that started and has not finished is the streamer's current turn: interrupting
        # it makes the streamer send TRANSITION_END on the next tick; between two chunks it
        # sends nothing, and the turn is closed here
        owed = any(c.started and not c.future.done() for s in active for c in s.chunks)
        if streamer is not None:
            streamer.interrupt()
        dropped = self._drop_queued_audio()
        stopped = []
        for segment in active:
            segment.cleared = True
            segment.notify = segment.notify and notify
            segment.ready.clear()
            self._stop_reading(segment)  # the rest of its stream is not read
            stopped.append(segment.number)
            if segment.state == "interrupting":
                closing = segment.closing_chunk
                if closing is not None and closing.future.done() and not closing.started:
                    self._queue_closing(segment)  # its TRANSITION_END was dropped just now
                continue
            if segment.started:
                segment.state = "interrupting"
                segment.dropped_s = dropped
                if not owed:
                    self._queue_closing(segment)
            else:
                self._finish(segment, interrupted=True)
        log.info("%s: stopped segment(s) %s", why, stopped)
        self._poke()
        return stopped

    def _drop_queued_audio(self) -> float:
        source = getattr(self.publisher, "audio_source", None)
        if source is None:
            return 0.0
        try:
            queued = float(source.queued_duration)
            source.clear_queue()
        except Exception:
            log.exception("clearing the audio queue failed")
            return 0.0
        return queued

    def _queue_closing(self, segment: Segment) -> None:
        streamer = self.streamer
        if streamer is None:
            self._finish(segment, interrupted=True)
            return
        try:
            turn = closing_turn(streamer.next_seq, segment.label)
            future = streamer.play(turn)
        except RuntimeError:  # stopping: the streamer closes what is open itself
            self._finish(segment, interrupted=True)
            return
        chunk = _Chunk(segment, turn, (), future, closing=True)
        segment.closing_chunk = chunk
        self._track(chunk)

    # -------------------------------------------------------------------------- feeding

    def _feed(self) -> None:
        """Start, top up or end the segment being played (called on every wake-up)."""
        streamer = self.streamer
        if streamer is None:
            return
        now = time.monotonic()
        for segment in list(self.segments):
            if segment.state in ("flushed", "interrupting", "done"):
                continue
            if not segment.input_closed and now - segment.last_data_at > STREAM_IDLE_TIMEOUT_S:
                log.warning("segment %d: no audio for %.0f s; taking it as ended", segment.number,
                            STREAM_IDLE_TIMEOUT_S)
                segment.close_input()
            try:
                self._feed_segment(streamer, segment)
            except RuntimeError as exc:  # the streamer is stopping
                log.debug("not feeding segment %d: %s", segment.number, exc)
            return  # one segment at a time: the next starts once this one is all queued

    def _feed_segment(self, streamer: MotionStreamer, segment: Segment) -> None:
        if segment.state == "waiting":
            if not segment.input_closed and len(segment.ready) < PREBUFFER_FRAMES:
                return
            if not segment.ready:  # an empty stream: nothing to play, but the agent counted it
                self._finish(segment, interrupted=False)
                self._poke()
                return
            segment.state = "playing"
        ahead = segment.frames_queued - segment.frames_sent
        if segment.frames_queued and ahead >= LOW_WATER:
            return
        room = HIGH_WATER - max(0, ahead)
        if segment.input_closed:
            # in pieces of a few frames even when it is all there: planning a long segment in one
            # go would hold the event loop past the streamer's next deadline
            if len(segment.ready) <= room:
                items = list(segment.ready)
                segment.ready.clear()
                self._queue_chunk(streamer, segment, items, final=True)
                self._poke()  # the next segment may start buffering into the queue behind it
            else:
                self._queue_chunk(streamer, segment, [segment.ready.popleft() for _ in range(room)], final=False)
            return
        # keep the newest frame back while the stream is open: if the stream ends now, the final
        # chunk still has a real frame to carry END
        n = min(room, len(segment.ready) - 1)
        if n <= 0 and ahead <= 0:
            n = min(1, len(segment.ready))
        if n > 0:
            items = [segment.ready.popleft() for _ in range(n)]
            self._queue_chunk(streamer, segment, items, final=False)
        elif ahead <= 0:
            # the agent's audio is late: a silent frame keeps the turn going (mouth at rest)
            self.counts["agent_underrun_frames"] += 1
            self._queue_chunk(streamer, segment, [(b"", 0)], final=False)

    def _queue_chunk(self, streamer: MotionStreamer, segment: Segment, items: list[tuple[bytes, int]],
                     *, final: bool) -> None:
        if not items:
            items = [(b"", 0)]  # a final silent frame to carry END
        first = segment.frames_queued == 0
        levels = [pcm_audio.envelope([pcm])[0] if pcm else 0.0 for pcm, _ in items]
        poses = self.generator.poses(levels)
        last = len(items) - 1
        frames = [TurnFrame(build_message(pose, req_id=segment.label, end=final and k == last,
                                          avatar_id=self.config.avatar_id), pcm or None)
                  for k, ((pcm, _), pose) in enumerate(zip(items, poses))]
        turn = chunk_turn(frames, streamer.next_seq, first=first, final=final, context=segment.context,
                          transition=self.config.transition, redundant=self.config.redundant,
                          compression=self.config.compression, label=segment.label)
        future = streamer.play(turn)
        chunk = _Chunk(segment, turn, tuple(samples for _, samples in items), future, first=first, final=final)
        segment.chunks.append(chunk)
        segment.frames_queued += len(items)
        segment.context = [*segment.context, *frames][-2:]
        if first:
            segment.first_seq = turn.first_seq
        if final:
            segment.state = "flushed"
            segment.final_chunk = chunk
        self._track(chunk)

    def _track(self, chunk: _Chunk) -> None:
        key = id(chunk.turn)
        self._chunks[key] = chunk

        def _done(future: asyncio.Future[Any]) -> None:
            if not chunk.started:  # dropped while queued: no observer will hear of it
                self._chunks.pop(key, None)

        chunk.future.add_done_callback(_done)

    # ---------------------------------------------------------------------- TurnObserver

    def turn_started(self, turn: Turn, number: int) -> None:
        chunk = self._chunks.get(id(turn))
        if chunk is None:
            return
        chunk.started = True
        segment = chunk.segment
        if chunk.first:
            self._log({"kind": "turn", "event": "start", "segment": segment.number, "label": segment.label,
                       "first_seq": turn.first_seq, "stream_id": segment.stream_id,
                       "sample_rate": segment.sample_rate, "num_channels": segment.num_channels})
            log.info("segment %d: turn starts at seq %d (%.2f s of audio in so far)", segment.number,
                     turn.first_seq, segment.duration_s)

    def frame_sent(self, turn: Turn, number: int, frames: int) -> None:
        chunk = self._chunks.get(id(turn))
        if chunk is None or not 1 <= frames <= len(chunk.samples):
            return
        segment = chunk.segment
        segment.frames_sent += 1
        segment.samples_played += chunk.samples[frames - 1]
        segment.last_seq = turn.first_seq + frames - 1
        if segment.frames_sent == 1:
            self._call(RPC_PLAYBACK_STARTED, "")
        self._poke()

    def nothing_queued(self) -> None:
        """The streamer is about to send an IDLE heartbeat: if a segment is playing and its
        audio is late, its silent frame must be queued now, not when this task next runs."""
        if any(segment.state == "playing" for segment in self.segments):
            self._feed()

    def turn_ended(self, turn: Turn, number: int, completed: bool) -> None:
        chunk = self._chunks.pop(id(turn), None)
        if chunk is None:
            return
        segment = chunk.segment
        if segment.state == "done":
            return
        if chunk.final and completed:
            # a cut segment ends on the wire like any other, but the agent learns it was not all played
            self._end_turn(segment, "cut" if segment.cut else "end")
            self._finish(segment, interrupted=segment.cut)
        elif chunk.closing or not completed:
            self._end_turn(segment, "interrupted")
            self._finish(segment, interrupted=True)
        self._poke()

    def _end_turn(self, segment: Segment, reason: str) -> None:
        self._log({"kind": "turn", "event": "end", "reason": reason, "segment": segment.number,
                   "label": segment.label, "first_seq": segment.first_seq, "last_seq": segment.last_seq,
                   "frames": segment.frames_sent, "audio_s": round(segment.position_s, 3)})

    def _finish(self, segment: Segment, *, interrupted: bool) -> None:
        if segment.state == "done":
            return
        segment.state = "done"
        segment.ready.clear()
        with contextlib.suppress(ValueError):
            self.segments.remove(segment)
        position = round(segment.position_s, 3)
        self.counts["agent_segments_interrupted" if interrupted else "agent_segments_completed"] += 1
        log.info("segment %d: %s after %.2f s of %.2f s (%d frames)", segment.number,
                 "interrupted" if interrupted else "played", position, segment.duration_s, segment.frames_sent)
        if segment.notify:
            self._call(RPC_PLAYBACK_FINISHED, json.dumps({"playback_position": position, "interrupted": interrupted}))

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
