"""MotionPipeline: packets in, render-ordered events out, counters that add up."""

import random

import pytest

from avatarplayer.wire.motion import Flags, MotionPacket, encode_packet
from avatarplayer.pipeline import MotionPipeline, Stalled
from avatarplayer.turns import Frame, Transition, TurnEnded, TurnStarted

T = 40


def ids():
    n = iter(range(1000))
    return lambda: f"c{next(n)}"


def pkt(flags, seq=None, message=b"", previous=()):
    return encode_packet(MotionPacket(flags, seq, message, previous))


def turn_packets(first_seq, count, *, redundant=False):
    out = [pkt(Flags.TRANSITION, None, b"target")]
    for i in range(count):
        seq = first_seq + i
        flags = (Flags.START if i == 0 else Flags(0)) | (Flags.END if i == count - 1 else Flags(0))
        if redundant:
            prev = (f"m{seq - 1}".encode() if i >= 1 else None, f"m{seq - 2}".encode() if i >= 2 else None)
            out.append(pkt(flags | Flags.REDUNDANT, seq, f"m{seq}".encode(), prev))
        else:
            out.append(pkt(flags, seq, f"m{seq}".encode()))
    out.append(pkt(Flags.TRANSITION_END))
    return out


def play(pipe, packets, *, start_ms=0.0, lose=lambda i: False, idle_ticks=10):
    """One packet per tick, as a 25 fps producer sends them; returns every event."""
    events, now = [], start_ms
    for i, data in enumerate(packets):
        if not lose(i):
            events += pipe.receive_packet(data, now + 5)
        events += pipe.tick(now + 10)
        now += T
    for _ in range(idle_ticks):
        events += pipe.receive_packet(pkt(Flags.IDLE), now + 5)
        events += pipe.tick(now + 10)
        now += T
    return events, now


def test_a_clean_turn():
    pipe = MotionPipeline(new_conversation_id=ids())
    events, now = play(pipe, turn_packets(0, 50))
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.message for f in frames] == [f"m{i}".encode() for i in range(50)]
    assert isinstance(events[0], Transition) and events[0].message == b"target"
    assert events[1] == TurnStarted("c0")
    assert events[-1] == TurnEnded("c0", "end")
    s = pipe.summary(now)
    assert (s.frames_received, s.frames_rendered, s.frames_dropped, s.turns) == (50, 50, 0, 1)
    assert s.packets_received == 52 + 10 and s.packets_idle == 10 and s.starved_ticks == 0
    assert s.average_fps == pytest.approx(25.0)
    assert s.last_rendered_seq == 49 and s.time_to_first_frame_ms == pytest.approx(90)  # START at 45, its successor at 85, tick at 90
    assert s.jitter_buffer_emitted_count == 50
    assert 0.0 < s.average_buffer_delay_ms <= 80


def test_transition_end_closes_a_turn_whose_end_was_lost_but_only_after_its_frames():
    pipe = MotionPipeline(new_conversation_id=ids())
    packets = turn_packets(0, 10)
    events, _ = play(pipe, packets, lose=lambda i: i == 10)  # the END frame (seq 9) is lost
    ended = [e for e in events if isinstance(e, TurnEnded)]
    assert ended == [TurnEnded("c0", "transition-end")]
    frames = [e.seq for e in events if isinstance(e, Frame)]
    assert frames == list(range(9))
    assert events.index(ended[0]) > max(i for i, e in enumerate(events) if isinstance(e, Frame))


def test_malformed_packets_are_counted_and_skipped():
    pipe = MotionPipeline(new_conversation_id=ids())
    packets = turn_packets(0, 20)
    packets[5:5] = [b"", b"\x00\xff\xff\xff\xff", b"\x08\x03\x00\x00\x00abc"]
    events, now = play(pipe, packets)
    s = pipe.summary(now)
    assert s.packets_malformed == 3
    assert dict(s.malformed_reasons) == {"truncated": 1, "too-large": 1, "bad-compression": 1}
    assert [e.seq for e in events if isinstance(e, Frame)] == list(range(20))


