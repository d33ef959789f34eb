"""The reference face renderer: a stylized face on a ``<canvas>``, driven by FLAME motion frames.

Runs in the browser (Pyodide / PyScript)::

    from avatarplayer import AvatarPlayer, FaceRenderer, LiveKitProvider

    renderer = FaceRenderer(js.document.getElementById("avatar"))
    player = AvatarPlayer(LiveKitProvider(), renderer)

Each frame is decoded with :func:`avatarplayer.wire.messages.parse_message` (the ``protobuf`` wheel must
be installed in the page) and drawn at once, at the player's render time. Between turns the face
idles on its own 25 fps timer (breathing, blinks, small glances and head sway) and blends into and
out of turns. The pure logic lives in :mod:`avatarplayer.face.model`; this module only draws.

Drawing is recorded, not called: :class:`FacePainter` makes its ~250 canvas calls on a
:class:`CanvasRecorder` (a flat list of numbers), and a few lines of JavaScript replay them on the
2D context in one call. Each Python→JS call costs a few microseconds in Pyodide; one per frame
instead of 250 keeps a frame well under a millisecond.

``js`` and ``pyodide`` are imported when a renderer is made, so the module imports anywhere (and
the painter and the recorder run under CPython, in tests).
"""

from __future__ import annotations

import json
import logging
import math
from array import array
from collections.abc import Callable, Sequence
from typing import Any

from .model import (
    JAW_FULL_OPEN,
    FaceDirector,
    FacePose,
    FaceStats,
    IdleAnimator,
    pose_from_message,
)

__all__ = ["FaceRenderer", "FacePainter", "CanvasRecorder", "STAGE"]

logger = logging.getLogger("avatarplayer.face")

STAGE = 400.0
"""The face is drawn in a STAGE × STAGE square of logical units, centred and scaled to the canvas."""

HEAD_GAIN = 1.6
"""Head angles are exaggerated a little: real head motion is small and this face is flat."""

TAU = 2.0 * math.pi

# palette
BACKGROUND_INNER, BACKGROUND_OUTER = "#3a5688", "#121a2d"
SKIN, SKIN_LIGHT, SKIN_SHADE = "#f0bf9b", "#fddcc4", "#e2a27f"
EAR, EAR_INNER = "#e6a986", "rgba(150,70,55,0.28)"
NECK, NECK_SHADE = "#dd9f7e", "rgba(120,50,40,0.38)"
HAIR, HAIR_SHINE = "#3a251f", "rgba(255,226,200,0.10)"
SHIRT, SHIRT_TRIM = "#2d6f72", "#1d4d50"
SCLERA, IRIS, IRIS_RING, PUPIL, GLINT = "#f8f5f2", "#4f82b4", "#264a6e", "#14111a", "#ffffff"
LID_SHADOW, CREASE, LOWER_LID, LASH, BROW = ("rgba(70,30,30,0.28)", "rgba(160,90,70,0.42)",
                                             "rgba(140,70,60,0.35)", "#2a1915", "#3f2820")
NOSE_SIDE, NOSE_BASE, NOSE_SHINE = "rgba(170,95,72,0.45)", "rgba(160,85,65,0.6)", "rgba(255,240,230,0.35)"
LIP_UPPER, LIP_LOWER, LIP_SEAM, LIP_SHINE = "#b95666", "#cf6d7b", "#7a2a38", "rgba(255,255,255,0.25)"
MOUTH_INSIDE, TEETH, TONGUE, CHIN_LINE = "#3d0f1a", "#f6f1ea", "#c45a6b", "rgba(170,95,72,0.35)"

Point = tuple[float, float]
Project = Callable[[float, float, float], Point]


# ------------------------------------------------------------------------------------ recording


