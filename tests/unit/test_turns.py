import re

from avatarplayer.wire.motion import Flags
from avatarplayer.turns import Frame, Transition, TurnEnded, TurnStarted, TurnTracker, new_conversation_id


def ids():
    n = iter(range(1000))
    return lambda: f"c{next(n)}"


def kinds(events):
    return [type(e).__name__ for e in events]


def test_conversation_id_format():
    cid = new_conversation_id()
    assert re.fullmatch(r"\d{14}_[A-Za-z0-9_-]{12}", cid)
    assert new_conversation_id() != cid


def test_a_turn_start_frames_end():
    t = TurnTracker(ids())
    assert t.frame(0, Flags.START, b"a") == [TurnStarted("c0"), Frame(0, b"a", "c0")]
    assert t.frame(1, Flags(0), b"b") == [Frame(1, b"b", "c0")]
    assert t.frame(2, Flags.END, b"c") == [Frame(2, b"c", "c0"), TurnEnded("c0", "end")]
    assert not t.in_turn and t.turns == 1
    assert t.control(Flags.TRANSITION_END) == []  # END already closed it
    assert t.control(Flags.IDLE) == []


def test_lost_start_opens_a_turn_implicitly():
    t = TurnTracker(ids())
    assert kinds(t.frame(5, Flags(0), b"x")) == ["TurnStarted", "Frame"]
    assert t.implicit_starts == 1 and t.turns == 1


def test_lost_end_is_closed_by_transition_end_once():
    t = TurnTracker(ids())
    t.frame(0, Flags.START, b"")
    assert t.control(Flags.TRANSITION_END) == [TurnEnded("c0", "transition-end")]
    assert t.control(Flags.TRANSITION_END) == []


def test_lost_end_and_transition_end_closed_by_idle():
    t = TurnTracker(ids())
    t.frame(0, Flags.START, b"")
    assert t.control(Flags.IDLE) == [TurnEnded("c0", "idle")]


def test_start_inside_a_turn_supersedes_it():
    t = TurnTracker(ids())
    t.frame(0, Flags.START, b"")
    events = t.frame(1, Flags.START, b"")
    assert events == [TurnEnded("c0", "superseded"), TurnStarted("c1"), Frame(1, b"", "c1")]
    assert t.turns == 2


def test_start_and_end_on_one_frame():
    t = TurnTracker(ids())
    assert kinds(t.frame(0, Flags.START | Flags.END, b"")) == ["TurnStarted", "Frame", "TurnEnded"]


def test_transition_is_passed_on():
    t = TurnTracker(ids())
    assert t.control(Flags.TRANSITION, b"pose") == [Transition(b"pose")]
    assert not t.in_turn


def test_close_for_disconnect():
    t = TurnTracker(ids())
    assert t.close("disconnect") == []
    t.frame(0, Flags(0), b"")
    assert t.close("disconnect") == [TurnEnded("c0", "disconnect")]
