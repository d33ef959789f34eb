"""Captions on the face's clock: transcript chunks held until the frame they are spoken at renders.

The avatar worker sends its own sentences word by word, a little ahead of time, each tagged with
``seq``, the sequence number of the first motion frame whose audio starts at or after the word's
first sound, and ``turn_seq``, the sequence number of its turn's first frame
(docs/wire-format.md §5). The player releases such a chunk right after the renderer was handed the
frame ``seq`` (or a later one: a lost frame does not hold its word back), so a caption never shows
before the face says it. A chunk without timing is released on arrival, as before.

A turn that ends (END, TRANSITION_END, IDLE, a new START, a disconnect) before some of its words'
frames rendered was cut short (barge-in): those words were never said, so they are **discarded**;
a held ``final`` chunk is released with empty text (unless the turn's final chunk already went
out), so the app's transcript line still closes. A chunk that arrives after its turn ended is
treated the same way, and one whose frame has already rendered is released at once (late, never
early).

Safety valves for what the player cannot trust: a chunk held longer than :data:`MAX_HOLD_MS` (its
frames never came: the motion stopped, or ``seq`` is far off) is released anyway, and at most
:data:`MAX_HELD` chunks wait (the oldest goes out first). Timing fields that do not parse are
counted by :mod:`avatarplayer.wire.datamsg` and the chunk is treated as untimed.

Pure Python: runs under CPython and Pyodide.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from .constants import STALL_TIMEOUT_MS
from .wire.datamsg import TranscriptChunk

__all__ = ["CaptionClock", "MAX_HELD", "MAX_HOLD_MS"]

MAX_HOLD_MS = STALL_TIMEOUT_MS + 1000.0
"""The longest a timed chunk waits for its frame (the audio's delay is at most 1.5 s, the worker
sends about half a second ahead)."""

MAX_HELD = 256
"""Timed chunks that may wait at once."""

_ENDED_KEPT = 8
"""Ended turns remembered, to recognise a chunk of one of them that arrives late."""


def _diff(a: int, b: int) -> int:
    """``a - b`` for u32 sequence numbers that may wrap: within ±2**31."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d


@dataclass(slots=True)
class _Held:
    chunk: TranscriptChunk
    seq: int
    turn_seq: int
    since_ms: float


class CaptionClock:
    """Holds timed transcript chunks until their frame renders.

    Each method returns the chunks to emit now, in order. Feed it, in render order:
    :meth:`offer` for every transcript chunk, :meth:`rendered` after each frame is handed to the
    renderer, :meth:`turn_ended` when a turn ends, :meth:`expire` on every tick.
    """

    def __init__(self, *, max_hold_ms: float = MAX_HOLD_MS, max_held: int = MAX_HELD) -> None:
        self.max_hold_ms = max_hold_ms
        self.max_held = max_held
        self.reset()

    def reset(self) -> None:
        """A new session: nothing held, no frame rendered; the counters restart."""
        self._held: list[_Held] = []
        self._last: int | None = None
        self._turn_open = False
        self._ended: deque[int] = deque(maxlen=_ENDED_KEPT)
        """The last rendered seq of each recently ended turn, oldest first."""
        self._finished: deque[int] = deque(maxlen=_ENDED_KEPT)
        """``turn_seq`` of the recent turns whose final chunk went out."""
        self.held = 0
        """Timed chunks that waited for their frame."""
        self.released_late = 0
        """Timed chunks whose frame had already rendered when they arrived (released at once)."""
        self.discarded = 0
        """Timed chunks of a turn that ended before their frame rendered (never said)."""
        self.expired = 0
        """Timed chunks released after :data:`MAX_HOLD_MS` or to make room, without their frame."""
        self.timing_invalid = 0
        """Chunks whose timing fields did not parse (released on arrival, untimed)."""

    @property
    def waiting(self) -> int:
        """Chunks held now."""
        return len(self._held)

    # ------------------------------------------------------------------------------ input

    def offer(self, chunk: TranscriptChunk, now_ms: float) -> list[TranscriptChunk]:
        """A transcript chunk arrived: returned at once unless it waits for its frame."""
        seq = chunk.seq
        if seq is None:
            if chunk.timing_error is not None:
                self.timing_invalid += 1
            return [chunk]
        turn_seq = chunk.turn_seq if chunk.turn_seq is not None else seq
        if turn_seq in self._finished:
            self.discarded += 1  # its turn's transcript was closed already
            return []
        ended = self._ended_turn_of(turn_seq)
        if ended is not None and _diff(seq, ended) > 0:
            self.discarded += 1  # its turn ended before this frame rendered
            return self._closing(chunk, turn_seq)
        if self._last is not None and _diff(seq, self._last) <= 0 and _diff(turn_seq, self._last) <= 0:
            self.released_late += 1
            return self._out([_Held(chunk, seq, turn_seq, now_ms)])
        self.held += 1
        self._held.append(_Held(chunk, seq, turn_seq, now_ms))
        if len(self._held) > self.max_held:
            self.expired += 1
            return self._out([self._held.pop(0)])
        return []

    def rendered(self, seq: int) -> list[TranscriptChunk]:
        """Frame ``seq`` was handed to the renderer: the chunks spoken at it or before it."""
        self._last = seq
        self._turn_open = True
        if not self._held:
            return []
        due = [h for h in self._held if _diff(h.seq, seq) <= 0 and _diff(h.turn_seq, seq) <= 0]
        if not due:
            return []
        self._held = [h for h in self._held if not (_diff(h.seq, seq) <= 0 and _diff(h.turn_seq, seq) <= 0)]
        due.sort(key=lambda h: _diff(h.seq, seq))
        return self._out(due)

    def turn_ended(self) -> list[TranscriptChunk]:
        """The turn being rendered ended: its words still held were never said (discarded; a
        ``final`` one is released with empty text)."""
        last = self._last
        if last is None or not self._turn_open:
            return []
        self._turn_open = False
        self._ended.append(last)
        out: list[TranscriptChunk] = []
        keep: list[_Held] = []
        for h in self._held:
            if _diff(h.turn_seq, last) <= 0:
                self.discarded += 1
                out += self._closing(h.chunk, h.turn_seq)
            else:
                keep.append(h)
        self._held = keep
        return out

    def expire(self, now_ms: float) -> list[TranscriptChunk]:
        """Chunks held longer than ``max_hold_ms``: released without their frame."""
        if not self._held:
            return []
        old = [h for h in self._held if now_ms - h.since_ms > self.max_hold_ms]
        if not old:
            return []
        self._held = [h for h in self._held if now_ms - h.since_ms <= self.max_hold_ms]
        self.expired += len(old)
        return self._out(old)

    # ---------------------------------------------------------------------------- helpers

    def _out(self, held: list[_Held]) -> list[TranscriptChunk]:
        for h in held:
            if h.chunk.final:
                self._finished.append(h.turn_seq)
        return [h.chunk for h in held]

    def _closing(self, chunk: TranscriptChunk, turn_seq: int) -> list[TranscriptChunk]:
        """A dropped chunk: nothing, or for a final one an empty final (once per turn), so the
        app's transcript line still closes."""
        if not chunk.final or turn_seq in self._finished:
            return []
        self._finished.append(turn_seq)
        return [replace(chunk, text="")]

    def _ended_turn_of(self, turn_seq: int) -> int | None:
        """The last rendered seq of the ended turn that ``turn_seq`` belongs to, if it ended."""
        previous: int | None = None
        for last in self._ended:
            if _diff(turn_seq, last) <= 0 and (previous is None or _diff(turn_seq, previous) > 0):
                return last
            previous = last
        return None