class CanvasRecorder:
    """Canvas 2D calls (the subset the face needs, same names) recorded as numbers.

    Styles (CSS colours, and radial gradients described as tuples) are numbered on first use and
    sent once. :meth:`take` hands over the ops since the last call; :meth:`calls` decodes them
    (for tests and debugging).
    """

    OPS = ("beginPath", "moveTo", "lineTo", "quadraticCurveTo", "bezierCurveTo", "arc", "ellipse",
           "closePath", "fill", "stroke", "clip", "save", "restore", "translate", "rotate",
           "setTransform", "fillRect", "clearRect", "fillStyle", "strokeStyle", "lineWidth")
    ARITY = (0, 2, 2, 4, 6, 5, 7, 0, 0, 0, 0, 0, 0, 2, 1, 6, 4, 4, 1, 1, 1)

    def __init__(self) -> None:
        self.ops: list[float] = []
        self.styles: list[Any] = []
        self._index: dict[Any, int] = {}
        self._sent = 0
        add = self._add = self.ops.append
        more = self._more = self.ops.extend
        self.beginPath = lambda: add(0)
        self.closePath = lambda: add(7)
        self.fill = lambda: add(8)
        self.stroke = lambda: add(9)
        self.clip = lambda: add(10)
        self.save = lambda: add(11)
        self.restore = lambda: add(12)
        self.moveTo = lambda x, y: more((1, x, y))
        self.lineTo = lambda x, y: more((2, x, y))
        self.quadraticCurveTo = lambda cx, cy, x, y: more((3, cx, cy, x, y))

    def bezierCurveTo(self, c1x: float, c1y: float, c2x: float, c2y: float, x: float, y: float) -> None:
        self._more((4, c1x, c1y, c2x, c2y, x, y))

    def arc(self, x: float, y: float, r: float, start: float, end: float) -> None:
        self._more((5, x, y, r, start, end))

    def ellipse(self, x: float, y: float, rx: float, ry: float, rotation: float, start: float, end: float) -> None:
        self._more((6, x, y, rx, ry, rotation, start, end))

    def translate(self, x: float, y: float) -> None:
        self._more((13, x, y))

    def rotate(self, angle: float) -> None:
        self._more((14, angle))

    def setTransform(self, a: float, b: float, c: float, d: float, e: float, f: float) -> None:
        self._more((15, a, b, c, d, e, f))

    def fillRect(self, x: float, y: float, w: float, h: float) -> None:
        self._more((16, x, y, w, h))

    def clearRect(self, x: float, y: float, w: float, h: float) -> None:
        self._more((17, x, y, w, h))

    def fill_style(self, style: Any) -> None:
        """A CSS colour or a gradient from :meth:`radial_gradient`."""
        self._more((18, self._style(style)))

    def stroke_style(self, style: Any) -> None:
        self._more((19, self._style(style)))

    def line_width(self, width: float) -> None:
        self._more((20, width))

    @staticmethod
    def radial_gradient(x0: float, y0: float, r0: float, x1: float, y1: float, r1: float,
                        stops: Sequence[tuple[float, str]]) -> tuple:
        """A style describing ``createRadialGradient(...)`` with ``stops``; made once in JS."""
        return ("radial", x0, y0, r0, x1, y1, r1, tuple((float(o), c) for o, c in stops))

    def _style(self, style: Any) -> int:
        index = self._index.get(style)
        if index is None:
            index = self._index[style] = len(self.styles)
            self.styles.append(style)
        return index

    def take(self) -> tuple[array, list[Any]]:
        """The ops recorded since the last call (as doubles), and the styles not handed over yet."""
        ops = array("d", self.ops)
        self.ops.clear()
        styles = self.styles[self._sent:]
        self._sent = len(self.styles)
        return ops, styles

    def calls(self, ops: Sequence[float] | None = None) -> list[tuple[str, tuple]]:
        """``ops`` (default: those pending) as ``(method name, arguments)``; styles by value."""
        ops = self.ops if ops is None else ops
        out: list[tuple[str, tuple]] = []
        i = 0
        while i < len(ops):
            code = int(ops[i])
            n = self.ARITY[code]
            args = tuple(ops[i + 1:i + 1 + n])
            if code in (18, 19):
                args = (self.styles[int(args[0])],)
            out.append((self.OPS[code], args))
            i += 1 + n
        return out


