"""FaceDirector: idle → blend-in → turn → blend-out → idle, on an injected clock."""

import pytest

from avatarplayer.face.model import FaceDirector, FacePose, IdleAnimator, Mode

from .fakes import FakeClock

SPEAK = FacePose(jaw=1.0, yaw=0.3, smile=-0.5, blink_left=0.0, blink_right=0.0)


class StillIdle(IdleAnimator):
    """An idle pose that does not move, so blends can be checked exactly."""

    def pose(self, t):
        return FacePose(jaw=0.0, smile=0.2, breath=0.5)


def director(**options):
    clock = FakeClock()
    return FaceDirector(clock, idle=StillIdle(), **options), clock


def run_frames(d, clock, n, pose=SPEAK, cid="c1"):
    shown = []
    for _ in range(n):
        clock.advance(40)
        d.frame(pose, cid)
        shown.append(d.pose())
    return shown


def test_starts_idle():
    d, _ = director()
    assert d.mode is Mode.IDLE and d.pose().smile == pytest.approx(0.2)


def test_transition_blends_in_over_eight_frames_by_default():
    d, clock = director()
    d.transition(SPEAK)
    assert d.mode is Mode.BLEND_IN
    assert d.pose().jaw == 0.0  # starts exactly at idle
    clock.advance(160)
    assert 0.3 < d.pose().jaw < 0.7  # halfway, eased
    clock.advance(160)
    assert d.pose().jaw == pytest.approx(1.0)
    assert d.mode is Mode.TURN


def test_frames_without_a_transition_blend_in_too():
    d, clock = director(blend_in_frames=4)
    shown = run_frames(d, clock, 6)
    jaws = [p.jaw for p in shown]
    assert jaws[0] == 0.0 and 0.0 < jaws[1] < jaws[2] < 1.0
    assert jaws[4:] == [1.0, 1.0] and d.mode is Mode.TURN
    assert d.conversation_id == "c1" and d.turns == 1


def test_the_blend_is_monotonic_and_smooth():
    d, clock = director(blend_in_frames=20)
    jaws = [p.jaw for p in run_frames(d, clock, 22)]
    steps = [b - a for a, b in zip(jaws, jaws[1:])]
    assert all(s >= 0 for s in steps)
    assert max(steps) < 0.1  # no jump
    assert steps[0] < steps[9] and steps[-3] < steps[9]  # eased at both ends


def test_end_of_turn_blends_out_over_forty_frames():
    d, clock = director()
    d.turn_started("c1")
    run_frames(d, clock, 10)
    d.turn_ended("c1", "end")
    assert d.mode is Mode.BLEND_OUT and d.conversation_id is None
    assert d.pose().jaw == pytest.approx(1.0)  # starts from what was shown
    clock.advance(800)
    assert 0.2 < d.pose().jaw < 0.8
    clock.advance(799)
    assert d.mode is Mode.BLEND_OUT
    clock.advance(1)
    assert d.pose().jaw == 0.0 and d.mode is Mode.IDLE


@pytest.mark.parametrize("reason", ["end", "transition-end", "idle"])
def test_every_normal_end_blends_out_slowly(reason):
    d, clock = director()
    run_frames(d, clock, 10)
    d.turn_ended("c1", reason)
    clock.advance(40 * 39)
    d.pose()
    assert d.mode is Mode.BLEND_OUT


def test_disconnect_blends_out_in_twelve_frames():
    d, clock = director()
    run_frames(d, clock, 10)
    d.turn_ended("c1", "disconnect")
    clock.advance(40 * 11)
    d.pose()
    assert d.mode is Mode.BLEND_OUT
    clock.advance(40)
    d.pose()
    assert d.mode is Mode.IDLE


def test_disconnect_during_a_slow_blend_out_finishes_sooner_without_a_jump():
    d, clock = director()
    run_frames(d, clock, 10)
    d.stalled()
    clock.advance(400)
    before = d.pose().jaw
    d.turn_ended("c1", "disconnect")
    assert d.pose().jaw == pytest.approx(before)
    clock.advance(480)
    d.pose()
    assert d.mode is Mode.IDLE


def test_stall_blends_out_and_resumed_frames_blend_back_in():
    d, clock = director()
    run_frames(d, clock, 10)
    d.stalled()
    assert d.mode is Mode.BLEND_OUT and d.conversation_id == "c1"  # the turn is still open
    clock.advance(400)
    mid = d.pose().jaw
    shown = run_frames(d, clock, 10)
    assert d.mode is Mode.TURN and shown[-1].jaw == 1.0
    assert abs(shown[0].jaw - mid) < 0.15  # continues from where the fade was


def test_a_superseded_turn_keeps_the_face_in_the_turn():
    d, clock = director()
    run_frames(d, clock, 10)
    d.turn_ended("c1", "superseded")
    d.turn_started("c2")
    assert d.mode is Mode.TURN
    run_frames(d, clock, 2, cid="c2")
    assert d.pose().jaw == 1.0 and d.turns == 2


def test_a_turn_starting_during_the_blend_out_starts_from_the_shown_pose():
    d, clock = director()
    run_frames(d, clock, 10)
    d.turn_ended("c1", "end")
    clock.advance(600)
    shown = d.pose()
    d.transition(FacePose(jaw=0.5))
    assert d.mode is Mode.BLEND_IN
    assert d.pose().jaw == pytest.approx(shown.jaw)


def test_transition_pose_is_the_target_until_frames_come():
    d, clock = director()
    d.transition(FacePose(jaw=0.4))
    clock.advance(400)
    assert d.pose().jaw == pytest.approx(0.4)
    d.turn_started("c1")
    d.frame(FacePose(jaw=0.9), "c1")
    assert d.pose().jaw == pytest.approx(0.9)


def test_frames_that_stop_without_any_hook_release_the_face_after_the_stall_timeout():
    d, clock = director(stall_timeout_ms=3000)
    run_frames(d, clock, 10)
    clock.advance(2999)
    d.pose()
    assert d.mode is Mode.TURN
    clock.advance(2)
    d.pose()
    assert d.mode is Mode.BLEND_OUT


def test_breathing_continues_during_a_turn():
    d, clock = director()
    shown = run_frames(d, clock, 12)
    assert shown[-1].breath == 0.5  # from the idle animator, not the frame (breath 0)


def test_timer_draws_while_idle_or_blending_out_but_not_while_frames_come():
    d, clock = director()
    assert d.wants_timer_draw(clock())
    run_frames(d, clock, 10)
    assert not d.wants_timer_draw(clock() + 20)
    assert d.wants_timer_draw(clock() + 100)  # the buffer is starving: keep the face alive
    d.turn_ended("c1", "end")
    assert d.wants_timer_draw(clock())


def test_zero_frame_blends_switch_at_once():
    d, clock = director(blend_in_frames=0, blend_out_frames=0)
    d.frame(SPEAK, "c1")
    assert d.pose().jaw == 1.0 and d.mode is Mode.TURN
    d.turn_ended("c1", "end")
    assert d.pose().jaw == 0.0 and d.mode is Mode.IDLE


@pytest.mark.parametrize("name", ["blend_in_frames", "blend_out_frames", "disconnect_blend_frames"])
@pytest.mark.parametrize("value, error", [(-1, ValueError), (501, ValueError), (2.5, TypeError), (True, TypeError),
                                          ("8", TypeError), (None, TypeError)])
def test_bad_blend_lengths_raise_naming_the_option(name, value, error):
    with pytest.raises(error, match=name):
        FaceDirector(FakeClock(), **{name: value})
