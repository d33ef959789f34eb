"""avatar_worker/transport/streamer.py: the real-time loop on a fast clock, its data path and turn
observers. No server, no network."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from avatar_worker.audio import pcm as audio
from avatar_worker.modes.scripted import Injection, payload_for, plan_scripted_turn
from avatar_worker.transport.streamer import MotionStreamer, SendLog
from avatar_worker.transport.streamer import TurnObserver
from avatar_worker.turns import IDLE_PACKET, TurnFrame, build_turn
from avatarplayer.wire.motion import Flags, PacketError, decode_packet

from .helpers import RecordingSink, fast_streamer, fast_streamer, play, read_log


def run_idle(streamer: MotionStreamer, seconds: float = 0.03) -> None:
    """Run ``streamer`` with nothing to play (it sends IDLE heartbeats) for ``seconds``, then stop it."""

    async def go() -> None:
        task = asyncio.create_task(streamer.run())
        await asyncio.sleep(seconds)
        streamer.stop()
        await task

    asyncio.run(go())


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


class TestStreamer:
    def test_heartbeats_turns_and_seq_across_turns(self, tmp_path: Path) -> None:
        sink = RecordingSink()
        log = SendLog(tmp_path / "sent.jsonl")
        streamer = fast_streamer(sink, send_log=log)

        async def go() -> None:
            task = asyncio.create_task(streamer.run())
            await asyncio.sleep(0.03)
            r1 = await streamer.play(build_turn([TurnFrame(payload_for(i), audio.tone()) for i in range(5)], 0))
            r2 = await streamer.play(build_turn([TurnFrame(payload_for(5 + i)) for i in range(3)],
                                                streamer.next_seq))
            assert r1.completed and r2.completed and r2.first_seq == 5
            await asyncio.sleep(0.02)
            streamer.stop()
            await task

        asyncio.run(go())
        log.close()
        packets = sink.packets()
        flags = [p.flags for p in packets]
        assert flags[0] == Flags.IDLE
        seqs = [p.seq for p in packets if p.seq is not None]
        assert seqs == list(range(8))
        assert flags.count(Flags.TRANSITION) == 2 and flags.count(Flags.TRANSITION_END) == 2
        assert flags[-1] == Flags.IDLE
        # one audio capture per tick, the tone only on the first turn's frames
        assert len(sink.audio) == len(sink.video)
        assert sum(1 for a in sink.audio if a == audio.tone()) == 5
        # capture timestamps are the deadlines: strictly increasing, one interval apart
        stamps = [ts for _, _, ts in sink.video]
        assert all(b - a == pytest.approx(4000, abs=2) for a, b in zip(stamps, stamps[1:]))
        records = [json.loads(line) for line in (tmp_path / "sent.jsonl").read_text().splitlines()]
        assert len(records) == len(sink.video)
        assert {"seq", "t_ms", "flags", "sent", "kind"} <= set(records[0])
        assert [r["seq"] for r in records if r["kind"] == "frame"] == list(range(8))
        assert streamer.stats.frames_sent == 8 and streamer.stats.turns_completed == 2

    def test_a_backlog_of_audio_is_dropped_on_a_silent_tick_only(self) -> None:
        tone = audio.tone()

        class BackloggedSink(RecordingSink):
            backlog = 0.0

            async def capture_audio(self, pcm: bytes) -> None:
                await super().capture_audio(pcm)
                if sum(a == tone for a in self.audio) == 2:
                    self.backlog = 60.0  # a late tick in the middle of speech left 60 ms queued

            def audio_backlog_ms(self) -> float:
                return self.backlog

            def drop_audio_backlog(self) -> None:
                self.drops.append(len(self.audio))
                self.backlog = 0.0

        sink = BackloggedSink()
        sink.drops = []
        streamer = fast_streamer(sink)

        async def go() -> None:
            task = asyncio.create_task(streamer.run())
            await asyncio.sleep(0.02)
            await streamer.play(build_turn([TurnFrame(payload_for(i), tone) for i in range(6)], 0))
            await asyncio.sleep(0.03)
            streamer.stop()
            await task

        asyncio.run(go())
        assert len(sink.drops) == 1 and streamer.stats.audio_realigned == 1
        at = sink.drops[0]
        # dropped before the first silent tick after the turn, never while the tone played
        assert sink.audio[at] == audio.SILENCE and sink.audio[at - 1] == tone
        assert sum(a == tone for a in sink.audio[:at]) == 6

    def test_stop_mid_turn_closes_it(self) -> None:
        sink = RecordingSink()
        streamer = fast_streamer(sink)

        async def go() -> None:
            task = asyncio.create_task(streamer.run())
            future = streamer.play(build_turn([TurnFrame(payload_for(i)) for i in range(100)], 0))
            await asyncio.sleep(0.05)
            streamer.stop()
            await task
            assert not (await future).completed

        asyncio.run(go())
        packets = sink.packets()
        assert packets[-1].flags == Flags.TRANSITION_END
        assert Flags.END not in packets[-2].flags
        assert streamer.stats.turns_interrupted == 1

    def test_abort_after_truncated_turn_sends_nothing_more(self) -> None:
        sink = RecordingSink()
        streamer = fast_streamer(sink)

        async def go() -> None:
            task = asyncio.create_task(streamer.run())
            turn = build_turn([TurnFrame(payload_for(i)) for i in range(20)], 0).truncated(7)
            await streamer.play(turn, abort_after=True)
            await asyncio.wait_for(task, 1)

        asyncio.run(go())
        packets = sink.packets()
        assert packets[-1].seq == 6 and not packets[-1].flags & Flags.END
        assert packets[-1].flags != Flags.TRANSITION_END

    def test_injected_faults_reach_the_sink(self, tmp_path: Path) -> None:
        sink = RecordingSink()
        log = SendLog(tmp_path / "sent.jsonl")
        streamer = fast_streamer(sink, send_log=log)
        turn = plan_scripted_turn(0, 60, injection=Injection(loss=0.1, duplicate=0.1, bad=0.1, seed=4))

        async def go() -> None:
            task = asyncio.create_task(streamer.run())
            await streamer.play(turn)
            streamer.stop()
            await task

        asyncio.run(go())
        log.close()
        records = [json.loads(line) for line in (tmp_path / "sent.jsonl").read_text().splitlines()]
        lost = [r["seq"] for r in records if not r["sent"]]
        got = [p.seq for p in sink.packets() if p is not None and p.seq is not None]
        assert lost and not set(lost) & set(got) - {r["seq"] for r in records if r["kind"] == "duplicate"}
        assert sum(1 for p in sink.packets() if p is None) == streamer.stats.bad_sent > 0
        assert streamer.stats.dropped_by_injection == len(lost)
        times = [t for t, _, _ in sink.video]
        assert all(b > a for a, b in zip(times, times[1:]))

    def test_refused_frames_are_logged_as_not_sent(self, tmp_path: Path) -> None:
        sink = RecordingSink()
        sink.refuse = True
        log = SendLog(tmp_path / "sent.jsonl")
        streamer = fast_streamer(sink, send_log=log)

        run_idle(streamer)
        log.close()
        records = [json.loads(line) for line in (tmp_path / "sent.jsonl").read_text().splitlines()]
        assert records and not any(r["sent"] for r in records)
        assert streamer.stats.refused == len(records) and streamer.stats.offline == 0

    def test_packets_while_the_track_is_not_published_are_counted_apart(self) -> None:
        sink = RecordingSink()
        sink.refuse = True
        sink.live = False  # joining or rejoining: nothing to refuse, nothing published
        streamer = fast_streamer(sink)

        run_idle(streamer)
        assert streamer.stats.offline > 0 and streamer.stats.refused == 0

    def test_play_checks_the_sequence(self) -> None:
        streamer = fast_streamer(RecordingSink())

        async def go() -> None:
            with pytest.raises(ValueError):
                streamer.play(build_turn([TurnFrame(b"x")], 5))

        asyncio.run(go())


def test_interrupt_closes_the_turn_before_the_next_one_starts() -> None:
    sink = RecordingSink()
    streamer = fast_streamer(sink)

    async def go() -> None:
        task = asyncio.create_task(streamer.run())
        first = streamer.play(build_turn([TurnFrame(payload_for(i)) for i in range(50)], 0))
        await asyncio.sleep(0.03)
        streamer.interrupt()
        assert not (await first).completed
        second = build_turn([TurnFrame(payload_for(streamer.next_seq + i)) for i in range(3)], streamer.next_seq)
        assert (await streamer.play(second)).completed
        streamer.stop()
        await task

    asyncio.run(go())
    flags = [p.flags for p in sink.packets()]
    cut = flags.index(Flags.TRANSITION_END)
    assert Flags.END not in flags[cut - 1]
    assert flags[cut + 1:].index(Flags.TRANSITION) < flags[cut + 1:].index(Flags.START)
    assert [p.seq for p in sink.packets() if p.seq is not None][-3:] == [50, 51, 52]


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


def test_play_after_stop_raises_streamer_stopping_a_runtime_error():
    """A driver asking for one more turn while the worker winds down: not a failure to log as one."""
    import asyncio

    from avatar_worker.transport.streamer import StreamerStopping
    from avatar_worker.turns import TurnFrame, build_turn

    async def main():
        streamer = fast_streamer(RecordingSink())
        streamer.stop()
        with pytest.raises(StreamerStopping):
            streamer.play(build_turn([TurnFrame(b"m")] * 3, streamer.next_seq))

    asyncio.run(main())
    assert issubclass(StreamerStopping, RuntimeError)  # what agents_playback catches