REPLAY_JS = """
const styles = [];
return {
  addStyles(json) {
    for (const s of JSON.parse(json)) {
      if (typeof s === "string") { styles.push(s); continue; }
      const g = ctx.createRadialGradient(s[1], s[2], s[3], s[4], s[5], s[6]);
      for (const [offset, color] of s[7]) g.addColorStop(offset, color);
      styles.push(g);
    }
  },
  run(b) {
    const n = b.length;
    let i = 0;
    while (i < n) {
      switch (b[i++]) {
        case 0: ctx.beginPath(); break;
        case 1: ctx.moveTo(b[i], b[i + 1]); i += 2; break;
        case 2: ctx.lineTo(b[i], b[i + 1]); i += 2; break;
        case 3: ctx.quadraticCurveTo(b[i], b[i + 1], b[i + 2], b[i + 3]); i += 4; break;
        case 4: ctx.bezierCurveTo(b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5]); i += 6; break;
        case 5: ctx.arc(b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4]); i += 5; break;
        case 6: ctx.ellipse(b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6]); i += 7; break;
        case 7: ctx.closePath(); break;
        case 8: ctx.fill(); break;
        case 9: ctx.stroke(); break;
        case 10: ctx.clip(); break;
        case 11: ctx.save(); break;
        case 12: ctx.restore(); break;
        case 13: ctx.translate(b[i], b[i + 1]); i += 2; break;
        case 14: ctx.rotate(b[i]); i += 1; break;
        case 15: ctx.setTransform(b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5]); i += 6; break;
        case 16: ctx.fillRect(b[i], b[i + 1], b[i + 2], b[i + 3]); i += 4; break;
        case 17: ctx.clearRect(b[i], b[i + 1], b[i + 2], b[i + 3]); i += 4; break;
        case 18: ctx.fillStyle = styles[b[i]]; i += 1; break;
        case 19: ctx.strokeStyle = styles[b[i]]; i += 1; break;
        case 20: ctx.lineWidth = b[i]; i += 1; break;
        default: throw new Error("face renderer: bad canvas op " + b[i - 1] + " at " + (i - 1));
      }
    }
  },
};
"""
"""Replays :class:`CanvasRecorder` ops on ``ctx``: the body of ``new Function("ctx", REPLAY_JS)``."""


# ------------------------------------------------------------------------------------ painting


