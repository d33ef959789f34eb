"""avatar_worker/audio/report.py: per-second levels of the other participants' audio. No server, no
network."""

from __future__ import annotations

import array
import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from avatar_worker.audio import pcm as audio
from avatar_worker.audio.report import AudioMeter, AudioReport

from .helpers import read_log


def sine(amplitude: float, n: int, hz: float = 440.0, rate: int = 48000) -> bytes:
    return array.array("h", (int(amplitude * math.sin(2 * math.pi * hz * i / rate)) for i in range(n))).tobytes()


class TestAudioMeter:
    def test_whole_seconds_of_a_sine(self) -> None:
        meter = AudioMeter()
        pcm = sine(10000, 48000 * 2 + 100)
        out = []
        for i in range(0, len(pcm), 960):  # 10 ms frames
            out += meter.feed(pcm[i:i + 960])
        assert [s.second for s in out] == [0, 1] and all(s.samples == 48000 for s in out)
        assert all(s.rms == pytest.approx(10000 / math.sqrt(2), rel=0.01) for s in out)
        assert all(9990 <= s.peak <= 10000 for s in out)

    def test_one_big_feed_and_memoryviews(self) -> None:
        meter = AudioMeter(rate=100)
        samples = array.array("h", [3] * 250)
        out = meter.feed(memoryview(samples))  # an int16 memoryview, as the SDK hands out
        assert [(s.second, s.samples, s.rms, s.peak) for s in out] == [(0, 100, 3.0, 3), (1, 100, 3.0, 3)]
        assert meter.feed(b"\x00") == []  # an odd byte is ignored

    def test_silence_and_full_scale(self) -> None:
        meter = AudioMeter(rate=4)
        assert meter.feed(bytes(8))[0].rms == 0.0
        (loud,) = meter.feed(array.array("h", [-32768, -32768, 32767, -32768]).tobytes())
        assert loud.peak == 32767 and loud.rms == 32767
        with pytest.raises(ValueError):
            AudioMeter(rate=0)


class TestAudioReport:
    def test_records_per_track(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from livekit import rtc

        class FakeFrame:
            def __init__(self, data: bytes) -> None:
                self.data = memoryview(array.array("h", array.array("h", data)))

        class FakeStream:
            def __init__(self, track: Any, sample_rate: int, num_channels: int) -> None:
                assert (sample_rate, num_channels) == (48000, 1)
                self.frames = [sine(8000, 480, hz=400) for _ in range(track.frames)]

            def __aiter__(self):
                return self

            async def __anext__(self):
                if not self.frames:
                    await asyncio.sleep(3600)  # a live track: more is always coming
                await asyncio.sleep(0)
                return type("Event", (), {"frame": FakeFrame(self.frames.pop(0))})()

            async def aclose(self) -> None:
                pass

        monkeypatch.setattr(rtc, "AudioStream", FakeStream)

        class Room:
            def __init__(self) -> None:
                self.handlers: dict[str, Any] = {}
                self.remote_participants: dict[str, Any] = {}

            def on(self, name: str):
                def register(fn):
                    self.handlers[name] = fn
                    return fn
                return register

        @dataclass
        class Track:
            sid: str
            frames: int
            kind: int = rtc.TrackKind.KIND_AUDIO

        @dataclass
        class Pub:
            sid: str
            name: str
            kind: int = rtc.TrackKind.KIND_AUDIO
            subscribed: bool = False

            def set_subscribed(self, value: bool) -> None:
                self.subscribed = value

        @dataclass
        class Part:
            identity: str

        path = tmp_path / "heard.jsonl"
        report = AudioReport(path)

        async def go() -> None:
            room = Room()
            report.attach(room)
            mic, video = Pub("TR_a", "mic"), Pub("TR_v", "cam", kind=rtc.TrackKind.KIND_VIDEO)
            room.handlers["track_published"](mic, Part("user"))
            room.handlers["track_published"](video, Part("user"))
            assert mic.subscribed and not video.subscribed
            room.handlers["track_subscribed"](Track("TR_a", 250), mic, Part("user"))  # 2.5 s
            room.handlers["track_subscribed"](Track("TR_v", 10, kind=rtc.TrackKind.KIND_VIDEO), video, Part("user"))
            for _ in range(400):
                await asyncio.sleep(0)
            # what is on disk is flushed already
            assert sum(1 for line in path.read_text().splitlines() if '"kind":"audio"' in line) == 2
            room.handlers["track_unsubscribed"](None, mic, Part("user"))
            room.handlers["track_unsubscribed"](None, mic, Part("user"))  # once is enough
            await report.close()

        asyncio.run(go())
        records = read_log(path)
        assert [(r["kind"], r.get("event"), r.get("second")) for r in records] == [
            ("audio-track", "subscribed", None), ("audio", None, 0), ("audio", None, 1),
            ("audio-track", "unsubscribed", None)]
        assert all(r["identity"] == "user" and r["track"] == "mic" and r["sid"] == "TR_a" and "t_ms" in r
                   for r in records)
        assert all(r["samples"] == 48000 and 5600 < r["rms"] < 5700 and r["peak"] <= 8000
                   for r in records if r["kind"] == "audio")

    def test_joined_subscribes_to_audio_already_there(self, tmp_path: Path) -> None:
        from livekit import rtc

        @dataclass
        class Pub:
            kind: int
            subscribed: bool = False

            def set_subscribed(self, value: bool) -> None:
                self.subscribed = value

        @dataclass
        class Part:
            track_publications: dict[str, Pub]

        audio, video = Pub(rtc.TrackKind.KIND_AUDIO), Pub(rtc.TrackKind.KIND_VIDEO)
        room = type("Room", (), {"remote_participants": {"u": Part({"a": audio, "v": video})}})()
        report = AudioReport(tmp_path / "heard.jsonl")
        report.joined(room)
        asyncio.run(report.close())
        assert audio.subscribed and not video.subscribed
