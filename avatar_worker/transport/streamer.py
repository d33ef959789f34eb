# Over 400 lines: one real-time loop (MotionStreamer) and the small types its callers share with it; it is timing-critical code best read in one place.
"""The real-time loop: one carrier frame (and 40 ms of audio) per deadline, forever.

While no turn is playing it sends IDLE heartbeats; a turn handed to :meth:`MotionStreamer.play`
is played tick by tick from the next deadline on. Sequence numbers are owned here, so they keep
increasing across turns.

Every packet goes on the video carrier (the :class:`MotionSink`) and, when a :class:`DataPath` is
attached, also on the data carrier (docs/wire-format.md §3b). :class:`TurnObserver` objects hear when
a turn starts, when each of its frames has left and when it ends (agent messages, republishing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from avatarplayer.wire.motion import Flags, wrap_frame

from ..audio.pcm import SILENCE
from .pacing import FrameClock, TickTime
from ..turns import TRANSITION_END_PACKET, Emission, Tick, Turn, idle_tick

__all__ = ["DataPath", "MotionSink", "MotionStreamer", "SendLog", "StreamStats", "StreamerStopping", "TurnObserver",
           "TurnResult"]

log = logging.getLogger("avatar_worker.streamer")  # the name it always logged under (serve.py, tests filter on it)

AUDIO_BACKLOG_MAX_MS = 25.0
"""Audio queued beyond this when a tick's audio is handed over means an earlier tick ran late (one
tick's 40 ms drains in 10 ms steps, so on time the queue holds at most ~10 ms then)."""


class MotionSink(Protocol):
    """Where frames go: the LiveKit publisher, or a recorder in tests."""

    def capture_video(self, frame: bytes, timestamp_us: int) -> bool:
        """Hand one encoded carrier frame to the video track; False if it was refused."""
        ...

    async def capture_audio(self, pcm: bytes) -> None:
        """Hand 40 ms of 48 kHz mono int16 PCM to the audio track."""
        ...

    def audio_backlog_ms(self) -> float:
        """Audio handed over but not sent yet (optional, with :meth:`drop_audio_backlog`)."""
        ...

    def drop_audio_backlog(self) -> None:
        """Drop the audio handed over but not sent yet."""
        ...



class DataPath(Protocol):
    """The data-packet carrier: motion packets as lossy data messages (docs/wire-format.md §3b)."""

    def send_packet(self, packet: bytes) -> bool:
        """Hand one motion packet (not a carrier frame) to the data carrier, without blocking;
        True if it went to at least one participant."""
        ...


class TurnObserver:
    """Hears about turns as the streamer plays them; the methods do nothing unless overridden.

    Called from the real-time loop: implementations must not block (schedule work instead).
    ``number`` counts the turns the streamer started, from 1.
    """

    def turn_started(self, turn: Turn, number: int) -> None:
        """The turn's first tick is about to go out."""

    def frame_sent(self, turn: Turn, number: int, frames: int) -> None:
        """The turn's ``frames``-th motion frame tick (1-based, dropped frames included) went out."""

    def turn_ended(self, turn: Turn, number: int, completed: bool) -> None:
        """The turn's last tick went out (``completed``), or it was interrupted or stopped.
        Not called after :meth:`MotionStreamer.abort`: a worker dying mid-turn tells no one."""

    def nothing_queued(self) -> None:
        """A tick is due and no turn is playing or queued: a producer whose turn is still open
        (its audio is late) queues what keeps it going now, synchronously, or an IDLE heartbeat
        goes out and ends the turn on every receiver. (Waking another task to do it is not
        enough: a streamer that fell behind sends its late ticks back to back.)"""