class FacePainter:
    """Draws one :class:`~avatarplayer.face.model.FacePose` on a :class:`CanvasRecorder`.

    Head-local coordinates: origin between the cheekbones, x to the viewer's right, y down, z
    towards the viewer. Features sit at different depths, so a head turn or nod moves the nose
    more than the eyes and the eyes more than the ears: the flat face reads as turning.
    """

    def __init__(self, width: float, height: float, background: bool | str = True,
                 recorder: CanvasRecorder | None = None) -> None:
        self.rec = rec = recorder or CanvasRecorder()
        self.background = background
        self._begin, self._close = rec.beginPath, rec.closePath
        self._move, self._line, self._quad, self._bez = rec.moveTo, rec.lineTo, rec.quadraticCurveTo, rec.bezierCurveTo
        self._arc, self._ellipse = rec.arc, rec.ellipse
        self._fill, self._stroke, self._clip = rec.fill, rec.stroke, rec.clip
        self._save, self._restore, self._translate = rec.save, rec.restore, rec.translate
        self._fill_rect = rec.fillRect
        self._fs, self._ss, self._lw = rec.fill_style, rec.stroke_style, rec.line_width
        radial = rec.radial_gradient
        self._skin = radial(-34, -58, 8, 0, -10, 150, ((0, SKIN_LIGHT), (0.55, SKIN), (1, SKIN_SHADE)))
        self._blush = radial(0, 0, 0, 0, 0, 24, ((0, "rgba(238,112,112,0.30)"), (1, "rgba(238,112,112,0)")))
        self._chin_shadow = radial(0, 0, 0, 0, 0, 50, ((0, NECK_SHADE), (1, "rgba(120,50,40,0)")))
        self._glow = radial(200, 170, 20, 200, 200, 300, ((0, BACKGROUND_INNER), (1, BACKGROUND_OUTER)))
        self.resize(width, height)

    def resize(self, width: float, height: float) -> None:
        """The canvas's size in device pixels."""
        self.width, self.height = float(width), float(height)
        self.scale = min(self.width, self.height) / STAGE or 1.0
        self.offset_x = (self.width - STAGE * self.scale) / 2.0
        self.offset_y = (self.height - STAGE * self.scale) / 2.0

    # ---------------------------------------------------------------------------- a frame

    def paint(self, pose: FacePose) -> None:
        rec = self.rec
        s = self.scale
        rec.setTransform(1, 0, 0, 1, 0, 0)
        if self.background is False:
            rec.clearRect(0, 0, self.width, self.height)
        else:
            self._fs(BACKGROUND_OUTER if self.background is True else self.background)
            self._fill_rect(0, 0, self.width, self.height)
        rec.setTransform(s, 0, 0, s, self.offset_x, self.offset_y)
        if self.background is True:
            self._fs(self._glow)
            self._fill_rect(-STAGE, -STAGE, 3 * STAGE, 3 * STAGE)

        yaw, pitch, roll = pose.yaw * HEAD_GAIN, pose.pitch * HEAD_GAIN, pose.roll * HEAD_GAIN
        breath = pose.breath
        head_x = 200.0 + 21.0 * math.sin(yaw)
        head_y = 270.0 - 2.0 * breath + 10.0 * math.sin(pitch)
        self._body(breath, head_x - 200.0)

        # the head turns about the neck; then everything is in head coordinates
        self._translate(head_x, head_y)
        rec.rotate(-roll)
        self._translate(0, -108)
        sy, cy, sp, cp = math.sin(yaw), math.cos(yaw), math.sin(pitch), math.cos(pitch)

        def P(x: float, y: float, z: float) -> Point:
            """A head point seen after yaw and pitch."""
            return x * cy + z * sy, y * cp + z * sp

        jaw = pose.jaw
        self._hair_back(P)
        self._ears(P)
        self._face(P, jaw)
        self._cheeks(P, pose.smile)
        self._eye(P, -1.0, pose.blink_right, pose)
        self._eye(P, 1.0, pose.blink_left, pose)
        self._brows(P, pose)
        self._nose(P)
        self._mouth(P, pose)
        self._fringe(P)

    # ---------------------------------------------------------------------------- parts

    def _body(self, breath: float, head_dx: float) -> None:
        lift = 3.0 * breath
        top = 330.0 - lift
        self._begin()
        self._move(14, 420)
        self._bez(18, 362 - lift, 74, top + 8, 150, top)
        self._line(250, top)
        self._bez(326, top + 8, 382, 362 - lift, 386, 420)
        self._close()
        self._fs(SHIRT)
        self._fill()
        # the neck, running into a V neckline
        nx = 200.0 + 0.7 * head_dx
        self._begin()
        self._move(nx - 29, 220)
        self._bez(nx - 30, 280, 172, 300 - lift, 166, top + 2)
        self._line(200, 368 - lift)
        self._line(234, top + 2)
        self._bez(228, 300 - lift, nx + 30, 280, nx + 29, 220)
        self._close()
        self._save()
        self._fs(NECK)
        self._fill()
        self._clip()  # the chin's shadow, on the neck only
        self._translate(nx, 222)
        self._fs(self._chin_shadow)
        self._fill_rect(-40, -20, 80, 80)
        self._restore()
        self._begin()
        self._move(156, top + 1)
        self._line(200, 372 - lift)
        self._line(244, top + 1)
        self._ss(SHIRT_TRIM)
        self._lw(6)
        self._stroke()

    def _hair_back(self, P: Project) -> None:
        self._begin()
        self._move(*P(-104, 104, -30))
        self._bez(*P(-140, 30, -30), *P(-134, -166, 0), *P(0, -168, 10))
        self._bez(*P(134, -166, 0), *P(140, 30, -30), *P(104, 104, -30))
        self._quad(*P(0, 84, -40), *P(-104, 104, -30))
        self._fs(HAIR)
        self._fill()

    def _ears(self, P: Project) -> None:
        for side in (-1.0, 1.0):
            x, y = P(side * 86, -4, -24)
            self._begin()
            self._ellipse(x, y, 12, 21, side * 0.15, 0, TAU)
            self._fs(EAR)
            self._fill()
            self._begin()
            self._ellipse(x + side * 1.5, y, 5.5, 12, side * 0.15, 0, TAU)
            self._fs(EAR_INNER)
            self._fill()

    @staticmethod
    def _depth(x: float, y: float) -> float:
        """Depth of a point on the face outline: the chin juts out, the temples do not."""
        u = x / 92.0
        v = (y + 40.0) / 160.0
        return 46.0 * (1.0 - u * u) * (0.0 if v < 0.0 else 1.0 if v > 1.0 else v)

    def _face(self, P: Project, jaw: float) -> None:
        d = self._depth
        j = jaw
        # right half, top to chin, as three cubic segments; the left half mirrors it
        right = ((48, -134), (86, -106), (88, -36), (90, 16), (82, 60 + 4 * j), (58, 92 + 8 * j),
                 (40, 112 + 10 * j), (20, 122 + 12 * j), (0, 122 + 12 * j))
        left = tuple((-x, y) for x, y in right[-2::-1]) + ((0, -134),)
        self._begin()
        self._move(*P(0, -134, 0))
        for half in (right, left):
            for i in (0, 3, 6):
                (ax, ay), (bx, by), (ex, ey) = half[i], half[i + 1], half[i + 2]
                self._bez(*P(ax, ay, d(ax, ay)), *P(bx, by, d(bx, by)), *P(ex, ey, d(ex, ey)))
        self._fs(self._skin)
        self._fill()

    def _cheeks(self, P: Project, smile: float) -> None:
        self._fs(self._blush)
        for side in (-1.0, 1.0):
            x, y = P(side * 52, 30 - 3 * smile, 42)
            self._save()
            self._translate(x, y)
            self._fill_rect(-25, -25, 50, 50)
            self._restore()

    def _eye(self, P: Project, side: float, lid: float, pose: FacePose) -> None:
        ix, iy = P(side * 13, -4, 60)     # inner corner
        ox, oy = P(side * 51, -8, 44)     # outer corner
        mx, my = P(side * 32, -6, 58)     # middle
        up = 11.5 * (1.0 - lid) - 4.0 * lid       # upper lid height above the middle
        low = 7.0 - 1.8 * max(0.0, pose.smile)    # a smile lifts the lower lid
        ucx, ucy = mx, my - 2.0 * up
        lcx, lcy = mx, my + 2.0 * low
        if lid < 0.9:
            # the white, the iris (clipped by the lids) and the upper lid's shadow on the eyeball
            self._begin()
            self._move(ix, iy)
            self._quad(ucx, ucy, ox, oy)
            self._quad(lcx, lcy, ix, iy)
            self._save()
            self._fs(SCLERA)
            self._fill()
            self._clip()
            gx = mx + 8.0 * pose.gaze_x
            gy = my + 1.5 + 4.5 * pose.gaze_y
            self._begin()
            self._arc(gx, gy, 9.5, 0, TAU)
            self._fs(IRIS)
            self._fill()
            self._ss(IRIS_RING)
            self._lw(1.8)
            self._stroke()
            self._begin()
            self._arc(gx, gy, 4.4, 0, TAU)
            self._fs(PUPIL)
            self._fill()
            self._begin()
            self._arc(gx - 3.0, gy - 3.4, 2.4, 0, TAU)
            self._arc(gx + 3.3, gy + 2.9, 1.1, 0, TAU)
            self._fs(GLINT)
            self._fill()
            self._begin()
            self._move(ix, iy)
            self._quad(ucx, ucy, ox, oy)
            self._ss(LID_SHADOW)
            self._lw(6)
            self._stroke()
            self._restore()
        # crease, lower lid, and the lash line with a small flick at the outer corner
        self._begin()
        self._move(ix + side * 3, iy - 8 + 3 * lid)
        self._quad(mx, my - 2.0 * (16.0 - 3.0 * lid), ox + side * 2, oy - 6 + 2 * lid)
        self._ss(CREASE)
        self._lw(1.5)
        self._stroke()
        self._begin()
        self._move(ix + side * 4, iy + 1)
        self._quad(lcx, lcy, ox, oy)
        self._ss(LOWER_LID)
        self._lw(1.2)
        self._stroke()
        self._begin()
        self._move(ix, iy)
        self._quad(ucx, ucy, ox, oy)
        self._line(ox + side * 4, oy - 2 + 2 * lid)
        self._ss(LASH)
        self._lw(2.8)
        self._stroke()

    def _brows(self, P: Project, pose: FacePose) -> None:
        lift = 6.0 * pose.brow - 1.5 * pose.blink
        inner = 7.5 * pose.brow
        self._begin()
        for side in (-1.0, 1.0):
            ax, ay = P(side * 12, -31 - inner, 60)
            bx, by = P(side * 12, -25 - inner, 60)
            tx, ty = P(side * 34, -44 - lift, 56)
            ux, uy = P(side * 34, -35 - lift, 56)
            ex, ey = P(side * 56, -31 - 0.6 * lift, 42)
            self._move(ax, ay)
            self._quad(tx, ty, ex, ey)
            self._quad(ux, uy, bx, by)
            self._close()
        self._fs(BROW)
        self._fill()

    def _nose(self, P: Project) -> None:
        self._begin()
        self._move(*P(7, -2, 66))
        self._quad(*P(11, 18, 80), *P(8, 31, 80))
        self._ss(NOSE_SIDE)
        self._lw(2.2)
        self._stroke()
        self._begin()
        self._move(*P(-10, 31, 70))
        self._quad(*P(0, 40, 86), *P(10, 31, 70))
        self._ss(NOSE_BASE)
        self._lw(2.0)
        self._stroke()
        self._begin()
        x, y = P(-2, 25, 86)
        self._ellipse(x, y, 5, 3, 0, 0, TAU)
        self._fs(NOSE_SHINE)
        self._fill()

    def _mouth(self, P: Project, pose: FacePose) -> None:
        jaw, smile, pucker = pose.jaw, pose.smile, pose.pucker
        my = 66.0
        h = 30.0 * jaw
        w = 28.5 * (1.0 - 0.18 * pucker) * (1.0 - 0.08 * jaw) + 2.5 * smile
        corner = my - 5.0 * smile - 2.0 + 0.18 * h
        upper = my - 0.1 * h           # inner edge of the upper lip, at the middle
        lower = my + 0.9 * h           # inner edge of the lower lip
        tu = 7.5 + 1.5 * pucker        # lip thickness
        tl = 9.5 + 1.5 * pucker - 0.08 * h
        lx, ly = P(-w, corner, 54)
        rx, ry = P(w, corner, 54)
        ucx, ucy = P(0, 2.0 * upper - corner, 74)
        dcx, dcy = P(0, 2.0 * lower - corner, 72)
        if h > 0.8:
            self._begin()
            self._move(lx, ly)
            self._quad(ucx, ucy, rx, ry)
            self._quad(dcx, dcy, lx, ly)
            self._save()
            self._fs(MOUTH_INSIDE)
            self._fill()
            self._clip()
            tx, ty = P(0, upper, 74)
            self._fs(TEETH)
            self._fill_rect(tx - w, ty - 6, 2 * w, 6 + min(7.0, 0.4 * h))
            bx, by = P(0, lower + 1, 70)
            self._begin()
            self._ellipse(bx, by, 0.6 * w, max(2.0, 0.4 * h), 0, 0, TAU)
            self._fs(TONGUE)
            self._fill()
            self._restore()
        # upper lip: from a corner over two peaks and the bow between them, back along the inside
        top = upper - tu
        self._begin()
        self._move(lx, ly)
        self._quad(*P(-0.62 * w, top - 0.5, 64), *P(-8, top, 74))
        self._quad(*P(-3, top, 76), *P(0, top + 2.8, 76))
        self._quad(*P(3, top, 76), *P(8, top, 74))
        self._quad(*P(0.62 * w, top - 0.5, 64), rx, ry)
        self._quad(ucx, ucy, lx, ly)
        self._fs(LIP_UPPER)
        self._fill()
        self._begin()
        self._move(rx, ry)
        self._quad(dcx, dcy, lx, ly)
        self._quad(*P(0, 2.0 * (lower + tl) - corner, 72), rx, ry)
        self._fs(LIP_LOWER)
        self._fill()
        # the seam, a shine on the lower lip, the fold under it
        self._begin()
        self._move(lx, ly)
        self._quad(ucx, ucy, rx, ry)
        self._ss(LIP_SEAM)
        self._lw(1.7)
        self._stroke()
        self._begin()
        x, y = P(-4, lower + 0.45 * tl, 74)
        self._ellipse(x, y, 0.26 * w, 1.8, 0, 0, TAU)
        self._fs(LIP_SHINE)
        self._fill()
        self._begin()
        self._move(*P(-9, lower + tl + 8, 66))
        self._quad(*P(0, lower + tl + 11, 68), *P(9, lower + tl + 8, 66))
        self._ss(CHIN_LINE)
        self._lw(1.6)
        self._stroke()

    def _fringe(self, P: Project) -> None:
        # the crown, and a fringe swept from a side part (x ≈ 30) down across the forehead
        self._begin()
        self._move(*P(-96, -4, -10))
        self._bez(*P(-118, -84, 0), *P(-100, -164, 20), *P(0, -164, 30))
        self._bez(*P(100, -164, 20), *P(118, -84, 0), *P(96, -4, -10))
        self._quad(*P(90, -82, 24), *P(30, -106, 48))
        self._quad(*P(-4, -74, 54), *P(-58, -58, 44))
        self._quad(*P(-88, -48, 20), *P(-96, -4, -10))
        self._fs(HAIR)
        self._fill()
        self._begin()
        self._move(*P(-78, -100, 24))
        self._quad(*P(-44, -138, 36), *P(16, -136, 40))
        self._ss(HAIR_SHINE)
        self._lw(9)
        self._stroke()


# ------------------------------------------------------------------------------------ the renderer


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
        self._replay = js.Function.new("ctx", REPLAY_JS)(ctx)
        self._ops_capacity = 4096
        self._ops_buffer = js.Float64Array.new(self._ops_capacity)  # reused: ops are copied in
        self.painter = FacePainter(canvas.width, canvas.height, background)
        self._timer_proxy: Any = None
        self._timer_id: Any = None
        self._ticks = 0
        self.closed = False
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
        self.director.turn_started(conversation_id)

    def turn_ended(self, conversation_id: str, reason: str) -> None:
        """End of a turn (``end``, ``transition-end``, ``idle``) or ``disconnect``: blend to idle."""
        self.director.turn_ended(conversation_id, reason)

    def stalled(self) -> None:
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
