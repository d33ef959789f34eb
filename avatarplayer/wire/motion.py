"""Motion packets and VP8 carrier frames (``docs/wire-format.md`` §2 and §3a).

A *motion packet* is a small envelope around one serialized protobuf ``Message``::

    packet = flags:u8 | length:u32 LE | body[length]

and a *carrier frame* is how a packet rides inside an encoded VP8 video frame::

    frame = vp8_prefix | packet | packet_length:u32 LE | b"AVMF"

Decoding is total: :func:`decode_packet` and :func:`unwrap_frame` either return a value or raise
:class:`PacketError` (a ``ValueError`` with a machine-readable ``reason``), whatever bytes they
are given. The player counts such packets as malformed and skips them.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Literal

from ..constants import CARRIER_MAGIC, LIVEKIT_TRAILER_MAGIC, MAX_PACKET_BODY

__all__ = [
    "Flags",
    "MotionPacket",
    "PacketError",
    "Reason",
    "decode_packet",
    "encode_packet",
    "wrap_frame",
    "unwrap_frame",
    "VP8_KEYFRAME_PREFIX",
    "HEADER_SIZE",
]

HEADER_SIZE = 5
_U32 = struct.Struct("<I")
_HEADER = struct.Struct("<BI")
_TRAILER_SIZE = 4 + len(CARRIER_MAGIC)
_SEQ_MAX = 0xFFFFFFFF

Compression = Literal["gzip", "zlib"] | None


class Flags(enum.IntFlag):
    """Packet flags (docs/wire-format.md §2)."""

    IDLE = 0x01
    """The avatar is idle; a heartbeat. The body, if any, is opaque."""
    START = 0x02
    """First frame of a turn."""
    END = 0x04
    """Last frame of a turn."""
    COMPRESSED = 0x08
    """The body is gzip- or zlib-compressed."""
    TRANSITION = 0x10
    """Blend from idle into the pose in this packet (no sequence number)."""
    TRANSITION_END = 0x20
    """The turn is over: blend back to idle (no sequence number)."""
    REDUNDANT = 0x40
    """The body also carries the two previous frames, for loss recovery."""


_KNOWN_FLAGS = 0x7F
_CONTROL = Flags.TRANSITION | Flags.TRANSITION_END
_SEQUENCED_ONLY = Flags.START | Flags.END | Flags.REDUNDANT
_NOT_SEQUENCED = int(_CONTROL | Flags.IDLE)


class Reason(enum.StrEnum):
    """Why a byte string was rejected. Stable strings: they appear in counters and logs."""

    TRUNCATED = "truncated"
    """Fewer bytes than a header, a declared length or a sequence number needs."""
    LENGTH_MISMATCH = "length-mismatch"
    """Bytes left over after the declared body."""
    BAD_COMPRESSION = "bad-compression"
    """Not gzip or zlib, corrupt, cut short, or followed by garbage."""
    TOO_LARGE = "too-large"
    """Body over the size cap, before or after decompression."""
    BAD_LAYOUT = "bad-layout"
    """A redundant body whose inner lengths do not add up."""
    CONFLICTING_FLAGS = "conflicting-flags"
    """Flags that ask for two different body layouts (e.g. TRANSITION with a sequence number)."""
    UNKNOWN_FLAGS = "unknown-flags"
    """A flag bit this version does not know (a future layout)."""
    BAD_TRAILER = "bad-trailer"
    """A carrier frame ends with our magic but its length field points outside the frame."""


class PacketError(ValueError):
    """A motion packet or carrier frame that cannot be decoded. ``reason`` says why."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = Reason(reason)
        super().__init__(f"{self.reason.value}: {detail}" if detail else self.reason.value)


