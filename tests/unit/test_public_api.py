"""The public API reads well from ``help()`` in a PyScript page: every exported name, and every
public method and property of an exported class, has a docstring; the errors a user can be handed
are exported."""

import inspect

import pytest

import avatarplayer

EXPORTED = sorted(avatarplayer.__all__)


def undocumented(name: str) -> list[str]:
    obj = getattr(avatarplayer, name)
    missing = [] if (obj.__doc__ or "").strip() else [name]
    if inspect.isclass(obj):
        for attr, value in vars(obj).items():
            if attr.startswith("_"):
                continue
            func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            if (isinstance(value, property) or inspect.isfunction(func)) and not (func.__doc__ or "").strip():
                missing.append(f"{name}.{attr}")
    return missing


@pytest.mark.parametrize("name", EXPORTED)
def test_every_public_name_has_a_docstring(name):
    assert undocumented(name) == []


def test_the_errors_a_user_meets_are_exported():
    for error in ("ConnectError", "ConnectConfigError", "MediaDeviceError", "PacketError"):
        assert error in avatarplayer.__all__ and issubclass(getattr(avatarplayer, error), Exception)
    assert issubclass(avatarplayer.ConnectConfigError, ValueError)  # bad arguments stay a ValueError


def test_a_missing_docstring_is_noticed():
    class Bare:
        def method(self):
            pass

    avatarplayer.Bare = Bare  # type: ignore[attr-defined]
    try:
        assert undocumented("Bare") == ["Bare", "Bare.method"]
    finally:
        del avatarplayer.Bare
