"""Stall detection: inside a turn, no motion frame for ``timeout_ms`` is a stall (``docs/player.md``)."""

from __future__ import annotations

from .constants import STALL_TIMEOUT_MS

__all__ = ["StallDetector"]


class StallDetector:
    """Fires once per silent window, and only inside a turn.

    Feed it the render times of frames (:meth:`frame`), tell it when the turn ends
    (:meth:`turn_ended`), and poll :meth:`check` every tick. A silent window opens at the last
    frame; it is a stall once it lasts ``timeout_ms``, and it closes at the next frame or at the
    end of the turn. ``stalled_duration_ms`` sums the whole length of the windows that became
    stalls (measured from their last frame), like W3C's ``totalFreezesDuration``.
    """

    def __init__(self, timeout_ms: float = STALL_TIMEOUT_MS) -> None:
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)):
            raise TypeError(f"stall timeout_ms must be a number, got {type(timeout_ms).__name__}")
        if timeout_ms <= 0:
            raise ValueError(f"stall timeout_ms must be positive, got {timeout_ms}")
        self.timeout_ms = float(timeout_ms)
        self.stall_count = 0
        self.stalled_duration_ms = 0.0
        self._in_turn = False
        self._stalled = False
        self._last_frame_ms = 0.0

    @property
    def stalled(self) -> bool:
        """True from the stall until the next frame."""
        return self._stalled

    def frame(self, now_ms: float) -> None:
        """A frame was rendered: we are inside a turn, and any silent window is over."""
        self._close_window(now_ms)
        self._in_turn = True
        self._last_frame_ms = now_ms

    def turn_ended(self, now_ms: float) -> None:
        """The turn is over (END, TRANSITION_END, IDLE, disconnect): silence is normal now."""
        self._close_window(now_ms)
        self._in_turn = False

    def check(self, now_ms: float) -> bool:
        """True exactly once per silent window that lasts ``timeout_ms`` inside a turn."""
        if self._in_turn and not self._stalled and now_ms - self._last_frame_ms >= self.timeout_ms:
            self._stalled = True
            self.stall_count += 1
            return True
        return False

    def _close_window(self, now_ms: float) -> None:
        if self._stalled:
            self.stalled_duration_ms += max(0.0, now_ms - self._last_frame_ms)
            self._stalled = False

    def ongoing_stall_ms(self, now_ms: float) -> float:
        """Length of the current stall so far (0 when not stalled)."""
        return max(0.0, now_ms - self._last_frame_ms) if self._stalled else 0.0
