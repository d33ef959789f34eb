# Just over 400 lines: Segment, its chunks and the SegmentPlayer that feeds them are one piece of bookkeeping.
"""How agents mode plays the agent's audio (:mod:`avatar_worker.modes.agents`): each byte stream
is a :class:`Segment`, played as one turn in chunks on the streamer.

- Each segment is played as one turn (docs/wire-format.md: TRANSITION, START ... END,
  TRANSITION_END), resampled and downmixed to 48 kHz mono, with motion generated from its
  envelope by the same path as speech mode (:class:`avatar_worker.motion_gen.MotionGenerator`,
  :func:`avatarplayer.wire.messages.build_message`, :func:`avatar_worker.turns.build_turn`).
  Playback starts once :data:`PREBUFFER_FRAMES` frames are in (or the segment is complete).

The streamer's queue is kept between :data:`LOW_WATER` and :data:`HIGH_WATER` frames of the
segment; while the agent's audio is late, silent frames keep the turn open. The turn observer
callbacks count what was played (the ``playback_position`` the agent is told).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from avatarplayer.wire.messages import build_message
from avatarplayer.wire.motion import Flags

from ..audio import pcm as pcm_audio
from ..audio.pcm import PcmConverter
from ..transport.streamer import TurnObserver
from ..turns import TRANSITION_END_PACKET, Emission, Tick, Turn, TurnFrame, build_turn
from .agents_wire import RPC_PLAYBACK_FINISHED, RPC_PLAYBACK_STARTED

if TYPE_CHECKING:
    from ..config import WorkerConfig
    from ..motion_gen import MotionGenerator
    from ..transport.streamer import MotionStreamer, TurnResult

__all__ = ["Segment", "SegmentPlayer", "chunk_turn", "closing_turn"]

log = logging.getLogger("avatar_worker.agents")  # the name it always logged under (serve.py, tests filter on it)

PREBUFFER_FRAMES = 3
"""40 ms frames a segment needs before its turn starts (unless it is complete already)."""
LOW_WATER = 2
"""Top up the streamer's queue when fewer than this many of the segment's frames wait in it."""
HIGH_WATER = 6
"""... up to this many. Queued frames are dropped at once on ``lk.clear_buffer``, so this adds
nothing to the interruption latency."""
STREAM_IDLE_TIMEOUT_S = 10.0
"""An open segment with no data for this long is taken as ended (its trailer got lost)."""


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
        """Bytes per second of the stream in the agent's format."""
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
        """Seconds of the segment's audio received so far."""
        return self.samples_received / pcm_audio.SAMPLE_RATE

    @property
    def position_s(self) -> float:
        """Seconds of the segment's audio played (heard, as far as we can tell)."""
        return max(0.0, self.samples_played / pcm_audio.SAMPLE_RATE - self.dropped_s)

    @property
    def started(self) -> bool:
        """One of its chunks has started playing."""
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


class SegmentPlayer(TurnObserver):
    """Feeds the segments to the streamer as chunks of a turn, closes interrupted turns, and
    follows them as a turn observer to tell the agent what was played.

    A part of :class:`avatar_worker.modes.agents.AgentsMode`, whose state it shares; the mode
    provides ``_call`` (an RPC on the agent, :class:`avatar_worker.modes.agents_wire.AgentLink`),
    ``_poke`` and ``_log``."""

    config: WorkerConfig
    generator: MotionGenerator
    segments: list[Segment]
    streamer: MotionStreamer | None
    publisher: Any
    counts: dict[str, int]
    _chunks: dict[int, _Chunk]

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
        """A chunk started: the segment's first logs its turn start."""
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
        """Count what was played; the segment's first frame sends ``lk.playback_started``."""
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
        """A chunk ended: a completed final chunk or an interruption finishes its segment."""
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