def test_redundant_packets_recover_single_losses():
    pipe = MotionPipeline(new_conversation_id=ids())
    rng = random.Random(3)
    lost = {i for i in range(2, 400) if rng.random() < 0.1}
    lost -= {i + 1 for i in lost}  # single losses only: each is covered by the next packet
    events, now = play(pipe, turn_packets(0, 400, redundant=True), lose=lambda i: i in lost)
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.seq for f in frames] == list(range(400))
    assert all(f.message == f"m{f.seq}".encode() for f in frames)
    s = pipe.summary(now)
    assert s.frames_recovered == len(lost) and s.frames_skipped == 0


def test_stall_fires_once_inside_a_turn_and_the_turn_ends_later():
    pipe = MotionPipeline(new_conversation_id=ids())
    packets = turn_packets(0, 10)[:6]  # TRANSITION, START and four more frames; then silence
    events, now = play(pipe, packets, idle_ticks=0)
    for _ in range(200):  # 8 s of nothing
        events += pipe.tick(now)
        now += T
    stalls = [e for e in events if isinstance(e, Stalled)]
    assert stalls == [Stalled("c0")]
    s = pipe.summary(now)
    assert s.stall_count == 1 and s.stalled_duration_ms >= 3000
    events = pipe.close(now)
    assert events == [TurnEnded("c0", "disconnect")]
    assert pipe.summary(now).stalled_duration_ms == pytest.approx(s.stalled_duration_ms, abs=1)


def test_no_stall_between_turns():
    pipe = MotionPipeline(new_conversation_id=ids())
    events, now = play(pipe, turn_packets(0, 10), idle_ticks=200)
    assert not [e for e in events if isinstance(e, Stalled)]


def test_close_flushes_the_buffer_and_counts_it():
    pipe = MotionPipeline(new_conversation_id=ids())
    for i, data in enumerate(turn_packets(0, 10)[1:5]):
        pipe.receive_packet(data, i)
    pipe.tick(10)
    pipe.close(20)
    s = pipe.summary(20)
    assert s.frames_received == s.frames_rendered + s.frames_dropped and s.frames_dropped_flushed == 3


def test_disabled_buffer_renders_on_arrival():
    pipe = MotionPipeline(enable_jitter_buffer=False, new_conversation_id=ids())
    events = pipe.receive_packet(pkt(Flags.START, 0, b"a"), 0)
    assert events == [TurnStarted("c0"), Frame(0, b"a", "c0")]
    assert pipe.receive_packet(pkt(Flags(0), 2, b"c"), 1) == [Frame(2, b"c", "c0")]
    assert pipe.receive_packet(pkt(Flags(0), 1, b"b"), 2) == []  # stale now
    assert pipe.receive_packet(pkt(Flags.TRANSITION_END), 3) == [TurnEnded("c0", "transition-end")]
    assert pipe.summary().frames_dropped_stale == 1


def test_start_session_resets_counters():
    pipe = MotionPipeline(new_conversation_id=ids())
    play(pipe, turn_packets(0, 10))
    pipe.start_session(10_000)
    s = pipe.summary(10_000)
    assert (s.packets_received, s.frames_rendered, s.turns, s.time_to_first_frame_ms) == (0, 0, 0, None)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(enable_jitter_buffer="yes"), "enable_jitter_buffer"),
        (dict(max_buffer_delay_ms=-1), "max_buffer_delay_ms"),
        (dict(stall_timeout_ms=0), "timeout_ms"),
    ],
)
def test_bad_options_name_themselves(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=name):
        MotionPipeline(**kwargs)


