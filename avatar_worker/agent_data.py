"""Agent data messages around each turn (``--agent-data``), the way a voice agent reports itself.

Reliable JSON data messages (UTF-8) to everyone, on topic ``avatarplayer.agent``:

- ``{"type": "agent_status", "data": {"status": "speaking"}}`` as a turn's first tick goes out;
- ``{"type": "transcript_chunk", "data": {"role": "agent", "text": ..., "turn": n, "final": b,
  "seq": s, "turn_seq": f}}`` while it plays: the turn's text in pieces that joined with ``""``
  give the text back, the last one with ``final: true``. ``seq`` is the sequence number of the
  first motion frame whose audio starts at or after the piece's first sound, ``turn_seq`` that of
  the turn's first frame: the player shows a piece when that frame renders, so captions keep to
  the face's clock (:mod:`avatarplayer.captions`). Each piece goes out :data:`LEAD_FRAMES` frames before its own
  (and never before the turn's first frame went out).

  Synthesized speech (:attr:`avatar_worker.turns.Turn.words`) is sent **word by word** (each
  piece a word and the spaces or punctuation after it). Other text goes out in up to
  :data:`CHUNKS` pieces at word boundaries, piece ``k`` of ``m`` at the turn's frame
  ``k * frames // m + 1``. A turn without known text (scripted mode, a WAV file) has one piece,
  ``"turn <n>"``. An interrupted turn's unsent pieces are dropped and an empty final piece, at
  the last frame that went out, closes the transcript;
- ``{"type": "agent_status", "data": {"status": "listening"}}`` once the turn is over.

``n`` counts the turns the worker started, from 1. Every message is also logged in the send log
(``{"kind": "data-message", ...}``, see :class:`avatar_worker.transport.messaging.MessageSender`). Demo
mode (:mod:`avatar_worker.modes.demo`) adds ``thinking`` and the user's side of the transcript
(:func:`user_transcript_chunk`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from avatarplayer.wire.datamsg import AGENT_TOPIC

from .transport.messaging import MessageSender
from .transport.streamer import TurnObserver
from .turns import Turn

__all__ = [
    "AGENT_TOPIC",
    "CHUNKS",
    "LEAD_FRAMES",
    "AgentMessages",
    "agent_status",
    "chunk_due",
    "split_transcript",
    "transcript_chunk",
    "user_transcript_chunk",
]

CHUNKS = 3
"""Transcript pieces per turn with known text but no word timing (fewer for short texts)."""

LEAD_FRAMES = 12
"""A piece goes out this many frames (480 ms) before the frame it is spoken at: the player holds it
until that frame renders, and a data message may take longer than the frame's packet."""

_WORD = re.compile(r"\S+\s*")
_TOKEN_TAIL = re.compile(r"\S*\Z")


def agent_status(status: str) -> dict[str, Any]:
    """An ``agent_status`` message (``speaking``, ``listening``, or ``thinking`` in demo mode)."""
    return {"type": "agent_status", "data": {"status": status}}


def transcript_chunk(text: str, turn: int, final: bool, seq: int | None = None,
                     turn_seq: int | None = None) -> dict[str, Any]:
    """A ``transcript_chunk`` message spoken by the agent; with ``seq`` (the frame it is heard at)
    and ``turn_seq`` (the turn's first frame) when its timing is known."""
    data: dict[str, Any] = {"role": "agent", "text": text, "turn": turn, "final": final}
    if seq is not None:
        data["seq"] = seq & 0xFFFFFFFF
        data["turn_seq"] = (seq if turn_seq is None else turn_seq) & 0xFFFFFFFF
    return {"type": "transcript_chunk", "data": data}


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


def split_words(text: str, words: Sequence[tuple[int, int]]) -> tuple[list[str], list[int]]:
    """``text`` cut where each timed word starts (``(first character, 0-based frame)`` pairs, as
    :attr:`avatar_worker.turns.Turn.words`): the pieces (joined they give ``text``; the first one
    also holds what comes before the first word) and the 1-based frame each is due at. A cut is
    made only after a space: a word that starts inside another (espeak-ng speaks "10:31" as
    three words) stays with it, and one after an opening bracket or quote takes it along. Words
    out of order or out of the text are skipped."""
    cuts: list[tuple[int, int]] = []
    for start, frame in words:
        if 0 < start < len(text):
            start -= len(_TOKEN_TAIL.search(text, 0, start).group())  # back to the start of its token
        if 0 < start < len(text) and (not cuts or start > cuts[-1][0]) and frame >= 0:
            cuts.append((start, frame))
        elif start == 0 and not cuts and frame >= 0:
            cuts.append((0, frame))
    if not cuts:
        return [text], [1]
    if cuts[0][0] != 0:
        cuts[0] = (0, cuts[0][1])
    bounds = [start for start, _ in cuts] + [len(text)]
    pieces = [text[bounds[k]:bounds[k + 1]] for k in range(len(cuts))]
    due = [frame + 1 for _, frame in cuts]
    for k in range(1, len(due)):  # never earlier than the word before
        due[k] = max(due[k], due[k - 1])
    return pieces, due


@dataclass
class _Transcript:
    number: int
    pieces: list[str]
    due: list[int]
    first_seq: int
    sent: int = 0
    frames_out: int = 0


class AgentMessages(TurnObserver):
    """Sends the agent status and transcript messages as turns play (a ``TurnObserver``)."""

    def __init__(self, messages: MessageSender, *, topic: str = AGENT_TOPIC, chunks: int = CHUNKS,
                 lead_frames: int = LEAD_FRAMES) -> None:
        self.messages = messages
        self.topic = topic
        self.chunks = chunks
        self.lead_frames = lead_frames
        self._turns: dict[int, _Transcript] = {}

    def _send(self, message: dict[str, Any]) -> None:
        self.messages.send(message, topic=self.topic)

    def turn_started(self, turn: Turn, number: int) -> None:
        if turn.text and turn.words:
            pieces, due = split_words(turn.text, turn.words)
        else:
            pieces = split_transcript(turn.text, self.chunks) if turn.text else [f"turn {number}"]
            due = chunk_due(max(1, turn.frames), len(pieces))
        self._turns[number] = _Transcript(number, pieces, due, turn.first_seq)
        self._send(agent_status("speaking"))

    def frame_sent(self, turn: Turn, number: int, frames: int) -> None:
        transcript = self._turns.get(number)
        if transcript is None:
            return
        transcript.frames_out = frames
        while (transcript.sent < len(transcript.pieces)
               and transcript.due[transcript.sent] <= frames + self.lead_frames):
            self._send_piece(transcript)

    def _send_piece(self, transcript: _Transcript) -> None:
        k = transcript.sent
        final = k == len(transcript.pieces) - 1
        seq = transcript.first_seq + transcript.due[k] - 1
        self._send(transcript_chunk(transcript.pieces[k], transcript.number, final, seq, transcript.first_seq))
        transcript.sent += 1

    def turn_ended(self, turn: Turn, number: int, completed: bool) -> None:
        transcript = self._turns.pop(number, None)
        if transcript is not None and transcript.sent < len(transcript.pieces):
            if completed:  # e.g. a turn whose frames were all dropped: the text was still spoken
                while transcript.sent < len(transcript.pieces):
                    self._send_piece(transcript)
            else:
                # the pieces sent ahead of the interruption were never said: the player drops them
                # when the turn ends; this closes the transcript at the last frame that went out
                last = transcript.first_seq + max(0, transcript.frames_out - 1)
                self._send(transcript_chunk("", number, True, last, transcript.first_seq))
        self._send(agent_status("listening"))
