"""Speech mode: play a WAV file (or offline-synthesized text) as a turn, with motion from its audio.

Synthesized speech (:func:`load_speech` with text, :func:`speak`) knows when each word and
phoneme is heard (:mod:`avatar_worker.tts`): :func:`plan_speech_turn` shapes the mouth from the
phonemes (:mod:`avatar_worker.visemes`) and puts the words' frames on the turn, for captions timed
to the face (:class:`avatar_worker.agent_data.AgentMessages`). A WAV file, or a recording, has
neither: the jaw follows its loudness and the transcript goes out in a few pieces.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from avatarplayer.wire.messages import build_message
from avatarplayer.wire.motion import Compression

from ..audio import pcm as pcm_audio
from ..motion_gen import MotionGenerator
from ..tts import Phoneme, Word, synthesize_timed
from ..turns import Turn, TurnFrame, build_turn
from ..visemes import viseme_frames
from . import DriverOnly, log_turn

if TYPE_CHECKING:
    from ..config import WorkerConfig
    from ..transport.streamer import MotionStreamer

__all__ = ["Speech", "SpeechMode", "join_speech", "load_speech", "plan_speech_turn", "recorded", "speak"]

log = logging.getLogger("avatar_worker")  # run-level messages, as when app.py drove this mode

DEFAULT_TEXT = "Hello! I am your avatar. I speak, I blink, and my motion travels next to my voice."


@dataclass(frozen=True)
class Speech:
    """Speech audio cut into 40 ms frames, with the loudness envelope that drives the jaw, and
    for synthesized speech when its words and phonemes are heard."""

    frames: tuple[bytes, ...]
    envelope: tuple[float, ...]
    source: str
    text: str | None = None
    """The words spoken (synthesized speech); ``None`` for a WAV file."""
    words: tuple[Word, ...] = ()
    """Where each word starts in :attr:`text` and when it is heard (ms from the speech's start);
    empty when unknown."""
    phonemes: tuple[Phoneme, ...] = ()
    """The phonemes and when they are heard; empty when unknown (the jaw follows the loudness)."""

    @property
    def duration_s(self) -> float:
        return len(self.frames) * pcm_audio.SAMPLES_PER_FRAME / pcm_audio.SAMPLE_RATE


def speak(text: str, *, voice: str | None = None, words_per_minute: int | None = None) -> Speech:
    """``text`` synthesized offline (espeak-ng), with its word and phoneme timing. Blocking."""
    synthesis = synthesize_timed(text, voice=voice, words_per_minute=words_per_minute)
    frames = pcm_audio.split_frames(synthesis.pcm)
    return Speech(tuple(frames), tuple(pcm_audio.envelope(frames)), f"espeak-ng: {text[:40]!r}", text,
                  synthesis.words, synthesis.phonemes)


def recorded(pcm: bytes, source: str, text: str | None = None) -> Speech:
    """Recorded or echoed 48 kHz PCM: no phonemes, so the jaw follows its loudness."""
    frames = pcm_audio.split_frames(pcm)
    if not frames:
        raise pcm_audio.AudioError(f"no audio in {source}")
    return Speech(tuple(frames), tuple(pcm_audio.envelope(frames)), source, text)


def join_speech(parts: list[Speech], source: str, *, separator: str = " ") -> Speech:
    """``parts`` one after the other (each starts on a frame boundary), their texts joined with
    ``separator`` and their word and phoneme times moved to where each part starts. The text of a
    part without word times (a recording) counts as one word, heard as the part starts, when the
    parts before it had word times.

    E.g. a reply: ``join_speech([speak(lead), recorded(gap, "gap"), recorded(echo, "echo",
    "(played back)")], "reply")``: the mouth takes the lead's phonemes, then follows the echo's
    loudness; the lead's words are captioned one by one, the echo's text as the echo starts."""
    frames: list[bytes] = []
    envelope: list[float] = []
    words: list[Word] = []
    phonemes: list[Phoneme] = []
    texts: list[str] = []
    offset = 0
    for part in parts:
        shift = len(frames) * pcm_audio.SAMPLES_PER_FRAME * 1000 / pcm_audio.SAMPLE_RATE
        if part.text is not None:
            offset = sum(len(t) + len(separator) for t in texts)
            texts.append(part.text)
            if part.words:
                words += [Word(w.start + offset, w.length, w.start_ms + shift) for w in part.words]
            elif words:  # a recording with a text: its caption goes up as it starts
                words.append(Word(offset, len(part.text), shift))
        phonemes += [Phoneme(p.symbol, p.start_ms + shift, p.end_ms + shift) for p in part.phonemes]
        frames += part.frames
        envelope += part.envelope
    if not frames:
        raise pcm_audio.AudioError(f"no audio in {source}")
    return Speech(tuple(frames), tuple(envelope), source, separator.join(texts) if texts else None,
                  tuple(words), tuple(phonemes))


def load_speech(*, wav: str | Path | None = None, text: str | None = None, voice: str | None = None) -> Speech:
    """Read ``wav`` or synthesize ``text`` (espeak-ng); the default is a short greeting."""
    if wav is not None:
        return recorded(pcm_audio.load_wav(wav), str(wav))
    return speak(text or DEFAULT_TEXT, voice=voice)


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
    """Poses from the envelope (and the phonemes, when known), one ``Message`` per frame
    (``end`` on the last), as a turn; the words' frames go on the turn (:attr:`Turn.words`).

    Built in chunks that yield to the event loop, so planning a long utterance never delays the
    frames that are being sent meanwhile.
    """
    frames: list[TurnFrame] = []
    count = len(speech.frames)
    last = count - 1
    mouths = viseme_frames(speech.phonemes, count) if speech.phonemes else None
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        shapes = mouths[start:stop] if mouths is not None else None
        for i, pose in enumerate(generator.poses(speech.envelope[start:stop], shapes), start=start):
            message = build_message(pose, req_id=req_id, end=i == last, avatar_id=avatar_id)
            frames.append(TurnFrame(message, speech.frames[i]))
        await asyncio.sleep(0)
    frame_ms = pcm_audio.SAMPLES_PER_FRAME * 1000 / pcm_audio.SAMPLE_RATE
    # a word's frame is the first one whose audio starts at or after the word's first sound: its
    # caption, shown as that frame renders, never leads the voice (it may trail it by < 40 ms)
    words = tuple((w.start, min(last, math.ceil(w.start_ms / frame_ms))) for w in speech.words) if speech.text else ()
    return build_turn(frames, first_seq, transition=transition, redundant=redundant,
                      compression=compression, label=req_id or "speech", text=speech.text, words=words)


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
