"""Unit tests of the data carrier, agent messages, audio report, republishing and the publisher's
data pumps: no server, no network (their live counterparts: test_worker_features_live.py)."""

from __future__ import annotations

import array
import asyncio
import json
import math
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from avatarplayer.wire.motion import Flags, PacketError, decode_packet, unwrap_frame
from avatar_worker.agent_data import AgentMessages, agent_status, chunk_due, split_transcript, transcript_chunk
from avatar_worker.audio.report import AudioMeter, AudioReport
from avatar_worker.transport.carrier import (
    CONTROL_TOPIC,
    DEFAULT_DATA_TOPIC,
    CarrierRequest,
    ControlError,
    DataCarrier,
    parse_control,
)
from avatar_worker.cli import build_parser, config_from_args
from avatar_worker.config import LiveKitSettings, WorkerConfig
from avatar_worker.transport.messaging import MessageSender
from avatar_worker.transport.pacing import FrameClock
from avatar_worker.transport.republish import RepublishAfter
from avatar_worker.modes.scripted import Injection, inject, payload_for, plan_scripted_turn
from avatar_worker.transport.streamer import MotionStreamer, SendLog, TurnObserver
from avatar_worker.turns import IDLE_PACKET, TurnFrame, build_turn

from .test_avatar_worker import RecordingSink


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@dataclass
class FakeTransport:
    """Records what would be sent; ``others`` is who is in the room."""

    others: list[str] = field(default_factory=lambda: ["viewer"])
    sent: list[tuple[bytes, str, bool, tuple[str, ...]]] = field(default_factory=list)
    accept: bool = True

    def send_data(self, payload: bytes, *, topic: str, reliable: bool, destinations=()) -> bool:
        if self.accept:
            self.sent.append((payload, topic, reliable, tuple(destinations)))
        return self.accept

    def other_identities(self) -> list[str]:
        return list(self.others)

    def on(self, topic: str) -> list[tuple[bytes, bool, tuple[str, ...]]]:
        return [(payload, reliable, dest) for payload, top, reliable, dest in self.sent if top == topic]


def fast_streamer(sink: RecordingSink, **kwargs: Any) -> MotionStreamer:
    return MotionStreamer(sink, clock=FrameClock(0.004, late_threshold_s=0.5), **kwargs)


def play(streamer: MotionStreamer, *turns_at: Any, idle_after: float = 0.02) -> None:
    """Run the streamer, play turns (each built from next_seq by a callable), then stop."""

    async def go() -> None:
        task = asyncio.create_task(streamer.run())
        await asyncio.sleep(0.02)
        for make in turns_at:
            await streamer.play(make(streamer.next_seq))
        await asyncio.sleep(idle_after)
        streamer.stop()
        await task

    asyncio.run(go())


# -------------------------------------------------------------------------- data packets


class TestDataPackets:
    def test_frames_are_redundant_on_the_data_carrier_only(self) -> None:
        frames = [TurnFrame(payload_for(i)) for i in range(4)]
        turn = build_turn(frames, 0)
        emissions = [e for tick in turn.ticks for e in tick.emissions]
        for e in emissions:
            video, data = decode_packet(e.packet), decode_packet(e.data_bytes)
            if e.kind == "frame":
                assert Flags.REDUNDANT not in video.flags and Flags.REDUNDANT in data.flags
                assert data.flags & ~Flags.REDUNDANT == video.flags  # START / END carried over
                assert (data.seq, data.message) == (video.seq, video.message)
            else:
                assert e.data_bytes is e.packet
        last = decode_packet(emissions[-2].data_bytes)
        assert last.recovered() == [(1, frames[1].message), (2, frames[2].message)]

    def test_redundant_turns_share_the_bytes(self) -> None:
        turn = build_turn([TurnFrame(payload_for(i)) for i in range(3)], 0, redundant=True, compression="zlib")
        frames = [e for tick in turn.ticks for e in tick.emissions if e.kind == "frame"]
        assert all(e.data_packet is None and e.data_bytes is e.packet for e in frames)
        assert all(Flags.COMPRESSED in decode_packet(e.data_bytes).flags for e in frames)

    def test_compression_applies_to_the_data_packets(self) -> None:
        turn = build_turn([TurnFrame(payload_for(i)) for i in range(3)], 0, compression="gzip")
        frame = next(e for tick in turn.ticks for e in tick.emissions if e.kind == "frame")
        assert decode_packet(frame.data_bytes).flags == Flags.START | Flags.REDUNDANT | Flags.COMPRESSED

    def test_injection_moves_data_packets_with_their_frames(self) -> None:
        turn = inject(plan_scripted_turn(0, 300), Injection(loss=0.1, reorder=0.1, duplicate=0.1, bad=0.1, seed=2))
        for e in (e for tick in turn.ticks for e in tick.emissions):
            if e.kind in ("frame", "reordered", "duplicate"):
                packet = decode_packet(e.data_bytes)
                assert packet.seq == e.seq and Flags.REDUNDANT in packet.flags
            elif e.kind == "bad":
                assert e.data_bytes == e.packet
                with pytest.raises(PacketError):
                    decode_packet(e.data_bytes)


