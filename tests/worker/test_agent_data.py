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
    split_words,
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

    def test_split_words_cuts_where_each_timed_word_starts(self) -> None:
        text = "Hello! I'm here."
        pieces, due = split_words(text, [(0, 0), (7, 19), (11, 25)])
        assert pieces == ["Hello! ", "I'm ", "here."] and due == [1, 20, 26]
        assert "".join(pieces) == text

    def test_split_words_keeps_leading_text_and_skips_bad_words(self) -> None:
        text = "  one two three"
        # the first word's start is after leading spaces; a repeated start, one past the end and a
        # frame that goes back are skipped or held to the word before
        pieces, due = split_words(text, [(2, 3), (6, 8), (6, 9), (10, 5), (99, 30)])
        assert pieces == ["  one ", "two ", "three"] and due == [4, 9, 9]
        assert split_words("just text", []) == (["just text"], [1])

    def test_split_words_cuts_only_between_tokens(self) -> None:
        # espeak-ng speaks "10:31" as three words, timed inside the token: one piece, at its first
        text = "It is 10:31 (now)."
        pieces, due = split_words(text, [(0, 0), (3, 4), (6, 8), (9, 11), (10, 12), (13, 15)])
        assert pieces == ["It ", "is ", "10:31 ", "(now)."] and due == [1, 5, 9, 16]


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
            agent_status("speaking"), transcript_chunk("turn 1", 1, True, 0, 0), agent_status("listening"),
            agent_status("speaking"), transcript_chunk("turn 2", 2, True, 3, 3), agent_status("listening")]
        assert messages[1]["data"] == {"role": "agent", "text": "turn 1", "turn": 1, "final": True,
                                       "seq": 0, "turn_seq": 0}

    def test_spoken_text_in_chunks(self) -> None:
        text = "one two three four five six"
        frames = [TurnFrame(payload_for(i)) for i in range(30)]
        messages = self.run_turns(lambda seq: build_turn(frames, seq, text=text))
        chunks = [m["data"] for m in messages if m["type"] == "transcript_chunk"]
        assert [c["text"] for c in chunks] == ["one two ", "three four ", "five six"]
        assert [c["final"] for c in chunks] == [False, False, True] and {c["turn"] for c in chunks} == {1}
        assert [c["seq"] for c in chunks] == [0, 10, 20] and {c["turn_seq"] for c in chunks} == {0}
        assert messages[0] == agent_status("speaking") and messages[-1] == agent_status("listening")

    def test_chunks_go_out_a_lead_ahead_of_their_frame_once_the_turn_has_begun(self) -> None:
        transport = FakeTransport()
        agent = AgentMessages(MessageSender(transport), lead_frames=2)
        turn = build_turn([TurnFrame(payload_for(i)) for i in range(9)], 40, text="a b c")
        agent.turn_started(turn, 1)
        sent = lambda: [(json.loads(p)["data"].get("text"), json.loads(p)["data"].get("seq"))  # noqa: E731
                        for p, *_ in transport.sent]
        assert sent() == [(None, None)]  # nothing before the turn's first frame went out
        agent.frame_sent(turn, 1, 1)
        assert sent() == [(None, None), ("a ", 40)]
        agent.frame_sent(turn, 1, 2)  # "b " is heard at frame 4 (seq 43): it goes 2 frames ahead
        assert sent() == [(None, None), ("a ", 40), ("b ", 43)]
        agent.frame_sent(turn, 1, 4)
        assert sent()[-1] == ("b ", 43)
        agent.frame_sent(turn, 1, 5)
        assert sent() == [(None, None), ("a ", 40), ("b ", 43), ("c", 46)]

    def test_synthesized_turns_go_word_by_word_at_the_frame_each_word_is_heard(self) -> None:
        transport = FakeTransport()
        agent = AgentMessages(MessageSender(transport), lead_frames=0)
        text = "Hi there, you."
        turn = build_turn([TurnFrame(payload_for(i)) for i in range(30)], 100, text=text,
                          words=((0, 0), (3, 9), (10, 21)))
        agent.turn_started(turn, 7)
        for k in range(1, 31):
            agent.frame_sent(turn, 7, k)
        agent.turn_ended(turn, 7, True)
        chunks = [json.loads(p)["data"] for p, *_ in transport.sent if json.loads(p)["type"] == "transcript_chunk"]
        assert chunks == [
            {"role": "agent", "text": "Hi ", "turn": 7, "final": False, "seq": 100, "turn_seq": 100},
            {"role": "agent", "text": "there, ", "turn": 7, "final": False, "seq": 109, "turn_seq": 100},
            {"role": "agent", "text": "you.", "turn": 7, "final": True, "seq": 121, "turn_seq": 100}]

    def test_sequence_numbers_wrap_like_the_frames(self) -> None:
        message = transcript_chunk("x", 1, False, 0xFFFFFFFF + 3, 0xFFFFFFFE)
        assert (message["data"]["seq"], message["data"]["turn_seq"]) == (2, 0xFFFFFFFE)

    def test_interrupted_turn_closes_the_transcript(self) -> None:
        frames = [TurnFrame(payload_for(i)) for i in range(300)]
        messages = self.run_turns(lambda seq: build_turn(frames, seq, text="a b c d e f"), stop_after=0.1)
        chunks = [m["data"] for m in messages if m["type"] == "transcript_chunk"]
        assert chunks[0]["text"] == "a b " and chunks[0]["seq"] == 0
        last = chunks[-1]
        assert {k: last[k] for k in ("text", "turn", "final", "turn_seq")} == {"text": "", "turn": 1, "final": True,
                                                                               "turn_seq": 0}
        assert 0 < last["seq"] < 100  # the last frame that went out before the stop
        assert messages[-1] == agent_status("listening")
