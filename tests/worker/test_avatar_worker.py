"""Unit tests of the avatar worker and the motion-frame protobuf schema: no server, no network.

The live counterpart (a real LiveKit server and a Python subscriber) is tests/worker/.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from avatarplayer.constants import FRAME_INTERVAL_MS
from avatarplayer.wire.messages import (
    FLAME_FIELDS,
    MESSAGE_SERVER_RESPONSE_ANIMATION,
    Flame,
    Message,
    build_message,
    parse_message,
)
from avatarplayer.wire.motion import Flags, PacketError, decode_packet, unwrap_frame, VP8_KEYFRAME_PREFIX
from avatar_worker.audio import pcm as audio
from avatar_worker.cli import build_parser, config_from_args
from avatar_worker.config import LiveKitSettings, WorkerConfig
from avatar_worker.motion_gen import MotionGenerator, neutral_pose
from avatar_worker.transport.pacing import FrameClock
from avatar_worker.modes.scripted import (
    Injection,
    inject,
    malformed_packet,
    payload_for,
    plan_scripted_turn,
    scripted_pose,
)
from avatar_worker.transport.streamer import MotionStreamer, SendLog
from avatar_worker.token import mint_token
from avatar_worker.turns import IDLE_PACKET, TurnFrame, build_turn

ROOT = Path(__file__).resolve().parents[2]


def full_pose(value: float = 0.25) -> dict[str, list[float]]:
    return {name: [value] * size for name, size in FLAME_FIELDS.items()}


# ------------------------------------------------------------------------------ messages.py


class TestMessages:
    def test_field_numbers_follow_the_spec(self) -> None:
        flame = Flame.DESCRIPTOR
        assert [(f.name, f.number) for f in flame.fields] == [
            ("translation", 1), ("rotation", 2), ("neck_pose", 3), ("jaw_pose", 4),
            ("eye_pose", 5), ("eye_lid", 6), ("expression", 7)]
        assert all(f.is_packed for f in flame.fields)
        response = Message.DESCRIPTOR.fields_by_name["server_response_animation"]
        assert response.number == 6 and response.containing_oneof.name == "data"
        assert Message.DESCRIPTOR.fields_by_name["type"].number == 1
        sra = response.message_type
        assert {f.name: f.number for f in sra.fields} == {
            "connection_id": 1, "req_id": 2, "end": 3, "animation": 4, "avatar_id": 5}
        assert sra.fields_by_name["animation"].message_type.fields_by_name["keyframes"].number == 1
        assert Message.DESCRIPTOR.full_name == "driveningress.v2.Message"
        assert MESSAGE_SERVER_RESPONSE_ANIMATION == 5

    def test_one_keyframe_is_495_bytes_and_the_message_about_500(self) -> None:
        keyframe = Flame(**full_pose())
        assert len(keyframe.SerializeToString()) == 495
        data = build_message(full_pose())
        assert 495 < len(data) <= 520

    def test_round_trip(self) -> None:
        pose = {name: [0.5 * (i + 1) for i in range(size)] for name, size in FLAME_FIELDS.items()}
        data = build_message(pose, req_id="turn-7", end=True, avatar_id="ava", connection_id="c1")
        parsed = parse_message(data)
        assert parsed["type"] == 5
        assert (parsed["req_id"], parsed["end"], parsed["avatar_id"], parsed["connection_id"]) == (
            "turn-7", True, "ava", "c1")
        assert len(parsed["keyframes"]) == 1
        for name, values in pose.items():
            assert parsed["keyframes"][0][name] == pytest.approx(values)

    def test_wire_bytes_by_hand(self) -> None:
        data = build_message({"jaw_pose": [1.0, 0.0, 0.0]}, end=True)
        # type=5, then field 6 (len) { end=1 (field 3), animation (field 4) { keyframes (field 1) {
        # jaw_pose (field 4, packed) 3 floats } } }
        jaw = bytes([0x22, 12]) + bytes.fromhex("0000803f") + bytes(8)
        keyframe = bytes([0x0A, len(jaw)]) + jaw
        animation = bytes([0x22, len(keyframe)]) + keyframe
        response = bytes([0x18, 0x01]) + animation
        assert data == bytes([0x08, 0x05, 0x32, len(response)]) + response

    @pytest.mark.parametrize("bad", [{"jaw": [0.0] * 3}, {"jaw_pose": [0.0] * 2}, {"expression": [0.0] * 50}])
    def test_build_rejects_bad_poses(self, bad: dict) -> None:
        with pytest.raises(ValueError):
            build_message(bad)

    @pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"\x32\x50abc", b"\x0a"])
    def test_parse_rejects_garbage_with_value_error(self, garbage: bytes) -> None:
        with pytest.raises(ValueError):
            parse_message(garbage)

    def test_parse_keeps_unknown_message_types(self) -> None:
        assert parse_message(b"\x08\x07")["type"] == 7
        assert parse_message(b"")["keyframes"] == []

    def test_pure_python_protobuf_gives_the_same_bytes(self) -> None:
        """What Pyodide runs: no upb extension, the pure-Python implementation."""
        code = ("from avatarplayer.wire.messages import build_message, FLAME_FIELDS;"
                "from google.protobuf.internal import api_implementation as a;"
                "import sys; assert a.Type() == 'python', a.Type();"
                "sys.stdout.write(build_message({k: [0.25]*n for k, n in FLAME_FIELDS.items()}, req_id='x').hex())")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                             env={"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "PATH": "/usr/bin:/bin"})
        assert bytes.fromhex(out.stdout) == build_message(full_pose(), req_id="x")


# --------------------------------------------------------------------------------- token.py


def test_token_grants_are_minimal() -> None:
    import jwt

    token = mint_token("key", "s" * 40, room="demo", identity="avatar-worker")
    claims = jwt.decode(token, "s" * 40, algorithms=["HS256"])
    assert claims["iss"] == "key" and claims["sub"] == "avatar-worker"
    assert claims["kind"] == "agent"
    assert claims["exp"] > claims["nbf"]
    assert claims["video"] == {
        "roomJoin": True, "room": "demo", "canPublish": True, "canSubscribe": True,
        "canPublishData": True, "canPublishSources": ["camera", "microphone"]}
    with pytest.raises(ValueError):
        mint_token("key", "s" * 40, room="", identity="x")


# -------------------------------------------------------------------------------- pacing.py


class FakeTime:
    """A monotonic clock that only moves when slept on (plus optional work per sleep)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.extra: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + (self.extra.pop(0) if self.extra else 0.0)


