"""avatar_worker/modes/scripted.py: scripted payloads, the sync pulse, fault injection. No server, no
network."""

from __future__ import annotations

import random

import pytest

from avatar_worker.audio import pcm as audio
from avatar_worker.modes.scripted import (
    Injection,
    inject,
    malformed_packet,
    payload_for,
    plan_scripted_turn,
    scripted_pose,
)
from avatarplayer.constants import FRAME_INTERVAL_MS
from avatarplayer.wire.messages import parse_message
from avatarplayer.wire.motion import Flags, PacketError, decode_packet, unwrap_frame, VP8_KEYFRAME_PREFIX


class TestScript:
    def test_payload_for_is_a_deterministic_message(self) -> None:
        assert payload_for(42) == payload_for(42)
        parsed = parse_message(payload_for(42))
        assert parsed["type"] == 5 and len(parsed["keyframes"]) == 1
        assert 495 < len(payload_for(42)) <= 520
        assert parsed["keyframes"][0]["jaw_pose"][0] == pytest.approx(scripted_pose(42)["jaw_pose"][0], abs=1e-6)

    def test_pulse_audio_clicks_once_a_second_on_the_marked_frames(self) -> None:
        from avatar_worker.modes.scripted import PULSE_EVERY, is_pulse, scripted_frames

        frames = scripted_frames(10, 60, audio="pulse")
        clicked = [10 + i for i, f in enumerate(frames) if f.audio is not None]
        assert clicked == [25, 50] and all(is_pulse(s) for s in clicked) and PULSE_EVERY == 25
        assert all(f.audio == audio.click() for f in frames if f.audio is not None)
        assert [f.message for f in frames] == [payload_for(s) for s in range(10, 70)]
        with pytest.raises(ValueError):
            scripted_frames(0, 1, audio="beep")

    def test_payloads_differ(self) -> None:
        payloads = {payload_for(s) for s in range(3000)}
        assert len(payloads) == 3000

    def test_malformed_packets_are_all_rejected(self) -> None:
        rng = random.Random(0)
        seen = set()
        for _ in range(200):
            bad = malformed_packet(rng, seq=rng.randrange(1000))
            with pytest.raises(PacketError) as err:
                decode_packet(bad)
            seen.add(err.value.reason)
        assert len(seen) >= 5

    def test_injection_is_deterministic_and_independent(self) -> None:
        base = plan_scripted_turn(0, 400)
        a = inject(base, Injection(loss=0.1, seed=3))
        b = inject(base, Injection(loss=0.1, seed=3))
        c = inject(base, Injection(loss=0.1, duplicate=0.2, seed=3))
        lost = lambda t: [e.seq for tk in t.ticks for e in tk.emissions if not e.sent]  # noqa: E731
        assert lost(a) == lost(b) and lost(a) == lost(c)
        assert 20 <= len(lost(a)) <= 60
        dups = [e for tk in c.ticks for e in tk.emissions if e.kind == "duplicate"]
        assert 50 <= len(dups) <= 110
        assert all(e.offset == pytest.approx(FRAME_INTERVAL_MS / 2000) for e in dups)

    def test_reorder_swaps_neighbours(self) -> None:
        turn = inject(plan_scripted_turn(0, 300), Injection(reorder=0.2, seed=1))
        order = [e.seq for tk in turn.ticks for e in tk.emissions if e.kind in ("frame", "reordered")]
        assert sorted(order) == list(range(300))
        assert order != list(range(300))
        for i, seq in enumerate(order):
            assert abs(seq - i) <= 1
        # START/END flags travel with their frames
        first = next(e for tk in turn.ticks for e in tk.emissions if e.seq == 0)
        assert decode_packet(first.packet).flags & Flags.START

    def test_bad_packets_ride_in_valid_carrier_frames(self) -> None:
        from avatarplayer.wire.motion import wrap_frame

        turn = inject(plan_scripted_turn(0, 100), Injection(bad=0.3, seed=2))
        bads = [e for tk in turn.ticks for e in tk.emissions if e.kind == "bad"]
        assert bads
        for e in bads:
            prefix, packet = unwrap_frame(wrap_frame(e.packet))
            assert prefix == VP8_KEYFRAME_PREFIX and packet == e.packet

    def test_injection_validation(self) -> None:
        with pytest.raises(ValueError):
            Injection(loss=1.5)
