"""avatar_worker/agent_data.py: agent status and transcript messages around each turn. No server, no
network."""

from __future__ import annotations

import asyncio
import json

import pytest

from avatar_worker.agent_data import (
    AgentMessages,
    agent_status,
    chunk_due,
    split_transcript,
    transcript_chunk,
)
from avatar_worker.modes.scripted import payload_for, plan_scripted_turn
from avatar_worker.transport.messaging import MessageSender
from avatar_worker.turns import TurnFrame, build_turn

from .helpers import FakeTransport, RecordingSink, fast_streamer, fast_streamer, play


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
