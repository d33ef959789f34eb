"""Replay mode (``--mode replay --replay-dir DIR``): play a recorded animation byte for byte.

A recording is a directory with two files:

``messages.bin``
    The motion, one serialized ``driveningress.v2.Message`` per 40 ms frame, in playing order,
    each prefixed by its length::

        record  = length:u32 little-endian | Message bytes[length]
        file    = record*                    (at least one record, nothing after the last)

    A length of 0 (an empty ``Message``) is allowed; a record longer than
    :data:`MAX_MESSAGE_BYTES` is not (it would not fit in a motion packet). Every record must
    parse as a ``Message`` (checked when loading; the bytes are never re-encoded).

``audio.wav``
    The speech, PCM 16-bit mono WAV at any rate ``sox`` can read (converted to 48 kHz on load).
    Frame ``i`` plays with samples ``[i * 40 ms, (i + 1) * 40 ms)``. Audio shorter than the
    motion is padded with silence, longer audio is cut at the last frame (both logged). The file
    may be missing: the motion then plays with silence.

The worker plays the recording as one turn — TRANSITION (unless ``--no-transition``), the
frames with START on the first and END on the last and ``seq`` counting up from wherever the
worker's stream is, then TRANSITION_END — and again every ``--repeat-every-s`` seconds if given.
The packets carry exactly the recorded ``Message`` bytes (the send log's ``msg_sha256`` /
``msg_len`` of each ``frame`` record are those of the recorded message, so a receiver can prove
it got them unchanged).

``python -m avatar_worker.record`` (:mod:`avatar_worker.record`) writes a recording from the
worker's own speech-driven motion generator.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatarplayer.constants import MAX_PACKET_BODY
from avatarplayer.wire.messages import build_message, parse_message

from ..audio import pcm as pcm_audio
from ..config import WorkerConfig
from ..motion_gen import MotionGenerator
from .speech import Speech
from ..turns import Turn, TurnFrame, build_turn
from ..visemes import viseme_frames

__all__ = [
    "AUDIO_FILE",
    "MAX_MESSAGE_BYTES",
    "MESSAGES_FILE",
    "Recording",
    "ReplayError",
    "ReplayMode",
    "decode_messages",
    "encode_messages",
    "load_recording",
    "read_messages",
    "speech_messages",
    "write_messages",
    "write_recording",
]

log = logging.getLogger("avatar_worker.replay")  # the name it always logged under (serve.py, tests filter on it)

MESSAGES_FILE = "messages.bin"
AUDIO_FILE = "audio.wav"
MAX_MESSAGE_BYTES = MAX_PACKET_BODY - 4
"""The largest recorded ``Message``: a packet body is ``seq:u32`` plus the message, capped at
64 KiB by every decoder (``avatarplayer.constants.MAX_PACKET_BODY``)."""

_LENGTH = struct.Struct("<I")


class ReplayError(ValueError):
    """A recording that cannot be played: missing, truncated or malformed (the message names the
    file and the byte offset)."""


# ------------------------------------------------------------------------------ the format


def encode_messages(messages: Iterable[bytes]) -> bytes:
    """``messages`` as the contents of a ``messages.bin`` file."""
    out = bytearray()
    for i, message in enumerate(messages):
        if len(message) > MAX_MESSAGE_BYTES:
            raise ReplayError(f"message {i} is {len(message)} bytes, over the {MAX_MESSAGE_BYTES}-byte cap")
        out += _LENGTH.pack(len(message))
        out += message
    return bytes(out)


def decode_messages(data: bytes, *, name: str = MESSAGES_FILE, check: bool = True) -> list[bytes]:
    """The messages in the contents of a ``messages.bin`` file (see the module docstring).

    Raises :class:`ReplayError` naming ``name``, the record and its byte offset for a truncated
    length or body, an oversize record, a record that is not a ``Message`` (with ``check``), or
    an empty file.
    """
    messages: list[bytes] = []
    offset = 0
    size = len(data)
    while offset < size:
        if size - offset < _LENGTH.size:
            raise ReplayError(f"{name}: truncated at byte offset {offset}: record {len(messages)} needs a "
                              f"4-byte length, only {size - offset} byte(s) left")
        (length,) = _LENGTH.unpack_from(data, offset)
        if length > MAX_MESSAGE_BYTES:
            raise ReplayError(f"{name}: record {len(messages)} at byte offset {offset} declares {length} bytes, "
                              f"over the {MAX_MESSAGE_BYTES}-byte cap (not a messages.bin file?)")
        start = offset + _LENGTH.size
        if size - start < length:
            raise ReplayError(f"{name}: truncated at byte offset {offset}: record {len(messages)} declares "
                              f"{length} bytes, only {size - start} left")
        message = data[start:start + length]
        if check:
            try:
                parse_message(message)
            except ValueError as exc:
                raise ReplayError(f"{name}: record {len(messages)} at byte offset {offset} is not a "
                                  f"Message: {exc}") from None
        messages.append(message)
        offset = start + length
    if not messages:
        raise ReplayError(f"{name}: no messages (empty file)")
    return messages


def write_messages(path: str | Path, messages: Iterable[bytes]) -> None:
    """Write ``messages`` as a ``messages.bin`` file."""
    Path(path).write_bytes(encode_messages(messages))


def read_messages(path: str | Path, *, check: bool = True) -> list[bytes]:
    """The messages of a ``messages.bin`` file (:func:`decode_messages`; errors name ``path``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_messages(data, name=str(path), check=check)


# --------------------------------------------------------------------------- recordings


@dataclass(frozen=True)
class Recording:
    """A loaded recording: one message and one 40 ms piece of 48 kHz audio per frame."""

    messages: tuple[bytes, ...]
    audio: tuple[bytes | None, ...]
    """``None``: silence."""
    source: str

    def __post_init__(self) -> None:
        if len(self.messages) != len(self.audio):
            raise ValueError("a recording needs one audio piece per message")

    @property
    def frames(self) -> int:
        return len(self.messages)

    @property
    def duration_s(self) -> float:
        return self.frames * pcm_audio.SAMPLES_PER_FRAME / pcm_audio.SAMPLE_RATE

    def turn_frames(self) -> list[TurnFrame]:
        return [TurnFrame(message, audio) for message, audio in zip(self.messages, self.audio)]


def load_recording(directory: str | Path, *, check: bool = True) -> Recording:
    """Read ``directory/messages.bin`` and ``directory/audio.wav`` (see the module docstring).

    Raises :class:`ReplayError` for a bad directory or messages file, and
    :class:`avatar_worker.audio.pcm.AudioError` for audio that cannot be read.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ReplayError(f"no such recording directory: {directory}")
    messages = read_messages(directory / MESSAGES_FILE, check=check)
    wav = directory / AUDIO_FILE
    if wav.exists():
        pieces: list[bytes | None] = list(pcm_audio.split_frames(pcm_audio.load_wav(wav)))
        if len(pieces) != len(messages):
            log.warning("%s holds %d frames of audio for %d messages: %s", wav, len(pieces), len(messages),
                        "padding with silence" if len(pieces) < len(messages) else "cutting the rest")
        pieces = (pieces + [None] * len(messages))[: len(messages)]
    else:
        log.warning("%s is missing: replaying the motion with silence", wav)
        pieces = [None] * len(messages)
    return Recording(tuple(messages), tuple(pieces), str(directory))


def speech_messages(speech: Speech, generator: MotionGenerator, *, frames: int | None = None,
                    req_id: str = "", avatar_id: str = "") -> tuple[list[bytes], bytes]:
    """The worker's own motion for ``speech`` (as in speech mode, mouth shapes from its phonemes
    when it has them): one message per frame, the last with ``end``, and the frames' audio as one
    PCM string. ``frames`` cuts or pads (with silence) the speech to that many frames."""
    pieces = list(speech.frames)
    levels = list(speech.envelope)
    if frames is not None:
        if frames < 1:
            raise ValueError("frames must be >= 1")
        pieces = (pieces + [pcm_audio.SILENCE] * frames)[:frames]
        levels = (levels + [0.0] * frames)[:frames]
    last = len(pieces) - 1
    mouths = viseme_frames(speech.phonemes, len(pieces)) if speech.phonemes else None
    messages = [build_message(pose, req_id=req_id, end=i == last, avatar_id=avatar_id)
                for i, pose in enumerate(generator.poses(levels, mouths))]
    return messages, b"".join(pieces)


def write_recording(directory: str | Path, messages: Sequence[bytes], pcm: bytes) -> Path:
    """Write a recording directory (created if needed): ``messages.bin`` and a 48 kHz ``audio.wav``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_messages(directory / MESSAGES_FILE, messages)
    pcm_audio.write_wav(directory / AUDIO_FILE, pcm)
    return directory


