"""Following the audio: the playout clock, the jitter buffer's due times, the pipeline and the
ticker locking onto them. Simulated time throughout (netsim-style), so every rule is exact."""

import asyncio

import pytest

from avatarplayer.jitter import JitterBuffer
from avatarplayer.wire.motion import Flags, MotionPacket, encode_packet
from avatarplayer.pipeline import MotionPipeline, SyncChanged
from avatarplayer.turns import Frame, TurnStarted
from avatarplayer.sync import (
    AUDIO_PATH_MS,
    JUMP_MS,
    AudioStats,
    PlayoutClock,
    RtpUnwrapper,
    SyncMode,
    SyncReason,
)
from avatarplayer.ticker import Ticker

T = 40
RTP_PER_FRAME = 90 * T


def audio(now, jbd_ms_so_far, emitted, received):
    """A cumulative snapshot whose jitter buffer delay averages ``jbd_ms_so_far`` per sample."""
    return AudioStats(now_ms=now, jitter_buffer_delay_s=jbd_ms_so_far * emitted / 1000.0,
                      jitter_buffer_emitted_count=emitted, packets_received=received)


class AudioReceiver:
    """Cumulative inbound-rtp counters, advanced one window at a time (as the browser's grow)."""

    def __init__(self):
        self.delay_s = 0.0
        self.emitted = 0
        self.packets = 0

    def window(self, now, jbd_ms, *, ms=500, playing=True):
        if playing:
            samples = 48 * ms
            self.delay_s += jbd_ms * samples / 1000.0
            self.emitted += samples
            self.packets += ms // 20
        return AudioStats(now_ms=now, jitter_buffer_delay_s=self.delay_s,
                          jitter_buffer_emitted_count=self.emitted, packets_received=self.packets)


