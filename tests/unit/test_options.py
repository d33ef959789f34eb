"""Motion-track selection and the provider's option checks (pure: no browser needed)."""

import re

import pytest

from avatarplayer.browser.livekit import LiveKitProvider
from avatarplayer.options import is_motion_track


@pytest.mark.parametrize("name, expected", [
    ("avatar-motion", True), ("AnimationTrack", True), ("MOTION", True), ("camera", False), ("", False),
])
def test_default_selection_matches_motion_or_animation(name, expected):
    assert is_motion_track(name, None, None) is expected


def test_exact_name_wins_and_must_match_exactly():
    assert is_motion_track("face", "face", None)
    assert not is_motion_track("avatar-motion", "face", None)


def test_pattern_selection():
    pattern = re.compile(r"^avatar-\d+$")
    assert is_motion_track("avatar-7", None, pattern)
    assert not is_motion_track("avatar-motion", None, pattern)


def test_provider_compiles_a_string_pattern():
    provider = LiveKitProvider(animation_track_name_pattern=r"^pose-")
    assert provider.is_motion_publication("pose-1") and not provider.is_motion_publication("motion")


@pytest.mark.parametrize("kwargs, name", [
    (dict(animation_track_name=""), "animation_track_name"),
    (dict(animation_track_name=3), "animation_track_name"),
    (dict(animation_track_name_pattern="(unclosed"), "animation_track_name_pattern"),
    (dict(animation_track_name_pattern=5), "animation_track_name_pattern"),
    (dict(animation_track_name="a", animation_track_name_pattern="b"), "animation_track_name"),
    (dict(transform_mode="magic"), "transform_mode"),
    (dict(single_peer_connection="no"), "single_peer_connection"),
    (dict(livekit_client_url=""), "livekit_client_url"),
])
def test_bad_provider_options_name_themselves(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=name):
        LiveKitProvider(**kwargs)
