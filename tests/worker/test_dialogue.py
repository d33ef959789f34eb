"""The demo's dialogue policy (avatar_worker/dialogue.py): intents, replies, the injected clock."""

from __future__ import annotations

import time

import pytest

from avatar_worker.dialogue import DialoguePolicy

NOON = time.mktime((2026, 11, 30, 12, 5, 0, 0, 0, -1))
"""12:05 local time (the policy shows local time)."""


@pytest.mark.parametrize("said, intent", [
    ("Hello!", "greeting"), ("hi there", "greeting"), ("Good morning, avatar.", "greeting"),
    ("What is your name?", "name"), ("Who are you?", "name"),
    ("What time is it?", "time"), ("Can you tell me the time", "time"),
    ("What can you do?", "abilities"), ("Help", "abilities"),
    ("Goodbye.", "goodbye"), ("OK, bye!", "goodbye"), ("Hello and goodbye", "goodbye"),
    ("What is the weather like in Paris today?", "heard"), ("This is hi-fi", "greeting"),
    ("", "not_understood"), ("  ...  ", "not_understood"),
])
def test_intents(said: str, intent: str) -> None:
    assert DialoguePolicy().intent(said) == intent


def test_time_uses_the_injected_clock() -> None:
    policy = DialoguePolicy(clock=lambda: NOON)
    assert policy.reply("what time is it").text == "It is 12:05 p.m."
    morning = DialoguePolicy(clock=lambda: NOON - 12 * 3600 + 3 * 60)
    assert morning.reply("the time please").text == "It is 12:08 a.m."


def test_repeats_back_what_it_understood() -> None:
    reply = DialoguePolicy().reply("What is the weather like in Paris today?")
    assert reply.intent == "heard"
    assert reply.text.startswith("I heard: What is the weather like in Paris today. I cannot answer that")
    long = DialoguePolicy().reply(" ".join(["word"] * 30))
    assert long.text.count("word") == 20 and "..." in long.text


def test_fixed_replies_are_deterministic_and_cover_the_fixed_intents() -> None:
    policy = DialoguePolicy(clock=lambda: 0.0)
    fixed = set(policy.fixed_replies())
    for said in ("hello", "your name", "what can you do", "bye", ""):
        first, second = policy.reply(said), policy.reply(said)
        assert first == second and first.text in fixed
    assert policy.reply("what time is it").text not in fixed
    assert "did not understand" in policy.reply("").text