class TestFrameClock:
    def test_deadlines_are_absolute(self) -> None:
        ft = FakeTime()
        clock = FrameClock(0.04, monotonic=ft.monotonic, sleep=ft.sleep, precise_s=0)

        async def go() -> list[float]:
            clock.start()
            out = []
            for _ in range(5):
                tick = await clock.tick()
                out.append(tick.deadline)
                ft.now += 0.013  # work done after each tick must not shift later deadlines
            return out

        deadlines = asyncio.run(go())
        assert deadlines == pytest.approx([100.0, 100.04, 100.08, 100.12, 100.16])
        assert ft.sleeps[1] == pytest.approx(0.027)

    def test_late_ticks_are_counted_and_big_stalls_rebase(self) -> None:
        ft = FakeTime()
        clock = FrameClock(0.04, monotonic=ft.monotonic, sleep=ft.sleep, precise_s=0,
                           late_threshold_s=0.01, resync_after_s=0.2)

        async def go() -> None:
            clock.start()
            await clock.tick()
            ft.now += 0.06  # tick 1 due at +0.04 starts at +0.06: 20 ms late
            await clock.tick()
            ft.now += 0.5  # a half-second stall
            t = await clock.tick()
            assert t.deadline == pytest.approx(ft.now)  # rebased, not a burst of missed ticks
            t = await clock.tick()
            assert t.deadline == pytest.approx(ft.now)

        asyncio.run(go())
        assert clock.late == 1 and clock.resyncs == 1

    def test_real_clock_keeps_25_fps(self) -> None:
        async def go() -> list[float]:
            clock = FrameClock()
            stamps = []
            for _ in range(26):
                await clock.tick()
                stamps.append(clock._monotonic())
            return stamps

        stamps = asyncio.run(go())
        total = stamps[-1] - stamps[0]
        assert total == pytest.approx(25 * FRAME_INTERVAL_MS / 1000, abs=0.01)


