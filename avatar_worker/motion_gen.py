"""FLAME poses generated from speech, one per 40 ms frame.

Not a learned audio-to-face model: a small procedural animator that is good enough to see that
audio and motion line up and that the avatar is alive.

- jaw opening follows the audio loudness envelope (fast attack, slower release, like a mouth);
- or, for synthesized speech whose phonemes are known, the mouth takes the shape of each sound
  (visemes, :mod:`avatar_worker.visemes`): closed for m/b/p, teeth on the lip for f/v, rounded
  for o/u/w, spread for i/e, open for a, smoothed from frame to frame and gated by the loudness
  (a pause inside a phoneme's time relaxes the mouth);
- natural blinks every 2–5 s (sometimes a double blink) on the eyelids;
- slow head and neck sway from incommensurate sines, plus small nods on speech onsets;
- gaze that holds a point for a while and then jumps (saccades), partly counter-rotating the head.

Everything is deterministic for a given seed, and the generator keeps its state (time, blink and
gaze timers) across calls, so consecutive turns and the idle time between them flow into each
other.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from avatarplayer.constants import FRAME_RATE
from avatarplayer.wire.messages import FLAME_FIELDS

from .visemes import MouthShape

__all__ = ["EXPRESSION_ROUNDING", "EXPRESSION_SPREAD", "EXPRESSION_PRESS", "EXPRESSION_TUCK",
           "MotionGenerator", "Pose", "neutral_pose"]

Pose = dict[str, list[float]]
"""FLAME parameter name → floats, as taken by :func:`avatarplayer.wire.messages.build_message`."""

_BLINK = (0.35, 0.85, 1.0, 0.7, 0.35, 0.1)
"""Eyelid closure over one blink (0 open .. 1 closed): closing is quicker than opening."""

_JAW_MAX = 0.32
"""Radians of jaw opening at full loudness (FLAME jaw_pose x)."""


EXPRESSION_ROUNDING = -0.6
"""``expression[1]`` per unit of lip rounding (negative rounds the lips; the face reads
``pucker = -1.6 * expression[1]``)."""
EXPRESSION_SPREAD, EXPRESSION_PRESS, EXPRESSION_TUCK = 4, 5, 6
"""The ``expression`` components that carry lip spread, lip press and lower-lip tuck, 0..1 each
(docs/wire-format.md, "Mouth shapes")."""

_MOUTH_RATE = 0.6
"""Per frame, how far the mouth moves towards its viseme target (a closure moves faster)."""
_PRESS_RATE = 0.85


def neutral_pose() -> Pose:
    """Every FLAME parameter present and zero (mouth closed, eyes open, looking ahead)."""
    return {name: [0.0] * size for name, size in FLAME_FIELDS.items()}


class MotionGenerator:
    """Stateful procedural animator; call :meth:`poses` for speech and :meth:`idle` for silence."""

    def __init__(self, seed: int = 0, *, frame_rate: int = FRAME_RATE) -> None:
        self._rng = random.Random(seed)
        self._fps = frame_rate
        self._t = 0
        self._jaw = 0.0
        self._prev_level = 0.0
        self._nod = 0.0
        self._mouth = MouthShape()
        phases = [self._rng.uniform(0, 2 * math.pi) for _ in range(6)]
        self._phases = phases
        self._blink_at = self._next_blink_gap()
        self._blink_frame = -1
        self._gaze = (0.0, 0.0)
        self._gaze_target = (0.0, 0.0)
        self._gaze_until = self._seconds(self._rng.uniform(0.8, 2.5))

    def _seconds(self, s: float) -> int:
        return max(1, round(s * self._fps))

    def _next_blink_gap(self) -> int:
        return self._seconds(self._rng.uniform(2.0, 5.0))

    def poses(self, levels: Sequence[float], mouths: Sequence[MouthShape | None] | None = None) -> list[Pose]:
        """One pose per loudness level (0..1, e.g. from :func:`avatar_worker.audio.pcm.envelope`);
        with ``mouths`` (one viseme target per level, :func:`avatar_worker.visemes.viseme_frames`)
        the mouth takes their shapes instead of following the loudness alone (where a target is
        ``None``, it follows the loudness)."""
        if mouths is None:
            return [self.step(level) for level in levels]
        if len(mouths) != len(levels):
            raise ValueError(f"{len(mouths)} mouth shapes for {len(levels)} levels")
        return [self.step(level, mouth) for level, mouth in zip(levels, mouths)]

    def idle(self, frames: int = 1) -> list[Pose]:
        """Poses for ``frames`` silent frames: mouth settles, blinks and sway continue."""
        return [self.step(0.0) for _ in range(frames)]

    def step(self, level: float, mouth: MouthShape | None = None) -> Pose:
        """Advance one frame with loudness ``level`` (and the viseme target ``mouth``, if the
        phonemes are known) and return its pose."""
        level = min(1.0, max(0.0, level))
        t = self._t / self._fps
        self._t += 1

        if mouth is None:
            # A mouth opens faster than it closes; smoothing also hides the 40 ms envelope steps.
            rate = 0.65 if level > self._jaw else 0.35
            self._jaw += (level - self._jaw) * rate
            self._mouth = MouthShape(jaw=self._jaw)
        else:
            self._shape_mouth(level, mouth)
        jaw_open = _JAW_MAX * self._jaw

        onset = max(0.0, level - self._prev_level)
        self._prev_level = level
        self._nod = self._nod * 0.85 + 0.05 * onset
        p = self._phases
        pitch = 0.025 * math.sin(2 * math.pi * 0.21 * t + p[0]) + self._nod + 0.02 * self._jaw
        yaw = 0.045 * math.sin(2 * math.pi * 0.13 * t + p[1]) + 0.015 * math.sin(2 * math.pi * 0.47 * t + p[2])
        roll = 0.018 * math.sin(2 * math.pi * 0.17 * t + p[3])
        neck = [0.4 * pitch + 0.01 * math.sin(2 * math.pi * 0.09 * t + p[4]),
                0.3 * yaw,
                0.5 * roll + 0.006 * math.sin(2 * math.pi * 0.23 * t + p[5])]

        pose = neutral_pose()
        pose["rotation"] = [pitch, yaw, roll]
        pose["neck_pose"] = neck
        pose["jaw_pose"] = [jaw_open, 0.0, 0.0]
        pose["eye_lid"] = self._eyelids()
        pose["eye_pose"] = self._eyes(yaw, pitch)
        expression = pose["expression"]
        # The leading FLAME expression components carry most mouth shape; move them with the jaw
        # so the lips are not frozen while the jaw opens.
        expression[0] = 1.2 * self._jaw
        expression[2] = 0.3 * onset
        expression[3] = 0.15 * math.sin(2 * math.pi * 0.07 * t + p[1])
        if mouth is None:
            expression[1] = -0.4 * self._jaw + 0.1 * math.sin(2 * math.pi * 0.3 * t + p[2])
        else:
            m = self._mouth
            expression[1] = EXPRESSION_ROUNDING * m.rounding
            expression[EXPRESSION_SPREAD] = m.spread
            expression[EXPRESSION_PRESS] = m.press
            expression[EXPRESSION_TUCK] = m.tuck
        return pose

    def _shape_mouth(self, level: float, target: MouthShape) -> None:
        """Move the mouth towards ``target``: jaw, rounding, spread and tuck are gated by the
        loudness (espeak-ng counts a pause as part of the phoneme before it: there the mouth
        relaxes), the press is not (a b or p closure is silent)."""
        gate = min(1.0, 0.1 + 2.0 * level)
        m = self._mouth
        a = _MOUTH_RATE

        def towards(now: float, goal: float, rate: float = a) -> float:
            return now + (goal - now) * rate

        self._mouth = m = MouthShape(
            jaw=towards(m.jaw, target.jaw * gate * (0.8 + 0.2 * level)),
            rounding=towards(m.rounding, target.rounding * gate),
            spread=towards(m.spread, target.spread * gate),
            press=towards(m.press, target.press, _PRESS_RATE),
            tuck=towards(m.tuck, target.tuck * gate, _PRESS_RATE),
        )
        self._jaw = m.jaw * (1.0 - m.press)

    def _eyelids(self) -> list[float]:
        if self._blink_frame < 0:
            self._blink_at -= 1
            if self._blink_at <= 0:
                self._blink_frame = 0
        if self._blink_frame < 0:
            return [0.0, 0.0]
        closure = _BLINK[self._blink_frame]
        self._blink_frame += 1
        if self._blink_frame >= len(_BLINK):
            self._blink_frame = -1
            # one blink in ten is a double blink
            self._blink_at = 2 if self._rng.random() < 0.1 else self._next_blink_gap()
        return [closure, closure]

    def _eyes(self, head_yaw: float, head_pitch: float) -> list[float]:
        self._gaze_until -= 1
        if self._gaze_until <= 0:
            # mostly near the camera, now and then a glance aside
            spread = 0.15 if self._rng.random() < 0.25 else 0.05
            self._gaze_target = (self._rng.uniform(-spread, spread) * 0.5, self._rng.uniform(-spread, spread))
            self._gaze_until = self._seconds(self._rng.uniform(0.6, 2.8))
        # a saccade takes ~2 frames rather than teleporting
        gp, gy = self._gaze
        tp, ty = self._gaze_target
        self._gaze = (gp + (tp - gp) * 0.6, gy + (ty - gy) * 0.6)
        eye_pitch = self._gaze[0] - 0.5 * head_pitch
        eye_yaw = self._gaze[1] - 0.6 * head_yaw
        return [eye_pitch, eye_yaw, 0.0, eye_pitch, eye_yaw, 0.0]
