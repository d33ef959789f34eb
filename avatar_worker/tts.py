"""Offline speech synthesis with its timing: espeak-ng's audio, its words and its phonemes.

The ``espeak-ng`` command line writes audio and can print phonemes, but not when they are spoken.
Its C library, ``libespeak-ng.so.1`` (Debian's ``libespeak-ng1``, installed with ``espeak-ng``),
reports events through the synthesis callback: ``espeakEVENT_WORD`` and, when initialised with
``espeakINITIALIZE_PHONEME_EVENTS``, ``espeakEVENT_PHONEME``, each with ``audio_position``, the
milliseconds into the audio it is synthesizing. :func:`synthesize_timed` runs one synthesis in
``AUDIO_OUTPUT_SYNCHRONOUS`` mode and keeps the samples *and* the events of that same call, so the
times given are times in the audio returned. Phoneme names are IPA
(``espeakINITIALIZE_PHONEME_IPA``), which reads the same across languages.

Each synthesis runs in a child process (:mod:`avatar_worker.espeak_child`, the :mod:`ctypes`
binding): the library keeps state between syntheses, so a second call in one process gave other
audio for the same text. Blocking (about 0.1 s with the process start): run it in a thread. The
audio (22 050 Hz from espeak-ng's voices) is converted to 48 kHz by
:func:`avatar_worker.audio.pcm.load_wav`, like the command line's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

from . import espeak_child
from .audio import pcm as pcm_audio

__all__ = ["Phoneme", "Synthesis", "TtsError", "Word", "synthesize_timed"]

_CHILD = Path(espeak_child.__file__)
_TIMEOUT_S = 30.0
_WORD, _MSG_TERMINATED, _PHONEME = 1, 6, 7
"""espeak_EVENT types (see :mod:`avatar_worker.espeak_child`)."""

class TtsError(pcm_audio.AudioError):
    """espeak-ng's library is missing or failed."""


@dataclass(frozen=True, slots=True)
class Phoneme:
    """One phoneme, spoken from ``start_ms`` to ``end_ms`` of the audio."""

    symbol: str
    """IPA, with espeak-ng's stress and length marks (``ˈuː``); ``"_"`` is a pause."""
    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True)
class Word:
    """One word of the text, from character ``start`` (in the text given), heard from ``start_ms``."""

    start: int
    length: int
    start_ms: float
    """When its first phoneme starts."""


@dataclass(frozen=True, slots=True)
class Synthesis:
    """48 kHz mono int16 PCM with the words and phonemes spoken in it."""

    pcm: bytes
    words: tuple[Word, ...]
    phonemes: tuple[Phoneme, ...]
    text: str

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) / 2 / pcm_audio.SAMPLE_RATE * 1000.0


def synthesize_timed(text: str, *, voice: str | None = None, words_per_minute: int | None = None) -> Synthesis:
    """Speak ``text`` offline; the 48 kHz audio with when each word and phoneme is heard in it.

    Raises :class:`TtsError` (an :class:`~avatar_worker.audio.pcm.AudioError`) when the library is
    missing, the voice is unknown or the text is empty.
    """
    if not text.strip():
        raise TtsError("nothing to say: empty text")
    rate, raw, events = _run_child(text, voice or "en", words_per_minute or 175)
    if not raw:
        raise TtsError(f"espeak-ng produced no audio for {text[:40]!r}")
    with tempfile.TemporaryDirectory(prefix="avatar-tts-") as tmp:
        wav = Path(tmp) / "speech.wav"
        with wave.open(str(wav), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(raw)
        pcm = pcm_audio.load_wav(wav)
    audio_ms = len(raw) / 2 / rate * 1000.0
    words: list[Word] = []
    starts: list[tuple[str, float]] = []
    end_ms = audio_ms
    for kind, position, length, at_ms, name in events:
        at = float(min(max(at_ms, 0), audio_ms))
        if kind == _WORD and position >= 1:  # text_position counts characters from 1
            start = min(position - 1, len(text))
            if not words or start > words[-1].start:
                words.append(Word(start, max(0, min(length, len(text) - start)), at))
        elif kind == _PHONEME and name:
            starts.append((name, at))
        elif kind == _MSG_TERMINATED:
            end_ms = at
    phonemes = tuple(
        Phoneme(symbol, at, starts[i + 1][1] if i + 1 < len(starts) else max(at, min(end_ms, audio_ms)))
        for i, (symbol, at) in enumerate(starts)
    )
    return Synthesis(pcm, _heard(words, phonemes), phonemes, text)


def _run_child(text: str, voice: str, rate: int) -> tuple[int, bytes, list]:
    """The sample rate, samples (int16, the machine's byte order, as :mod:`wave` takes them) and
    events of one synthesis in a child process."""
    request = json.dumps({"text": text, "voice": voice, "rate": rate}).encode() + b"\n"
    try:
        proc = subprocess.run([sys.executable, "-I", "-S", str(_CHILD)], input=request, capture_output=True,
                              timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TtsError(f"espeak-ng took over {_TIMEOUT_S:.0f} s") from None
    head, _, body = proc.stdout.partition(b"\n")
    try:
        answer = json.loads(head)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "error" in answer or proc.returncode != 0:
        why = answer.get("error") if isinstance(answer, dict) else None
        raise TtsError(f"espeak-ng failed: {why or proc.stderr.decode(errors='replace').strip() or proc.returncode}")
    samples = int(answer["samples"])
    if len(body) != 2 * samples:
        raise TtsError(f"espeak-ng: {len(body)} bytes of audio, {2 * samples} announced")
    return int(answer["sample_rate"]), body, answer["events"]


def _heard(words: list[Word], phonemes: tuple[Phoneme, ...]) -> tuple[Word, ...]:
    """A word event comes up to a pause's length before the word's first sound (after a full stop,
    about 50 ms early): each word is timed by its first phoneme instead, so a caption never leads
    the voice."""
    out: list[Word] = []
    i = 0
    for word in words:
        while i < len(phonemes) and phonemes[i].start_ms < word.start_ms:
            i += 1
        at = phonemes[i].start_ms if i < len(phonemes) else word.start_ms
        if out and at < out[-1].start_ms:
            at = out[-1].start_ms
        out.append(Word(word.start, word.length, at))
    return tuple(out)
