"""The LiveKit Agents avatar contract end to end, with the real ``livekit-agents`` package.

A real LiveKit server on loopback (tests/worker/conftest.py), ``python -m avatar_worker --mode
agents`` as a subprocess, and in the test process an agent participant that speaks through
livekit-agents' own ``DataStreamAudioOutput`` (livekit.agents.voice.avatar) — the class a LiveKit
Agents voice pipeline uses for a remote avatar — with its real RPC handling
(``lk.playback_finished``) and its ``clear_buffer()`` for interruptions. livekit-agents 1.2.18 (the
pinned one) does not take ``lk.playback_started`` itself (1.8 registers it with
``wait_playback_start=True``), so the agent here registers a handler for it next to the output.

These tests fail, not skip, when the server binary or livekit-agents is missing:
``python3 tools/bootstrap.py browser`` installs both.
"""

from __future__ import annotations

import array
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livekit import rtc
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit.agents.voice.io import PlaybackFinishedEvent

if TYPE_CHECKING:
    from tools.devstack import LiveKitServer

ROOT = Path(__file__).resolve().parents[2]
WORKER = "avatar-worker"
AGENT = "agent-1"
ROOM = "agents"
INTERRUPTIONS = 5
LATENCY_BUDGET_MS = 200.0

SHORT_TEXT = "Hello there. I am a LiveKit agent, speaking through the avatar."
LONG_TEXT = ("This is a much longer answer, so that there is plenty of time to interrupt it. "
             "The avatar should stop talking the moment the agent clears its buffer, and then "
             "tell the agent how far it got, in seconds of audio played.")


# --------------------------------------------------------------------------------- helpers


def espeak(text: str) -> tuple[bytes, int]:
    """espeak-ng's own output: int16 mono PCM at its native rate (22050 Hz), as a TTS gives it."""
    exe = shutil.which("espeak-ng")
    assert exe, "espeak-ng is not installed (python3 tools/bootstrap.py browser)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-w", str(path), "--", text], check=True, capture_output=True)
        with wave.open(str(path), "rb") as wav:
            assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
            return wav.readframes(wav.getnframes()), wav.getframerate()


def stereo(pcm: bytes) -> bytes:
    mono = array.array("h", pcm)
    out = array.array("h", bytes(len(pcm) * 2))
    out[0::2] = mono
    out[1::2] = mono
    return out.tobytes()


@dataclass
class Heard:
    """The worker's audio as the agent's room receives it (48 kHz mono)."""

    loud_frames: list[float] = field(default_factory=list)
    """Receive time of every 10 ms frame with speech in it."""


