"""Agents mode (``--mode agents``): the LiveKit Agents avatar contract, so any LiveKit Agents voice
pipeline drives the avatar.

The contract on the wire (byte streams on ``lk.audio_stream``, the ``lk.clear_buffer``,
``lk.playback_finished`` and ``lk.playback_started`` RPCs, who may use them) is in
:mod:`avatar_worker.modes.agents_wire`; how a stream is played as a turn, in
:mod:`avatar_worker.modes.agents_playback`; the conversion of the agent's PCM to 48 kHz mono, in
:class:`avatar_worker.audio.pcm.PcmConverter`. :class:`AgentsMode` puts them together:

- Bounded buffering: a segment's audio waiting to play is at most :data:`MAX_SEGMENT_BUFFER_S`,
  all segments' together :data:`MAX_BUFFERED_S`, a stream brings at most :data:`MAX_SEGMENT_BYTES`
  bytes, and at most :data:`MAX_OPEN_SEGMENTS` segments are open at once. A stream over a cap is
  *cut*: no more of it is read (log: ``stream X from Y cut at N bytes: over the cap (...)``), what
  came plays as a normal turn (END, TRANSITION_END), and the agent hears
  ``interrupted: true`` with the position played. A stream beyond the open segments is not read
  and reported finished at once (position 0, interrupted), so the agent does not wait for it.

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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..audio.pcm import PcmConverter
from ..config import WorkerConfig
from ..motion_gen import MotionGenerator
from .agents_playback import Segment, SegmentPlayer, _Chunk
from .agents_wire import (
    AUDIO_STREAM_TOPIC,
    NOT_IN_ROOM,
    RPC_PLAYBACK_FINISHED,
    AgentLink,
    _close_reader,
)

if TYPE_CHECKING:
    from livekit import rtc

    from ..transport.publisher import Publisher
    from ..transport.streamer import MotionStreamer, SendLog

__all__ = ["AgentsMode", "MAX_BUFFERED_S", "MAX_OPEN_SEGMENTS", "MAX_SEGMENT_BUFFER_S", "MAX_SEGMENT_BYTES"]

log = logging.getLogger("avatar_worker.agents")  # the name it always logged under (serve.py, tests filter on it)

MAX_SEGMENT_BUFFER_S = 60.0
"""A segment's audio waiting to be played may not exceed this: a stream that brings more is cut."""
MAX_SEGMENT_BYTES = 32 * 1024 * 1024
"""Bytes one stream may bring in all (whatever its format: 5.8 minutes at 48 kHz mono)."""
MAX_BUFFERED_S = 120.0
"""All segments' audio waiting to be played, together."""
MAX_OPEN_SEGMENTS = 8
"""Segments not yet over (buffering, playing or queued behind); a stream beyond is not read."""


class AgentsMode(AgentLink, SegmentPlayer):
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
        """Nothing to load: the audio comes from the agent."""
        return None

    def install(self, publisher: Any, messages: Any, observers: list[Any]) -> None:
        """Hook into every room (streams, RPCs) and follow the turns as an observer."""
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
        """The counts (segments, interruptions, refusals) and the agent's identity."""
        return {**self.counts, "agent_identity": self.agent_identity}

    async def close(self) -> None:
        """Cancel the stream readers, drains and the RPC sender."""
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
