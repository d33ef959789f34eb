"""Two LiveKit nodes on one machine sharing a Redis (tools/devstack.py's ``LiveKitCluster``).

A room lives on one node; a participant who connects through the other node has its signalling
relayed through Redis and its media sent straight to the hosting node. Each test pins the room to
a node (``CreateRoomRequest.node_id``) so both paths are taken on every run, whatever node the
selector would have picked. The last test runs two standalone servers (no Redis) through the same
checks and shows they do not share rooms: what the cluster tests measure is the sharing.

Failures, never skips, when ``redis-server`` or ``livekit-server`` is missing or does not start
(``python3 tools/bootstrap.py browser`` installs both).
"""

from __future__ import annotations

import array
import asyncio
import json
import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import api, rtc

from tools.devstack import LiveKitCluster, LiveKitServer

from .test_worker_live import wait_for

SAMPLE_RATE = 48000
FRAME_SAMPLES = 480  # 10 ms


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LiveKitCluster]:
    with LiveKitCluster(tmp_path / "cluster", nodes=2) as cluster:
        yield cluster


def node_id(server: LiveKitServer) -> str:
    """The node ID the (last) start of ``server`` drew, from its log."""
    assert server.log_path is not None
    ids = [json.loads(line.split("\t")[-1])["nodeID"] for line in server.log_path.read_text().splitlines()
           if "starting LiveKit server" in line]
    assert ids, server.log_tail()
    return ids[-1]