class Agent:
    """The agent side: a participant of kind agent speaking through ``DataStreamAudioOutput``."""

    def __init__(self, server: LiveKitServer, identity: str = AGENT) -> None:
        self.server = server
        self.identity = identity
        self.room: rtc.Room = None  # type: ignore[assignment]  # made in connect(), on the test's loop
        self.output: DataStreamAudioOutput | None = None
        self.started: list[tuple[float, str, str]] = []
        """(time, caller, payload) of each lk.playback_started call."""
        self.finished: list[tuple[float, PlaybackFinishedEvent]] = []
        self.heard = Heard()
        self.worker: rtc.RemoteParticipant | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self) -> None:
        room = self.room = rtc.Room()  # a Room belongs to the event loop it was made on

        @room.on("track_subscribed")
        def _subscribed(track: rtc.Track, pub: rtc.RemoteTrackPublication, part: rtc.RemoteParticipant) -> None:
            if part.identity == WORKER and track.kind == rtc.TrackKind.KIND_AUDIO:
                self._tasks.append(asyncio.create_task(self._listen(track)))

        token = self.server.token(self.identity, ROOM, kind="agent")
        await room.connect(self.server.url, token)

        def _playback_started(data: rtc.RpcInvocationData) -> str:
            self.started.append((time.time(), data.caller_identity, data.payload))
            return "ok" if data.caller_identity == WORKER else "reject"

        room.local_participant.register_rpc_method("lk.playback_started", _playback_started)
        self.output = DataStreamAudioOutput(room, destination_identity=WORKER,
                                            wait_remote_track=rtc.TrackKind.KIND_VIDEO)
        self.output.on("playback_finished", lambda ev: self.finished.append((time.time(), ev)))

    async def _listen(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
            samples = array.array("h", bytes(event.frame.data))
            if samples and max(abs(s) for s in samples) > 2000:
                self.heard.loud_frames.append(time.time())

    async def say(self, pcm: bytes, rate: int, channels: int = 1, *, pace: float | None = None,
                  flush: bool = True) -> None:
        """Push ``pcm`` in 20 ms frames, as fast as it goes (a TTS) or ``pace`` times real time."""
        assert self.output is not None
        step = rate // 50
        size = step * 2 * channels
        for i in range(0, len(pcm), size):
            chunk = pcm[i:i + size]
            await self.output.capture_frame(rtc.AudioFrame(chunk, rate, channels, len(chunk) // (2 * channels)))
            if pace:
                await asyncio.sleep(0.02 / pace)
        if flush:
            self.output.flush()

    async def playout(self, timeout: float = 30.0) -> PlaybackFinishedEvent:
        assert self.output is not None
        return await asyncio.wait_for(self.output.wait_for_playout(), timeout)

    async def wait_started(self, count: int, timeout: float = 15.0) -> float:
        deadline = time.monotonic() + timeout
        while len(self.started) < count:
            assert time.monotonic() < deadline, f"no lk.playback_started #{count}"
            await asyncio.sleep(0.01)
        return self.started[count - 1][0]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.room.disconnect()


def start_worker(server: LiveKitServer, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key,
               LIVEKIT_API_SECRET=server.api_secret)
    return subprocess.Popen(
        [sys.executable, "-m", "avatar_worker", "--room", ROOM, "--mode", "agents", "--agent-identity", AGENT,
         "--identity", WORKER, *args],
        cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=(tmp_path / "worker.log").open("w"),
    )


def stop_worker(worker: subprocess.Popen[str]) -> dict[str, Any]:
    if worker.poll() is None:
        worker.send_signal(signal.SIGINT)
    out, _ = worker.communicate(timeout=20)
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, "the worker printed no summary"
    return json.loads(lines[-1])


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def turns_in(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per agent turn: its start and end records and the motion frames sent in between."""
    turns: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for r in records:
        if r["kind"] == "turn" and r["event"] == "start":
            current = {"start": r, "frames": [], "end": None}
            turns.append(current)
        elif r["kind"] == "turn" and r["event"] == "end":
            assert current is not None and current["end"] is None
            current["end"] = r
        elif current is not None and current["end"] is None and r["kind"] == "frame" and r["sent"]:
            current["frames"].append(r)
    return turns


def interruption_latencies(records: list[dict[str, Any]]) -> list[dict[str, float]]:
    """For each accepted lk.clear_buffer: ms from its arrival to the TRANSITION_END that closed the
    turn, and to the last motion frame sent before it."""
    out = []
    for i, r in enumerate(records):
        if not (r["kind"] == "agent-rpc" and r["direction"] == "in" and r["answer"] == "ok"):
            continue
        arrived = r["arrived_ms"]
        later = [x for x in records[i + 1:] if x["kind"] in ("frame", "transition_end")]
        before = [x for x in records[:i] if x["kind"] in ("frame", "transition_end") and x["t_ms"] >= arrived]
        emissions = sorted(before + later, key=lambda x: x["t_ms"])
        end = next(x for x in emissions if x["kind"] == "transition_end")
        frames = [x for x in emissions if x["kind"] == "frame" and x["t_ms"] <= end["t_ms"]]
        last_motion = max([end["t_ms"], *(x["t_ms"] for x in frames)])
        out.append({"to_transition_end_ms": end["t_ms"] - arrived, "to_last_motion_ms": last_motion - arrived,
                    "frames_after": len(frames)})
    return out


# ----------------------------------------------------------------------------------- tests


def test_agent_drives_turns_and_interrupts_them(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """A short segment plays to the end; longer ones are cut by clear_buffer() mid-way, five
    times; the worker answers with lk.playback_finished each time and stops within 200 ms."""
    log_path = tmp_path / "sent.jsonl"
    worker = start_worker(livekit_server, tmp_path, "--send-log", str(log_path), "--realtime")
    short_pcm, short_rate = espeak(SHORT_TEXT)
    long_pcm, long_rate = espeak(LONG_TEXT)
    short_s = len(short_pcm) / 2 / short_rate
    agent = Agent(livekit_server)
    results: dict[str, Any] = {"interrupted": []}

    async def scenario() -> None:
        await agent.connect()
        # the natural end: a TTS-like burst (22.05 kHz mono, faster than real time), then flush
        t0 = time.time()
        await agent.say(short_pcm, short_rate)
        ev = await agent.playout()
        results["natural"] = (ev, time.time() - t0)
        results["worker_attributes"] = dict(agent.room.remote_participants[WORKER].attributes)
        results["worker_kind"] = agent.room.remote_participants[WORKER].kind
        results["heard_natural"] = len(agent.heard.loud_frames)
        for k in range(INTERRUPTIONS):
            pcm, channels = (stereo(long_pcm), 2) if k % 2 else (long_pcm, 1)
            open_stream = k % 2 == 1
            # even runs: all pushed and flushed (as a TTS faster than real time leaves it);
            # odd runs: still streaming at 1.5x real time when the agent interrupts
            speaking = asyncio.create_task(agent.say(pcm, long_rate, channels, pace=1.5 if open_stream else None,
                                                     flush=not open_stream))
            started = await agent.wait_started(2 + k)
            await asyncio.sleep(1.2 + 0.15 * k - (time.time() - started))
            cleared_at = time.time()
            assert agent.output is not None
            agent.output.clear_buffer()
            if open_stream:
                speaking.cancel()
                await asyncio.gather(speaking, return_exceptions=True)
                agent.output.flush()  # what the agent pipeline does with a cancelled reply
            else:
                await speaking
            ev = await agent.playout(10)
            results["interrupted"].append((ev, cleared_at - started, time.time() - cleared_at))
            results.setdefault("cleared_at", []).append(cleared_at)
        await asyncio.sleep(1.0)
        results["closed_at"] = time.time()
        await agent.close()

    try:
        asyncio.run(scenario())
    finally:
        summary = stop_worker(worker)
    log = (tmp_path / "worker.log").read_text()
    assert summary["outcome"] == "signal", log[-3000:]
    assert results["worker_kind"] == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    assert results["worker_attributes"].get("lk.publish_on_behalf") == AGENT

    # the natural end: playback_started, then playback_finished(interrupted=False) with the length
    ev, took = results["natural"]
    assert ev.interrupted is False
    assert abs(ev.playback_position - short_s) < 0.1, (ev.playback_position, short_s)
    assert took >= short_s  # played in real time, not acknowledged on receipt
    assert agent.started[0][1:] == (WORKER, "")
    assert agent.started[0][0] < agent.finished[0][0]
    assert results["heard_natural"] >= 0.3 * short_s * 100, ("the agent's room heard too little of the speech",
                                                              results["heard_natural"])

    # interruptions: playback_finished(interrupted=True), position close to what was played
    assert len(results["interrupted"]) == INTERRUPTIONS
    for ev, played_s, answer_s in results["interrupted"]:
        assert ev.interrupted is True
        assert abs(ev.playback_position - played_s) < 0.35, (ev.playback_position, played_s)
        assert answer_s < 1.0
    assert len(agent.started) == 1 + INTERRUPTIONS
    # and the speech stops: nothing loud reaches the agent's room from 0.3 s after the clear until
    # the next segment starts (WebRTC's jitter buffer holds some tens of ms)
    ends = [t for t, _, _ in agent.started[2:]] + [results["closed_at"]]
    audio_stop_ms = []
    for cleared_at, next_start in zip(results["cleared_at"], ends):
        late = [t for t in agent.heard.loud_frames if cleared_at + 0.3 < t < next_start]
        assert not late, f"speech still heard {late[-1] - cleared_at:.2f} s after clear_buffer"
        after = [t for t in agent.heard.loud_frames if cleared_at < t < next_start]
        audio_stop_ms.append(round((max(after) - cleared_at) * 1000, 1) if after else 0.0)
    assert [e.interrupted for _, e in agent.finished] == [False] + [True] * INTERRUPTIONS

    # the send log: one turn per segment, with reasons, frames and a closing TRANSITION_END
    records = records_of(log_path)
    turns = turns_in(records)
    assert [t["end"]["reason"] for t in turns] == ["end"] + ["interrupted"] * INTERRUPTIONS
    first = turns[0]
    assert len(first["frames"]) == first["end"]["frames"] >= int(short_s / 0.04)
    assert first["frames"][0]["flags"] & 0x02 and first["frames"][-1]["flags"] & 0x04
    for turn in turns[1:]:
        assert turn["frames"] and not any(f["flags"] & 0x04 for f in turn["frames"])
    latencies = interruption_latencies(records)
    assert len(latencies) == INTERRUPTIONS
    to_end = [x["to_transition_end_ms"] for x in latencies]
    to_motion = [x["to_last_motion_ms"] for x in latencies]
    report = {"heard_natural_10ms_frames": results["heard_natural"], "to_transition_end_ms": to_end, "median_ms": statistics.median(to_end), "max_ms": max(to_end),
              "to_last_motion_ms": to_motion, "frames_after_clear": [x["frames_after"] for x in latencies],
              "agent_clear_to_last_loud_audio_ms": audio_stop_ms}
    print("\ninterruption latency:", json.dumps(report))
    (tmp_path / "latency.json").write_text(json.dumps(report))
    assert max(to_end) < LATENCY_BUDGET_MS, report
    assert max(to_motion) < LATENCY_BUDGET_MS, report
    assert summary["agent_segments"] == 1 + INTERRUPTIONS
    assert summary["agent_segments_interrupted"] == INTERRUPTIONS
    assert summary["agent_rpc_failed"] == 0


def test_only_the_agent_may_clear_the_buffer(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """lk.clear_buffer from another agent and from a standard participant gets an RPC error and
    changes nothing; their audio streams are not read. Counted, logged once per participant; the
    agent's own turn plays to its end."""
    log_path = tmp_path / "sent.jsonl"
    worker = start_worker(livekit_server, tmp_path, "--send-log", str(log_path))
    pcm, rate = espeak(SHORT_TEXT)
    agent = Agent(livekit_server)
    results: dict[str, Any] = {"errors": []}

    async def scenario() -> None:
        await agent.connect()
        others = []
        for identity, kind in (("intruder", "agent"), ("user-1", None)):
            room = rtc.Room()
            await room.connect(livekit_server.url, livekit_server.token(identity, ROOM, kind=kind))
            others.append(room)
        speaking = asyncio.create_task(agent.say(pcm, rate))
        await agent.wait_started(1)
        await asyncio.sleep(0.5)
        for room in others:
            for _ in range(2):
                try:
                    await room.local_participant.perform_rpc(destination_identity=WORKER, method="lk.clear_buffer",
                                                             payload="")
                except rtc.RpcError as exc:
                    results["errors"].append((room.local_participant.identity, exc.code, exc.message))
            # their own speech goes nowhere
            writer = await room.local_participant.stream_bytes(
                "x", topic="lk.audio_stream", destination_identities=[WORKER],
                attributes={"sample_rate": str(rate), "num_channels": "1"})
            await writer.write(pcm[: rate])
            await writer.aclose()
        await speaking
        results["ev"] = await agent.playout()
        for room in others:
            await room.disconnect()
        await agent.close()

    try:
        asyncio.run(scenario())
    finally:
        summary = stop_worker(worker)
    log = (tmp_path / "worker.log").read_text()
    assert [(who, code) for who, code, _ in results["errors"]] == [("intruder", 403)] * 2 + [("user-1", 403)] * 2
    expected = f"only the agent '{AGENT}', a participant of kind agent, may call it"
    assert all(expected in message for _, _, message in results["errors"])
    assert results["ev"].interrupted is False
    assert abs(results["ev"].playback_position - len(pcm) / 2 / rate) < 0.1
    records = records_of(log_path)
    rpcs = [(r["caller"], r["answer"]) for r in records if r["kind"] == "agent-rpc" and r["direction"] == "in"]
    assert rpcs == [("intruder", "refused"), ("user-1", "refused")]  # the first of each only
    streams = sorted((r["event"], r.get("from", "")) for r in records if r["kind"] == "agent-stream")
    assert streams == [("close", ""), ("open", ""), ("refused", "intruder"), ("refused", "user-1")]
    assert [t["end"]["reason"] for t in turns_in(records)] == ["end"]
    assert summary["agent_rpc_rejected"] == 4 and summary["agent_streams_refused"] == 2
    assert summary["agent_segments"] == 1 and summary["agent_clear_buffer"] == 0
    for who in ("intruder", "user-1"):
        lines = [line for line in log.splitlines() if f"refusing RPC lk.clear_buffer from {who!r}" in line]
        assert len(lines) == 1, lines  # once per participant, not per call
    assert "refusing audio streams on lk.audio_stream from 'user-1': not the agent" in log


def test_the_agents_identity_without_the_agent_kind_is_refused(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """A standard participant with the agent's identity (a token any web token endpoint could
    mint, if it lets the browser pick its identity): its clear_buffer gets an RPC error and its
    stream is not played. The real agent, once it joins, drives the avatar as usual."""
    log_path = tmp_path / "sent.jsonl"
    worker = start_worker(livekit_server, tmp_path, "--send-log", str(log_path))
    pcm, rate = espeak(SHORT_TEXT)
    results: dict[str, Any] = {}

    async def scenario() -> None:
        impostor = rtc.Room()
        await impostor.connect(livekit_server.url, livekit_server.token(AGENT, ROOM))  # kind standard
        deadline = time.monotonic() + 15
        while not (WORKER in impostor.remote_participants
                   and len(impostor.remote_participants[WORKER].track_publications) == 2):
            assert time.monotonic() < deadline, "the worker's tracks never showed up"
            await asyncio.sleep(0.05)
        try:
            await impostor.local_participant.perform_rpc(destination_identity=WORKER, method="lk.clear_buffer",
                                                         payload="")
            results["rpc"] = "ok"
        except rtc.RpcError as exc:
            results["rpc"] = (exc.code, exc.message)
        writer = await impostor.local_participant.stream_bytes(
            "speech", topic="lk.audio_stream", destination_identities=[WORKER],
            attributes={"sample_rate": str(rate), "num_channels": "1"})
        await writer.write(pcm)
        await writer.aclose()
        await asyncio.sleep(1.5)  # what the old worker took as the agent's speech would be playing by now
        await impostor.disconnect()
        agent = Agent(livekit_server)
        await agent.connect()
        await agent.say(pcm, rate)
        results["ev"] = await agent.playout()
        await agent.close()

    try:
        asyncio.run(scenario())
    finally:
        summary = stop_worker(worker)
    log = (tmp_path / "worker.log").read_text()
    assert isinstance(results["rpc"], tuple) and results["rpc"][0] == 403, results["rpc"]
    assert "kind STANDARD" in results["rpc"][1]
    assert results["ev"].interrupted is False
    assert abs(results["ev"].playback_position - len(pcm) / 2 / rate) < 0.1
    records = records_of(log_path)
    assert len(turns_in(records)) == 1  # the agent's only
    refused = [r for r in records if r["kind"] == "agent-stream" and r["event"] == "refused"]
    assert [r["from"] for r in refused] == [AGENT]
    assert summary["agent_streams_refused"] == 1 and summary["agent_rpc_rejected"] == 1
    assert summary["agent_segments"] == 1 and summary["agent_segments_completed"] == 1
    assert f"refusing audio streams on lk.audio_stream from '{AGENT}': a participant of kind STANDARD" in log


def test_an_oversized_stream_is_cut_and_the_worker_keeps_working(livekit_server: LiveKitServer,
                                                                 tmp_path: Path) -> None:
    """The agent pushes 80 s of speech in one segment: the worker reads about 60 s of it, logs
    where it cut the stream, plays it until the agent clears the buffer, and the next segment
    plays normally."""
    log_path = tmp_path / "sent.jsonl"
    worker = start_worker(livekit_server, tmp_path, "--send-log", str(log_path))
    pcm, rate = espeak(SHORT_TEXT)
    seconds = len(pcm) / 2 / rate
    long_pcm = pcm * (int(80 / seconds) + 1)
    agent = Agent(livekit_server)
    results: dict[str, Any] = {}
    worker_log = tmp_path / "worker.log"

    async def scenario() -> None:
        await agent.connect()
        assert agent.output is not None
        step = rate // 2 * 2  # half a second a frame: fewer writes, same stream
        for i in range(0, len(long_pcm), step):
            chunk = long_pcm[i:i + step]
            await agent.output.capture_frame(rtc.AudioFrame(chunk, rate, 1, len(chunk) // 2))
        agent.output.flush()
        deadline = time.monotonic() + 20
        while " cut at " not in worker_log.read_text():
            assert time.monotonic() < deadline, "no cut in the worker's log"
            await asyncio.sleep(0.1)
        await agent.wait_started(1)
        await asyncio.sleep(1.0)
        agent.output.clear_buffer()
        results["cut"] = await agent.playout(10)
        await agent.say(pcm, rate)
        results["next"] = await agent.playout()
        await agent.close()

    try:
        asyncio.run(scenario())
    finally:
        summary = stop_worker(worker)
    log = worker_log.read_text()
    (line,) = [line for line in log.splitlines() if " cut at " in line]
    match = re.search(r"stream (\S+) from 'agent-1' cut at (\d+) bytes: over the cap \((.*?)\)", line)
    assert match, line
    cut_s = int(match.group(2)) / 2 / rate
    assert 59 <= cut_s <= 62, (cut_s, line)
    assert results["cut"].interrupted is True and 0.5 < results["cut"].playback_position < 5
    assert results["next"].interrupted is False
    assert abs(results["next"].playback_position - seconds) < 0.1
    records = records_of(log_path)
    assert [t["end"]["reason"] for t in turns_in(records)] == ["interrupted", "end"]
    first = [r["event"] for r in records if r["kind"] == "agent-stream" and r["segment"] == 1]
    assert first == ["open", "cut", "close"]
    assert summary["agent_segments_cut"] == 1 and summary["agent_segments"] == 2
    assert summary["agent_rpc_failed"] == 0
