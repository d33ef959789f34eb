"""Live tests of demo mode (greeting, listening, replying) and replay mode (a recording played
byte for byte), against a fresh loopback livekit-server, with the worker as a subprocess and a
second participant written with ``livekit.rtc`` (same set-up as test_worker_live.py)."""

from __future__ import annotations

import array
import asyncio
import hashlib
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from livekit import rtc

from avatar_worker.audio import pcm as pcm_audio
from avatar_worker.record import main as record_main
from avatar_worker.modes.replay import load_recording

from .test_worker_features_live import Participant, frame_seqs, run_worker, watch_until_exit
from .test_worker_live import send_log, start_worker, wait_for

if TYPE_CHECKING:
    from tools.devstack import LiveKitServer

AGENT = "avatarplayer.agent"
UTTERANCE_TEXT = "Testing, one, two, three."


class Microphone:
    """A fake microphone: 10 ms frames at absolute deadlines, silence unless something is queued."""

    def __init__(self, room: rtc.Room) -> None:
        self.room = room
        self.source = rtc.AudioSource(48000, 1, queue_size_ms=50)
        self.queue = bytearray()
        self.spoke_until: float | None = None
        """time.time() when the last queued sample went out."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        track = rtc.LocalAudioTrack.create_audio_track("mic", self.source)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        self._task = asyncio.create_task(self._run())

    def say(self, pcm: bytes) -> None:
        self.spoke_until = None
        self.queue += pcm

    async def _run(self) -> None:
        started = time.monotonic()
        n = 0
        while True:
            chunk = bytes(self.queue[:960])
            del self.queue[:960]
            had_speech = bool(chunk)
            chunk = chunk.ljust(960, b"\0")
            await self.source.capture_frame(rtc.AudioFrame(chunk, 48000, 1, 480))
            if had_speech and not self.queue:
                self.spoke_until = time.time()
            n += 1
            await asyncio.sleep(max(0.0, started + n * 0.01 - time.monotonic()))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.source.aclose()


def _agent_messages(user: Participant) -> list[tuple[float, dict]]:
    return [(t, json.loads(payload)) for t, payload, _ in user.on_topic(AGENT)]


def _statuses(user: Participant) -> list[tuple[float, str]]:
    return [(t, m["data"]["status"]) for t, m in _agent_messages(user) if m["type"] == "agent_status"]


def test_demo_greets_listens_and_replies(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """The worker greets a participant who joins, hears its microphone, and answers the utterance:
    user transcript, thinking, a reply turn (speaking, agent transcript, listening)."""
    log_path = tmp_path / "sent.jsonl"
    worker = start_worker(livekit_server, tmp_path, "--room", "demo", "--mode", "demo", "--reply", "both",
                          "--asr", "none", "--max-replies", "1", "--exit-when-done", "--send-log", str(log_path))
    speech = pcm_audio.synthesize(UTTERANCE_TEXT)  # 48 kHz mono
    samples = array.array("h", speech)
    loud = [i for i, x in enumerate(samples) if abs(x) > 300]
    speech_s = (loud[-1] - loud[0]) / 48000  # espeak-ng adds quiet before and after
    trailing_s = (len(samples) - loud[-1]) / 48000
    user = Participant(livekit_server, "demo", "user")
    marks: dict[str, float] = {}

    async def watch() -> None:
        marks["joining"] = time.time()
        await user.connect()
        marks["joined"] = time.time()
        mic = Microphone(user.room)
        await mic.start()
        await wait_for(lambda: [s for _, s in _statuses(user)] == ["speaking", "listening"], 20,
                       "the greeting to be over")
        await asyncio.sleep(0.3)
        mic.say(speech)
        await wait_for(lambda: mic.spoke_until is not None, 10, "the utterance to be spoken")
        marks["spoke_until"] = mic.spoke_until - trailing_s  # the voice's end, not the trailing quiet's
        await asyncio.to_thread(worker.wait, 20)
        await asyncio.sleep(0.2)
        await mic.close()
        await user.close()

    summary = run_worker(worker, watch(), timeout=10)
    log = (tmp_path / "worker.log").read_text()
    assert summary["outcome"] == "done", log[-3000:]
    messages = [m for _, m in _agent_messages(user)]
    statuses = _statuses(user)
    assert [s for _, s in statuses] == ["speaking", "listening", "thinking", "speaking", "listening"], messages

    user_chunks = [m["data"] for m in messages if m["type"] == "transcript_chunk" and m["data"]["role"] == "user"]
    assert len(user_chunks) == 1 and user_chunks[0]["utterance"] == 1 and user_chunks[0]["final"]
    heard_s = float(re.fullmatch(r"\((\d+\.\d) s of speech\)", user_chunks[0]["text"]).group(1))
    assert abs(heard_s - speech_s) < 0.3, (heard_s, speech_s)
    agent_chunks = [m["data"] for m in messages if m["type"] == "transcript_chunk" and m["data"]["role"] == "agent"]
    greeting = "".join(c["text"] for c in agent_chunks if c["turn"] == 1)
    reply = "".join(c["text"] for c in agent_chunks if c["turn"] == 2)
    assert greeting == "Hello! I'm the avatarplayer demo. Say something and I will answer."
    assert reply.endswith(f"(your {heard_s} seconds, played back)") and "You spoke for" in reply
    # "thinking" as the speech ended, then the user's chunk
    kinds = [(m["type"], m["data"].get("role") or m["data"].get("status")) for m in messages]
    assert kinds.index(("agent_status", "thinking")) + 1 == kinds.index(("transcript_chunk", "user"))

    records = send_log(log_path)
    frames = [r for r in records if r["kind"] == "frame"]
    starts = [r for r in frames if r["flags"] & 0x02]
    ends = [r for r in frames if r["flags"] & 0x04]
    assert len(starts) == 2 and len(ends) == 2 and all(r["sent"] for r in frames)
    assert [r["seq"] for r in frames] == list(range(len(frames)))
    reply_frames = [r for r in frames if r["seq"] >= starts[1]["seq"]]
    assert len(reply_frames) >= heard_s * 25  # the lead-in and the echo of the utterance
    assert summary["demo"]["greetings"] == 1 and summary["demo"]["replies"] == 1
    assert summary["demo"]["utterances"] == 1 and summary["demo"]["ignored"] == 0
    assert summary["turns_completed"] == 2

    greeting_latency = statuses[0][0] - marks["joined"]
    reply_latency = statuses[3][0] - marks["spoke_until"]
    thinking_latency = statuses[2][0] - marks["spoke_until"]
    print(f"\ndemo: greeting 'speaking' {greeting_latency:.2f} s after the join; utterance "
          f"{speech_s:.2f} s heard as {heard_s} s; 'thinking' {thinking_latency:.2f} s and the reply's "
          f"'speaking' {reply_latency:.2f} s after the microphone went quiet (worker's own measure, end of voice "
          f"to first tick: {summary['demo']['reply_latency_ms']} ms)")
    assert greeting_latency < 3.0
    assert 0.4 <= thinking_latency < 1.5 and reply_latency < 2.0  # 0.6 s of silence ends an utterance


def test_replay_plays_the_recording_byte_for_byte(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """A 50-frame recording made by the recorder: the send log holds exactly its messages (by
    SHA-256 and length), in order, as one turn; the data carrier delivers the very bytes."""
    rec = tmp_path / "rec"
    assert record_main(["--text", "Replay me, byte for byte.", "--frames", "50", "--seed", "11",
                        "--out", str(rec)]) == 0
    recording = load_recording(rec)
    log_path = tmp_path / "sent.jsonl"
    worker = start_worker(livekit_server, tmp_path, "--room", "replay", "--mode", "replay", "--replay-dir", str(rec),
                          "--wait-for-participant", "--lead-in-ms", "500", "--exit-when-done",
                          "--send-log", str(log_path), "--data-carrier")
    viewer = Participant(livekit_server, "replay", "viewer")

    summary = watch_until_exit(worker, viewer)
    assert summary["outcome"] == "done", (tmp_path / "worker.log").read_text()[-3000:]
    assert summary["replay"] == {"dir": str(rec), "frames": 50, "turns": 1}
    records = send_log(log_path)
    frames = [r for r in records if r["kind"] == "frame"]
    assert len(frames) == 50 and all(r["sent"] for r in frames)
    assert [r["seq"] for r in frames] == list(range(frames[0]["seq"], frames[0]["seq"] + 50))
    assert [r["msg_sha256"] for r in frames] == [hashlib.sha256(m).hexdigest() for m in recording.messages]
    assert [r["msg_len"] for r in frames] == [len(m) for m in recording.messages]
    assert frames[0]["flags"] == 0x02 and frames[-1]["flags"] == 0x04
    assert all(r["flags"] == 0 for r in frames[1:-1])
    kinds = [r["kind"] for r in records if r["kind"] not in ("idle", "data-message")]
    assert kinds == ["transition"] + ["frame"] * 50 + ["transition_end"]

    packets = [p for p in viewer.packets("avatarplayer.motion") if p is not None and p.seq is not None]
    first = frames[0]["seq"]
    by_seq = {p.seq: p.message for p in packets}
    assert len(set(frame_seqs(packets))) >= 48  # lossy, but loopback
    assert all(message == recording.messages[seq - first] for seq, message in by_seq.items())
