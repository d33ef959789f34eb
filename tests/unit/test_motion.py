"""The packet codec and the carrier: behaviour, errors, and properties over arbitrary input."""

import gzip
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avatarplayer.constants import CARRIER_MAGIC, MAX_PACKET_BODY
from avatarplayer.wire.motion import (
    VP8_KEYFRAME_PREFIX,
    Flags,
    MotionPacket,
    PacketError,
    Reason,
    decode_packet,
    encode_packet,
    unwrap_frame,
    wrap_frame,
)

# ----------------------------------------------------------------------------------- strategies

messages = st.binary(max_size=700)
seqs = st.integers(0, 2**32 - 1)


@st.composite
def packets(draw):
    kind = draw(st.sampled_from(["frame", "redundant", "idle", "transition", "transition_end"]))
    if kind in ("frame", "redundant"):
        flags = Flags(0)
        if draw(st.booleans()):
            flags |= Flags.START
        if draw(st.booleans()):
            flags |= Flags.END
        if kind == "redundant":
            prev = tuple(draw(st.one_of(st.none(), st.binary(min_size=1, max_size=600))) for _ in range(2))
            return MotionPacket(flags | Flags.REDUNDANT, draw(seqs), draw(messages), prev)
        return MotionPacket(flags, draw(seqs), draw(messages))
    flags = {"idle": Flags.IDLE, "transition": Flags.TRANSITION, "transition_end": Flags.TRANSITION_END}[kind]
    return MotionPacket(flags, None, draw(messages))


compressions = st.sampled_from([None, "gzip", "zlib"])

# ------------------------------------------------------------------------------------ properties


@given(st.binary(max_size=2048))
@settings(max_examples=1500)
def test_decode_arbitrary_bytes_returns_or_raises_packet_error(data):
    try:
        packet = decode_packet(data)
    except PacketError as exc:
        assert isinstance(exc.reason, Reason)
    else:
        assert isinstance(packet, MotionPacket)


@given(packets(), compressions, st.data())
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_packets_never_escape_as_other_errors(packet, compression, data):
    encoded = bytearray(encode_packet(packet, compression))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if op == "flip" and encoded:
            i = data.draw(st.integers(0, len(encoded) - 1))
            encoded[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del encoded[data.draw(st.integers(0, len(encoded))):]
        else:
            encoded += data.draw(st.binary(min_size=1, max_size=8))
    try:
        decode_packet(bytes(encoded))
    except PacketError:
        pass


@given(packets(), compressions)
@settings(max_examples=800)
def test_encode_then_decode_is_the_identity(packet, compression):
    decoded = decode_packet(encode_packet(packet, compression))
    expected_flags = packet.flags | (Flags.COMPRESSED if compression else Flags(0))
    assert decoded == MotionPacket(expected_flags, packet.seq, packet.message, packet.previous)


@given(st.binary(max_size=5000))
def test_unwrap_of_wrap_gives_back_the_packet(packet):
    prefix, out = unwrap_frame(wrap_frame(packet))
    assert out == packet
    assert prefix == VP8_KEYFRAME_PREFIX


@given(st.binary(max_size=64))
@settings(max_examples=1000)
def test_unwrap_arbitrary_bytes(data):
    for frame in (data, data + CARRIER_MAGIC):
        try:
            result = unwrap_frame(frame)
        except PacketError as exc:
            assert exc.reason is Reason.BAD_TRAILER
        else:
            assert result is None or (len(result[0]) + len(result[1]) + 8 == len(frame))


# ----------------------------------------------------------------------------------- behaviour


def test_packet_error_is_a_value_error_with_a_reason():
    with pytest.raises(ValueError) as info:
        decode_packet(b"\x00\x01")
    assert isinstance(info.value, PacketError)
    assert info.value.reason == "truncated"
    assert "truncated" in str(info.value)


def test_decompressed_size_is_capped():
    body = struct.pack("<I", 1) + b"\0" * MAX_PACKET_BODY  # one byte past the cap once decompressed
    bomb = gzip.compress(body)
    data = struct.pack("<BI", Flags.COMPRESSED, len(bomb)) + bomb
    assert len(data) < 200
    with pytest.raises(PacketError) as info:
        decode_packet(data)
    assert info.value.reason is Reason.TOO_LARGE


def test_body_at_the_cap_is_accepted():
    message = b"\x01" * (MAX_PACKET_BODY - 4)
    encoded = encode_packet(MotionPacket(Flags(0), 3, message), "gzip")
    assert decode_packet(encoded).message == message


def test_zlib_and_gzip_both_decode():
    packet = MotionPacket(Flags.START, 42, b"hello" * 50)
    for compression, magic in (("gzip", b"\x1f\x8b"), ("zlib", b"\x78")):
        encoded = encode_packet(packet, compression)
        assert encoded[5:5 + len(magic)] == magic
        assert encoded[0] & Flags.COMPRESSED
        assert decode_packet(encoded).message == packet.message


def test_idle_heartbeat_with_empty_body():
    packet = decode_packet(b"\x01\x00\x00\x00\x00")
    assert packet.flags == Flags.IDLE and packet.seq is None and packet.message == b""
    assert not packet.sequenced


def test_transition_carries_no_seq():
    packet = decode_packet(encode_packet(MotionPacket(Flags.TRANSITION, None, b"\x08\x05")))
    assert packet.seq is None and packet.message == b"\x08\x05"


def test_redundant_recovered_frames_oldest_first_and_absent_skipped():
    packet = MotionPacket(Flags.REDUNDANT, 10, b"c", (b"p1", b"p2"))
    assert packet.recovered() == [(8, b"p2"), (9, b"p1")]
    assert MotionPacket(Flags.REDUNDANT, 10, b"c", (None, b"p2")).recovered() == [(8, b"p2")]
    assert MotionPacket(Flags.REDUNDANT, 1, b"c", (b"p1", b"p2")).recovered() == [(0, b"p1")]
    # a zero length on the wire means absent, spelled None
    assert MotionPacket(Flags.REDUNDANT, 10, b"c", (b"", b"x")).previous == (None, b"x")


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(flags=Flags.START, seq=None, message=b""), ValueError),
        (dict(flags=Flags.IDLE, seq=3, message=b""), ValueError),
        (dict(flags=Flags(0), seq=-1, message=b""), ValueError),
        (dict(flags=Flags(0), seq=2**32, message=b""), ValueError),
        (dict(flags=Flags(0), seq=1, message="text"), TypeError),
        (dict(flags=Flags.REDUNDANT, seq=1, message=b"", previous=(b"x",)), ValueError),
        (dict(flags=Flags(0), seq=1, message=b"", previous=(b"x", b"y")), ValueError),
        (dict(flags=Flags.TRANSITION | Flags.START, seq=1, message=b""), ValueError),
        (dict(flags=0x80, seq=1, message=b""), ValueError),
    ],
)
def test_invalid_packets_are_refused_at_construction(kwargs, error):
    with pytest.raises(error):
        MotionPacket(**kwargs)


