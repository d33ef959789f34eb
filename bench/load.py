#!/usr/bin/env python3
"""Load benchmark, "Many visitors": N concurrent visitors, each in a room of its own with its own
dispatched avatar session speaking continuously. Prints JSON.

    .venv/bin/python bench/load.py                                  # 1,2,4,8,12 sessions, 30 s each, ~7 min
    .venv/bin/python bench/load.py --quick                          # 1,3 sessions, 15 s each, ~2 min
    .venv/bin/python bench/load.py --sessions 1,2,4,8,12 --seconds 30 --workers 1 \\
        --job-executor process,thread --out bench/out/load.json --plot bench/out/load.png

Per sweep point N (a fresh loopback LiveKit server and fresh dispatch workers for every N, so no
room, job process or server state carries over from the previous point):

* W dispatch workers (``python -m avatar_worker --dispatch AGENT --mode speech --text ...
  --repeat-every-s ...``, credentials in the environment), each with a send log per session.
* N viewers, each joining a room of its own with a dispatch token (LiveKit creates the room and
  hands a worker the job): N-1 ``livekit.rtc.Room`` viewers in this process (one asyncio loop in a
  thread) that subscribe to the avatar's audio only (frames and energy counted) and get motion on
  the data carrier (asked for on the control topic; packets decoded with
  ``avatarplayer.wire.motion.decode_packet``), plus one real Chromium page (the recording harness,
  ``web/dev/player.html``, VP8 carrier) whose rendered frames are compared byte for byte with the
  session's send log (SHA-256 of every ``Message``).
* Once every session sends, a steady window of ``--seconds``; CPU and RSS/PSS of the worker process
  trees, livekit-server, this process (the Python viewers) and Playwright+Chromium sampled every
  second from /proc (psutil).

Definitions (bench/README.md, "Benchmark: many visitors"):

* a frame is *on time* at a viewer when its own packet arrived at most ``LATE_MS`` (80 ms) after
  its capture ``t_ms`` (the worker's ``time.time()`` at emission; the viewer stamps arrival with
  ``time.time()`` on the same host). Frames are those the session captured in the window.
* *capture jitter*: from the session's send log, |interval between captures of consecutive ticks
  - 40 ms|, p95 over the window.
* the *knee*: the largest N such that at N and at every smaller N of the sweep, every viewer got
  >= 99 % of its frames on time and every session's capture jitter p95 was <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as bench/load.py: the repository is not on the path

from avatarplayer.wire.datamsg import CONTROL_TOPIC, MOTION_TOPIC  # noqa: E402
from tools.devstack import end_process_group  # noqa: E402

FRAME_MS = 40.0
LATE_MS = 80.0
ON_TIME_TARGET_PCT = 99.0
JITTER_TARGET_MS = 5.0
CPU_GOAL_PCT = 3.0  # % of one core per avatar session, worker side
AGENT_NAME = "bench-load-avatar"
WORKER_IDENTITY = "avatar-worker"  # the sessions' identity (the CLI's --identity default)
TEXT = ("Welcome, and thank you for coming by. I am the avatar of this page, and I keep talking so that "
        "the benchmark always has motion to send: my jaw follows the loudness of my voice, my eyes blink "
        "now and then, and every forty milliseconds a motion frame leaves the worker next to my audio. "
        "When I reach the end of this paragraph I simply start again from the beginning.")


# ----------------------------------------------------------------------------------- pure helpers


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the same as tools/realstack.py); ValueError when empty."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def capture_jitter(records: Iterable[dict], t0_ms: float, t1_ms: float, frame_ms: float = FRAME_MS) -> dict:
    """|interval between the captures of two consecutive ticks - frame_ms| over the send log
    records (any kind with ``tick`` and ``t_ms``: frames, transitions, idle heartbeats) captured in
    [t0_ms, t1_ms]; the first record of each tick counts. ``{"n", "p50", "p95", "max"}`` in ms."""
    first: dict[int, float] = {}
    for r in records:
        tick, t = r.get("tick"), r.get("t_ms")
        if tick is None or t is None or not t0_ms <= t <= t1_ms:
            continue
        first.setdefault(tick, t)
    ticks = sorted(first)
    dev = [abs(first[b] - first[a] - frame_ms) for a, b in zip(ticks, ticks[1:]) if b == a + 1]
    if not dev:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    return {"n": len(dev), "p50": round(percentile(dev, 50), 3), "p95": round(percentile(dev, 95), 3),
            "max": round(max(dev), 3)}


def sent_frames(records: Iterable[dict], t0_ms: float, t1_ms: float, *, carrier: str) -> dict[int, float]:
    """seq -> capture t_ms of the frames captured in [t0_ms, t1_ms] that went out on ``carrier``
    ("data": handed to the SDK as a data message, "video": handed to WebRTC in a VP8 frame)."""
    key = "data" if carrier == "data" else "sent"
    out: dict[int, float] = {}
    for r in records:
        if r.get("kind") in ("frame", "reordered") and r.get(key) and r.get("seq") is not None \
                and t0_ms <= r["t_ms"] <= t1_ms:
            out.setdefault(r["seq"], r["t_ms"])
    return out


def delivery(sent: dict[int, float], arrivals: dict[int, float], late_ms: float = LATE_MS) -> dict:
    """How the frames ``sent`` (seq -> capture ms) reached a viewer (``arrivals``: seq -> first
    arrival ms of the frame's own packet): received, on time (delay <= late_ms), late, lost, the
    percentages of sent, the one-way delay p50/p95/max and the longest run of lost seqs."""
    delays = {seq: arrivals[seq] - t for seq, t in sent.items() if seq in arrivals}
    on_time = sum(d <= late_ms for d in delays.values())
    lost = sorted(set(sent) - set(delays))
    longest, run, prev = 0, 0, None
    for seq in lost:
        run = run + 1 if prev is not None and seq == prev + 1 else 1
        longest, prev = max(longest, run), seq
    n = len(sent)
    values = list(delays.values())
    return {
        "sent": n, "received": len(delays), "on_time": on_time, "late": len(delays) - on_time, "lost": len(lost),
        "received_pct": round(100.0 * len(delays) / n, 3) if n else None,
        "on_time_pct": round(100.0 * on_time / n, 3) if n else None,
        "delay_ms": {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1),
                     "max": round(max(values), 1)} if values else {},
        "longest_loss_run": longest,
    }


def byte_for_byte(rendered: Sequence[bytes], sent: Sequence[tuple[int, str]]) -> dict:
    """Whether every rendered ``Message`` is, byte for byte, one the session sent, in the order sent
    (``sent``: (seq, msg_sha256) in send order): rendered frames must be a subsequence of the sent
    ones. Returns counts, the seq range covered and the index of the first frame that does not fit."""
    shas = [sha for _, sha in sent]
    pos = 0
    matched_seqs: list[int] = []
    first_bad = None
    for i, frame in enumerate(rendered):
        digest = hashlib.sha256(frame).hexdigest()
        try:
            j = shas.index(digest, pos)
        except ValueError:
            first_bad = i
            break
        matched_seqs.append(sent[j][0])
        pos = j + 1
    return {"ok": bool(rendered) and first_bad is None, "rendered": len(rendered), "matched": len(matched_seqs),
            "first_mismatch": first_bad,
            "seqs": [matched_seqs[0], matched_seqs[-1]] if matched_seqs else None}


def passes(point: dict, on_time_pct: float = ON_TIME_TARGET_PCT, jitter_ms: float = JITTER_TARGET_MS) -> bool:
    """A sweep point meets the targets: every viewer's on-time % and every session's jitter p95."""
    worst_on_time = point.get("worst_on_time_pct")
    worst_jitter = point.get("worst_jitter_p95_ms")
    return (worst_on_time is not None and worst_jitter is not None
            and worst_on_time >= on_time_pct and worst_jitter <= jitter_ms)


def knee(points: Sequence[dict], on_time_pct: float = ON_TIME_TARGET_PCT,
         jitter_ms: float = JITTER_TARGET_MS) -> int | None:
    """The largest ``sessions`` such that it and every smaller sweep point pass (None when the
    smallest fails). A point that passes after a failing one does not move the knee: on a noisy
    machine that is luck, not capacity."""
    best = None
    for point in sorted(points, key=lambda p: p["sessions"]):
        if not passes(point, on_time_pct, jitter_ms):
            break
        best = point["sessions"]
    return best


def marginal(rows: Sequence[dict], key: str) -> float | None:
    """The cost of one more session: the least-squares slope of ``key`` over ``sessions`` (None
    with fewer than two points)."""
    pts = [(r["sessions"], r[key]) for r in rows if r.get(key) is not None]
    if len({n for n, _ in pts}) < 2:
        return None
    mx = statistics.fmean(n for n, _ in pts)
    my = statistics.fmean(v for _, v in pts)
    slope = sum((n - mx) * (v - my) for n, v in pts) / sum((n - mx) ** 2 for n, _ in pts)
    return round(slope, 3)


def window_mean(samples: Sequence[tuple[float, dict]], t0: float, t1: float, group: str, key: str) -> float | None:
    """Mean of ``key`` of ``group`` over the samples taken in [t0, t1] (epoch s)."""
    values = [s[group][key] for t, s in samples if t0 <= t <= t1 and group in s and s[group].get(key) is not None]
    return statistics.fmean(values) if values else None


def median_points(sweeps: Sequence[Sequence[dict]], keys: Sequence[str]) -> list[dict]:
    """Per sessions count, the median of each of ``keys`` over sweeps (missing values skipped)."""
    by_n: dict[int, list[dict]] = {}
    for sweep in sweeps:
        for point in sweep:
            by_n.setdefault(point["sessions"], []).append(point)
    out = []
    for n in sorted(by_n):
        row: dict = {"sessions": n, "sweeps": len(by_n[n])}
        for key in keys:
            values = [p[key] for p in by_n[n] if p.get(key) is not None]
            row[key] = statistics.median(values) if values else None
            row[key + "_range"] = [min(values), max(values)] if values else None
        out.append(row)
    return out


# ------------------------------------------------------------------------------------ sampling


class Sampler:
    """Every ``interval`` s: CPU (% of one core, summed over a group's processes) and memory
    (RSS and PSS, MB) of each group. A group is a callable returning its processes' pids."""

    def __init__(self, groups: dict[str, callable], interval: float = 1.0, pss: Sequence[str] = (),
                 roots: callable = lambda: ()) -> None:
        import psutil

        self.psutil = psutil
        self.groups = groups
        self.interval = interval
        self.pss = set(pss)
        self.roots = roots  # pids whose own CPU is also reported apart ("roots_cpu_pct" in their group)
        self.samples: list[tuple[float, dict]] = []
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, create_time) -> cpu seconds at the last sample
        self._last = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self._sample(record=False)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except Exception as exc:  # a sample lost is not a benchmark lost
                print(f"sampler: {exc!r}", file=sys.stderr)

    def _sample(self, record: bool = True) -> None:
        psutil = self.psutil
        now = time.time()
        dt = now - self._last
        seen: dict[tuple[int, float], float] = {}
        out: dict[str, dict] = {}
        roots = set(self.roots())
        for name, pids in self.groups.items():
            cpu = rss = pss = root_cpu = 0.0
            count = 0
            for pid in pids():
                try:
                    proc = psutil.Process(pid)
                    with proc.oneshot():
                        key = (pid, proc.create_time())
                        times = proc.cpu_times()
                        total = times.user + times.system
                        if name in self.pss:
                            mem = proc.memory_full_info()
                            rss += mem.rss
                            pss += mem.pss
                        else:
                            rss += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                seen[key] = total
                before = self._cpu.get(key)
                used = 0.0
                if before is not None:
                    used = total - before
                elif key[1] >= self._last:  # born since the last sample: all its CPU is in this interval
                    used = total
                cpu += used
                if pid in roots:
                    root_cpu += used
                count += 1
            out[name] = {"cpu_pct": 100.0 * cpu / dt if dt > 0 else None, "rss_mb": rss / 2**20,
                         "roots_cpu_pct": 100.0 * root_cpu / dt if dt > 0 else None,
                         "pss_mb": pss / 2**20 if name in self.pss else None, "procs": count}
        self._cpu, self._last = seen, now
        if record:
            self.samples.append((now, out))


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


# ----------------------------------------------------------------------------------- the viewers


@dataclass
class Viewer:
    """A headless visitor: its own room (created by its dispatch token), the avatar's audio
    subscribed (frames and energy counted; video never subscribed, so nothing decodes VP8 here),
    motion on the data carrier."""

    server: object
    room_name: str
    identity: str
    room: object = None
    arrivals: dict[int, float] = field(default_factory=dict)
    """seq -> epoch ms when the frame's own packet arrived"""
    recovered: dict[int, float] = field(default_factory=dict)
    """seq -> epoch ms when the frame arrived in a later REDUNDANT packet (prev1/prev2)"""
    bad_packets: int = 0
    other_packets: int = 0
    audio: list[tuple[float, float]] = field(default_factory=list)
    """(epoch s, RMS of the frame, int16 full scale = 32768) per audio frame received"""
    asked_at: float | None = None
    acked_at: float | None = None
    errors: list[str] = field(default_factory=list)
    _tasks: list = field(default_factory=list)

    async def connect(self) -> None:
        from livekit import rtc

        from avatarplayer.wire.motion import PacketError, decode_packet

        room = self.room = rtc.Room()

        @room.on("track_published")
        def _published(pub, participant) -> None:
            if participant.identity == WORKER_IDENTITY and pub.kind == rtc.TrackKind.KIND_AUDIO:
                pub.set_subscribed(True)
            if participant.identity == WORKER_IDENTITY and self.asked_at is None:
                self.asked_at = time.time()
                self._tasks.append(asyncio.ensure_future(self._ask()))

        @room.on("track_subscribed")
        def _subscribed(track, pub, participant) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                self._tasks.append(asyncio.ensure_future(self._listen(track)))

        @room.on("data_received")
        def _data(packet) -> None:
            now = time.time() * 1000
            if packet.topic == MOTION_TOPIC:
                try:
                    p = decode_packet(bytes(packet.data))
                except PacketError:
                    self.bad_packets += 1
                    return
                if p.seq is None:
                    self.other_packets += 1
                    return
                self.arrivals.setdefault(p.seq, now)
                for back, message in enumerate(p.previous, start=1):
                    if message:
                        self.recovered.setdefault(p.seq - back, now)
            elif packet.topic == CONTROL_TOPIC:
                with contextlib.suppress(ValueError):
                    if json.loads(bytes(packet.data)).get("type") == "carrier-ack":
                        self.acked_at = now

        token = self.server.token(self.identity, self.room_name, can_publish=False, can_publish_data=True,
                                  dispatch=[AGENT_NAME])
        await room.connect(self.server.url, token, rtc.RoomOptions(auto_subscribe=False))

    async def _ask(self) -> None:
        """Ask for the data carrier until acknowledged (the session may not listen yet)."""
        request = json.dumps({"type": "carrier", "carrier": "data", "topic": MOTION_TOPIC})
        for _ in range(20):
            try:
                await self.room.local_participant.publish_data(request, reliable=True, topic=CONTROL_TOPIC,
                                                               destination_identities=[WORKER_IDENTITY])
            except Exception as exc:
                self.errors.append(f"carrier request: {exc!r}")
            for _ in range(30):
                if self.acked_at is not None:
                    return
                await asyncio.sleep(0.1)

    async def _listen(self, track) -> None:
        import numpy as np
        from livekit import rtc

        stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1, frame_size_ms=40)
        try:
            async for event in stream:
                samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float32)
                rms = float(np.sqrt(np.mean(samples * samples))) / 32768.0 if samples.size else 0.0
                self.audio.append((time.time(), rms))
        finally:
            await stream.aclose()

    @property
    def started(self) -> bool:
        return bool(self.arrivals)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.room is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.room.disconnect(), 10)

    def audio_stats(self, t0: float, t1: float) -> dict:
        frames = [rms for t, rms in self.audio if t0 <= t <= t1]
        span = max(1e-9, t1 - t0)
        return {"frames_per_s": round(len(frames) / span, 2),
                "rms_mean": round(statistics.fmean(frames), 4) if frames else None,
                "voiced_pct": round(100.0 * sum(r > 0.01 for r in frames) / len(frames), 1) if frames else None}


