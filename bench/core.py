#!/usr/bin/env python3
"""Micro-benchmark of the player's pure-Python core, under CPython and under Pyodide.

    .venv/bin/python bench/core.py            # full run (~15 s)
    .venv/bin/python bench/core.py --quick    # a few seconds
    .venv/bin/python bench/core.py --no-pyodide

Prints one JSON document to stdout (a human summary goes to stderr). Measured, per operation:

* ``decode_packet``       one ~557-byte plain packet holding one keyframe
* ``decode_packet_gzip``  the same packet gzip-compressed (COMPRESSED flag)
* ``unwrap_frame``        one VP8 carrier frame (prefix | packet | length | AVMF)
* ``jitter_push_tick``    ``JitterBuffer.push`` of the next frame + one ``tick`` (steady state)
* ``core_path``           one 40 ms frame through the whole core: ``unwrap_frame`` +
                          ``MotionPipeline.receive_packet`` (which decodes) + ``MotionPipeline.tick``,
                          on a stream of turns with transitions and idle heartbeats
* ``core_path_sync``      the same, following the audio: packets with RTP timestamps, the audio's
                          synchronization source each tick, its statistics every 12 ticks

The CPython numbers are measured in this process; the Pyodide numbers by re-running this file
inside Pyodide (``node tools/pyodide_run.mjs --script bench/core.py --inner``) and merging its
JSON. Inputs are built before timing starts; each op is timed in batches with
``time.perf_counter_ns`` and the report gives the median and p90 of the per-op time over all
batches, plus the median of the per-round means. Target: the whole core path costs at most
50 µs per frame in Pyodide.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from avatarplayer.wire.motion import (  # noqa: E402
    Flags,
    MotionPacket,
    decode_packet,
    encode_packet,
    unwrap_frame,
    wrap_frame,
)

try:
    from avatarplayer.jitter import JitterBuffer
except ImportError:  # not written yet
    JitterBuffer = None  # type: ignore[assignment,misc]
try:
    from avatarplayer.sync import AudioStats
except ImportError:  # an older checkout, for comparisons
    AudioStats = None  # type: ignore[assignment,misc]
try:
    from avatarplayer.pipeline import MotionPipeline
except ImportError:
    MotionPipeline = None  # type: ignore[assignment,misc]

TARGET_US_PER_FRAME = 50.0
FRAME_MS = 40
POOL = 64  # distinct inputs cycled through by the stateless benchmarks

# ---------------------------------------------------------------------- realistic payloads
# A serialized driveningress.v2.Message with one FLAME keyframe, written out by hand (no
# protobuf runtime needed, so it builds the same in Pyodide): 120 packed float32 values, 495
# bytes for the Flame alone, as real producer output. The floats follow a smooth random motion,
# so compression behaves like on real frames (float mantissas barely compress).

FLAME_SIZES = (3, 3, 3, 3, 6, 2, 100)  # translation, rotation, neck, jaw, eye_pose, eye_lid, expression


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _message(values: list[list[float]], *, conn: str, req: str, avatar: str, end: bool = False) -> bytes:
    flame = b"".join(_ld(i + 1, struct.pack(f"<{len(v)}f", *v)) for i, v in enumerate(values))
    sra = _ld(1, conn.encode()) + _ld(2, req.encode())
    if end:
        sra += _varint(3 << 3 | 0) + b"\x01"
    sra += _ld(4, _ld(1, flame)) + _ld(5, avatar.encode())
    return _varint(1 << 3 | 0) + _varint(5) + _ld(6, sra)


IDS = {"connection_id": "room-7f3a9c1e", "req_id": "req-5be01c9d2a77", "avatar_id": "avt-0042"}


def make_keyframes(count: int, seed: int = 7) -> list[list[list[float]]]:
    """``count`` consecutive FLAME keyframes of a talking head (smooth AR(1) motion, blinks),
    each a list of the 7 float lists in field order."""
    rng = random.Random(seed)
    expr = [rng.gauss(0, 0.4) for _ in range(100)]
    out = []
    for t in range(count):
        expr = [0.85 * e + rng.gauss(0, 0.15) for e in expr]
        phase = t * FRAME_MS / 1000
        blink = 1.0 if t % 90 in (0, 1, 2) else rng.uniform(0.0, 0.08)
        out.append([
            [0.002 * math.sin(phase * 0.7), -0.001 * math.cos(phase * 0.5), 0.0005 * rng.gauss(0, 1)],
            [0.04 * math.sin(phase * 1.1), 0.06 * math.sin(phase * 0.6), 0.01 * rng.gauss(0, 1)],
            [0.03 * math.sin(phase * 0.9), 0.02 * math.cos(phase * 0.4), 0.005 * rng.gauss(0, 1)],
            [abs(0.18 * math.sin(phase * 7.3)) + 0.01 * rng.random(), 0.002 * rng.gauss(0, 1), 0.0],
            [0.05 * math.sin(phase * 0.3 + k) + 0.01 * rng.gauss(0, 1) for k in range(6)],
            [blink, blink],
            expr,
        ])
    return out


def make_messages(count: int, seed: int = 7) -> list[bytes]:
    return [_message(kf, conn=IDS["connection_id"], req=IDS["req_id"], avatar=IDS["avatar_id"])
            for kf in make_keyframes(count, seed)]


def _packet(flags: Flags, seq: int | None, message: bytes, compression=None) -> bytes:
    return encode_packet(MotionPacket(flags, seq, message), compression)


def make_stream(ticks: int, messages: list[bytes], turn_frames: int = 250, idle_ticks: int = 25) -> list[bytes]:
    """Carrier frames, one per 40 ms tick: turns of ``turn_frames`` frames (TRANSITION first,
    START..END, TRANSITION_END) separated by IDLE heartbeats; seq grows through the stream."""
    frames: list[bytes] = []
    seq = 1000
    while len(frames) < ticks:
        frames.append(wrap_frame(_packet(Flags.TRANSITION, None, messages[0])))
        for i in range(turn_frames):
            flags = (Flags.START if i == 0 else Flags(0)) | (Flags.END if i == turn_frames - 1 else Flags(0))
            frames.append(wrap_frame(_packet(flags, seq, messages[seq % len(messages)])))
            seq += 1
        frames.append(wrap_frame(_packet(Flags.TRANSITION_END, None, b"")))
        frames.extend(wrap_frame(_packet(Flags.IDLE, None, b"")) for _ in range(idle_ticks))
    return frames[:ticks]


# ------------------------------------------------------------------------------------ timing


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _summarize(per_op_ns: list[list[float]], batch: int) -> dict:
    flat = [x for rnd in per_op_ns for x in rnd]
    round_means = [statistics.fmean(rnd) for rnd in per_op_ns]
    return {
        "median_us": round(statistics.median(flat) / 1000, 3),
        "p90_us": round(_percentile(flat, 0.9) / 1000, 3),
        "min_us": round(min(flat) / 1000, 3),
        "rounds_median_us": round(statistics.median(round_means) / 1000, 3),
        "rounds": len(per_op_ns),
        "batches": len(flat),
        "ops": len(flat) * batch,
    }


def bench_stateless(fn, inputs: list, rounds: int, batches: int, batch: int) -> dict:
    """``fn(x)`` over ``inputs`` (cycled); per-op ns for each batch of ``batch`` calls."""
    work = [inputs[i % len(inputs)] for i in range(batch)]
    for x in work * 3:  # warm-up
        fn(x)
    clock = time.perf_counter_ns
    results = []
    for _ in range(rounds):
        per_op = []
        for _ in range(batches):
            t0 = clock()
            for x in work:
                fn(x)
            per_op.append((clock() - t0) / batch)
        results.append(per_op)
    return _summarize(results, batch)


def bench_stream(step, items: list, rounds: int, batches: int, batch: int, warmup: int) -> dict:
    """A stateful ``step(item)`` over consecutive ``items`` (never reused): the first ``warmup``
    are untimed, then ``rounds * batches`` batches of ``batch`` items."""
    need = warmup + rounds * batches * batch
    assert len(items) >= need, (len(items), need)
    for item in items[:warmup]:
        step(item)
    clock = time.perf_counter_ns
    chunks = [items[warmup + k * batch: warmup + (k + 1) * batch] for k in range(rounds * batches)]
    results = []
    for r in range(rounds):
        per_op = []
        for chunk in chunks[r * batches:(r + 1) * batches]:
            t0 = clock()
            for item in chunk:
                step(item)
            per_op.append((clock() - t0) / batch)
        results.append(per_op)
    return _summarize(results, batch)


# ---------------------------------------------------------------------------------- runtime


def runtime_info() -> dict:
    info = {
        "implementation": sys.implementation.name,
        "python": platform.python_version(),
        "sys_platform": sys.platform,
        "machine": platform.machine(),
    }
    if sys.platform == "emscripten":
        try:
            import pyodide  # type: ignore[import-not-found]

            info["pyodide"] = pyodide.__version__
        except Exception:  # pragma: no cover - best effort
            pass
        try:
            from js import process  # type: ignore[import-not-found]

            info["node"] = str(process.version)
        except Exception:  # pragma: no cover
            pass
    return info


def run_inner(quick: bool) -> dict:
    """All measurements in this interpreter."""
    rounds, batches, batch = (3, 10, 50) if quick else (7, 40, 100)
    messages = make_messages(250)
    plain = [_packet(Flags(0), 5000 + i, messages[i]) for i in range(POOL)]
    gz = [_packet(Flags(0), 5000 + i, messages[i], "gzip") for i in range(POOL)]
    carriers = [wrap_frame(p) for p in plain]
    for raw, packed in zip(plain, gz):  # the inputs are what they claim to be
        assert decode_packet(raw).message == decode_packet(packed).message
    assert all(unwrap_frame(c)[1] == p for c, p in zip(carriers, plain))

    results: dict[str, dict] = {}
    results["decode_packet"] = bench_stateless(decode_packet, plain, rounds, batches, batch)
    results["decode_packet_gzip"] = bench_stateless(decode_packet, gz, rounds, batches, batch)
    results["unwrap_frame"] = bench_stateless(unwrap_frame, carriers, rounds, batches, batch)

    warmup = 200
    ticks = warmup + rounds * batches * batch
    if JitterBuffer is not None:
        buf = JitterBuffer(80)
        items = [(seq, (Flags(0), messages[seq % len(messages)]), seq * FRAME_MS) for seq in range(ticks)]
        push, tick = buf.push, buf.tick
        rendered = [0]

        def jitter_step(item, push=push, tick=tick):
            seq, frame, now = item
            push(seq, frame, now + 5, start=seq == 0)
            if tick(now + 10) is not None:
                rendered[0] += 1

        results["jitter_push_tick"] = bench_stream(jitter_step, items, rounds, batches, batch, warmup)
        assert rendered[0] >= ticks - 2, f"the jitter buffer rendered {rendered[0]} of {ticks} frames"
    else:
        results["jitter_push_tick"] = {"skipped": "avatarplayer.jitter not available"}

    if MotionPipeline is not None:
        pipe = MotionPipeline()
        stream = make_stream(ticks, messages)
        items = [(frame, i * FRAME_MS) for i, frame in enumerate(stream)]
        receive, ptick = pipe.receive_packet, pipe.tick
        events = [0]

        def core_step(item, receive=receive, ptick=ptick):
            frame, now = item
            split = unwrap_frame(frame)
            if split is not None:
                receive(split[1], now + 5)
            events[0] += len(ptick(now + 10))

        results["core_path"] = bench_stream(core_step, items, rounds, batches, batch, warmup)
        summary = pipe.summary(ticks * FRAME_MS)
        sent = sum(1 for frame in stream if decode_packet(unwrap_frame(frame)[1]).sequenced)
        results["core_path"].update(ticks=ticks, frames_sent=sent, frames_rendered=summary.frames_rendered,
                                    pipeline_events=events[0])
        # the stream really went through: (almost) every frame rendered, nothing malformed
        assert pipe.packets_malformed == 0 and summary.frames_rendered >= sent - 4, (summary, sent)
    else:
        results["core_path"] = {"skipped": "avatarplayer.pipeline not available"}

    if MotionPipeline is not None and AudioStats is not None:
        # the same stream, following the audio: every packet with its RTP timestamp, the audio's
        # synchronization source every tick, its statistics every 12 ticks (what the browser does)
        pipe = MotionPipeline()
        items = [(frame, i * FRAME_MS, i) for i, frame in enumerate(stream)]
        receive, ptick = pipe.receive_packet, pipe.tick
        playout, audio = pipe.observe_audio_playout, pipe.observe_audio
        delay = 30.0  # NetEq's wait, ms

        def sync_step(item, receive=receive, ptick=ptick, playout=playout, audio=audio):
            frame, now, i = item
            split = unwrap_frame(frame)
            if split is not None:
                receive(split[1], now + 5, 90_000.0 + i * 3600)
            playout(48_000.0 + (i * FRAME_MS - 20) * 48, now + 60, now + 70)  # i*40-20 delivered at now+60
            if i % 12 == 0:
                audio(AudioStats(now + 10, delay * i * 1920 / 1000, i * 1920, i * 2))
            ptick(now + 10)

        results["core_path_sync"] = bench_stream(sync_step, items, rounds, batches, batch, warmup)
        summary = pipe.summary(ticks * FRAME_MS)
        results["core_path_sync"].update(frames_rendered=summary.frames_rendered, sync_mode=summary.sync_mode,
                                         sync_mapping=summary.sync_mapping)
        assert summary.sync_mode == "audio" and summary.frames_rendered >= sent - 30, summary
    else:
        results["core_path_sync"] = {"skipped": "avatarplayer.sync not available"}

    return {
        "runtime": runtime_info(),
        "params": {"rounds": rounds, "batches_per_round": batches, "ops_per_batch": batch},
        "payload_bytes": {
            "message": len(messages[0]),
            "packet": len(plain[0]),
            "packet_gzip": len(gz[0]),
            "carrier_frame": len(carriers[0]),
        },
        "results": results,
    }


def _payload_check() -> bool | None:
    """True when the hand-made payload is byte for byte what ``avatarplayer.wire.messages`` (the real
    protobuf schema) serializes for the same keyframe; None where protobuf is not installed."""
    try:
        from avatarplayer.wire.messages import build_message
    except Exception:
        return None
    keyframe = make_keyframes(1)[0]
    flame = {name: [struct.unpack("<f", struct.pack("<f", v))[0] for v in vals]
             for name, vals in zip(("translation", "rotation", "neck_pose", "jaw_pose", "eye_pose",
                                    "eye_lid", "expression"), keyframe)}
    return build_message(flame, **IDS) == make_messages(1)[0]


def run_pyodide(quick: bool) -> tuple[dict, float]:
    cmd = ["node", str(ROOT / "tools" / "pyodide_run.mjs"), "--script", str(Path(__file__).resolve()), "--inner"]
    if quick:
        cmd.append("--quick")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        return {"error": f"exit {proc.returncode}: {tail}"}, wall
    return json.loads(lines[-1]), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (a few seconds)")
    parser.add_argument("--inner", action="store_true", help="measure this interpreter only, print its JSON")
    parser.add_argument("--no-pyodide", action="store_true", help="CPython only")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file (e.g. bench/out/core.json)")
    args = parser.parse_args(argv)

    if args.inner:
        print(json.dumps(run_inner(args.quick)), flush=True)
        return 0

    report: dict = {"benchmark": "avatarplayer core", "quick": args.quick, "target_us_per_frame": TARGET_US_PER_FRAME}
    cpython = run_inner(args.quick)
    check = _payload_check()
    if check is not None:
        cpython["payload_matches_protobuf_schema"] = check
    report["cpython"] = cpython
    ok = True
    if not args.no_pyodide:
        pyo, wall = run_pyodide(args.quick)
        pyo["wall_s"] = round(wall, 1)
        report["pyodide"] = pyo
        if "results" in pyo:
            ratios = {}
            for name, res in pyo["results"].items():
                base = cpython["results"].get(name, {})
                if "median_us" in res and base.get("median_us"):
                    ratios[name] = round(res["median_us"] / base["median_us"], 2)
            report["ratio_pyodide_over_cpython"] = ratios
            core = pyo["results"].get("core_path", {})
            report["target_met"] = ("median_us" in core and core["median_us"] <= TARGET_US_PER_FRAME)
            report["target_met_p90"] = ("p90_us" in core and core["p90_us"] <= TARGET_US_PER_FRAME)
        else:
            ok = False
            report["target_met"] = None

    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")

    for label in ("cpython", "pyodide"):
        res = report.get(label, {}).get("results", {})
        if res:
            line = ", ".join(f"{k} {v['median_us']:.2f}" for k, v in res.items() if "median_us" in v)
            print(f"[bench] {label} median µs/op: {line}", file=sys.stderr)
    if "target_met" in report:
        print(f"[bench] core path in Pyodide <= {TARGET_US_PER_FRAME:.0f} µs/frame: {report['target_met']}",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
