"""IdleAnimator: what the face does between turns."""

import pytest

from avatarplayer.face.model import IdleAnimator


def run(seed=1, seconds=60.0, fps=25):
    idle = IdleAnimator(seed)
    return [idle.pose(i / fps) for i in range(int(seconds * fps))]


def blinks(poses):
    """Number of separate closures past half-shut."""
    count, shut = 0, False
    for pose in poses:
        if pose.blink > 0.5 and not shut:
            count += 1
        shut = pose.blink > 0.5
    return count


def test_same_seed_same_animation_other_seed_differs():
    assert run(3, 10) == run(3, 10)
    assert run(3, 10) != run(4, 10)


def test_natural_blink_rate_and_full_closures():
    poses = run(seconds=120)
    n = blinks(poses)
    assert 15 <= n <= 70, n  # people blink every 2–6 s or so
    assert max(p.blink for p in poses) > 0.9
    assert poses[0].blink == 0.0  # eyes open at the start
    assert sum(p.blink == 0.0 for p in poses) > 0.8 * len(poses)  # mostly open


def test_a_blink_takes_a_few_frames_and_reopens():
    poses = run(seconds=20)
    i = next(i for i, p in enumerate(poses) if p.blink > 0.9)
    start = max(j for j in range(i) if poses[j].blink == 0.0)
    end = next(j for j in range(i, len(poses)) if poses[j].blink == 0.0)
    assert 3 <= end - start <= 12


def test_breathing_and_small_head_sway():
    poses = run(seconds=30)
    breath = [p.breath for p in poses]
    assert min(breath) < 0.1 and max(breath) > 0.9
    for name in ("pitch", "yaw", "roll"):
        values = [getattr(p, name) for p in poses]
        assert max(abs(v) for v in values) < 0.08, name
        assert max(values) - min(values) > 0.01, name  # it does move


def test_mouth_rests_closed_and_values_stay_in_range():
    for p in run(seconds=30):
        assert 0.0 <= p.jaw < 0.06
        assert -1.0 <= p.gaze_x <= 1.0 and -1.0 <= p.gaze_y <= 1.0
        assert 0.0 <= p.blink_left <= 1.0 and p.blink_left == p.blink_right


def test_gaze_holds_then_jumps():
    poses = run(seconds=30)
    steps = [abs(b.gaze_x - a.gaze_x) for a, b in zip(poses, poses[1:])]
    assert sum(s > 0.05 for s in steps) >= 5  # saccades
    assert sum(s < 0.01 for s in steps) > len(steps) / 2  # fixations in between


def test_a_clock_that_steps_back_or_jumps_ahead_is_survived():
    idle = IdleAnimator(0)
    idle.pose(10.0)
    assert idle.pose(9.0) is not None
    pose = idle.pose(5000.0)  # a hidden tab for an hour: no catching up on blinks
    assert pose.blink == 0.0
    assert idle.pose(5000.04) is not None


@pytest.mark.parametrize("start", [0.0, 123456.789])
def test_any_time_origin(start):
    idle = IdleAnimator(2)
    poses = [idle.pose(start + i / 25) for i in range(250)]
    assert blinks(poses) >= 1
