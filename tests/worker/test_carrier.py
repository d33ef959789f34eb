"""avatar_worker/transport/carrier.py: control messages and the data-packet carrier. No server, no
network."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from avatar_worker.modes.scripted import Injection, inject, plan_scripted_turn
from avatar_worker.transport.carrier import (
    CONTROL_TOPIC,
    DEFAULT_DATA_TOPIC,
    CarrierRequest,
    ControlError,
    DataCarrier,
    parse_control,
)
from avatar_worker.transport.messaging import MessageSender
from avatar_worker.transport.streamer import SendLog
from avatarplayer.wire.motion import decode_packet, unwrap_frame

from .helpers import FakeTransport, read_log


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestParseControl:
    def test_requests(self) -> None:
        assert parse_control(b'{"type":"carrier","carrier":"data","topic":"t.x"}') == CarrierRequest("data", "t.x")
        assert parse_control(b'{"type":"carrier","carrier":"data"}') == CarrierRequest("data", DEFAULT_DATA_TOPIC)
        assert parse_control(b'{"type":"carrier","carrier":"video"}') == CarrierRequest("video")
        assert parse_control('{"type":"carrier","carrier":"data","topic":"ü"}'.encode()) == CarrierRequest("data", "ü")

    def test_other_messages_are_not_ours(self) -> None:
        assert parse_control(b'{"type":"ping"}') is None
        assert parse_control(b"{}") is None

    @pytest.mark.parametrize("payload", [b"", b"\xff\xfe", b"not json", b"[1,2]", b'"carrier"', b"x" * 5000])
    def test_garbage_is_rejected_quietly(self, payload: bytes) -> None:
        with pytest.raises(ControlError) as err:
            parse_control(payload)
        assert not err.value.answerable

    @pytest.mark.parametrize("message", [
        {"type": "carrier", "carrier": "smoke"},
        {"type": "carrier"},
        {"type": "carrier", "carrier": "data", "topic": ""},
        {"type": "carrier", "carrier": "data", "topic": 5},
        {"type": "carrier", "carrier": "data", "topic": "x" * 200},
        {"type": "carrier", "carrier": "data", "topic": CONTROL_TOPIC},
        {"type": "carrier", "carrier": "data", "topic": "lk.audio_stream"},
    ])
    def test_bad_requests_are_answerable(self, message: dict) -> None:
        with pytest.raises(ControlError) as err:
            parse_control(json.dumps(message).encode())
        assert err.value.answerable


class TestDataCarrier:
    def make(self, tmp_path: Path | None = None, **kwargs: Any) -> tuple[DataCarrier, FakeTransport, FakeClock]:
        transport, clock = FakeTransport(others=["viewer", "other"]), FakeClock()
        log = SendLog(tmp_path / "sent.jsonl") if tmp_path else None
        carrier = DataCarrier(transport, messages=MessageSender(transport, send_log=log), clock=clock, **kwargs)
        return carrier, transport, clock

    def test_idle_until_asked(self) -> None:
        carrier, transport, _ = self.make()
        assert carrier.routes() == [] and not carrier.send_packet(b"p") and not transport.sent

    def test_request_ack_and_lossy_packets_to_the_requester_only(self, tmp_path: Path) -> None:
        carrier, transport, _ = self.make(tmp_path)
        answer = carrier.handle_control("viewer", b'{"type":"carrier","carrier":"data","topic":"m"}')
        assert answer == {"type": "carrier-ack", "carrier": "data", "topic": "m"}
        (payload, reliable, dest), = transport.on(CONTROL_TOPIC)
        assert json.loads(payload) == answer and reliable and dest == ("viewer",)
        assert carrier.send_packet(b"packet")
        assert transport.on("m") == [(b"packet", False, ("viewer",))]
        carrier.messages.send_log.close()
        (record,) = read_log(tmp_path / "sent.jsonl")
        assert record["kind"] == "data-message" and record["type"] == "carrier-ack" and record["sent"]
        assert record["topic"] == CONTROL_TOPIC and record["to"] == ["viewer"] and record["message"] == answer

    def test_cancel(self) -> None:
        carrier, transport, _ = self.make()
        carrier.handle_control("viewer", b'{"type":"carrier","carrier":"data"}')
        assert carrier.handle_control("viewer", b'{"type":"carrier","carrier":"video"}') == {
            "type": "carrier-ack", "carrier": "video"}
        assert not carrier.send_packet(b"p") and carrier.requesters == {}

    def test_topics_group_requesters(self) -> None:
        carrier, transport, _ = self.make()
        transport.others = ["a", "b", "c", "d"]
        for identity, topic in (("c", "t1"), ("a", "t1"), ("b", "t2")):
            carrier.choose(identity, CarrierRequest("data", topic))
        assert carrier.routes() == [("t1", ["a", "c"]), ("t2", ["b"])]
        carrier.send_packet(b"x")
        assert [(top, dest) for _, top, _, dest in transport.sent] == [("t1", ("a", "c")), ("t2", ("b",))]

    def test_everyone_topic(self) -> None:
        carrier, transport, _ = self.make(everyone_topic="all")
        assert carrier.routes() == [("all", ["other", "viewer"])]
        carrier.choose("viewer", CarrierRequest("video"))
        assert carrier.routes() == [("all", ["other"])]
        carrier.choose("other", CarrierRequest("data", "mine"))
        assert carrier.routes() == [("mine", ["other"])]
        transport.others = []
        assert carrier.routes() == [] and not carrier.send_packet(b"x")

    def test_packets_go_only_to_who_is_here(self) -> None:
        carrier, transport, _ = self.make()
        carrier.choose("viewer", CarrierRequest("data", "m"))
        transport.others = ["other"]
        assert carrier.routes() == []

    def test_leaving_forgets_unless_back_soon(self) -> None:
        carrier, transport, clock = self.make(rejoin_grace=20.0)
        carrier.choose("viewer", CarrierRequest("data", "m"))
        carrier.left("viewer")
        transport.others = ["other"]
        assert not carrier.send_packet(b"p")
        clock.now += 5  # a reconnection (e.g. the server restarted): the choice stands
        transport.others = ["other", "viewer"]
        carrier.returned("viewer")
        assert carrier.routes() == [("m", ["viewer"])]
        carrier.left("viewer")
        clock.now += 21  # gone for good: a later session with the same identity starts over
        carrier.returned("viewer")
        assert carrier.routes() == [] and carrier.requesters == {}

    def test_joined_room_counts_as_returned(self) -> None:
        carrier, transport, clock = self.make(rejoin_grace=1.0)
        carrier.choose("viewer", CarrierRequest("data", "m"))
        carrier.left("viewer")
        clock.now += 2

        class Room:
            remote_participants = {"viewer": object()}

        carrier.joined(Room())
        assert carrier.requesters == {}

    def test_bad_requests_get_an_error_garbage_gets_nothing(self) -> None:
        carrier, transport, _ = self.make()
        answer = carrier.handle_control("viewer", b'{"type":"carrier","carrier":"pigeon"}')
        assert answer is not None and answer["type"] == "carrier-error" and "pigeon" in answer["error"]
        assert carrier.handle_control("viewer", b"\x00garbage") is None
        assert carrier.handle_control("viewer", b'{"type":"hello"}') is None
        assert len(transport.on(CONTROL_TOPIC)) == 1 and carrier.requesters == {}

    def test_room_hook_wiring(self) -> None:
        carrier, transport, clock = self.make(rejoin_grace=0.0)

        class Room:
            def __init__(self) -> None:
                self.handlers: dict[str, Any] = {}

            def on(self, name: str):
                def register(fn):
                    self.handlers[name] = fn
                    return fn
                return register

        @dataclass
        class Part:
            identity: str

        @dataclass
        class Packet:
            data: bytes
            topic: str
            participant: Part | None

        room = Room()
        carrier.attach(room)
        room.handlers["data_received"](Packet(b'{"type":"carrier","carrier":"data"}', "other-topic", Part("viewer")))
        room.handlers["data_received"](Packet(b'{"type":"carrier","carrier":"data"}', CONTROL_TOPIC, None))
        assert carrier.requesters == {}
        room.handlers["data_received"](Packet(b'{"type":"carrier","carrier":"data"}', CONTROL_TOPIC, Part("viewer")))
        assert carrier.requesters == {"viewer": DEFAULT_DATA_TOPIC}
        room.handlers["participant_disconnected"](Part("viewer"))
        clock.now += 1
        room.handlers["participant_connected"](Part("viewer"))
        assert carrier.requesters == {}

    def test_everyone_topic_is_checked(self) -> None:
        with pytest.raises(ControlError):
            DataCarrier(FakeTransport(), everyone_topic="lk.nope")


def test_lossy_packets_survive_the_carrier_round_trip() -> None:
    """What a data-carrier viewer decodes equals what a video viewer unwraps, frame for frame."""
    rng = random.Random(4)
    turn = inject(plan_scripted_turn(0, 50), Injection(reorder=0.2, seed=4), rng)
    for e in (e for tick in turn.ticks for e in tick.emissions):
        from avatarplayer.wire.motion import wrap_frame

        _, video_packet = unwrap_frame(wrap_frame(e.packet))
        v, d = decode_packet(video_packet), decode_packet(e.data_bytes)
        assert (v.seq, v.message) == (d.seq, d.message)
