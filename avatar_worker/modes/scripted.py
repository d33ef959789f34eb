"""Scripted mode: deterministic frames with known payloads, and faults injected on purpose.

Tests and benchmarks run the worker with a script, then compare what the receiver got with what
was sent: every seq's payload is :func:`payload_for` (a real one-keyframe ``Message``), and the
send log records when each seq left, or that it was dropped on purpose.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from avatarplayer.constants import FRAME_INTERVAL_MS, FRAME_RATE
from avatarplayer.wire.messages import FLAME_FIELDS, build_message
from avatarplayer.wire.motion import Compression, Flags

from ..audio.pcm import click, tone
from ..motion_gen import Pose
from ..turns import Emission, Tick, Turn, TurnFrame, build_turn
from . import DriverOnly, log_turn

if TYPE_CHECKING:
    from ..config import WorkerConfig
    from ..transport.streamer import MotionStreamer

__all__ = [
    "Injection",
    "ScriptedMode",
    "payload_for",
    "scripted_pose",
    "scripted_frames",
    "is_pulse",
    "PULSE_EVERY",
    "plan_scripted_turn",
    "inject",
    "malformed_packet",
]

SCRIPT_TONE_HZ = 400.0
"""Audio of scripted frames: a quiet 400 Hz tone during turns (silence while idle), so a receiver
can find the start of a turn in the audio and compare it with the START motion frame."""

PULSE_EVERY = 25
"""With ``audio="pulse"`` the audio is silent but for a click at the very start of every frame
whose seq is a multiple of this (once a second): the A/V sync pulse. A receiver that times the
click's onset as heard and the renderer call of that seq's frame has measured the A/V offset."""


def is_pulse(seq: int) -> bool:
    """True for the frames whose audio starts with the sync click (``audio="pulse"``)."""
    return seq % PULSE_EVERY == 0


def scripted_pose(seq: int) -> Pose:
    """A plausible, smoothly varying FLAME pose that is a pure function of ``seq``.

    Each expression coefficient moves at its own frequency, so no two sequence numbers in any
    realistic run produce the same pose.
    """
    t = seq / FRAME_RATE
    pose: Pose = {}
    pose["translation"] = [0.0, 0.0, 0.0]
    pose["rotation"] = [0.03 * math.sin(1.3 * t), 0.05 * math.sin(0.7 * t), 0.015 * math.sin(0.9 * t)]
    pose["neck_pose"] = [0.01 * math.sin(1.1 * t), 0.02 * math.sin(0.5 * t), 0.0]
    pose["jaw_pose"] = [0.15 + 0.15 * math.sin(2 * math.pi * 2.1 * t), 0.0, 0.0]
    gaze_yaw = 0.08 * math.sin(0.4 * t)
    pose["eye_pose"] = [0.0, gaze_yaw, 0.0, 0.0, gaze_yaw, 0.0]
    blink = 1.0 if seq % 100 in (50, 51) else 0.0  # a two-frame blink every 4 s
    pose["eye_lid"] = [blink, blink]
    pose["expression"] = [0.3 * math.sin(0.05 * (k + 1) * seq + k) for k in range(FLAME_FIELDS["expression"])]
    return pose


def payload_for(seq: int) -> bytes:
    """The serialized ``Message`` (type 5, one keyframe, ~506 bytes) scripted for ``seq``."""
    if seq < 0:
        raise ValueError("seq must be >= 0")
    return build_message(scripted_pose(seq))


SCRIPT_AUDIO = ("tone", "silence", "pulse")


def scripted_frames(first_seq: int, count: int, *, audio: str = "tone") -> list[TurnFrame]:
    """``count`` frames with payloads for ``first_seq``...; ``audio`` is one of
    :data:`SCRIPT_AUDIO` (``pulse``: see :data:`PULSE_EVERY`)."""
    if audio not in SCRIPT_AUDIO:
        raise ValueError(f"audio must be one of {SCRIPT_AUDIO}, got {audio!r}")
    if audio == "pulse":
        pulse = click()
        return [TurnFrame(payload_for(seq), pulse if is_pulse(seq) else None)
                for seq in range(first_seq, first_seq + count)]
    pcm = tone(SCRIPT_TONE_HZ, 0.1) if audio == "tone" else None
    return [TurnFrame(payload_for(first_seq + i), pcm) for i in range(count)]


@dataclass(frozen=True)
class Injection:
    """Fault probabilities, each drawn independently per motion frame from one seeded RNG."""

    loss: float = 0.0
    """The frame is not sent at all."""
    reorder: float = 0.0
    """The frame swaps places with the next one."""
    duplicate: float = 0.0
    """The same packet is sent again half a tick later."""
    bad: float = 0.0
    """A malformed packet (in a valid carrier frame) is sent half a tick later."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate", "bad"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability within 0..1, got {value}")

    @property
    def active(self) -> bool:
        return any((self.loss, self.reorder, self.duplicate, self.bad))


def malformed_packet(rng: random.Random, seq: int = 0) -> bytes:
    """A byte string that ``avatarplayer.wire.motion.decode_packet`` must reject (one of several kinds)."""
    body = seq.to_bytes(4, "little") + b"\x08\x05"
    kind = rng.randrange(8)
    if kind == 0:  # shorter than a header
        return bytes([Flags.START, 0x10])
    if kind == 1:  # declares more body than there is
        return bytes([0]) + (200).to_bytes(4, "little") + body
    if kind == 2:  # trailing bytes after the declared body
        return bytes([0]) + (2).to_bytes(4, "little") + body
    if kind == 3:  # COMPRESSED, but neither gzip nor zlib
        junk = b"\x00\x01not-compressed"
        return bytes([Flags.COMPRESSED]) + len(junk).to_bytes(4, "little") + junk
    if kind == 4:  # a flag bit no version knows
        return bytes([0x80]) + len(body).to_bytes(4, "little") + body
    if kind == 5:  # IDLE together with START
        return bytes([Flags.IDLE | Flags.START]) + len(body).to_bytes(4, "little") + body
    if kind == 6:  # REDUNDANT whose inner length overruns the body
        inner = seq.to_bytes(4, "little") + (999).to_bytes(4, "little") + b"xx"
        return bytes([Flags.REDUNDANT]) + len(inner).to_bytes(4, "little") + inner
    # a sequenced packet too short to hold its sequence number
    return bytes([Flags.START]) + (2).to_bytes(4, "little") + b"\x01\x02"


