"""Avatar sessions dispatched by LiveKit (avatar_worker/dispatch.py) against a real server: the
speech, replay and agents modes run as jobs in the room of whoever asked; a session ends when its
room closes; a job that crashes mid-turn leaves the worker serving, and a new dispatch brings a
fresh avatar into the same room. Python ``livekit`` participants stand in for visitors; motion is
counted on the data carrier (``--data-carrier``). Fails, never skips, without a server.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from livekit import api, rtc

from avatar_worker.dispatch import REGISTERED
from avatar_worker.record import main as record_main
from avatarplayer.wire.datamsg import MOTION_TOPIC
from avatarplayer.wire.motion import decode_packet
from tools.devstack import LiveKitServer, end_process_group

from .test_worker_live import wait_for

ROOT = Path(__file__).resolve().parents[2]
AVATAR = "avatar-worker"


class DispatchWorker:
    """``python -m avatar_worker --dispatch NAME ...`` with its log in a file."""

    def __init__(self, server: LiveKitServer, workdir: Path, name: str, *args: str) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key,
                   LIVEKIT_API_SECRET=server.api_secret)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "avatar_worker", "--dispatch", name, *args],
                                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            assert self.process.poll() is None, f"the worker exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"{text!r} not logged within {timeout_s} s:\n{self.log()[-3000:]}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        end_process_group(self.process.pid)  # its job processes


class Visitor:
    """A participant whose token dispatches ``agent`` into ``room`` (like the demo's tokens)."""

    def __init__(self, server: LiveKitServer, room: str, agent: str | None) -> None:
        self.server, self.room_name, self.agent = server, room, agent
        self.room = rtc.Room()
        self.avatars: list[tuple[str, int, dict[str, str]]] = []  # (sid, kind, attributes) per arrival
        self.frames: list[tuple[str, int]] = []  # (avatar sid, seq) from the data carrier
        self.loud_audio = 0
        self.left: list[str] = []
        self._tasks: list[asyncio.Task] = []

        @self.room.on("participant_connected")
        def _joined(p: rtc.RemoteParticipant) -> None:
            if p.identity == AVATAR:
                self.avatars.append((p.sid, p.kind, dict(p.attributes)))

        @self.room.on("participant_disconnected")
        def _left(p: rtc.RemoteParticipant) -> None:
            if p.identity == AVATAR:
                self.left.append(p.sid)

        @self.room.on("data_received")
        def _data(packet: rtc.DataPacket) -> None:
            if packet.topic == MOTION_TOPIC and packet.participant is not None:
                message = decode_packet(packet.data)
                if message.seq is not None:
                    self.frames.append((packet.participant.sid, message.seq))

        @self.room.on("track_subscribed")
        def _track(track: rtc.Track, _pub, p: rtc.RemoteParticipant) -> None:
            if p.identity == AVATAR and track.kind == rtc.TrackKind.KIND_AUDIO:
                self._tasks.append(asyncio.ensure_future(self._listen(track)))

    async def _listen(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track):
            data = event.frame.data
            if max((abs(v) for v in data[::8]), default=0) > 500:
                self.loud_audio += 1

    async def join(self) -> None:
        token = self.server.token(f"visitor-{self.room_name}", self.room_name,
                                  dispatch=[self.agent] if self.agent else None)
        await self.room.connect(self.server.url, token)
        for p in self.room.remote_participants.values():  # an avatar that was there first
            if p.identity == AVATAR:
                self.avatars.append((p.sid, p.kind, dict(p.attributes)))

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.room.disconnect()


def test_speech_replay_and_agents_modes_run_as_dispatched_sessions_that_end_with_their_room(tmp_path: Path):
    rec = tmp_path / "rec"
    assert record_main(["--text", "A recorded greeting.", "--frames", "40", "--seed", "3", "--out", str(rec)]) == 0
    with LiveKitServer(tmp_path / "livekit") as server:
        workers = [
            DispatchWorker(server, tmp_path, "avatar-speech", "--mode", "speech", "--text", "Hello, visitor.",
                           "--repeat-every-s", "2", "--data-carrier", "--lead-in-ms", "300"),
            DispatchWorker(server, tmp_path, "avatar-replay", "--mode", "replay", "--replay-dir", str(rec),
                           "--repeat-every-s", "2", "--data-carrier", "--lead-in-ms", "300"),
            DispatchWorker(server, tmp_path, "avatar-agents", "--mode", "agents"),
        ]
        try:
            for worker in workers:
                worker.wait_for(REGISTERED, 60)
            asyncio.run(_modes(server, workers))
        finally:
            for worker in workers:
                worker.stop()
    for worker in workers:
        assert worker.process.returncode == 0, worker.log()[-3000:]
        assert "Traceback" not in worker.log(), worker.log()[-3000:]


async def _modes(server: LiveKitServer, workers: list[DispatchWorker]) -> None:
    speech, replay, agents = workers
    visitors = {name: Visitor(server, f"visit-{name}", f"avatar-{name}") for name in ("speech", "replay")}
    for visitor in visitors.values():
        await visitor.join()
    # agents mode: the agent asks for its avatar with the dispatch API, naming itself in the metadata
    async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lk:
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
            agent_name="avatar-agents", room="visit-agents", metadata='{"agent_identity": "agent-7"}'))
    agent_room = Visitor(server, "visit-agents", None)
    await agent_room.join()

    for name, visitor in visitors.items():
        await wait_for(lambda v=visitor: len(v.frames) >= 30 and v.loud_audio >= 10, 40,
                    f"{name}: the avatar's motion and voice")
        assert len(visitor.avatars) == 1 and visitor.avatars[0][1] == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    await wait_for(lambda: agent_room.avatars, 30, "agents: the avatar")
    assert agent_room.avatars[0][2].get("lk.publish_on_behalf") == "agent-7", agent_room.avatars
    assert f"a session in room 'visit-speech'" in speech.log() and "visit-speech" not in replay.log()

    # the visitors leave: their rooms close, and each session ends with its room
    for visitor in (*visitors.values(), agent_room):
        await visitor.leave()
    for worker, room in ((speech, "visit-speech"), (replay, "visit-replay"), (agents, "visit-agents")):
        deadline = time.monotonic() + 40
        while f"session in room '{room}' ended" not in worker.log():
            assert time.monotonic() < deadline, f"the session in {room} did not end:\n{worker.log()[-3000:]}"
            await asyncio.sleep(0.2)


