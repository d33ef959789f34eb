"""A small energy-based voice-activity detector: finds utterances in a stream of PCM.

Pure logic (standard library only), fed with int16 mono PCM in pieces of any size; time is the
audio's own (samples fed / sample rate), never the wall clock, so it behaves the same in unit
tests on synthetic PCM and on a live microphone track.

How it decides, per block of ``block_ms`` (10 ms):

- the block's level is its RMS in dBFS (digital silence counts as -100 dBFS);
- an adaptive **noise floor** follows the level: down quickly (a quiet block is the best evidence
  of the floor), up slowly (``floor_rise_db_per_s``), in every state — so a fan that starts
  humming ends any false utterance after a few seconds and raises the thresholds, while the quiet
  gaps between words keep the floor down during real speech. The first ``warmup_ms`` only learn
  the floor (it moves quickly both ways and nothing can start);
- **hysteresis**: a block is *loud* at ``on_margin_db`` above the floor (at least
  ``min_on_dbfs``) and *voiced* at ``off_margin_db`` above it (at least ``min_off_dbfs``);
- an utterance **starts** once loud blocks add up to ``start_ms`` within a run of at most
  ``2 * start_ms`` without more than ``onset_gap_ms`` of blocks that are not even voiced in
  between (onset: the first loud block of that run). The gap is allowed because speech has
  short silences inside words: the closure before a stop consonant ("wha-t t-ime") is 20 to
  80 ms, and espeak-ng makes it digital silence; a run that such a gap reset would start the
  utterance a syllable or two late, and the recogniser would miss its first words;
- it **ends** after ``end_ms`` of blocks that are not voiced (end: the last voiced block), or
  when it reaches ``max_utterance_ms`` (then the detector waits for ``end_ms`` of silence
  before anything new can start, so one long monologue is one utterance).

Events (returned by :meth:`VoiceActivityDetector.feed`): :class:`SpeechStarted` when an
utterance starts (``start_ms`` after its onset), :class:`Utterance` when it ends, with its PCM:
``pre_roll_ms`` before the onset up to ``tail_ms`` after the last voiced block (so the
consonants at either edge survive).
"""

from __future__ import annotations

import array
import math
import operator
from collections import deque
from dataclasses import dataclass
from typing import Literal

__all__ = ["SpeechStarted", "Utterance", "VadEvent", "VadSettings", "VoiceActivityDetector", "level_dbfs"]

SILENT_DBFS = -100.0
"""The level of digital silence (and the lowest level reported)."""


def level_dbfs(samples: "array.array[int]") -> float:
    """RMS of int16 samples in dB relative to full scale, at least :data:`SILENT_DBFS`."""
    if not samples:
        return SILENT_DBFS
    mean_square = sum(map(operator.mul, samples, samples)) / len(samples)
    if mean_square <= 0:
        return SILENT_DBFS
    return max(SILENT_DBFS, 10 * math.log10(mean_square / (32768.0 * 32768.0)))


@dataclass(frozen=True)
class VadSettings:
    """Tuning of :class:`VoiceActivityDetector` (the defaults suit a browser microphone)."""

    sample_rate: int = 48_000
    block_ms: int = 10
    start_ms: int = 150
    """Loud audio needed before an utterance starts."""
    end_ms: int = 600
    """Silence that ends an utterance."""
    max_utterance_ms: int = 10_000
    """Longest utterance: a longer one is cut here (``reason`` ``"max_length"``)."""
    pre_roll_ms: int = 200
    """Audio kept from before the onset."""
    onset_gap_ms: int = 100
    """Longest unvoiced gap inside an onset run (stop closures between syllables)."""
    tail_ms: int = 200
    """Audio kept after the last voiced block (at most ``end_ms``)."""
    on_margin_db: float = 12.0
    off_margin_db: float = 6.0
    min_on_dbfs: float = -50.0
    """Nothing quieter starts an utterance, however quiet the room."""
    min_off_dbfs: float = -56.0
    floor_rise_db_per_s: float = 3.0
    floor_fall: float = 0.3
    """Fraction of the way to a quieter block's level the floor moves per block."""
    min_floor_dbfs: float = -90.0
    max_floor_dbfs: float = -20.0
    warmup_ms: int = 250

    def __post_init__(self) -> None:
        if self.sample_rate < 1000 or self.block_ms < 1:
            raise ValueError("sample_rate must be >= 1000 and block_ms >= 1")
        if self.sample_rate * self.block_ms % 1000:
            raise ValueError("block_ms must hold a whole number of samples")
        for name in ("start_ms", "end_ms", "max_utterance_ms"):
            if getattr(self, name) < self.block_ms:
                raise ValueError(f"{name} must be at least one block ({self.block_ms} ms)")
        if self.max_utterance_ms < self.start_ms:
            raise ValueError("max_utterance_ms must be >= start_ms")
        if self.on_margin_db < self.off_margin_db:
            raise ValueError("on_margin_db must be >= off_margin_db (hysteresis)")
        if min(self.pre_roll_ms, self.tail_ms, self.warmup_ms, self.onset_gap_ms) < 0:
            raise ValueError("pre_roll_ms, tail_ms, warmup_ms and onset_gap_ms must be >= 0")

    @property
    def block_samples(self) -> int:
        return self.sample_rate * self.block_ms // 1000


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """An utterance started: ``onset_s`` is where (stream time), ``at_s`` when it was decided."""

    onset_s: float
    at_s: float
    kind: Literal["start"] = "start"


