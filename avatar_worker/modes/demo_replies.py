"""What the demo agent (:mod:`avatar_worker.modes.demo`) answers with, as speech.

- ``policy`` (:func:`policy_reply`): the answer of :class:`avatar_worker.dialogue.DialoguePolicy`
  to the recognised words, synthesised (or taken from a cache of the fixed sentences);
- ``echo``, ``speak``, ``both`` (:func:`compose_reply`): the user's own utterance played back
  (level-normalized), a sentence about how long they spoke, or a spoken lead-in then the echo.

Synthesised sentences carry when their words and phonemes are heard (:func:`avatar_worker.modes.speech.speak`):
the mouth takes their shapes and the captions go word by word. The echo, a recording, moves the
jaw with its loudness. Blocking (synthesis, envelopes): the agent runs these in a thread.
"""

from __future__ import annotations

import array
import dataclasses
from collections.abc import Callable, Mapping
from typing import Literal

from ..audio import pcm as pcm_audio
from ..audio.vad import Utterance
from ..dialogue import DialoguePolicy
from .speech import Speech, join_speech, recorded, speak

__all__ = ["ECHO_GAP_S", "LEAD_INS", "SPEAK_REPLIES", "ReplyMode", "compose_reply", "normalize", "policy_reply",
           "spoken_for"]

ReplyMode = Literal["policy", "echo", "speak", "both"]
SPEAK_REPLIES = (
    "You spoke for {seconds} seconds.",
    "I heard {seconds} seconds of your voice. Say something else!",
    "Thank you! That was {seconds} seconds of speech.",
    "Nice! {seconds} seconds. I am only a demo, but I am listening.",
)
"""``--reply speak``: one per utterance, in turn."""
LEAD_INS = (
    "You spoke for {seconds} seconds. Here is what I heard.",
    "I heard this.",
    "Here is what you said.",
)
"""``--reply both``: spoken before the echo, one per utterance, in turn."""
ECHO_GAP_S = 0.2
"""Silence between the lead-in and the echo."""


def normalize(pcm: bytes, *, peak: float = 0.7, max_gain: float = 8.0) -> bytes:
    """int16 PCM scaled so its peak is ``peak`` of full scale (gain at most ``max_gain``)."""
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    if not samples:
        return b""
    top = max(max(samples), -min(samples))
    if top == 0:
        return samples.tobytes()
    gain = min(max_gain, peak * 32767 / top)
    if abs(gain - 1.0) < 0.01:
        return samples.tobytes()
    return array.array("h", (max(-32768, min(32767, int(s * gain))) for s in samples)).tobytes()


def spoken_for(utterance: Utterance) -> str:
    """How long the user spoke, as the transcript and the replies show it (``"2.3"``)."""
    return f"{utterance.duration_s:.1f}"


def policy_reply(text: str, policy: DialoguePolicy, *, voice: str | None = None,
                 cache: Mapping[str, Speech] | None = None,
                 synthesize: Callable[..., Speech] = speak) -> Speech:
    """The dialogue policy's answer to the recognised ``text`` as speech, with its words and
    phonemes (synthesised, or from ``cache``: text → speech). Blocking: run it in a thread."""
    reply = policy.reply(text)
    speech = cache.get(reply.text) if cache is not None else None
    if speech is None:
        speech = synthesize(reply.text, voice=voice)
    return dataclasses.replace(speech, source=f"reply ({reply.intent})")


def compose_reply(utterance: Utterance, mode: ReplyMode, index: int, *, voice: str | None = None,
                  synthesize: Callable[..., Speech] = speak) -> Speech:
    """The reply to ``utterance`` (48 kHz PCM) as speech; ``index`` picks the sentence (0, 1, ...).
    What is synthesised carries its words and phonemes; the echo, a recording, moves the jaw with
    its loudness and is captioned as one piece when it starts. Blocking (synthesis, envelope):
    run it in a thread."""
    seconds = spoken_for(utterance)
    if mode == "speak":
        return dataclasses.replace(synthesize(SPEAK_REPLIES[index % len(SPEAK_REPLIES)].format(seconds=seconds),
                                              voice=voice), source=f"reply ({mode})")
    parts: list[Speech] = []
    if mode == "both":
        lead = LEAD_INS[index % len(LEAD_INS)].format(seconds=seconds)
        parts += [synthesize(lead, voice=voice),
                  recorded(bytes(2 * round(ECHO_GAP_S * pcm_audio.SAMPLE_RATE)), "gap")]
    parts.append(recorded(normalize(utterance.pcm), "echo", f"(your {seconds} seconds, played back)"))
    return join_speech(parts, f"reply ({mode})")
