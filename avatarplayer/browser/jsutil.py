"""Small helpers for talking to JavaScript, and the JavaScript the provider evaluates in the page,
kept as real ``.js`` files in ``js/`` (package data: they ship in the wheel, and an editor or a
linter reads them as JavaScript). Everything but :func:`js_source` and :func:`in_browser` needs
Pyodide."""

from __future__ import annotations

import logging
from functools import cache
from importlib.resources import files
from typing import Any


@cache
def js_source(name: str) -> str:
    """The text of ``js/<name>``: one JavaScript expression, for ``pyodide.code.run_js``."""
    return files(__package__).joinpath("js", name).read_text(encoding="utf-8")


def in_browser() -> bool:
    """True inside Pyodide (where ``js`` and ``pyodide`` import)."""
    import sys

    return sys.platform == "emscripten"


def now_ms() -> float:
    """The page's clock in epoch milliseconds (``performance.timeOrigin + performance.now()``)."""
    import js

    return js.performance.timeOrigin + js.performance.now()


def js_object(value: dict[str, Any]) -> Any:
    """A plain JS object from a dict (what JS APIs take as options; a ``Map`` would not do)."""
    import js
    from pyodide.ffi import to_js

    return to_js(value, dict_converter=js.Object.fromEntries)


def js_list(values: list[Any]) -> Any:
    """A JS array (e.g. a transfer list)."""
    from pyodide.ffi import to_js

    return to_js(values)


def js_message(exc: BaseException) -> str:
    """The message of a JS error raised into Python (its ``message``, else ``str``)."""
    return str(getattr(exc, "message", None) or exc)


def js_catch(log: logging.Logger, what: str) -> Any:
    """A callback for ``promise.catch`` that logs ``what`` and the error (called once)."""
    from pyodide.ffi import create_once_callable

    return create_once_callable(lambda error: log.error("%s: %s", what, error))


def blob_url(text: str, mime: str) -> str:
    """An object URL for ``text`` (revoke it with ``URL.revokeObjectURL`` once unused)."""
    import js
    from pyodide.ffi import to_js

    blob = js.Blob.new(to_js([text]), js_object({"type": mime}))
    return js.URL.createObjectURL(blob)