def inject(turn: Turn, injection: Injection, rng: random.Random | None = None) -> Turn:
    """Apply ``injection`` to the motion frames of ``turn`` (control packets are left alone).

    Four numbers are drawn per frame whatever the probabilities, so turning one fault on does
    not change where the others land for the same seed. A reordered frame trades places (and
    tick) with the next frame; extras (duplicates, bad packets) go half a tick after the frame.
    """
    if not injection.active:
        return turn
    rng = rng or random.Random(injection.seed)
    ticks = list(turn.ticks)
    half = FRAME_INTERVAL_MS / 2000
    pairs: list[tuple[int, int]] = []
    taken: set[int] = set()
    frame_ticks = [i for i, t in enumerate(ticks) if _main_index(t) is not None]
    for position, i in enumerate(frame_ticks):
        p_loss, p_reorder, p_dup, p_bad = rng.random(), rng.random(), rng.random(), rng.random()
        bad_bytes = malformed_packet(rng)
        emissions = list(ticks[i].emissions)
        main = _main_index(ticks[i])
        assert main is not None
        original = emissions[main]
        if p_loss < injection.loss:
            emissions[main] = replace(original, sent=False)
        offset = half
        if p_dup < injection.duplicate:
            emissions.append(replace(original, kind="duplicate", offset=offset, sent=True))
            offset = half * 1.5
        if p_bad < injection.bad:
            emissions.append(Emission(bad_bytes, "bad", bad_bytes[0], None, offset))
        ticks[i] = replace(ticks[i], emissions=tuple(emissions))
        nxt = frame_ticks[position + 1] if position + 1 < len(frame_ticks) else None
        if p_reorder < injection.reorder and nxt == i + 1 and i not in taken:
            pairs.append((i, nxt))
            taken.update((i, nxt))
    for a, b in pairs:
        ea, eb = list(ticks[a].emissions), list(ticks[b].emissions)
        ma, mb = _main_index(ticks[a]), _main_index(ticks[b])
        assert ma is not None and mb is not None
        ea[ma], eb[mb] = replace(eb[mb], kind="reordered"), replace(ea[ma], kind="reordered")
        ticks[a] = replace(ticks[a], emissions=tuple(ea))
        ticks[b] = replace(ticks[b], emissions=tuple(eb))
    return replace(turn, ticks=tuple(ticks))


def _main_index(tick: Tick) -> int | None:
    """Index of the tick's motion frame emission, if it has one."""
    return next((k for k, e in enumerate(tick.emissions) if e.kind in ("frame", "reordered")), None)


def plan_scripted_turn(
    first_seq: int,
    frames: int,
    *,
    injection: Injection | None = None,
    rng: random.Random | None = None,
    transition: bool = True,
    redundant: bool = False,
    compression: Compression = None,
    audio: str = "tone",
    label: str = "script",
) -> Turn:
    """A scripted turn of ``frames`` frames from ``first_seq``, with faults injected if asked."""
    if frames < 1:
        raise ValueError("a scripted turn needs at least one frame")
    turn = build_turn(scripted_frames(first_seq, frames, audio=audio), first_seq, transition=transition,
                      redundant=redundant, compression=compression, label=label)
    if injection is not None and injection.active:
        turn = inject(turn, injection, rng)
    return turn


log = logging.getLogger("avatar_worker")  # run-level messages, as when app.py drove this mode


class ScriptedMode(DriverOnly):
    """The ``scripted`` mode runner: ``turns`` turns of ``frames`` scripted frames each, with the
    configured faults injected, and ``--leave-after`` cutting the last one short."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config

    async def drive(self, streamer: MotionStreamer, lead_in: Callable[[], Awaitable[None]]) -> str:
        """Play the script; ``"done"``, or ``"left"`` after a turn cut by ``--leave-after``."""
        config = self.config
        await lead_in()
        rng = random.Random(config.injection.seed)
        for k in range(config.turns):
            last = k == config.turns - 1
            first = streamer.next_seq
            frames = []
            for start in range(0, config.frames, 25):  # in slices: never hold the loop past a deadline
                frames += scripted_frames(first + start, min(25, config.frames - start), audio=config.script_audio)
                await asyncio.sleep(0)
            turn = build_turn(frames, first, transition=config.transition, redundant=config.redundant,
                              compression=config.compression, label=f"script-{k + 1}")
            if config.injection.active:
                turn = inject(turn, config.injection, rng)
            abort_after = last and config.leave_after is not None
            if abort_after:
                # dies mid-turn: no END (unless it was the last frame anyway), never a TRANSITION_END
                turn = turn.truncated(min(config.leave_after or 0, config.frames))
            result = await streamer.play(turn, abort_after=abort_after)
            log_turn(result)
            if abort_after:
                log.warning("leaving abruptly after %d frames of turn %d (--leave-after)", turn.frames, k + 1)
                return "left"
            if not last:
                await asyncio.sleep(config.turn_gap_ms / 1000)
        await asyncio.sleep(config.tail_ms / 1000)
        return "done"
