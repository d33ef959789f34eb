"""FLAME poses generated from speech, one per 40 ms frame.

Not a learned audio-to-face model: a small procedural animator that is good enough to see that
audio and motion line up and that the avatar is alive.

- jaw opening follows the audio loudness envelope (fast attack, slower release, like a mouth);
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

__all__ = ["MotionGenerator", "Pose", "neutral_pose"]

Pose = dict[str, list[float]]
"""FLAME parameter name → floats, as taken by :func:`avatarplayer.wire.messages.build_message`."""

_BLINK = (0.35, 0.85, 1.0, 0.7, 0.35, 0.1)
"""Eyelid closure over one blink (0 open .. 1 closed): closing is quicker than opening."""

_JAW_MAX = 0.32
"""Radians of jaw opening at full loudness (FLAME jaw_pose x)."""


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

    def poses(self, levels: Sequence[float]) -> list[Pose]:
        """One pose per loudness level (0..1, e.g. from :func:`avatar_worker.audio.pcm.envelope`)."""
        return [self.step(level) for level in levels]

    def idle(self, frames: int = 1) -> list[Pose]:
        """Poses for ``frames`` silent frames: mouth settles, blinks and sway continue."""
        return [self.step(0.0) for _ in range(frames)]

    def step(self, level: float) -> Pose:
        """Advance one frame with loudness ``level`` and return its pose."""
        level = min(1.0, max(0.0, level))
        t = self._t / self._fps
        self._t += 1

        # A mouth opens faster than it closes; smoothing also hides the 40 ms envelope steps.
        rate = 0.65 if level > self._jaw else 0.35
        self._jaw += (level - self._jaw) * rate
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
        expression[1] = -0.4 * self._jaw + 0.1 * math.sin(2 * math.pi * 0.3 * t + p[2])
        expression[2] = 0.3 * onset
        expression[3] = 0.15 * math.sin(2 * math.pi * 0.07 * t + p[1])
        return pose

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
