"""FacePainter (avatarplayer.face.painter): what is drawn for a pose, read back from its recorder."""

import math

import pytest

from avatarplayer.face.model import FacePose
from avatarplayer.face.painter import MOUTH_INSIDE, NOSE_SHINE, SCLERA, TEETH, FacePainter

from .lips import lip_box


def paint(pose, width=480, height=480, background=True):
    painter = FacePainter(width, height, background)
    painter.paint(pose)
    return painter.rec.calls()


def fills(calls):
    return [args[0] for name, args in calls if name == "fillStyle"]


@pytest.mark.parametrize("pose", [
    FacePose(),
    FacePose(jaw=1.0, blink_left=1.0, blink_right=0.5, gaze_x=1.0, gaze_y=-1.0, pitch=0.6, yaw=-0.8, roll=0.6,
             smile=-1.0, pucker=1.0, brow=1.0, breath=1.0),
    FacePose(jaw=0.5, gaze_x=-1.0, gaze_y=1.0, pitch=-0.6, yaw=0.8, roll=-0.6, smile=1.0, brow=-1.0),
    FacePose(jaw=1.0, pucker=1.0, spread=1.0, press=0.5, tuck=1.0, smile=-1.0),
])
def test_every_call_is_well_formed_finite_and_balanced(pose):
    calls = paint(pose)
    depth = 0
    for name, args in calls:
        assert all(isinstance(a, str) or isinstance(a, tuple) or math.isfinite(a) for a in args), (name, args)
        depth += {"save": 1, "restore": -1}.get(name, 0)
        assert depth >= 0
    assert depth == 0
    assert 150 < len(calls) < 400


def test_an_open_mouth_shows_its_inside_and_a_closed_one_does_not():
    assert MOUTH_INSIDE in fills(paint(FacePose(jaw=0.6)))
    assert MOUTH_INSIDE not in fills(paint(FacePose(jaw=0.0)))


def test_mouth_shapes_rounded_narrow_spread_wide_pressed_thin_tucked_shows_teeth():
    rest_w, rest_h = lip_box(paint(FacePose()))
    round_w, round_h = lip_box(paint(FacePose(jaw=0.3, pucker=1.0)))
    spread_w, spread_h = lip_box(paint(FacePose(jaw=0.3, spread=1.0)))
    assert round_w < 0.8 * rest_w < spread_w * 0.8
    assert round_h / round_w > 2 * spread_h / spread_w
    pressed_w, pressed_h = lip_box(paint(FacePose(jaw=0.3, press=1.0)))
    assert pressed_h < rest_h and MOUTH_INSIDE not in fills(paint(FacePose(jaw=0.3, press=1.0)))
    assert TEETH not in fills(paint(FacePose())) and TEETH in fills(paint(FacePose(tuck=1.0)))


def test_closed_eyes_show_no_whites():
    assert fills(paint(FacePose())).count(SCLERA) == 2
    assert fills(paint(FacePose(blink_left=1.0))).count(SCLERA) == 1
    assert fills(paint(FacePose(blink_left=1.0, blink_right=1.0))).count(SCLERA) == 0


def test_head_roll_rotates_the_drawing_and_yaw_moves_the_features():
    rotations = [args for name, args in paint(FacePose(roll=0.2)) if name == "rotate"]
    assert rotations and rotations[0][0] == pytest.approx(-0.2 * 1.6)
    # the nose tip's shine moves towards the side the head turns to
    def nose_x(pose):
        last = None
        for name, args in paint(pose):
            if name == "ellipse":
                last = args
            elif name == "fillStyle" and args[0] == NOSE_SHINE:
                return last[0]
        raise AssertionError("no nose drawn")

    assert nose_x(FacePose(yaw=0.3)) > nose_x(FacePose()) > nose_x(FacePose(yaw=-0.3))


def test_background_choices():
    assert paint(FacePose(), background=False)[1][0] == "clearRect"
    assert "#102030" in fills(paint(FacePose(), background="#102030"))


def test_the_face_is_centred_and_scaled_into_a_wide_canvas():
    calls = paint(FacePose(), width=800, height=400)
    transforms = [args for name, args in calls if name == "setTransform"]
    assert transforms[1] == pytest.approx((1.0, 0, 0, 1.0, 200.0, 0.0))