class Loop:
    """An asyncio loop in a thread of its own: the Python viewers run there, while the main thread
    drives Chromium with Playwright's sync API and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="viewers", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ----------------------------------------------------------------------------------- the workers


SUMMARY_RE = re.compile(r"session in room '([^']+)' ended \(([^)]*)\): (\{.*\})\s*$")


@dataclass
class DispatchWorker:
    process: subprocess.Popen
    log: Path

    def registered(self) -> bool:
        return self.log.exists() and "registered with the server as agent" in self.log.read_text(errors="replace")

    def summaries(self) -> dict[str, dict]:
        """room -> the session's summary, from the worker's log."""
        out = {}
        if self.log.exists():
            for line in self.log.read_text(errors="replace").splitlines():
                m = SUMMARY_RE.search(line)
                if m:
                    with contextlib.suppress(ValueError):
                        out[m.group(1)] = json.loads(m.group(3)) | {"outcome": m.group(2)}
        return out

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM (running sessions end cleanly and log their summaries), then what is left of its
        process group (its job processes, multiprocessing's forkserver) is ended."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        end_process_group(self.process.pid)  # start_new_session: the group is ours


def start_worker(server, workdir: Path, index: int, args: argparse.Namespace, executor: str) -> DispatchWorker:
    log = workdir / f"worker{index}.log"
    env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key,
               LIVEKIT_API_SECRET=server.api_secret, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "avatar_worker", "--dispatch", AGENT_NAME, "--mode", "speech", "--text", TEXT,
           "--repeat-every-s", str(args.repeat_every_s), "--send-log", str(workdir / "sent.jsonl"),
           "--job-executor", executor, "--load-threshold", str(args.load_threshold),
           # load = sessions / max-sessions: kept at or below 0.5, so LiveKit never sees it (nearly) full
           "--max-sessions", str(2 * max(int(n) for n in str(args.sessions).split(",") if n.strip())),
           "--idle-processes", str(args.idle_processes), "--log-level", "info",
           *(["--realtime"] if args.realtime else [])]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return DispatchWorker(process, log)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


# --------------------------------------------------------------------------------- one sweep point


def chromium_arrivals(results: dict) -> dict[int, float]:
    """seq -> arrival ms of each sequenced packet the page's player got (the harness records each
    packet's first 9 bytes: flags u8, length u32, seq u32 LE; IDLE and control packets have no seq)."""
    from avatarplayer.wire.motion import Flags

    out: dict[int, float] = {}
    unsequenced = Flags.IDLE | Flags.TRANSITION | Flags.TRANSITION_END | Flags.COMPRESSED
    for arrival, _rtp, head in results.get("packets", []):
        raw = bytes.fromhex(head)
        if len(raw) < 9 or raw[0] & unsequenced:
            continue
        out.setdefault(int.from_bytes(raw[5:9], "little"), arrival)
    return out


