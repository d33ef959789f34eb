"""Stand-ins for the browser (``js``, ``pyodide.ffi``, ``pyodide.code``) so FaceRenderer runs under
CPython.

The replayer made from ``REPLAY_JS`` (``avatarplayer/face/js/replay.js``) is faked by keeping the
ops it is given, for tests to decode with :meth:`CanvasRecorder.calls`; the JavaScript itself is run
for real by test_replay_js.py (node).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class FakeClock:
    """Milliseconds, moved by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, ms: float) -> None:
        self.t += ms


class FakeTypedArray:
    def __init__(self, size: int) -> None:
        self.data = [0.0] * int(size)
        self.length = int(size)

    def subarray(self, start: int, end: int) -> FakeTypedArray:
        view = FakeTypedArray(0)
        view.data = self.data[start:end]
        view.length = end - start
        return view

    def assign(self, values: Any) -> None:
        if len(values) != self.length:
            raise ValueError("assign: size mismatch")
        self.data = list(values)


class FakeReplay:
    """What ``run_js(REPLAY_JS)(ctx)`` returns, keeping what it was given."""

    def __init__(self) -> None:
        self.styles: list[Any] = []
        self.runs: list[list[float]] = []

    def addStyles(self, text: str) -> None:  # noqa: N802 - the JS name
        import json

        self.styles.extend(json.loads(text))

    def run(self, view: FakeTypedArray) -> None:
        self.runs.append(list(view.data))


class FakeCanvas:
    def __init__(self, width: int = 400, height: int = 300, client: tuple[int, int] = (0, 0)) -> None:
        self.width, self.height = width, height
        self.clientWidth, self.clientHeight = client
        self.contexts: list[str] = []

    def getContext(self, kind: str) -> object:  # noqa: N802 - the DOM name
        self.contexts.append(kind)
        return object()


class FakeProxy:
    def __init__(self, fn: Any, registry: list) -> None:
        self.fn, self.destroyed = fn, False
        registry.append(self)

    def __call__(self, *args: Any) -> Any:
        if self.destroyed:
            raise RuntimeError("called a destroyed proxy")
        return self.fn(*args)

    def destroy(self) -> None:
        self.destroyed = True


class Browser:
    """Installs fake ``js``, ``pyodide.ffi`` and ``pyodide.code`` modules; keeps timers, proxies
    and replayers for checks."""

    def __init__(self, monkeypatch: Any, clock: FakeClock, dpr: float = 1.0) -> None:
        self.clock = clock
        self.intervals: dict[int, tuple[Any, float]] = {}
        self.cleared: list[int] = []
        self.proxies: list[FakeProxy] = []
        self.replays: list[FakeReplay] = []
        self._next_id = 1

        js = types.ModuleType("js")
        js.performance = types.SimpleNamespace(now=clock)
        js.window = types.SimpleNamespace(devicePixelRatio=dpr)
        js.setInterval = self._set_interval
        js.clearInterval = self._clear_interval
        js.Float64Array = types.SimpleNamespace(new=FakeTypedArray)

        def run_js(code: str) -> Any:
            assert "(ctx) =>" in code and "run(b)" in code

            def factory(ctx: Any) -> FakeReplay:
                replay = FakeReplay()
                self.replays.append(replay)
                return replay

            return factory

        ffi = types.ModuleType("pyodide.ffi")
        ffi.create_proxy = lambda fn: FakeProxy(fn, self.proxies)
        code = types.ModuleType("pyodide.code")
        code.run_js = run_js
        pyodide = types.ModuleType("pyodide")
        pyodide.ffi = ffi
        pyodide.code = code
        monkeypatch.setitem(sys.modules, "js", js)
        monkeypatch.setitem(sys.modules, "pyodide", pyodide)
        monkeypatch.setitem(sys.modules, "pyodide.ffi", ffi)
        monkeypatch.setitem(sys.modules, "pyodide.code", code)

    def _set_interval(self, fn: Any, ms: float) -> int:
        timer_id = self._next_id
        self._next_id += 1
        self.intervals[timer_id] = (fn, ms)
        return timer_id

    def _clear_interval(self, timer_id: int) -> None:
        self.cleared.append(timer_id)
        self.intervals.pop(timer_id, None)

    def tick(self, ms: float = 40.0, times: int = 1) -> None:
        """Advance the clock and fire every interval, ``times`` times."""
        for _ in range(times):
            self.clock.advance(ms)
            for fn, _period in list(self.intervals.values()):
                fn()