# ----------------------------------------------------------------------- the streamer


@dataclass
class RecordingDataPath:
    packets: list[bytes] = field(default_factory=list)
    accept: bool = True
    fail: bool = False

    def send_packet(self, packet: bytes) -> bool:
        if self.fail:
            raise RuntimeError("boom")
        if self.accept:
            self.packets.append(packet)
        return self.accept


class TestStreamerDataPath:
    def test_every_packet_goes_on_both_carriers(self, tmp_path: Path) -> None:
        sink, data = RecordingSink(), RecordingDataPath()
        log = SendLog(tmp_path / "sent.jsonl")
        streamer = fast_streamer(sink, send_log=log, data_path=data)
        turn = plan_scripted_turn(0, 40, injection=Injection(loss=0.15, duplicate=0.1, bad=0.1, seed=3))
        play(streamer, lambda seq: turn)
        log.close()
        records = read_log(tmp_path / "sent.jsonl")
        assert all(r["data"] == r["sent"] for r in records)  # both accept everything
        assert len(data.packets) == len(sink.video) == sum(r["data"] for r in records)
        assert streamer.stats.data_sent == len(data.packets)
        lost = {r["seq"] for r in records if r["kind"] == "frame" and not r["sent"]}
        assert lost
        decoded = []
        for packet in data.packets:
            try:
                decoded.append(decode_packet(packet))
            except PacketError:
                decoded.append(None)
        video = sink.packets()
        # the same packets in the same order; frames REDUNDANT on the data path only
        assert len(decoded) == len(video)
        for d, v in zip(decoded, video):
            assert (d is None) == (v is None)
            if d is not None:
                assert (d.seq, d.message) == (v.seq, v.message)
                assert Flags.REDUNDANT in d.flags if d.seq is not None else d.flags == v.flags
        main = [r["seq"] for r in records if r["kind"] == "frame" and r["data"]]
        assert not set(main) & lost
        assert IDLE_PACKET in data.packets

    def test_data_path_status_is_logged_per_packet(self, tmp_path: Path) -> None:
        sink, data = RecordingSink(), RecordingDataPath(accept=False)
        log = SendLog(tmp_path / "sent.jsonl")
        streamer = fast_streamer(sink, send_log=log, data_path=data)
        play(streamer)
        log.close()
        records = read_log(tmp_path / "sent.jsonl")
        assert records and all(r["sent"] and not r["data"] for r in records)
        assert streamer.stats.data_sent == 0

    def test_a_failing_data_path_does_not_stop_the_clock(self) -> None:
        sink, data = RecordingSink(), RecordingDataPath(fail=True)
        streamer = fast_streamer(sink, data_path=data)
        play(streamer, lambda seq: plan_scripted_turn(seq, 5))
        assert streamer.stats.frames_sent == 5 and streamer.stats.data_sent == 0

    def test_without_data_path_data_is_false(self, tmp_path: Path) -> None:
        log = SendLog(tmp_path / "sent.jsonl")
        play(fast_streamer(RecordingSink(), send_log=log))
        log.close()
        assert all(r["data"] is False for r in read_log(tmp_path / "sent.jsonl"))


