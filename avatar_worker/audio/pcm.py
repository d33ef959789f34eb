"""PCM in one place: speech audio as 48 kHz mono int16 PCM, cut into 40 ms frames, its loudness
envelope, and the conversion of other PCM to it.

Conversions of files (other rates, stereo, other sample widths) and speech synthesis use Debian's
``sox`` and ``espeak-ng`` as subprocesses; the rest is the standard library (``audioop`` is gone
in Python 3.13, so sample maths uses ``array``). Streamed PCM (agents mode: the agent's audio
at any rate and channel count) goes through :class:`PcmConverter`, with the LiveKit SDK's
resampler (and numpy, a dependency of the SDK, to downmix), both loaded only when needed.
"""

from __future__ import annotations

import array
import functools
import math
import shutil
import subprocess
import sys
import tempfile
import wave
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from avatarplayer.constants import FRAME_INTERVAL_MS

__all__ = [
    "SAMPLE_RATE",
    "CHANNELS",
    "SAMPLES_PER_FRAME",
    "BYTES_PER_FRAME",
    "SILENCE",
    "AudioError",
    "load_wav",
    "synthesize",
    "split_frames",
    "rms",
    "envelope",
    "tone",
    "click",
    "write_wav",
    "PcmConverter",
]

SAMPLE_RATE = 48_000
CHANNELS = 1
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_INTERVAL_MS // 1000
"""1920 samples: the audio that leaves together with one motion frame."""
BYTES_PER_FRAME = SAMPLES_PER_FRAME * 2 * CHANNELS
SILENCE = bytes(BYTES_PER_FRAME)

_FULL_SCALE = 32768.0


class AudioError(RuntimeError):
    """A WAV file that cannot be read or converted, or a failed synthesis."""


def _samples(pcm: bytes) -> "array.array[int]":
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    if sys.byteorder == "big":  # WAV and WebRTC PCM are little-endian
        samples.byteswap()
    return samples


def _to_bytes(samples: "array.array[int]") -> bytes:
    if sys.byteorder == "big":
        samples = array.array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def load_wav(path: str | Path) -> bytes:
    """Read a WAV file as 48 kHz mono int16 little-endian PCM, converting with ``sox`` if needed."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as wav:
            if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE, CHANNELS, 2):
                return wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise AudioError(f"no such WAV file: {path}") from None
    except (wave.Error, EOFError):
        pass  # e.g. float or extensible WAV: sox reads those too
    sox = shutil.which("sox")
    if sox is None:
        raise AudioError(f"{path} is not 48 kHz mono 16-bit and sox is not installed to convert it")
    with tempfile.TemporaryDirectory(prefix="avatar-audio-") as tmp:
        out = Path(tmp) / "converted.wav"
        proc = subprocess.run(
            # -D: no dither, so a conversion is deterministic (recordings, tests)
            [sox, "-D", str(path), "-r", str(SAMPLE_RATE), "-c", str(CHANNELS), "-b", "16", "-e", "signed-integer",
             str(out)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise AudioError(f"sox could not convert {path}: {proc.stderr.strip()}")
        with wave.open(str(out), "rb") as wav:
            return wav.readframes(wav.getnframes())


def synthesize(text: str, *, voice: str | None = None, words_per_minute: int | None = None) -> bytes:
    """Speak ``text`` offline with ``espeak-ng`` and return 48 kHz mono int16 PCM."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise AudioError("espeak-ng is not installed (Debian package espeak-ng)")
    if not text.strip():
        raise AudioError("nothing to say: empty text")
    with tempfile.TemporaryDirectory(prefix="avatar-tts-") as tmp:
        raw = Path(tmp) / "speech.wav"
        cmd = [espeak, "-w", str(raw)]
        if voice:
            cmd += ["-v", voice]
        if words_per_minute:
            cmd += ["-s", str(words_per_minute)]
        # "--" keeps text that starts with a dash from being read as an option
        proc = subprocess.run([*cmd, "--", text], capture_output=True, text=True)
        if proc.returncode != 0 or not raw.exists():
            raise AudioError(f"espeak-ng failed: {proc.stderr.strip() or proc.returncode}")
        return load_wav(raw)


def split_frames(pcm: bytes) -> list[bytes]:
    """Cut PCM into 40 ms frames of :data:`BYTES_PER_FRAME`, padding the last one with silence."""
    pcm = pcm[: len(pcm) - len(pcm) % 2]
    frames = [pcm[i:i + BYTES_PER_FRAME] for i in range(0, len(pcm), BYTES_PER_FRAME)]
    if frames and len(frames[-1]) < BYTES_PER_FRAME:
        frames[-1] += bytes(BYTES_PER_FRAME - len(frames[-1]))
    return frames


def rms(frame: bytes) -> float:
    """Root-mean-square level of int16 PCM, relative to full scale (0.0 .. ~1.0)."""
    samples = _samples(frame)
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples)) / _FULL_SCALE


