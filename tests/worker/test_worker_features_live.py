"""Live tests of the worker's data carrier, agent messages, audio report, republishing and rejoin.

Same set-up as test_worker_live.py: a fresh loopback livekit-server per test, the worker as a
subprocess (``python -m avatar_worker``), and second participants written with ``livekit.rtc``.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livekit import rtc

from avatarplayer.wire.motion import Flags, MotionPacket, PacketError, decode_packet
from avatar_worker.modes.scripted import payload_for

from .test_worker_live import WORKER_IDENTITY, send_log, start_worker, summary_of, wait_for

if TYPE_CHECKING:
    from tools.devstack import LiveKitServer

CONTROL = "avatarplayer.control"


@dataclass
class Participant:
    """A second participant: records data messages and the worker's track events."""

    server: LiveKitServer
    room_name: str
    identity: str
    room: rtc.Room | None = None
    data: list[tuple[float, str, bytes, int]] = field(default_factory=list)
    """(receive time, topic, payload, kind)"""
    track_events: list[tuple[float, str, str, str]] = field(default_factory=list)
    """(time, "subscribed"/"unsubscribed", track name, track sid) for the worker's tracks"""
    video: dict[str, list[float]] = field(default_factory=dict)
    """track sid → receive times of decoded frames"""
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    async def connect(self, *, auto_subscribe: bool = True) -> None:
        room = self.room = rtc.Room()  # in the running event loop: the room binds to it

        @room.on("data_received")
        def _data(packet: rtc.DataPacket) -> None:
            self.data.append((time.time(), packet.topic or "", bytes(packet.data), packet.kind))

        @room.on("track_subscribed")
        def _subscribed(track: rtc.Track, pub: rtc.RemoteTrackPublication, part: rtc.RemoteParticipant) -> None:
            if part.identity == WORKER_IDENTITY:
                self.track_events.append((time.time(), "subscribed", pub.name, track.sid))
                if track.kind == rtc.TrackKind.KIND_VIDEO:
                    self._readers.append(asyncio.create_task(self._read_video(track)))

        @room.on("track_unsubscribed")
        def _unsubscribed(track: rtc.Track, pub: rtc.RemoteTrackPublication, part: rtc.RemoteParticipant) -> None:
            if part.identity == WORKER_IDENTITY:
                self.track_events.append((time.time(), "unsubscribed", pub.name, pub.sid))

        token = self.server.token(self.identity, self.room_name, sources=["microphone"])
        await room.connect(self.server.url, token, rtc.RoomOptions(auto_subscribe=auto_subscribe))

    async def _read_video(self, track: rtc.Track) -> None:
        times = self.video.setdefault(track.sid, [])
        async for _ in rtc.VideoStream(track):
            times.append(time.time())

    async def control(self, message: dict[str, Any]) -> None:
        await self.room.local_participant.publish_data(json.dumps(message), reliable=True, topic=CONTROL,
                                                       destination_identities=[WORKER_IDENTITY])

    def on_topic(self, topic: str) -> list[tuple[float, bytes, int]]:
        return [(t, payload, kind) for t, top, payload, kind in self.data if top == topic]

    def json_on(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(payload) for _, payload, _ in self.on_topic(topic)]

    def packets(self, topic: str, since: float = 0.0) -> list[MotionPacket | None]:
        out: list[MotionPacket | None] = []
        for t, payload, _ in self.on_topic(topic):
            if t >= since:
                try:
                    out.append(decode_packet(payload))
                except PacketError:
                    out.append(None)
        return out

    async def close(self) -> None:
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        await self.room.disconnect()


def run_worker(worker, coro, timeout: float = 60) -> dict:
    """Run the watching coroutine, then the worker's summary (killing it if anything failed).
    A worker still running when something failed first dumps its threads' stacks into its log
    (SIGUSR1, see cli.main), so a hang explains itself in the failure message."""
    try:
        asyncio.run(coro)
        return summary_of(worker, timeout)
    except BaseException as exc:
        if worker.poll() is None:
            worker.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            log = Path(worker.args[worker.args.index("--send-log") + 1]).parent / "worker.log" \
                if "--send-log" in worker.args else None
            if log is not None and log.exists():
                raise AssertionError(f"{exc!r}\nworker log (stacks at the end):\n"
                                     f"{log.read_text(errors='replace')[-6000:]}") from exc
        raise
    finally:
        if worker.poll() is None:
            worker.kill()