def run_point(n: int, args: argparse.Namespace, executor: str, tmp: Path, browser, chromium: bool) -> dict:
    from tools.devstack import LiveKitServer
    from tools.realstack import harness_url, read_harness

    workdir = tmp / f"{executor}-n{n}-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True)
    tag = uuid.uuid4().hex[:6]
    rooms = [f"load-{tag}-{i:02d}" for i in range(n)]
    chromium_room = rooms[0] if chromium else None
    py_rooms = [r for r in rooms if r != chromium_room]
    point: dict = {"sessions": n, "executor": executor, "workers": args.workers, "chromium": chromium,
                   "python_viewers": len(py_rooms)}
    loop = Loop()
    viewers = [Viewer(None, room, f"visitor-{i:02d}") for i, room in enumerate(py_rooms)]
    workers: list[DispatchWorker] = []
    page = None
    app_cm = None
    sampler = None
    results: dict = {}
    t0 = t1 = started_at = None
    with LiveKitServer(workdir / "lk") as server:
        try:
            for v in viewers:
                v.server = server
            workers = [start_worker(server, workdir, i, args, executor) for i in range(args.workers)]
            me = os.getpid()
            lk_pid = server._proc.pid

            def worker_pids() -> list[int]:
                return [p for w in workers for p in tree(w.process.pid)]

            def browser_pids() -> list[int]:
                skip = {lk_pid, *(w.process.pid for w in workers)}
                import psutil

                return [p for c in psutil.Process(me).children() if c.pid not in skip for p in tree(c.pid)]

            sampler = Sampler({"workers": worker_pids, "livekit": lambda: [lk_pid], "viewers": lambda: [me],
                               "browser": browser_pids}, pss=("workers", "livekit"),
                              roots=lambda: [w.process.pid for w in workers]).start()
            deadline = time.monotonic() + 60
            while not all(w.registered() for w in workers):
                if time.monotonic() > deadline or any(w.process.poll() is not None for w in workers):
                    raise RuntimeError("a dispatch worker did not register:\n" + "\n".join(w.tail() for w in workers))
                time.sleep(0.2)
            started_at = time.time()
            if chromium:
                from tools.webapp import build_app

                app_cm = build_app(server, rooms=r"load-[a-z0-9-]+", dev=True)
                app = app_cm.__enter__()
                page = browser.new_page()
                page.goto(harness_url(app, server, server.token("chromium-visitor", chromium_room, can_publish=False,
                                                                dispatch=[AGENT_NAME]), lk=args.lk))
            for v in viewers:  # a little apart, as visitors come: the pool starts a process per job
                loop.run(v.connect(), timeout=30)
                time.sleep(args.stagger_s)

            def chromium_frames() -> int:
                return int(read_harness(page, full=False).results.get("frames", []).__len__()) if page else 1

            deadline = time.monotonic() + 45 + 6 * n
            while not (all(v.started for v in viewers) and chromium_frames() > 0):
                if time.monotonic() > deadline:
                    missing = [v.room_name for v in viewers if not v.started]
                    raise RuntimeError(f"sessions not streaming after {45 + 6 * n} s: {missing} "
                                       f"chromium frames={chromium_frames()}\n" + "\n".join(w.tail() for w in workers))
                time.sleep(0.5)
            point["all_streaming_after_s"] = round(time.time() - started_at, 1)
            time.sleep(args.settle_s)
            t0 = time.time()
            time.sleep(args.seconds)
            t1 = time.time()
            time.sleep(1.0)  # frames in flight
            if page is not None:
                results = read_harness(page).results
        finally:
            if sampler is not None:
                sampler.stop()
            for v in viewers:
                with contextlib.suppress(Exception):
                    loop.run(v.close(), timeout=15)
            loop.close()
            if page is not None:
                with contextlib.suppress(Exception):
                    page.close()
            if app_cm is not None:
                app_cm.__exit__(None, None, None)
            for w in workers:
                w.stop()
    summaries = {}
    for w in workers:
        summaries.update(w.summaries())
    if t0 is None:
        raise RuntimeError("the point did not reach its window")
    return analyse(point, n, rooms, chromium_room, viewers, results, summaries, workdir, sampler, t0, t1)


