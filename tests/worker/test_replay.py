"""Replay recordings (avatar_worker/replay.py, avatar_worker/record.py): the file format, loading,
the recorder, the planned turn, and the replay / demo options of the CLI. No server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from avatarplayer.wire.messages import parse_message
from avatarplayer.wire.motion import Flags, decode_packet
from avatar_worker.audio import pcm as pcm_audio
from avatar_worker.cli import build_parser, config_from_args
from avatar_worker.config import LiveKitSettings, WorkerConfig
from avatar_worker.motion_gen import MotionGenerator
from avatar_worker.record import main as record_main
from avatar_worker.modes.replay import (
    AUDIO_FILE,
    ReplayMode,
    MAX_MESSAGE_BYTES,
    MESSAGES_FILE,
    Recording,
    ReplayError,
    decode_messages,
    encode_messages,
    load_recording,
    plan_replay_turn,
    read_messages,
    speech_messages,
    write_messages,
    write_recording,
)
from avatar_worker.modes.scripted import payload_for
from avatar_worker.modes.speech import Speech

from .helpers import RecordingSink, fast_streamer

ROOT = Path(__file__).resolve().parents[2]


def messages(n: int = 5) -> list[bytes]:
    return [payload_for(i) for i in range(n)]


# ------------------------------------------------------------------------------ the format


class TestFormat:
    def test_round_trip(self, tmp_path: Path) -> None:
        original = messages(7) + [b""]  # an empty Message is a valid record
        data = encode_messages(original)
        assert len(data) == sum(4 + len(m) for m in original)
        assert struct.unpack_from("<I", data, 0)[0] == len(original[0])
        assert data[4:4 + len(original[0])] == original[0]
        assert decode_messages(data) == original
        path = tmp_path / MESSAGES_FILE
        write_messages(path, original)
        assert path.read_bytes() == data and read_messages(path) == original

    def test_truncated_length_names_file_and_offset(self, tmp_path: Path) -> None:
        ms = messages(3)
        data = encode_messages(ms)
        cut = 4 + len(ms[0]) + 4 + len(ms[1]) + 2  # two bytes of the third record's length
        path = tmp_path / MESSAGES_FILE
        path.write_bytes(data[:cut])
        with pytest.raises(ReplayError) as err:
            read_messages(path)
        offset = 8 + len(ms[0]) + len(ms[1])
        assert str(path) in str(err.value) and f"offset {offset}" in str(err.value)
        assert "record 2" in str(err.value) and "truncated" in str(err.value)

    def test_truncated_body_names_file_and_offset(self, tmp_path: Path) -> None:
        ms = messages(3)
        data = encode_messages(ms)
        path = tmp_path / "rec.bin"
        path.write_bytes(data[:-10])
        with pytest.raises(ReplayError) as err:
            read_messages(path)
        offset = 8 + len(ms[0]) + len(ms[1])
        message = str(err.value)
        assert message.startswith(f"{path}: truncated at byte offset {offset}")
        assert f"declares {len(ms[2])} bytes, only {len(ms[2]) - 10} left" in message

    def test_oversize_and_not_a_message(self) -> None:
        with pytest.raises(ReplayError, match=r"messages.bin: record 0 at byte offset 0 declares \d+ bytes, over"):
            decode_messages(struct.pack("<I", MAX_MESSAGE_BYTES + 1) + b"x")
        junk = b"\xff\xff\xff\xff\xff"
        data = encode_messages([payload_for(0), junk])
        with pytest.raises(ReplayError, match=rf"record 1 at byte offset {4 + len(payload_for(0))} is not a Message"):
            decode_messages(data)
        assert decode_messages(data, check=False)[1] == junk
        with pytest.raises(ReplayError, match="over the"):
            encode_messages([bytes(MAX_MESSAGE_BYTES + 1)])

    def test_empty_and_missing(self, tmp_path: Path) -> None:
        with pytest.raises(ReplayError, match="no messages"):
            decode_messages(b"")
        with pytest.raises(ReplayError, match="cannot read"):
            read_messages(tmp_path / "nope.bin")
        with pytest.raises(ReplayError, match="no such recording directory"):
            load_recording(tmp_path / "nope")


# ------------------------------------------------------------------------------ recordings


def _wav(path: Path, samples: int, rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(2 * samples))


class TestRecording:
    def test_load_resamples_and_aligns_audio(self, tmp_path: Path) -> None:
        write_messages(tmp_path / MESSAGES_FILE, messages(10))
        _wav(tmp_path / AUDIO_FILE, 16000 * 4 // 10, 16000)  # 0.4 s at 16 kHz = exactly 10 frames
        rec = load_recording(tmp_path)
        assert rec.frames == 10 and rec.duration_s == pytest.approx(0.4)
        assert all(a is not None and len(a) == pcm_audio.BYTES_PER_FRAME for a in rec.audio)
        _wav(tmp_path / AUDIO_FILE, 48000 * 2 // 10, 48000)  # 5 frames: the rest is silence
        rec = load_recording(tmp_path)
        assert [a is None for a in rec.audio] == [False] * 5 + [True] * 5
        _wav(tmp_path / AUDIO_FILE, 48000, 48000)  # 25 frames: cut to 10
        assert load_recording(tmp_path).frames == 10
        (tmp_path / AUDIO_FILE).unlink()
        assert load_recording(tmp_path).audio == (None,) * 10

    def test_speech_messages_and_write(self, tmp_path: Path) -> None:
        frames = [pcm_audio.tone(400.0, 0.2)] * 4
        speech = Speech(tuple(frames), tuple(pcm_audio.envelope(frames)), "test")
        ms, pcm = speech_messages(speech, MotionGenerator(1), frames=6, req_id="r", avatar_id="a")
        assert len(ms) == 6 and len(pcm) == 6 * pcm_audio.BYTES_PER_FRAME
        parsed = [parse_message(m) for m in ms]
        assert [p["end"] for p in parsed] == [False] * 5 + [True]
        assert {p["req_id"] for p in parsed} == {"r"} and {p["avatar_id"] for p in parsed} == {"a"}
        assert pcm.endswith(bytes(2 * pcm_audio.BYTES_PER_FRAME))  # padded with silence
        assert parsed[1]["keyframes"][0]["jaw_pose"][0] > 0.05  # the tone opens the mouth
        write_recording(tmp_path / "rec", ms, pcm)
        rec = load_recording(tmp_path / "rec")
        assert list(rec.messages) == ms and b"".join(a or b"" for a in rec.audio) == pcm
        # the same speech and seed give the same bytes
        again, _ = speech_messages(speech, MotionGenerator(1), frames=6, req_id="r", avatar_id="a")
        assert again == ms
        assert speech_messages(speech, MotionGenerator(2), frames=6)[0] != speech_messages(
            speech, MotionGenerator(1), frames=6)[0]

    def test_record_cli_is_deterministic(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        outs = []
        for name in ("a", "b"):
            assert record_main(["--text", "Hello, I am a recording.", "--frames", "50", "--seed", "4",
                                "--out", str(tmp_path / name)]) == 0
            outs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
        assert outs[0]["frames"] == 50 and outs[0]["duration_s"] == 2.0
        assert outs[0]["sha256"] == outs[1]["sha256"]
        a, b = (tmp_path / "a"), (tmp_path / "b")
        assert (a / MESSAGES_FILE).read_bytes() == (b / MESSAGES_FILE).read_bytes()
        assert (a / AUDIO_FILE).read_bytes() == (b / AUDIO_FILE).read_bytes()
        assert hashlib.sha256((a / MESSAGES_FILE).read_bytes()).hexdigest() == outs[0]["sha256"]
        rec = load_recording(a)
        assert rec.frames == 50 and parse_message(rec.messages[-1])["end"]
        with wave.open(str(a / AUDIO_FILE)) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getnframes()) == (48000, 1, 50 * 1920)

    def test_record_cli_errors(self, tmp_path: Path) -> None:
        proc = subprocess.run([sys.executable, "-m", "avatar_worker.record", "--wav", str(tmp_path / "no.wav"),
                               "--out", str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 1 and "no such WAV file" in proc.stderr
        proc = subprocess.run([sys.executable, "-m", "avatar_worker.record", "--out", str(tmp_path / "r")],
                              cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 2


# --------------------------------------------------------------------------------- the turn


def test_replay_turn_carries_the_recorded_bytes() -> None:
    ms = messages(4)
    rec = Recording(tuple(ms), (pcm_audio.tone(), None, None, pcm_audio.tone()), "test")
    turn = plan_replay_turn(rec, 100, label="replay-1")
    assert turn.first_seq == 100 and turn.frames == 4 and turn.next_seq == 104
    kinds = [e.kind for tick in turn.ticks for e in tick.emissions]
    assert kinds == ["transition", "frame", "frame", "frame", "frame", "transition_end"]
    frames = [tick for tick in turn.ticks if tick.emissions[0].kind == "frame"]
    assert [t.audio for t in frames] == list(rec.audio)
    packets = [decode_packet(t.emissions[0].packet) for t in frames]
    assert [p.message for p in packets] == ms and [p.seq for p in packets] == [100, 101, 102, 103]
    assert packets[0].flags == Flags.START and packets[-1].flags == Flags.END
    assert all(p.flags == Flags(0) for p in packets[1:-1])
    emissions = [t.emissions[0] for t in frames]
    assert [e.msg_sha256 for e in emissions] == [hashlib.sha256(m).hexdigest() for m in ms]
    assert [e.msg_len for e in emissions] == [len(m) for m in ms]


def test_replay_mode_repeats(tmp_path: Path) -> None:
    """ReplayMode.drive: lead-in, then the recording as a turn, again every repeat_every_s."""
    write_recording(tmp_path, messages(5), pcm_audio.tone() * 5)
    config = _config(mode="replay", replay_dir=tmp_path, repeat_every_s=0.05, tail_ms=0)
    mode = ReplayMode(config)
    sink = RecordingSink()
    streamer = fast_streamer(sink)
    waited = []

    async def lead_in() -> None:
        waited.append(True)

    async def go() -> None:
        await mode.prepare()
        stream = asyncio.create_task(streamer.run())
        drive = asyncio.create_task(mode.drive(streamer, lead_in))
        while streamer.stats.turns_completed < 2:
            await asyncio.sleep(0.01)
        drive.cancel()
        streamer.stop()
        await asyncio.gather(drive, return_exceptions=True)
        await stream

    asyncio.run(go())
    assert waited == [True] and mode.turns >= 2
    assert mode.summary() == {"replay": {"dir": str(tmp_path), "frames": 5, "turns": mode.turns}}
    frames = [p for p in sink.packets() if p is not None and p.seq is not None]
    assert [p.seq for p in frames[:10]] == list(range(10))  # seq goes on across the repeats
    assert [p.message for p in frames[:10]] == messages(5) * 2
    assert sink.audio.count(pcm_audio.tone()) >= 10


# ------------------------------------------------------------------------------- the options


def _config(**kwargs) -> WorkerConfig:
    return WorkerConfig(LiveKitSettings("ws://x", "k", "s", "r"), **kwargs)


class TestOptions:
    def test_replay_needs_a_directory(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="replay directory"):
            _config(mode="replay")
        with pytest.raises(ValueError, match="replay directory"):
            _config(mode="speech", replay_dir=tmp_path)
        assert _config(mode="replay", replay_dir=tmp_path, repeat_every_s=5).replay_dir == tmp_path

    def test_demo_options(self) -> None:
        config = _config(mode="demo")
        assert (config.reply, config.vad_start_ms, config.vad_end_ms, config.max_utterance_s,
                config.barge_in_ms) == ("policy", 150, 600, 10.0, 500)
        for bad in ({"reply": "sing"}, {"repeat_every_s": 5.0}, {"barge_in_ms": -1}, {"max_replies": 0},
                    {"max_utterance_s": 0.01}, {"vad_end_ms": 0}):
            with pytest.raises(ValueError):
                _config(mode="demo", **bad)

    def test_cli(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        parser = build_parser()
        monkeypatch.setenv("LIVEKIT_API_SECRET", "s")  # never on a command line
        base = ["--url", "ws://x", "--api-key", "k", "--room", "r"]
        config = config_from_args(parser.parse_args(base + [
            "--mode", "demo", "--reply", "echo", "--vad-start-ms", "100", "--vad-end-ms", "500",
            "--max-utterance-s", "5", "--barge-in-ms", "0", "--max-replies", "2", "--text", "Hi"]))
        assert (config.mode, config.reply, config.vad_start_ms, config.vad_end_ms, config.max_utterance_s,
                config.barge_in_ms, config.max_replies, config.text) == ("demo", "echo", 100, 500, 5.0, 0, 2, "Hi")
        config = config_from_args(parser.parse_args(base + ["--mode", "replay", "--replay-dir", str(tmp_path),
                                                            "--repeat-every-s", "3"]))
        assert config.mode == "replay" and config.replay_dir == tmp_path and config.repeat_every_s == 3.0
        # speech and scripted stay as they were
        assert config_from_args(parser.parse_args(base)).mode == "speech"
        with pytest.raises(ValueError, match="replay directory"):
            config_from_args(parser.parse_args(base + ["--mode", "replay"]))

    def test_cli_reports_a_bad_recording(self, tmp_path: Path) -> None:
        (tmp_path / MESSAGES_FILE).write_bytes(b"\x05\x00\x00")
        env_args = ["--url", "ws://127.0.0.1:9", "--api-key", "k", "--room", "r"]
        proc = subprocess.run([sys.executable, "-m", "avatar_worker", *env_args, "--mode", "replay",
                               "--replay-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, LIVEKIT_API_SECRET="s" * 32))
        assert proc.returncode == 1, proc.stderr
        summary = json.loads(proc.stdout.splitlines()[-1])
        assert summary["outcome"] == "replay-failed" and "offset 0" in summary["error"]
        assert str(tmp_path / MESSAGES_FILE) in summary["error"]
