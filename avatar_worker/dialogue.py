"""The demo agent's dialogue policy (``--reply policy``): what to answer to recognised words.

Pure, deterministic and offline: a few keyword rules, no model. Given what the recogniser heard,
:meth:`DialoguePolicy.reply` returns the intent it matched and the sentence to speak:

- ``greeting`` ("hello", "hi", "good morning"): a greeting back;
- ``name`` ("what is your name", "who are you"): who the avatar is;
- ``time`` ("what time is it"): the time on the injectable clock (tests pass a fixed one);
- ``abilities`` ("what can you do", "help"): what it can do;
- ``goodbye`` ("bye", "see you"): a farewell;
- ``heard``: anything else: it repeats back what it understood and says what it can answer;
- ``not_understood``: no words at all (noise, a cough, a recogniser that heard nothing).

The first rule that matches wins, in the order above, except that ``goodbye`` is tried before
``greeting`` ("hello and goodbye" is a goodbye). Replies other than ``time`` and ``heard`` are
fixed sentences (:meth:`DialoguePolicy.fixed_replies`), so the demo can synthesise them ahead.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DialoguePolicy", "Intent", "Reply", "NAME"]

NAME = "the avatarplayer demo"

Intent = str
"""``greeting``, ``name``, ``time``, ``abilities``, ``goodbye``, ``heard`` or ``not_understood``."""

_RULES: tuple[tuple[Intent, re.Pattern[str]], ...] = tuple((intent, re.compile(pattern)) for intent, pattern in (
    ("goodbye", r"\b(good ?bye|bye|see you|farewell|good night)\b"),
    ("name", r"\b(your name|who are you|what are you called|call you)\b"),
    ("time", r"\b(what time|the time|time is it|what's the time|clock)\b"),
    ("abilities", r"\b(what can you do|what do you do|can you help|help me|what are you able)\b|^help\b"),
    ("greeting", r"\b(hello|hi|hey|good (morning|afternoon|evening)|greetings)\b"),
))

_FIXED: dict[Intent, str] = {
    "greeting": "Hello to you too! Ask me my name, the time, or what I can do.",
    "name": f"My name is Ava. I am {NAME}, a talking face in your browser.",
    "abilities": "I can hear you, show what I understood, tell you my name and the time, and say goodbye. "
                 "Everything runs on this computer.",
    "goodbye": "Goodbye! It was nice talking to you.",
    "not_understood": "Sorry, I did not understand that. Could you say it again?",
}
HEARD = "I heard: {text}. I cannot answer that yet, but I can tell you my name, the time, or what I can do."
TIME = "It is {time}"
MAX_ECHO_WORDS = 20
"""The ``heard`` reply repeats at most this many words."""


@dataclass(frozen=True)
class Reply:
    """What to answer: the matched intent and the sentence to speak."""

    intent: Intent
    text: str


def _normalize(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower().replace("’", "'")))


def _clock_time(seconds: float) -> str:
    local = time.localtime(seconds)
    hour = local.tm_hour % 12 or 12
    suffix = "a.m." if local.tm_hour < 12 else "p.m."  # the sentence ends with its full stop
    return f"{hour}:{local.tm_min:02d} {suffix}"


class DialoguePolicy:
    """Maps recognised words to a reply; ``clock`` gives the time for the ``time`` intent
    (seconds since the epoch, shown in the process's local time zone)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def intent(self, text: str) -> Intent:
        """The intent of ``text`` (see the module docstring)."""
        said = _normalize(text)
        if not said:
            return "not_understood"
        for intent, pattern in _RULES:
            if pattern.search(said):
                return intent
        return "heard"

    def reply(self, text: str) -> Reply:
        """The answer to the recognised ``text``."""
        intent = self.intent(text)
        if intent == "time":
            return Reply(intent, TIME.format(time=_clock_time(self.clock())))
        if intent == "heard":
            shown = text.strip().rstrip(".?!")
            spoken = shown.split()
            if len(spoken) > MAX_ECHO_WORDS:
                shown = " ".join(spoken[:MAX_ECHO_WORDS]) + " ..."
            return Reply(intent, HEARD.format(text=shown))
        return Reply(intent, _FIXED[intent])

    @staticmethod
    def fixed_replies() -> tuple[str, ...]:
        """Every reply that never changes: worth synthesising before anyone speaks."""
        return tuple(_FIXED.values())
