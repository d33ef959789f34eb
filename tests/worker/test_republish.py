"""avatar_worker/transport/republish.py: replacing the motion track mid-turn. No server, no network."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from avatar_worker.modes.scripted import plan_scripted_turn
from avatar_worker.transport.republish import RepublishAfter
from avatar_worker.transport.streamer import SendLog

from .helpers import RecordingSink, fast_streamer, fast_streamer, play, read_log


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