@dataclass
class EventLog(TurnObserver):
    events: list[tuple] = field(default_factory=list)
    sink: RecordingSink | None = None

    def turn_started(self, turn, number) -> None:
        self.events.append(("start", number, turn.first_seq, len(self.sink.video) if self.sink else None))

    def frame_sent(self, turn, number, frames) -> None:
        self.events.append(("frame", number, frames))

    def turn_ended(self, turn, number, completed) -> None:
        self.events.append(("end", number, completed, len(self.sink.video) if self.sink else None))


class TestObservers:
    def test_turns_and_frames_in_order(self) -> None:
        sink = RecordingSink()
        observer = EventLog(sink=sink)
        streamer = fast_streamer(sink, observers=[observer])
        play(streamer, lambda seq: plan_scripted_turn(seq, 3), lambda seq: plan_scripted_turn(seq, 2))
        events = observer.events
        assert [e[:3] for e in events] == [
            ("start", 1, 0), ("frame", 1, 1), ("frame", 1, 2), ("frame", 1, 3), ("end", 1, True),
            ("start", 2, 3), ("frame", 2, 1), ("frame", 2, 2), ("end", 2, True)]
        # start: before the turn's TRANSITION went out; end: after its TRANSITION_END went out
        packets = sink.packets()
        start, end = events[0][3], events[4][3]
        assert packets[start].flags == Flags.TRANSITION and packets[end - 1].flags == Flags.TRANSITION_END

    def test_dropped_frames_count_and_stop_interrupts(self) -> None:
        sink = RecordingSink()
        observer = EventLog()
        streamer = fast_streamer(sink, observers=[observer])
        turn = plan_scripted_turn(0, 400, injection=Injection(loss=0.5, seed=1))

        async def go() -> None:
            task = asyncio.create_task(streamer.run())
            streamer.play(turn)
            await asyncio.sleep(0.1)
            streamer.stop()
            await task

        asyncio.run(go())
        frames = [e[2] for e in observer.events if e[0] == "frame"]
        assert frames == list(range(1, len(frames) + 1)) and len(frames) > 5
        assert observer.events[-1] == ("end", 1, False, None)

    def test_a_failing_observer_is_logged_not_fatal(self) -> None:
        class Broken(TurnObserver):
            def frame_sent(self, turn, number, frames) -> None:
                raise RuntimeError("observer bug")

        streamer = fast_streamer(RecordingSink(), observers=[Broken()])
        play(streamer, lambda seq: plan_scripted_turn(seq, 4))
        assert streamer.stats.turns_completed == 1 and streamer.stats.frames_sent == 4


# ---------------------------------------------------------------------------- carrier.py


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


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


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


class TestMessageSender:
    def test_refused_messages_are_logged_as_not_sent(self, tmp_path: Path) -> None:
        transport = FakeTransport(accept=False)
        log = SendLog(tmp_path / "sent.jsonl")
        sender = MessageSender(transport, send_log=log)
        assert not sender.send({"type": "x", "data": {"ü": 1}}, topic="t")
        log.close()
        (record,) = read_log(tmp_path / "sent.jsonl")
        assert record["sent"] is False and record["type"] == "x" and record["to"] == []
        assert sender.sent == 0

    def test_payload_is_compact_utf8_json(self) -> None:
        transport = FakeTransport()
        MessageSender(transport).send({"type": "t", "text": "héllo"}, topic="t", destinations=["a"])
        (payload, topic, reliable, dest), = transport.sent
        assert payload == '{"type":"t","text":"héllo"}'.encode() and reliable and dest == ("a",)


# ------------------------------------------------------------------------- agent_data.py


class TestTranscript:
    @pytest.mark.parametrize("text", ["", "one", "one two", "Hello! I am your avatar. I speak, I blink.",
                                      "  spaced   out  words ", "a b c d e f g h i j"])
    def test_split_joins_back(self, text: str) -> None:
        for parts in (1, 2, 3, 5):
            pieces = split_transcript(text, parts)
            assert "".join(pieces) == text and 1 <= len(pieces) <= parts
            assert all(pieces) or pieces == [text]

    def test_split_at_words(self) -> None:
        assert split_transcript("a b c d e f", 3) == ["a b ", "c d ", "e f"]
        assert split_transcript("a b", 3) == ["a ", "b"]
        with pytest.raises(ValueError):
            split_transcript("a", 0)

    def test_chunk_due(self) -> None:
        assert chunk_due(90, 3) == [1, 31, 61]
        assert chunk_due(1, 1) == [1]
        assert chunk_due(2, 3) == [1, 1, 2]


