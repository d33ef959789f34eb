import pytest

from avatarplayer.stall import StallDetector


def test_fires_once_per_silent_window_inside_a_turn():
    det = StallDetector(3000)
    det.frame(0)
    assert not det.check(2999)
    assert det.check(3000)
    assert not det.check(3040) and not det.check(60_000)  # once per window
    det.frame(5000)  # frames resume: the window closes
    assert det.stall_count == 1 and det.stalled_duration_ms == 5000
    assert det.check(8000)  # a second window
    assert det.stall_count == 2


def test_never_fires_outside_a_turn():
    det = StallDetector(3000)
    assert not det.check(10_000)  # nothing ever played
    det.frame(0)
    det.turn_ended(40)
    assert not det.check(100_000)
    assert det.stall_count == 0


def test_turn_end_closes_a_stall_window():
    det = StallDetector(1000)
    det.frame(0)
    assert det.check(1000)
    assert det.ongoing_stall_ms(1500) == 1500
    det.turn_ended(2000)
    assert det.stalled_duration_ms == 2000 and not det.stalled
    assert det.ongoing_stall_ms(9000) == 0


@pytest.mark.parametrize("value, error", [(0, ValueError), (-5, ValueError), ("3000", TypeError)])
def test_bad_timeout(value, error):
    with pytest.raises(error, match="timeout_ms"):
        StallDetector(value)
