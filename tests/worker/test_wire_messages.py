"""The motion-frame ``Message`` (avatarplayer/wire/messages.py) as the worker builds it: no server, no
network. No server, no network."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import field

import pytest

from avatarplayer.wire.messages import (
    FLAME_FIELDS,
    MESSAGE_SERVER_RESPONSE_ANIMATION,
    Flame,
    Message,
    build_message,
    parse_message,
)

from .helpers import ROOT


def full_pose(value: float = 0.25) -> dict[str, list[float]]:
    return {name: [value] * size for name, size in FLAME_FIELDS.items()}


class TestMessages:
    def test_field_numbers_follow_the_spec(self) -> None:
        flame = Flame.DESCRIPTOR
        assert [(f.name, f.number) for f in flame.fields] == [
            ("translation", 1), ("rotation", 2), ("neck_pose", 3), ("jaw_pose", 4),
            ("eye_pose", 5), ("eye_lid", 6), ("expression", 7)]
        assert all(f.is_packed for f in flame.fields)
        response = Message.DESCRIPTOR.fields_by_name["server_response_animation"]
        assert response.number == 6 and response.containing_oneof.name == "data"
        assert Message.DESCRIPTOR.fields_by_name["type"].number == 1
        sra = response.message_type
        assert {f.name: f.number for f in sra.fields} == {
            "connection_id": 1, "req_id": 2, "end": 3, "animation": 4, "avatar_id": 5}
        assert sra.fields_by_name["animation"].message_type.fields_by_name["keyframes"].number == 1
        assert Message.DESCRIPTOR.full_name == "driveningress.v2.Message"
        assert MESSAGE_SERVER_RESPONSE_ANIMATION == 5

    def test_one_keyframe_is_495_bytes_and_the_message_about_500(self) -> None:
        keyframe = Flame(**full_pose())
        assert len(keyframe.SerializeToString()) == 495
        data = build_message(full_pose())
        assert 495 < len(data) <= 520

    def test_round_trip(self) -> None:
        pose = {name: [0.5 * (i + 1) for i in range(size)] for name, size in FLAME_FIELDS.items()}
        data = build_message(pose, req_id="turn-7", end=True, avatar_id="ava", connection_id="c1")
        parsed = parse_message(data)
        assert parsed["type"] == 5
        assert (parsed["req_id"], parsed["end"], parsed["avatar_id"], parsed["connection_id"]) == (
            "turn-7", True, "ava", "c1")
        assert len(parsed["keyframes"]) == 1
        for name, values in pose.items():
            assert parsed["keyframes"][0][name] == pytest.approx(values)

    def test_wire_bytes_by_hand(self) -> None:
        data = build_message({"jaw_pose": [1.0, 0.0, 0.0]}, end=True)
        # type=5, then field 6 (len) { end=1 (field 3), animation (field 4) { keyframes (field 1) {
        # jaw_pose (field 4, packed) 3 floats } } }
        jaw = bytes([0x22, 12]) + bytes.fromhex("0000803f") + bytes(8)
        keyframe = bytes([0x0A, len(jaw)]) + jaw
        animation = bytes([0x22, len(keyframe)]) + keyframe
        response = bytes([0x18, 0x01]) + animation
        assert data == bytes([0x08, 0x05, 0x32, len(response)]) + response

    @pytest.mark.parametrize("bad", [{"jaw": [0.0] * 3}, {"jaw_pose": [0.0] * 2}, {"expression": [0.0] * 50}])
    def test_build_rejects_bad_poses(self, bad: dict) -> None:
        with pytest.raises(ValueError):
            build_message(bad)

    @pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"\x32\x50abc", b"\x0a"])
    def test_parse_rejects_garbage_with_value_error(self, garbage: bytes) -> None:
        with pytest.raises(ValueError):
            parse_message(garbage)

    def test_parse_keeps_unknown_message_types(self) -> None:
        assert parse_message(b"\x08\x07")["type"] == 7
        assert parse_message(b"")["keyframes"] == []

    def test_pure_python_protobuf_gives_the_same_bytes(self) -> None:
        """What Pyodide runs: no upb extension, the pure-Python implementation."""
        code = ("from avatarplayer.wire.messages import build_message, FLAME_FIELDS;"
                "from google.protobuf.internal import api_implementation as a;"
                "import sys; assert a.Type() == 'python', a.Type();"
                "sys.stdout.write(build_message({k: [0.25]*n for k, n in FLAME_FIELDS.items()}, req_id='x').hex())")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                             env={"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "PATH": "/usr/bin:/bin"})
        assert bytes.fromhex(out.stdout) == build_message(full_pose(), req_id="x")
