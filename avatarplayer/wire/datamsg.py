"""Data messages from the agent side of the room, as typed Python values.

Agents send small JSON messages over LiveKit data packets, shaped
``{"type": "transcript_chunk" | "agent_status" | ..., "data": ...}``. :func:`parse_data_message`
turns one into a :class:`TranscriptChunk`, an :class:`AgentStatus` or, for any other payload, a
plain :class:`DataMessage`. It never raises: a payload that is not such JSON is still a
:class:`DataMessage` (``type`` None, ``data`` None), so the app can read the raw bytes.

Pure Python: runs under CPython and Pyodide.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AgentStatus", "DataMessage", "TranscriptChunk", "parse_data_message", "parse_json", "topic_problem",
           "MOTION_TOPIC", "CONTROL_TOPIC", "AGENT_TOPIC", "MAX_TOPIC_LENGTH", "MAX_JSON_BYTES", "MAX_JSON_DEPTH"]

MOTION_TOPIC = "avatarplayer.motion"
"""Default topic of the data-packet carrier (docs/wire-format.md §3b): one motion packet per message."""
CONTROL_TOPIC = "avatarplayer.control"
"""Player <-> avatar worker requests, e.g. ``{"type": "carrier", "carrier": "data"}``."""
AGENT_TOPIC = "avatarplayer.agent"
"""Agent status and transcripts from the avatar worker (docs/wire-format.md §5)."""
MAX_TOPIC_LENGTH = 128
"""The longest data topic the avatar worker accepts for the data carrier."""


def topic_problem(topic: object) -> str | None:
    """Why ``topic`` cannot be the data carrier's topic, or ``None`` when it can: the worker refuses
    such a request (``carrier-error``) and the player such an option, with the same words."""
    if not isinstance(topic, str) or not topic.strip():
        return "topic must be a non-empty string"
    if len(topic) > MAX_TOPIC_LENGTH:
        return f"topic is longer than {MAX_TOPIC_LENGTH} characters"
    if topic == CONTROL_TOPIC or topic.startswith("lk."):
        return f"topic {topic!r} is reserved"
    return None

MAX_JSON_BYTES = 256 * 1024
"""Larger payloads are not parsed as JSON (they are still delivered as raw bytes)."""
MAX_JSON_DEPTH = 64
"""Deeper JSON is not parsed: deep nesting overflows Pyodide's stack, which is fatal there."""


@dataclass(frozen=True, slots=True)
class DataMessage:
    """Any data message: ``type``/``data`` when it was ``{"type": ..., "data": ...}`` JSON."""

    type: str | None
    data: Any
    topic: str | None
    participant_identity: str | None
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class TranscriptChunk(DataMessage):
    """``{"type": "transcript_chunk", "data": {"text": ..., "role": ..., "final": ...}}``.
    ``data`` may also be the text itself.

    Timed chunks also carry ``seq`` (the motion frame at which the text is heard) and ``turn_seq``
    (its turn's first frame), u32 sequence numbers: the player emits them when that frame renders
    (:mod:`avatarplayer.captions`). ``timing_error`` says why timing fields were not usable (the
    chunk is then untimed)."""

    text: str = ""
    role: str | None = None
    final: bool = False
    seq: int | None = None
    turn_seq: int | None = None
    timing_error: str | None = None


@dataclass(frozen=True, slots=True)
class AgentStatus(DataMessage):
    """``{"type": "agent_status", "data": {"status": "listening" | "thinking" | "speaking"}}``
    (``data`` may also be the status string)."""

    status: str = ""


def parse_data_message(payload: bytes, topic: str | None = None,
                       participant_identity: str | None = None) -> DataMessage:
    """Classify one data message. Never raises."""
    payload = bytes(payload)
    base = {"topic": topic, "participant_identity": participant_identity, "payload": payload}
    decoded = parse_json(payload)
    if not isinstance(decoded, dict) or not isinstance(decoded.get("type"), str):
        return DataMessage(type=None, data=decoded, **base)
    kind, data = decoded["type"], decoded.get("data")
    if kind == "transcript_chunk":
        if isinstance(data, str):
            return TranscriptChunk(type=kind, data=data, text=data, **base)
        if isinstance(data, dict) and isinstance(data.get("text", ""), str):
            role = data.get("role")
            seq, turn_seq, error = _timing(data)
            return TranscriptChunk(type=kind, data=data, text=data.get("text", ""),
                                   role=role if isinstance(role, str) else None,
                                   final=data.get("final") is True, seq=seq, turn_seq=turn_seq,
                                   timing_error=error, **base)
    elif kind == "agent_status":
        status = data.get("status") if isinstance(data, dict) else data
        if isinstance(status, str):
            return AgentStatus(type=kind, data=data, status=status, **base)
    return DataMessage(type=kind, data=data, **base)


def _u32(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        return None
    return value


def _timing(data: dict) -> tuple[int | None, int | None, str | None]:
    """``seq`` and ``turn_seq`` of a transcript chunk, or why they are not usable."""
    if "seq" not in data and "turn_seq" not in data:
        return None, None, None
    seq, turn_seq = _u32(data.get("seq")), data.get("turn_seq", data.get("seq"))
    if seq is None:
        return None, None, "bad-seq"
    turn_seq = _u32(turn_seq)
    if turn_seq is None:
        return None, None, "bad-turn-seq"
    if (seq - turn_seq) & 0xFFFFFFFF >= 0x80000000:
        return None, None, "seq-before-turn"
    return seq, turn_seq, None


def parse_json(payload: bytes) -> Any:
    """The one JSON parser of every data path: a JSON object, array or string, or None when the
    payload is not one, is larger than :data:`MAX_JSON_BYTES` or nests deeper than
    :data:`MAX_JSON_DEPTH` (checked before parsing: in Pyodide a deep parse exhausts the stack,
    which is fatal there, not a ``RecursionError``). Never raises."""
    payload = bytes(payload)
    if not payload or len(payload) > MAX_JSON_BYTES or payload[:1] not in b'{["' or _too_deep(payload):
        return None
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def _too_deep(payload: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when brackets nest deeper than ``limit`` (strings and escapes are skipped). Cheap for
    ordinary messages: the scan runs only when there are more than ``limit`` opening brackets."""
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for byte in payload:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False