# --------------------------------------------------------------------------------- audio.py


class TestAudio:
    def test_frame_geometry(self) -> None:
        assert audio.SAMPLES_PER_FRAME == 1920 and audio.BYTES_PER_FRAME == 3840

    def test_split_pads_the_last_frame(self) -> None:
        frames = audio.split_frames(b"\x01\x00" * 2000)
        assert [len(f) for f in frames] == [3840, 3840]
        assert frames[1][160:] == bytes(3840 - 160)

    def test_rms_and_envelope(self) -> None:
        loud, quiet = audio.tone(400.0, 0.5), audio.tone(400.0, 0.01)
        assert audio.rms(audio.SILENCE) == 0.0
        assert audio.rms(loud) == pytest.approx(0.5 / math.sqrt(2), rel=0.01)
        env = audio.envelope([audio.SILENCE, quiet, loud])
        assert env[0] == 0.0 and 0.0 < env[1] < env[2] <= 1.0

    def test_tone_is_continuous_across_frames(self) -> None:
        frame = audio.tone(400.0, 0.2)
        import array

        samples = array.array("h", frame * 2)
        jumps = max(abs(b - a) for a, b in zip(samples, samples[1:]))
        assert jumps < 0.2 * 32767 * 2 * math.pi * 400 / 48000 * 1.1
        with pytest.raises(ValueError):
            audio.tone(440.0)

    def test_load_wav_native_and_converted(self, tmp_path: Path) -> None:
        native = tmp_path / "native.wav"
        audio.write_wav(native, audio.tone() * 3)
        assert audio.load_wav(native) == audio.tone() * 3
        # a missing sox is a broken set-up (tools/bootstrap.py browser installs it), not a reason to skip
        assert shutil.which("sox") is not None, "sox is not installed: run `python3 tools/bootstrap.py browser`"
        other = tmp_path / "22k-stereo.wav"
        with wave.open(str(other), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(22050)
            w.writeframes(bytes(22050 * 4))  # one second of stereo silence
        pcm = audio.load_wav(other)
        assert abs(len(pcm) // 2 - 48000) < 10
        with pytest.raises(audio.AudioError):
            audio.load_wav(tmp_path / "missing.wav")

    def test_click_starts_loud_on_its_first_sample_then_is_silent(self) -> None:
        import array

        samples = array.array("h", audio.click(2000.0, 0.5, 20.0))
        assert len(samples) == audio.SAMPLES_PER_FRAME
        assert samples[0] == round(0.5 * 32767)  # the onset a listener times is sample 0
        assert max(abs(x) for x in samples[:960]) > 0.49 * 32767
        assert all(x == 0 for x in samples[960:])
        with pytest.raises(ValueError):
            audio.click(duration_ms=50)

    def test_synthesize(self) -> None:
        assert shutil.which("espeak-ng") is not None, (
            "espeak-ng is not installed: run `python3 tools/bootstrap.py browser` (a broken set-up, not a reason to skip)")
        pcm = audio.synthesize("Hello there")
        seconds = len(pcm) / 2 / audio.SAMPLE_RATE
        assert 0.4 < seconds < 5
        assert max(audio.envelope(audio.split_frames(pcm))) > 0.5


# ---------------------------------------------------------------------------- motion_gen.py


class TestMotionGenerator:
    def test_pose_shape_and_size(self) -> None:
        pose = MotionGenerator(1).step(0.5)
        assert {k: len(v) for k, v in pose.items()} == FLAME_FIELDS
        assert 495 < len(build_message(pose)) <= 520
        assert neutral_pose()["jaw_pose"] == [0.0, 0.0, 0.0]

    def test_jaw_follows_loudness(self) -> None:
        gen = MotionGenerator(0)
        silent = gen.poses([0.0] * 10)
        loud = gen.poses([1.0] * 10)
        back = gen.poses([0.0] * 15)
        assert max(p["jaw_pose"][0] for p in silent) < 0.01
        assert loud[-1]["jaw_pose"][0] > 0.25
        assert loud[1]["jaw_pose"][0] > loud[0]["jaw_pose"][0]  # opens over a couple of frames
        assert back[-1]["jaw_pose"][0] < 0.01

    def test_blinks_and_gaze_move(self) -> None:
        poses = MotionGenerator(3).idle(25 * 12)
        lids = [p["eye_lid"][0] for p in poses]
        blinks = sum(1 for a, b in zip(lids, lids[1:]) if a == 0.0 and b > 0.0)
        assert 2 <= blinks <= 8  # every 2–5 s over 12 s
        assert max(lids) == 1.0
        yaws = {round(p["eye_pose"][1], 3) for p in poses}
        assert len(yaws) > 20
        heads = [p["rotation"] for p in poses]
        assert all(abs(v) < 0.2 for r in heads for v in r)

    def test_deterministic_per_seed(self) -> None:
        assert MotionGenerator(5).poses([0.3] * 50) == MotionGenerator(5).poses([0.3] * 50)
        assert MotionGenerator(5).poses([0.3] * 50) != MotionGenerator(6).poses([0.3] * 50)


# -------------------------------------------------------------------------------- turns.py


def decode_all(turn):
    out = []
    for tick in turn.ticks:
        for e in tick.emissions:
            out.append((e.kind, decode_packet(e.packet)))
    return out


class TestTurns:
    def test_turn_layout(self) -> None:
        frames = [TurnFrame(payload_for(10 + i), audio.tone()) for i in range(4)]
        turn = build_turn(frames, 10)
        decoded = decode_all(turn)
        assert [k for k, _ in decoded] == ["transition", "frame", "frame", "frame", "frame", "transition_end"]
        assert decoded[0][1].flags == Flags.TRANSITION and decoded[0][1].message == frames[0].message
        assert [p.seq for _, p in decoded[1:5]] == [10, 11, 12, 13]
        assert [p.flags for _, p in decoded[1:5]] == [Flags.START, 0, 0, Flags.END]
        assert decoded[5][1].flags == Flags.TRANSITION_END and decoded[5][1].seq is None
        assert [t.audio is not None for t in turn.ticks] == [False, True, True, True, True, False]
        assert turn.next_seq == 14

    def test_single_frame_turn_without_transition(self) -> None:
        turn = build_turn([TurnFrame(b"m")], 0, transition=False)
        kinds = decode_all(turn)
        assert kinds[0][1].flags == Flags.START | Flags.END
        assert [k for k, _ in kinds] == ["frame", "transition_end"]

    def test_redundant_and_compressed(self) -> None:
        frames = [TurnFrame(payload_for(i)) for i in range(3)]
        turn = build_turn(frames, 0, redundant=True, compression="gzip", transition=False)
        packets = [p for k, p in decode_all(turn) if k == "frame"]
        assert all(Flags.REDUNDANT in p.flags and Flags.COMPRESSED in p.flags for p in packets)
        assert packets[0].previous == (None, None)
        assert packets[2].recovered() == [(0, frames[0].message), (1, frames[1].message)]

    def test_truncated(self) -> None:
        turn = build_turn([TurnFrame(payload_for(i)) for i in range(10)], 0)
        cut = turn.truncated(4)
        kinds = [e.kind for t in cut.ticks for e in t.emissions]
        assert kinds == ["transition", "frame", "frame", "frame", "frame"]
        assert not any(Flags.END & decode_packet(e.packet).flags for t in cut.ticks for e in t.emissions)

    def test_idle_packet(self) -> None:
        assert IDLE_PACKET == b"\x01\x00\x00\x00\x00"

    def test_rejects_bad_input(self) -> None:
        with pytest.raises(ValueError):
            build_turn([], 0)
        with pytest.raises(ValueError):
            TurnFrame(b"x", b"\x00" * 10)


# ------------------------------------------------------------------------------- script.py


class TestScript:
    def test_payload_for_is_a_deterministic_message(self) -> None:
        assert payload_for(42) == payload_for(42)
        parsed = parse_message(payload_for(42))
        assert parsed["type"] == 5 and len(parsed["keyframes"]) == 1
        assert 495 < len(payload_for(42)) <= 520
        assert parsed["keyframes"][0]["jaw_pose"][0] == pytest.approx(scripted_pose(42)["jaw_pose"][0], abs=1e-6)

    def test_pulse_audio_clicks_once_a_second_on_the_marked_frames(self) -> None:
        from avatar_worker.modes.scripted import PULSE_EVERY, is_pulse, scripted_frames

        frames = scripted_frames(10, 60, audio="pulse")
        clicked = [10 + i for i, f in enumerate(frames) if f.audio is not None]
        assert clicked == [25, 50] and all(is_pulse(s) for s in clicked) and PULSE_EVERY == 25
        assert all(f.audio == audio.click() for f in frames if f.audio is not None)
        assert [f.message for f in frames] == [payload_for(s) for s in range(10, 70)]
        with pytest.raises(ValueError):
            scripted_frames(0, 1, audio="beep")

    def test_payloads_differ(self) -> None:
        payloads = {payload_for(s) for s in range(3000)}
        assert len(payloads) == 3000

    def test_malformed_packets_are_all_rejected(self) -> None:
        rng = random.Random(0)
        seen = set()
        for _ in range(200):
            bad = malformed_packet(rng, seq=rng.randrange(1000))
            with pytest.raises(PacketError) as err:
                decode_packet(bad)
            seen.add(err.value.reason)
        assert len(seen) >= 5

    def test_injection_is_deterministic_and_independent(self) -> None:
        base = plan_scripted_turn(0, 400)
        a = inject(base, Injection(loss=0.1, seed=3))
        b = inject(base, Injection(loss=0.1, seed=3))
        c = inject(base, Injection(loss=0.1, duplicate=0.2, seed=3))
        lost = lambda t: [e.seq for tk in t.ticks for e in tk.emissions if not e.sent]  # noqa: E731
        assert lost(a) == lost(b) and lost(a) == lost(c)
        assert 20 <= len(lost(a)) <= 60
        dups = [e for tk in c.ticks for e in tk.emissions if e.kind == "duplicate"]
        assert 50 <= len(dups) <= 110
        assert all(e.offset == pytest.approx(FRAME_INTERVAL_MS / 2000) for e in dups)

    def test_reorder_swaps_neighbours(self) -> None:
        turn = inject(plan_scripted_turn(0, 300), Injection(reorder=0.2, seed=1))
        order = [e.seq for tk in turn.ticks for e in tk.emissions if e.kind in ("frame", "reordered")]
        assert sorted(order) == list(range(300))
        assert order != list(range(300))
        for i, seq in enumerate(order):
            assert abs(seq - i) <= 1
        # START/END flags travel with their frames
        first = next(e for tk in turn.ticks for e in tk.emissions if e.seq == 0)
        assert decode_packet(first.packet).flags & Flags.START

    def test_bad_packets_ride_in_valid_carrier_frames(self) -> None:
        from avatarplayer.wire.motion import wrap_frame

        turn = inject(plan_scripted_turn(0, 100), Injection(bad=0.3, seed=2))
        bads = [e for tk in turn.ticks for e in tk.emissions if e.kind == "bad"]
        assert bads
        for e in bads:
            prefix, packet = unwrap_frame(wrap_frame(e.packet))
            assert prefix == VP8_KEYFRAME_PREFIX and packet == e.packet

    def test_injection_validation(self) -> None:
        with pytest.raises(ValueError):
            Injection(loss=1.5)


# ----------------------------------------------------------------------------- streamer.py


class RecordingSink:
    def __init__(self) -> None:
        self.video: list[tuple[float, bytes, int]] = []
        self.audio: list[bytes] = []
        self.refuse = False

    def capture_video(self, frame: bytes, timestamp_us: int) -> bool:
        if self.refuse:
            return False
        import time

        self.video.append((time.monotonic(), frame, timestamp_us))
        return True

    async def capture_audio(self, pcm: bytes) -> None:
        self.audio.append(pcm)

    def packets(self):
        out = []
        for _, frame, _ in self.video:
            unwrapped = unwrap_frame(frame)
            assert unwrapped is not None and unwrapped[0] == VP8_KEYFRAME_PREFIX
            try:
                out.append(decode_packet(unwrapped[1]))
            except PacketError:
                out.append(None)
        return out


def fast_streamer(sink: RecordingSink, **kwargs) -> MotionStreamer:
    return MotionStreamer(sink, clock=FrameClock(0.004, late_threshold_s=0.5), **kwargs)


def run_idle(streamer: MotionStreamer, seconds: float = 0.03) -> None:
    """Run ``streamer`` with nothing to play (it sends IDLE heartbeats) for ``seconds``, then stop it."""

    async def go() -> None:
        task = asyncio.create_task(streamer.run())
        await asyncio.sleep(seconds)
        streamer.stop()
        await task

    asyncio.run(go())


class TestStreamer:
    def test_heartbeats_turns_and_seq_across_turns(self, tmp_path: Path) -> None:
        sink = RecordingSink()
        log = SendLog(tmp_path / "sent.jsonl")
        streamer = fast_streamer(sink, send_log=log)

        async def go() -> None:
            task = asyncio.create_task(streamer.run())
            await asyncio.sleep(0.03)
            r1 = await streamer.play(build_turn([TurnFrame(payload_for(i), audio.tone()) for i in range(5)], 0))
            r2 = await streamer.play(build_turn([TurnFrame(payload_for(5 + i)) for i in range(3)],
                                                streamer.next_seq))
            assert r1.completed and r2.completed and r2.first_seq == 5
            await asyncio.sleep(0.02)
            streamer.stop()
            await task

        asyncio.run(go())
        log.close()
        packets = sink.packets()
        flags = [p.flags for p in packets]
        assert flags[0] == Flags.IDLE
        seqs = [p.seq for p in packets if p.seq is not None]
        assert seqs == list(range(8))
        assert flags.count(Flags.TRANSITION) == 2 and flags.count(Flags.TRANSITION_END) == 2
        assert flags[-1] == Flags.IDLE
        # one audio capture per tick, the tone only on the first turn's frames
        assert len(sink.audio) == len(sink.video)
        assert sum(1 for a in sink.audio if a == audio.tone()) == 5
        # capture timestamps are the deadlines: strictly increasing, one interval apart
        stamps = [ts for _, _, ts in sink.video]
        assert all(b - a == pytest.approx(4000, abs=2) for a, b in zip(stamps, stamps[1:]))
        records = [json.loads(line) for line in (tmp_path / "sent.jsonl").read_text().splitlines()]
        assert len(records) == len(sink.video)
        assert {"seq", "t_ms", "flags", "sent", "kind"} <= set(records[0])
        assert [r["seq"] for r in records if r["kind"] == "frame"] == list(range(8))
        assert streamer.stats.frames_sent == 8 and streamer.stats.turns_completed == 2

    def test_a_backlog_of_audio_is_dropped_on_a_silent_tick_only(self) -> None:
        tone = audio.tone()

        class BackloggedSink(RecordingSink):
            backlog = 0.0

            async def capture_audio(self, pcm: bytes) -> None:
                await super().capture_audio(pcm)
                if sum(a == tone for a in self.audio) == 2:
                    self.backlog = 60.0  # a late tick in the middle of speech left 60 ms queued

            def audio_backlog_ms(self) -> float:
                return self.backlog

            def drop_audio_backlog(self) -> None:
                self.drops.append(len(self.audio))
                self.backlog = 0.0

        sink = BackloggedSink()
        sink.drops = []
        streamer = fast_streamer(sink)

        async def go() -> None:
            task = asyncio.create_task(streamer.run())
            await asyncio.sleep(0.02)
            await streamer.play(build_turn([TurnFrame(payload_for(i), tone) for i in range(6)], 0))
            await asyncio.sleep(0.03)
            streamer.stop()
            await task

        asyncio.run(go())
        assert len(sink.drops) == 1 and streamer.stats.audio_realigned == 1
        at = sink.drops[0]
        # dropped before the first silent tick after the turn, never while the tone played
        assert sink.audio[at] == audio.SILENCE and sink.audio[at - 1] == tone
        assert sum(a == tone for a in sink.audio[:at]) == 6

    def test_stop_mid_turn_closes_it(self) -> None:
        sink = RecordingSink()
        streamer = fast_streamer(sink)

        async def go() -> None:
            task = asyncio.create_task(streamer.run())
            future = streamer.play(build_turn([TurnFrame(payload_for(i)) for i in range(100)], 0))
            await asyncio.sleep(0.05)
            streamer.stop()
            await task
            assert not (await future).completed

        asyncio.run(go())
        packets = sink.packets()
        assert packets[-1].flags == Flags.TRANSITION_END
        assert Flags.END not in packets[-2].flags
        assert streamer.stats.turns_interrupted == 1

    def test_abort_after_truncated_turn_sends_nothing_more(self) -> None:
        sink = RecordingSink()
        streamer = fast_streamer(sink)

        async def go() -> None:
            task = asyncio.create_task(streamer.run())
            turn = build_turn([TurnFrame(payload_for(i)) for i in range(20)], 0).truncated(7)
            await streamer.play(turn, abort_after=True)
            await asyncio.wait_for(task, 1)

        asyncio.run(go())
        packets = sink.packets()
        assert packets[-1].seq == 6 and not packets[-1].flags & Flags.END
        assert packets[-1].flags != Flags.TRANSITION_END

    def test_injected_faults_reach_the_sink(self, tmp_path: Path) -> None:
        sink = RecordingSink()
        log = SendLog(tmp_path / "sent.jsonl")
        streamer = fast_streamer(sink, send_log=log)
        turn = plan_scripted_turn(0, 60, injection=Injection(loss=0.1, duplicate=0.1, bad=0.1, seed=4))

        async def go() -> None:
            task = asyncio.create_task(streamer.run())
            await streamer.play(turn)
            streamer.stop()
            await task

        asyncio.run(go())
        log.close()
        records = [json.loads(line) for line in (tmp_path / "sent.jsonl").read_text().splitlines()]
        lost = [r["seq"] for r in records if not r["sent"]]
        got = [p.seq for p in sink.packets() if p is not None and p.seq is not None]
        assert lost and not set(lost) & set(got) - {r["seq"] for r in records if r["kind"] == "duplicate"}
        assert sum(1 for p in sink.packets() if p is None) == streamer.stats.bad_sent > 0
        assert streamer.stats.dropped_by_injection == len(lost)
        times = [t for t, _, _ in sink.video]
        assert all(b > a for a, b in zip(times, times[1:]))

    def test_refused_frames_are_logged_as_not_sent(self, tmp_path: Path) -> None:
        sink = RecordingSink()
        sink.refuse = True
        log = SendLog(tmp_path / "sent.jsonl")
        streamer = fast_streamer(sink, send_log=log)

        run_idle(streamer)
        log.close()
        records = [json.loads(line) for line in (tmp_path / "sent.jsonl").read_text().splitlines()]
        assert records and not any(r["sent"] for r in records)
        assert streamer.stats.refused == len(records) and streamer.stats.offline == 0

    def test_packets_while_the_track_is_not_published_are_counted_apart(self) -> None:
        sink = RecordingSink()
        sink.refuse = True
        sink.live = False  # joining or rejoining: nothing to refuse, nothing published
        streamer = fast_streamer(sink)

        run_idle(streamer)
        assert streamer.stats.offline > 0 and streamer.stats.refused == 0

    def test_play_checks_the_sequence(self) -> None:
        streamer = fast_streamer(RecordingSink())

        async def go() -> None:
            with pytest.raises(ValueError):
                streamer.play(build_turn([TurnFrame(b"x")], 5))

        asyncio.run(go())


# ------------------------------------------------------------------------------------ cli.py


class TestCli:
    def test_arguments_become_a_config(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LIVEKIT_URL", "ws://127.0.0.1:7880")
        monkeypatch.setenv("LIVEKIT_API_KEY", "devkey")
        monkeypatch.setenv("LIVEKIT_API_SECRET", "s" * 32)
        args = build_parser().parse_args([
            "--room", "r", "--mode", "scripted", "--frames", "20", "--loss", "0.1", "--seed", "9",
            "--compress", "zlib", "--redundant", "--leave-after", "5", "--wait-for-participant"])
        config = config_from_args(args)
        assert config.livekit.url == "ws://127.0.0.1:7880" and config.livekit.identity == "avatar-worker"
        assert config.frames == 20 and config.injection == Injection(loss=0.1, seed=9)
        assert config.compression == "zlib" and config.redundant and config.leave_after == 5
        assert config.lead_in_ms == 1500 and config.wait_for_participant

    def test_missing_connection_settings_exit_2(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
            monkeypatch.delenv(name, raising=False)
        proc = subprocess.run([sys.executable, "-m", "avatar_worker", "--room", "r"], cwd=ROOT,
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 2 and "--url" in proc.stderr

    def test_bad_probability_is_refused(self) -> None:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--room", "r", "--loss", "2"])

    def test_config_validation(self) -> None:
        settings = LiveKitSettings("ws://x", "k", "s", "r")
        with pytest.raises(ValueError):
            WorkerConfig(settings, mode="dance")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            WorkerConfig(settings, frames=0)
        with pytest.raises(ValueError):
            WorkerConfig(settings, leave_mode="explode")  # type: ignore[arg-type]

    def test_importing_the_package_does_not_load_the_native_sdk(self) -> None:
        code = "import sys, avatar_worker; print(any(m.startswith('livekit') for m in sys.modules))"
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "False"


def test_interrupt_closes_the_turn_before_the_next_one_starts() -> None:
    sink = RecordingSink()
    streamer = fast_streamer(sink)

    async def go() -> None:
        task = asyncio.create_task(streamer.run())
        first = streamer.play(build_turn([TurnFrame(payload_for(i)) for i in range(50)], 0))
        await asyncio.sleep(0.03)
        streamer.interrupt()
        assert not (await first).completed
        second = build_turn([TurnFrame(payload_for(streamer.next_seq + i)) for i in range(3)], streamer.next_seq)
        assert (await streamer.play(second)).completed
        streamer.stop()
        await task

    asyncio.run(go())
    flags = [p.flags for p in sink.packets()]
    cut = flags.index(Flags.TRANSITION_END)
    assert Flags.END not in flags[cut - 1]
    assert flags[cut + 1:].index(Flags.TRANSITION) < flags[cut + 1:].index(Flags.START)
    assert [p.seq for p in sink.packets() if p.seq is not None][-3:] == [50, 51, 52]
