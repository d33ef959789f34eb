# Over 400 lines: one model (pose, idle, director, stats) whose parts share the pose and its easing.
"""The reference face renderer's pure logic: FLAME values → a small face pose, the idle animation,
and the blends between idle and a turn. No browser here: :mod:`avatarplayer.face.painter` draws a
pose, :mod:`avatarplayer.face.canvas` puts it on the page.

- :class:`FacePose` – what the drawing needs, in a few normalized numbers.
- :func:`pose_from_flame` / :func:`pose_from_message` – one FLAME keyframe (or a serialized
  ``Message``, decoded with :func:`avatarplayer.wire.messages.parse_message`) → :class:`FacePose`.
- :class:`IdleAnimator` – breathing, natural blinks, small saccades and head sway, as a function of
  time: what the face does when no turn plays.
- :class:`FaceDirector` – the state machine ``idle → blend-in → turn → blend-out → idle``, driven by
  the player's hooks and a clock (injectable, milliseconds), returning the pose to show now.

``google.protobuf`` is imported on the first decode only, so everything else here runs without it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from ..constants import FRAME_INTERVAL_MS, STALL_TIMEOUT_MS

__all__ = [
    "FacePose",
    "FaceDirector",
    "FaceStats",
    "IdleAnimator",
    "load_decoder",
    "Mode",
    "JAW_FULL_OPEN",
    "GAZE_FULL",
    "blend_frames",
    "lerp_pose",
    "pose_from_flame",
    "pose_from_message",
]

JAW_FULL_OPEN = 0.32
"""Radians of ``jaw_pose[0]`` drawn as a fully open mouth (the avatar worker's loudest frame)."""

GAZE_FULL = 0.25
"""Radians of eyeball rotation drawn as the iris at the edge of its travel."""

_LEAN = 0.35
"""How much of ``neck_pose`` adds to ``rotation`` for the drawn head (the neck bends less)."""


def _clamp(value: float, low: float = -1.0, high: float = 1.0) -> float:
    return low if value < low else high if value > high else value


def _ease(u: float) -> float:
    """Smoothstep: blends start and end at rest."""
    if u <= 0.0:
        return 0.0
    if u >= 1.0:
        return 1.0
    return u * u * (3.0 - 2.0 * u)


# ------------------------------------------------------------------------------------ the pose


@dataclass(slots=True)
class FacePose:
    """One drawn face. Head angles are radians with FLAME's signs; the rest is normalized.

    Screen directions are the viewer's: the subject's left eye is drawn on the right.
    """

    jaw: float = 0.0
    """Mouth opening, 0 closed .. 1 fully open."""
    blink_left: float = 0.0
    """Subject's left eyelid (drawn on the right), 0 open .. 1 closed."""
    blink_right: float = 0.0
    gaze_x: float = 0.0
    """-1 .. 1, + looks towards the viewer's right."""
    gaze_y: float = 0.0
    """-1 .. 1, + looks down."""
    pitch: float = 0.0
    """Head nod, + chin down."""
    yaw: float = 0.0
    """Head turn, + towards the viewer's right."""
    roll: float = 0.0
    """Head tilt, + top of the head towards the viewer's left."""
    smile: float = 0.0
    """Lip corners, -1 down .. 1 up."""
    pucker: float = 0.0
    """Lips drawn together (narrower, rounder mouth), 0 .. 1."""
    brow: float = 0.0
    """Brows, -1 lowered .. 1 raised."""
    breath: float = 0.0
    """Chest and shoulders, 0 exhaled .. 1 inhaled."""
    spread: float = 0.0
    """Lip corners drawn back (a wide, thin mouth: i, e), 0 .. 1."""
    press: float = 0.0
    """Lips pressed together (m, b, p), 0 .. 1."""
    tuck: float = 0.0
    """Lower lip tucked under the upper teeth (f, v), 0 .. 1."""

    @property
    def blink(self) -> float:
        """The more closed eyelid."""
        return max(self.blink_left, self.blink_right)


_POSE_FIELDS = tuple(f.name for f in fields(FacePose))


def lerp_pose(a: FacePose, b: FacePose, w: float) -> FacePose:
    """``a`` at ``w`` = 0, ``b`` at ``w`` = 1."""
    if w <= 0.0:
        return FacePose(*(getattr(a, n) for n in _POSE_FIELDS))
    if w >= 1.0:
        return FacePose(*(getattr(b, n) for n in _POSE_FIELDS))
    return FacePose(*(getattr(a, n) + (getattr(b, n) - getattr(a, n)) * w for n in _POSE_FIELDS))


def _at(values: Sequence[float], index: int) -> float:
    """``values[index]``, or 0 when missing or not finite (a NaN would break the drawing)."""
    if len(values) <= index:
        return 0.0
    value = float(values[index])
    return value if math.isfinite(value) else 0.0


def pose_from_flame(flame: Mapping[str, Sequence[float]], *, jaw_full_open: float = JAW_FULL_OPEN) -> FacePose:
    """One FLAME keyframe (parameter name → floats, as :func:`~avatarplayer.wire.messages.parse_message`
    gives them) → :class:`FacePose`. Missing or short parameters count as zero; values are clamped.

    Mapping: mouth from ``jaw_pose[0]``; eyelids from ``eye_lid``; gaze from ``eye_pose`` (both eyes
    averaged); head from ``rotation`` plus a part of ``neck_pose``. The leading ``expression``
    components are read the way the avatar worker drives them: ``[3]`` a slow mood (lip corners),
    ``[1]`` negative for rounded lips (pucker), ``[2]`` speech onsets (brows lift), and the mouth
    shapes of phonemes (visemes): ``[4]`` lip spread, ``[5]`` lip press, ``[6]`` lower-lip tuck,
    0..1 each (docs/wire-format.md, "Mouth shapes").
    """
    empty: Sequence[float] = ()
    jaw = flame.get("jaw_pose", empty)
    lids = flame.get("eye_lid", empty)
    eyes = flame.get("eye_pose", empty)
    rotation = flame.get("rotation", empty)
    neck = flame.get("neck_pose", empty)
    expression = flame.get("expression", empty)
    lid_left = _at(lids, 0)
    lid_right = _at(lids, 1) if len(lids) > 1 else lid_left
    if len(eyes) >= 6:
        eye_pitch, eye_yaw = (_at(eyes, 0) + _at(eyes, 3)) * 0.5, (_at(eyes, 1) + _at(eyes, 4)) * 0.5
    else:
        eye_pitch, eye_yaw = _at(eyes, 0), _at(eyes, 1)
    e0, e1, e2, e3, e4, e5, e6 = (_at(expression, i) for i in range(7))
    return FacePose(
        jaw=_clamp(_at(jaw, 0) / jaw_full_open, 0.0, 1.0),
        blink_left=_clamp(lid_left, 0.0, 1.0),
        blink_right=_clamp(lid_right, 0.0, 1.0),
        gaze_x=_clamp(eye_yaw / GAZE_FULL),
        gaze_y=_clamp(eye_pitch / GAZE_FULL),
        pitch=_clamp(_at(rotation, 0) + _LEAN * _at(neck, 0), -0.6, 0.6),
        yaw=_clamp(_at(rotation, 1) + _LEAN * _at(neck, 1), -0.8, 0.8),
        roll=_clamp(_at(rotation, 2) + _LEAN * _at(neck, 2), -0.6, 0.6),
        smile=_clamp(2.5 * e3 + 0.2 * e0),
        pucker=max(0.0, min(1.0, -1.6 * e1)),
        brow=_clamp(3.0 * e2 + 0.25 * e0),
        spread=_clamp(e4, 0.0, 1.0),
        press=_clamp(e5, 0.0, 1.0),
        tuck=_clamp(e6, 0.0, 1.0),
    )


_parse_message: Callable[[bytes], dict[str, Any]] | None = None


def load_decoder() -> Callable[[bytes], dict[str, Any]]:
    """Import the ``Message`` decoder (:func:`avatarplayer.wire.messages.parse_message`: protobuf,
    and the schema built at import), once. It is imported on first use, so this module imports
    without protobuf; a renderer calls this when it is made, because in Pyodide the import blocks
    the page for about 0.3 s, and on the first frame of the first turn that stall made the player
    drop the frames that arrived meanwhile."""
    global _parse_message
    if _parse_message is None:
        from ..wire.messages import parse_message

        _parse_message = parse_message
    return _parse_message


def pose_from_message(data: bytes | bytearray | memoryview, *, jaw_full_open: float = JAW_FULL_OPEN) -> FacePose | None:
    """Decode a serialized ``Message`` and return the pose of its last keyframe, or None when it
    carries no keyframe. Raises ``ValueError`` for bytes that are not a ``Message``."""
    keyframes = load_decoder()(data)["keyframes"]
    if not keyframes:
        return None
    return pose_from_flame(keyframes[-1], jaw_full_open=jaw_full_open)


# ------------------------------------------------------------------------------------ idle


_BLINK_S = 0.26
"""One blink: closing takes about a third of it, opening the rest."""


def _blink_curve(u: float) -> float:
    """Eyelid closure at ``u`` (0..1) through one blink."""
    if u < 0.0 or u >= 1.0:
        return 0.0
    if u < 0.35:
        return _ease(u / 0.35)
    return 1.0 - _ease((u - 0.35) / 0.65)


class IdleAnimator:
    """What the face does between turns: breathing, blinks every 2–6 s (now and then a double
    blink), the gaze holding a point and jumping to the next, a slow small head sway.

    :meth:`pose` takes time in seconds; call it with times that do not go backwards. Deterministic
    for a given ``seed``.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._phases = [self._rng.uniform(0.0, 2.0 * math.pi) for _ in range(6)]
        self._t = 0.0
        self._started = False
        self._blink_at = 0.0
        self._gaze_from = (0.0, 0.0)
        self._gaze_to = (0.0, 0.0)
        self._gaze_at = 0.0
        self._gaze_next = 0.0

    def _schedule(self, t: float) -> None:
        self._blink_at = t + self._rng.uniform(1.0, 3.0)
        self._gaze_at = t
        self._gaze_next = t + self._rng.uniform(0.6, 2.0)

    def pose(self, t: float) -> FacePose:
        """The idle pose at ``t`` seconds. A clock that steps back holds the pose; after a gap
        of over 2 s the blinks and glances are scheduled afresh."""
        if not self._started:
            self._started = True
            self._schedule(t)
        elif t < self._t:
            t = self._t  # a clock that stepped back: hold, never replay the schedule
        elif t - self._t > 2.0:
            self._schedule(t)  # a long gap (a hidden tab): start afresh rather than catch up
        self._t = t

        # blinks
        if t >= self._blink_at + _BLINK_S:
            double = self._rng.random() < 0.12
            self._blink_at = t + (0.12 if double else self._rng.uniform(2.0, 6.0))
        closure = _blink_curve((t - self._blink_at) / _BLINK_S)

        # gaze: hold, then a ~70 ms saccade to a new point (mostly near the viewer)
        if t >= self._gaze_next:
            wide = self._rng.random() < 0.25
            spread = 0.55 if wide else 0.22
            self._gaze_from = self._gaze_now(t)
            self._gaze_to = (self._rng.uniform(-spread, spread), self._rng.uniform(-spread, spread) * 0.6)
            self._gaze_at = t
            self._gaze_next = t + self._rng.uniform(0.7, 3.0)
        gaze_x, gaze_y = self._gaze_now(t)

        p = self._phases
        tau = 2.0 * math.pi * t
        breath = 0.5 - 0.5 * math.cos(tau / 4.2 + p[5])
        pitch = 0.018 * math.sin(tau * 0.11 + p[0]) + 0.01 * (breath - 0.5)
        yaw = 0.04 * math.sin(tau * 0.07 + p[1]) + 0.012 * math.sin(tau * 0.19 + p[2])
        roll = 0.022 * math.sin(tau * 0.09 + p[3])
        return FacePose(
            jaw=0.02 + 0.015 * breath,  # lips at rest, a hair apart
            blink_left=closure,
            blink_right=closure,
            gaze_x=gaze_x - 0.4 * yaw / GAZE_FULL,  # eyes partly counter-rotate the head
            gaze_y=gaze_y,
            pitch=pitch,
            yaw=yaw,
            roll=roll,
            smile=0.18 + 0.08 * math.sin(tau * 0.05 + p[4]),
            pucker=0.0,
            brow=0.05 * math.sin(tau * 0.08 + p[2]) + 0.15 * max(0.0, gaze_y * -1.0),
            breath=breath,
        )

    def _gaze_now(self, t: float) -> tuple[float, float]:
        u = min(1.0, (t - self._gaze_at) / 0.07)
        (x0, y0), (x1, y1) = self._gaze_from, self._gaze_to
        return x0 + (x1 - x0) * u, y0 + (y1 - y0) * u


# ------------------------------------------------------------------------------------ the state machine


class Mode(str, Enum):
    """What :class:`FaceDirector` shows: idle, a blend into a turn, the turn, a blend back to idle."""

    IDLE = "idle"
    BLEND_IN = "blend-in"
    TURN = "turn"
    BLEND_OUT = "blend-out"


def blend_frames(name: str, value: Any, *, low: int = 0, high: int = 500) -> int:
    """Validate a blend length in frames (40 ms each); bad values raise naming the option."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number of frames, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be within {low}..{high} frames, got {value!r}")
    return value


