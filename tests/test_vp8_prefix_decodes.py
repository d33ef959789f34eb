"""The carrier's VP8 prefix is a real key frame: libvpx (through ffmpeg) decodes a whole carrier
frame, trailing motion packet included, into one black 16x16 picture. CPython only (runs ffmpeg)."""

import shutil
import struct
import subprocess

from avatarplayer.wire.motion import Flags, MotionPacket, encode_packet, wrap_frame


def _ivf(frames: list[bytes]) -> bytes:
    header = b"DKIF" + struct.pack("<HHIHHIIII", 0, 32, 0x30385056, 16, 16, 25, 1, len(frames), 0)
    return header + b"".join(struct.pack("<IQ", len(f), i) + f for i, f in enumerate(frames))


def test_libvpx_decodes_carrier_frames_as_black_16x16(tmp_path):
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg, "ffmpeg is installed by tools/bootstrap.py; it is missing"
    frames = [wrap_frame(encode_packet(MotionPacket(Flags(0), i, bytes(range(256)) * 2))) for i in range(3)]
    src = tmp_path / "carrier.ivf"
    src.write_bytes(_ivf(frames))
    out = subprocess.run(
        [ffmpeg, "-v", "error", "-c:v", "libvpx", "-i", str(src), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True, check=True, timeout=60,
    ).stdout
    assert len(out) == 3 * 16 * 16  # three decoded 16x16 pictures
    assert max(out) <= 20  # black (video range luma 16)
