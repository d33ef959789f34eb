"""Following the audio: the playout clock, the jitter buffer's due times, the pipeline and the
ticker locking onto them. Simulated time throughout (netsim-style), so every rule is exact."""

import asyncio

import pytest

from avatarplayer.jitter import JitterBuffer
from avatarplayer.motion import Flags, MotionPacket, encode_packet
from avatarplayer.pipeline import MotionPipeline, SyncChanged
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


def locked_clock(jbd_ms=30.0, transit_ms=5.0, *, path_ms=AUDIO_PATH_MS, trim_ms=0.0, rtp0=1000):
    """A clock that has seen 25 motion packets (transit ``transit_ms``) and two audio windows."""
    clock = PlayoutClock(audio_path_ms=path_ms, trim_ms=trim_ms)
    for k in range(25):
        clock.observe_motion(k * T + transit_ms, rtp0 + k * RTP_PER_FRAME)
    clock.observe_audio(audio(500, jbd_ms, 24_000, 25))
    clock.observe_audio(audio(1000, jbd_ms, 48_000, 50))
    return clock


# ------------------------------------------------------------------------------- the clock


def test_rtp_timestamps_unwrap_across_the_32_bit_edge():
    unwrap = RtpUnwrapper()
    near_top = 2**32 - RTP_PER_FRAME
    a, b, c = unwrap(near_top), unwrap(0), unwrap(RTP_PER_FRAME)
    assert b - a == pytest.approx(T) and c - b == pytest.approx(T)
    assert unwrap(RTP_PER_FRAME * 0.5) < c  # a reordered older one stays older


def test_offset_is_transit_plus_audio_jitter_buffer_plus_path():
    clock = locked_clock(jbd_ms=30.0, transit_ms=5.0, rtp0=0)
    offset = clock.offset(1000)
    assert clock.reason is SyncReason.LOCKED
    # media time 0 arrived at 5 ms; its audio is heard 30 ms (NetEq) + the path later
    assert offset == pytest.approx(5.0 + 30.0 + AUDIO_PATH_MS)
    assert clock.audio_jitter_buffer_ms == pytest.approx(30.0)


def test_trim_moves_the_face_later():
    assert locked_clock(trim_ms=25).offset(1000) == pytest.approx(locked_clock().offset(1000) + 25)


def test_jitter_in_arrivals_does_not_move_the_offset_much():
    clock = PlayoutClock()
    for k in range(50):
        clock.observe_motion(k * T + 20 + (15 if k % 2 else -15), k * RTP_PER_FRAME)
    clock.observe_audio(audio(0, 40, 0, 0))
    clock.observe_audio(audio(500, 40, 24_000, 25))
    assert clock.offset(2000) == pytest.approx(20 + 40 + AUDIO_PATH_MS, abs=1.0)


def test_a_burst_after_an_outage_does_not_drag_the_transit():
    clock = PlayoutClock()
    for k in range(45):
        clock.observe_motion(k * T + 10, k * RTP_PER_FRAME)
    for k in range(45, 50):  # 1.5 s of frames arriving together after an outage
        clock.observe_motion(45 * T + 1500, k * RTP_PER_FRAME)
    assert clock.transit_ms == pytest.approx(10, abs=40)


def test_offset_slews_small_changes_and_jumps_big_ones():
    clock = PlayoutClock()
    for k in range(25):
        clock.observe_motion(k * T + 5, k * RTP_PER_FRAME)
    receiver = AudioReceiver()
    clock.observe_audio(receiver.window(500, 30))
    clock.observe_audio(receiver.window(1000, 30))
    base = clock.offset(1000)
    # NetEq grows by 40 ms: the offset moves at 10 % of real time, not at once
    clock.observe_audio(receiver.window(1500, 70))
    assert clock.target(1500) == pytest.approx(base + 40)
    assert clock.offset(1100) == pytest.approx(base + 10)  # 100 ms later: 10 ms closer
    assert clock.offset(1500) == pytest.approx(base + 40)  # and there
    assert clock.jumps == 0
    # a change beyond JUMP_MS (after an outage) is taken at once
    clock.observe_audio(receiver.window(2000, 70 + JUMP_MS + 10))
    assert clock.offset(2010) == pytest.approx(clock.target(2010)) == pytest.approx(base + 40 + JUMP_MS + 10)
    assert clock.jumps == 1


def test_no_audio_stalled_audio_and_stale_statistics_release_the_clock():
    clock = PlayoutClock()
    clock.observe_motion(5, 0)
    assert clock.offset(10) is None and clock.reason is SyncReason.NO_AUDIO
    clock = locked_clock()
    assert clock.offset(1000) is not None
    clock.observe_audio(audio(1500, 30, 48_000, 50))  # nothing emitted, no packet: audio stopped
    assert clock.offset(1500) is None and clock.reason is SyncReason.AUDIO_STALLED
    clock.observe_audio(audio(2000, 30, 72_000, 75))  # back
    assert clock.offset(2000) is not None and clock.reason is SyncReason.LOCKED
    assert clock.offset(2000 + 2000) is None and clock.reason is SyncReason.AUDIO_STALLED  # no news