class FaceDirector:
    """Which pose is shown: the idle animation, a turn's frames, or a blend between them.

    The player's hooks drive it (:meth:`transition`, :meth:`turn_started`, :meth:`frame`,
    :meth:`turn_ended`, :meth:`stalled`); :meth:`pose` returns the pose to draw at the clock's
    current time and moves the blends along. Blends are timed (``frames`` × 40 ms) and eased, and
    start from whatever was shown last, so a turn that starts while the face is still blending
    out does not jump.

    ``clock`` returns milliseconds (any origin, never going backwards).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        idle: IdleAnimator | None = None,
        blend_in_frames: int = 8,
        blend_out_frames: int = 40,
        disconnect_blend_frames: int = 12,
        stall_timeout_ms: float = STALL_TIMEOUT_MS,
    ) -> None:
        self.blend_in_ms = blend_frames("blend_in_frames", blend_in_frames) * FRAME_INTERVAL_MS
        self.blend_out_ms = blend_frames("blend_out_frames", blend_out_frames) * FRAME_INTERVAL_MS
        self.disconnect_blend_ms = blend_frames("disconnect_blend_frames", disconnect_blend_frames) * FRAME_INTERVAL_MS
        self._clock = clock
        self._idle = idle or IdleAnimator()
        self._stall_timeout_ms = stall_timeout_ms
        self.mode = Mode.IDLE
        self.conversation_id: str | None = None
        self.turns = 0
        self._target: FacePose | None = None  # the latest turn pose (or the TRANSITION's)
        self._shown = FacePose()
        self._from: FacePose | None = None  # None: blend from the live idle pose
        self._blend_start = 0.0
        self._blend_ms = 0.0
        self._last_frame_ms: float | None = None

    # -- hooks ---------------------------------------------------------------------------

    def transition(self, pose: FacePose | None) -> None:
        """A TRANSITION packet: blend from idle towards ``pose`` (the turn's first frame)."""
        if self.mode in (Mode.IDLE, Mode.BLEND_OUT):
            self._target = pose
            self._begin(Mode.BLEND_IN, self.blend_in_ms)
        elif self.mode is Mode.BLEND_IN and pose is not None and self._last_frame_ms is None:
            self._target = pose

    def turn_started(self, conversation_id: str) -> None:
        """A turn begins: counted; from idle or a blend out, the blend into it starts."""
        self.conversation_id = conversation_id
        self.turns += 1
        if self.mode in (Mode.IDLE, Mode.BLEND_OUT):
            self._target = None
            self._begin(Mode.BLEND_IN, self.blend_in_ms)

    def frame(self, pose: FacePose, conversation_id: str | None = None) -> None:
        """A decoded turn frame, at render time."""
        now = self._clock()
        if conversation_id and conversation_id != self.conversation_id:
            if self.conversation_id is None or self.mode in (Mode.IDLE, Mode.BLEND_OUT):
                self.turns += 1  # no turn_started hook (a renderer used without the player's hooks)
            self.conversation_id = conversation_id
        if self.mode in (Mode.IDLE, Mode.BLEND_OUT):
            self._begin(Mode.BLEND_IN, self.blend_in_ms)
        self._target = pose
        self._last_frame_ms = now

    def turn_ended(self, conversation_id: str | None = None, reason: str = "end") -> None:
        """End of turn (END, TRANSITION_END, IDLE) or ``"disconnect"``: blend back to idle.
        ``"superseded"`` (a new turn starts at once) keeps the face in the turn."""
        if reason == "superseded":
            return
        self.conversation_id = None
        if reason == "disconnect":
            self._blend_out(self.disconnect_blend_ms)
        else:
            self._blend_out(self.blend_out_ms)

    def stalled(self) -> None:
        """No motion for a while inside a turn: blend back to idle (frames that resume blend in)."""
        self._blend_out(self.blend_out_ms)

    # -- the pose ------------------------------------------------------------------------

    def pose(self, now: float | None = None) -> FacePose:
        """The pose to draw now."""
        if now is None:
            now = self._clock()
        idle = self._idle.pose(now / 1000.0)
        mode = self.mode
        last = self._blend_start if self._last_frame_ms is None else max(self._last_frame_ms, self._blend_start)
        if mode is Mode.TURN and now - last > self._stall_timeout_ms:
            self._blend_out(self.blend_out_ms)  # frames stopped and nobody told us
            mode = self.mode
        if mode is Mode.IDLE:
            shown = idle
        elif mode is Mode.TURN:
            shown = lerp_pose(idle, self._target or idle, 1.0)  # a copy: breath is set below
        else:
            u = (now - self._blend_start) / self._blend_ms if self._blend_ms > 0 else 1.0
            source = self._from if self._from is not None else idle
            target = (self._target or idle) if mode is Mode.BLEND_IN else idle
            shown = lerp_pose(source, target, _ease(u))
            if u >= 1.0:
                self.mode = Mode.TURN if mode is Mode.BLEND_IN else Mode.IDLE
                if self.mode is Mode.IDLE:
                    self._target = None
                    self._last_frame_ms = None
        shown.breath = idle.breath  # breathing goes on while speaking
        self._shown = shown
        return shown

    @property
    def shown(self) -> FacePose:
        """The pose :meth:`pose` returned last."""
        return self._shown

    def wants_timer_draw(self, now: float) -> bool:
        """Should the renderer's own timer draw? Yes except while turn frames keep coming (they
        are drawn as they arrive, at the player's render time)."""
        if self.mode in (Mode.IDLE, Mode.BLEND_OUT) or self._last_frame_ms is None:
            return True
        return now - self._last_frame_ms > 1.5 * FRAME_INTERVAL_MS

    # -- internals -----------------------------------------------------------------------

    def _begin(self, mode: Mode, duration_ms: float) -> None:
        self._from = None if self.mode is Mode.IDLE else self._shown
        if mode is Mode.BLEND_IN:
            self._last_frame_ms = None
        self.mode = mode
        self._blend_start = self._clock()
        self._blend_ms = float(duration_ms)

    def _blend_out(self, duration_ms: float) -> None:
        if self.mode in (Mode.BLEND_IN, Mode.TURN):
            self._begin(Mode.BLEND_OUT, duration_ms)
        elif self.mode is Mode.BLEND_OUT:
            left = self._blend_ms - (self._clock() - self._blend_start)
            if duration_ms < left:  # a disconnect during a slow fade: finish sooner, from here
                self._begin(Mode.BLEND_OUT, duration_ms)


# ------------------------------------------------------------------------------------ stats


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(slots=True)
class FaceStats:
    """What the renderer did; :meth:`as_dict` gives camelCase names (``framesDrawn``, ...)."""

    frames_drawn: int = 0
    """Canvas redraws (turn frames and the idle timer's)."""
    frames_received: int = 0
    """Frames handed to ``yield_frames_data``."""
    decode_errors: int = 0
    """Frames that were not a ``Message`` or carried no keyframe (skipped)."""
    draw_errors: int = 0
    """Idle-timer redraws that raised (counted, the first one logged; the timer goes on)."""
    mode: str = Mode.IDLE.value
    """The director's mode at the last redraw or :meth:`~avatarplayer.face.canvas.FaceRenderer.snapshot`."""
    jaw: float = 0.0
    """Mouth opening last drawn, 0..1."""
    blink: float = 0.0
    """Eyelid closure last drawn, 0..1."""
    turns: int = 0
    """Turns started (filled in by ``snapshot()``)."""
    conversation_id: str | None = None
    """The current turn's id, None between turns (filled in by ``snapshot()``)."""
    cost_ms_last: float = 0.0
    """Python time of the last redraw (decode + pose + canvas calls), milliseconds."""
    cost_ms_total: float = 0.0
    """Sum of ``cost_ms_last`` over all redraws, milliseconds."""
    cost_ms_max: float = 0.0
    """The slowest redraw, milliseconds."""

    @property
    def cost_ms_mean(self) -> float:
        """Mean Python time of a redraw, milliseconds (0 before the first)."""
        return self.cost_ms_total / self.frames_drawn if self.frames_drawn else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The fields with camelCase names, plus ``costMsMean``: JSON-ready."""
        out = {_camel(f.name): getattr(self, f.name) for f in fields(self)}
        out["costMsMean"] = self.cost_ms_mean
        return out