@dataclass(frozen=True, slots=True)
class MotionPacket:
    """One decoded motion packet.

    ``seq`` is present exactly for sequenced packets (normal, START, END, REDUNDANT) and ``None``
    for IDLE, TRANSITION and TRANSITION_END. ``message`` is the serialized protobuf ``Message``
    (opaque to the player). ``previous`` holds, for REDUNDANT packets only, the frames of
    ``seq - 1`` and ``seq - 2`` (``None`` where the producer had none).
    """

    flags: Flags
    seq: int | None
    message: bytes
    previous: tuple[bytes | None, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", Flags(self.flags))
        _check_flags(int(self.flags), ValueError)
        if self.sequenced:
            if self.seq is None or not 0 <= self.seq <= _SEQ_MAX:
                raise ValueError(f"seq must be an int in 0..2**32-1 for flags {self.flags!r}, got {self.seq!r}")
        elif self.seq is not None:
            raise ValueError(f"flags {self.flags!r} carry no sequence number, got seq={self.seq!r}")
        if not isinstance(self.message, bytes):
            raise TypeError(f"message must be bytes, got {type(self.message).__name__}")
        if Flags.REDUNDANT in self.flags:
            if len(self.previous) != 2:
                raise ValueError("a REDUNDANT packet carries exactly two previous frames (None where absent)")
            if any(p is not None and not isinstance(p, bytes) for p in self.previous):
                raise TypeError("previous frames must be bytes or None")
            # a length of 0 on the wire means "absent": one spelling for it
            object.__setattr__(self, "previous", tuple(p or None for p in self.previous))
        elif self.previous:
            raise ValueError("previous frames need the REDUNDANT flag")

    @property
    def sequenced(self) -> bool:
        """True for packets that carry a sequence number and a frame to render."""
        return not int(self.flags) & _NOT_SEQUENCED

    def recovered(self) -> list[tuple[int, bytes]]:
        """``(seq, message)`` of the earlier frames a REDUNDANT packet carries, oldest first."""
        if not self.previous or self.seq is None:
            return []
        return [
            (self.seq - back, self.previous[back - 1])  # type: ignore[misc]
            for back in (2, 1)
            if self.previous[back - 1] is not None and self.seq >= back
        ]


def _flag_problem(flags: int) -> tuple[Reason, str] | None:
    if flags & ~_KNOWN_FLAGS:
        return Reason.UNKNOWN_FLAGS, f"0x{flags:02x}"
    if flags & Flags.TRANSITION and flags & Flags.TRANSITION_END:
        return Reason.CONFLICTING_FLAGS, "TRANSITION with TRANSITION_END"
    if flags & (_CONTROL | Flags.IDLE) and flags & _SEQUENCED_ONLY:
        return Reason.CONFLICTING_FLAGS, f"0x{flags:02x}: a control/idle flag with a sequenced one"
    if flags & Flags.IDLE and flags & _CONTROL:
        return Reason.CONFLICTING_FLAGS, "IDLE with a TRANSITION flag"
    return None


# Every flag byte, judged once at import: decoding looks its byte up instead of doing IntFlag
# arithmetic per packet (the hot path in Pyodide). Entry: (Flags, layout) or (Reason, detail).
_SEQUENCED, _REDUNDANT_LAYOUT, _UNSEQUENCED = 0, 1, 2
_BY_BYTE: list[tuple] = []
for _value in range(256):
    _problem = _flag_problem(_value)
    if _problem is not None:
        _BY_BYTE.append((None, *_problem))
    else:
        _layout = (_UNSEQUENCED if _value & (_CONTROL | Flags.IDLE)
                   else _REDUNDANT_LAYOUT if _value & Flags.REDUNDANT else _SEQUENCED)
        _BY_BYTE.append((Flags(_value), _layout, bool(_value & Flags.COMPRESSED)))


def _check_flags(flags: int, error: type[Exception]) -> None:
    problem = _flag_problem(flags)
    if problem is not None:
        reason, detail = problem
        raise PacketError(reason, detail) if error is PacketError else error(f"{reason.value}: {detail}")


# --------------------------------------------------------------------------------------- encode


def encode_packet(packet: MotionPacket, compression: Compression = None) -> bytes:
    """Serialize ``packet``; ``compression`` "gzip" or "zlib" sets COMPRESSED and packs the body.

    gzip output is the same on every platform (see :func:`gzip_compress`).
    """
    if packet.flags & Flags.REDUNDANT:
        cur_prev = (packet.message, *(p or b"" for p in packet.previous))
        body = _U32.pack(packet.seq) + b"".join(_U32.pack(len(part)) + part for part in cur_prev)
    elif packet.sequenced:
        body = _U32.pack(packet.seq) + packet.message
    else:
        body = packet.message
    flags = int(packet.flags) & ~Flags.COMPRESSED
    if compression == "gzip":
        body, flags = gzip_compress(body), flags | Flags.COMPRESSED
    elif compression == "zlib":
        body, flags = zlib.compress(body), flags | Flags.COMPRESSED
    elif compression is not None:
        raise ValueError(f"compression must be None, 'gzip' or 'zlib', got {compression!r}")
    elif packet.flags & Flags.COMPRESSED:
        raise ValueError("packet has COMPRESSED set: pass compression='gzip' or 'zlib'")
    if len(body) > MAX_PACKET_BODY:
        raise ValueError(f"packet body of {len(body)} bytes is over the {MAX_PACKET_BODY}-byte cap")
    return _HEADER.pack(flags, len(body)) + body


_GZIP_HEADER = bytes.fromhex("1f8b08000000000002ff")  # deflate, no flags, mtime 0, max compression, OS unknown


def gzip_compress(data: bytes) -> bytes:
    """gzip with a fixed header. ``gzip.compress`` writes the host OS into byte 9 (3 on Linux
    CPython, 255 in Pyodide), which would make the same packet encode differently per platform."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return b"".join((_GZIP_HEADER, deflate.compress(data), deflate.flush(),
                     _U32.pack(zlib.crc32(data)), _U32.pack(len(data) & 0xFFFFFFFF)))


# --------------------------------------------------------------------------------------- decode


def decode_packet(data: bytes | bytearray | memoryview) -> MotionPacket:
    """Decode one motion packet. Raises :class:`PacketError` and nothing else, for any input."""
    try:
        return _decode(bytes(data))
    except PacketError:
        raise
    except Exception as exc:  # a bug here must still not escape as anything but PacketError
        raise PacketError(Reason.BAD_LAYOUT, f"unexpected {type(exc).__name__}: {exc}") from exc


def _decode(data: bytes) -> MotionPacket:
    if len(data) < HEADER_SIZE:
        raise PacketError(Reason.TRUNCATED, f"{len(data)} bytes, a header needs {HEADER_SIZE}")
    flag_byte, length = _HEADER.unpack_from(data)
    entry = _BY_BYTE[flag_byte]
    if entry[0] is None:
        raise PacketError(entry[1], entry[2])  # (None, reason, detail)
    flags, layout, compressed = entry
    if length > MAX_PACKET_BODY:
        raise PacketError(Reason.TOO_LARGE, f"declared body of {length} bytes")
    available = len(data) - HEADER_SIZE
    if length != available:
        reason = Reason.TRUNCATED if length > available else Reason.LENGTH_MISMATCH
        raise PacketError(reason, f"body declares {length} bytes, {available} present")
    body = _decompress(data[HEADER_SIZE:]) if compressed else data[HEADER_SIZE:]

    if layout == _UNSEQUENCED:
        return _trusted(flags, None, body, ())
    if len(body) < 4:
        raise PacketError(Reason.TRUNCATED, f"body of {len(body)} bytes has no room for a sequence number")
    (seq,) = _U32.unpack_from(body)
    if layout == _SEQUENCED:
        return _trusted(flags, seq, body[4:], ())

    parts: list[bytes] = []
    offset = 4
    for name in ("current", "previous-1", "previous-2"):
        if offset + 4 > len(body):
            raise PacketError(Reason.BAD_LAYOUT, f"redundant body ends before the {name} length")
        (size,) = _U32.unpack_from(body, offset)
        offset += 4
        if size > len(body) - offset:
            raise PacketError(Reason.BAD_LAYOUT, f"{name} frame declares {size} bytes, {len(body) - offset} left")
        parts.append(body[offset:offset + size])
        offset += size
    if offset != len(body):
        raise PacketError(Reason.BAD_LAYOUT, f"{len(body) - offset} bytes after the redundant frames")
    return _trusted(flags, seq, parts[0], (parts[1] or None, parts[2] or None))


def _trusted(flags: Flags, seq: int | None, message: bytes, previous: tuple) -> MotionPacket:
    """A packet the decoder has already validated: skip ``__post_init__``'s checks."""
    packet = object.__new__(MotionPacket)
    object.__setattr__(packet, "flags", flags)
    object.__setattr__(packet, "seq", seq)
    object.__setattr__(packet, "message", message)
    object.__setattr__(packet, "previous", previous)
    return packet


def _decompress(body: bytes) -> bytes:
    if body[:2] == b"\x1f\x8b":
        wbits = 16 + zlib.MAX_WBITS
    elif len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0:
        wbits = zlib.MAX_WBITS  # a zlib header: deflate method, valid check bits (0x78 0x9c, ...)
    else:
        raise PacketError(Reason.BAD_COMPRESSION, f"neither gzip nor zlib (starts {body[:2].hex() or 'empty'})")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, MAX_PACKET_BODY + 1)
    except zlib.error as exc:
        raise PacketError(Reason.BAD_COMPRESSION, str(exc)) from None
    if len(out) > MAX_PACKET_BODY:
        raise PacketError(Reason.TOO_LARGE, f"decompresses past the {MAX_PACKET_BODY}-byte cap")
    if not inflater.eof:
        raise PacketError(Reason.BAD_COMPRESSION, "compressed stream is cut short")
    if inflater.unused_data:
        raise PacketError(Reason.BAD_COMPRESSION, f"{len(inflater.unused_data)} bytes after the compressed stream")
    return out