def test_absurd_audio_delay_and_missing_rtp_release_the_clock():
    clock = locked_clock(jbd_ms=5000)
    assert clock.offset(1000) is None and clock.reason is SyncReason.AUDIO_DELAY
    clock = locked_clock()
    clock.observe_motion_without_rtp()
    assert clock.offset(1000) is None and clock.reason is SyncReason.NO_RTP
    clock.observe_motion(1001, 1000 + 25 * RTP_PER_FRAME)
    assert clock.offset(1001) is not None


def test_a_new_rtp_clock_starts_the_transit_over():
    clock = locked_clock(transit_ms=5.0, rtp0=0)
    media = clock.observe_motion(2000, 3_000_000_000)  # a republished track: another random RTP origin
    assert media == pytest.approx(3_000_000_000 / 90)
    assert clock.transit_ms == pytest.approx(2000 - 3_000_000_000 / 90)


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
    for seq in range(3):
        pipe.receive_packet(frame_packet(seq), seq * T, seq * RTP_PER_FRAME)
    pipe.observe_audio(audio(0, 40, 0, 0))
    pipe.observe_audio(audio(500, 40, 24_000, 25))
    first = [e for e in pipe.tick(500) if isinstance(e, SyncChanged)]
    pipe.observe_audio(audio(1000, 40, 24_000, 25))  # no audio packet in the last window
    lost = [e for e in pipe.tick(1000) if isinstance(e, SyncChanged)]
    pipe.observe_audio(audio(1500, 40, 48_000, 50))
    back = [e for e in pipe.tick(1500) if isinstance(e, SyncChanged)]
    assert first == [SyncChanged(SyncMode.AUDIO, SyncReason.LOCKED)]
    assert lost == [SyncChanged(SyncMode.INDEPENDENT, SyncReason.AUDIO_STALLED)]
    assert back == [SyncChanged(SyncMode.AUDIO, SyncReason.LOCKED)]
    assert pipe.summary(1500).sync_changes == 3


def test_following_the_audio_the_buffer_holds_as_many_frames_as_the_audio_delay_needs():
    pipe = MotionPipeline()
    pipe.observe_audio(audio(0, 400, 0, 0))
    pipe.observe_audio(audio(10, 400, 480, 1))  # NetEq holds 400 ms: ~10 frames wait for their audio
    for seq in range(12):
        pipe.receive_packet(frame_packet(seq), seq * T, seq * RTP_PER_FRAME)
        pipe.tick(seq * T + 1)
    s = pipe.summary(12 * T)
    assert s.frames_dropped_overflow == 0 and s.frames_buffered >= 10


# ------------------------------------------------------------------------------- the ticker


def test_the_ticker_locks_onto_due_times():
    class FakeClock:
        now = 0.0

    clock = FakeClock()
    due = {"next": 17.0}
    seen = []

    def on_tick(now):
        seen.append(now)
        due["next"] = (len(seen) - 1) * T + 17.0  # frames due at 17, 57, 97, ...

    async def main():
        ticker = Ticker(T, on_tick, lambda: clock.now, next_due=lambda: due["next"])
        real_sleep = asyncio.sleep

        async def fake_sleep(seconds):
            clock.now += seconds * 1000
            await real_sleep(0)

        asyncio.sleep = fake_sleep
        try:
            ticker.start()
            while len(seen) < 6:
                await real_sleep(0)
            await ticker.stop()
        finally:
            asyncio.sleep = real_sleep

    asyncio.run(main())
    # the first tick runs at 0 on its own schedule; from then on each lands on a due time
    assert seen[0] == 0.0
    assert seen[1:6] == pytest.approx([17.0, 57.0, 97.0, 137.0, 177.0], abs=0.01)


def test_the_ticker_runs_at_once_when_the_face_is_behind():
    times = []
    clock = {"now": 0.0}

    def on_tick(now):
        times.append(now)

    async def main():
        ticker = Ticker(T, on_tick, lambda: clock["now"], next_due=lambda: -100.0)  # long overdue
        real_sleep = asyncio.sleep

        async def fake_sleep(seconds):
            clock["now"] += seconds * 1000 + 1
            await real_sleep(0)

        asyncio.sleep = fake_sleep
        try:
            ticker.start()
            while len(times) < 3:
                await real_sleep(0)
            await ticker.stop()
        finally:
            asyncio.sleep = real_sleep

    asyncio.run(main())
    assert times[1] - times[0] < 5 and times[2] - times[1] < 5  # no 40 ms wait