def test_a_job_that_crashes_mid_turn_leaves_its_worker_serving_and_a_new_dispatch_brings_a_fresh_avatar(
        tmp_path: Path):
    with LiveKitServer(tmp_path / "livekit") as server:
        # every session: one 80-frame turn that dies after 30 frames without leaving the room
        worker = DispatchWorker(server, tmp_path, "avatar-crash", "--mode", "scripted", "--frames", "80",
                                "--leave-after", "30", "--leave-mode", "crash", "--data-carrier",
                                "--lead-in-ms", "300")
        try:
            worker.wait_for(REGISTERED, 60)
            asyncio.run(_crash(server, worker))
        finally:
            worker.stop()
    assert worker.process.returncode == 0, worker.log()[-3000:]


async def _crash(server: LiveKitServer, worker: DispatchWorker) -> None:
    visitor = Visitor(server, "visit-crash", "avatar-crash")
    await visitor.join()
    await wait_for(lambda: len(visitor.frames) >= 30, 40, "the first avatar's frames")
    first = visitor.avatars[0][0]
    await asyncio.sleep(2.0)
    assert len(visitor.frames) <= 31, "frames went on after the crash"
    assert worker.process.poll() is None, "the crash of a session took its worker down"
    # what the demo's token endpoint does for a visitor who reconnects: ask for a fresh avatar
    async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lk:
        await lk.room.remove_participant(api.RoomParticipantIdentity(room="visit-crash", identity=AVATAR))
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="avatar-crash",
                                                                              room="visit-crash"))
    await wait_for(lambda: any(sid != first for sid, _ in visitor.frames), 40, "the fresh avatar's frames")
    assert visitor.avatars[-1][0] != first
    await visitor.leave()
