"""Where the reference face drew its lips, read from the painter's recorded canvas calls."""

from __future__ import annotations

from avatarplayer.face.painter import LIP_LOWER, LIP_UPPER


def lip_box(calls: list) -> tuple[float, float]:
    """Width and height of the two lips' paths (the bounding box of their points)."""
    xs: list[float] = []
    ys: list[float] = []
    for i, (name, args) in enumerate(calls):
        if name == "fillStyle" and args[0] in (LIP_UPPER, LIP_LOWER):
            j = i
            while calls[j][0] != "beginPath":
                j -= 1
            for name2, args2 in calls[j:i]:
                if name2 in ("moveTo", "quadraticCurveTo"):
                    xs += args2[0::2]
                    ys += args2[1::2]
    return max(xs) - min(xs), max(ys) - min(ys)
