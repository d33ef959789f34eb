"""Mouth shapes (visemes) from timed phonemes, one per 40 ms frame.

A small viseme set is enough for a face this simple:

========  ==========================  ===================================================
viseme    phonemes (IPA, first sound)  mouth
========  ==========================  ===================================================
closed    m b p                        lips pressed together, jaw shut
teeth     f v                          lower lip tucked under the upper teeth
rounded   u o ɔ ʊ ɒ w y ʏ ø œ          lips rounded and pushed forward, narrow
spread    i e ɪ ɛ j æ (front vowels)   lip corners drawn back, wide and thin
open      a ɑ ɐ ʌ                      jaw wide open
mid       ə ɜ ɚ ɘ ɵ                    a relaxed half-open mouth
other     every other consonant        a little open; the lips follow the vowels around it
========  ==========================  ===================================================

:func:`viseme_frames` turns a phoneme timeline (:class:`avatar_worker.tts.Phoneme`) into one
:class:`MouthShape` per frame: the shapes of the phonemes heard in the frame's window, weighted by
how long each is heard there. The window looks :data:`LEAD_MS` ahead, because lips move towards a
sound before it is heard (anticipatory coarticulation), and a lip closure (m, b, p) that is heard
in a frame wins it, so a short closure is never averaged away. Consonants without a lip shape of
their own weigh less on the lips (:data:`CONSONANT_LIP_WEIGHT`), so the vowels around them shape
the mouth, as in speech. A diphthong (``aɪ``, ``əʊ``) moves from its first vowel to its second.
The frame-to-frame smoothing and the loudness gate are in
:class:`avatar_worker.motion_gen.MotionGenerator`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from avatarplayer.constants import FRAME_INTERVAL_MS

__all__ = ["CONSONANT_LIP_WEIGHT", "LEAD_MS", "MouthShape", "Viseme", "SHAPES", "viseme_of", "viseme_frames"]


class Viseme(str, Enum):
    REST = "rest"
    CLOSED = "closed"
    TEETH = "teeth"
    ROUNDED = "rounded"
    SPREAD = "spread"
    OPEN = "open"
    MID = "mid"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class MouthShape:
    """A mouth, each value 0..1: ``jaw`` opening, lip ``rounding`` (pucker, protrusion), lip
    ``spread`` (corners back), lip ``press`` (closed, pressed) and lower-lip ``tuck`` (under the
    upper teeth)."""

    jaw: float = 0.0
    rounding: float = 0.0
    spread: float = 0.0
    press: float = 0.0
    tuck: float = 0.0

    def scaled(self, w: float) -> MouthShape:
        return MouthShape(self.jaw * w, self.rounding * w, self.spread * w, self.press * w, self.tuck * w)

    def plus(self, other: MouthShape) -> MouthShape:
        return MouthShape(self.jaw + other.jaw, self.rounding + other.rounding, self.spread + other.spread,
                          self.press + other.press, self.tuck + other.tuck)


SHAPES: dict[Viseme, MouthShape] = {
    Viseme.REST: MouthShape(),
    Viseme.CLOSED: MouthShape(jaw=0.0, press=1.0),
    Viseme.TEETH: MouthShape(jaw=0.12, tuck=1.0),
    Viseme.ROUNDED: MouthShape(jaw=0.35, rounding=1.0),
    Viseme.SPREAD: MouthShape(jaw=0.3, spread=1.0),
    Viseme.OPEN: MouthShape(jaw=0.9, spread=0.15),
    Viseme.MID: MouthShape(jaw=0.45),
    Viseme.OTHER: MouthShape(jaw=0.2),
}
"""What each viseme does to the mouth (docs/wire-format.md, "Mouth shapes", has the FLAME values)."""

LEAD_MS = 20.0
"""A frame's window starts this much after the frame's start: the lips anticipate the sound."""

CONSONANT_LIP_WEIGHT = 0.35
"""How much a consonant without a lip shape of its own (``other``) weighs against the vowels."""

_CLOSED, _TEETH = set("mbpɱ"), set("fv")
_ROUNDED = set("uoɔʊɒwyʏøœɞʉ")
_SPREAD = set("ieɪɛjæɨ")
_OPEN = set("aɑɐʌɶ")
_MID = set("əɜɚɘɵ")
_MARKS = str.maketrans("", "", "ˈˌːˑ̃ʲʰ")


def _single(sound: str) -> Viseme:
    if sound in _CLOSED:
        return Viseme.CLOSED
    if sound in _TEETH:
        return Viseme.TEETH
    if sound in _ROUNDED:
        return Viseme.ROUNDED
    if sound in _SPREAD:
        return Viseme.SPREAD
    if sound in _OPEN:
        return Viseme.OPEN
    if sound in _MID:
        return Viseme.MID
    return Viseme.OTHER


def viseme_of(symbol: str) -> list[Viseme]:
    """The visemes one phoneme passes through: one, or two for a diphthong (``aɪ`` → open,
    spread). ``_`` (a pause) and an empty symbol are ``rest``."""
    sounds = symbol.translate(_MARKS)
    if not sounds or sounds.startswith("_"):
        return [Viseme.REST]
    first = _single(sounds[0])
    vowels = [_single(c) for c in sounds[1:] if _single(c) not in (Viseme.OTHER,)]
    if first in (Viseme.ROUNDED, Viseme.SPREAD, Viseme.OPEN, Viseme.MID) and vowels and vowels[-1] is not first:
        return [first, vowels[-1]]
    return [first]


class _Timed(Protocol):
    symbol: str
    start_ms: float
    end_ms: float


def _segments(phonemes: Sequence[_Timed]) -> list[tuple[float, float, Viseme]]:
    out: list[tuple[float, float, Viseme]] = []
    for p in phonemes:
        if p.end_ms <= p.start_ms:
            continue
        visemes = viseme_of(p.symbol)
        step = (p.end_ms - p.start_ms) / len(visemes)
        for k, viseme in enumerate(visemes):
            out.append((p.start_ms + k * step, p.start_ms + (k + 1) * step, viseme))
    return out


def viseme_frames(phonemes: Sequence[_Timed], frames: int, *, frame_ms: float = FRAME_INTERVAL_MS,
                  lead_ms: float = LEAD_MS) -> list[MouthShape | None]:
    """One target :class:`MouthShape` per frame (frame ``i`` covers ``[i, i + 1) × frame_ms`` of
    the audio) for ``frames`` frames; ``None`` for a frame in which no phoneme is heard (there the
    jaw follows the loudness: e.g. a recording joined after synthesized speech)."""
    segments = _segments(phonemes)
    out: list[MouthShape | None] = []
    j = 0
    for i in range(frames):
        lo = i * frame_ms + lead_ms
        hi = lo + frame_ms
        while j < len(segments) and segments[j][1] <= lo:
            j += 1
        lips = MouthShape()
        lip_weight = 0.0
        jaw = 0.0
        covered = 0.0
        closure = 0.0
        k = j
        while k < len(segments) and segments[k][0] < hi:
            start, end, viseme = segments[k]
            overlap = min(end, hi) - max(start, lo)
            k += 1
            if overlap <= 0:
                continue
            share = overlap / frame_ms
            shape = SHAPES[viseme]
            covered += share
            jaw += shape.jaw * share
            if viseme is Viseme.CLOSED:
                closure = max(closure, share)
            weight = share * (CONSONANT_LIP_WEIGHT if viseme is Viseme.OTHER else 1.0)
            lips = lips.plus(shape.scaled(weight))
            lip_weight += weight
        if covered <= 0.0:
            out.append(None)
            continue
        lips = lips.scaled(1.0 / lip_weight) if lip_weight > 0 else MouthShape()
        shape = MouthShape(jaw / covered, lips.rounding, lips.spread, lips.press, lips.tuck)
        if closure >= 0.25:  # a closure heard in this frame: the lips meet, whatever is around it
            shape = MouthShape(0.0, 0.5 * shape.rounding, 0.5 * shape.spread, 1.0, 0.0)
        out.append(shape)
    return out