def test_a_last_frame_retransmitted_after_the_transition_end_does_not_open_a_phantom_turn():
    """The END frame is lost and comes back (a NACK retransmission) after the TRANSITION_END sent
    40 ms later: its turn is over, so it is dropped as stale, not played as a turn of one frame.
    (Seen once in a full run of the 4g lip-sync test: two turns where the worker sent one.)"""
    pipe = MotionPipeline(new_conversation_id=ids())
    rtp = 3600  # 40 ms at 90 kHz
    events, now = [], 0.0
    for seq in range(9):
        flags = Flags.START if seq == 0 else Flags(0)
        events += pipe.receive_packet(pkt(flags, seq, f"m{seq}".encode()), now + 5, rtp * seq)
        events += pipe.tick(now + 10)
        now += T
    # seq 8 ... the END frame (seq 9) is lost; the TRANSITION_END of the tick after it arrives
    events += pipe.receive_packet(pkt(Flags.TRANSITION_END), now + 45, rtp * 10)
    for _ in range(4):
        events += pipe.tick(now + 10)
        now += T
    late = pipe.receive_packet(pkt(Flags.END, 9, b"m9"), now + 5, rtp * 9)  # the retransmission
    for _ in range(4):
        events += late + pipe.tick(now + 10)
        late = []
        now += T
    started = [e for e in events if isinstance(e, TurnStarted)]
    ended = [e for e in events if isinstance(e, TurnEnded)]
    assert started == [TurnStarted("c0")] and ended == [TurnEnded("c0", "transition-end")], events
    assert [e.message for e in events if isinstance(e, Frame)] == [f"m{i}".encode() for i in range(9)]
    s = pipe.summary(now)
    assert s.frames_dropped_stale == 1
    assert s.frames_received == s.frames_rendered + s.frames_dropped + s.frames_buffered
    # the next turn, with later media times, plays as usual
    events = []
    for i, seq in enumerate(range(10, 13)):
        flags = (Flags.START if i == 0 else Flags(0)) | (Flags.END if seq == 12 else Flags(0))
        events += pipe.receive_packet(pkt(flags, seq, f"m{seq}".encode()), now + 5, rtp * (seq + 20))
        events += pipe.tick(now + 10)
        now += T
    for _ in range(4):
        events += pipe.tick(now + 10)
        now += T
    assert [e.message for e in events if isinstance(e, Frame)] == [b"m10", b"m11", b"m12"], events
    assert [e for e in events if isinstance(e, TurnEnded)] == [TurnEnded("c1", "end")]


def test_a_last_frame_that_arrives_after_the_transition_end_but_before_it_is_due_renders_first():
    """Reordered on the way (or retransmitted): the END frame arrives after the TRANSITION_END sent
    40 ms after it, while the frames before it are still held in the buffer. It was sent first, so it
    renders first and ends its turn; the TRANSITION_END must not end the turn under it and leave it to
    open a phantom turn of one frame. (Seen in full runs of the bad and 4g lip-sync tests.)"""
    pipe = MotionPipeline(new_conversation_id=ids())
    rtp = 3600  # 40 ms at 90 kHz
    events, now = [], 0.0
    for seq in range(9):
        flags = Flags.START if seq == 0 else Flags(0)
        events += pipe.receive_packet(pkt(flags, seq, f"m{seq}".encode()), now + 5, rtp * seq)
        if seq < 8:  # frame 8 is still in the buffer when the next two packets arrive
            events += pipe.tick(now + 10)
            now += T
    events += pipe.receive_packet(pkt(Flags.TRANSITION_END), now + 6, rtp * 10)
    events += pipe.receive_packet(pkt(Flags.END, 9, b"m9"), now + 7, rtp * 9)
    for _ in range(10):
        events += pipe.tick(now)
        now += T
    assert [e.message for e in events if isinstance(e, Frame)] == [f"m{i}".encode() for i in range(10)]
    assert [e for e in events if isinstance(e, TurnStarted)] == [TurnStarted("c0")], events
    assert [e for e in events if isinstance(e, TurnEnded)] == [TurnEnded("c0", "end")], events
    s = pipe.summary(now)
    assert s.frames_rendered == 10 and s.frames_dropped == 0