class SendLog:
    """JSON lines, one per emission: ``{"seq", "t_ms", "flags", "sent", "data", "kind", "tick"}``,
    plus ``"msg_len"`` and ``"msg_sha256"`` (length and hex SHA-256 of the serialized ``Message``
    the packet carries, as the renderer gets it) for ``frame`` records and the packets that copy
    one (``transition``, ``reordered``, ``duplicate``).

    ``sent``: the packet went out on the video carrier (handed to WebRTC); ``data``: it went out
    on the data carrier too (handed to the SDK for at least one participant). Other components add
    records of their own kinds (``data-message``, ``republish``), all with ``kind`` and ``t_ms``.
    ``t_ms`` is ``time.time() * 1000`` at capture, so tests can line it up with receive times
    measured in another process on the same host. Flushed once a second (every 25 records), so
    a test or benchmark can follow it live (e.g. wait until the turn has started).
    """

    FLUSH_EVERY = 25

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = self.path.open("w", encoding="utf-8", buffering=1 << 16)
        self._unflushed = 0

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._unflushed += 1
            if self._unflushed >= self.FLUSH_EVERY:
                self._file.flush()
                self._unflushed = 0

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class StreamStats:
    """Counters for the exit summary."""

    ticks: int = 0
    frames_sent: int = 0
    """Sequenced motion frames captured (including reordered ones, excluding extras)."""
    idle_sent: int = 0
    control_sent: int = 0
    """TRANSITION and TRANSITION_END packets."""
    duplicates_sent: int = 0
    bad_sent: int = 0
    dropped_by_injection: int = 0
    refused: int = 0
    """Frames the native video source did not accept while the track was published."""
    offline: int = 0
    """Packets not sent because the track was not published: joining, or rejoining (the server
    closes an empty room every ``empty_timeout`` seconds, and the worker comes back)."""
    audio_realigned: int = 0
    """Times queued silence was dropped to keep the audio with its motion."""
    data_sent: int = 0
    """Packets handed to the data carrier (counted once, however many participants get them)."""
    late: int = 0
    resyncs: int = 0
    max_late_ms: float = 0.0
    turns_started: int = 0
    turns_completed: int = 0
    turns_interrupted: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["max_late_ms"] = round(self.max_late_ms, 2)
        return d


@dataclass(frozen=True, slots=True)
class TurnResult:
    """How a turn went: ``completed`` is False when it was interrupted or the worker stopped."""

    label: str
    first_seq: int
    frames: int
    completed: bool
    started_at: float
    ended_at: float


_COUNTERS = {
    "frame": "frames_sent",
    "reordered": "frames_sent",
    "idle": "idle_sent",
    "transition": "control_sent",
    "transition_end": "control_sent",
    "duplicate": "duplicates_sent",
    "bad": "bad_sent",
}


@dataclass
class _Playing:
    turn: Turn
    future: asyncio.Future[TurnResult]
    started_at: float
    position: int = 0
    closed: bool = False
    """Its TRANSITION_END has gone out."""
    abort_after: bool = False
    finished: bool = False
    number: int = 0
    """1-based count of the turns started, 0 until this one starts."""
    frames_played: int = 0


class StreamerStopping(RuntimeError):
    """:meth:`MotionStreamer.play` after :meth:`MotionStreamer.stop`: the worker is winding down,
    and a driver that wanted one more turn simply ends."""