@dataclass(frozen=True, slots=True)
class Utterance:
    """A finished utterance (stream times in seconds) and its audio (int16 mono, native order)."""

    pcm: bytes
    onset_s: float
    end_s: float
    """End of the last voiced block (or where it was cut, for ``max_length``)."""
    at_s: float
    """When the detector decided it was over."""
    reason: Literal["silence", "max_length", "flush"]
    sample_rate: int = 48_000
    kind: Literal["utterance"] = "utterance"

    @property
    def duration_s(self) -> float:
        """From the onset to the end of the last voiced block."""
        return self.end_s - self.onset_s

    @property
    def audio_s(self) -> float:
        """Length of :attr:`pcm` (with pre-roll and tail)."""
        return len(self.pcm) / 2 / self.sample_rate


VadEvent = SpeechStarted | Utterance


class VoiceActivityDetector:
    """Feed it PCM with :meth:`feed`; it returns :class:`SpeechStarted` / :class:`Utterance` events."""

    def __init__(self, settings: VadSettings | None = None) -> None:
        self.settings = s = settings or VadSettings()
        self._block_bytes = s.block_samples * 2
        self._block_s = s.block_ms / 1000
        self._pending = bytearray()
        self._blocks = 0
        """Blocks analysed so far (stream time = blocks * block_s)."""
        self.floor_dbfs: float | None = None
        self.last_level_dbfs = SILENT_DBFS
        self._state: Literal["idle", "speech", "capped"] = "idle"
        self._pre: deque[bytes] = deque(maxlen=math.ceil(s.pre_roll_ms / s.block_ms) + self._run_limit() + 1)
        """Recent blocks while idle: the pre-roll plus a possible onset run."""
        self._loud = 0
        self._run_start: int | None = None
        """Block index of the first loud block of the current run (idle)."""
        self._gap = 0
        """Unvoiced blocks in a row inside the current run (idle)."""
        self._onset = 0
        self._audio: list[bytes] = []
        self._audio_first = 0
        """Block index of ``_audio[0]``."""
        self._last_voiced = 0
        """Block index of the last voiced block (speech)."""
        self._silent = 0
        self._voiced_blocks = 0
        self.utterances = 0
        """Utterances started so far."""

    # ---------------------------------------------------------------------------- state

    @property
    def position_s(self) -> float:
        """Stream time analysed so far."""
        return self._blocks * self._block_s

    @property
    def in_speech(self) -> bool:
        """True inside an utterance (from its start decision until its end decision)."""
        return self._state == "speech"

    @property
    def voiced_s(self) -> float:
        """Voiced audio in the current utterance so far (0 outside one)."""
        return self._voiced_blocks * self._block_s if self._state == "speech" else 0.0

    @property
    def onset_s(self) -> float | None:
        """Onset of the current utterance, None outside one."""
        return self._onset * self._block_s if self._state == "speech" else None

    @property
    def silent_s(self) -> float:
        """Unvoiced audio since the current utterance's last voiced block (0 outside one)."""
        return self._silent * self._block_s if self._state == "speech" else 0.0

    def current(self) -> tuple[bytes, float] | None:
        """The current utterance as it would end if the silence under way lasts (``end_ms``
        reached with no voiced block in between): its audio and its ``end_s``; None outside one.
        The audio is what the :class:`Utterance` will hold once the tail is in (the demo agent
        recognises it ahead, while the detector waits out the end of the silence)."""
        if self._state != "speech":
            return None
        s = self.settings
        keep_until = min(self._blocks, self._last_voiced + 1 + math.ceil(s.tail_ms / s.block_ms))
        audio = b"".join(self._audio[: max(0, keep_until - self._audio_first)])
        return audio, (self._last_voiced + 1) * self._block_s

    def thresholds(self) -> tuple[float, float]:
        """(on, off) thresholds in dBFS for the current noise floor."""
        s = self.settings
        floor = self.floor_dbfs if self.floor_dbfs is not None else s.min_floor_dbfs
        return max(floor + s.on_margin_db, s.min_on_dbfs), max(floor + s.off_margin_db, s.min_off_dbfs)

    # --------------------------------------------------------------------------- feeding

    def feed(self, pcm: bytes | bytearray | memoryview) -> list[VadEvent]:
        """Add int16 mono PCM (native byte order, any length); returns the events it caused."""
        raw = pcm.tobytes() if isinstance(pcm, memoryview) else pcm
        self._pending += raw
        events: list[VadEvent] = []
        size = self._block_bytes
        whole = len(self._pending) - len(self._pending) % size
        for start in range(0, whole, size):
            event = self._block(bytes(self._pending[start:start + size]))
            if event is not None:
                events.append(event)
        del self._pending[:whole]
        return events

    def flush(self) -> Utterance | None:
        """The stream is over: the current utterance as it is (``reason`` ``"flush"``), if any."""
        self._pending.clear()
        if self._state != "speech":
            self._state = "idle"
            return None
        return self._finish(self._blocks, "flush", end_block=self._last_voiced + 1)

    def reset(self) -> None:
        """Forget any utterance under way (the noise floor is kept)."""
        self._pending.clear()
        self._state = "idle"
        self._audio = []
        self._pre.clear()
        self._loud = 0
        self._run_start = None
        self._gap = 0
        self._silent = 0
        self._voiced_blocks = 0

    # --------------------------------------------------------------------------- internals

    def _block(self, block: bytes) -> VadEvent | None:
        s = self.settings
        samples = array.array("h")
        samples.frombytes(block)
        level = level_dbfs(samples)
        self.last_level_dbfs = level
        index = self._blocks
        self._blocks += 1
        warming = index * s.block_ms < s.warmup_ms
        on, off = self.thresholds()
        self._track_floor(level, warming)
        loud, voiced = level >= on, level >= off

        if self._state == "idle":
            self._pre.append(block)
            if warming:
                return None
            if self._run_start is not None and index - self._run_start >= self._run_limit():
                # loud blocks too sparse to make an onset: start the run over
                self._loud, self._run_start = 0, None
            if loud:
                if self._run_start is None:
                    self._run_start = index
                self._loud += 1
            if voiced:
                self._gap = 0
            else:
                self._gap += 1
                if self._gap * s.block_ms > s.onset_gap_ms:
                    self._loud = 0
                    self._run_start = None
            if self._loud * s.block_ms >= s.start_ms and self._run_start is not None:
                return self._start(index)
            return None

        if self._state == "capped":
            self._silent = 0 if voiced else self._silent + 1
            if self._silent * s.block_ms >= s.end_ms:
                self._state = "idle"
                self._silent = 0
                self._pre.clear()
            return None

        # in speech
        self._audio.append(block)
        if voiced:
            self._last_voiced = index
            self._silent = 0
            self._voiced_blocks += 1
        else:
            self._silent += 1
        if self._silent * s.block_ms >= s.end_ms:
            return self._finish(self._blocks, "silence", end_block=self._last_voiced + 1)
        if (self._blocks - self._onset) * s.block_ms >= s.max_utterance_ms:
            return self._finish(self._blocks, "max_length", end_block=self._blocks)
        return None

    def _run_limit(self) -> int:
        """Blocks an onset run may span: twice ``start_ms``."""
        return 2 * math.ceil(self.settings.start_ms / self.settings.block_ms)

    def _track_floor(self, level: float, warming: bool) -> None:
        s = self.settings
        if self.floor_dbfs is None:
            floor = level
        elif level < self.floor_dbfs or warming:
            floor = self.floor_dbfs + (level - self.floor_dbfs) * (0.5 if warming else s.floor_fall)
        else:
            floor = self.floor_dbfs + min(level - self.floor_dbfs, s.floor_rise_db_per_s * self._block_s)
        self.floor_dbfs = min(s.max_floor_dbfs, max(s.min_floor_dbfs, floor))

    def _start(self, index: int) -> SpeechStarted:
        s = self.settings
        assert self._run_start is not None
        self._onset = self._run_start
        pre_blocks = math.ceil(s.pre_roll_ms / s.block_ms)
        first = max(0, self._onset - pre_blocks, index + 1 - len(self._pre))
        kept = list(self._pre)[len(self._pre) - (index + 1 - first):]
        self._audio = kept
        self._audio_first = first
        self._state = "speech"
        self._last_voiced = index
        self._silent = 0
        self._voiced_blocks = self._loud  # the run's loud blocks (blocks between off and on not counted)
        self._loud = 0
        self._run_start = None
        self._gap = 0
        self._pre.clear()
        self.utterances += 1
        return SpeechStarted(self._onset * self._block_s, self._blocks * self._block_s)

    def _finish(self, now_block: int, reason: Literal["silence", "max_length", "flush"], *,
                end_block: int) -> Utterance:
        s = self.settings
        keep_until = min(now_block, end_block + math.ceil(s.tail_ms / s.block_ms)) if reason != "max_length" \
            else now_block
        audio = b"".join(self._audio[: max(0, keep_until - self._audio_first)])
        utterance = Utterance(audio, self._onset * self._block_s, end_block * self._block_s,
                              now_block * self._block_s, reason, s.sample_rate)
        self._audio = []
        self._voiced_blocks = 0
        self._silent = 0
        self._state = "capped" if reason == "max_length" else "idle"
        return utterance
