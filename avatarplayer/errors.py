"""The errors the player raises to its users (all exported from :mod:`avatarplayer`)."""

from __future__ import annotations

__all__ = ["ConnectConfigError", "ConnectError", "MediaDeviceError"]


class ConnectError(ConnectionError):
    """``connect`` failed. ``cause`` says why: ``"config"`` (a bad URL or token argument),
    ``"token"`` (the server rejected the token: wrong key, bad signature, expired),
    ``"unreachable"`` (nothing answered, or not a LiveKit server), ``"timeout"``, or ``"grant"`` (the
    grant source given to ``connect`` raised: e.g. the app's token endpoint refused)."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class ConnectConfigError(ConnectError, ValueError):
    """The arguments of ``connect`` were wrong (cause ``"config"``); also a ``ValueError``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "config")


class MediaDeviceError(RuntimeError):
    """The microphone could not be opened. ``name`` is the browser's error name
    (``NotAllowedError``, ``NotFoundError``, ...); ``cause`` is ``"permission-denied"``,
    ``"no-device"``, ``"device-busy"`` or ``"other"``."""

    def __init__(self, message: str, name: str, cause: str) -> None:
        super().__init__(message)
        self.name = name
        self.cause = cause
