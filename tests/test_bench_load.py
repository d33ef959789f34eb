"""bench/load.py's pure helpers: the knee, capture jitter, frame delivery, the byte-for-byte check.
No server, no browser."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = module
    spec.loader.exec_module(module)
    return module


load = _load()


def point(n: int, on_time: float | None = 100.0, jitter: float | None = 0.1) -> dict:
    return {"sessions": n, "worst_on_time_pct": on_time, "worst_jitter_p95_ms": jitter}


class TestKnee:
    def test_the_largest_n_that_passes(self):
        assert load.knee([point(1), point(2), point(4), point(8, on_time=97.0)]) == 4

    def test_bounds_are_inclusive(self):
        assert load.knee([point(1, on_time=99.0, jitter=5.0), point(2, on_time=98.999)]) == 1
        assert load.knee([point(1), point(2, jitter=5.01)]) == 1

    def test_jitter_alone_fails_a_point(self):
        assert load.knee([point(1), point(2), point(3, on_time=100.0, jitter=7.5)]) == 2

    def test_a_pass_after_a_failure_does_not_move_it(self):
        assert load.knee([point(1), point(4, on_time=90.0), point(8)]) == 1

    def test_order_of_points_does_not_matter(self):
        assert load.knee([point(8, on_time=50.0), point(2), point(1), point(4)]) == 4

    def test_none_when_the_smallest_fails_or_is_unmeasured(self):
        assert load.knee([point(1, on_time=98.0), point(2)]) is None
        assert load.knee([point(1, jitter=None)]) is None
        assert load.knee([]) is None

    def test_all_pass(self):
        assert load.knee([point(n) for n in (1, 2, 4, 8, 12)]) == 12


def records(times: list[float], start_tick: int = 0) -> list[dict]:
    return [{"kind": "frame", "seq": i, "tick": start_tick + i, "t_ms": t, "sent": True, "data": True}
            for i, t in enumerate(times)]


class TestCaptureJitter:
    def test_perfect_pacing_is_zero(self):
        stats = load.capture_jitter(records([1000.0 + 40 * i for i in range(50)]), 0, 1e9)
        assert stats["n"] == 49 and stats["p95"] == 0 and stats["max"] == 0

    def test_deviation_from_40_ms_both_ways(self):
        # intervals 40, 47, 33, 40 ...: |dev| 0, 7, 7, 0
        times = [0.0, 40.0, 87.0, 120.0, 160.0]
        stats = load.capture_jitter(records(times), 0, 1e9)
        assert stats["n"] == 4 and stats["max"] == 7.0 and stats["p50"] in (0.0, 7.0)

    def test_p95_picks_the_tail(self):
        times = [40.0 * i for i in range(101)]
        times[50] += 12.0  # one late capture: intervals 52 and 28
        stats = load.capture_jitter(records(times), 0, 1e9)
        assert stats["n"] == 100 and stats["max"] == 12.0 and stats["p95"] == 0.0  # 2 of 100 deviate
        times[20] += 9.0
        times[70] += 9.0
        times[80] += 9.0
        assert load.capture_jitter(records(times), 0, 1e9)["p95"] == 9.0  # 8 of 100 deviate

    def test_only_consecutive_ticks_and_the_first_record_of_a_tick(self):
        recs = records([0.0, 40.0, 80.0])
        recs.append({"kind": "idle", "tick": 10, "t_ms": 999.0})  # a gap: no interval across it
        recs.append({"kind": "duplicate", "seq": 1, "tick": 1, "t_ms": 55.0})  # a second record of tick 1
        stats = load.capture_jitter(recs, 0, 1e9)
        assert stats["n"] == 2 and stats["max"] == 0

    def test_the_window_bounds_the_records(self):
        times = [40.0 * i for i in range(10)]
        times[2] += 20.0
        assert load.capture_jitter(records(times), 101.0, 1e9)["max"] == 0  # tick 2 (t=100, 20 ms late) left out
        assert load.capture_jitter(records(times), 0, 1e9)["max"] == 20.0

    def test_empty(self):
        assert load.capture_jitter([], 0, 1)["n"] == 0
        assert load.capture_jitter([], 0, 1)["p95"] is None


class TestDelivery:
    def test_on_time_late_lost(self):
        sent = {seq: 1000.0 + 40 * seq for seq in range(10)}
        arrivals = {seq: t + 10 for seq, t in sent.items() if seq not in (3, 4)}
        arrivals[7] = sent[7] + 80.0  # exactly the bound: on time
        arrivals[8] = sent[8] + 80.5  # late
        d = load.delivery(sent, arrivals)
        assert (d["sent"], d["received"], d["on_time"], d["late"], d["lost"]) == (10, 8, 7, 1, 2)
        assert d["on_time_pct"] == 70.0 and d["received_pct"] == 80.0 and d["longest_loss_run"] == 2
        assert d["delay_ms"]["max"] == 80.5

    def test_arrivals_of_frames_not_sent_in_the_window_do_not_count(self):
        d = load.delivery({5: 0.0}, {4: 1.0, 5: 2.0, 6: 3.0})
        assert d["received"] == 1 and d["on_time_pct"] == 100.0

    def test_nothing_sent(self):
        assert load.delivery({}, {})["on_time_pct"] is None


class TestByteForByte:
    def sent(self, messages):
        return [(seq, hashlib.sha256(m).hexdigest()) for seq, m in enumerate(messages)]

    def test_a_subsequence_in_order_matches(self):
        messages = [bytes([i]) * 20 for i in range(10)]
        result = load.byte_for_byte([messages[2], messages[3], messages[7]], self.sent(messages))
        assert result["ok"] and result["matched"] == 3 and result["seqs"] == [2, 7]

    def test_a_changed_byte_fails(self):
        messages = [bytes([i]) * 20 for i in range(10)]
        bad = bytearray(messages[4])
        bad[-1] ^= 1
        result = load.byte_for_byte([messages[3], bytes(bad), messages[5]], self.sent(messages))
        assert not result["ok"] and result["first_mismatch"] == 1

    def test_out_of_order_fails(self):
        messages = [bytes([i]) * 20 for i in range(10)]
        assert not load.byte_for_byte([messages[5], messages[4]], self.sent(messages))["ok"]

    def test_repeated_turns_match_later_copies(self):
        messages = [b"a", b"b", b"a", b"b"]  # the same speech twice
        assert load.byte_for_byte([b"a", b"b", b"a", b"b"], self.sent(messages))["seqs"] == [0, 3]

    def test_nothing_rendered_is_not_ok(self):
        assert not load.byte_for_byte([], self.sent([b"x"]))["ok"]


def test_marginal_is_the_slope():
    rows = [{"sessions": n, "cpu": 10 + 4 * n} for n in (1, 2, 4, 8)]
    assert load.marginal(rows, "cpu") == pytest.approx(4.0)
    assert load.marginal(rows[:1], "cpu") is None


def test_medians_over_sweeps():
    sweeps = [[{"sessions": 1, "x": 1.0}, {"sessions": 2, "x": 5.0}],
              [{"sessions": 1, "x": 3.0}, {"sessions": 2, "x": None}]]
    rows = load.median_points(sweeps, ["x"])
    assert rows[0]["x"] == 2.0 and rows[0]["x_range"] == [1.0, 3.0] and rows[1]["x"] == 5.0


def test_window_mean_keeps_the_window():
    samples = [(t, {"w": {"cpu_pct": float(t)}}) for t in range(10)]
    assert load.window_mean(samples, 2, 4, "w", "cpu_pct") == 3.0
    assert load.window_mean(samples, 20, 30, "w", "cpu_pct") is None