def analyse(point: dict, n: int, rooms: list[str], chromium_room: str | None, viewers: list[Viewer],
            results: dict, summaries: dict, workdir: Path, sampler: Sampler, t0: float, t1: float) -> dict:
    by_room = {v.room_name: v for v in viewers}
    sessions = []
    for room in rooms:
        records = read_jsonl(workdir / f"sent-{room}.jsonl")
        jitter = capture_jitter(records, t0 * 1000, t1 * 1000)
        entry: dict = {"room": room, "capture_jitter_ms": jitter}
        if room == chromium_room:
            sent = sent_frames(records, t0 * 1000, t1 * 1000, carrier="video")
            entry["viewer"] = "chromium"
            entry["frames"] = delivery(sent, chromium_arrivals(results))
            rendered = [bytes.fromhex(h) for h in results.get("frames", [])]
            order = [(r["seq"], r["msg_sha256"]) for r in records
                     if r.get("kind") in ("frame", "reordered") and r.get("sent") and r.get("msg_sha256")]
            entry["byte_for_byte"] = byte_for_byte(rendered, order)
            s = results.get("summary", {})
            entry["player"] = {k: s.get(k) for k in ("framesRendered", "framesSkipped", "framesDropped",
                                                      "framesRecovered", "syncMode")}
            entry["player"]["motion_mode"] = results.get("motionMode")
        else:
            v = by_room[room]
            sent = sent_frames(records, t0 * 1000, t1 * 1000, carrier="data")
            entry["viewer"] = "python"
            entry["frames"] = delivery(sent, v.arrivals)
            entry["frames"]["received_with_redundancy"] = sum(s in v.arrivals or s in v.recovered for s in sent)
            entry["audio"] = v.audio_stats(t0, t1)
            entry["bad_packets"] = v.bad_packets
            if v.errors:
                entry["errors"] = v.errors[:3]
        summary = summaries.get(room)
        if summary:
            entry["summary"] = {k: summary.get(k) for k in ("outcome", "frames_sent", "late", "max_late_ms", "realtime",
                                                            "dropped_by_injection", "refused", "data_sent")}
        sessions.append(entry)
    on_time = [s["frames"]["on_time_pct"] for s in sessions]
    jitters = [s["capture_jitter_ms"]["p95"] for s in sessions]
    point["worst_on_time_pct"] = None if None in on_time or not on_time else min(on_time)
    point["worst_received_pct"] = min((s["frames"]["received_pct"] or 0 for s in sessions), default=None)
    point["worst_jitter_p95_ms"] = None if None in jitters or not jitters else max(jitters)
    point["worst_delay_p95_ms"] = max((s["frames"]["delay_ms"].get("p95", 0) for s in sessions), default=None)
    chromium = next((s for s in sessions if s["viewer"] == "chromium"), None)
    point["chromium_byte_for_byte"] = chromium["byte_for_byte"]["ok"] if chromium else None
    point["chromium_on_time_pct"] = chromium["frames"]["on_time_pct"] if chromium else None
    samples = sampler.samples
    lo, hi = t0 + 0.5, t1 + 0.5  # a sample covers the second before it
    for group in ("workers", "livekit", "viewers", "browser"):
        point[f"{group}_cpu_pct"] = _round(window_mean(samples, lo, hi, group, "cpu_pct"))
        point[f"{group}_rss_mb"] = _round(window_mean(samples, lo, hi, group, "rss_mb"))
    for group in ("workers", "livekit"):
        point[f"{group}_pss_mb"] = _round(window_mean(samples, lo, hi, group, "pss_mb"))
    point["worker_main_cpu_pct"] = _round(window_mean(samples, lo, hi, "workers", "roots_cpu_pct"))
    point["worker_procs"] = max((s["workers"]["procs"] for t, s in samples if lo <= t <= hi), default=None)
    point["worker_cpu_pct_per_session"] = _round(point["workers_cpu_pct"] / n if point["workers_cpu_pct"] else None)
    point["worker_rss_mb_per_session"] = _round(point["workers_rss_mb"] / n if point["workers_rss_mb"] else None)
    point["worker_pss_mb_per_session"] = _round(point["workers_pss_mb"] / n if point["workers_pss_mb"] else None)
    point["livekit_cpu_pct_per_session"] = _round(point["livekit_cpu_pct"] / n if point["livekit_cpu_pct"] else None)
    groups = ("workers", "livekit", "viewers", "browser")
    point["total_cpu_pct"] = _round(sum(point[f"{g}_cpu_pct"] or 0 for g in groups))
    point["load_avg_1m"] = round(os.getloadavg()[0], 2)
    point["window_s"] = round(t1 - t0, 1)
    point["passes"] = passes(point)
    point["sessions_detail"] = sessions
    return point


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------------------- report