def sine_frames(hz: float = 440.0, amplitude: int = 8000) -> list[rtc.AudioFrame]:
    """One second of a sine in 10 ms frames, phase-continuous when repeated."""
    frames = []
    for n in range(SAMPLE_RATE // FRAME_SAMPLES):
        start = n * FRAME_SAMPLES
        samples = array.array("h", (int(amplitude * math.sin(2 * math.pi * hz * (start + i) / SAMPLE_RATE))
                                    for i in range(FRAME_SAMPLES)))
        frames.append(rtc.AudioFrame(samples.tobytes(), SAMPLE_RATE, 1, FRAME_SAMPLES))
    return frames


class Listener:
    """A participant that subscribes to everything and counts loud audio frames per publisher."""

    def __init__(self) -> None:
        self.room = rtc.Room()
        self.loud: dict[str, int] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.room.on("track_subscribed", self._subscribed)

    def _subscribed(self, track: rtc.Track, pub: rtc.RemoteTrackPublication, part: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self.tasks.append(asyncio.create_task(self._read(track, part.identity)))

    async def _read(self, track: rtc.Track, identity: str) -> None:
        async for event in rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1):
            samples = array.array("h", bytes(event.frame.data))
            rms = math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0
            if rms > 3000:  # the sine's RMS is 8000 / sqrt(2) = 5657; silence and comfort noise are far below
                self.loud[identity] = self.loud.get(identity, 0) + 1

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.room.disconnect()


async def speak(url: str, token: str, stop: asyncio.Event) -> tuple[rtc.Room, asyncio.Task[None]]:
    """Join through ``url`` and publish a 440 Hz sine as a microphone until ``stop`` is set: the
    room and the task feeding the source."""
    room = rtc.Room()
    await room.connect(url, token)
    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)  # capture_frame paces us to real time
    track = rtc.LocalAudioTrack.create_audio_track("sine", source)
    await room.local_participant.publish_track(track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    frames = sine_frames()

    async def feed() -> None:
        n = 0
        while not stop.is_set():
            await source.capture_frame(frames[n % len(frames)])
            n += 1
        await source.aclose()

    return room, asyncio.create_task(feed())


async def participants_via(server: LiveKitServer, room: str) -> set[str]:
    async with api.LiveKitAPI(url=server.http_url, api_key=server.api_key, api_secret=server.api_secret) as lk:
        res = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
    return {p.identity for p in res.participants}


async def rooms_via(server: LiveKitServer) -> set[str]:
    async with api.LiveKitAPI(url=server.http_url, api_key=server.api_key, api_secret=server.api_secret) as lk:
        res = await lk.room.list_rooms(api.ListRoomsRequest())
    return {r.name for r in res.rooms}


async def create_room_via(server: LiveKitServer, name: str, on_node: str = "") -> api.Room:
    async with api.LiveKitAPI(url=server.http_url, api_key=server.api_key, api_secret=server.api_secret) as lk:
        return await lk.room.create_room(api.CreateRoomRequest(name=name, node_id=on_node))


# ----------------------------------------------------------------------------------- tests


def test_both_nodes_register_in_redis(cluster: LiveKitCluster) -> None:
    """Two node IDs in Redis' node list; ports apart; one secret; everything on loopback only."""
    ids = {node_id(node) for node in cluster.nodes}
    assert len(ids) == 2, "each node draws its own node ID"
    assert {key.decode() for key in cluster.redis.command("HKEYS", "nodes")} == ids  # type: ignore[union-attr]
    assert cluster.urls == [node.url for node in cluster.nodes] and cluster.url == cluster.urls[0]
    assert cluster.running and all(path.is_file() for path in cluster.log_paths)
    assert len({node.port for node in cluster.nodes} | {node.udp_port for node in cluster.nodes}) == 4
    assert all(node.api_secret == cluster.api_secret for node in cluster.nodes)
    ss = shutil.which("ss")
    assert ss, "ss (iproute2) is needed to list listening sockets"
    listening = subprocess.run([ss, "-lntupH"], capture_output=True, text=True, check=True).stdout.splitlines()
    for proc in [cluster.redis._proc, *(node._proc for node in cluster.nodes)]:
        assert proc is not None
        local = [line.split()[4] for line in listening if f"pid={proc.pid}," in line]
        assert local and all(addr.startswith("127.0.0.1:") for addr in local), (proc.args, local)
    assert f"127.0.0.1:{cluster.redis.port}" in [line.split()[4] for line in listening]
    for path in [cluster.redis.workdir / "redis.conf", *(node.workdir / "livekit.yaml" for node in cluster.nodes)]:
        assert path.stat().st_mode & 0o777 == 0o600, path  # type: ignore[operator]


@pytest.mark.parametrize("host", [0, 1], ids=["room-on-node0", "room-on-node1"])
def test_participants_on_different_nodes_share_a_room(cluster: LiveKitCluster, host: int) -> None:
    """A publishes a sine through node 0, B listens through node 1; the room lives on node ``host``,
    so one of them always signals through the node that does not host it."""
    room_name = f"shared-{host}"
    node0, node1 = cluster.nodes
    hosting = node_id(cluster.nodes[host])

    async def scenario() -> tuple[set[str], set[str], dict[str, int], set[str]]:
        room = await create_room_via(node1, room_name, on_node=hosting)
        assert room.name == room_name
        stop = asyncio.Event()
        listener = Listener()
        speaker, feeder = await speak(node0.url, cluster.token("alice", room_name), stop)
        try:
            await listener.room.connect(node1.url, cluster.token("bob", room_name))
            await wait_for(lambda: "alice" in {p.identity for p in listener.room.remote_participants.values()},
                           10, "B to see A")
            await wait_for(lambda: listener.loud.get("alice", 0) >= 50, 15, "half a second of A's sine at B")
            await wait_for(lambda: "bob" in {p.identity for p in speaker.remote_participants.values()},
                           10, "A to see B")
            seen_by_a = {p.identity for p in speaker.remote_participants.values()}
            via0, via1 = await participants_via(node0, room_name), await participants_via(node1, room_name)
            return via0, via1, dict(listener.loud), seen_by_a
        finally:
            stop.set()
            await asyncio.wait_for(feeder, 5)
            await listener.close()
            await speaker.disconnect()

    via0, via1, loud, seen_by_a = asyncio.run(asyncio.wait_for(scenario(), 40))
    assert cluster.redis.command("HGET", "room_node_map", room_name) == hosting.encode(), "the room moved"
    assert seen_by_a == {"bob"}
    assert loud["alice"] >= 50
    assert via0 == via1 == {"alice", "bob"}, "both nodes list both participants"
    for node in cluster.nodes:  # every node stayed up and clean
        assert node.running, node.log_tail()
        assert "\tERROR\t" not in node.log_path.read_text(), node.log_tail()  # type: ignore[union-attr]


def test_a_room_created_through_one_node_is_listed_through_the_other(cluster: LiveKitCluster) -> None:
    node0, node1 = cluster.nodes

    async def scenario() -> tuple[set[str], set[str]]:
        await create_room_via(node1, "made-on-node1")
        await create_room_via(node0, "made-on-node0")
        return await rooms_via(node0), await rooms_via(node1)

    listed0, listed1 = asyncio.run(scenario())
    assert listed0 == listed1 == {"made-on-node0", "made-on-node1"}


def test_a_restarted_node_rejoins_the_cluster(cluster: LiveKitCluster) -> None:
    """A clean restart: the node leaves Redis' node list and comes back under a new ID, same port."""
    before, port = node_id(cluster.nodes[1]), cluster.nodes[1].port
    cluster.restart_node(1)
    assert cluster.running and cluster.nodes[1].port == port
    after = node_id(cluster.nodes[1])
    assert after != before
    assert {key.decode() for key in cluster.redis.command("HKEYS", "nodes")} == {  # type: ignore[union-attr]
        node_id(cluster.nodes[0]), after}

    async def scenario() -> set[str]:
        await create_room_via(cluster.nodes[1], "after-restart", on_node=after)
        return await rooms_via(cluster.nodes[0])

    assert "after-restart" in asyncio.run(scenario())


def test_the_cluster_recovers_from_a_crashed_node(cluster: LiveKitCluster) -> None:
    """SIGKILL: the node cannot unregister, and livekit-server keeps counting it as alive until its
    last stats (written every 2 s) are 5 s old; a room it is picked for meanwhile fails. After that,
    new rooms go to live nodes only and a room the dead node hosted moves on the next join."""
    node0, node1 = cluster.nodes
    dead = node_id(node1)
    asyncio.run(create_room_via(node0, "survivor", on_node=dead))
    killed_at = time.monotonic()
    cluster.restart_node(1, kill=True)
    alive = {node_id(node0), node_id(node1)}
    registered = {key.decode() for key in cluster.redis.command("HKEYS", "nodes")}  # type: ignore[union-attr]
    assert registered == alive | {dead}, "a killed node stays in Redis' node list"
    time.sleep(max(0.0, killed_at + 6.0 - time.monotonic()))

    async def scenario() -> set[str]:
        for n in range(6):
            await create_room_via(node0, f"after-crash-{n}")
        room = rtc.Room()
        await room.connect(node1.url, cluster.token("alice", "survivor"))
        try:
            return await participants_via(node0, "survivor")
        finally:
            await room.disconnect()

    assert asyncio.run(asyncio.wait_for(scenario(), 20)) == {"alice"}
    hosts = [cluster.redis.command("HGET", "room_node_map", f"after-crash-{n}") for n in range(6)]
    assert {host.decode() for host in hosts} <= alive, hosts  # type: ignore[union-attr]
    assert cluster.redis.command("HGET", "room_node_map", "survivor").decode() in alive  # type: ignore[union-attr]


def test_standalone_servers_do_not_share_rooms(tmp_path: Path) -> None:
    """The negative: the same checks against two servers without Redis (same key and secret) fail,
    so the tests above measure the sharing, not something each server does alone."""
    with LiveKitServer(tmp_path / "a") as a, LiveKitServer(tmp_path / "b", api_secret=a.api_secret) as b:
        async def scenario() -> tuple[set[str], set[str], set[str], set[str], set[str]]:
            await create_room_via(b, "made-on-b")
            stop = asyncio.Event()
            speaker, feeder = await speak(a.url, a.token("alice", "same-name"), stop)
            listener = Listener()
            try:
                await listener.room.connect(b.url, b.token("bob", "same-name"))
                await asyncio.sleep(1.0)  # long enough for A to show up, were the room shared
                seen_by_b = {p.identity for p in listener.room.remote_participants.values()}
                return (await rooms_via(a), await rooms_via(b), await participants_via(a, "same-name"),
                        await participants_via(b, "same-name"), seen_by_b)
            finally:
                stop.set()
                await asyncio.wait_for(feeder, 5)
                await listener.close()
                await speaker.disconnect()

        rooms_a, rooms_b, on_a, on_b, seen_by_b = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert rooms_a == {"same-name"} and rooms_b == {"made-on-b", "same-name"}
    assert on_a == {"alice"} and on_b == {"bob"}
    assert seen_by_b == set()
