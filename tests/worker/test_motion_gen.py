"""avatar_worker/motion_gen.py: FLAME poses from the audio envelope. No server, no network."""

from __future__ import annotations

from avatar_worker.motion_gen import MotionGenerator, neutral_pose
from avatarplayer.wire.messages import FLAME_FIELDS, build_message


class TestMotionGenerator:
    def test_pose_shape_and_size(self) -> None:
        pose = MotionGenerator(1).step(0.5)
        assert {k: len(v) for k, v in pose.items()} == FLAME_FIELDS
        assert 495 < len(build_message(pose)) <= 520
        assert neutral_pose()["jaw_pose"] == [0.0, 0.0, 0.0]

    def test_jaw_follows_loudness(self) -> None:
        gen = MotionGenerator(0)
        silent = gen.poses([0.0] * 10)
        loud = gen.poses([1.0] * 10)
        back = gen.poses([0.0] * 15)
        assert max(p["jaw_pose"][0] for p in silent) < 0.01
        assert loud[-1]["jaw_pose"][0] > 0.25
        assert loud[1]["jaw_pose"][0] > loud[0]["jaw_pose"][0]  # opens over a couple of frames
        assert back[-1]["jaw_pose"][0] < 0.01

    def test_blinks_and_gaze_move(self) -> None:
        poses = MotionGenerator(3).idle(25 * 12)
        lids = [p["eye_lid"][0] for p in poses]
        blinks = sum(1 for a, b in zip(lids, lids[1:]) if a == 0.0 and b > 0.0)
        assert 2 <= blinks <= 8  # every 2–5 s over 12 s
        assert max(lids) == 1.0
        yaws = {round(p["eye_pose"][1], 3) for p in poses}
        assert len(yaws) > 20
        heads = [p["rotation"] for p in poses]
        assert all(abs(v) < 0.2 for r in heads for v in r)

    def test_deterministic_per_seed(self) -> None:
        assert MotionGenerator(5).poses([0.3] * 50) == MotionGenerator(5).poses([0.3] * 50)
        assert MotionGenerator(5).poses([0.3] * 50) != MotionGenerator(6).poses([0.3] * 50)
