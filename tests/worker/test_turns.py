"""avatar_worker/turns.py: planning a turn tick by tick, and the packets of the data carrier. No
server, no network."""

from __future__ import annotations

import pytest

from avatar_worker.audio import pcm as audio
from avatar_worker.modes.scripted import Injection, inject, payload_for, plan_scripted_turn
from avatar_worker.turns import IDLE_PACKET, TurnFrame, build_turn
from avatarplayer.wire.motion import Flags, PacketError, decode_packet


def decode_all(turn):
    out = []
    for tick in turn.ticks:
        for e in tick.emissions:
            out.append((e.kind, decode_packet(e.packet)))
    return out


class TestTurns:
    def test_turn_layout(self) -> None:
        frames = [TurnFrame(payload_for(10 + i), audio.tone()) for i in range(4)]
        turn = build_turn(frames, 10)
        decoded = decode_all(turn)
        assert [k for k, _ in decoded] == ["transition", "frame", "frame", "frame", "frame", "transition_end"]
        assert decoded[0][1].flags == Flags.TRANSITION and decoded[0][1].message == frames[0].message
        assert [p.seq for _, p in decoded[1:5]] == [10, 11, 12, 13]
        assert [p.flags for _, p in decoded[1:5]] == [Flags.START, 0, 0, Flags.END]
        assert decoded[5][1].flags == Flags.TRANSITION_END and decoded[5][1].seq is None
        assert [t.audio is not None for t in turn.ticks] == [False, True, True, True, True, False]
        assert turn.next_seq == 14

    def test_single_frame_turn_without_transition(self) -> None:
        turn = build_turn([TurnFrame(b"m")], 0, transition=False)
        kinds = decode_all(turn)
        assert kinds[0][1].flags == Flags.START | Flags.END
        assert [k for k, _ in kinds] == ["frame", "transition_end"]

    def test_redundant_and_compressed(self) -> None:
        frames = [TurnFrame(payload_for(i)) for i in range(3)]
        turn = build_turn(frames, 0, redundant=True, compression="gzip", transition=False)
        packets = [p for k, p in decode_all(turn) if k == "frame"]
        assert all(Flags.REDUNDANT in p.flags and Flags.COMPRESSED in p.flags for p in packets)
        assert packets[0].previous == (None, None)
        assert packets[2].recovered() == [(0, frames[0].message), (1, frames[1].message)]

    def test_truncated(self) -> None:
        turn = build_turn([TurnFrame(payload_for(i)) for i in range(10)], 0)
        cut = turn.truncated(4)
        kinds = [e.kind for t in cut.ticks for e in t.emissions]
        assert kinds == ["transition", "frame", "frame", "frame", "frame"]
        assert not any(Flags.END & decode_packet(e.packet).flags for t in cut.ticks for e in t.emissions)

    def test_idle_packet(self) -> None:
        assert IDLE_PACKET == b"\x01\x00\x00\x00\x00"

    def test_rejects_bad_input(self) -> None:
        with pytest.raises(ValueError):
            build_turn([], 0)
        with pytest.raises(ValueError):
            TurnFrame(b"x", b"\x00" * 10)


class TestDataPackets:
    def test_frames_are_redundant_on_the_data_carrier_only(self) -> None:
        frames = [TurnFrame(payload_for(i)) for i in range(4)]
        turn = build_turn(frames, 0)
        emissions = [e for tick in turn.ticks for e in tick.emissions]
        for e in emissions:
            video, data = decode_packet(e.packet), decode_packet(e.data_bytes)
            if e.kind == "frame":
                assert Flags.REDUNDANT not in video.flags and Flags.REDUNDANT in data.flags
                assert data.flags & ~Flags.REDUNDANT == video.flags  # START / END carried over
                assert (data.seq, data.message) == (video.seq, video.message)
            else:
                assert e.data_bytes is e.packet
        last = decode_packet(emissions[-2].data_bytes)
        assert last.recovered() == [(1, frames[1].message), (2, frames[2].message)]

    def test_redundant_turns_share_the_bytes(self) -> None:
        turn = build_turn([TurnFrame(payload_for(i)) for i in range(3)], 0, redundant=True, compression="zlib")
        frames = [e for tick in turn.ticks for e in tick.emissions if e.kind == "frame"]
        assert all(e.data_packet is None and e.data_bytes is e.packet for e in frames)
        assert all(Flags.COMPRESSED in decode_packet(e.data_bytes).flags for e in frames)

    def test_compression_applies_to_the_data_packets(self) -> None:
        turn = build_turn([TurnFrame(payload_for(i)) for i in range(3)], 0, compression="gzip")
        frame = next(e for tick in turn.ticks for e in tick.emissions if e.kind == "frame")
        assert decode_packet(frame.data_bytes).flags == Flags.START | Flags.REDUNDANT | Flags.COMPRESSED

    def test_injection_moves_data_packets_with_their_frames(self) -> None:
        turn = inject(plan_scripted_turn(0, 300), Injection(loss=0.1, reorder=0.1, duplicate=0.1, bad=0.1, seed=2))
        for e in (e for tick in turn.ticks for e in tick.emissions):
            if e.kind in ("frame", "reordered", "duplicate"):
                packet = decode_packet(e.data_bytes)
                assert packet.seq == e.seq and Flags.REDUNDANT in packet.flags
            elif e.kind == "bad":
                assert e.data_bytes == e.packet
                with pytest.raises(PacketError):
                    decode_packet(e.data_bytes)
