"""A seeded network simulator for the jitter buffer: a 25 fps producer, a lossy, jittery, bursty
path, and a receiver ticking every 40 ms. Checks the buffer's invariants on every tick."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from avatarplayer.constants import FRAME_INTERVAL_MS
from avatarplayer.jitter import JitterBuffer


@dataclass
class Path:
    loss: float = 0.0
    duplicate: float = 0.0
    jitter_ms: float = 0.0  # uniform extra delay in [0, jitter_ms)
    base_ms: float = 15.0
    burst_every_ms: float = 0.0  # a freeze roughly this often (0 = never) ...
    burst_ms: float = 0.0  # ... holding every packet until it ends, then releasing them at once


@dataclass
class Result:
    rendered: list[int] = field(default_factory=list)
    render_times: list[float] = field(default_factory=list)
    sent: int = 0
    max_gap_hold_ms: float = 0.0
    """Upper bound on how long a missing frame held a later one (delay + one tick at most)."""
    buffer: JitterBuffer | None = None


def arrivals(n: int, path: Path, rng: random.Random, first_seq: int = 0) -> list[tuple[float, int]]:
    out = []
    freeze_at = rng.uniform(0, path.burst_every_ms) if path.burst_every_ms else float("inf")
    for i in range(n):
        seq = first_seq + i
        if rng.random() < path.loss:
            continue
        for copy in range(1 + (rng.random() < path.duplicate)):
            t = i * FRAME_INTERVAL_MS + path.base_ms + rng.uniform(0, path.jitter_ms) + copy * rng.uniform(0, 120)
            out.append((t, seq))
    if path.burst_every_ms:
        held = []
        while freeze_at < n * FRAME_INTERVAL_MS:
            held.append((freeze_at, freeze_at + path.burst_ms))
            freeze_at += path.burst_ms + rng.expovariate(1 / path.burst_every_ms)
        out = [(next((end for start, end in held if start <= t < end), t), seq) for t, seq in out]
    return sorted(out)


def run(buffer: JitterBuffer, events: list[tuple[float, int]], n: int, rng: random.Random,
        end_seq: int | None = None) -> Result:
    """Feed arrivals, tick every 40 ms at a random phase, and check invariants as we go."""
    result = Result(sent=n, buffer=buffer)
    first_arrival: dict[int, float] = {}
    phase = rng.uniform(0, FRAME_INTERVAL_MS)
    horizon = (events[-1][0] if events else 0) + 1000
    i = 0
    tick = phase
    max_delay = buffer.max_buffer_delay_ms
    while tick < horizon:
        while i < len(events) and events[i][0] <= tick:
            t, seq = events[i]
            buffer.push(seq, ("frame", seq), t, end=seq == end_seq)
            first_arrival.setdefault(seq, t)
            i += 1
        frame = buffer.tick(tick)
        if frame is not None:
            seq = frame[1]
            assert not result.rendered or seq > result.rendered[-1], "rendered out of order or twice"
            result.rendered.append(seq)
            result.render_times.append(tick)
        elif buffer.buffered:
            # Rendering nothing while holding frames is only allowed while the oldest has waited
            # less than the delay; so a missing frame holds later ones at most delay + one tick.
            oldest = min(first_arrival[s] for s in buffer.buffered_seqs)
            assert tick - oldest < max_delay, f"held {tick - oldest:.1f} ms with nothing rendered"
            result.max_gap_hold_ms = max(result.max_gap_hold_ms, tick - oldest + FRAME_INTERVAL_MS)
        c = buffer.counters
        assert c.received == c.rendered + c.dropped + buffer.buffered
        assert buffer.buffered <= buffer.max_frames
        tick += FRAME_INTERVAL_MS
    return result