# ------------------------------------------------------------------------------------- carrier

VP8_KEYFRAME_PREFIX = bytes.fromhex("1002009d012a100010000047088585888584880202000c0d6000feffab5080")
"""A complete, valid VP8 key frame: 16x16, black. Made once with libvpx (FFmpeg 5.1, Debian 12)::

    ffmpeg -f lavfi -i color=c=black:s=16x16:r=25 -frames:v 1 -c:v libvpx -deadline best \\
           -b:v 8k -f ivf k.ivf

and taking the one frame out of the IVF container (32-byte file header, 12-byte frame header).
libvpx ignores bytes after the frame, so a viewer without our transform still shows black.
"""


def wrap_frame(packet: bytes) -> bytes:
    """Build a carrier frame: the VP8 key frame, the packet, its length and the ``AVMF`` magic."""
    if len(packet) > _SEQ_MAX:
        raise ValueError("packet too large for a carrier frame")
    frame = b"".join((VP8_KEYFRAME_PREFIX, packet, _U32.pack(len(packet)), CARRIER_MAGIC))
    assert not frame.endswith(LIVEKIT_TRAILER_MAGIC)
    return frame


def unwrap_frame(frame: bytes | bytearray | memoryview) -> tuple[bytes, bytes] | None:
    """Split a carrier frame into ``(decodable VP8 prefix, packet)``.

    Returns ``None`` for a frame without our trailer (pass it through untouched). Raises
    :class:`PacketError` (``bad-trailer``) for a frame that ends with the magic but whose length
    field does not fit inside it.
    """
    frame = bytes(frame)
    if frame[-4:] != CARRIER_MAGIC:
        return None
    if len(frame) < _TRAILER_SIZE:
        raise PacketError(Reason.BAD_TRAILER, f"magic without room for the length ({len(frame)} bytes)")
    (length,) = _U32.unpack_from(frame, len(frame) - _TRAILER_SIZE)
    end = len(frame) - _TRAILER_SIZE
    if length > end:
        raise PacketError(Reason.BAD_TRAILER, f"packet length {length} with only {end} bytes before the trailer")
    return frame[:end - length], frame[end - length:end]