def envelope(frames: Iterable[bytes], *, floor_db: float = -50.0, ceiling_db: float = -12.0) -> list[float]:
    """Per-frame loudness in 0..1: RMS in dBFS mapped linearly from ``floor_db`` to ``ceiling_db``.

    A decibel scale follows how loud speech sounds far better than raw RMS, so quiet consonants
    still move the jaw a little and loud vowels do not saturate it.
    """
    if ceiling_db <= floor_db:
        raise ValueError("ceiling_db must be above floor_db")
    out = []
    for frame in frames:
        level = rms(frame)
        db = 20 * math.log10(level) if level > 0 else -math.inf
        out.append(min(1.0, max(0.0, (db - floor_db) / (ceiling_db - floor_db))))
    return out


@functools.lru_cache(maxsize=16)
def tone(frequency: float = 400.0, amplitude: float = 0.1) -> bytes:
    """One 40 ms frame of a sine wave starting at phase 0.

    ``frequency`` must be a multiple of 25 Hz so that a frame holds whole cycles: then the same
    frame repeated is one continuous tone, and it is computed once.
    """
    if not 0.0 <= amplitude <= 1.0:
        raise ValueError("amplitude must be within 0..1")
    cycles = frequency * SAMPLES_PER_FRAME / SAMPLE_RATE
    if frequency <= 0 or abs(cycles - round(cycles)) > 1e-9:
        raise ValueError(f"frequency must be a positive multiple of {SAMPLE_RATE // SAMPLES_PER_FRAME} Hz")
    step = 2 * math.pi * frequency / SAMPLE_RATE
    peak = amplitude * (_FULL_SCALE - 1)
    return _to_bytes(array.array("h", (int(round(peak * math.sin(step * i))) for i in range(SAMPLES_PER_FRAME))))


def click(frequency: float = 2000.0, amplitude: float = 0.5, duration_ms: float = 20.0) -> bytes:
    """One 40 ms frame that starts with a sine burst at full ``amplitude`` from its first sample
    and is silent after ``duration_ms``: a sharp onset a listener can time to the sample (the
    A/V sync pulse, see :mod:`avatar_worker.modes.scripted`)."""
    if not 0.0 < amplitude <= 1.0:
        raise ValueError("amplitude must be within 0..1")
    if not 0.0 < duration_ms <= FRAME_INTERVAL_MS:
        raise ValueError(f"duration_ms must be within 0..{FRAME_INTERVAL_MS}")
    loud = int(SAMPLE_RATE * duration_ms / 1000)
    step = 2 * math.pi * frequency / SAMPLE_RATE
    peak = amplitude * (_FULL_SCALE - 1)
    # starts at the peak (cosine), so the very first sample is loud
    burst = (int(round(peak * math.cos(step * i))) for i in range(loud))
    return _to_bytes(array.array("h", burst)) + bytes(2 * CHANNELS * (SAMPLES_PER_FRAME - loud))


def write_wav(path: str | Path, pcm: bytes) -> None:
    """Write 48 kHz mono int16 PCM as a WAV file."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(CHANNELS)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm)


_RESAMPLE_QUALITY = "medium"
"""The sox resampler's quality for :class:`PcmConverter`."""


class PcmConverter:
    """Interleaved int16 PCM at any rate and channel count → 48 kHz mono int16, streaming.

    Channels are averaged; the rate is converted with the LiveKit SDK's sox resampler, which
    keeps its state across pushes (no clicks at chunk boundaries). Bytes that do not make a
    whole sample frame wait for the next push.
    """

    def __init__(self, sample_rate: int, num_channels: int) -> None:
        if not 8_000 <= sample_rate <= 192_000:
            raise ValueError(f"unsupported sample_rate {sample_rate}")
        if not 1 <= num_channels <= 8:
            raise ValueError(f"unsupported num_channels {num_channels}")
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self._rest = b""
        self._resampler: Any = None
        if sample_rate != SAMPLE_RATE:
            from livekit import rtc

            self._resampler = rtc.AudioResampler(sample_rate, SAMPLE_RATE, num_channels=1,
                                                 quality=rtc.AudioResamplerQuality(_RESAMPLE_QUALITY))
        self.samples_in = 0
        """Sample frames (per channel) taken in so far."""

    def push(self, data: bytes) -> bytes:
        """Convert ``data`` (any length); returns what is ready (may be empty)."""
        data = self._rest + bytes(data)
        step = 2 * self.num_channels
        usable = len(data) - len(data) % step
        self._rest = data[usable:]
        if not usable:
            return b""
        self.samples_in += usable // step
        mono = _downmix(data[:usable], self.num_channels)
        if self._resampler is None:
            return mono
        return b"".join(bytes(frame.data) for frame in self._resampler.push(bytearray(mono)))

    def flush(self) -> bytes:
        """The resampler's tail, at the end of the input."""
        self._rest = b""
        if self._resampler is None:
            return b""
        return b"".join(bytes(frame.data) for frame in self._resampler.flush())


def _downmix(pcm: bytes, channels: int) -> bytes:
    if channels == 1:
        return pcm
    import numpy as np  # a dependency of the livekit SDK

    samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels).astype(np.int32)
    mono = np.clip(np.rint(samples.mean(axis=1)), -32768, 32767).astype("<i2")
    return mono.tobytes()
