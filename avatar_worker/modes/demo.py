# Over 400 lines: DemoAgent is one state machine (listen, recognise, reply) whose parts share its state; the replies are in demo_replies.py.
"""Demo mode (``--mode demo``): a tiny voice agent that needs no cloud service.

- **Greeting.** When someone joins (any participant that is not an agent), the avatar greets
  them: ``--text`` (espeak-ng, with its words and phonemes: mouth shapes and word-by-word
  captions) or ``--wav``, by default :data:`GREETING`, synthesised in :meth:`DemoAgent.prepare`. The greeting waits until a viewer subscribed to the motion track (up
  to 10 s), and no longer: the player attaches its frame transform when the receiver is created,
  before the subscription completes, so there is no lead-in. Only a visitor who finds others in
  the room (``--rooms shared``) waits ``--lead-in-ms``: the SDK reports a track's first
  subscription only, so theirs has no signal. Someone who leaves and is back within :data:`REJOIN_GRACE_S` (a network blip)
  is not greeted again, nor is anyone already greeted when the worker itself rejoins.
- **Listening.** The worker subscribes to the microphone of every participant that is not an
  agent (so never to its own audio, nor another avatar's) and runs a
  :class:`avatar_worker.audio.vad.VoiceActivityDetector` per track (``--vad-start-ms``,
  ``--vad-end-ms``, ``--max-utterance-s``).
- **Recognising** (``--asr``, :mod:`avatar_worker.asr`, in a thread of its own, never on the
  event loop). While the user speaks, the utterance so far is recognised about every
  :data:`PARTIAL_EVERY_S` of speech and sent as a partial ``transcript_chunk`` (role ``user``,
  ``final: false``); once :data:`SPECULATE_AFTER_MS` of silence followed the last voiced block,
  the utterance is recognised as it will end, so the words are usually ready when the detector
  decides it is over (``--vad-end-ms`` later). A user chunk holds the whole text heard so far:
  each one replaces the previous (unlike the agent's pieces, which add up). With ``--asr none``
  the text is the utterance's length, ``"(2.3 s of speech)"``.
- **Replying.** For each utterance: ``agent_status`` ``thinking``, the user's final
  ``transcript_chunk``, then a reply turn (``--reply``):

  - ``policy`` (default): the answer of :class:`avatar_worker.dialogue.DialoguePolicy` to the
    recognised words (greeting, name, time, what it can do, goodbye; otherwise it repeats what
    it understood, or says it did not understand); its fixed sentences are synthesised in
    :meth:`DemoAgent.prepare`;
  - ``echo``: the user's own recorded utterance played back (level-normalized), the jaw moving
    with its envelope like any speech;
  - ``speak``: a short espeak-ng sentence from a small rotating set (:data:`SPEAK_REPLIES`),
    e.g. "You spoke for 2.3 seconds.";
  - ``both`` (default): a short spoken lead-in (:data:`LEAD_INS`), then the echo.

  The reply turn brings ``speaking``, the agent's ``transcript_chunk`` pieces and ``listening``
  (:class:`avatar_worker.agent_data.AgentMessages`).
- **Turn taking.** An utterance that ends while the avatar is thinking or speaking (greeting
  included) is not answered. **Barge-in** (``--barge-in-ms``, default 500, 0 turns it off): a
  user who starts speaking while the avatar thinks or speaks and goes on for that long stops it —
  the reply is dropped (or the turn interrupted: TRANSITION_END, an empty final transcript piece,
  ``listening``), and that utterance is answered when it ends.

Data messages (reliable JSON, topic ``avatarplayer.agent``; see :mod:`avatar_worker.agent_data`)::

    {"type": "transcript_chunk", "data": {"role": "user", "text": "What time",
                                          "utterance": 1, "final": false}}    # while speaking
    {"type": "agent_status", "data": {"status": "thinking"}}                   # speech ended
    {"type": "transcript_chunk", "data": {"role": "user", "text": "What time is it?",
                                          "utterance": 1, "final": true}}
    {"type": "agent_status", "data": {"status": "speaking"}}           # the reply turn starts
    {"type": "transcript_chunk", "data": {"role": "agent", "text": ..., "turn": 2, "final": ...}}
    {"type": "agent_status", "data": {"status": "listening"}}          # it is over

``utterance`` counts the user's transcript lines from 1 (an utterance gets its number with its
first chunk); ``turn`` counts the worker's turns (the greeting is turn 1).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..asr import Recognition, Recognizer, shared_recognizer
from ..audio import pcm as pcm_audio
from ..dialogue import DialoguePolicy
from ..agent_data import AGENT_TOPIC, AgentMessages, agent_status, user_transcript_chunk
from ..config import WorkerConfig
from ..transport.messaging import MessageSender
from ..motion_gen import MotionGenerator
from .demo_replies import LEAD_INS, SPEAK_REPLIES, ReplyMode, compose_reply, normalize, policy_reply, spoken_for
from .speech import Speech, load_speech, plan_speech_turn, speak
from ..audio.vad import Utterance, VadSettings, VoiceActivityDetector

if TYPE_CHECKING:
    from livekit import rtc

    from ..transport.publisher import Publisher
    from ..transport.streamer import MotionStreamer, TurnResult

__all__ = ["GREETING", "LEAD_INS", "SPEAK_REPLIES", "DemoAgent", "compose_reply", "normalize", "policy_reply"]

log = logging.getLogger("avatar_worker.demo")  # the name it always logged under (serve.py, tests filter on it)

GREETING = "Hello! I'm the avatarplayer demo. Say something and I will answer."
REJOIN_GRACE_S = 3.0
"""Someone back within this time after leaving (a network blip) is not greeted again."""
STALE_S = 5.0
"""An utterance still waiting this long after it ended is dropped (the moment has passed)."""
PARTIAL_EVERY_S = 1.0
"""Speech between two partial recognitions of an utterance under way."""
SPECULATE_AFTER_MS = 150
"""Silence after the last voiced block before the utterance is recognised ahead of its end."""


@functools.lru_cache(maxsize=64)
def synthesized(text: str, voice: str | None) -> Speech:
    """``text`` spoken by espeak-ng, with its words and phonemes, once per process: the greeting
    and the policy's fixed replies are ready before anyone joins (a dispatched worker makes them
    in its idle processes, :func:`prewarm`). Blocking."""
    return speak(text, voice=voice)


def greeting_speech(config: WorkerConfig) -> Speech:
    """The greeting of ``config``: its ``--wav`` (read each time), else ``--text`` or
    :data:`GREETING` (synthesised once per process). Blocking."""
    if config.wav is not None:
        return load_speech(wav=config.wav)
    return synthesized(config.text or GREETING, config.voice)


def prewarm(config: WorkerConfig) -> None:
    """Load what a session of ``config`` needs before a visitor comes (a dispatched worker's idle
    processes): the recogniser, the greeting and the fixed replies. Blocking."""
    if config.asr != "none":
        shared_recognizer(config.asr)
    greeting_speech(config)
    if config.reply == "policy":
        for reply in DialoguePolicy.fixed_replies():
            synthesized(reply, config.voice)


# ------------------------------------------------------------------------------ the agent


@dataclass
class _Listener:
    """One remote microphone track being listened to."""

    identity: str
    sid: str
    vad: VoiceActivityDetector
    task: asyncio.Task[None] | None = None
    started_at: float | None = None
    """time.monotonic() when its current utterance started (None outside one)."""
    barged: bool = False
    """Its current utterance interrupted the avatar: answer it even if the avatar is busy."""
    number: int | None = None
    """The transcript number of its current utterance, once a chunk of it was sent."""
    partial_at_s: float = 0.0
    """Voiced time of the current utterance when its last partial recognition started."""
    partial_text: str = ""
    recognizing: bool = False
    """A partial or ahead-of-time recognition of it is queued or running."""
    guess: tuple[float, asyncio.Future[Recognition]] | None = None
    """The current utterance recognised ahead: (its ``end_s`` then, the recognition)."""


@dataclass
class _Heard:
    identity: str
    utterance: Utterance
    ended_wall: float
    """time.time() when the detector decided it was over."""
    queued_at: float = field(default_factory=time.monotonic)
    number: int | None = None
    """The transcript number its partial chunks had."""
    recognition: asyncio.Future[Recognition] | None = None
    """Its recognition (started ahead, or when it ended); None without a recogniser."""
    announced: bool = False
    """``thinking`` was sent when it ended."""


class DemoAgent:
    """The ``demo`` mode: a :class:`avatar_worker.modes.ModeRunner` and a publisher room hook."""

    def __init__(self, config: WorkerConfig, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, recognizer: Recognizer | None = None) -> None:
        self.config = config
        self.reply_mode: ReplyMode = config.reply
        self.vad_settings = VadSettings(start_ms=config.vad_start_ms, end_ms=config.vad_end_ms,
                                        max_utterance_ms=round(config.max_utterance_s * 1000),
                                        tail_ms=min(200, config.vad_end_ms))
        self.barge_in_s = config.barge_in_ms / 1000
        self._clock = clock
        self._wall = wall_clock
        self.greeting: Speech | None = None
        self.recognizer = recognizer
        """Loaded from :meth:`prepare` on (``--asr``) unless given."""
        self.asr_on = recognizer is not None or (config.asr != "none" and config.mode == "demo")
        """Utterances are recognised (the recogniser may still be loading: recognitions queue
        behind the load in the recogniser's thread)."""
        self.policy = DialoguePolicy(clock=wall_clock)
        self._speech_cache: dict[str, Speech] = {}
        """The policy's fixed replies, synthesised in :meth:`prepare`."""
        self._asr_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="demo-asr")
        self._transcripts = 0
        self.publisher: Publisher | None = None
        self.messages: MessageSender | None = None
        self.streamer: MotionStreamer | None = None
        self.generator = MotionGenerator(config.seed)
        self.listeners: dict[str, _Listener] = {}
        """track sid → listener"""
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._greeting_tasks: dict[str, asyncio.Task[None]] = {}
        self._greeted: set[str] = set()
        self._left: dict[str, float] = {}
        self._busy_since: float | None = None
        """time.monotonic() when the avatar started thinking or speaking; None while listening."""
        self._speaking = False
        self._cancelled = False
        self.stats = {"greetings": 0, "speech_starts": 0, "utterances": 0, "replies": 0, "ignored": 0,
                      "barge_ins": 0, "stale": 0, "partials": 0, "recognitions": 0, "guesses_used": 0}
        self.recognition_ms: list[float] = []
        """Per recognition of a whole utterance (the last 100), in the recogniser's thread."""
        self.reply_latency_ms: list[float] = []
        """Per reply (the last 100): from the end of the user's speech to the reply turn's first tick."""

    # ---------------------------------------------------------------------- ModeRunner

    async def prepare(self) -> None:
        """Before joining: load or synthesize the greeting (raises on a bad file). The recogniser
        loads and the policy's fixed replies are synthesised in the recogniser's thread while the
        worker joins (recognitions queue behind them)."""
        config = self.config
        loop = asyncio.get_running_loop()
        if self.recognizer is None and self.asr_on:
            loop.run_in_executor(self._asr_pool, self._load_recognizer)
        if self.reply_mode == "policy":
            loop.run_in_executor(self._asr_pool, self._synthesize_fixed_replies)
        self.greeting = await asyncio.to_thread(greeting_speech, config)
        log.info("demo: greeting %s, %.2f s; replies: %s; recogniser: %s; VAD start %d ms, end %d ms, max %.1f s; "
                 "barge-in %s", self.greeting.source, self.greeting.duration_s, self.reply_mode, config.asr,
                 config.vad_start_ms, config.vad_end_ms, config.max_utterance_s,
                 f"after {config.barge_in_ms} ms" if config.barge_in_ms else "off")

    def _load_recognizer(self) -> None:
        started = time.perf_counter()
        try:
            self.recognizer = shared_recognizer(self.config.asr)
        except Exception:
            log.exception("demo: the %s recogniser did not load; answering without recognition", self.config.asr)
            self.asr_on = False
            return
        log.info("demo: %s recogniser ready after %.2f s", self.config.asr, time.perf_counter() - started)

    def _synthesize_fixed_replies(self) -> None:
        try:
            for reply in self.policy.fixed_replies():
                self._speech_cache[reply] = synthesized(reply, self.config.voice)
        except pcm_audio.AudioError as exc:
            log.error("demo: could not synthesise the fixed replies ahead: %s", exc)  # then each when needed

    def _transcribe(self, pcm: bytes) -> Recognition:
        """In the recogniser's thread, behind the load."""
        if self.recognizer is None:
            raise RuntimeError("no recogniser")
        return self.recognizer.transcribe(pcm, pcm_audio.SAMPLE_RATE)

    def install(self, publisher: Publisher, messages: MessageSender, observers: list[Any]) -> None:
        """Hook into every room (remote audio), and add the agent messages as a turn observer."""
        self.publisher = publisher
        self.messages = messages
        publisher.hooks.append(self)
        if not any(isinstance(observer, AgentMessages) for observer in observers):
            observers.append(AgentMessages(messages))  # --agent-data already added one

    async def drive(self, streamer: MotionStreamer, lead_in: Callable[[], Awaitable[None]]) -> str:
        """Greet and answer until stopped (or ``--max-replies`` replies: ``"done"``)."""
        self.streamer = streamer
        while True:
            kind, item = await self.events.get()
            if kind == "greet":
                await self._greet(item)
            elif kind == "utterance":
                if self._clock() - item.queued_at > STALE_S:
                    self.stats["stale"] += 1
                    continue
                await self._reply(item)
                if self.config.max_replies is not None and self.stats["replies"] >= self.config.max_replies:
                    log.info("demo: %d replies given (--max-replies)", self.stats["replies"])
                    await asyncio.sleep(self.config.tail_ms / 1000)
                    return "done"

    def summary(self) -> dict[str, Any]:
        """Extra summary keys of demo mode."""
        return {"demo": {**self.stats, "reply_latency_ms": self.reply_latency_ms,
                         "recognition_ms": self.recognition_ms}}

    async def close(self) -> None:
        """Stop listening and release the tasks."""
        tasks = [*self._greeting_tasks.values(), *(l.task for l in self.listeners.values() if l.task)]
        self._greeting_tasks.clear()
        self.listeners.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._asr_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------ room hook

    def attach(self, room: rtc.Room) -> None:
        from livekit import rtc

        @room.on("participant_connected")
        def _connected(participant: rtc.RemoteParticipant) -> None:
            self.arrived(participant.identity, _is_agent(participant))

        @room.on("participant_disconnected")
        def _disconnected(participant: rtc.RemoteParticipant) -> None:
            self.departed(participant.identity)

        @room.on("track_published")
        def _published(publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant) -> None:
            if _wanted(publication, participant):
                publication.set_subscribed(True)

        @room.on("track_subscribed")
        def _subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                        participant: rtc.RemoteParticipant) -> None:
            if _wanted(publication, participant) and track.sid not in self.listeners:
                listener = self.listen(participant.identity, track.sid)
                listener.task = asyncio.get_running_loop().create_task(self._read(listener, track),
                                                                       name=f"demo-ears-{track.sid}")

        @room.on("track_unsubscribed")
        def _unsubscribed(track: rtc.Track | None, publication: rtc.RemoteTrackPublication,
                          participant: rtc.RemoteParticipant) -> None:
            self.unlisten(publication.sid)

        @room.on("disconnected")
        def _gone(*_: Any) -> None:
            for sid in list(self.listeners):
                self.unlisten(sid)

    def joined(self, room: rtc.Room) -> None:
        for participant in room.remote_participants.values():
            if participant.identity not in self._greeted:
                self.arrived(participant.identity, _is_agent(participant))
            for publication in participant.track_publications.values():
                if _wanted(publication, participant) and not publication.subscribed:
                    publication.set_subscribed(True)

    # ------------------------------------------------------------------------ greetings

    def arrived(self, identity: str, is_agent: bool = False) -> None:
        """``identity`` is in the room: greet it (unless it is an agent or just had a blip)."""
        if is_agent:
            return
        left = self._left.pop(identity, None)
        if left is not None and self._clock() - left < REJOIN_GRACE_S and identity in self._greeted:
            log.info("demo: %r is back after a blip; no second greeting", identity)
            return
        if identity not in self._greeting_tasks:
            self._greeting_tasks[identity] = asyncio.get_running_loop().create_task(
                self._greet_when_ready(identity), name=f"demo-greet-{identity}")

    def departed(self, identity: str) -> None:
        self._left[identity] = self._clock()
        task = self._greeting_tasks.pop(identity, None)
        if task is not None:
            task.cancel()

    async def _greet_when_ready(self, identity: str) -> None:
        try:
            if self.publisher is not None:
                company = [p for p in self.publisher.other_participants()
                           if p.identity != identity and not _is_agent(p)]
                await self.publisher.wait_for_viewer()  # the first viewer's subscription, <= 10 s
                if company:
                    # a shared room: the track was subscribed before, and the SDK reports only a
                    # track's first subscription, so this visitor's has no signal: the lead-in
                    await asyncio.sleep(self.config.lead_in_ms / 1000)
            self.events.put_nowait(("greet", identity))
        finally:
            if self._greeting_tasks.get(identity) is asyncio.current_task():
                del self._greeting_tasks[identity]

    async def _greet(self, identity: str) -> None:
        if self.publisher is not None and identity not in self.publisher.other_identities():
            return  # gone meanwhile
        assert self.greeting is not None, "prepare() first"
        self._greeted.add(identity)
        self.stats["greetings"] += 1
        log.info("demo: greeting %r", identity)
        self._busy()
        try:
            await self._play(self.greeting, f"greeting-{self.stats['greetings']}")
        finally:
            self._idle()

    # ------------------------------------------------------------------------ listening

    def listen(self, identity: str, sid: str) -> _Listener:
        """Start listening to track ``sid`` of ``identity`` (the caller feeds it with :meth:`hear`)."""
        listener = _Listener(identity, sid, VoiceActivityDetector(self.vad_settings))
        self.listeners[sid] = listener
        log.info("demo: listening to %r (track %s)", identity, sid)
        return listener

    def unlisten(self, sid: str) -> None:
        listener = self.listeners.pop(sid, None)
        if listener is None:
            return
        if listener.task is not None:
            listener.task.cancel()
        log.info("demo: stopped listening to %r (track %s)", listener.identity, sid)

    async def _read(self, listener: _Listener, track: rtc.Track) -> None:
        from livekit import rtc

        stream = rtc.AudioStream(track, sample_rate=pcm_audio.SAMPLE_RATE, num_channels=1)
        try:
            async for event in stream:
                self.hear(listener, event.frame.data)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("demo: reading track %s failed", listener.sid)
        finally:
            await asyncio.shield(stream.aclose())

    def hear(self, listener: _Listener, pcm: bytes | memoryview) -> None:
        """Feed ``listener``'s detector; act on utterances and barge-ins."""
        for event in listener.vad.feed(pcm):
            if event.kind == "start":
                listener.started_at = self._clock()
                listener.barged = False
                listener.number, listener.partial_at_s, listener.partial_text = None, 0.0, ""
                listener.guess = None
                self.stats["speech_starts"] += 1
                log.info("demo: %r started speaking", listener.identity)
            else:
                self._utterance_ended(listener, event)
        if self._barge_in_due(listener):
            self._barge_in(listener)
        if self.asr_on and listener.vad.in_speech and not listener.recognizing:
            self._recognize_ahead(listener)

    # ---------------------------------------------------------------------- recognising

    def _answerable(self, listener: _Listener) -> bool:
        return self._busy_since is None or listener.barged

    def _recognize_ahead(self, listener: _Listener) -> None:
        """While ``listener`` speaks: a partial every :data:`PARTIAL_EVERY_S` of speech, and the
        whole utterance once its silence began (it is usually over by then)."""
        vad = listener.vad
        current = vad.current()
        if current is None or not self._answerable(listener):
            return
        pcm, end_s = current
        if vad.silent_s * 1000 >= SPECULATE_AFTER_MS:
            if listener.guess is None or listener.guess[0] != end_s:
                listener.guess = (end_s, self._recognize(listener, pcm))
        elif vad.silent_s == 0 and vad.voiced_s - listener.partial_at_s >= PARTIAL_EVERY_S:
            listener.partial_at_s = vad.voiced_s
            future = self._recognize(listener, pcm)
            heard_as = vad.utterances
            future.add_done_callback(lambda done: self._partial(listener, heard_as, done))

    def _recognize(self, listener: _Listener | None, pcm: bytes) -> asyncio.Future[Recognition]:
        future = asyncio.get_running_loop().run_in_executor(self._asr_pool, self._transcribe, pcm)
        if listener is not None:
            listener.recognizing = True

            def _done(_: Any) -> None:
                listener.recognizing = False

            future.add_done_callback(_done)
        return future

    def _partial(self, listener: _Listener, utterance: int, done: asyncio.Future[Recognition]) -> None:
        if (done.cancelled() or done.exception() is not None or not listener.vad.in_speech
                or listener.vad.utterances != utterance):
            return  # the utterance ended meanwhile: its final chunk says it all
        text = done.result().text
        if not text or text == listener.partial_text:
            return
        if listener.number is None:
            self._transcripts += 1
            listener.number = self._transcripts
        listener.partial_text = text
        self.stats["partials"] += 1
        self._send(user_transcript_chunk(text, listener.number, final=False))

    def _barge_in_due(self, listener: _Listener) -> bool:
        return (self.barge_in_s > 0 and self._busy_since is not None and not listener.barged
                and listener.vad.in_speech and listener.started_at is not None
                and listener.started_at >= self._busy_since and listener.vad.voiced_s >= self.barge_in_s)

    def _barge_in(self, listener: _Listener) -> None:
        listener.barged = True
        self._cancelled = True
        self.stats["barge_ins"] += 1
        log.info("demo: %r speaks over the avatar: stopping the %s", listener.identity,
                 "turn" if self._speaking else "reply")
        if self._speaking and self.streamer is not None:
            self.streamer.interrupt()

    def _utterance_ended(self, listener: _Listener, utterance: Utterance) -> None:
        listener.started_at = None
        barged, listener.barged = listener.barged, False
        number, listener.number = listener.number, None
        guess, listener.guess = listener.guess, None
        log.info("demo: %r spoke %.2f s (%s)", listener.identity, utterance.duration_s, utterance.reason)
        if self._busy_since is not None and not barged:
            self.stats["ignored"] += 1
            log.info("demo: not answering: the avatar is %s", "speaking" if self._speaking else "thinking")
            if number is not None:  # its partial line stays, closed
                self._send(user_transcript_chunk(listener.partial_text, number, final=True))
            return
        recognition = None
        if self.asr_on:
            if guess is not None and guess[0] == utterance.end_s:
                recognition = guess[1]
                self.stats["guesses_used"] += 1
            else:
                if guess is not None:
                    guess[1].cancel()
                recognition = self._recognize(None, utterance.pcm)
        announced = self._busy_since is None and self.events.empty()
        if announced:
            self._send(agent_status("thinking"))  # at once: the user sees they were heard
        self.events.put_nowait(("utterance", _Heard(listener.identity, utterance, self._wall(),
                                                    queued_at=self._clock(), number=number,
                                                    recognition=recognition, announced=announced)))

    # ------------------------------------------------------------------------- replying

    def _busy(self) -> None:
        self._busy_since = self._clock()
        self._cancelled = False

    def _idle(self) -> None:
        self._busy_since = None
        self._speaking = False

    def _send(self, message: dict[str, Any]) -> None:
        if self.messages is not None:
            self.messages.send(message, topic=AGENT_TOPIC)

    async def _heard_text(self, heard: _Heard) -> str | None:
        """What the recogniser made of ``heard`` (None without one, or if it failed)."""
        if heard.recognition is None:
            return None
        try:
            recognition = await heard.recognition
        except Exception:
            log.exception("demo: speech recognition failed")
            return None
        self.stats["recognitions"] += 1
        self.recognition_ms.append(round(recognition.seconds * 1000, 1))
        del self.recognition_ms[:-100]
        log.info("demo: heard %r (%.0f ms of recognition for %.1f s of audio)", recognition.text,
                 recognition.seconds * 1000, recognition.audio_s)
        return recognition.text

    async def _reply(self, heard: _Heard) -> None:
        utterance = heard.utterance
        index = self.stats["utterances"]
        self.stats["utterances"] += 1
        if not heard.announced:
            self._send(agent_status("thinking"))
        self._busy()
        try:
            text = await self._heard_text(heard)
            number = heard.number
            if number is None:
                self._transcripts += 1
                number = self._transcripts
            shown = f"({spoken_for(utterance)} s of speech)" if text is None else \
                text or f"({spoken_for(utterance)} s, no words recognised)"
            self._send(user_transcript_chunk(shown, number))
            try:
                if self.reply_mode == "policy":
                    speech = await asyncio.to_thread(policy_reply, text or "", self.policy, voice=self.config.voice,
                                                     cache=self._speech_cache)
                else:
                    speech = await asyncio.to_thread(compose_reply, utterance, self.reply_mode, index,
                                                     voice=self.config.voice)
            except pcm_audio.AudioError as exc:
                log.error("demo: could not compose a reply: %s", exc)
                self._send(agent_status("listening"))
                return
            result = await self._play(speech, f"reply-{index + 1}")
            if result is None:
                self._send(agent_status("listening"))  # dropped before it started: no turn said so
                return
            # the user stopped speaking this long before the detector said so
            stopped = heard.ended_wall - (utterance.at_s - utterance.end_s)
            self.reply_latency_ms.append(round((result.started_at - stopped) * 1000, 1))
            del self.reply_latency_ms[:-100]  # a long-running demo keeps the last 100
            log.info("demo: reply %d started %.0f ms after %r stopped speaking", index + 1,
                     self.reply_latency_ms[-1], heard.identity)
            if result.completed:
                self.stats["replies"] += 1
        finally:
            self._idle()

    async def _play(self, speech: Speech, label: str) -> TurnResult | None:
        """Plan ``speech`` as a turn and play it; None if a barge-in came before its first tick."""
        streamer = self.streamer
        assert streamer is not None
        config = self.config
        turn = await plan_speech_turn(speech, self.generator, streamer.next_seq, req_id=label,
                                      avatar_id=config.avatar_id, transition=config.transition,
                                      redundant=config.redundant, compression=config.compression)
        if self._cancelled:
            return None
        self._speaking = True
        started = streamer.stats.turns_started
        result = await streamer.play(turn)
        if streamer.stats.turns_started == started:
            return None  # interrupted while queued: no observer heard of it
        log.info("turn %s: seq %d..%d (%d frames) %s in %.2f s", result.label, result.first_seq,
                 result.first_seq + result.frames - 1, result.frames,
                 "completed" if result.completed else "interrupted", result.ended_at - result.started_at)
        return result


def _is_agent(participant: Any) -> bool:
    from livekit import rtc

    return participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


def _wanted(publication: Any, participant: Any) -> bool:
    """A microphone-like audio track of someone who is not an agent."""
    from livekit import rtc

    return (publication.kind == rtc.TrackKind.KIND_AUDIO and not _is_agent(participant)
            and publication.source != rtc.TrackSource.SOURCE_SCREENSHARE_AUDIO)