def test_encode_rejects_bad_compression_and_oversize():
    packet = MotionPacket(Flags(0), 1, b"x")
    with pytest.raises(ValueError, match="compression"):
        encode_packet(packet, "brotli")
    with pytest.raises(ValueError, match="compression"):
        encode_packet(MotionPacket(Flags.COMPRESSED, 1, b"x"))
    with pytest.raises(ValueError, match="cap"):
        encode_packet(MotionPacket(Flags(0), 1, b"x" * MAX_PACKET_BODY))


def test_carrier_frame_layout():
    packet = encode_packet(MotionPacket(Flags.START, 7, b"abc"))
    frame = wrap_frame(packet)
    assert frame.startswith(VP8_KEYFRAME_PREFIX)
    assert frame.endswith(struct.pack("<I", len(packet)) + b"AVMF")
    assert not frame.endswith(b"LKTS")
    assert unwrap_frame(bytearray(frame)) == (VP8_KEYFRAME_PREFIX, packet)
    assert unwrap_frame(memoryview(frame)) == (VP8_KEYFRAME_PREFIX, packet)


def test_vp8_prefix_is_a_16x16_key_frame():
    """RFC 6386 §9.1: 3-byte frame tag (key frame, shown), start code, 14-bit sizes."""
    tag = int.from_bytes(VP8_KEYFRAME_PREFIX[:3], "little")
    assert tag & 1 == 0  # key frame
    assert (tag >> 4) & 1 == 1  # show_frame
    first_partition = tag >> 5
    assert 0 < first_partition < len(VP8_KEYFRAME_PREFIX)
    assert VP8_KEYFRAME_PREFIX[3:6] == b"\x9d\x01\x2a"
    width, height = struct.unpack_from("<HH", VP8_KEYFRAME_PREFIX, 6)
    assert (width & 0x3FFF, height & 0x3FFF) == (16, 16)


@given(st.binary(max_size=3000))
@settings(max_examples=200)
def test_gzip_is_standard_and_platform_independent(data):
    from avatarplayer.wire.motion import gzip_compress

    packed = gzip_compress(data)
    assert gzip.decompress(packed) == data
    assert packed[:10] == bytes.fromhex("1f8b08000000000002ff")  # no mtime, no host OS
