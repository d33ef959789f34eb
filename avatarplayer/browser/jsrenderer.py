"""Adapter for a renderer written in JavaScript (an object with ``yieldFramesData``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class JsRenderer:
    """Converts each call's frames to ``Uint8Array``s once, in one JS array."""

    def __init__(self, js_renderer: Any) -> None:
        self._js = js_renderer

    def yield_frames_data(self, frames: Sequence[bytes], conversation_id: str) -> None:
        from pyodide.ffi import to_js

        self._js.yieldFramesData(to_js([to_js(f) for f in frames]), conversation_id)

    def yield_audio_data(self, data: bytes, is_last: bool) -> str | None:
        from pyodide.ffi import to_js

        method = getattr(self._js, "yieldAudioData", None)
        return None if method is None else method(to_js(data), is_last)

    def __getattr__(self, name: str) -> Any:
        # optional hooks (turn_started, ...) under their JavaScript names
        camel = name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:])
        value = getattr(self._js, camel, None)
        if value is None:
            raise AttributeError(name)
        return value
