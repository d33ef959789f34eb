"""Turn tracking: packet flags in render order become turn-started / frame / turn-ended events.

The RTC path carries no conversation id, so the tracker makes one per turn. It is robust to lost
START and END packets: a frame outside a turn opens one, a START inside a turn closes the old one
first, and TRANSITION_END or IDLE close a turn whose END never came.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from .wire.motion import Flags

__all__ = [
    "TurnTracker",
    "TurnStarted",
    "TurnEnded",
    "Frame",
    "Transition",
    "new_conversation_id",
]


_START, _END, _IDLE = int(Flags.START), int(Flags.END), int(Flags.IDLE)
_TRANSITION, _TRANSITION_END = int(Flags.TRANSITION), int(Flags.TRANSITION_END)


def new_conversation_id() -> str:
    """``YYYYMMDDHHMMSS_`` (UTC) + 12 random URL-safe characters, as the original adapter makes."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "_" + secrets.token_urlsafe(9)


@dataclass(frozen=True, slots=True)
class TurnStarted:
    conversation_id: str


@dataclass(frozen=True, slots=True)
class Frame:
    seq: int
    message: bytes
    conversation_id: str


@dataclass(frozen=True, slots=True)
class TurnEnded:
    conversation_id: str
    reason: str
    """"end" (END frame), "transition-end", "idle", "superseded" (a new START), "disconnect"."""


@dataclass(frozen=True, slots=True)
class Transition:
    """A TRANSITION packet: blend from idle into ``message`` (may be empty)."""

    message: bytes


TurnEvent = TurnStarted | Frame | TurnEnded | Transition


class TurnTracker:
    """Turns (one utterance of the avatar each) from the flags of packets in render order: a turn
    starts at a START frame (or at a frame outside any turn) and ends at an END frame, the next
    START, a TRANSITION_END or IDLE packet, or :meth:`close` (a stall, a disconnect). Each turn
    gets a fresh conversation id."""

    def __init__(self, new_id: Callable[[], str] = new_conversation_id) -> None:
        self._new_id = new_id
        self.conversation_id: str | None = None
        self.turns = 0
        self.implicit_starts = 0
        """Turns opened by a frame without START (its START was lost or we joined mid-turn)."""

    @property
    def in_turn(self) -> bool:
        """True between a turn's first frame and its end."""
        return self.conversation_id is not None

    def frame(self, seq: int, flags: Flags, message: bytes) -> list[TurnEvent]:
        """A sequenced frame reached render time."""
        events: list[TurnEvent] = []
        bits = int(flags)  # plain int masks: IntFlag operators are slow Python-level code
        if bits & _START:
            events += self.close("superseded")
            events.append(self._open())
        elif not self.in_turn:
            self.implicit_starts += 1
            events.append(self._open())
        assert self.conversation_id is not None
        events.append(Frame(seq, message, self.conversation_id))
        if bits & _END:
            events += self.close("end")
        return events

    def control(self, flags: Flags, message: bytes = b"") -> list[TurnEvent]:
        """A TRANSITION, TRANSITION_END or IDLE packet reached its place in render order."""
        bits = int(flags)
        if bits & _TRANSITION:
            return [Transition(message)]
        if bits & _TRANSITION_END:
            return self.close("transition-end")  # the first one closes the turn; later ones are no-ops
        if bits & _IDLE:
            return self.close("idle")
        return []

    def close(self, reason: str) -> list[TurnEvent]:
        """End the current turn (if any) for ``reason``; the events to dispatch."""
        if self.conversation_id is None:
            return []
        ended = TurnEnded(self.conversation_id, reason)
        self.conversation_id = None
        return [ended]

    def _open(self) -> TurnStarted:
        self.conversation_id = self._new_id()
        self.turns += 1
        return TurnStarted(self.conversation_id)
