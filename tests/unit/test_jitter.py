"""JitterBuffer: each rule of docs/player.md on its own, then seeded simulations of bad networks."""

import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avatarplayer.constants import FRAME_INTERVAL_MS
from avatarplayer.jitter import JitterBuffer, PushResult
from tests.unit import netsim

T = 40  # one tick


def feed(buf, seqs, at, **kw):
    return [buf.push(s, f"f{s}", at, **kw) for s in seqs]


def ticks(buf, start, count):
    return [buf.tick(start + k * T) for k in range(count)]


def test_starts_once_two_frames_are_buffered():
    buf = JitterBuffer()
    buf.push(0, "f0", 0)
    assert buf.tick(1) is None and not buf.playing
    buf.push(1, "f1", 30)
    assert buf.tick(41) == "f0" and buf.playing
    assert buf.tick(81) == "f1"
    assert buf.counters.starved_ticks == 0  # ticks before playback are not starvation


def test_a_lone_frame_is_not_held_past_the_delay():
    buf = JitterBuffer(max_buffer_delay_ms=80)
    buf.push(5, "f5", 0)
    assert ticks(buf, 10, 2) == [None, None]
    assert buf.tick(90) == "f5"


def test_holds_at_most_four_and_evicts_the_oldest():
    buf = JitterBuffer()
    feed(buf, range(6), 0)
    c = buf.counters
    assert buf.buffered == 4 and c.dropped_overflow == 2 and buf.buffered_seqs == [2, 3, 4, 5]
    assert ticks(buf, 1, 4) == ["f2", "f3", "f4", "f5"]
    assert c.skipped == 0  # evicted frames are dropped, not skipped


def test_overflow_while_playing_gives_up_the_gap_before_the_evicted_frame():
    buf = JitterBuffer()
    feed(buf, [0, 1], 0)
    assert ticks(buf, 1, 2) == ["f0", "f1"]
    feed(buf, [3, 4, 5, 6, 7], 42)  # 2 is missing; 3 is evicted by 7
    assert buf.counters.dropped_overflow == 1 and buf.counters.skipped == 1
    assert buf.tick(81) == "f4"
    assert buf.push(2, "late", 90) is PushResult.LATE
    assert buf.push(3, "late", 90) is PushResult.LATE


def test_drops_stale_late_and_duplicates():
    buf = JitterBuffer()
    feed(buf, [0, 1], 0)
    assert buf.tick(1) == "f0"
    assert buf.push(0, "again", 2) is PushResult.STALE
    assert buf.push(1, "again", 2) is PushResult.DUPLICATE
    c = buf.counters
    assert (c.dropped_stale, c.dropped_duplicate) == (1, 1)
    # skip over 2 and 3, then they arrive: late, not stale
    assert buf.tick(41) == "f1"
    buf.push(4, "f4", 50)
    assert buf.tick(81) is None  # 4 has waited 31 ms only: starve
    assert buf.tick(131) == "f4"  # waited 81 ms >= 80: skip 2 and 3
    assert c.skipped == 2
    assert buf.push(3, "f3", 140) is PushResult.LATE
    assert buf.push(2, "f2", 140) is PushResult.LATE
    assert c.dropped_late == 2


def test_renders_next_expected_when_it_arrives_within_the_delay():
    buf = JitterBuffer()
    feed(buf, [0, 1], 0)
    assert ticks(buf, 1, 2) == ["f0", "f1"]
    buf.push(3, "f3", 85)
    assert buf.tick(121) is None  # 2 missing, 3 waited 36 ms
    buf.push(2, "f2", 150)  # reordered: arrives after 3
    assert buf.tick(161) == "f2"
    assert buf.tick(201) == "f3"
    assert buf.counters.out_of_order == 1 and buf.counters.skipped == 0


def test_starves_when_empty_and_resumes():
    buf = JitterBuffer()
    feed(buf, [0, 1], 0)
    assert ticks(buf, 1, 4) == ["f0", "f1", None, None]
    assert buf.counters.starved_ticks == 2
    buf.push(2, "f2", 170)
    assert buf.tick(201) == "f2"


def test_end_frame_returns_to_waiting_without_counting_starvation():
    buf = JitterBuffer()
    buf.push(0, "f0", 0, start=True)
    buf.push(1, "f1", 0, end=True)
    assert ticks(buf, 1, 5) == ["f0", "f1", None, None, None]
    assert buf.counters.starved_ticks == 0 and not buf.playing
    # the next turn's seqs jump ahead (a producer that counts idle ticks): no skip, no wait
    buf.push(40, "f40", 300, start=True)
    buf.push(41, "f41", 310)
    assert buf.tick(321) == "f40"
    assert buf.counters.skipped == 0


