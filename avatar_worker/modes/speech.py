"""Speech mode: play a WAV file (or offline-synthesized text) as a turn, with motion from its audio."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from avatarplayer.wire.messages import build_message
from avatarplayer.wire.motion import Compression

from ..audio import pcm as pcm_audio
from ..motion_gen import MotionGenerator
from ..turns import Turn, TurnFrame, build_turn
from . import DriverOnly, log_turn

if TYPE_CHECKING:
    from ..config import WorkerConfig
    from ..transport.streamer import MotionStreamer

__all__ = ["Speech", "SpeechMode", "load_speech", "plan_speech_turn"]

log = logging.getLogger("avatar_worker")  # run-level messages, as when app.py drove this mode

DEFAULT_TEXT = "Hello! I am your avatar. I speak, I blink, and my motion travels next to my voice."


@dataclass(frozen=True)
class Speech:
    """Speech audio cut into 40 ms frames, with the loudness envelope that drives the jaw."""

    frames: tuple[bytes, ...]
    envelope: tuple[float, ...]
    source: str
    text: str | None = None
    """The words spoken (synthesized speech); ``None`` for a WAV file."""

    @property
    def duration_s(self) -> float:
        return len(self.frames) * pcm_audio.SAMPLES_PER_FRAME / pcm_audio.SAMPLE_RATE


def load_speech(*, wav: str | Path | None = None, text: str | None = None, voice: str | None = None) -> Speech:
    """Read ``wav`` or synthesize ``text`` (espeak-ng); the default is a short greeting."""
    if wav is not None:
        pcm = pcm_audio.load_wav(wav)
        source = str(wav)
        text = None
    else:
        text = text or DEFAULT_TEXT
        pcm = pcm_audio.synthesize(text, voice=voice)
        source = f"espeak-ng: {text[:40]!r}"
    frames = pcm_audio.split_frames(pcm)
    if not frames:
        raise pcm_audio.AudioError(f"no audio in {source}")
    return Speech(tuple(frames), tuple(pcm_audio.envelope(frames)), source, text)


async def plan_speech_turn(
    speech: Speech,
    generator: MotionGenerator,
    first_seq: int,
    *,
    req_id: str = "",
    avatar_id: str = "",
    transition: bool = True,
    redundant: bool = False,
    compression: Compression = None,
    chunk: int = 25,
) -> Turn:
    """Poses from the envelope, one ``Message`` per frame (``end`` on the last), as a turn.

    Built in chunks that yield to the event loop, so planning a long utterance never delays the
    frames that are being sent meanwhile.
    """
    frames: list[TurnFrame] = []
    last = len(speech.frames) - 1
    for start in range(0, len(speech.frames), chunk):
        stop = min(start + chunk, len(speech.frames))
        for i, pose in enumerate(generator.poses(speech.envelope[start:stop]), start=start):
            message = build_message(pose, req_id=req_id, end=i == last, avatar_id=avatar_id)
            frames.append(TurnFrame(message, speech.frames[i]))
        await asyncio.sleep(0)
    return build_turn(frames, first_seq, transition=transition, redundant=redundant,
                      compression=compression, label=req_id or "speech", text=speech.text)


class SpeechMode(DriverOnly):
    """The ``speech`` mode runner: the speech as one turn, again every ``repeat_every_s`` if set."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.speech: Speech | None = None

    async def prepare(self) -> None:
        """Synthesize / convert before joining, so a bad file fails fast and no one sees a half-start."""
        config = self.config
        speech = await asyncio.to_thread(load_speech, wav=config.wav, text=config.text, voice=config.voice)
        log.info("speech: %s, %.2f s, %d frames", speech.source, speech.duration_s, len(speech.frames))
        self.speech = speech

    async def drive(self, streamer: MotionStreamer, lead_in: Callable[[], Awaitable[None]]) -> str:
        """Play the speech (repeatedly with ``repeat_every_s``); ``"done"``."""
        config, speech = self.config, self.speech
        assert speech is not None, "prepare() first"
        await lead_in()
        generator = MotionGenerator(config.seed)
        n = 0
        while True:
            n += 1
            began = time.monotonic()
            turn: Turn = await plan_speech_turn(
                speech, generator, streamer.next_seq, req_id=f"speech-{n}", avatar_id=config.avatar_id,
                transition=config.transition, redundant=config.redundant, compression=config.compression)
            result = await streamer.play(turn)
            log_turn(result)
            if config.repeat_every_s is None:
                break
            await asyncio.sleep(max(0.0, config.repeat_every_s - (time.monotonic() - began)))
        await asyncio.sleep(config.tail_ms / 1000)
        return "done"
