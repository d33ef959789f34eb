# Over 400 lines: one class drawing one face, a method per part, all in the same head coordinates.
"""The face's drawing: :class:`FacePainter` turns a :class:`~avatarplayer.face.model.FacePose` into
Canvas 2D calls on a :class:`~avatarplayer.face.recorder.CanvasRecorder`, and the palette it uses.

Pure Python, no browser: :class:`~avatarplayer.face.canvas.FaceRenderer` replays the recorded calls
on the page's canvas; tests read them with :meth:`~avatarplayer.face.recorder.CanvasRecorder.calls`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .model import FacePose
from .recorder import CanvasRecorder

__all__ = ["FacePainter", "STAGE", "HEAD_GAIN"]

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


class FacePainter:
    """Draws one :class:`~avatarplayer.face.model.FacePose` on a :class:`CanvasRecorder`.

    Head-local coordinates: origin between the cheekbones, x to the viewer's right, y down, z
    towards the viewer. Features sit at different depths, so a head turn or nod moves the nose
    more than the eyes and the eyes more than the ears: the flat face reads as turning.

    ``width`` and ``height``: the canvas in device pixels (the face is scaled into it, see
    :data:`STAGE`). ``background``: True (the built-in backdrop), False (transparent) or a CSS
    colour. ``recorder``: where the calls go (default: a new :class:`CanvasRecorder`, ``rec``).
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
        """Records one whole frame of ``pose`` on ``rec``: the background, then the face."""
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
        spread, press, tuck = pose.spread, pose.press, pose.tuck
        my = 66.0
        h = 30.0 * jaw * (1.0 - press)    # pressed lips stay shut
        # rounded lips (o, u) draw together and push forward; spread ones (i, e) pull back and wide
        w = 28.5 * (1.0 - 0.38 * pucker) * (1.0 - 0.08 * jaw) + 2.5 * smile + 7.0 * spread
        corner = my - 5.0 * smile - 1.5 * spread - 2.0 + 0.18 * h
        upper = my - 0.1 * h           # inner edge of the upper lip, at the middle
        lower = my + 0.9 * h + 4.5 * tuck  # inner edge of the lower lip; tucked (f, v), the upper teeth show
        thin = (1.0 - 0.3 * spread) * (1.0 - 0.4 * press)  # spread and pressed lips look thinner
        lip_z = 4.0 * pucker           # protrusion
        tu = (7.5 + 3.0 * pucker) * thin   # lip thickness
        tl = (9.5 + 3.0 * pucker - 0.08 * h) * thin * (1.0 - 0.35 * tuck)
        lx, ly = P(-w, corner, 54 + lip_z)
        rx, ry = P(w, corner, 54 + lip_z)
        ucx, ucy = P(0, 2.0 * upper - corner, 74 + lip_z)
        dcx, dcy = P(0, 2.0 * lower - corner, 72 + lip_z)
        if lower - upper > 0.8:
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
            self._fill_rect(tx - w, ty - 6, 2 * w, 6 + min(7.0, 0.4 * h) + 5.0 * tuck)
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

