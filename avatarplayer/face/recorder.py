"""Drawing recorded, not called: :class:`CanvasRecorder` takes Canvas 2D calls as a flat list of
numbers, and :data:`REPLAY_JS` (``js/replay.js``) replays them on the real context in one call.

Each Python→JS call costs a few microseconds in Pyodide; one call per frame instead of the face's
~250 keeps a frame well under a millisecond. No browser needed here: the recorder runs under
CPython too (tests decode what it recorded with :meth:`CanvasRecorder.calls`).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

__all__ = ["CanvasRecorder", "REPLAY_JS"]


class CanvasRecorder:
    """Canvas 2D calls (the subset the face needs, same names) recorded as numbers.

    Styles (CSS colours, and radial gradients described as tuples) are numbered on first use and
    sent once. :meth:`take` hands over the ops since the last call; :meth:`calls` decodes them
    (for tests and debugging). :data:`REPLAY_JS` replays them on a real context.

    ``beginPath``, ``closePath``, ``fill``, ``stroke``, ``clip``, ``save``, ``restore``,
    ``moveTo``, ``lineTo`` and ``quadraticCurveTo`` are plain functions set on each recorder (the
    painter calls them most; a method call costs more in Pyodide). ``OPS[code]`` names each op and
    ``ARITY[code]`` counts its arguments.
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
        """Records ``ctx.bezierCurveTo(...)``."""
        self._more((4, c1x, c1y, c2x, c2y, x, y))

    def arc(self, x: float, y: float, r: float, start: float, end: float) -> None:
        """Records ``ctx.arc(...)`` (always clockwise)."""
        self._more((5, x, y, r, start, end))

    def ellipse(self, x: float, y: float, rx: float, ry: float, rotation: float, start: float, end: float) -> None:
        """Records ``ctx.ellipse(...)`` (always clockwise)."""
        self._more((6, x, y, rx, ry, rotation, start, end))

    def translate(self, x: float, y: float) -> None:
        """Records ``ctx.translate(x, y)``."""
        self._more((13, x, y))

    def rotate(self, angle: float) -> None:
        """Records ``ctx.rotate(angle)`` (radians)."""
        self._more((14, angle))

    def setTransform(self, a: float, b: float, c: float, d: float, e: float, f: float) -> None:
        """Records ``ctx.setTransform(a, b, c, d, e, f)``."""
        self._more((15, a, b, c, d, e, f))

    def fillRect(self, x: float, y: float, w: float, h: float) -> None:
        """Records ``ctx.fillRect(x, y, w, h)``."""
        self._more((16, x, y, w, h))

    def clearRect(self, x: float, y: float, w: float, h: float) -> None:
        """Records ``ctx.clearRect(x, y, w, h)``."""
        self._more((17, x, y, w, h))

    def fill_style(self, style: Any) -> None:
        """Records ``ctx.fillStyle = style``: a CSS colour or a gradient from :meth:`radial_gradient`."""
        self._more((18, self._style(style)))

    def stroke_style(self, style: Any) -> None:
        """Records ``ctx.strokeStyle = style`` (as :meth:`fill_style`)."""
        self._more((19, self._style(style)))

    def line_width(self, width: float) -> None:
        """Records ``ctx.lineWidth = width``."""
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



REPLAY_JS: str = files(__package__).joinpath("js", "replay.js").read_text(encoding="utf-8")
"""The replayer, ``js/replay.js``: one JavaScript expression, ``(ctx) => ({addStyles(json), run(ops)})``,
for ``pyodide.code.run_js``. ``run`` replays :meth:`CanvasRecorder.take`'s ops on ``ctx``;
``addStyles`` makes its styles (a JSON list) first."""