POINT_KEYS = ("worker_cpu_pct_per_session", "worker_rss_mb_per_session", "worker_pss_mb_per_session",
              "workers_cpu_pct", "worker_main_cpu_pct", "workers_rss_mb", "workers_pss_mb", "livekit_cpu_pct",
              "livekit_rss_mb", "viewers_cpu_pct", "browser_cpu_pct", "total_cpu_pct", "worst_on_time_pct",
              "worst_received_pct", "worst_jitter_p95_ms", "worst_delay_p95_ms", "chromium_on_time_pct")


def summarize(sweeps: list[list[dict]]) -> dict:
    medians = median_points(sweeps, POINT_KEYS)
    for row in medians:
        row["passes"] = passes(row)
        flags = [p["chromium_byte_for_byte"] for sweep in sweeps for p in sweep
                 if p["sessions"] == row["sessions"] and p.get("chromium_byte_for_byte") is not None]
        row["chromium_byte_for_byte"] = all(flags) if flags else None
    return {"median": medians, "knee": knee(medians), "knee_per_sweep": [knee(s) for s in sweeps],
            "marginal_worker_cpu_pct_per_session": marginal(medians, "workers_cpu_pct"),
            "marginal_worker_pss_mb_per_session": marginal(medians, "workers_pss_mb"),
            "goal_cpu_met": [row["sessions"] for row in medians
                             if row["worker_cpu_pct_per_session"] is not None
                             and row["worker_cpu_pct_per_session"] <= CPU_GOAL_PCT]}