def watch_until_exit(worker, viewer: "Participant", timeout: float = 30) -> dict:
    """The usual live check: ``viewer`` joins, stays until the worker exits on its own, leaves;
    returns the worker's summary (see :func:`run_worker`)."""

    async def watch() -> None:
        await viewer.connect()
        await asyncio.to_thread(worker.wait, timeout)
        await asyncio.sleep(0.3)
        await viewer.close()

    return run_worker(worker, watch())


def frame_seqs(packets: list[MotionPacket | None]) -> list[int]:
    return [p.seq for p in packets if p is not None and p.seq is not None]


# ------------------------------------------------------------------------------ data carrier


def test_data_carrier_on_request_with_faults(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """A viewer asks for the data carrier: REDUNDANT packets reach it (and only it), faults
    injected on both carriers alike, acks on the control topic, and a cancel stops the packets."""
    log_path = tmp_path / "sent.jsonl"
    worker = start_worker(livekit_server, tmp_path, "--room", "dc", "--mode", "scripted", "--frames", "200",
                          "--wait-for-participant", "--lead-in-ms", "1500", "--exit-when-done",
                          "--send-log", str(log_path), "--loss", "0.1", "--duplicate", "0.05", "--bad", "0.05",
                          "--seed", "5")
    viewer = Participant(livekit_server, "dc", "viewer")
    bystander = Participant(livekit_server, "dc", "bystander")
    topic = "test.motion"
    marks: dict[str, float] = {}

    async def watch() -> None:
        await bystander.connect(auto_subscribe=False)
        await viewer.connect()
        await wait_for(lambda: viewer.track_events, 15, "the worker's tracks")
        await viewer.control({"type": "carrier", "carrier": "data", "topic": topic})
        await wait_for(lambda: viewer.json_on(CONTROL), 10, "the carrier ack")
        marks["acked"] = time.time()
        await wait_for(lambda: len(frame_seqs(viewer.packets(topic))) >= 120, 30, "120 frames on the data carrier")
        await viewer.control({"type": "carrier", "carrier": "video"})
        await wait_for(lambda: len(viewer.json_on(CONTROL)) >= 2, 10, "the second ack")
        marks["cancelled"] = time.time()
        await asyncio.sleep(0.5)  # packets already in flight
        marks["quiet"] = time.time()
        await asyncio.to_thread(worker.wait, 30)
        await asyncio.sleep(0.3)
        await viewer.close()
        await bystander.close()

    summary = run_worker(worker, watch())
    assert summary["outcome"] == "done", (tmp_path / "worker.log").read_text()[-3000:]
    acks = viewer.json_on(CONTROL)
    assert acks == [{"type": "carrier-ack", "carrier": "data", "topic": topic},
                    {"type": "carrier-ack", "carrier": "video"}]
    assert not bystander.on_topic(topic) and not bystander.on_topic(CONTROL)
    assert all(kind == rtc.DataPacketKind.KIND_LOSSY for _, _, kind in viewer.on_topic(topic))
    assert not viewer.packets(topic, since=marks["quiet"]), "packets kept coming after the cancel"

    packets = viewer.packets(topic)
    good = [p for p in packets if p is not None]
    frames = [p for p in good if p.seq is not None]
    assert Flags.IDLE in {p.flags for p in good} and any(p.flags == Flags.TRANSITION for p in good)
    assert all(Flags.REDUNDANT in p.flags for p in frames)
    for p in frames:  # the packet itself, payloads as scripted; prev1/prev2 of the same turn
        assert p.message == payload_for(p.seq)
        assert p.previous[0] == (payload_for(p.seq - 1) if p.seq >= 1 else None)
    assert frames[0].flags & Flags.START or frames[0].seq > 0

    records = send_log(log_path)
    frame_records = [r for r in records if r["kind"] in ("frame", "reordered")]
    lost = {r["seq"] for r in frame_records if not r["sent"]}
    on_data = {r["seq"] for r in frame_records if r["data"]}
    assert lost and not lost & on_data, "a frame dropped by --loss went out on the data carrier"
    duplicated = {r["seq"] for r in records if r["kind"] == "duplicate" and r["data"]}
    received = set(frame_seqs(packets))
    assert not received & (lost - duplicated)  # a lost frame's injected duplicate still goes, as on video
    assert received <= on_data | duplicated
    # lossy on loopback: (nearly) everything sent while the viewer had asked arrived
    expected = {r["seq"] for r in frame_records if r["data"] and marks["acked"] + 0.1 < r["t_ms"] / 1000 < marks["cancelled"] - 0.2}
    assert len(expected & received) >= 0.95 * len(expected), (len(expected), len(expected & received))
    # the injected bad packets went out on the data carrier too, and are rejected by the decoder
    assert any(r["kind"] == "bad" and r["data"] for r in records) and None in packets
    # acks are logged; nothing went on the data carrier before the request or after the cancel
    assert [r["message"]["carrier"] for r in records if r["kind"] == "data-message"] == ["data", "video"]
    data_times = [r["t_ms"] / 1000 for r in records if r.get("data")]
    assert min(data_times) >= marks["acked"] - 1.0 and max(data_times) <= marks["cancelled"] + 0.1
    assert summary["data_sent"] == sum(1 for r in records if r.get("data") and r["kind"] != "data-message")


def test_data_carrier_flag_and_agent_messages(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """--data-carrier sends to everyone unasked; --agent-data frames each scripted turn with
    speaking / transcript "turn N" / listening, logged in the send log."""
    log_path = tmp_path / "sent.jsonl"
    worker = start_worker(livekit_server, tmp_path, "--room", "agent", "--mode", "scripted", "--frames", "40",
                          "--turns", "2", "--turn-gap-ms", "300", "--wait-for-participant", "--lead-in-ms", "800",
                          "--exit-when-done", "--send-log", str(log_path), "--data-carrier", "--agent-data")
    viewer = Participant(livekit_server, "agent", "viewer")

    summary = watch_until_exit(worker, viewer)
    assert summary["outcome"] == "done", (tmp_path / "worker.log").read_text()[-3000:]
    seqs = frame_seqs(viewer.packets("avatarplayer.motion"))
    assert sorted(set(seqs)) == list(range(80)), seqs
    agent = viewer.json_on("avatarplayer.agent")
    assert agent == [
        {"type": "agent_status", "data": {"status": "speaking"}},
        {"type": "transcript_chunk", "data": {"role": "agent", "text": "turn 1", "turn": 1, "final": True,
                                              "seq": 0, "turn_seq": 0}},
        {"type": "agent_status", "data": {"status": "listening"}},
        {"type": "agent_status", "data": {"status": "speaking"}},
        {"type": "transcript_chunk", "data": {"role": "agent", "text": "turn 2", "turn": 2, "final": True,
                                              "seq": 40, "turn_seq": 40}},
        {"type": "agent_status", "data": {"status": "listening"}},
    ]
    assert all(kind == rtc.DataPacketKind.KIND_RELIABLE for _, _, kind in viewer.on_topic("avatarplayer.agent"))
    records = send_log(log_path)
    logged = [r for r in records if r["kind"] == "data-message"]
    assert [r["message"] for r in logged] == agent and all(r["sent"] and r["type"] for r in logged)
    # speaking goes out with the TRANSITION, listening right after the TRANSITION_END
    transition = next(r for r in records if r["kind"] == "transition")
    assert abs(logged[0]["t_ms"] - transition["t_ms"]) < 45


def test_agent_messages_in_speech_mode(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """In speech mode the transcript is the spoken text, word by word, each word with the frame it
    is heard at, the last one final."""
    text = "One two three four five six seven."
    worker = start_worker(livekit_server, tmp_path, "--room", "speech", "--text", text, "--agent-data",
                          "--wait-for-participant", "--lead-in-ms", "500", "--exit-when-done")
    viewer = Participant(livekit_server, "speech", "viewer")

    summary = watch_until_exit(worker, viewer)
    assert summary["outcome"] == "done", (tmp_path / "worker.log").read_text()[-3000:]
    agent = viewer.json_on("avatarplayer.agent")
    chunks = [m["data"] for m in agent if m["type"] == "transcript_chunk"]
    assert agent[0]["data"]["status"] == "speaking" and agent[-1]["data"]["status"] == "listening"
    assert [c["text"] for c in chunks] == ["One ", "two ", "three ", "four ", "five ", "six ", "seven."]
    assert [c["final"] for c in chunks] == [False] * 6 + [True] and {c["turn"] for c in chunks} == {1}
    seqs = [c["seq"] for c in chunks]
    assert seqs == sorted(seqs) and seqs[0] == chunks[0]["turn_seq"] and seqs[-1] - seqs[0] > 25
    times = [t for t, _, _ in viewer.on_topic("avatarplayer.agent")]
    assert times[-1] - times[0] > 1.0  # spread over the utterance, not sent at once


# ------------------------------------------------------------------------------ audio report


def tone_frame(n: int, amplitude: int = 8000, hz: float = 440.0, samples: int = 480) -> rtc.AudioFrame:
    data = b"".join(struct.pack("<h", int(amplitude * math.sin(2 * math.pi * hz * (n * samples + i) / 48000)))
                    for i in range(samples))
    return rtc.AudioFrame(data, 48000, 1, samples)


def test_audio_report(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """A participant publishes 3 s of a loud tone then unpublishes: the report shows loud
    seconds for its track, then the unsubscription, and nothing about the worker's own audio."""
    report_path = tmp_path / "heard.jsonl"
    worker = start_worker(livekit_server, tmp_path, "--room", "ears", "--mode", "scripted", "--frames", "50",
                          "--exit-after-ms", "12000", "--audio-report", str(report_path))
    speaker = Participant(livekit_server, "ears", "speaker")
    marks: dict[str, float] = {}

    def report() -> list[dict]:
        if not report_path.exists():
            return []
        return [json.loads(line) for line in report_path.read_text().splitlines() if line.strip()]

    async def watch() -> None:
        await speaker.connect(auto_subscribe=False)
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("fake-mic", source)
        pub = await speaker.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        frames = [tone_frame(n) for n in range(100)]  # 1 s, phase-continuous on repeat (440 Hz)
        n = 0
        started = time.monotonic()
        while time.monotonic() - started < 4.0:
            await source.capture_frame(frames[n % 100])
            n += 1
        await wait_for(lambda: sum(1 for r in report() if r["kind"] == "audio" and r["rms"] > 3000) >= 2, 10,
                       "two loud seconds in the report")
        marks["unpublished"] = time.time()
        await speaker.room.local_participant.unpublish_track(pub.sid)
        await wait_for(lambda: any(r.get("event") == "unsubscribed" for r in report()), 10, "the unsubscription")
        await asyncio.sleep(2.0)
        await source.aclose()
        await speaker.close()
        worker.send_signal(signal.SIGTERM)

    summary = run_worker(worker, watch())
    assert summary["outcome"] == "signal", (tmp_path / "worker.log").read_text()[-3000:]
    records = report()
    tracks = [r for r in records if r["kind"] == "audio-track"]
    assert [r["event"] for r in tracks] == ["subscribed", "unsubscribed"]
    assert {(r["identity"], r["track"]) for r in tracks} == {("speaker", "fake-mic")}
    sid = tracks[0]["sid"]
    audio = [r for r in records if r["kind"] == "audio"]
    assert audio and all(r["sid"] == sid and r["identity"] == "speaker" for r in audio)
    assert [r["second"] for r in audio] == list(range(len(audio)))
    assert all(r["samples"] == 48000 for r in audio)
    loud = [r for r in audio if r["rms"] > 3000]
    # a sine of amplitude 8000 has an RMS of 8000/sqrt(2) = 5657 (Opus keeps it within a few %)
    assert len(loud) >= 2 and all(5000 < r["rms"] < 6300 and 7000 < r["peak"] <= 9500 for r in loud), loud
    unsubscribed_at = tracks[1]["t_ms"]
    assert not [r for r in audio if r["t_ms"] > unsubscribed_at]
    assert unsubscribed_at / 1000 - marks["unpublished"] < 3


# -------------------------------------------------------------------------------- republish


def test_republish_after(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """--republish-after 40: the viewer sees the motion track go and a new one (new sid, same
    name) come; the turn's frames go on on it, seq continuing."""
    log_path = tmp_path / "sent.jsonl"
    worker = start_worker(livekit_server, tmp_path, "--room", "swap", "--mode", "scripted", "--frames", "150",
                          "--republish-after", "40", "--wait-for-participant", "--lead-in-ms", "500",
                          "--exit-when-done", "--send-log", str(log_path))
    viewer = Participant(livekit_server, "swap", "viewer")

    summary = watch_until_exit(worker, viewer)
    assert summary["outcome"] == "done", (tmp_path / "worker.log").read_text()[-3000:]
    motion = [(event, sid) for _, event, name, sid in viewer.track_events if name == "avatar-motion"]
    assert [e for e, _ in motion[:3]] == ["subscribed", "unsubscribed", "subscribed"], motion
    assert motion[0][1] == motion[1][1] != motion[2][1]
    new_sid = motion[2][1]
    assert len(viewer.video.get(new_sid, [])) > 50  # frames decoded from the new track

    records = send_log(log_path)
    start, done = [r for r in records if r["kind"] == "republish"]
    assert start["event"] == "start" and start["seq"] == 39
    assert done["event"] == "done" and done["ok"] and done["new_sid"] == new_sid and done["old_sid"] == motion[0][1]
    frames = [r for r in records if r["kind"] == "frame"]
    assert [r["seq"] for r in frames] == list(range(150))
    gap = [r["seq"] for r in frames if not r["sent"]]
    assert all(39 < s < done["seq"] for s in gap), (gap, done)
    assert all(r["sent"] for r in frames if r["seq"] >= done["seq"])
    print(f"\nrepublish took {done['took_ms']} ms; frames refused meanwhile: {gap}")


# ---------------------------------------------------------------------------- server restart


def _restart_mid_turn(server: LiveKitServer, tmp_path: Path, room: str, *, down_s: float, kill: bool) -> None:
    """Stop the server ``down_s`` s mid-turn; a viewer that asked for the data carrier stays (its
    SDK reconnects by itself, or it joins again if the server ended its session)."""
    log_path = tmp_path / "sent.jsonl"
    worker = start_worker(server, tmp_path, "--room", room, "--mode", "scripted", "--frames", "500",
                          "--exit-when-done", "--send-log", str(log_path), "--lead-in-ms", "300")
    marks: dict[str, float] = {}

    def records() -> list[dict]:
        if not log_path.exists():
            return []
        return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]

    async def watch() -> None:
        viewer = Participant(server, room, "viewer")
        await viewer.connect()
        await wait_for(lambda: viewer.track_events, 15, "the worker's tracks")
        await viewer.control({"type": "carrier", "carrier": "data"})
        await wait_for(lambda: any(r["kind"] == "frame" and r["seq"] >= 50 for r in records()), 20,
                       "50 frames before the restart")
        marks["stop"] = time.time()
        await asyncio.to_thread(server.stop, kill=kill)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(server.start)
        marks["up"] = time.time()
        if not viewer.room.isconnected():  # a graceful stop ends every session for good
            await viewer.close()
            viewer = Participant(server, room, "viewer")
            await viewer.connect()
        # the viewer stays till the end: alone in the room, the worker would see it closed
        def video_after_up() -> bool:
            return sum(1 for v in viewer.video.values() for t in v if t > marks["up"]) > 25

        try:
            await wait_for(video_after_up, 10, "video frames after the restart")
        except AssertionError:
            # the viewer's own SDK did not recover (seen on a loaded CI run): it joins afresh, as
            # an app would; what is checked here is the worker
            await viewer.close()
            viewer = Participant(server, room, "viewer")
            await viewer.connect()
            await wait_for(video_after_up, 20, "video frames after the restart (viewer rejoined)")
        await wait_for(lambda: len(frame_seqs(viewer.packets("avatarplayer.motion", since=marks["up"]))) > 25, 30,
                       "data-carrier packets after the restart, without asking again")
        await asyncio.to_thread(worker.wait, 40)
        await viewer.close()

    summary = run_worker(worker, watch())
    assert summary["outcome"] == "done", (tmp_path / "worker.log").read_text()[-3000:]
    frames = [r for r in records() if r["kind"] == "frame"]
    assert [r["seq"] for r in frames] == list(range(500))  # the turn was played to its end
    unsent = [r for r in frames if not r["sent"]]
    assert unsent, "no frame was refused: did the server really go away mid-turn?"
    resumed = next(r for r in frames if r["seq"] > unsent[0]["seq"] and r["sent"])
    assert all(r["sent"] for r in frames if r["seq"] > resumed["seq"]), "frames refused again after the rejoin"
    assert marks["stop"] < unsent[0]["t_ms"] / 1000 and resumed["seq"] < 450
    rejoin_s = resumed["t_ms"] / 1000 - marks["up"]
    print(f"\nserver {'killed' if kill else 'stopped'} and back after {marks['up'] - marks['stop']:.2f} s: "
          f"frames sent again {rejoin_s:.2f} s after it was up (seq {unsent[0]['seq']}..{resumed['seq'] - 1} "
          f"refused meanwhile); worker: rejoins {summary['rejoins']}, recovered after {summary['recovered_after_s']} s")
    assert rejoin_s < 3.0


def test_restart_mid_turn_resumes_the_turn(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """LiveKitServer.restart() mid-turn (graceful stop, start again on the same port): the worker
    rejoins and the rest of the turn's frames flow again, seq continuing."""
    _restart_mid_turn(livekit_server, tmp_path, "restart", down_s=0.0, kill=False)


def test_long_outage_mid_turn_resumes_quickly(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """The server crashes and is back 5 s later: the SDK alone would come back seconds after the
    server did (its retries back off); the worker notices the server is back and rejoins."""
    _restart_mid_turn(livekit_server, tmp_path, "outage", down_s=5.0, kill=True)