class TestAgentMessages:
    def run_turns(self, *turns, stop_after: float | None = None) -> list[dict]:
        transport = FakeTransport()
        streamer = fast_streamer(RecordingSink(), observers=[AgentMessages(MessageSender(transport))])
        if stop_after is None:
            play(streamer, *turns)
        else:
            async def go() -> None:
                task = asyncio.create_task(streamer.run())
                streamer.play(turns[0](0))
                await asyncio.sleep(stop_after)
                streamer.stop()
                await task

            asyncio.run(go())
        assert all(reliable and topic == "avatarplayer.agent" and dest == () for _, topic, reliable, dest in transport.sent)
        return [json.loads(payload) for payload, *_ in transport.sent]

    def test_scripted_turns(self) -> None:
        messages = self.run_turns(lambda seq: plan_scripted_turn(seq, 3), lambda seq: plan_scripted_turn(seq, 2))
        assert messages == [
            agent_status("speaking"), transcript_chunk("turn 1", 1, True), agent_status("listening"),
            agent_status("speaking"), transcript_chunk("turn 2", 2, True), agent_status("listening")]

    def test_spoken_text_in_chunks(self) -> None:
        text = "one two three four five six"
        frames = [TurnFrame(payload_for(i)) for i in range(30)]
        messages = self.run_turns(lambda seq: build_turn(frames, seq, text=text))
        chunks = [m["data"] for m in messages if m["type"] == "transcript_chunk"]
        assert [c["text"] for c in chunks] == ["one two ", "three four ", "five six"]
        assert [c["final"] for c in chunks] == [False, False, True] and {c["turn"] for c in chunks} == {1}
        assert messages[0] == agent_status("speaking") and messages[-1] == agent_status("listening")

    def test_chunks_follow_the_frames(self) -> None:
        transport = FakeTransport()
        agent = AgentMessages(MessageSender(transport))
        turn = build_turn([TurnFrame(payload_for(i)) for i in range(9)], 0, text="a b c")
        agent.turn_started(turn, 1)
        texts = lambda: [json.loads(p)["data"].get("text") for p, *_ in transport.sent]  # noqa: E731
        assert texts() == [None]
        agent.frame_sent(turn, 1, 1)
        assert texts() == [None, "a "]
        agent.frame_sent(turn, 1, 3)
        assert texts() == [None, "a "]
        agent.frame_sent(turn, 1, 4)
        agent.frame_sent(turn, 1, 7)
        assert texts() == [None, "a ", "b ", "c"]

    def test_interrupted_turn_closes_the_transcript(self) -> None:
        frames = [TurnFrame(payload_for(i)) for i in range(300)]
        messages = self.run_turns(lambda seq: build_turn(frames, seq, text="a b c d e f"), stop_after=0.1)
        chunks = [m["data"] for m in messages if m["type"] == "transcript_chunk"]
        assert chunks[0]["text"] == "a b " and chunks[-1] == {"role": "agent", "text": "", "turn": 1, "final": True}
        assert messages[-1] == agent_status("listening")


# --------------------------------------------------------------------------- republish.py


class TestRepublishAfter:
    def test_once_after_n_frames_of_the_first_turn(self, tmp_path: Path) -> None:
        calls: list[int] = []
        sink = RecordingSink()

        async def republish() -> tuple[str, str]:
            calls.append(len(sink.video))
            await asyncio.sleep(0.01)
            return "TR_old", "TR_new"

        log = SendLog(tmp_path / "sent.jsonl")
        observer = RepublishAfter(republish, 5, send_log=log)
        streamer = fast_streamer(sink, send_log=log, observers=[observer])
        play(streamer, lambda seq: plan_scripted_turn(seq, 20), lambda seq: plan_scripted_turn(seq, 20))
        log.close()
        assert len(calls) == 1
        records = read_log(tmp_path / "sent.jsonl")
        start, done = [r for r in records if r["kind"] == "republish"]
        assert start["event"] == "start" and start["seq"] == 4
        assert done["event"] == "done" and done["ok"] and done["old_sid"] == "TR_old" and done["new_sid"] == "TR_new"
        assert 5 < done["seq"] <= 20
        # it went right after the 5th frame: before the 6th was captured
        order = [r["kind"] if r["kind"] == "republish" else r.get("seq") for r in records]
        assert order.index("republish") == order.index(4) + 1

    def test_failure_and_short_turns(self, tmp_path: Path) -> None:
        async def fails() -> None:
            return None

        log = SendLog(tmp_path / "sent.jsonl")
        observer = RepublishAfter(fails, 3, send_log=log)
        play(fast_streamer(RecordingSink(), observers=[observer]), lambda seq: plan_scripted_turn(seq, 5))
        log.close()
        done = [r for r in read_log(tmp_path / "sent.jsonl") if r.get("event") == "done"]
        assert done and done[0]["ok"] is False and "new_sid" not in done[0]

        never = RepublishAfter(fails, 10)
        play(fast_streamer(RecordingSink(), observers=[never]), lambda seq: plan_scripted_turn(seq, 5))
        assert never.task is None
        with pytest.raises(ValueError):
            RepublishAfter(fails, 0)


