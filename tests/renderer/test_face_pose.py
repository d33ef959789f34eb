"""FLAME keyframe → FacePose, and decoding whole Messages (avatarplayer.face.model)."""

import math

import pytest

from avatarplayer.face.model import (
    GAZE_FULL,
    JAW_FULL_OPEN,
    FacePose,
    lerp_pose,
    pose_from_flame,
    pose_from_message,
)
from avatarplayer.wire.messages import FLAME_FIELDS, build_message


def neutral():
    return {name: [0.0] * size for name, size in FLAME_FIELDS.items()}


def test_neutral_keyframe_is_a_closed_mouth_open_eyes_looking_ahead():
    pose = pose_from_flame(neutral())
    assert pose == FacePose()


def test_missing_and_short_parameters_count_as_zero():
    assert pose_from_flame({}) == FacePose()
    assert pose_from_flame({"jaw_pose": [], "eye_pose": [0.1], "expression": [0.0]}).gaze_y == pytest.approx(0.1 / GAZE_FULL)


@pytest.mark.parametrize("radians, expected", [(0.0, 0.0), (JAW_FULL_OPEN / 2, 0.5), (JAW_FULL_OPEN, 1.0),
                                               (1.0, 1.0), (-0.2, 0.0)])
def test_jaw_opening_is_jaw_pose_x_over_the_full_opening_clamped(radians, expected):
    flame = neutral()
    flame["jaw_pose"] = [radians, 0.3, -0.3]  # only x opens the mouth
    assert pose_from_flame(flame).jaw == pytest.approx(expected)


def test_jaw_full_open_is_configurable():
    flame = neutral()
    flame["jaw_pose"] = [0.2, 0.0, 0.0]
    assert pose_from_flame(flame, jaw_full_open=0.4).jaw == pytest.approx(0.5)


def test_eyelids_left_and_right_clamped():
    flame = neutral()
    flame["eye_lid"] = [1.4, 0.25]
    pose = pose_from_flame(flame)
    assert (pose.blink_left, pose.blink_right, pose.blink) == (1.0, 0.25, 1.0)
    assert pose_from_flame({"eye_lid": [0.6]}).blink_right == pytest.approx(0.6)  # one value: both eyes


def test_gaze_averages_both_eyes_with_screen_signs():
    flame = neutral()
    # FLAME eyeball axis-angle: +x pitch looks down, +y yaw looks towards +x (the viewer's right)
    flame["eye_pose"] = [0.05, 0.10, 0.0, 0.15, 0.20, 0.0]
    pose = pose_from_flame(flame)
    assert pose.gaze_y == pytest.approx(0.10 / GAZE_FULL)
    assert pose.gaze_x == pytest.approx(0.15 / GAZE_FULL)
    flame["eye_pose"] = [-3.0, 3.0, 0.0] * 2
    assert (pose_from_flame(flame).gaze_x, pose_from_flame(flame).gaze_y) == (1.0, -1.0)


def test_head_angles_add_part_of_the_neck_and_are_clamped():
    flame = neutral()
    flame["rotation"] = [0.1, -0.05, 0.02]
    flame["neck_pose"] = [0.1, 0.1, 0.0]
    pose = pose_from_flame(flame)
    assert pose.pitch > 0.1 and pose.yaw > -0.05 and pose.roll == pytest.approx(0.02)
    flame["rotation"] = [5.0, -5.0, 5.0]
    pose = pose_from_flame(flame)
    assert (pose.pitch, pose.yaw, pose.roll) == (0.6, -0.8, 0.6)


def test_leading_expression_components_move_lips_and_brows():
    flame = neutral()
    flame["expression"][3] = 0.2     # the worker's slow mood component
    flame["expression"][1] = -0.4    # goes negative while the jaw opens
    flame["expression"][2] = 0.2     # speech onsets
    pose = pose_from_flame(flame)
    assert pose.smile > 0.3 and pose.pucker > 0.3 and pose.brow > 0.3
    flame["expression"] = [-9.0] * 100
    pose = pose_from_flame(flame)
    assert pose.smile == -1.0 and pose.brow == -1.0 and 0.0 <= pose.pucker <= 1.0


def test_mouth_shapes_of_phonemes_come_from_expression_4_to_6():
    flame = neutral()
    flame["expression"][4:7] = [0.8, 0.0, 0.0]
    assert pose_from_flame(flame).spread == pytest.approx(0.8)
    flame["expression"][4:7] = [0.0, 1.0, 0.0]
    assert pose_from_flame(flame).press == 1.0
    flame["expression"][4:7] = [0.0, 0.0, 0.6]
    assert pose_from_flame(flame).tuck == pytest.approx(0.6)
    flame["expression"][4:7] = [-3.0, 7.0, math.nan]
    pose = pose_from_flame(flame)
    assert (pose.spread, pose.press, pose.tuck) == (0.0, 1.0, 0.0)


def test_every_value_stays_in_range_for_wild_input():
    flame = {name: [(-1) ** i * 50.0 for i in range(size)] for name, size in FLAME_FIELDS.items()}
    pose = pose_from_flame(flame)
    for name in ("jaw", "blink_left", "blink_right", "pucker", "spread", "press", "tuck"):
        assert 0.0 <= getattr(pose, name) <= 1.0
    for name in ("gaze_x", "gaze_y", "smile", "brow"):
        assert -1.0 <= getattr(pose, name) <= 1.0


def test_values_that_are_not_finite_count_as_zero():
    flame = neutral()
    flame["jaw_pose"] = [math.nan, 0.0, 0.0]
    flame["rotation"] = [math.inf, -math.inf, math.nan]
    flame["eye_pose"] = [math.nan] * 6
    assert pose_from_flame(flame) == FacePose()


def test_pose_from_message_decodes_the_last_keyframe():
    flame = neutral()
    flame["jaw_pose"] = [JAW_FULL_OPEN * 0.75, 0.0, 0.0]
    flame["eye_lid"] = [0.5, 0.5]
    pose = pose_from_message(build_message(flame, req_id="turn-1", end=True))
    assert pose.jaw == pytest.approx(0.75, abs=1e-6)
    assert pose.blink == pytest.approx(0.5)


def test_a_message_without_keyframes_gives_none():
    from avatarplayer.wire.messages import MESSAGE_SERVER_RESPONSE_ANIMATION, Message

    empty = Message(type=MESSAGE_SERVER_RESPONSE_ANIMATION).SerializeToString()
    assert pose_from_message(empty) is None
    assert pose_from_message(b"") is None  # an empty Message is valid protobuf, with nothing in it


@pytest.mark.parametrize("garbage", [b"\xff", b"\x0a\x05ab", b"\x32\xff\xff\xff\xff\x0f"])
def test_bytes_that_are_not_a_message_raise_value_error(garbage):
    with pytest.raises(ValueError):
        pose_from_message(garbage)


def test_lerp_pose_endpoints_and_middle():
    a = FacePose(jaw=0.0, yaw=-0.2, smile=1.0)
    b = FacePose(jaw=1.0, yaw=0.2, smile=-1.0)
    assert lerp_pose(a, b, 0.0) == a and lerp_pose(a, b, 1.0) == b
    mid = lerp_pose(a, b, 0.5)
    assert (mid.jaw, mid.yaw, mid.smile) == pytest.approx((0.5, 0.0, 0.0))
    assert lerp_pose(a, b, 1.0) is not b  # a copy: the caller may change it
