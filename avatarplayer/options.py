"""Validation of the player's and the provider's options: bad values fail at construction,
with the option's name in the message."""

from __future__ import annotations

import logging
import re
from typing import Any

LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
              "none": logging.CRITICAL + 10}


def log_level(value: Any) -> int:
    if not isinstance(value, str) or value not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(map(repr, LOG_LEVELS))}, got {value!r}")
    return LOG_LEVELS[value]


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def milliseconds(name: str, value: Any, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of milliseconds, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be within {low:g}..{high:g} ms, got {value!r}")
    return float(value)


def optional_text(name: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"{name} must be a non-empty str or None, got {value!r}")
    return value


def optional_pattern(name: str, value: Any) -> re.Pattern[str] | None:
    if value is None or isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, a compiled re.Pattern or None, got {type(value).__name__}")
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"{name} is not a valid regular expression: {exc}") from None


DEFAULT_MOTION_NAME = re.compile(r"motion|animation", re.IGNORECASE)


def is_motion_track(track_name: str, exact: str | None, pattern: re.Pattern[str] | None) -> bool:
    """The motion-track selection of docs/player.md: exact name, else pattern, else the default."""
    if exact is not None:
        return track_name == exact
    return bool((pattern or DEFAULT_MOTION_NAME).search(track_name or ""))
