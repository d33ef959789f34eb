"""Helpers shared by the worker's unit tests: a recording sink, a fast streamer, fake transports."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatar_worker.config import LiveKitSettings
from avatar_worker.transport.pacing import FrameClock
from avatar_worker.transport.streamer import MotionStreamer
from avatarplayer.wire.motion import PacketError, decode_packet, unwrap_frame, VP8_KEYFRAME_PREFIX


ROOT = Path(__file__).resolve().parents[2]


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


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@dataclass
class FakeTransport:
    """Records what would be sent; ``others`` is who is in the room."""

    others: list[str] = field(default_factory=lambda: ["viewer"])
    sent: list[tuple[bytes, str, bool, tuple[str, ...]]] = field(default_factory=list)
    accept: bool = True

    def send_data(self, payload: bytes, *, topic: str, reliable: bool, destinations=()) -> bool:
        if self.accept:
            self.sent.append((payload, topic, reliable, tuple(destinations)))
        return self.accept

    def other_identities(self) -> list[str]:
        return list(self.others)

    def on(self, topic: str) -> list[tuple[bytes, bool, tuple[str, ...]]]:
        return [(payload, reliable, dest) for payload, top, reliable, dest in self.sent if top == topic]


def fast_streamer(sink: RecordingSink, **kwargs: Any) -> MotionStreamer:
    return MotionStreamer(sink, clock=FrameClock(0.004, late_threshold_s=0.5), **kwargs)


def play(streamer: MotionStreamer, *turns_at: Any, idle_after: float = 0.02) -> None:
    """Run the streamer, play turns (each built from next_seq by a callable), then stop."""

    async def go() -> None:
        task = asyncio.create_task(streamer.run())
        await asyncio.sleep(0.02)
        for make in turns_at:
            await streamer.play(make(streamer.next_seq))
        await asyncio.sleep(idle_after)
        streamer.stop()
        await task

    asyncio.run(go())


SECRET = "the-api-secret-nobody-may-see-0123456789"


SETTINGS = LiveKitSettings(url="ws://127.0.0.1:1", api_key="devkey", api_secret=SECRET, room="r")
