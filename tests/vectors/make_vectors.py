"""Writes the golden vectors: valid and invalid motion packets and carrier frames.

    python3 tests/vectors/make_vectors.py          # rewrite tests/vectors/{packets,carrier}/ + manifest.json

The files are the contract between producers and this decoder (docs/wire-format.md §Versioning):
``test_vectors.py`` decodes every file and checks the outcome the manifest records, and checks
that this script still produces the same files, so a codec change that alters the wire bytes
fails loudly instead of silently re-baselining.
"""

from __future__ import annotations

import itertools
import json
import struct
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from avatarplayer.wire.motion import VP8_KEYFRAME_PREFIX, Flags, MotionPacket, encode_packet, gzip_compress  # noqa: E402

NAMED_FLAGS = [Flags.IDLE, Flags.START, Flags.END, Flags.TRANSITION, Flags.TRANSITION_END, Flags.REDUNDANT]


def keyframe_message(seed: int) -> bytes:
    """A protobuf-shaped one-keyframe ``Message`` (type=5, animation with 7 packed float fields),
    ~495 bytes like a real producer's, built by hand so the vectors need no protobuf package."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def ld(field: int, payload: bytes) -> bytes:
        return varint(field << 3 | 2) + varint(len(payload)) + payload

    sizes = [3, 3, 3, 3, 6, 2, 100]
    flame = b"".join(
        ld(i + 1, struct.pack(f"<{n}f", *(((seed * 31 + i * 7 + k) % 97) / 97.0 - 0.5 for k in range(n))))
        for i, n in enumerate(sizes)
    )
    animation = ld(1, flame)
    response = ld(2, f"req-{seed}".encode()) + ld(4, animation)
    return varint(1 << 3) + varint(5) + ld(6, response)


def valid_packets() -> dict[str, tuple[MotionPacket, str | None]]:
    """Every combination of the six layout flags that is valid, with each compression."""
    out: dict[str, tuple[MotionPacket, str | None]] = {}
    for r in range(len(NAMED_FLAGS) + 1):
        for combo in itertools.combinations(NAMED_FLAGS, r):
            flags = Flags(0)
            for f in combo:
                flags |= f
            name = "-".join(f.name.lower() for f in combo) or "plain"
            try:
                packet = _example(flags)
            except ValueError:
                continue
            for compression in (None, "gzip", "zlib"):
                out[f"{name}.{compression or 'raw'}"] = (packet, compression)
    return out


def _example(flags: Flags) -> MotionPacket:
    if flags & (Flags.IDLE | Flags.TRANSITION | Flags.TRANSITION_END):
        message = b"" if flags & Flags.IDLE else keyframe_message(7)
        return MotionPacket(flags, None, message)
    seq = 1000 + int(flags)
    previous = (keyframe_message(seq - 1), None) if flags & Flags.REDUNDANT else ()
    return MotionPacket(flags, seq, keyframe_message(seq), previous)


def conflicting_flag_values() -> list[int]:
    out = []
    for value in range(0x80):
        flags = Flags(value & ~Flags.COMPRESSED)
        try:
            _example(flags)
        except ValueError:
            if not value & Flags.COMPRESSED:
                out.append(value)
    return out


def header(flags: int, length: int) -> bytes:
    return struct.pack("<BI", flags, length)


def invalid_packets() -> dict[str, tuple[bytes, str]]:
    seqd = struct.pack("<I", 5) + b"message"
    gz = gzip_compress(seqd)
    bomb = gzip_compress(b"\0" * (1 << 20))
    zbomb = zlib.compress(b"\0" * (1 << 20), 9)
    red_ok = struct.pack("<II", 9, 3) + b"cur" + struct.pack("<I", 0) + struct.pack("<I", 0)
    out: dict[str, tuple[bytes, str]] = {
        "empty": (b"", "truncated"),
        "header-1-byte": (b"\x00", "truncated"),
        "header-4-bytes": (b"\x00\x05\x00\x00", "truncated"),
        "length-past-end": (header(0, 20) + seqd, "truncated"),
        "length-short": (header(0, len(seqd) - 2) + seqd, "length-mismatch"),
        "length-zero-with-body": (header(0, 0) + seqd, "length-mismatch"),
        "length-over-cap": (header(0, 0x10001) + b"\0" * 0x10001, "too-large"),
        "no-room-for-seq": (header(0, 3) + b"\x01\x02\x03", "truncated"),
        "start-empty-body": (header(Flags.START, 0), "truncated"),
        "compressed-neither-gzip-nor-zlib": (header(Flags.COMPRESSED, 4) + b"abcd", "bad-compression"),
        "compressed-empty": (header(Flags.COMPRESSED, 0), "bad-compression"),
        "gzip-garbage-after": (header(Flags.COMPRESSED, len(gz) + 3) + gz + b"xyz", "bad-compression"),
        "gzip-cut-short": (header(Flags.COMPRESSED, len(gz) - 6) + gz[:-6], "bad-compression"),
        "gzip-corrupt-crc": (header(Flags.COMPRESSED, len(gz)) + gz[:-8] + b"\0\0\0\0" + gz[-4:], "bad-compression"),
        "gzip-bomb-over-cap": (header(Flags.COMPRESSED, len(bomb)) + bomb, "too-large"),
        "zlib-bomb-over-cap": (header(Flags.COMPRESSED, len(zbomb)) + zbomb, "too-large"),
        "zlib-bad-checksum": (header(Flags.COMPRESSED, len(zlib.compress(seqd)))
                              + zlib.compress(seqd)[:-1] + b"\x00", "bad-compression"),
        "redundant-cur-length-past-end": (header(Flags.REDUNDANT, 12) + struct.pack("<II", 9, 99) + b"cur!",
                                          "bad-layout"),
        "redundant-prev-length-past-end": (
            header(Flags.REDUNDANT, 17) + struct.pack("<II", 9, 3) + b"cur" + struct.pack("<I", 50) + b"ab",
            "bad-layout"),
        "redundant-missing-prev2-length": (
            header(Flags.REDUNDANT, 15) + struct.pack("<II", 9, 3) + b"cur" + struct.pack("<I", 0), "bad-layout"),
        "redundant-trailing-bytes": (header(Flags.REDUNDANT, len(red_ok) + 2) + red_ok + b"!!", "bad-layout"),
        "redundant-no-room-for-seq": (header(Flags.REDUNDANT, 2) + b"\x01\x02", "truncated"),
        "unknown-flag-0x80": (header(0x80, len(seqd)) + seqd, "unknown-flags"),
    }
    for value in conflicting_flag_values():
        out[f"conflicting-flags-0x{value:02x}"] = (header(value, len(seqd)) + seqd, "conflicting-flags")
    return out


def carrier_frames() -> dict[str, tuple[bytes, dict]]:
    packet = encode_packet(MotionPacket(Flags.START, 1, keyframe_message(1)))
    trailer = struct.pack("<I", len(packet)) + b"AVMF"
    return {
        "valid-keyframe": (VP8_KEYFRAME_PREFIX + packet + trailer,
                           {"expect": "ok", "prefix": VP8_KEYFRAME_PREFIX.hex(), "packet": packet.hex()}),
        "valid-empty-packet": (VP8_KEYFRAME_PREFIX + struct.pack("<I", 0) + b"AVMF",
                               {"expect": "ok", "prefix": VP8_KEYFRAME_PREFIX.hex(), "packet": ""}),
        "no-magic-plain-vp8": (VP8_KEYFRAME_PREFIX, {"expect": "passthrough"}),
        "wrong-magic": (VP8_KEYFRAME_PREFIX + packet + struct.pack("<I", len(packet)) + b"AVMG",
                        {"expect": "passthrough"}),
        "livekit-trailer-magic": (VP8_KEYFRAME_PREFIX + packet + b"LKTS", {"expect": "passthrough"}),
        "empty-frame": (b"", {"expect": "passthrough"}),
        "magic-without-room-for-length": (b"\x01\x02AVMF", {"expect": "error", "reason": "bad-trailer"}),
        "magic-only": (b"AVMF", {"expect": "error", "reason": "bad-trailer"}),
        "length-past-start": (b"\x00" * 10 + struct.pack("<I", 11) + b"AVMF",
                              {"expect": "error", "reason": "bad-trailer"}),
    }


def build() -> dict[str, bytes | str]:
    """Every file, by path relative to this folder (manifest.json included)."""
    files: dict[str, bytes | str] = {}
    manifest: dict[str, dict] = {"packets": {}, "carrier": {}}
    for name, (packet, compression) in valid_packets().items():
        path = f"packets/valid/{name}.bin"
        files[path] = encode_packet(packet, compression)
        manifest["packets"][path] = {
            "expect": "ok",
            "flags": int(packet.flags) | (int(Flags.COMPRESSED) if compression else 0),
            "seq": packet.seq,
            "message": packet.message.hex(),
            "previous": [p.hex() if p is not None else None for p in packet.previous],
            "compression": compression,
        }
    for name, (data, reason) in invalid_packets().items():
        path = f"packets/invalid/{name}.bin"
        files[path] = data
        manifest["packets"][path] = {"expect": "error", "reason": reason}
    for name, (data, expect) in carrier_frames().items():
        path = f"carrier/{name}.bin"
        files[path] = data
        manifest["carrier"][path] = expect
    files["manifest.json"] = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    return files


def main() -> None:
    for sub in ("packets/valid", "packets/invalid", "carrier"):
        for old in (HERE / sub).glob("*.bin"):
            old.unlink()
    for rel, content in build().items():
        path = HERE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
    print(f"wrote {len(build())} files under {HERE}")


if __name__ == "__main__":
    main()
