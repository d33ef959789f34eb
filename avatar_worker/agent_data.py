"""Agent data messages around each turn (``--agent-data``), the way a voice agent reports itself.

Reliable JSON data messages (UTF-8) to everyone, on topic ``avatarplayer.agent``:

- ``{"type": "agent_status", "data": {"status": "speaking"}}`` as a turn's first tick goes out;
- ``{"type": "transcript_chunk", "data": {"role": "agent", "text": ..., "turn": n, "final": b}}``
  while it plays: the turn's text in up to :data:`CHUNKS` pieces at word boundaries (joined
  with ``""`` they give the text back), piece ``k`` of ``m`` with the turn's frame
  ``k * frames // m + 1``, so each piece goes out as its share of the speech starts, and the last
  one has ``final: true``. A turn without known text (scripted mode, a WAV file) has one piece,
  ``"turn <n>"``. An interrupted turn's unsent pieces are dropped and an empty final piece
  closes the transcript;
- ``{"type": "agent_status", "data": {"status": "listening"}}`` once the turn is over.

``n`` counts the turns the worker started, from 1. Every message is also logged in the send log
(``{"kind": "data-message", ...}``, see :class:`avatar_worker.transport.messaging.MessageSender`). Demo
mode (:mod:`avatar_worker.modes.demo`) adds ``thinking`` and the user's side of the transcript
(:func:`user_transcript_chunk`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from avatarplayer.wire.datamsg import AGENT_TOPIC

from .transport.messaging import MessageSender
from .transport.streamer import TurnObserver
from .turns import Turn

__all__ = [
    "AGENT_TOPIC",
    "CHUNKS",
    "AgentMessages",
    "agent_status",
    "chunk_due",
    "split_transcript",
    "transcript_chunk",
    "user_transcript_chunk",
]

CHUNKS = 3
"""Transcript pieces per turn with known text (fewer for short texts)."""

_WORD = re.compile(r"\S+\s*")


def agent_status(status: str) -> dict[str, Any]:
    """An ``agent_status`` message (``speaking``, ``listening``, or ``thinking`` in demo mode)."""
    return {"type": "agent_status", "data": {"status": status}}


def transcript_chunk(text: str, turn: int, final: bool) -> dict[str, Any]:
    """A ``transcript_chunk`` message spoken by the agent."""
    return {"type": "transcript_chunk", "data": {"role": "agent", "text": text, "turn": turn, "final": final}}


def user_transcript_chunk(text: str, utterance: int, final: bool = True) -> dict[str, Any]:
    """A ``transcript_chunk`` message for what a user said (demo mode: ``utterance`` counts the
    answered utterances from 1)."""
    return {"type": "transcript_chunk", "data": {"role": "user", "text": text, "utterance": utterance,
                                                 "final": final}}


def split_transcript(text: str, parts: int = CHUNKS) -> list[str]:
    """``text`` in at most ``parts`` pieces of about as many words each, cut after the spaces
    that follow a word; ``"".join(pieces) == text``. Never empty: ``""`` gives ``[""]``."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    leading = text[: len(text) - len(text.lstrip())]
    words = _WORD.findall(text[len(leading):])
    if not words:
        return [text]
    words[0] = leading + words[0]
    parts = min(parts, len(words))
    bounds = [k * len(words) // parts for k in range(parts + 1)]
    return ["".join(words[bounds[k]:bounds[k + 1]]) for k in range(parts)]


def chunk_due(frames: int, parts: int) -> list[int]:
    """The 1-based frame count of a ``frames``-frame turn at which each of ``parts`` pieces is due."""
    return [k * frames // parts + 1 for k in range(parts)]


@dataclass
class _Transcript:
    number: int
    pieces: list[str]
    due: list[int]
    sent: int = 0


class AgentMessages(TurnObserver):
    """Sends the agent status and transcript messages as turns play (a ``TurnObserver``)."""

    def __init__(self, messages: MessageSender, *, topic: str = AGENT_TOPIC, chunks: int = CHUNKS) -> None:
        self.messages = messages
        self.topic = topic
        self.chunks = chunks
        self._turns: dict[int, _Transcript] = {}

    def _send(self, message: dict[str, Any]) -> None:
        self.messages.send(message, topic=self.topic)

    def turn_started(self, turn: Turn, number: int) -> None:
        pieces = split_transcript(turn.text, self.chunks) if turn.text else [f"turn {number}"]
        self._turns[number] = _Transcript(number, pieces, chunk_due(max(1, turn.frames), len(pieces)))
        self._send(agent_status("speaking"))

    def frame_sent(self, turn: Turn, number: int, frames: int) -> None:
        transcript = self._turns.get(number)
        if transcript is None:
            return
        while transcript.sent < len(transcript.pieces) and transcript.due[transcript.sent] <= frames:
            self._send_piece(transcript)

    def _send_piece(self, transcript: _Transcript) -> None:
        k = transcript.sent
        final = k == len(transcript.pieces) - 1
        self._send(transcript_chunk(transcript.pieces[k], transcript.number, final))
        transcript.sent += 1

    def turn_ended(self, turn: Turn, number: int, completed: bool) -> None:
        transcript = self._turns.pop(number, None)
        if transcript is not None and transcript.sent < len(transcript.pieces):
            if completed:  # e.g. a turn whose frames were all dropped: the text was still spoken
                while transcript.sent < len(transcript.pieces):
                    self._send_piece(transcript)
            else:
                self._send(transcript_chunk("", number, True))
        self._send(agent_status("listening"))