def run_clock(clock, receiver, start_ms, end_ms, *, transit=lambda k: 5.0, jbd_ms=30.0, playing=True):
    """Motion packets every 40 ms (media time k * 40, arriving ``transit(k)`` later) and audio
    statistics every 500 ms, from ``start_ms`` to ``end_ms``."""
    events = []
    for k in range(int(start_ms // T), int(end_ms // T)):
        events.append((k * T + transit(k), "motion", k))
    for t in range(int(start_ms // 500) * 500 + 500, int(end_ms) + 1, 500):
        events.append((float(t), "audio", None))
    for when, kind, k in sorted(events, key=lambda e: (e[0], e[1] == "motion")):
        if kind == "motion":
            clock.observe_motion(when, k * RTP_PER_FRAME)
        else:
            clock.observe_audio(receiver.window(when, jbd_ms, playing=playing))


def locked_clock(jbd_ms=30.0, transit_ms=5.0, *, path_ms=AUDIO_PATH_MS, trim_ms=0.0):
    """A clock that has followed 2 s of motion (transit ``transit_ms``) and audio (NetEq ``jbd_ms``)."""
    clock = PlayoutClock(audio_path_ms=path_ms, trim_ms=trim_ms)
    receiver = AudioReceiver()
    clock.observe_audio(receiver.window(0, jbd_ms))
    run_clock(clock, receiver, 0, 2000, transit=lambda k: transit_ms, jbd_ms=jbd_ms)
    clock.receiver = receiver
    return clock


# ------------------------------------------------------------------------------- the clock


def test_rtp_timestamps_unwrap_across_the_32_bit_edge():
    unwrap = RtpUnwrapper()
    near_top = 2**32 - RTP_PER_FRAME
    a, b, c = unwrap(near_top), unwrap(0), unwrap(RTP_PER_FRAME)
    assert b - a == pytest.approx(T) and c - b == pytest.approx(T)
    assert unwrap(RTP_PER_FRAME * 0.5) < c  # a reordered older one stays older


def test_offset_is_transit_plus_audio_jitter_buffer_plus_path():
    clock = locked_clock(jbd_ms=30.0, transit_ms=5.0)
    offset = clock.offset(2000)
    assert clock.reason is SyncReason.LOCKED
    # media time 0 arrived at 5 ms; its audio is heard 30 ms (NetEq) + the path later
    assert offset == pytest.approx(5.0 + 30.0 + AUDIO_PATH_MS)
    assert clock.audio_jitter_buffer_ms == pytest.approx(30.0)
    assert clock.audio_delay_ms == pytest.approx(30.0 + AUDIO_PATH_MS)


def test_trim_moves_the_face_later():
    assert locked_clock(trim_ms=25).offset(2000) == pytest.approx(locked_clock().offset(2000) + 25)


def test_arrival_jitter_and_netEq_waits_cancel_out():
    # each packet's transit swings +-15 ms; NetEq's wait swings the other way (it plays steadily):
    # the mean over the window is the playout delay, whatever the swing
    clock = PlayoutClock()
    receiver = AudioReceiver()
    clock.observe_audio(receiver.window(0, 40))
    run_clock(clock, receiver, 0, 3000, transit=lambda k: 20 + (15 if k % 2 else -15), jbd_ms=40)
    assert clock.offset(3000) == pytest.approx(20 + 40 + AUDIO_PATH_MS, abs=2.0)


def test_packets_too_late_to_be_played_do_not_count():
    clock = locked_clock(jbd_ms=30.0, transit_ms=10.0)
    before = clock.target(2000)
    # an outage: the next 0.5 s of motion arrives in one burst, all of it too late for its audio
    for k in range(50, 62):
        clock.observe_motion(62 * T + 100, k * RTP_PER_FRAME)
    run_clock(clock, clock.receiver, 2480, 4000, transit=lambda k: 10.0, jbd_ms=30.0)
    assert clock.target(4000) == pytest.approx(before, abs=1.0)


def test_offset_slews_small_changes_and_jumps_big_ones():
    clock = locked_clock(jbd_ms=30.0)
    base = clock.offset(2000)
    # one window 40 ms higher: a quarter of it counts (windows are noisy, the playout is steady)
    run_clock(clock, clock.receiver, 2000, 2500, jbd_ms=70)
    assert clock.target(2500) == pytest.approx(base + 10, abs=0.5)
    # and the offset moves there at 10 % of real time, not at once
    assert clock.offset(2050) == pytest.approx(base + 5, abs=0.5)
    assert clock.offset(2100) == pytest.approx(base + 10, abs=0.5)
    run_clock(clock, clock.receiver, 2500, 6500, jbd_ms=70)  # it stays: the estimate converges
    assert clock.target(6500) == pytest.approx(base + 40, abs=5)
    assert clock.jumps == 0
    # NetEq resized by more than JUMP_MS (after an outage): taken at once
    run_clock(clock, clock.receiver, 6500, 7000, jbd_ms=70 + JUMP_MS + 60)
    assert clock.target(7000) == pytest.approx(base + JUMP_MS + 100, abs=5)
    assert clock.offset(7000) == pytest.approx(clock.target(7000))
    assert clock.jumps == 1


def test_no_audio_stalled_audio_and_stale_statistics_release_the_clock():
    clock = PlayoutClock()
    clock.observe_motion(5, 0)
    assert clock.offset(10) is None and clock.reason is SyncReason.NO_AUDIO
    clock = locked_clock()
    assert clock.offset(2000) is not None
    run_clock(clock, clock.receiver, 2000, 2500, playing=False)  # no packet, nothing emitted
    assert clock.offset(2500) is not None  # one window without audio: a burst of loss, perhaps
    run_clock(clock, clock.receiver, 2500, 3500, playing=False)
    assert clock.offset(3500) is None and clock.reason is SyncReason.AUDIO_STALLED  # 1.5 s: stopped
    run_clock(clock, clock.receiver, 3500, 4000)  # back
    assert clock.offset(4000) is not None and clock.reason is SyncReason.LOCKED
    assert clock.offset(4000 + 1500) is None and clock.reason is SyncReason.AUDIO_STALLED  # no news


def test_slow_statistics_do_not_stall_a_voice_that_plays():
    """Under load (a flood of data messages, a busy page) a getStats() read can take longer than
    the stall threshold; while the synchronization source shows new audio played, the voice is
    not stalled, and once it stops moving the stall is seen as before."""
    clock = PlayoutClock()
    receiver = AudioReceiver()
    clock.observe_audio(receiver.window(0, 30))
    for start in range(0, 2000, 500):
        deliver(clock, start, start + 500, 1000)
        run_clock(clock, receiver, start, start + 500, transit=lambda k: 5.0, jbd_ms=30)
    assert clock.offset(2000) is not None
    deliver(clock, 2000, 4000, 1000)  # two seconds of voice, and no statistics at all
    assert clock.offset(4000) is not None and clock.reason is SyncReason.LOCKED
    assert clock.offset(4000 + 1500) is None and clock.reason is SyncReason.AUDIO_STALLED  # nothing new


def test_absurd_audio_delay_and_missing_rtp_release_the_clock():
    clock = locked_clock(jbd_ms=5000)
    assert clock.offset(2000) is None and clock.reason is SyncReason.AUDIO_DELAY
    clock = locked_clock()
    clock.observe_motion_without_rtp()
    assert clock.offset(2000) is None and clock.reason is SyncReason.NO_RTP
    clock.observe_motion(2001, 50 * RTP_PER_FRAME)
    assert clock.offset(2001) is not None


def test_a_new_rtp_clock_starts_the_transit_over():
    clock = locked_clock(transit_ms=5.0)
    media = clock.observe_motion(2000, 3_000_000_000)  # a republished track: another random RTP origin
    assert media == pytest.approx(3_000_000_000 / 90)
    assert clock.transit_ms == pytest.approx(2000 - 3_000_000_000 / 90)
    assert clock.target(2000) is None  # until the audio statistics place the new clock


# ------------------------------------------------------------- following NetEq's playout


AUDIO_RTP0 = 123_456


def deliver(clock, start_ms, end_ms, anchor, *, step=20):
    """Synchronization source readings: NetEq delivers audio position p at p + anchor."""
    t = start_ms
    while t < end_ms:
        clock.observe_audio_playout(AUDIO_RTP0 + (t - anchor) * 48, t, t + 5)
        t += step


def quiet(clock, start_ms, end_ms, last_ms, anchor, *, step=40):
    """Readings while NetEq delivers nothing: the same last delivery, read again and again."""
    t = start_ms
    while t < end_ms:
        clock.observe_audio_playout(AUDIO_RTP0 + (last_ms - anchor) * 48, last_ms, t)
        t += step


def test_the_synchronization_source_drives_the_clock_once_the_mapping_is_learnt():
    clock = PlayoutClock()
    receiver = AudioReceiver()
    clock.observe_audio(receiver.window(0, 30))
    # audio position p is played at p + 1000 (its RTP origin is unrelated to the motion's)
    for start in range(0, 3000, 500):
        deliver(clock, start, start + 500, 1000)
        run_clock(clock, receiver, start, start + 500, transit=lambda k: 5.0, jbd_ms=30)
    assert clock.follows_playout
    steady = clock.offset(3000)
    assert steady == pytest.approx(5 + 30 + AUDIO_PATH_MS, abs=0.5)  # the same as the statistics say
    # NetEq stalls 200 ms (a late packet): every position is played 200 ms later from now on;
    # the face follows at once, with no slewing, although the statistics have not moved yet
    deliver(clock, 3200, 3400, 1200)
    assert clock.offset(3400) == pytest.approx(steady + 200, abs=0.5)
    # and when NetEq accelerates back, the face follows that too
    deliver(clock, 3400, 3600, 1190)
    deliver(clock, 3600, 3800, 1180)
    assert clock.offset(3800) == pytest.approx(steady + 180, abs=3)


def test_the_face_holds_while_the_voice_stalls_but_not_for_long():
    clock = PlayoutClock()
    receiver = AudioReceiver()
    clock.observe_audio(receiver.window(0, 30))
    for start in range(0, 2000, 500):
        deliver(clock, start, start + 500, 1000)
        run_clock(clock, receiver, start, start + 500, jbd_ms=30)
    assert clock.offset(2000) is not None and not clock.frozen(2000)
    # nothing delivered after 1980: the voice stalled (the player keeps reading every 40 ms)
    quiet(clock, 2020, 2030, 1980, 1000)
    assert not clock.frozen(2030)
    quiet(clock, 2060, 2070, 1980, 1000)
    assert clock.frozen(2070) and clock.freezes == 1
    quiet(clock, 2100, 2420, 1980, 1000)
    assert clock.frozen(2420) and clock.freezes == 1
    quiet(clock, 2460, 2500, 1980, 1000)
    assert not clock.frozen(2460)  # 400 ms at most: then perhaps it is only silence (DTX)
    assert not clock.frozen(2600)
    deliver(clock, 2600, 2800, 1600)  # delivering again, but not steady for a second yet
    quiet(clock, 2880, 2890, 2780, 1600)
    assert not clock.frozen(2890)
    deliver(clock, 2900, 4000, 1600)
    quiet(clock, 4060, 4070, 3980, 1600)
    assert clock.frozen(4070) and clock.freezes == 2  # steady again: a new stall holds again


def test_the_playout_is_read_often_while_it_moves_and_seldom_once_it_keeps_still():
    from avatarplayer.sync import CALM_MS, READ_FAST_MS, READ_SLOW_MS

    clock = PlayoutClock()
    assert clock.playout_reading_due(0)
    clock.observe_audio_playout(AUDIO_RTP0, 0, 5)
    assert not clock.playout_reading_due(100) and clock.playout_reading_due(5 + READ_FAST_MS)
    deliver(clock, 0, CALM_MS + 2000, 1000, step=READ_FAST_MS)  # steady: calm after CALM_MS
    t = CALM_MS + 2000 + 5
    assert not clock.playout_reading_due(t + READ_FAST_MS) and clock.playout_reading_due(t + READ_SLOW_MS)
    deliver(clock, t, t + 1, 1200)  # NetEq moved its playout by 200 ms: read often again
    assert clock.playout_reading_due(t + 5 + READ_FAST_MS)


def test_a_new_audio_track_forgets_the_old_mapping():
    clock = PlayoutClock()
    receiver = AudioReceiver()
    clock.observe_audio(receiver.window(0, 30))
    for start in range(0, 2000, 500):
        deliver(clock, start, start + 500, 1000)
        run_clock(clock, receiver, start, start + 500, jbd_ms=30)
    assert clock.follows_playout
    clock.observe_audio_playout(3_000_000_000, 2001, 2002)  # another RTP origin
    assert not clock.follows_playout  # until a statistics window maps the new track


# ------------------------------------------------------------------------- the jitter buffer


def test_a_frame_never_renders_before_its_audio_is_heard():
    buf = JitterBuffer()
    offset = 100.0  # heard 100 ms after its media time
    buf.push(0, "f0", 10, start=True, media_ms=0)
    buf.push(1, "f1", 50, media_ms=40)
    assert buf.tick(50, offset) is None and buf.tick(95, offset) is None  # two frames, but not due
    assert buf.tick(100, offset) == "f0"
    assert buf.tick(120, offset) is None
    assert buf.tick(140, offset) == "f1"
    assert buf.counters.held == 2 and buf.counters.starved_ticks == 0


def test_without_an_offset_the_buffer_keeps_its_own_clock():
    buf = JitterBuffer()
    buf.push(0, "f0", 0, media_ms=0)
    buf.push(1, "f1", 1, media_ms=40)
    assert buf.tick(2, None) == "f0"  # two buffered: play, whatever the media time says


def test_a_lone_first_frame_starts_when_due_not_after_two():
    buf = JitterBuffer()
    buf.push(7, "f7", 0, media_ms=0)
    assert buf.tick(30, 50.0) is None
    assert buf.tick(50, 50.0) == "f7"


def test_a_gap_holds_later_frames_at_most_the_buffer_delay_after_they_arrived():
    buf = JitterBuffer(max_buffer_delay_ms=80)
    offset = 200.0
    buf.push(0, "f0", 0, media_ms=0)
    assert buf.tick(200, offset) == "f0"
    buf.push(2, "f2", 80, media_ms=80)  # 1 is lost; 2 arrived at 80 and is due at 280
    assert buf.tick(240, offset) is None  # 1's slot: missing (2 has waited 160 ms, but is not due)
    assert buf.tick(280, offset) == "f2"  # 2 due, waited long enough: the gap is given up
    assert buf.counters.skipped == 1
    # a later frame that arrived just now waits for the missing one up to the delay
    buf.push(4, "f4", 350, media_ms=160)
    assert buf.tick(360, offset) is None  # due at 360, but 3 may still come until 350 + 80
    buf.push(3, "f3", 365, media_ms=120)
    assert buf.tick(366, offset) == "f3"


def test_behind_the_voice_the_buffer_says_so_and_catches_up():
    buf = JitterBuffer()
    offset = 0.0
    for seq in range(4):
        buf.push(seq, f"f{seq}", 0, media_ms=seq * T)
    assert buf.tick(100, offset) == "f0"
    assert buf.overdue(100, offset)  # f1 was due at 40
    assert buf.tick(100, offset) == "f1"
    assert buf.overdue(100, offset)  # f2 at 80: 20 ms ago is half a tick
    assert buf.tick(100, offset) == "f2"
    assert not buf.overdue(100, offset)  # f3 at 120: still ahead
    assert buf.next_due(offset) == 120


# ----------------------------------------------------------------------------- the pipeline


def frame_packet(seq, flags=Flags(0)):
    return encode_packet(MotionPacket(flags, seq, b"m%d" % seq))


def simulate(pipe, frames, *, transit=3.0, jbd_ms=40.0, until=None, lost=()):
    """Frames 0..frames-1 leave every 40 ms and arrive ``transit`` later (but ``lost``), audio
    statistics come every 500 ms, and the pipeline ticks like the player's locked ticker does.
    Returns {seq: render time}."""
    receiver = AudioReceiver()
    renders = {}
    deadline, now = 0.0, 0.0
    end = until or frames * T + 1000
    while now < end:
        seq = int(now // T)
        if now % T == transit and seq < frames and seq not in lost:
            pipe.receive_packet(frame_packet(seq, Flags.START if seq == 0 else Flags(0)), now,
                                90_000 + seq * RTP_PER_FRAME)
        if now % 500 == 0:
            pipe.observe_audio(receiver.window(now, jbd_ms))
        if now >= deadline:
            for e in pipe.tick(now):
                if getattr(e, "message", b"").startswith(b"m"):
                    renders[int(e.message[1:])] = now
            deadline += T
            due = pipe.next_due()
            if due is not None and due - deadline <= T / 2:
                deadline = max(now + 1, round(due))
        now += 1.0
    return renders


def test_pipeline_renders_each_frame_when_its_audio_is_heard():
    pipe = MotionPipeline()
    renders = simulate(pipe, 100, transit=3.0, jbd_ms=40.0)
    offset = 3 + 40 + AUDIO_PATH_MS
    assert sorted(renders) == list(range(100))
    # once the audio statistics are in (after half a second), every frame renders on its due time
    late = {seq: t - (seq * T + offset) for seq, t in renders.items() if seq >= 30}
    assert max(abs(v) for v in late.values()) <= 1.0, late
    s = pipe.summary(5000)
    assert s.sync_mode == "audio" and s.sync_reason == "locked"
    assert s.av_sync_offset_ms == pytest.approx(0.0, abs=1.0)
    assert s.audio_jitter_buffer_delay_ms == pytest.approx(40.0)
    assert s.audio_delay_ms == pytest.approx(40.0 + AUDIO_PATH_MS)
    assert s.frames_held_for_sync >= 70 and s.frames_dropped == 0 and s.frames_skipped == 0


def test_a_lost_frame_costs_one_tick_and_keeps_the_rest_in_sync():
    pipe = MotionPipeline()
    renders = simulate(pipe, 100, lost={60})
    offset = 3 + 40 + AUDIO_PATH_MS
    assert 60 not in renders and pipe.summary(6000).frames_skipped == 1
    assert all(abs(renders[s] - (s * T + offset)) <= 1.0 for s in range(40, 100) if s != 60)


def test_a_heartbeat_retransmitted_after_the_turn_began_does_not_end_it():
    pipe = MotionPipeline()
    idle = encode_packet(MotionPacket(Flags.IDLE, None, b""))
    pipe.receive_packet(idle, 0, 0)
    pipe.receive_packet(frame_packet(0, Flags.START), 45, RTP_PER_FRAME)
    pipe.receive_packet(idle, 60, 0)  # the lost heartbeat of media time 0, resent (NACK)
    for seq in range(1, 5):
        pipe.receive_packet(frame_packet(seq), 45 + seq * T, (1 + seq) * RTP_PER_FRAME)
    events = []
    for k in range(10):
        events += pipe.tick(50 + k * T)
    assert [type(e).__name__ for e in events if not isinstance(e, Frame)].count("TurnEnded") == 0
    assert sum(isinstance(e, TurnStarted) for e in events) == 1
    assert pipe.summary(500).packets_stale_control == 1 and pipe.summary(500).packets_idle == 1


def test_pipeline_on_its_own_clock_when_asked_or_without_rtp():
    pipe = MotionPipeline(sync="independent")
    pipe.receive_packet(frame_packet(0), 0, 0)
    pipe.receive_packet(frame_packet(1), 1, RTP_PER_FRAME)
    pipe.observe_audio(audio(0, 40, 0, 0))
    pipe.observe_audio(audio(10, 40, 480, 1))
    events = pipe.tick(2)
    assert any(getattr(e, "message", None) == b"m0" for e in events)  # two buffered: plays now
    assert not any(isinstance(e, SyncChanged) for e in events)
    assert pipe.summary(2).sync_reason == "disabled"
    data = MotionPipeline()  # the data carrier: no RTP timestamps at all
    data.receive_packet(frame_packet(0), 0)
    data.observe_audio(audio(0, 40, 0, 0))
    data.observe_audio(audio(10, 40, 480, 1))
    data.tick(5)
    assert data.summary(5).sync_mode == "independent"


def test_pipeline_lets_go_of_a_stalled_voice_and_takes_it_back():
    pipe = MotionPipeline()
    receiver = AudioReceiver()
    pipe.observe_audio(receiver.window(0, 40))
    changes = []
    for seq in range(120):
        now = seq * T
        pipe.receive_packet(frame_packet(seq), now + 3, seq * RTP_PER_FRAME)
        if seq and seq % 13 == 0:  # statistics every 520 ms; no audio from 1.5 s to 3.1 s
            pipe.observe_audio(receiver.window(now, 40, ms=520, playing=not 39 <= seq <= 78))
        changes += [e for e in pipe.tick(now + 4) if isinstance(e, SyncChanged)]
    assert changes == [SyncChanged(SyncMode.AUDIO, SyncReason.LOCKED),
                       SyncChanged(SyncMode.INDEPENDENT, SyncReason.AUDIO_STALLED),
                       SyncChanged(SyncMode.AUDIO, SyncReason.LOCKED)]
    assert pipe.summary(4800).sync_changes == 3


def test_following_the_audio_the_buffer_holds_as_many_frames_as_the_audio_delay_needs():
    pipe = MotionPipeline()
    renders = simulate(pipe, 100, jbd_ms=400.0)  # NetEq holds 400 ms: ~10 frames wait for their audio
    s = pipe.summary(8000)
    assert sorted(renders) == list(range(100))
    assert s.frames_dropped == 0 and s.frames_held_for_sync >= 80
    assert max(renders[seq] - (seq * T + 3) for seq in range(40, 100)) == pytest.approx(400 + AUDIO_PATH_MS, abs=1)


# ------------------------------------------------------------------------------- the ticker


def test_the_ticker_locks_onto_due_times():
    due = {"value": None}
    ticker = Ticker(T, lambda now: None, lambda: 0.0, next_due=lambda: due["value"])
    regular = 80.0  # the next regular deadline, one interval after the tick at 40
    assert ticker._locked(regular) == regular  # nothing to lock onto
    due["value"] = 57.0
    assert ticker._locked(regular) == 57.0  # earlier: render the frame on its time
    due["value"] = 95.0
    assert ticker._locked(regular) == 95.0  # a little later: wait for it
    due["value"] = 125.0
    assert ticker._locked(regular) == regular  # too far ahead: keep the pace
    due["value"] = -500.0
    # behind the voice: as soon as possible, but a quarter interval after the last tick at least
    assert ticker._locked(regular) == regular - 0.75 * T
    assert ticker.phase_shifts == 3


def test_a_tick_that_wakes_a_hair_early_is_not_counted_as_caught_up():
    clock = {"now": 0.0}
    seen = []
    ticker = Ticker(T, seen.append, lambda: clock["now"])

    async def main():
        ticker.start()
        await asyncio.sleep(0)  # first tick at 0
        clock["now"] = 39.5  # the timer fired half a millisecond early: due, not "-1 behind"
        await asyncio.sleep(0.06)
        await ticker.stop()

    asyncio.run(main())
    assert seen == [0.0, 39.5] and ticker.caught_up == 0