class MotionStreamer:
    """Paces ticks on a :class:`FrameClock` and feeds them to a :class:`MotionSink`."""

    def __init__(
        self,
        sink: MotionSink,
        *,
        clock: FrameClock | None = None,
        send_log: SendLog | None = None,
        wall_clock: Callable[[], float] = time.time,
        first_seq: int = 0,
        data_path: DataPath | None = None,
        observers: Sequence[TurnObserver] = (),
    ) -> None:
        self.sink = sink
        self.clock = clock or FrameClock()
        self.send_log = send_log
        self.data_path = data_path
        self.observers: list[TurnObserver] = list(observers)
        self.stats = StreamStats()
        self._wall = wall_clock
        self._next_seq = first_seq
        self._queue: deque[_Playing] = deque()
        self._playing: _Playing | None = None
        self._ended: list[tuple[_Playing, bool]] = []
        """Finished turns whose observers have not heard it yet (told after the tick is sent)."""
        self._owe_transition_end = False
        self._stopping = False
        self._aborted = False
        self._running = False

    # -------------------------------------------------------------------- control (any task)

    @property
    def next_seq(self) -> int:
        """The sequence number the next planned turn must start with."""
        return self._next_seq

    @property
    def busy(self) -> bool:
        """True while a turn is playing or queued."""
        return self._playing is not None or bool(self._queue)

    def play(self, turn: Turn, *, abort_after: bool = False) -> asyncio.Future[TurnResult]:
        """Queue ``turn`` (planned from :attr:`next_seq`); the future resolves when it ends.

        ``abort_after`` stops the stream right after the turn's last tick, with nothing sent in
        between (with :meth:`Turn.truncated`: a worker that dies mid-turn).
        """
        if turn.first_seq != self._next_seq:
            raise ValueError(f"turn starts at seq {turn.first_seq}, expected {self._next_seq}")
        if self._stopping:
            raise StreamerStopping("the streamer is stopping")
        self._next_seq = turn.next_seq
        future: asyncio.Future[TurnResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Playing(turn, future, 0.0, abort_after=abort_after))
        return future

    def interrupt(self) -> None:
        """Drop the playing and queued turns; a TRANSITION_END goes out on the next tick."""
        for playing in [*([self._playing] if self._playing else []), *self._queue]:
            self._finish(playing, completed=False)
        self._queue.clear()

    def stop(self) -> None:
        """Finish gracefully: an unfinished turn is closed with TRANSITION_END, then run() returns."""
        self._stopping = True

    def abort(self) -> None:
        """Stop at once, without closing an unfinished turn (a worker dying mid-turn)."""
        self._stopping = True
        self._aborted = True

    # ----------------------------------------------------------------------------- the loop

    async def run(self) -> StreamStats:
        """Send a carrier frame on every deadline until :meth:`stop` or :meth:`abort`."""
        if self._running:
            raise RuntimeError("MotionStreamer.run() is already running")
        self._running = True
        try:
            if not self.clock.started:
                self.clock.start()
            while True:
                if self._stopping:
                    if self._aborted:
                        self._fail_all()
                        break
                    self.interrupt()
                    if not self._owe_transition_end:
                        break
                tick_time = await self.clock.tick()
                if self._aborted:
                    self._fail_all()
                    break
                tick, playing = self._next_tick()
                await self._send(tick, tick_time)
                self._after_tick(tick, playing)
        finally:
            self._notify_ended()
            self._running = False
            self.stats.late = self.clock.late
            self.stats.resyncs = self.clock.resyncs
            self.stats.max_late_ms = self.clock.max_lateness * 1000
            if self.send_log is not None:
                self.send_log.flush()
        return self.stats

    def _fail_all(self) -> None:
        for playing in [*([self._playing] if self._playing else []), *self._queue]:
            self._finish(playing, completed=False)
        self._queue.clear()
        self._owe_transition_end = False

    def _next_tick(self) -> tuple[Tick, _Playing | None]:
        """The tick to send now, and the turn it belongs to (None: a heartbeat or a closing
        TRANSITION_END of an interrupted turn)."""
        if self._owe_transition_end and self._playing is None:
            # close an interrupted turn before anything else, even a turn queued right after
            self._owe_transition_end = False
            return Tick((Emission(TRANSITION_END_PACKET, "transition_end", int(Flags.TRANSITION_END)),)), None
        if self._playing is None and not self._queue:
            for observer in self.observers:
                self._tell(observer.nothing_queued)
        if self._playing is None and self._queue:
            self._start(self._queue.popleft())
        playing = self._playing
        if playing is not None:
            tick = playing.turn.ticks[playing.position]
            playing.position += 1
            playing.closed = playing.closed or any(e.kind == "transition_end" for e in tick.emissions)
            if playing.position >= len(playing.turn.ticks):
                self._finish(playing, completed=True)
            return tick, playing
        return idle_tick(), None

    def _start(self, playing: _Playing) -> None:
        self._playing = playing
        playing.started_at = self._wall()
        self.stats.turns_started += 1
        playing.number = self.stats.turns_started
        for observer in self.observers:
            self._tell(observer.turn_started, playing.turn, playing.number)

    def _after_tick(self, tick: Tick, playing: _Playing | None) -> None:
        """Tell the observers about a frame that went out and about turns that ended."""
        if playing is not None and any(e.kind in ("frame", "reordered") for e in tick.emissions):
            playing.frames_played += 1
            for observer in self.observers:
                self._tell(observer.frame_sent, playing.turn, playing.number, playing.frames_played)
        self._notify_ended()

    def _notify_ended(self) -> None:
        ended, self._ended = self._ended, []
        if self._aborted:
            return
        for playing, completed in ended:
            for observer in self.observers:
                self._tell(observer.turn_ended, playing.turn, playing.number, completed)

    @staticmethod
    def _tell(method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except Exception:  # an observer's bug must not stop the motion clock
            log.exception("turn observer %r failed", method)

    def _finish(self, playing: _Playing, *, completed: bool) -> None:
        if playing is self._playing:
            self._playing = None
        if playing.finished:
            return
        playing.finished = True
        if playing.number:
            self._ended.append((playing, completed))
        ended = self._wall()
        if completed:
            self.stats.turns_completed += 1
            if playing.abort_after:
                self.abort()
        else:
            self.stats.turns_interrupted += 1
            # A receiver that saw part of a turn must be told it is over, or it reports a stall.
            if playing.position > 0 and not playing.closed:
                self._owe_transition_end = True
        if not playing.future.done():  # the caller may have stopped waiting (cancelled)
            playing.future.set_result(TurnResult(
                playing.turn.label, playing.turn.first_seq, playing.turn.frames, completed,
                playing.started_at or ended, ended))

    async def _send(self, tick: Tick, when: TickTime) -> None:
        self.stats.ticks += 1
        emissions = sorted(tick.emissions, key=lambda e: e.offset)
        for emission in emissions:
            if emission.offset <= 0:
                self._emit(emission, when)
        await self._audio(tick)  # the same 40 ms of audio leaves right after its motion frame
        for emission in emissions:
            if emission.offset > 0:
                await self.clock.sleep_until(when.deadline + emission.offset)
                self._emit(emission, when)

    async def _audio(self, tick: Tick) -> None:
        if tick.audio is None:
            self._keep_audio_with_motion()
        try:
            await self.sink.capture_audio(tick.audio or SILENCE)
        except Exception:  # a hiccup of the audio path must not stop the motion clock
            log.exception("audio capture failed")

    def _keep_audio_with_motion(self) -> None:
        """Receivers match audio to motion by when their packets arrive (avatarplayer/sync.py), so
        both must leave together. The audio source sends what it was handed in real time: a tick
        that ran late (a busy host) leaves its queue fuller for good, and the audio trails its
        motion by that much from then on. On a silent tick the queue holds only silence: drop it."""
        backlog = getattr(self.sink, "audio_backlog_ms", None)
        if backlog is None:
            return
        try:
            behind = backlog()
            if behind > AUDIO_BACKLOG_MAX_MS:
                self.sink.drop_audio_backlog()
                self.stats.audio_realigned += 1
                log.info("audio %.0f ms behind its motion: dropped the queued silence", behind)
        except Exception:
            log.exception("checking the audio backlog failed")

    def _emit(self, emission: Emission, when: TickTime) -> None:
        t_ms = self._wall() * 1000
        accepted = False
        on_data = False
        if emission.sent:
            # Capture times are on time.monotonic, the clock WebRTC stamps audio with on Linux
            # (CLOCK_MONOTONIC), and taken from the deadline rather than the wake-up, so RTP
            # timestamps advance by exactly 40 ms and lip sync in the browser stays exact.
            timestamp_us = int((when.deadline + emission.offset) * 1_000_000)
            try:
                accepted = self.sink.capture_video(wrap_frame(emission.packet), timestamp_us)
            except Exception:
                log.exception("video capture failed")
            if accepted:
                counter = _COUNTERS.get(emission.kind)
                if counter:
                    setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            elif getattr(self.sink, "live", True):
                self.stats.refused += 1
            else:
                self.stats.offline += 1
            on_data = self._send_data(emission)
        else:
            self.stats.dropped_by_injection += 1
        if self.send_log is not None:
            record = {
                "seq": emission.seq,
                "t_ms": round(t_ms, 3),
                "flags": emission.flags,
                "sent": emission.sent and accepted,
                "data": on_data,
                "kind": emission.kind,
                "tick": when.index,
            }
            if emission.msg_sha256 is not None:
                record["msg_len"] = emission.msg_len
                record["msg_sha256"] = emission.msg_sha256
            self.send_log.write(record)

    def _send_data(self, emission: Emission) -> bool:
        """The packet on the data carrier too, if one is attached (queued: never blocks)."""
        if self.data_path is None:
            return False
        try:
            on_data = self.data_path.send_packet(emission.data_bytes)
        except Exception:
            log.exception("data carrier send failed")
            return False
        if on_data:
            self.stats.data_sent += 1
        return on_data