# ------------------------------------------------------------------------- audio_report.py


def sine(amplitude: float, n: int, hz: float = 440.0, rate: int = 48000) -> bytes:
    return array.array("h", (int(amplitude * math.sin(2 * math.pi * hz * i / rate)) for i in range(n))).tobytes()


class TestAudioMeter:
    def test_whole_seconds_of_a_sine(self) -> None:
        meter = AudioMeter()
        pcm = sine(10000, 48000 * 2 + 100)
        out = []
        for i in range(0, len(pcm), 960):  # 10 ms frames
            out += meter.feed(pcm[i:i + 960])
        assert [s.second for s in out] == [0, 1] and all(s.samples == 48000 for s in out)
        assert all(s.rms == pytest.approx(10000 / math.sqrt(2), rel=0.01) for s in out)
        assert all(9990 <= s.peak <= 10000 for s in out)

    def test_one_big_feed_and_memoryviews(self) -> None:
        meter = AudioMeter(rate=100)
        samples = array.array("h", [3] * 250)
        out = meter.feed(memoryview(samples))  # an int16 memoryview, as the SDK hands out
        assert [(s.second, s.samples, s.rms, s.peak) for s in out] == [(0, 100, 3.0, 3), (1, 100, 3.0, 3)]
        assert meter.feed(b"\x00") == []  # an odd byte is ignored

    def test_silence_and_full_scale(self) -> None:
        meter = AudioMeter(rate=4)
        assert meter.feed(bytes(8))[0].rms == 0.0
        (loud,) = meter.feed(array.array("h", [-32768, -32768, 32767, -32768]).tobytes())
        assert loud.peak == 32767 and loud.rms == 32767
        with pytest.raises(ValueError):
            AudioMeter(rate=0)


