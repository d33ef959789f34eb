"""A turn, planned tick by tick before it is played.

Planning a whole turn up front (packets encoded, sequence numbers assigned, audio cut into 40 ms
frames) keeps the real-time loop trivial — it only captures what the plan says at each deadline —
and makes fault injection a pure function over a list (see :func:`avatar_worker.modes.scripted.inject`).
A 20 s turn is 500 ticks of ~2.5 KB (motion + audio), nothing to worry about in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from avatarplayer.wire.motion import Compression, Flags, MotionPacket, encode_packet

from .audio.pcm import BYTES_PER_FRAME

__all__ = ["Emission", "Tick", "Turn", "TurnFrame", "build_turn", "idle_tick", "IDLE_PACKET"]

IDLE_PACKET = encode_packet(MotionPacket(Flags.IDLE, None, b""))
"""The heartbeat sent on every tick while the avatar is silent (flags 0x01, empty body)."""

TRANSITION_END_PACKET = encode_packet(MotionPacket(Flags.TRANSITION_END, None, b""))


@dataclass(frozen=True, slots=True)
class TurnFrame:
    """What a producer supplies for one 40 ms frame: the serialized ``Message`` and its audio."""

    message: bytes
    audio: bytes | None = None
    """1920 int16 samples (3840 bytes) of 48 kHz mono PCM; ``None`` is silence."""

    def __post_init__(self) -> None:
        if self.audio is not None and len(self.audio) != BYTES_PER_FRAME:
            raise ValueError(f"a frame's audio is {BYTES_PER_FRAME} bytes, got {len(self.audio)}")


@dataclass(frozen=True, slots=True)
class Emission:
    """One motion packet to put on the video track (or to log as deliberately not sent)."""

    packet: bytes
    kind: str
    """``frame``, ``idle``, ``transition``, ``transition_end``, ``reordered``, ``duplicate``, ``bad``."""
    flags: int
    seq: int | None = None
    offset: float = 0.0
    """Seconds after the tick's deadline. Extra packets (duplicates, bad ones) go mid-tick:
    WebRTC's encoder queue drops a frame when a newer one is already waiting, so two frames
    must never be captured at the same instant."""
    sent: bool = True
    """False: dropped on purpose (loss injection) — logged, never captured, on any carrier."""
    data_packet: bytes | None = None
    """The packet for the data carrier (docs/wire-format.md §3b) when it differs from ``packet``:
    frames always travel REDUNDANT there. ``None``: the same bytes as ``packet``."""
    msg_len: int | None = None
    """Length of the serialized ``Message`` the packet carries (frames and TRANSITION packets)."""
    msg_sha256: str | None = None
    """Hex SHA-256 of that ``Message`` (as the renderer gets it, after any decompression)."""

    @property
    def data_bytes(self) -> bytes:
        """What the data carrier sends for this emission."""
        return self.packet if self.data_packet is None else self.data_packet


@dataclass(frozen=True, slots=True)
class Tick:
    """Everything that leaves at one 40 ms deadline."""

    emissions: tuple[Emission, ...]
    audio: bytes | None = None
    """This tick's 40 ms of audio; ``None`` is silence."""


@dataclass(frozen=True, slots=True)
class Turn:
    """A planned turn: its ticks and the range of sequence numbers it uses."""

    ticks: tuple[Tick, ...]
    first_seq: int
    frames: int
    label: str = "turn"
    text: str | None = None
    """What the avatar says in this turn (for transcripts); ``None`` when unknown."""
    words: tuple[tuple[int, int], ...] = ()
    """Per word of :attr:`text`, in order: its first character and the 0-based frame of the turn
    at which it is heard (synthesized speech); empty when unknown."""

    @property
    def next_seq(self) -> int:
        """The first sequence number after this turn (sequence numbers continue across turns)."""
        return self.first_seq + self.frames

    def truncated(self, frames: int) -> Turn:
        """The turn cut off right after its first ``frames`` motion frames (no END, no
        TRANSITION_END): what a receiver sees from a worker that dies mid-turn."""
        out: list[Tick] = []
        seen = 0
        for tick in self.ticks:
            if seen >= frames:
                break
            out.append(tick)
            seen += sum(1 for e in tick.emissions if e.kind in ("frame", "reordered"))
        return replace(self, ticks=tuple(out), frames=min(frames, self.frames))


def idle_tick() -> Tick:
    """A silent tick carrying one IDLE heartbeat."""
    return Tick((Emission(IDLE_PACKET, "idle", int(Flags.IDLE)),))


def build_turn(
    frames: Sequence[TurnFrame],
    first_seq: int,
    *,
    transition: bool = True,
    redundant: bool = False,
    compression: Compression = None,
    label: str = "turn",
    text: str | None = None,
    words: Sequence[tuple[int, int]] = (),
) -> Turn:
    """Plan a turn: [TRANSITION], frames (START on the first, END on the last), TRANSITION_END.

    The TRANSITION packet carries the first frame's ``Message`` as the pose to blend into, and
    takes its own tick (silent), as does the closing TRANSITION_END. With ``redundant`` every
    frame packet also carries the two previous frames of the same turn. Either way every frame
    also gets a REDUNDANT variant for the data carrier (:attr:`Emission.data_bytes`).
    """
    if not frames:
        raise ValueError("a turn needs at least one frame")
    if first_seq < 0 or first_seq + len(frames) - 1 > 0xFFFFFFFF:
        raise ValueError(f"sequence numbers {first_seq}..{first_seq + len(frames) - 1} do not fit in u32")
    ticks: list[Tick] = []
    if transition:
        packet = encode_packet(MotionPacket(Flags.TRANSITION, None, frames[0].message), compression)
        ticks.append(Tick((Emission(packet, "transition", packet[0], msg_len=len(frames[0].message),
                                    msg_sha256=hashlib.sha256(frames[0].message).hexdigest()),)))
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        flags = Flags(0)
        if i == 0:
            flags |= Flags.START
        if i == last:
            flags |= Flags.END
        seq = first_seq + i
        previous = (frames[i - 1].message if i >= 1 else None, frames[i - 2].message if i >= 2 else None)
        with_previous = encode_packet(MotionPacket(flags | Flags.REDUNDANT, seq, frame.message, previous),
                                      compression)
        if redundant:
            packet, data_packet = with_previous, None
        else:
            packet, data_packet = encode_packet(MotionPacket(flags, seq, frame.message), compression), with_previous
        ticks.append(Tick((Emission(packet, "frame", packet[0], seq, data_packet=data_packet,
                                    msg_len=len(frame.message), msg_sha256=hashlib.sha256(frame.message).hexdigest()),),
                          frame.audio))
    ticks.append(Tick((Emission(TRANSITION_END_PACKET, "transition_end", int(Flags.TRANSITION_END)),)))
    return Turn(tuple(ticks), first_seq, len(frames), label, text, tuple(words))