def plot(report: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for index, (executor, result) in enumerate(report["executors"].items()):
        rows = result["median"]
        ns = [r["sessions"] for r in rows]
        line = axes[0].plot(ns, [r["worker_cpu_pct_per_session"] for r in rows], marker="o",
                            label=f"worker, {executor}")
        color = line[0].get_color()
        axes[0].plot(ns, [(r["livekit_cpu_pct"] or 0) / r["sessions"] for r in rows], marker="s", ls=":", color=color,
                     label=f"livekit-server, {executor}")
        axes[1].plot(ns, [r["worker_rss_mb_per_session"] for r in rows], marker="o", color=color,
                     label=f"RSS, {executor}")
        axes[1].plot(ns, [r["worker_pss_mb_per_session"] for r in rows], marker="^", ls="--", color=color,
                     label=f"PSS, {executor}")
        axes[2].plot(ns, [r["worst_on_time_pct"] for r in rows], marker="o", color=color,
                     label=f"worst viewer, {executor}")
        k = result["knee"]
        for ax in axes:
            if k is not None:
                ax.axvline(k, color=color, ls="--", lw=1, alpha=0.7)
        if k is not None:
            axes[2].annotate(f"knee {executor}: N={k}", (k, ON_TIME_TARGET_PCT), textcoords="offset points",
                             xytext=(4, -14 - 12 * index), fontsize=8, color=color)
    axes[0].axhline(CPU_GOAL_PCT, color="green", lw=1, alpha=0.6, label=f"goal {CPU_GOAL_PCT:g} %")
    axes[0].set_ylabel("% of one core per session")
    axes[1].set_ylabel("worker MB per session")
    axes[2].axhline(ON_TIME_TARGET_PCT, color="green", lw=1, alpha=0.6, label=f"{ON_TIME_TARGET_PCT:g} %")
    axes[2].set_ylabel(f"% frames on time (<= {LATE_MS:g} ms)")
    for ax, title in zip(axes, ("CPU per session", "memory per session", "frames on time")):
        ax.set_xlabel("concurrent sessions N")
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,2,4,8,12", help="sweep points: concurrent sessions N")
    parser.add_argument("--seconds", type=float, default=30.0, help="steady window per point")
    parser.add_argument("--workers", type=int, default=1, help="dispatch worker processes W")
    parser.add_argument("--job-executor", default="process",
                        help="process, thread, or both comma-separated (one sweep each)")
    parser.add_argument("--sweeps", type=int, default=1, help="sweeps per executor (medians reported)")
    parser.add_argument("--chromium", choices=("all", "ends", "none"), default="all",
                        help="a Chromium page as one of the N at every point, at the smallest and largest N, or none")
    parser.add_argument("--quick", action="store_true", help="1,3 sessions, 15 s each (~2 minutes)")
    parser.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                        help="workers run sessions under SCHED_RR as serve.py does (needs CAP_SYS_NICE)")
    parser.add_argument("--repeat-every-s", type=float, default=0.5,
                        help="the speech restarts this long after it started (shorter than it: back to back)")
    parser.add_argument("--load-threshold", default="inf",
                        help="workers' load threshold (inf: never report full, every job is taken)")
    parser.add_argument("--idle-processes", type=int, default=1)
    parser.add_argument("--stagger-s", type=float, default=0.3, help="between two visitors joining")
    parser.add_argument("--settle-s", type=float, default=3.0, help="after all sessions stream, before the window")
    parser.add_argument("--lk", default="2.23.0", help="livekit-client version of the Chromium page")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "out" / "load.png")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, send logs)")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.seconds = "1,3", 15.0
    ns = sorted({int(x) for x in args.sessions.split(",") if x.strip()})
    executors = [e.strip() for e in args.job_executor.split(",") if e.strip()]
    if not ns or min(ns) < 1 or any(e not in ("process", "thread") for e in executors):
        parser.error("--sessions takes positive counts, --job-executor process and/or thread")

    if args.chromium != "none":
        from tools import bootstrap

        bootstrap.ensure_web_wheels()
    report: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "definitions": {"late_ms": LATE_MS, "on_time_target_pct": ON_TIME_TARGET_PCT,
                                    "jitter_target_ms": JITTER_TARGET_MS, "cpu_goal_pct_per_session": CPU_GOAL_PCT,
                                    "cpu_pct": "% of one core, mean of 1 s /proc samples over the window",
                                    "cores": os.cpu_count()},
                    "executors": {}, "failed_points": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    pw = browser = None
    try:
        if args.chromium != "none":
            from playwright.sync_api import sync_playwright

            from tools.realstack import CHROMIUM_ARGS

            pw = sync_playwright().start()
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        for executor in executors:
            sweeps = []
            for k in range(args.sweeps):
                points = []
                for n in ns:
                    chromium = args.chromium == "all" or (args.chromium == "ends" and n in (ns[0], ns[-1]))
                    try:
                        point = run_point(n, args, executor, tmp, browser, chromium)
                    except Exception as exc:  # reported, not hidden
                        report["failed_points"].append({"executor": executor, "sweep": k + 1, "sessions": n,
                                                        "error": f"{type(exc).__name__}: {exc}"[:1500]})
                        print(f"{executor} N={n}: FAILED {report['failed_points'][-1]['error'][:300]}", file=sys.stderr)
                        continue
                    points.append(point)
                    print(f"{executor} sweep {k + 1} N={n}: "
                          f"worker CPU {point['worker_cpu_pct_per_session']} %/session, "
                          f"RSS {point['worker_rss_mb_per_session']} MB/session, livekit {point['livekit_cpu_pct']} %, "
                          f"viewers {point['viewers_cpu_pct']} %, browser {point['browser_cpu_pct']} %, "
                          f"worst on time {point['worst_on_time_pct']} %, "
                          f"jitter p95 {point['worst_jitter_p95_ms']} ms, "
                          f"chromium b4b {point['chromium_byte_for_byte']}, load {point['load_avg_1m']}",
                          file=sys.stderr)
                sweeps.append(points)
            report["executors"][executor] = summarize(sweeps) | {"sweeps": sweeps}
    finally:
        if browser is not None:
            browser.close()
        if pw is not None:
            pw.stop()
        if args.keep:
            print(f"work directory kept: {tmp}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    report["plot"] = plot(report, args.plot) if args.plot else None
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
