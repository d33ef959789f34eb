"""An agent-side participant for the browser tests: speaks through livekit-agents'
``DataStreamAudioOutput`` into the avatar worker (``--mode agents``), once to the end and once
interrupted with ``clear_buffer()``, and writes what happened as JSON.

    LIVEKIT_URL=… LIVEKIT_API_KEY=… LIVEKIT_API_SECRET=… \\
        python tests/browser/agent_speaker.py --room R --out result.json

Runs as a subprocess because the browser tests' Playwright owns the test process's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

from livekit import api, rtc
from livekit.agents.voice.avatar import DataStreamAudioOutput

SHORT = "Hello from a LiveKit agent. The avatar speaks for me."
LONG = ("This answer is long on purpose, so that it can be interrupted in the middle. The avatar must "
        "stop talking as soon as the agent clears its buffer, and report how far it got.")


def espeak(text: str) -> tuple[bytes, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-w", str(path), "--", text], check=True, capture_output=True)
        with wave.open(str(path), "rb") as wav:
            return wav.readframes(wav.getnframes()), wav.getframerate()


async def main(args: argparse.Namespace) -> dict:
    token = (api.AccessToken(os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"])
             .with_identity(args.identity).with_kind("agent")
             .with_grants(api.VideoGrants(room_join=True, room=args.room)).to_jwt())
    room = rtc.Room()
    await room.connect(os.environ["LIVEKIT_URL"], token)
    started: list[float] = []
    room.local_participant.register_rpc_method(
        "lk.playback_started", lambda data: (started.append(time.time() * 1000), "ok")[1])
    output = DataStreamAudioOutput(room, destination_identity=args.worker, wait_remote_track=rtc.TrackKind.KIND_VIDEO)
    finished: list[dict] = []
    output.on("playback_finished", lambda ev: finished.append(
        {"position": ev.playback_position, "interrupted": ev.interrupted, "at_ms": time.time() * 1000}))

    async def say(pcm: bytes, rate: int) -> None:
        step = rate // 50 * 2
        for i in range(0, len(pcm), step):
            chunk = pcm[i:i + step]
            await output.capture_frame(rtc.AudioFrame(chunk, rate, 1, len(chunk) // 2))
        output.flush()

    result: dict = {}
    await asyncio.sleep(args.delay_s)
    pcm, rate = espeak(SHORT)
    await say(pcm, rate)
    await asyncio.wait_for(output.wait_for_playout(), 30)
    result["short_s"] = len(pcm) / 2 / rate
    await asyncio.sleep(1.5)
    pcm, rate = espeak(LONG)
    await say(pcm, rate)
    deadline = time.monotonic() + 15
    while len(started) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(args.interrupt_after_s)
    result["cleared_at_ms"] = time.time() * 1000
    output.clear_buffer()
    await asyncio.wait_for(output.wait_for_playout(), 10)
    result.update(started_ms=started, finished=finished)
    await asyncio.sleep(1.0)
    await room.disconnect()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--room", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--identity", default="agent-1")
    parser.add_argument("--worker", default="avatar-worker")
    parser.add_argument("--delay-s", type=float, default=1.0)
    parser.add_argument("--interrupt-after-s", type=float, default=1.5)
    arguments = parser.parse_args()
    arguments.out.write_text(json.dumps(asyncio.run(main(arguments))))
    # The room is left and the result written. One CI run saw the native SDK abort in its own
    # teardown at interpreter exit ("panic in a function that cannot unwind", SIGABRT) after all
    # of that: skip the teardown, which this process has no use for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
