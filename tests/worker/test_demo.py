"""Demo mode's agent logic (avatar_worker/demo.py) without a server: replies, greetings, turn
taking and barge-in, on a fast streamer and a fake data transport."""

from __future__ import annotations

import array
import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from avatar_worker.audio import pcm as pcm_audio
from avatar_worker.config import LiveKitSettings, WorkerConfig
from avatar_worker.asr import Recognition
from avatar_worker.dialogue import DialoguePolicy
from avatar_worker.modes.demo import LEAD_INS, SPEAK_REPLIES, DemoAgent, compose_reply, normalize
from avatar_worker.transport.messaging import MessageSender
from avatar_worker.modes.speech import Speech, recorded
from avatar_worker.audio.vad import Utterance

from avatarplayer.face.model import pose_from_message

from .helpers import FakeTransport, RecordingSink, fast_streamer
from .test_vad import pcm


def _utterance(seconds: float = 1.0, amplitude: int = 3000) -> Utterance:
    samples = array.array("h", [amplitude if (i // 48) % 2 else -amplitude for i in range(round(seconds * 48000))])
    return Utterance(samples.tobytes(), 1.0, 1.0 + seconds, 1.6 + seconds, "silence")


def fake_synth(text: str, *, voice: str | None = None) -> Speech:
    fake_synth.calls.append(text)  # type: ignore[attr-defined]
    return recorded(pcm_audio.tone(400.0, 0.3) * 10, "fake", text)  # 0.4 s


fake_synth.calls = []  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- composing


def test_normalize() -> None:
    quiet = array.array("h", [-2000, 4000, 500]).tobytes()
    loud = array.array("h", normalize(quiet))
    assert max(abs(s) for s in loud) == int(0.7 * 32767) and loud[0] == pytest.approx(-loud[1] / 2, abs=1)
    tiny = array.array("h", normalize(array.array("h", [10, -10]).tobytes()))
    assert list(tiny) == [80, -80]  # gain capped at 8
    assert normalize(bytes(6)) == bytes(6) and normalize(b"") == b""


def test_compose_echo_speak_both() -> None:
    utt = _utterance(1.04)
    echo = compose_reply(utt, "echo", 0, synthesize=fake_synth)
    assert echo.text == "(your 1.0 seconds, played back)" and len(echo.frames) == 26  # 1.04 s
    assert max(echo.envelope) > 0.5  # normalized: the jaw moves

    fake_synth.calls.clear()
    speak = [compose_reply(utt, "speak", k, synthesize=fake_synth) for k in range(len(SPEAK_REPLIES) + 1)]
    expected = [s.format(seconds="1.0") for s in SPEAK_REPLIES]
    assert fake_synth.calls == expected + expected[:1]  # in turn, round and round
    assert speak[0].text == "You spoke for 1.0 seconds." and len(speak[0].frames) == 10

    fake_synth.calls.clear()
    both = compose_reply(utt, "both", 1, synthesize=fake_synth)
    assert fake_synth.calls == [LEAD_INS[1]]
    assert both.text == f"{LEAD_INS[1]} (your 1.0 seconds, played back)"
    assert len(both.frames) == 10 + 5 + 26  # lead-in, 200 ms gap, echo
    assert both.frames[11] == pcm_audio.SILENCE and both.frames[-2] != pcm_audio.SILENCE


def test_synthesised_replies_carry_their_words_and_phonemes() -> None:
    utt = _utterance(1.04)
    both = compose_reply(utt, "both", 2)  # real espeak-ng
    lead = LEAD_INS[2]
    assert both.text == f"{lead} (your 1.0 seconds, played back)"
    assert [both.text[w.start:w.start + w.length] for w in both.words] == lead.rstrip(".").split() + [
        "(your 1.0 seconds, played back)"]
    assert both.phonemes and both.phonemes[-1].end_ms <= both.words[-1].start_ms  # none in the echo
    # the echo's caption goes up as the echo starts, after the lead-in and the 200 ms gap
    lead_frames = len(both.frames) - 5 - 26
    assert both.words[-1].start_ms == (lead_frames + 5) * 40
    said = compose_reply(utt, "speak", 0)
    assert said.text == "You spoke for 1.0 seconds." and len(said.words) >= 5 and said.phonemes  # "1.0": "one point zero"
    echo = compose_reply(utt, "echo", 0)
    assert echo.words == () and echo.phonemes == ()  # a recording: the loudness jaw


# ------------------------------------------------------------------------------ the agent


class FakeParticipant:
    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.kind = 0  # PARTICIPANT_KIND_STANDARD


class FakePublisher:
    def __init__(self) -> None:
        self.hooks: list[Any] = []
        self.others = ["user"]

    def other_identities(self) -> list[str]:
        return list(self.others)

    def other_participants(self) -> list[Any]:
        return [FakeParticipant(identity) for identity in self.others]

    async def wait_for_viewer(self) -> None:
        return None


def make_agent(recognizer: Any = None, **kwargs: Any) -> tuple[DemoAgent, FakeTransport, RecordingSink, Any]:
    settings = dict(mode="demo", reply="echo", asr="none", lead_in_ms=0, tail_ms=0)
    settings.update(kwargs)
    agent = DemoAgent(WorkerConfig(LiveKitSettings("ws://x", "k", "s", "r"), **settings), recognizer=recognizer)
    transport = FakeTransport(others=["user"])
    observers: list[Any] = []
    publisher = FakePublisher()
    agent.install(publisher, MessageSender(transport), observers)  # type: ignore[arg-type]
    assert publisher.hooks == [agent] and len(observers) == 1
    sink = RecordingSink()
    streamer = fast_streamer(sink, observers=observers)
    return agent, transport, sink, streamer


def greeting(frames: int) -> Speech:
    pieces = [pcm_audio.tone(400.0, 0.2)] * frames
    return Speech(tuple(pieces), tuple(pcm_audio.envelope(pieces)), "test", "Hello there friend.")


def agent_messages(transport: FakeTransport) -> list[dict[str, Any]]:
    return [json.loads(payload) for payload, _, _ in transport.on("avatarplayer.agent")]


def statuses(transport: FakeTransport) -> list[str]:
    return [m["data"]["status"] for m in agent_messages(transport) if m["type"] == "agent_status"]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def run_agent(agent: DemoAgent, streamer: Any, script: Callable[[], Any]) -> None:
    async def go() -> None:
        stream = asyncio.create_task(streamer.run())
        drive = asyncio.create_task(agent.drive(streamer, lambda: asyncio.sleep(0)))
        try:
            await script()
        finally:
            drive.cancel()
            streamer.stop()
            await asyncio.gather(drive, return_exceptions=True)
            await stream
            await agent.close()

    asyncio.run(go())


SPEECH = pcm((0.5, None, -65.0), (1.2, -22.0, -65.0), (0.8, None, -65.0))
"""An utterance of 1.2 s, with the silence that ends it."""


def test_greets_then_answers_an_utterance() -> None:
    agent, transport, sink, streamer = make_agent()
    agent.greeting = greeting(20)

    async def script() -> None:
        agent.arrived("user")
        await until(lambda: statuses(transport) == ["speaking", "listening"])
        listener = agent.listen("user", "TR_mic")
        agent.hear(listener, SPEECH)
        await until(lambda: statuses(transport)[-1:] == ["listening"] and len(statuses(transport)) == 5)

    run_agent(agent, streamer, script)
    messages = agent_messages(transport)
    assert statuses(transport) == ["speaking", "listening", "thinking", "speaking", "listening"]
    user = [m["data"] for m in messages if m["type"] == "transcript_chunk" and m["data"]["role"] == "user"]
    assert user == [{"role": "user", "text": "(1.2 s of speech)", "utterance": 1, "final": True}]
    agent_text = [m["data"] for m in messages if m["type"] == "transcript_chunk" and m["data"]["role"] == "agent"]
    assert "".join(c["text"] for c in agent_text if c["turn"] == 1) == "Hello there friend."
    assert "".join(c["text"] for c in agent_text if c["turn"] == 2) == "(your 1.2 seconds, played back)"
    # order: thinking as the speech ended, the user's chunk, then the reply turn
    kinds = [(m["type"], m["data"].get("role") or m["data"].get("status")) for m in messages]
    assert kinds.index(("agent_status", "thinking")) + 1 == kinds.index(("transcript_chunk", "user"))
    assert agent.stats["greetings"] == 1 and agent.stats["replies"] == 1 and agent.stats["utterances"] == 1
    assert len(agent.reply_latency_ms) == 1
    # the reply played the (normalized) utterance: 200 ms pre-roll + 1.2 s + 200 ms tail = 40 frames
    assert streamer.stats.turns_completed == 2 and streamer.stats.frames_sent == 20 + 40


def test_does_not_answer_while_speaking_and_barge_in_stops_it() -> None:
    agent, transport, sink, streamer = make_agent(barge_in_ms=500)
    agent.greeting = greeting(2000)  # 8 s at the fast clock: plenty of time

    async def script() -> None:
        agent.arrived("user")
        await until(lambda: statuses(transport) == ["speaking"])
        listener = agent.listen("user", "TR_mic")
        # a short remark over the greeting: heard, not answered, not enough to interrupt
        agent.hear(listener, pcm((0.5, None, -65.0), (0.3, -22.0, -65.0), (0.8, None, -65.0)))
        assert agent.stats["ignored"] == 1 and agent.stats["barge_ins"] == 0 and streamer.busy
        # the user goes on talking: after 0.5 s of voice the greeting stops
        agent.hear(listener, pcm((0.7, -22.0, -65.0), seed=2))
        assert agent.stats["barge_ins"] == 1
        await until(lambda: statuses(transport) == ["speaking", "listening"])
        # ... and when they stop, they get their answer
        agent.hear(listener, pcm((0.8, None, -65.0), seed=3))
        await until(lambda: len(statuses(transport)) == 5)

    run_agent(agent, streamer, script)
    assert statuses(transport) == ["speaking", "listening", "thinking", "speaking", "listening"]
    assert streamer.stats.turns_interrupted == 1 and streamer.stats.turns_completed == 1
    greeting_chunks = [m["data"] for m in agent_messages(transport)
                       if m["type"] == "transcript_chunk" and m["data"].get("turn") == 1]
    assert {k: greeting_chunks[-1][k] for k in ("role", "text", "turn", "final")} == {
        "role": "agent", "text": "", "turn": 1, "final": True}
    assert agent.stats["replies"] == 1 and agent.stats["utterances"] == 1


def test_barge_in_off() -> None:
    agent, transport, sink, streamer = make_agent(barge_in_ms=0)
    agent.greeting = greeting(300)

    async def script() -> None:
        agent.arrived("user")
        await until(lambda: statuses(transport) == ["speaking"])
        listener = agent.listen("user", "TR_mic")
        agent.hear(listener, pcm((0.5, None, -65.0), (2.0, -22.0, -65.0), (0.8, None, -65.0)))
        await until(lambda: statuses(transport) == ["speaking", "listening"])
        await asyncio.sleep(0.1)

    run_agent(agent, streamer, script)
    assert agent.stats["barge_ins"] == 0 and agent.stats["ignored"] == 1 and agent.stats["replies"] == 0
    assert streamer.stats.turns_completed == 1


def test_max_replies_ends_the_driver() -> None:
    agent, transport, sink, streamer = make_agent(max_replies=1)

    async def go() -> str:
        stream = asyncio.create_task(streamer.run())
        drive = asyncio.create_task(agent.drive(streamer, lambda: asyncio.sleep(0)))
        agent.hear(agent.listen("user", "TR_mic"), SPEECH)
        outcome = await asyncio.wait_for(drive, 10)
        streamer.stop()
        await stream
        await agent.close()
        return outcome

    assert asyncio.run(go()) == "done"
    assert agent.stats["replies"] == 1


def test_greeting_rules() -> None:
    agent, transport, sink, streamer = make_agent()

    async def go() -> None:
        agent.arrived("bot", is_agent=True)
        agent.arrived("user")
        agent.departed("user")  # left before the greeting was due: no greeting queued
        await asyncio.sleep(0.01)
        assert agent.events.empty()
        agent.arrived("user")
        await asyncio.sleep(0.01)
        assert agent.events.get_nowait() == ("greet", "user")
        agent._greeted.add("user")
        agent.departed("user")
        agent.arrived("user")  # back after a blip: not greeted again
        await asyncio.sleep(0.01)
        assert agent.events.empty()
        agent._left["user"] = agent._clock() - 60  # away for a minute: greeted again
        agent.arrived("user")
        await asyncio.sleep(0.01)
        assert agent.events.get_nowait() == ("greet", "user")
        await agent.close()

    asyncio.run(go())


# ------------------------------------------------------------------ recognition and policy


class ScriptedRecognizer:
    """Says ``text`` cut to as many words as the audio has half-seconds (a growing utterance gets
    a growing partial), after ``delay_s`` in the recogniser's thread; records what it was given."""

    name = "scripted"

    def __init__(self, text: str, delay_s: float = 0.02) -> None:
        self.text = text
        self.delay_s = delay_s
        self.calls: list[float] = []

    def transcribe(self, pcm: bytes, sample_rate: int) -> Recognition:
        import threading
        import time

        assert threading.current_thread() is not threading.main_thread(), "recognising on the event loop"
        audio_s = len(pcm) / 2 / sample_rate
        self.calls.append(audio_s)
        time.sleep(self.delay_s)
        words = self.text.split()
        return Recognition(" ".join(words[: max(1, int(audio_s / 0.5))]), self.delay_s, audio_s)


def user_chunks(transport: FakeTransport) -> list[dict[str, Any]]:
    return [m["data"] for m in agent_messages(transport)
            if m["type"] == "transcript_chunk" and m["data"]["role"] == "user"]


def feed_live(agent: DemoAgent, listener: Any, pcm_bytes: bytes, frame_s: float = 0.02):
    """Feed ``pcm_bytes`` in 20 ms pieces at twice real time (a live track, fast): a partial
    recognition (20 ms in the scripted recogniser) has the time to come back while the
    utterance goes on, even on a busy machine."""
    async def go() -> None:
        step = round(frame_s * 48000) * 2
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n, start in enumerate(range(0, len(pcm_bytes), step)):
            agent.hear(listener, pcm_bytes[start:start + step])
            await asyncio.sleep(max(0.0, started + (n + 1) * frame_s / 2 - loop.time()))
    return go()


def test_policy_reply_to_recognised_words_with_partials() -> None:
    recognizer = ScriptedRecognizer("what time is it please tell me now")
    agent, transport, sink, streamer = make_agent(recognizer, reply="policy", asr="whisper")
    agent.policy = DialoguePolicy(clock=lambda: 1_700_000_000.0)

    async def script() -> None:
        listener = agent.listen("user", "TR_mic")
        await feed_live(agent, listener, pcm((0.5, None, -65.0), (3.2, -22.0, -65.0), (0.9, None, -65.0)))
        await until(lambda: len(statuses(transport)) == 3 and statuses(transport)[-1] == "listening")

    run_agent(agent, streamer, script)
    chunks = user_chunks(transport)
    assert [c["final"] for c in chunks][-1] is True and all(not c["final"] for c in chunks[:-1])
    assert len(chunks) >= 3, chunks  # partials every second of speech, then the final
    assert {c["utterance"] for c in chunks} == {1}
    partials = [c["text"] for c in chunks[:-1]]
    assert all(len(a.split()) < len(b.split()) for a, b in zip(partials, partials[1:])), partials
    assert chunks[-1]["text"].startswith("what time is it")
    assert agent.stats["guesses_used"] == 1 and agent.stats["recognitions"] == 1 and agent.stats["partials"] >= 2
    reply = [m["data"]["text"] for m in agent_messages(transport)
             if m["type"] == "transcript_chunk" and m["data"]["role"] == "agent"]
    import time
    local = time.localtime(1_700_000_000.0)
    assert "".join(reply) == f"It is {local.tm_hour % 12 or 12}:{local.tm_min:02d} {'a.m.' if local.tm_hour < 12 else 'p.m.'}"
    assert statuses(transport) == ["thinking", "speaking", "listening"]


def test_a_policy_reply_shapes_the_mouth_and_is_captioned_word_by_word() -> None:
    agent, transport, sink, streamer = make_agent(ScriptedRecognizer("your name"), reply="policy",
                                                  asr="whisper")

    async def script() -> None:
        agent.hear(agent.listen("user", "TR_mic"), SPEECH)
        await until(lambda: statuses(transport)[-1:] == ["listening"])

    run_agent(agent, streamer, script)
    said = DialoguePolicy().reply("your name").text
    assert said.startswith("My name is")
    chunks = [m["data"] for m in agent_messages(transport)
              if m["type"] == "transcript_chunk" and m["data"]["role"] == "agent"]
    assert "".join(c["text"] for c in chunks) == said
    # a piece per word espeak-ng reports (it runs "I am" together), not three pieces
    assert len(chunks) >= len(said.split()) - 1 and all(len(c["text"].split()) <= 2 for c in chunks)
    seqs = [c["seq"] for c in chunks]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # each word at the frame it is heard
    assert {c["turn_seq"] for c in chunks} == {chunks[0]["turn_seq"]} and chunks[0]["turn_seq"] <= seqs[0]
    # the frames sent carry the phonemes' mouth shapes, as the player decodes them
    poses = [pose_from_message(p.message) for p in sink.packets() if p is not None and p.seq is not None]
    assert len(poses) == streamer.stats.frames_sent and None not in poses
    assert max(p.spread for p in poses) > 0.5  # "name", "Ava"
    assert max(p.press for p in poses) > 0.9  # the closures of "My", "am"
    assert max(p.pucker for p in poses) > 0.3  # "you", "your"


def test_policy_says_when_it_did_not_understand() -> None:
    agent, transport, sink, streamer = make_agent(ScriptedRecognizer(""), reply="policy", asr="whisper")

    async def script() -> None:
        agent.hear(agent.listen("user", "TR_mic"), SPEECH)
        await until(lambda: statuses(transport)[-1:] == ["listening"])

    run_agent(agent, streamer, script)
    assert user_chunks(transport) == [{"role": "user", "text": "(1.2 s, no words recognised)", "utterance": 1,
                                       "final": True}]
    reply = "".join(m["data"]["text"] for m in agent_messages(transport)
                    if m["type"] == "transcript_chunk" and m["data"]["role"] == "agent")
    assert reply.startswith("Sorry, I did not understand")


def test_a_visitor_alone_is_greeted_at_once_one_in_company_after_the_lead_in() -> None:
    agent, transport, sink, streamer = make_agent(lead_in_ms=300)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        agent.arrived("user")  # alone in the room: its subscription is the signal
        assert await asyncio.wait_for(agent.events.get(), 1) == ("greet", "user")
        assert loop.time() - started < 0.25
        agent.publisher.others = ["user", "second"]  # type: ignore[union-attr]
        started = loop.time()
        agent.arrived("second")  # the track was subscribed already: no signal for this one
        assert await asyncio.wait_for(agent.events.get(), 1) == ("greet", "second")
        assert loop.time() - started >= 0.3
        await agent.close()

    asyncio.run(go())


def test_the_greeting_and_fixed_replies_are_synthesised_once_per_process() -> None:
    from avatar_worker.modes.demo import GREETING, greeting_speech, policy_reply, prewarm, synthesized

    config = WorkerConfig(LiveKitSettings("ws://x", "k", "s", "r"), mode="demo", asr="none", reply="both")
    synthesized.cache_clear()
    prewarm(config)  # what a dispatched worker's idle process does
    misses = synthesized.cache_info().misses
    assert misses == 1  # the greeting only: --reply both has no fixed replies
    speech = greeting_speech(config)
    assert speech.text == GREETING and len(speech.frames) > 50
    assert len(speech.words) == len(GREETING.split()) and speech.phonemes  # mouth shapes, word captions
    assert synthesized.cache_info().misses == misses  # a session's prepare() finds it ready

    policy = WorkerConfig(LiveKitSettings("ws://x", "k", "s", "r"), mode="demo", asr="sphinx", reply="policy")
    prewarm(policy)  # loads the (small) recogniser too
    assert synthesized.cache_info().misses == misses + len(DialoguePolicy.fixed_replies())
    cache = {text: synthesized(text, None) for text in DialoguePolicy.fixed_replies()}
    assert synthesized.cache_info().misses == misses + len(DialoguePolicy.fixed_replies())

    def no_synthesis(text: str, *, voice: str | None = None) -> Speech:
        raise AssertionError(f"synthesised {text!r} again")

    cached = policy_reply("what is your name", DialoguePolicy(), cache=cache, synthesize=no_synthesis)
    assert cached.source == "reply (name)" and cached.words and cached.phonemes
