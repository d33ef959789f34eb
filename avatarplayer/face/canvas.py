"""The reference face renderer: a stylized face on a ``<canvas>``, driven by FLAME motion frames.

Runs in the browser (Pyodide / PyScript)::

    from avatarplayer import AvatarPlayer, FaceRenderer, LiveKitProvider

    renderer = FaceRenderer(js.document.getElementById("avatar"))
    player = AvatarPlayer(LiveKitProvider(), renderer)

Each frame is decoded with :func:`avatarplayer.wire.messages.parse_message` (the ``protobuf`` wheel must
be installed in the page) and drawn at once, at the player's render time. Between turns the face
idles on its own 25 fps timer (breathing, blinks, small glances and head sway) and blends into and
out of turns. The face package splits the work:

* :mod:`avatarplayer.face.model`: the pure logic (poses, the director, the idle animation);
* :mod:`avatarplayer.face.painter`: :class:`FacePainter`, a pose to Canvas 2D calls;
* :mod:`avatarplayer.face.recorder`: :class:`CanvasRecorder`, those calls as numbers, and
  ``REPLAY_JS`` (``js/replay.js``), which replays them on the 2D context in one call per frame;
* this module: :class:`FaceRenderer`, the renderer contract, the idle timer and the canvas size.

``js`` and ``pyodide`` are imported when a renderer is made, so the module imports anywhere (and
the painter and the recorder run under CPython, in tests).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from .model import (
    JAW_FULL_OPEN,
    FaceDirector,
    FacePose,
    FaceStats,
    IdleAnimator,
    load_decoder,
    pose_from_message,
)
from .painter import STAGE, FacePainter
from .recorder import REPLAY_JS, CanvasRecorder

# FacePainter, CanvasRecorder and STAGE lived here before the split and are still importable from here.
__all__ = ["FaceRenderer", "FacePainter", "CanvasRecorder", "STAGE"]

logger = logging.getLogger("avatarplayer.face")


class FaceRenderer:
    """The avatarplayer renderer contract, drawing a stylized face on ``canvas``.

    Options (bad values raise ``TypeError``/``ValueError`` naming the option):

    - ``blend_in_frames`` (8): frames (40 ms each) to blend from idle into a turn.
    - ``blend_out_frames`` (40): frames to blend back to idle after a turn, TRANSITION_END or a stall.
    - ``disconnect_blend_frames`` (12): the same after ``disconnect()``.
    - ``idle_fps`` (25): the idle timer's rate.
    - ``background``: True (the built-in backdrop), False (transparent) or a CSS colour.
    - ``fit_canvas`` (True): keep the canvas's backing store at its CSS size × devicePixelRatio.
    - ``jaw_full_open`` (0.32): ``jaw_pose[0]`` in radians drawn as a fully open mouth.
    - ``seed``: makes the idle animation repeatable. ``clock``: milliseconds (``performance.now``).
    - ``autostart`` (True): start the idle timer now (else call :meth:`start`).

    ``stats`` (a :class:`~avatarplayer.face.model.FaceStats`) and :meth:`snapshot` tell what it did.
    Call :meth:`close` to stop its timer.
    """

    def __init__(
        self,
        canvas: Any,
        *,
        blend_in_frames: int = 8,
        blend_out_frames: int = 40,
        disconnect_blend_frames: int = 12,
        idle_fps: float = 25,
        background: bool | str = True,
        fit_canvas: bool = True,
        jaw_full_open: float = JAW_FULL_OPEN,
        seed: int | None = None,
        clock: Callable[[], float] | None = None,
        autostart: bool = True,
    ) -> None:
        if canvas is None or getattr(canvas, "getContext", None) is None:
            raise TypeError(f"canvas must be a <canvas> element, got {type(canvas).__name__}")
        if isinstance(idle_fps, bool) or not isinstance(idle_fps, (int, float)) or not 1 <= idle_fps <= 120:
            raise ValueError(f"idle_fps must be a number within 1..120, got {idle_fps!r}")
        if not isinstance(background, (bool, str)) or background == "":
            raise TypeError(f"background must be True, False or a CSS colour string, got {background!r}")
        for name, value in (("fit_canvas", fit_canvas), ("autostart", autostart)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if isinstance(jaw_full_open, bool) or not isinstance(jaw_full_open, (int, float)) or not 0.01 <= jaw_full_open <= 3.0:
            raise ValueError(f"jaw_full_open must be radians within 0.01..3, got {jaw_full_open!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning milliseconds, got {type(clock).__name__}")

        import js  # the browser: only now, so that this module imports anywhere

        self._js = js
        self._clock = clock or js.performance.now
        self.director = FaceDirector(
            self._clock,
            idle=IdleAnimator(seed),
            blend_in_frames=blend_in_frames,
            blend_out_frames=blend_out_frames,
            disconnect_blend_frames=disconnect_blend_frames,
        )
        self.canvas = canvas
        self.fit_canvas = fit_canvas
        self.jaw_full_open = float(jaw_full_open)
        self.idle_interval_ms = 1000.0 / idle_fps
        self.stats = FaceStats()
        self._css_size: tuple[float, float] | None = None
        self._fit()
        ctx = canvas.getContext("2d")
        if ctx is None or not ctx:  # JS null arrives as a falsy JsNull, not None
            raise ValueError("canvas has no 2D context (is another kind of context attached to it?)")
        from pyodide.code import run_js

        self._replay = run_js(REPLAY_JS)(ctx)
        self._ops_capacity = 4096
        self._ops_buffer = js.Float64Array.new(self._ops_capacity)  # reused: ops are copied in
        self.painter = FacePainter(canvas.width, canvas.height, background)
        self._timer_proxy: Any = None
        self._timer_id: Any = None
        self._ticks = 0
        self.closed = False
        load_decoder()  # now, not on the first frame of the first turn (see load_decoder)
        self.draw()
        if autostart:
            self.start()

    # ------------------------------------------------------------------ renderer contract

    def yield_frames_data(self, frames: Sequence[Any], conversation_id: str) -> None:
        """Frames in render order (serialized ``Message`` bytes); the last good one is drawn.
        Frames that do not decode are counted in ``stats.decode_errors`` and skipped."""
        if self.closed:
            return
        start = self._clock()
        stats = self.stats
        pose = None
        for frame in frames:
            stats.frames_received += 1
            try:
                if not isinstance(frame, (bytes, bytearray, memoryview)):
                    frame = frame.to_bytes()  # a JS Uint8Array
                decoded = pose_from_message(frame, jaw_full_open=self.jaw_full_open)
            except Exception:
                decoded = None
            if decoded is None:
                stats.decode_errors += 1
                continue
            pose = decoded
        if pose is not None:
            self.director.frame(pose, conversation_id)
            self._draw(start)

    def yield_audio_data(self, data: bytes, is_last: bool) -> str | None:
        """This renderer does not play audio (the browser plays the avatar's WebRTC audio):
        returns the current turn's conversation id, or None between turns."""
        return self.director.conversation_id

    def transition(self, message: Any) -> None:
        """TRANSITION: blend from idle into the pose in ``message`` (may be empty)."""
        pose = None
        if message is not None and len(message):
            try:
                data = message if isinstance(message, (bytes, bytearray, memoryview)) else message.to_bytes()
                pose = pose_from_message(data, jaw_full_open=self.jaw_full_open)
            except Exception:
                self.stats.decode_errors += 1
        self.director.transition(pose)

    def turn_started(self, conversation_id: str) -> None:
        """A turn begins: its frames follow (the blend into it started at TRANSITION, if any)."""
        self.director.turn_started(conversation_id)

    def turn_ended(self, conversation_id: str, reason: str) -> None:
        """End of a turn (``end``, ``transition-end``, ``idle``) or ``disconnect``: blend to idle."""
        self.director.turn_ended(conversation_id, reason)

    def stalled(self) -> None:
        """Frames stopped coming mid-turn: blend to idle (frames that come again blend back in)."""
        self.director.stalled()

    # ------------------------------------------------------------------ state

    @property
    def mode(self) -> str:
        """``idle``, ``blend-in``, ``turn`` or ``blend-out``."""
        return self.director.mode.value

    @property
    def pose(self) -> FacePose:
        """The pose drawn last."""
        return self.director.shown

    def snapshot(self) -> dict[str, Any]:
        """``stats`` as a JSON-ready dict with camelCase names (``framesDrawn``, ``decodeErrors``,
        ``mode``, ``jaw``, ``blink``, ``costMsMean``, ...)."""
        self.stats.mode = self.mode
        self.stats.conversation_id = self.director.conversation_id
        self.stats.turns = self.director.turns
        return self.stats.as_dict()

    # ------------------------------------------------------------------ drawing and the timer

    def draw(self) -> None:
        """Redraw now (the idle timer and each frame call this)."""
        if not self.closed:
            self._draw(self._clock())

    def start(self) -> None:
        """Start the idle timer (idempotent)."""
        if self._timer_proxy is not None or self.closed:
            return
        from pyodide.ffi import create_proxy

        self._timer_proxy = create_proxy(self._on_timer)
        self._timer_id = self._js.setInterval(self._timer_proxy, self.idle_interval_ms)

    def stop(self) -> None:
        """Stop the idle timer; frames are still drawn as they come."""
        if self._timer_proxy is None:
            return
        self._js.clearInterval(self._timer_id)
        self._timer_proxy.destroy()  # only after the interval that held it is gone
        self._timer_proxy = None
        self._timer_id = None

    def close(self) -> None:
        """Stop the timer and draw nothing more."""
        self.stop()
        self.closed = True

    def fit(self) -> None:
        """Match the canvas's backing store to its CSS size now (also checked about once a second)."""
        if self._fit():
            self.painter.resize(self.canvas.width, self.canvas.height)

    def _fit(self) -> bool:
        if not self.fit_canvas:
            return False
        canvas = self.canvas
        css = (float(canvas.clientWidth or 0), float(canvas.clientHeight or 0))
        if css == self._css_size or css[0] <= 0 or css[1] <= 0:
            return False
        self._css_size = css
        dpr = float(getattr(self._js.window, "devicePixelRatio", 1) or 1)
        width, height = round(css[0] * dpr), round(css[1] * dpr)
        if (canvas.width, canvas.height) == (width, height):
            return False
        canvas.width, canvas.height = width, height
        return True

    def _on_timer(self, *_: Any) -> None:
        try:
            self._ticks += 1
            if self._ticks % 25 == 0:
                self.fit()
            now = self._clock()
            if self.director.wants_timer_draw(now):
                self._draw(now)
        except Exception:
            self.stats.draw_errors += 1
            if self.stats.draw_errors == 1:
                logger.exception("the face renderer's idle draw failed")

    def _draw(self, start: float) -> None:
        pose = self.director.pose(self._clock())
        try:
            self.painter.paint(pose)
        finally:
            ops, styles = self.painter.rec.take()  # never leave half a frame behind
        if styles:
            self._replay.addStyles(json.dumps(styles))
        if len(ops) > self._ops_capacity:
            self._ops_capacity = 2 * len(ops)
            self._ops_buffer = self._js.Float64Array.new(self._ops_capacity)
        view = self._ops_buffer.subarray(0, len(ops))
        view.assign(ops)
        self._replay.run(view)
        stats = self.stats
        stats.frames_drawn += 1
        stats.jaw = pose.jaw
        stats.blink = pose.blink
        stats.mode = self.director.mode.value
        cost = self._clock() - start
        stats.cost_ms_last = cost
        stats.cost_ms_total += cost
        if cost > stats.cost_ms_max:
            stats.cost_ms_max = cost
