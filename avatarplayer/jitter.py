"""The motion jitter buffer: sequenced frames in, one frame per 40 ms tick out (``docs/player.md``).

The buffer knows nothing about clocks, sockets or the browser: arrival and tick times are passed
in as milliseconds, so tests can simulate hours of traffic in milliseconds of CPU.

Rules, in the order they apply:

* Playback starts once :data:`~avatarplayer.constants.JITTER_START_FRAMES` frames are buffered
  (or the oldest one has waited ``max_buffer_delay_ms``, so a lone frame is not held forever).
  It starts at the lowest buffered seq: frames before it were never expected.
* On arrival, drop ``seq <= last rendered`` (stale), ``seq`` given up on earlier (late), and
  duplicates. Hold at most :data:`~avatarplayer.constants.JITTER_MAX_FRAMES`; overflow evicts the
  oldest.
* Each tick renders ``next_expected`` if present. Otherwise, once a later frame has waited
  ``max_buffer_delay_ms``, skip the gap and render it. Otherwise the buffer is starved.
* A rendered END frame (or :meth:`end_stream` and a drained buffer) returns the buffer to waiting
  for the next turn, so silence between turns is not counted as starvation.
* A START whose seq is below what was already rendered means the producer restarted: reset.
* Frames recovered from REDUNDANT packets fill gaps that have not been skipped yet.

Following the audio (``tick(now, offset)``, see :mod:`avatarplayer.sync`): a frame with a media
time is due at ``media_ms + offset``, when its audio is heard, and never renders before. Playback
starts when the first buffered frame is due (not after ``JITTER_START_FRAMES``); a gap is still
given up once a later frame has waited ``max_buffer_delay_ms`` since it *arrived*, so the option
keeps its meaning. A frame due more than half a tick ago while the one before it renders is
rendered in the same tick (:meth:`JitterBuffer.overdue`): after a hold, the face catches up with
the voice instead of staying behind.

With the buffer disabled, frames render on arrival, in order, dropping stale ones.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from .constants import FRAME_INTERVAL_MS, JITTER_MAX_FRAMES, JITTER_START_FRAMES, MAX_BUFFER_DELAY_MS

__all__ = ["JitterBuffer", "JitterCounters", "PushResult"]

T = TypeVar("T")

_DUPLICATE_START_WINDOW_MS = 1000
"""A START with the seq of the last START, arriving within this window, is a duplicate."""

_RESYNC_AFTER_STALE = 12
"""This many stale arrivals in a row mean the producer restarted without a START we saw."""

_REMEMBER_SKIPPED = 256
"""How many skipped seqs are remembered to tell a late frame from a stale one."""

DUE_TOLERANCE_MS = 4.0
"""A frame due this little after the tick is rendered at it (timers fire a little early)."""


class PushResult(enum.Enum):
    """What :meth:`JitterBuffer.push` did with a frame."""

    ACCEPTED = "accepted"
    RECOVERED = "recovered"
    """A frame from a REDUNDANT packet that filled a gap."""
    NOT_NEEDED = "not-needed"
    """A frame from a REDUNDANT packet that was already there (not counted as received)."""
    STALE = "stale"
    LATE = "late"
    DUPLICATE = "duplicate"


@dataclass(slots=True)
class JitterCounters:
    """What the buffer did. ``received == rendered + dropped + buffered`` at all times."""

    received: int = 0
    rendered: int = 0
    dropped_late: int = 0
    dropped_stale: int = 0
    dropped_duplicate: int = 0
    dropped_overflow: int = 0
    dropped_flushed: int = 0
    """Frames still buffered when the stream was reset (restart, disconnect)."""
    skipped: int = 0
    """Missing seqs given up on (never received before their turn came)."""
    recovered: int = 0
    out_of_order: int = 0
    held: int = 0
    """Rendered frames that waited for their audio (they arrived before it was heard)."""
    caught_up: int = 0
    """Frames rendered in the same tick as the one before them, to catch up with the audio."""
    starved_ticks: int = 0
    restarts: int = 0
    delay_ms_total: float = 0.0
    """Sum over rendered frames of (render time - arrival time)."""

    @property
    def dropped(self) -> int:
        """Frames dropped for any reason (late, stale, duplicate, overflow, flushed)."""
        return (self.dropped_late + self.dropped_stale + self.dropped_duplicate
                + self.dropped_overflow + self.dropped_flushed)


@dataclass(slots=True)
class _Slot(Generic[T]):
    frame: T
    arrival_ms: float
    end: bool
    media_ms: float | None = None
    """The frame's place on the sender's clock (its RTP timestamp in ms), when known."""
    held: bool = False

    def due(self, offset: float | None) -> float | None:
        """When its audio is heard (None: no media time, or not following the audio)."""
        return None if offset is None or self.media_ms is None else self.media_ms + offset


class JitterBuffer(Generic[T]):
    """Reorders and paces sequenced frames; see the module docstring for the rules.

    ``frame`` values are opaque to the buffer (the player stores the Message bytes and flags).
    """

    def __init__(
        self,
        max_buffer_delay_ms: float = MAX_BUFFER_DELAY_MS,
        *,
        enabled: bool = True,
        start_frames: int = JITTER_START_FRAMES,
        max_frames: int = JITTER_MAX_FRAMES,
    ) -> None:
        if isinstance(max_buffer_delay_ms, bool) or not isinstance(max_buffer_delay_ms, (int, float)):
            raise TypeError(f"max_buffer_delay_ms must be a number, got {type(max_buffer_delay_ms).__name__}")
        if not 0 <= max_buffer_delay_ms <= 10_000:
            raise ValueError(f"max_buffer_delay_ms must be within 0..10000 ms, got {max_buffer_delay_ms}")
        if not 1 <= start_frames <= max_frames:
            raise ValueError(f"need 1 <= start_frames <= max_frames, got {start_frames}, {max_frames}")
        self.max_buffer_delay_ms = float(max_buffer_delay_ms)
        self.enabled = enabled
        self.start_frames = start_frames
        self.max_frames = max_frames
        self.counters = JitterCounters()
        self._slots: dict[int, _Slot[T]] = {}
        self._ready: deque[tuple[int, _Slot[T]]] = deque()  # disabled mode: accepted, not yet taken
        self._skipped: deque[int] = deque(maxlen=_REMEMBER_SKIPPED)
        self._clear_stream()

    # ----------------------------------------------------------------------------- state

    def _clear_stream(self) -> None:
        self.counters.dropped_flushed += len(self._slots) + len(self._ready)
        self._slots.clear()
        self._ready.clear()
        self._skipped.clear()
        self._next: int | None = None
        self._last_rendered: int | None = None
        self._last_media_ms: float | None = None
        self._highest: int | None = None
        self._playing = False
        self._ending = False
        self._last_start: tuple[int, float] | None = None
        self._stale_streak = 0

    def reset(self) -> None:
        """Forget the stream (buffered frames count as dropped); counters are kept."""
        self._clear_stream()

    @property
    def buffered(self) -> int:
        """Frames waiting to be rendered."""
        return len(self._slots) + len(self._ready)

    @property
    def buffered_seqs(self) -> list[int]:
        """Their sequence numbers, in render order."""
        return sorted(self._slots) if self.enabled else [seq for seq, _ in self._ready]

    @property
    def last_rendered(self) -> int | None:
        """The sequence number of the last frame released, if any."""
        return self._last_rendered

    @property
    def last_media_ms(self) -> float | None:
        """The media time of the frame rendered last (None if it had none)."""
        return self._last_media_ms

    @property
    def next_expected(self) -> int | None:
        """The sequence number the next release waits for (``None`` before the first frame)."""
        return self._next

    @property
    def playing(self) -> bool:
        """True between the start of playback and the end of the stream (starved ticks count)."""
        return self._playing

    # ------------------------------------------------------------------------------ push

    def push(
        self,
        seq: int,
        frame: T,
        now_ms: float,
        *,
        start: bool = False,
        end: bool = False,
        recovered: bool = False,
        media_ms: float | None = None,
    ) -> PushResult:
        """Offer one frame that arrived at ``now_ms``. ``start``/``end`` mirror the packet flags;
        ``recovered`` marks a copy taken from a REDUNDANT packet; ``media_ms`` is the frame's
        time on the sender's clock (for :meth:`tick` with an offset)."""
        if recovered:
            return self._push_recovered(seq, frame, now_ms, end, media_ms)
        self.counters.received += 1
        if start and self._is_restart(seq, now_ms):
            self._restart()
        if start:
            self._last_start = (seq, now_ms)

        # next_expected is always above the last rendered seq once set, so this covers stale too
        if self._next is not None and seq < self._next:
            self._stale_streak += 1
            if self._stale_streak >= _RESYNC_AFTER_STALE:
                self._restart()  # the producer restarted and its START was lost
            else:
                return self._drop_old(seq)
        elif seq in self._slots or any(s == seq for s, _ in self._ready):
            self.counters.dropped_duplicate += 1
            return PushResult.DUPLICATE
        self._stale_streak = 0

        if self._highest is not None and seq < self._highest:
            self.counters.out_of_order += 1
        self._highest = seq if self._highest is None else max(self._highest, seq)
        slot = _Slot(frame, now_ms, end, media_ms)
        if not self.enabled:
            self._ready.append((seq, slot))
            self._last_rendered = seq  # order is decided now: anything lower is stale from here on
            self._next = seq + 1
            return PushResult.ACCEPTED
        self._slots[seq] = slot
        self._evict_overflow()
        return PushResult.ACCEPTED

    def _push_recovered(self, seq: int, frame: T, now_ms: float, end: bool, media_ms: float | None) -> PushResult:
        fillable = (
            self.enabled
            and (self._next is None or seq >= self._next)
            and seq not in self._slots
            and self._highest is not None
            and seq < self._highest
        )
        if not fillable:
            return PushResult.NOT_NEEDED
        self.counters.received += 1
        self.counters.recovered += 1
        self._slots[seq] = _Slot(frame, now_ms, end, media_ms)
        self._evict_overflow()
        return PushResult.RECOVERED

    def _is_restart(self, seq: int, now_ms: float) -> bool:
        if self._last_rendered is None or seq > self._last_rendered or seq in self._skipped:
            return False
        if self._last_start is not None:
            last_seq, last_at = self._last_start
            if seq == last_seq and now_ms - last_at < _DUPLICATE_START_WINDOW_MS:
                return False  # a duplicate of the START we already have
        return True

    def _restart(self) -> None:
        self._clear_stream()
        self.counters.restarts += 1

    def refuse(self) -> PushResult:
        """A frame the caller knows is too old to play (it belongs to a turn already over): counted
        as received and dropped as stale, so the counters still add up."""
        self.counters.received += 1
        self.counters.dropped_stale += 1
        return PushResult.STALE

    def _drop_old(self, seq: int) -> PushResult:
        if seq in self._skipped:
            self.counters.dropped_late += 1
            return PushResult.LATE
        self.counters.dropped_stale += 1
        return PushResult.STALE

    def _evict_overflow(self) -> None:
        while len(self._slots) > self.max_frames:
            oldest = min(self._slots)
            del self._slots[oldest]
            self.counters.dropped_overflow += 1
            if self._playing and self._next is not None and oldest >= self._next:
                self._skip_to(oldest)  # the gap before the evicted frame is given up too
                self._next = oldest + 1
            self._skipped.append(oldest)

    def _skip_to(self, seq: int) -> None:
        """Give up on every seq from next_expected up to ``seq`` (exclusive)."""
        assert self._next is not None
        self.counters.skipped += seq - self._next
        self._skipped.extend(range(max(self._next, seq - _REMEMBER_SKIPPED), seq))
        self._next = seq

    # ------------------------------------------------------------------------------ tick

    def end_stream(self) -> None:
        """The producer says the stream went idle: once drained, wait for the next turn."""
        if not self._slots:
            self._playing = False
        else:
            self._ending = True

    def tick(self, now_ms: float, offset: float | None = None) -> T | None:
        """The frame to render at this tick, or None (waiting, held for its audio, or starved).
        ``offset``: follow the audio, a frame being due at ``media_ms + offset`` (module docs)."""
        if not self.enabled:
            if not self._ready:
                return None
            seq, slot = self._ready.popleft()
            return self._render(seq, slot, now_ms)

        if not self._playing:
            if not self._slots:
                return None
            first = self._slots[min(self._slots)]
            if _not_due(first, offset, now_ms):
                first.held = True
                return None
            if offset is None or first.media_ms is None:
                oldest_wait = now_ms - min(s.arrival_ms for s in self._slots.values())
                if len(self._slots) < self.start_frames and oldest_wait < self.max_buffer_delay_ms:
                    return None
            self._playing = True
            self._next = min(self._slots)  # frames before the first buffered one were never expected

        assert self._next is not None
        slot = self._slots.get(self._next)
        if slot is None:
            if not self._slots:
                if self._ending:
                    self._playing = self._ending = False
                else:
                    self.counters.starved_ticks += 1
                return None
            if now_ms - min(s.arrival_ms for s in self._slots.values()) < self.max_buffer_delay_ms:
                self.counters.starved_ticks += 1
                return None
            self._skip_to(min(self._slots))
            slot = self._slots[self._next]
        if _not_due(slot, offset, now_ms):
            slot.held = True
            return None
        due = slot.due(offset)
        slot.held = slot.held or (due is not None and due > slot.arrival_ms + DUE_TOLERANCE_MS)
        del self._slots[self._next]
        seq = self._next
        self._next = seq + 1
        if slot.end or (self._ending and not self._slots):
            self._playing = self._ending = False
        return self._render(seq, slot, now_ms)

    def overdue(self, now_ms: float, offset: float | None) -> bool:
        """Following the audio, the next frame is here and was due half a tick ago or more: the
        face is behind the voice (after a hold) and should catch up in this tick."""
        if offset is None or not self._playing or self._next is None:
            return False
        slot = self._slots.get(self._next)
        due = None if slot is None else slot.due(offset)
        return due is not None and due <= now_ms - FRAME_INTERVAL_MS / 2

    def next_due(self, offset: float | None) -> float | None:
        """When the next frame is due (following the audio), if it is here and has a media time."""
        if offset is None or self._next is None and not self._slots:
            return None
        seq = self._next if self._playing and self._next is not None else min(self._slots, default=None)
        slot = self._slots.get(seq) if seq is not None else None
        return None if slot is None else slot.due(offset)

    def _render(self, seq: int, slot: _Slot[T], now_ms: float) -> T:
        self._last_rendered = seq if self.enabled else self._last_rendered
        self._last_media_ms = slot.media_ms
        self.counters.rendered += 1
        self.counters.held += slot.held
        self.counters.delay_ms_total += max(0.0, now_ms - slot.arrival_ms)
        return slot.frame


def _not_due(slot: _Slot, offset: float | None, now_ms: float) -> bool:
    due = slot.due(offset)
    return due is not None and due > now_ms + DUE_TOLERANCE_MS
