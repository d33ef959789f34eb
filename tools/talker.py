"""A Python participant that talks to the demo agent and times it, on its own clock.

Used by tests/worker/test_conversation_live.py and bench/conversation.py. It joins the room with
``livekit.rtc``, publishes a microphone fed from PCM it is told to say (10 ms frames at absolute
deadlines, silence in between), records the agent's data messages, and listens to the avatar's
audio track: :attr:`Talker.voiced` holds the arrival time of every avatar audio frame louder than
:data:`VOICE_DBFS` (the worker sends digital silence between turns).

Timings use ``time.time()`` taken in this process:

- *greeting latency*: the first voiced avatar audio after :attr:`Talker.joined` (``room.connect``
  returned, i.e. the visitor is connected);
- *reply latency*: the first voiced avatar audio after the end of the user's voice (the last
  loud sample of the spoken PCM left the microphone).
"""

from __future__ import annotations

import array
import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc

AGENT_TOPIC = "avatarplayer.agent"
VOICE_DBFS = -45.0
"""An avatar audio frame at least this loud is voice."""
LOUD = 300
"""A sample louder than this (about -40 dBFS) counts as voice when finding where speech ends."""


def voice_end_s(pcm: bytes, rate: int = 48_000) -> float:
    """Seconds from the end of ``pcm`` back to its last loud sample (espeak-ng ends in quiet)."""
    samples = array.array("h")
    samples.frombytes(pcm)
    for back, value in enumerate(reversed(samples)):
        if abs(value) > LOUD:
            return back / rate
    return len(samples) / rate


def frame_dbfs(data: Any) -> float:
    """RMS level of int16 samples (an AudioFrame's ``data``, a memoryview of format ``h``) in dBFS."""
    samples = memoryview(data)
    if samples.format != "h":
        samples = samples.cast("B").cast("h")
    if len(samples) == 0:
        return -100.0
    mean_square = sum(s * s for s in samples) / len(samples)
    return 10 * math.log10(mean_square / 32768.0 ** 2) if mean_square > 0 else -100.0


@dataclass
class Talker:
    url: str
    token: str
    avatar_identity: str = "avatar-worker"
    room: rtc.Room | None = None
    joined: float | None = None
    messages: list[tuple[float, dict]] = field(default_factory=list)
    voiced: list[float] = field(default_factory=list)
    spoke_until: float | None = None
    """time.time() when the last queued sample went out."""
    _queue: bytearray = field(default_factory=bytearray)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _source: rtc.AudioSource | None = None

    async def connect(self) -> None:
        room = self.room = rtc.Room()

        @room.on("data_received")
        def _data(packet: rtc.DataPacket) -> None:
            if packet.topic == AGENT_TOPIC:
                self.messages.append((time.time(), json.loads(bytes(packet.data))))

        @room.on("track_subscribed")
        def _subscribed(track: rtc.Track, pub: rtc.RemoteTrackPublication, part: rtc.RemoteParticipant) -> None:
            if part.identity == self.avatar_identity and track.kind == rtc.TrackKind.KIND_AUDIO:
                self._tasks.append(asyncio.create_task(self._listen(track)))

        await room.connect(self.url, self.token, rtc.RoomOptions(auto_subscribe=True))
        self.joined = time.time()
        self._source = rtc.AudioSource(48_000, 1, queue_size_ms=50)
        track = rtc.LocalAudioTrack.create_audio_track("mic", self._source)
        await room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        self._tasks.append(asyncio.create_task(self._speak()))

    async def _listen(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=48_000, num_channels=1):
            if frame_dbfs(event.frame.data) >= VOICE_DBFS:
                self.voiced.append(time.time())

    async def _speak(self) -> None:
        assert self._source is not None
        started, n = time.monotonic(), 0
        while True:
            chunk = bytes(self._queue[:960])
            del self._queue[:960]
            had_speech = bool(chunk)
            await self._source.capture_frame(rtc.AudioFrame(chunk.ljust(960, b"\0"), 48_000, 1, 480))
            if had_speech and not self._queue:
                self.spoke_until = time.time()
            n += 1
            await asyncio.sleep(max(0.0, started + n * 0.01 - time.monotonic()))

    async def say(self, pcm: bytes, timeout: float = 30.0) -> float:
        """Speak ``pcm`` (48 kHz mono int16); returns the time.time() its voice ended."""
        self.spoke_until = None
        self._queue += pcm
        deadline = time.monotonic() + timeout
        while self.spoke_until is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the microphone did not play the utterance")
            await asyncio.sleep(0.01)
        return self.spoke_until - voice_end_s(pcm)

    def first_voice_after(self, t: float) -> float | None:
        return next((v for v in self.voiced if v > t), None)

    def statuses(self) -> list[str]:
        return [m["data"]["status"] for _, m in self.messages if m["type"] == "agent_status"]

    def chunks(self, role: str) -> list[dict]:
        return [m["data"] for _, m in self.messages
                if m["type"] == "transcript_chunk" and m["data"].get("role") == role]

    async def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}; messages: "
                                   f"{[m for _, m in self.messages][-8:]}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._source is not None:
            await self._source.aclose()
        if self.room is not None:
            await self.room.disconnect()