class TestAudioReport:
    def test_records_per_track(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from livekit import rtc

        class FakeFrame:
            def __init__(self, data: bytes) -> None:
                self.data = memoryview(array.array("h", array.array("h", data)))

        class FakeStream:
            def __init__(self, track: Any, sample_rate: int, num_channels: int) -> None:
                assert (sample_rate, num_channels) == (48000, 1)
                self.frames = [sine(8000, 480, hz=400) for _ in range(track.frames)]

            def __aiter__(self):
                return self

            async def __anext__(self):
                if not self.frames:
                    await asyncio.sleep(3600)  # a live track: more is always coming
                await asyncio.sleep(0)
                return type("Event", (), {"frame": FakeFrame(self.frames.pop(0))})()

            async def aclose(self) -> None:
                pass

        monkeypatch.setattr(rtc, "AudioStream", FakeStream)

        class Room:
            def __init__(self) -> None:
                self.handlers: dict[str, Any] = {}
                self.remote_participants: dict[str, Any] = {}

            def on(self, name: str):
                def register(fn):
                    self.handlers[name] = fn
                    return fn
                return register

        @dataclass
        class Track:
            sid: str
            frames: int
            kind: int = rtc.TrackKind.KIND_AUDIO

        @dataclass
        class Pub:
            sid: str
            name: str
            kind: int = rtc.TrackKind.KIND_AUDIO
            subscribed: bool = False

            def set_subscribed(self, value: bool) -> None:
                self.subscribed = value

        @dataclass
        class Part:
            identity: str

        path = tmp_path / "heard.jsonl"
        report = AudioReport(path)

        async def go() -> None:
            room = Room()
            report.attach(room)
            mic, video = Pub("TR_a", "mic"), Pub("TR_v", "cam", kind=rtc.TrackKind.KIND_VIDEO)
            room.handlers["track_published"](mic, Part("user"))
            room.handlers["track_published"](video, Part("user"))
            assert mic.subscribed and not video.subscribed
            room.handlers["track_subscribed"](Track("TR_a", 250), mic, Part("user"))  # 2.5 s
            room.handlers["track_subscribed"](Track("TR_v", 10, kind=rtc.TrackKind.KIND_VIDEO), video, Part("user"))
            for _ in range(400):
                await asyncio.sleep(0)
            # what is on disk is flushed already
            assert sum(1 for line in path.read_text().splitlines() if '"kind":"audio"' in line) == 2
            room.handlers["track_unsubscribed"](None, mic, Part("user"))
            room.handlers["track_unsubscribed"](None, mic, Part("user"))  # once is enough
            await report.close()

        asyncio.run(go())
        records = read_log(path)
        assert [(r["kind"], r.get("event"), r.get("second")) for r in records] == [
            ("audio-track", "subscribed", None), ("audio", None, 0), ("audio", None, 1),
            ("audio-track", "unsubscribed", None)]
        assert all(r["identity"] == "user" and r["track"] == "mic" and r["sid"] == "TR_a" and "t_ms" in r
                   for r in records)
        assert all(r["samples"] == 48000 and 5600 < r["rms"] < 5700 and r["peak"] <= 8000
                   for r in records if r["kind"] == "audio")

    def test_joined_subscribes_to_audio_already_there(self, tmp_path: Path) -> None:
        from livekit import rtc

        @dataclass
        class Pub:
            kind: int
            subscribed: bool = False

            def set_subscribed(self, value: bool) -> None:
                self.subscribed = value

        @dataclass
        class Part:
            track_publications: dict[str, Pub]

        audio, video = Pub(rtc.TrackKind.KIND_AUDIO), Pub(rtc.TrackKind.KIND_VIDEO)
        room = type("Room", (), {"remote_participants": {"u": Part({"a": audio, "v": video})}})()
        report = AudioReport(tmp_path / "heard.jsonl")
        report.joined(room)
        asyncio.run(report.close())
        assert audio.subscribed and not video.subscribed


# ----------------------------------------------------------------------- the publisher


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


# ---------------------------------------------------------------------------------- cli


class TestCliOptions:
    def args(self, *extra: str) -> WorkerConfig:
        base = ["--room", "r", "--url", "ws://127.0.0.1:1", "--api-key", "k"]
        with pytest.MonkeyPatch.context() as env:
            env.setenv("LIVEKIT_API_SECRET", "s" * 32)  # never on a command line
            return config_from_args(build_parser().parse_args([*base, *extra]))

    def test_defaults(self) -> None:
        config = self.args()
        assert not config.data_carrier and config.data_topic == DEFAULT_DATA_TOPIC
        assert config.audio_report is None and not config.agent_data
        assert config.republish_after is None and config.republish_gap_ms == 300

    def test_new_options(self) -> None:
        config = self.args("--data-carrier", "--data-topic", "my.topic", "--audio-report", "heard.jsonl",
                           "--agent-data", "--republish-after", "40", "--republish-gap-ms", "0")
        assert config.data_carrier and config.data_topic == "my.topic"
        assert config.audio_report == Path("heard.jsonl") and config.agent_data
        assert config.republish_after == 40 and config.republish_gap_ms == 0

    @pytest.mark.parametrize("extra", [["--republish-after", "0"], ["--republish-gap-ms", "-1"]])
    def test_bad_values_exit_2(self, extra: list[str]) -> None:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--room", "r", *extra])

    def test_reserved_data_topic(self) -> None:
        with pytest.raises(ValueError):
            self.args("--data-topic", CONTROL_TOPIC)
        settings = LiveKitSettings("ws://x", "k", "s", "r")
        with pytest.raises(ValueError):
            WorkerConfig(settings, republish_after=0)


def test_lossy_packets_survive_the_carrier_round_trip() -> None:
    """What a data-carrier viewer decodes equals what a video viewer unwraps, frame for frame."""
    rng = random.Random(4)
    turn = inject(plan_scripted_turn(0, 50), Injection(reorder=0.2, seed=4), rng)
    for e in (e for tick in turn.ticks for e in tick.emissions):
        from avatarplayer.wire.motion import wrap_frame

        _, video_packet = unwrap_frame(wrap_frame(e.packet))
        v, d = decode_packet(video_packet), decode_packet(e.data_bytes)
        assert (v.seq, v.message) == (d.seq, d.message)


def test_an_aborted_streamer_tells_no_one() -> None:
    """--leave-after: the truncated turn ends the stream without a word to the observers."""
    observer = EventLog()
    streamer = fast_streamer(RecordingSink(), observers=[observer])

    async def go() -> None:
        task = asyncio.create_task(streamer.run())
        await streamer.play(plan_scripted_turn(0, 20).truncated(5), abort_after=True)
        await asyncio.wait_for(task, 1)

    asyncio.run(go())
    assert [e[0] for e in observer.events] == ["start"] + ["frame"] * 5


# ------------------------------------------------------------------------------ exit guard

EXIT_GUARD_SCRIPT = """
import sys, threading, time
from avatar_worker.cli import ExitGuard

guard = ExitGuard(grace_s=float(sys.argv[1]))
if sys.argv[2] == "summary":
    guard.summary = {"event": "summary", "outcome": "done"}
threading.Thread(target=time.sleep, args=(60,), name="stuck-native-thread").start()  # never joined in time
guard.arm()
guard.arm()  # arming twice is harmless
"""


@pytest.mark.parametrize("with_summary", [True, False], ids=["summary-known", "no-summary"])
def test_exit_guard_ends_a_process_that_shutdown_cannot_end(with_summary):
    """A non-daemon thread that never finishes would keep the interpreter alive for a minute: the
    armed guard ends the process after its grace, says what was stuck, and still prints the summary."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", EXIT_GUARD_SCRIPT, "1", "summary" if with_summary else "none"],
                          capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parents[2])
    took = time.monotonic() - started
    assert took < 20, f"the process lived {took:.1f} s"
    assert "shutdown did not finish within 1 s" in proc.stderr, proc.stderr
    assert proc.stderr.count("Thread 0x") >= 2, proc.stderr  # every thread's stack: the stuck one too
    if with_summary:
        assert proc.returncode == 0, proc.stderr
        assert [json.loads(line) for line in proc.stdout.splitlines()] == [{"event": "summary", "outcome": "done"}]
    else:
        assert proc.returncode == 3 and proc.stdout == "", proc.stderr


def test_bounded_goes_on_without_a_step_that_ignores_cancellation(caplog):
    """A step that swallows its cancel (as a native-SDK task may) would hang ``asyncio.wait_for``
    for ever; ``bounded`` gives up after its time, says where the step was stuck, and returns."""
    from avatar_worker.app import bounded

    async def stubborn_inner() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # ignores every cancel

    async def stubborn() -> None:
        await stubborn_inner()

    async def quick() -> int:
        return 7

    async def main() -> tuple[bool, bool, float]:
        started = time.monotonic()
        stuck = await bounded(stubborn(), 0.3, "the stubborn step")
        took = time.monotonic() - started
        ok = await bounded(quick(), 1.0, "the quick step")
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.get_coro().close()  # let the test's loop end (the worker leaves such a task to the exit guard)
        return stuck, ok, took

    with caplog.at_level("ERROR", logger="avatar_worker.app"):
        stuck, ok, took = asyncio.run(main())
    assert (stuck, ok) == (False, True) and took < 2.0
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert "the stubborn step did not finish within 0 s" in message
    assert "stubborn (" in message and "stubborn_inner (" in message  # the chain of awaits


def test_the_bounded_shutdown_fits_inside_the_exit_guard():
    """Every bounded step running out of time still leaves the worker time to print its summary
    before the guard ends the process."""
    from avatar_worker.app import CLOSE_LIMIT_S, STREAMER_STOP_S
    from avatar_worker.cli import SHUTDOWN_GRACE_S

    assert STREAMER_STOP_S + 2 * CLOSE_LIMIT_S + 2.0 <= SHUTDOWN_GRACE_S
