"""Golden vectors on disk: every file decodes (or is rejected) exactly as the manifest says."""

import json
from pathlib import Path

import pytest

from avatarplayer.wire.motion import Flags, PacketError, decode_packet, encode_packet, unwrap_frame
from tests.vectors import make_vectors

VECTORS = Path(make_vectors.__file__).parent
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())


@pytest.mark.parametrize("path", sorted(MANIFEST["packets"]))
def test_packet_vector(path):
    expect = MANIFEST["packets"][path]
    data = (VECTORS / path).read_bytes()
    if expect["expect"] == "error":
        with pytest.raises(PacketError) as info:
            decode_packet(data)
        assert info.value.reason == expect["reason"], str(info.value)
        return
    packet = decode_packet(data)
    assert int(packet.flags) == expect["flags"]
    assert packet.seq == expect["seq"]
    assert packet.message.hex() == expect["message"]
    assert [p.hex() if p is not None else None for p in packet.previous] == expect["previous"]
    if expect["compression"] is None:
        assert encode_packet(packet) == data  # uncompressed bytes are canonical
    else:
        plain = type(packet)(packet.flags & ~Flags.COMPRESSED, packet.seq, packet.message, packet.previous)
        assert decode_packet(encode_packet(plain, expect["compression"])) == packet


@pytest.mark.parametrize("path", sorted(MANIFEST["carrier"]))
def test_carrier_vector(path):
    expect = MANIFEST["carrier"][path]
    data = (VECTORS / path).read_bytes()
    if expect["expect"] == "error":
        with pytest.raises(PacketError) as info:
            unwrap_frame(data)
        assert info.value.reason == expect["reason"]
    elif expect["expect"] == "passthrough":
        assert unwrap_frame(data) is None
    else:
        prefix, packet = unwrap_frame(data)
        assert (prefix.hex(), packet.hex()) == (expect["prefix"], expect["packet"])


def test_every_flag_combination_is_covered():
    """All 128 flag bytes are either a valid vector (with each compression) or a rejected one."""
    valid = {e["flags"] for e in MANIFEST["packets"].values() if e["expect"] == "ok"}
    conflicting = set(make_vectors.conflicting_flag_values())
    for value in range(0x80):
        layout = value & ~Flags.COMPRESSED
        assert layout in valid or layout in conflicting, hex(value)
    assert len(valid) == 2 * 11  # 11 layouts, raw and COMPRESSED
    assert all(value & 0x80 == 0 for value in valid)


def test_vectors_on_disk_match_the_generator():
    """A codec change that alters the wire bytes must change the vectors on purpose."""
    built = make_vectors.build()
    on_disk = {
        str(p.relative_to(VECTORS)) for p in VECTORS.rglob("*") if p.suffix in {".bin", ".json"}
    }
    assert on_disk == set(built)
    for rel, content in built.items():
        if rel.endswith(".zlib.bin"):
            continue  # zlib's own framing is not ours to fix; its decode is checked above
        disk = (VECTORS / rel).read_text() if isinstance(content, str) else (VECTORS / rel).read_bytes()
        assert disk == content, rel
