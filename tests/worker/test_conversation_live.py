"""A spoken conversation with the demo agent on a real LiveKit server: a Python participant
(tools/talker.py) says espeak-ng sentences into its microphone; the worker (``--mode demo``,
Whisper and the dialogue policy, as ``serve.py`` runs it) recognises them, streams the words as
partial then final ``transcript_chunk`` messages, and answers the intent. Latencies are taken
on the participant's clock: greeting after the join, first avatar audio after the voice ended."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from avatar_worker.asr import words
from avatar_worker.audio import pcm as pcm_audio
from tools.talker import Talker

from .test_worker_features_live import run_worker
from .test_worker_live import start_worker, wait_for

if TYPE_CHECKING:
    from tools.devstack import LiveKitServer

TURNS = (
    ("What time is it?", "It is "),
    ("What can you do?", "I can hear you"),
    ("What is the weather like in Paris today?", "I heard: "),
)
# Generous bounds, as for every timed test here: the targets (greeting <= 1 s, reply
# <= 1.2 s) are measured by bench/conversation.py (medians over 15 replies; bench/README.md), not
# asserted on a shared 2-core CI machine, where Whisper's 0.5 s per utterance can double. These
# still fail a greeting behind a fixed lead-in and synthesis (the issue saw 4.7 s), or a reply that
# waits for anything beyond recognition and synthesis.
GREETING_MAX_S = 2.5
REPLY_MEDIAN_MAX_S = 2.5
REPLY_MAX_S = 4.0


def test_the_agent_recognises_and_answers(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    worker = start_worker(livekit_server, tmp_path, "--room", "conv", "--mode", "demo", "--max-replies",
                          str(len(TURNS)), "--exit-when-done", "--send-log", str(tmp_path / "sent.jsonl"))
    talker = Talker(livekit_server.url, livekit_server.token("user", "conv", sources=["microphone"]))
    spoken = [pcm_audio.synthesize(text) for text, _ in TURNS]
    timings: dict[str, list[float]] = {"greeting": [], "reply": []}

    async def talk() -> None:
        # the visitor comes once the avatar is there and its recogniser loaded (serve.py's sessions
        # load it in their process before a visitor is sent to them: avatar_worker/dispatch.py)
        await wait_for(lambda: "recogniser ready" in (tmp_path / "worker.log").read_text()
                       and "joined room" in (tmp_path / "worker.log").read_text(), 30, "the worker ready")
        await talker.connect()
        await talker.wait_for(lambda: talker.statuses()[-2:] == ["speaking", "listening"], 20, "the greeting")
        timings["greeting"].append(talker.first_voice_after(talker.joined) - talker.joined)
        for pcm, (text, _) in zip(spoken, TURNS):
            await asyncio.sleep(0.5)
            replies = talker.statuses().count("speaking")
            ended = await talker.say(pcm)
            await talker.wait_for(lambda: talker.statuses().count("speaking") > replies
                                  and talker.statuses()[-1] == "listening", 20, f"the answer to {text!r}")
            timings["reply"].append(talker.first_voice_after(ended) - ended)
        await asyncio.to_thread(worker.wait, 20)
        await talker.close()

    summary = run_worker(worker, talk(), timeout=20)
    log = (tmp_path / "worker.log").read_text()
    assert summary["outcome"] == "done", log[-3000:]
    user = talker.chunks("user")
    finals = [c for c in user if c["final"]]
    assert [c["utterance"] for c in finals] == [1, 2, 3], user
    # >= 80 % of the words said, over the three sentences: Whisper tiny.en hears espeak-ng's
    # "weather like in Paris" through Opus as "weather I can Paris" in about one run of three
    said = [w for text, _ in TURNS for w in words(text)]
    heard = [w for chunk in finals for w in words(chunk["text"])]
    assert sum(w in heard for w in said) >= 0.8 * len(said), finals
    partials = [c for c in user if not c["final"]]
    assert any(c["utterance"] == 3 for c in partials), user  # the 2.3 s sentence had a partial on the way
    agent = talker.chunks("agent")
    answers = ["".join(c["text"] for c in agent if c["turn"] == n) for n in (2, 3, 4)]
    for answer, (text, expected) in zip(answers, TURNS):
        assert answer.startswith(expected), (text, answer)
    assert "weather" in answers[2] and "Paris" in answers[2], answers[2]  # repeated back
    demo = summary["demo"]
    assert demo["replies"] == 3 and demo["guesses_used"] >= 2, demo
    print(f"\nconversation: greeting {timings['greeting'][0]:.2f} s after the join; replies "
          f"{[round(t, 2) for t in timings['reply']]} s after the voice ended; recognition "
          f"{demo['recognition_ms']} ms; worker's own reply latency {demo['reply_latency_ms']} ms\n{user}\n{answers}")
    assert timings["greeting"][0] <= GREETING_MAX_S, timings
    assert sorted(timings["reply"])[1] <= REPLY_MEDIAN_MAX_S, timings
    assert max(timings["reply"]) <= REPLY_MAX_S, timings
