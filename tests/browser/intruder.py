"""A hostile participant for the browser tests: joins the avatar's room as an ordinary participant
(kind standard) and tries to take over the viewer's player. Writes what it did as JSON.

    LIVEKIT_URL=… LIVEKIT_TOKEN=… python tests/browser/intruder.py --out result.json [--attacks …]

Attacks (all by default, in this order):

- ``video``: publishes a VP8 camera track named like the avatar's motion track (``avatar-motion``)
  and keeps sending frames until the end;
- ``spoof``: ``transcript_chunk`` and ``agent_status`` messages, shaped exactly like the agent's;
- ``deep``: a 14 000-level nested JSON array on the player/worker control topic, and a
  ``carrier-ack`` there (as if it were the avatar acknowledging the data carrier);
- ``carrier``: valid motion packets (START, frames 0-99 with payloads that are not the script's,
  END) on the data carrier's topic;
- ``burst``: 10 000 data messages as fast as the SDK takes them.

Runs as a subprocess because the browser tests' Playwright owns the test process's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from livekit import rtc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from avatar_worker.modes.scripted import payload_for  # noqa: E402
from avatarplayer.wire.datamsg import CONTROL_TOPIC, MOTION_TOPIC  # noqa: E402
from avatarplayer.wire.motion import Flags, MotionPacket, encode_packet  # noqa: E402

ATTACKS = ("video", "spoof", "deep", "carrier", "burst")
SPOOFED_TEXT = "I am not the avatar"
BURST = 10_000
DEEP = 14_000
CARRIER_FRAMES = 100


def carrier_packets() -> list[bytes]:
    """Well-formed motion packets with the script's sequence numbers but other payloads: rendered,
    they would break the byte-for-byte comparison with the real avatar's turn."""
    packets = []
    for seq in range(CARRIER_FRAMES):
        flags = Flags.START if seq == 0 else Flags.END if seq == CARRIER_FRAMES - 1 else Flags(0)
        packets.append(encode_packet(MotionPacket(flags, seq, payload_for(seq + 5000))))
    return packets


async def send_video(source: rtc.VideoSource, stop: asyncio.Event, sent: list[int]) -> None:
    width, height = 320, 240
    while not stop.is_set():
        shade = (len(sent) * 7) % 256
        frame = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, bytes([shade, 80, 160, 255]) * (width * height))
        source.capture_frame(frame)
        sent.append(1)
        await asyncio.sleep(0.04)


async def main(args: argparse.Namespace) -> dict:
    url, token = os.environ["LIVEKIT_URL"], os.environ["LIVEKIT_TOKEN"]
    attacks = args.attacks.split(",") if args.attacks else list(ATTACKS)
    result: dict = {"attacks": attacks, "errors": [], "sent": {}}
    room = rtc.Room()
    await room.connect(url, token)
    result["identity"] = room.local_participant.identity
    me = room.local_participant
    stop = asyncio.Event()
    frames: list[int] = []
    video_task = None

    async def data(payload: bytes, topic: str | None, key: str) -> None:
        try:
            await me.publish_data(payload, reliable=True, topic=topic or "")
            result["sent"][key] = result["sent"].get(key, 0) + 1
        except Exception as exc:  # a refusal is a result, not a crash of the attacker
            result["errors"].append(f"{key}: {type(exc).__name__}: {exc}")

    try:
        await asyncio.sleep(args.delay)
        if "video" in attacks:
            source = rtc.VideoSource(320, 240)
            track = rtc.LocalVideoTrack.create_video_track(args.track_name, source)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, video_codec=rtc.VideoCodec.VP8)
            try:
                await me.publish_track(track, options)
                result["sent"]["video-published"] = 1
                video_task = asyncio.create_task(send_video(source, stop, frames))
            except Exception as exc:
                result["errors"].append(f"video: {type(exc).__name__}: {exc}")
            await asyncio.sleep(1.0)
        if "spoof" in attacks:
            for i in range(5):
                await data(json.dumps({"type": "transcript_chunk",
                                       "data": {"text": SPOOFED_TEXT, "role": "agent", "final": True}}).encode(),
                           None, "transcript")
                await data(json.dumps({"type": "agent_status", "data": {"status": "thinking"}}).encode(),
                           None, "status")
        if "deep" in attacks:
            await data(b"[" * DEEP + b"]" * DEEP, CONTROL_TOPIC, "deep-control")
            await data(b"[" * DEEP + b"]" * DEEP, None, "deep-data")
            await data(json.dumps({"type": "carrier-ack", "carrier": "data", "topic": MOTION_TOPIC}).encode(),
                       CONTROL_TOPIC, "fake-ack")
        if "carrier" in attacks:
            for packet in carrier_packets():
                await data(packet, MOTION_TOPIC, "carrier")
        if "burst" in attacks:
            started = time.monotonic()
            payloads = [json.dumps({"type": "agent_status", "data": {"status": f"burst-{i}"}}).encode()
                        for i in range(BURST)]
            for payload in payloads:  # awaited one by one: the SDK's queue applies back-pressure
                await data(payload, None, "burst")
            result["burst_s"] = round(time.monotonic() - started, 3)
        await asyncio.sleep(args.linger)
    finally:
        stop.set()
        if video_task is not None:
            await video_task
        result["video_frames"] = len(frames)
        await room.disconnect()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--attacks", default="", help=f"comma-separated, of {', '.join(ATTACKS)} (default: all)")
    parser.add_argument("--track-name", default="avatar-motion")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait after joining")
    parser.add_argument("--linger", type=float, default=3.0, help="seconds to stay after the last attack")
    arguments = parser.parse_args()
    outcome = asyncio.run(main(arguments))
    Path(arguments.out).write_text(json.dumps(outcome))