def test_end_stream_waits_for_the_buffer_to_drain():
    buf = JitterBuffer()
    feed(buf, [0, 1, 2], 0)
    buf.end_stream()
    assert ticks(buf, 1, 5) == ["f0", "f1", "f2", None, None]
    assert not buf.playing and buf.counters.starved_ticks == 0


def test_restarted_producer_resets():
    buf = JitterBuffer()
    feed(buf, range(100, 103), 0)
    assert ticks(buf, 1, 3) == ["f100", "f101", "f102"]
    buf.push(0, "g0", 200, start=True)
    buf.push(1, "g1", 210)
    assert buf.counters.restarts == 1
    assert ticks(buf, 241, 2) == ["g0", "g1"]
    assert buf.counters.dropped_stale == 0


def test_a_duplicate_start_is_not_a_restart():
    buf = JitterBuffer()
    buf.push(10, "f10", 0, start=True)
    buf.push(11, "f11", 5)
    assert ticks(buf, 6, 2) == ["f10", "f11"]
    assert buf.push(10, "dup", 90, start=True) is PushResult.STALE
    assert buf.counters.restarts == 0


def test_a_late_start_after_its_gap_was_skipped_is_not_a_restart():
    buf = JitterBuffer()
    feed(buf, [0, 1], 0)
    assert ticks(buf, 1, 2) == ["f0", "f1"]
    buf.push(3, "f3", 50)
    assert ticks(buf, 81, 3) == [None, None, "f3"]  # 2 skipped
    assert buf.push(2, "f2", 200, start=True) is PushResult.LATE
    assert buf.counters.restarts == 0


def test_restart_without_a_start_flag_resyncs_after_a_run_of_stale_frames():
    buf = JitterBuffer()
    feed(buf, range(1000, 1004), 0)
    ticks(buf, 1, 4)
    results = [buf.push(s, f"g{s}", 200 + s) for s in range(12)]
    assert results[:11] == [PushResult.STALE] * 11 and results[11] is PushResult.ACCEPTED
    assert buf.counters.restarts == 1


def test_recovered_frames_fill_a_gap_before_it_is_skipped():
    buf = JitterBuffer()
    feed(buf, [0, 1], 0)
    assert buf.tick(1) == "f0"
    buf.push(3, "f3", 10)
    assert buf.push(2, "r2", 10, recovered=True) is PushResult.RECOVERED
    assert buf.push(3, "r3", 10, recovered=True) is PushResult.NOT_NEEDED  # already there
    assert buf.push(0, "r0", 10, recovered=True) is PushResult.NOT_NEEDED  # already rendered
    assert ticks(buf, 41, 3) == ["f1", "r2", "f3"]
    c = buf.counters
    assert (c.recovered, c.skipped, c.received) == (1, 0, 4)
    assert c.received == c.rendered + c.dropped + buf.buffered


def test_reset_flushes_and_keeps_counters():
    buf = JitterBuffer()
    feed(buf, [0, 1, 2], 0)
    buf.tick(1)
    buf.reset()
    c = buf.counters
    assert buf.buffered == 0 and c.dropped_flushed == 2 and c.rendered == 1
    assert c.received == c.rendered + c.dropped
    assert buf.push(0, "again", 100) is PushResult.ACCEPTED  # a new stream may reuse seqs


def test_disabled_renders_on_arrival_in_order_dropping_stale():
    buf = JitterBuffer(enabled=False)
    out = []
    for seq in [0, 2, 1, 3, 3, 5]:
        buf.push(seq, f"f{seq}", seq)
        while (frame := buf.tick(seq)) is not None:
            out.append(frame)
    assert out == ["f0", "f2", "f3", "f5"]
    c = buf.counters
    assert (c.dropped_stale, c.dropped_duplicate, c.rendered) == (2, 0, 4) or (c.dropped_stale, c.dropped_duplicate) == (1, 1)
    assert c.received == c.rendered + c.dropped + buf.buffered


@pytest.mark.parametrize("value, error", [(-1, ValueError), (20_000, ValueError), ("80", TypeError), (True, TypeError)])
def test_bad_max_buffer_delay_is_refused_with_its_name(value, error):
    with pytest.raises(error, match="max_buffer_delay_ms"):
        JitterBuffer(max_buffer_delay_ms=value)


