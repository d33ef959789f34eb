"""avatar_worker/transport/publisher.py (its data queue, transport/dataqueue.py) without a server. No
server, no network."""

from __future__ import annotations

import asyncio

import pytest

from avatar_worker.config import LiveKitSettings
from avatar_worker.transport.publisher import Publisher


class TestPublisherData:
    def make(self):
        from avatar_worker.transport.publisher import Publisher

        calls: list[tuple] = []

        class LocalParticipant:
            async def publish_data(self, payload, *, reliable, topic, destination_identities):
                await asyncio.sleep(0.001)
                if payload == b"fail":
                    raise RuntimeError("nope")
                calls.append((payload, reliable, topic, destination_identities))

        class Room:
            remote_participants = {"viewer": object()}
            local_participant = LocalParticipant()

        publisher = Publisher(LiveKitSettings("ws://127.0.0.1:1", "k", "s", "r"))
        publisher.room = Room()  # type: ignore[assignment]
        publisher._connected = True
        return publisher, calls

    def test_queued_in_order_and_flushed(self) -> None:
        publisher, calls = self.make()

        async def go() -> None:
            publisher._queues = {True: asyncio.Queue(10), False: asyncio.Queue(2)}
            publisher._pumps = [asyncio.create_task(publisher._pump(q)) for q in publisher._queues.values()]
            for i in range(5):
                assert publisher.send_data(b"r%d" % i, topic="t", reliable=True, destinations=["viewer"])
            assert publisher.send_data(b"fail", topic="t", reliable=True)
            assert publisher.send_data(b"l0", topic="m", reliable=False)
            assert publisher.send_data(b"l1", topic="m", reliable=False)
            assert not publisher.send_data(b"l2", topic="m", reliable=False)  # queue full: dropped
            assert await publisher.flush_data(2.0)
            await asyncio.sleep(0.05)
            await publisher._stop_tasks()

        asyncio.run(go())
        reliable = [c[0] for c in calls if c[1]]
        assert reliable == [b"r0", b"r1", b"r2", b"r3", b"r4"]
        assert calls[0][2:] == ("t", ["viewer"])
        assert [c[0] for c in calls if not c[1]] == [b"l0", b"l1"]
        assert publisher.data_dropped == 2  # the full queue and the failed send

    def test_not_sent_while_disconnected_or_alone(self) -> None:
        publisher, _ = self.make()

        async def go() -> None:
            publisher._queues = {True: asyncio.Queue(10), False: asyncio.Queue(10)}
            type(publisher.room).remote_participants = {}
            assert not publisher.send_data(b"x", topic="t", reliable=False)
            assert publisher.data_dropped == 0  # nobody there is not a drop
            publisher._connected = False
            assert not publisher.send_data(b"x", topic="t", reliable=True, destinations=["viewer"])
            assert publisher.data_dropped == 1

        asyncio.run(go())

    def test_server_address(self) -> None:
        from avatar_worker.transport.publisher import server_address

        assert server_address("ws://127.0.0.1:7880") == ("127.0.0.1", 7880)
        assert server_address("wss://lk.example.com") == ("lk.example.com", 443)
        assert server_address("http://host") == ("host", 80)
        with pytest.raises(ValueError):
            server_address("nonsense")
