"""The JavaScript the provider evaluates in the page, kept as real ``.js`` files in ``js/``
(package data, so they ship in the wheel and an editor or a linter reads them as JavaScript)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def js_source(name: str) -> str:
    """The text of ``js/<name>``: one JavaScript expression, for ``pyodide.code.run_js``."""
    return files(__package__).joinpath("js", name).read_text(encoding="utf-8")