def test_delay_statistics():
    buf = JitterBuffer()
    feed(buf, [0, 1], 0)
    buf.tick(10)
    buf.tick(50)
    assert buf.counters.delay_ms_total == pytest.approx(10 + 50)


# --------------------------------------------------------------------------------- simulations


@pytest.mark.parametrize("jitter_ms", [0, 20, 50, 75])
@pytest.mark.parametrize("seed", range(4))
def test_no_loss_and_jitter_under_the_delay_renders_every_frame(jitter_ms, seed):
    rng = random.Random(seed * 1000 + jitter_ms)
    n = 3000
    events = netsim.arrivals(n, netsim.Path(jitter_ms=jitter_ms), rng)
    result = netsim.run(JitterBuffer(max_buffer_delay_ms=80), events, n, rng)
    assert result.rendered == list(range(n))
    c = result.buffer.counters
    assert c.skipped == 0 and c.dropped == 0
    intervals = [b - a for a, b in zip(result.render_times, result.render_times[1:])]
    assert sum(intervals) / len(intervals) == pytest.approx(40, abs=0.5)


SCENARIOS = {
    "loss-5%": netsim.Path(loss=0.05, jitter_ms=30),
    "loss-20%": netsim.Path(loss=0.20, jitter_ms=30),
    "heavy-jitter-reorders": netsim.Path(jitter_ms=200),
    "duplicates": netsim.Path(duplicate=0.2, jitter_ms=40),
    "bursts": netsim.Path(jitter_ms=10, burst_every_ms=2000, burst_ms=300),
    "everything": netsim.Path(loss=0.1, duplicate=0.1, jitter_ms=150, burst_every_ms=3000, burst_ms=400),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("seed", range(3))
def test_bad_networks_keep_order_and_bounds(name, seed):
    rng = random.Random(zlib.crc32(f"{name}/{seed}".encode()))  # the same network in every process
    n = 4000
    path = SCENARIOS[name]
    events = netsim.arrivals(n, path, rng)
    result = netsim.run(JitterBuffer(), events, n, rng)  # asserts order and bounds on every tick
    c = result.buffer.counters
    delivered = {seq for _, seq in events}
    assert set(result.rendered) <= delivered
    # every frame that arrived is accounted for exactly once
    assert c.received == len(events) == c.rendered + c.dropped
    if path.jitter_ms <= 2 * FRAME_INTERVAL_MS and not path.burst_every_ms:
        # jitter within the 80 ms delay: every frame that arrived renders; only copies are dropped
        assert c.rendered == len(delivered) and c.dropped == c.dropped_duplicate + c.dropped_stale
        assert c.dropped == len(events) - len(delivered)
    else:
        # jitter beyond the delay, or freezes: late frames and the overflow of a burst are dropped,
        # and nothing else (these fixed seeds render 88-95 %)
        assert c.rendered >= 0.85 * len(delivered)
        assert c.dropped == c.dropped_late + c.dropped_overflow + c.dropped_duplicate + c.dropped_stale


@given(
    loss=st.floats(0, 0.5),
    duplicate=st.floats(0, 0.3),
    jitter=st.floats(0, 300),
    delay=st.integers(0, 400),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_invariants_hold_for_any_network_and_delay(loss, duplicate, jitter, delay, seed):
    rng = random.Random(seed)
    events = netsim.arrivals(600, netsim.Path(loss=loss, duplicate=duplicate, jitter_ms=jitter), rng)
    netsim.run(JitterBuffer(max_buffer_delay_ms=delay), events, 600, rng)


def test_turns_back_to_back_with_end_frames():
    """Several turns with END on each last frame: all rendered, no starvation between turns."""
    rng = random.Random(7)
    buf = JitterBuffer()
    events = []
    ends = set()
    seq = 0
    for turn in range(5):
        length = rng.randint(20, 80)
        offset = turn * 5000
        for i in range(length):
            events.append((offset + i * 40 + rng.uniform(10, 40), seq + i))
        ends.add(seq + length - 1)
        seq += length
    events.sort()
    rendered, i, tick = [], 0, 3.0
    while tick < events[-1][0] + 500:
        while i < len(events) and events[i][0] <= tick:
            t, s = events[i]
            buf.push(s, s, t, end=s in ends)
            i += 1
        if (f := buf.tick(tick)) is not None:
            rendered.append(f)
        tick += 40
    assert rendered == list(range(seq))
    assert buf.counters.starved_ticks == 0