def plan_replay_turn(recording: Recording, first_seq: int, *, label: str = "replay", transition: bool = True,
                     redundant: bool = False, compression: Any = None) -> Turn:
    """The recording as one turn from ``first_seq``."""
    return build_turn(recording.turn_frames(), first_seq, transition=transition, redundant=redundant,
                      compression=compression, label=label)


# ------------------------------------------------------------------------------- the mode


class ReplayMode:
    """The ``replay`` mode of a worker run (see :mod:`avatar_worker.modes`)."""

    def __init__(self, config: WorkerConfig) -> None:
        if config.replay_dir is None:
            raise ValueError("replay mode needs a replay directory")
        self.config = config
        self.recording: Recording | None = None
        self.turns = 0

    async def prepare(self) -> None:
        """Before joining: load and check the recording (raises ReplayError)."""
        self.recording = await asyncio.to_thread(load_recording, self.config.replay_dir)
        log.info("replay: %s, %d frames (%.2f s)", self.recording.source, self.recording.frames,
                 self.recording.duration_s)

    def install(self, publisher: Any, messages: Any, observers: list[Any]) -> None:
        """Nothing to hook: a replay only plays."""

    async def drive(self, streamer: Any, lead_in: Callable[[], Awaitable[None]]) -> str:
        """Play the recording (again every ``repeat_every_s`` if set); ``"done"``."""
        config = self.config
        recording = self.recording
        assert recording is not None, "prepare() first"
        await lead_in()
        while True:
            began = time.monotonic()
            self.turns += 1
            # planning ~500 frames encodes ~1000 packets: off the event loop, so no tick is late
            turn = await asyncio.to_thread(
                plan_replay_turn, recording, streamer.next_seq, label=f"replay-{self.turns}",
                transition=config.transition, redundant=config.redundant, compression=config.compression)
            result = await streamer.play(turn)
            log.info("turn %s: seq %d..%d (%d frames) %s in %.2f s", result.label, result.first_seq,
                     result.first_seq + result.frames - 1, result.frames,
                     "completed" if result.completed else "interrupted", result.ended_at - result.started_at)
            if config.repeat_every_s is None:
                break
            await asyncio.sleep(max(0.0, config.repeat_every_s - (time.monotonic() - began)))
        await asyncio.sleep(config.tail_ms / 1000)
        return "done"

    def summary(self) -> dict[str, Any]:
        """Extra summary keys of replay mode."""
        recording = self.recording
        return {"replay": {"dir": str(self.config.replay_dir), "frames": recording.frames if recording else 0,
                           "turns": self.turns}}

    async def close(self) -> None:
        """Nothing to release."""
