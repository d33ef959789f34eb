#!/usr/bin/env python3
"""Soak: one page, a long session, restarts underneath it. Prints JSON; plots memory over time.

    .venv/bin/python bench/soak.py --minutes 60 --turn-every-s 10 --livekit-restart-every-min 15 \\
        --job-restart-every-min 20 --out bench/out/soak.json --plot bench/out/soak.png

The real stack on loopback: a LiveKit server (tools/devstack.py), the web app (tools/webapp.py)
whose token endpoint puts the avatar's agent name in each token's room configuration, the avatar
worker registered for agent dispatch (``python -m avatar_worker --dispatch soak-avatar --mode
speech --repeat-every-s N``: every room the page creates gets a session, a job in its own
process), and one Chromium page (web/dev/player.html, the real AvatarPlayer in Pyodide) with a
renderer that only counts (it keeps nothing per frame).

The page acts as an app would (:data:`PAGE_APP`): it connects with a grant source that asks the
token endpoint for a token to a NEW room each time (so every ``reconnect()`` gets a new dispatch);
it calls ``reconnect()`` when the connection failed, when the motion ``stalled`` while connected,
or when no turn began for 2 turn periods + 5 s while connected. LiveKit restarts
(``server.restart(kill=True)``: a crash) are left to livekit-client's own reconnect unless it gives
up. A job restart kills the session's process (SIGKILL, found as the dispatch worker's descendant
holding the room's send log open) just after a turn began: the page sees ``stalled`` and reconnects.

Sampled every ``--sample-every-s``: the JS heap after a forced GC (CDP ``HeapProfiler.collectGarbage``
then ``Runtime.getHeapUsage``), the Pyodide heap (``pyodide._module.HEAP8.length``: the wasm memory,
which never shrinks) and Python's allocated blocks and GC-tracked objects, the player's
``LiveKitProvider.diagnostics()``, the RSS of the dispatch worker's process tree and of Chromium's,
and the turns. Growth after the warm-up is a least-squares slope (MB per hour) and max - min.

Turns: every turn a worker session played (its send log: a ``transition`` record opens one, a
``transition_end`` closes it) is matched with what the page's renderer got for that room and
conversation. Turns that overlap a disruption (a restart until the first frame rendered after it)
are reported apart; every other completed turn must have been rendered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as bench/soak.py: the repository is not on the path

from tools.devstack import end_process_group
from tools.realstack import CHROMIUM_ARGS, REALTIME, is_loopback_url

CHROMIUM = Path("/usr/bin/chromium")
AGENT_NAME = "soak-avatar"
TEXT = "Hello! This is the soak test speaking, one turn after another."
"""About 3.5 s of espeak-ng speech: long enough that a job killed just after a turn began dies mid-turn."""
MB = 1024 * 1024


@dataclass
class SoakConfig:
    minutes: float = 60.0
    turn_every_s: float = 10.0
    livekit_restart_every_min: float = 15.0
    job_restart_every_min: float = 20.0
    sample_every_s: float = 30.0
    warmup_min: float = 5.0
    livekit_kill: bool = True
    text: str = TEXT
    settle_s: float = 10.0
    """Seconds between the page's boot and its first connect."""
    load_threshold: str = "1.0"
    """The dispatch worker's ``--load-threshold`` (its default). LiveKit (1.13.5) drops a dispatch
    while the only worker reports a load near 1 (its affinity is ``1 - load``; no retry). The load
    used to be the host's CPU, which the page's boot drove there; it is now sessions over
    ``--max-sessions``. ``settle_s`` and the page's no-turn reconnect (a new dispatch) stay, as an
    app's safety net."""


# The app in the page: run once in the harness namespace (web/dev/player_harness.py: player,
# renderer, events, now_ms, js). A counting renderer (the harness's records every frame, which a
# soak must not), the grant source, the reconnect policy, and what the driver polls.
PAGE_APP = r'''
import asyncio, gc, sys
from pyodide.ffi import to_js

SOAK = {"room": None, "rooms": 0, "frames": 0, "last_frame_ms": 0.0, "last_turn_ms": 0.0,
        "connected_ms": 0.0, "turns": {}, "done": [], "actions": [], "stalls": 0, "busy": False,
        "errors": [], "turns_started": 0, "turns_ended": 0}
SILENCE_MS = (2 * TURN_EVERY_S + 5) * 1000

# the harness's recording hooks off: a soak page keeps nothing per frame or per packet
player.__dict__.pop("on_packet", None)
player._ticker._on_tick = _on_tick

def _key(cid):
    return f"{SOAK['room']}|{cid}"

def _turn(cid):
    return SOAK["turns"].setdefault(_key(cid), {"room": SOAK["room"], "cid": cid, "start_ms": None,
                                                "first_frame_ms": None, "end_ms": None, "reason": None, "frames": 0})

def _frames(frames, cid):
    t = now_ms()
    turn = _turn(cid)
    if turn["first_frame_ms"] is None:
        turn["first_frame_ms"] = t
    turn["frames"] += len(frames)
    SOAK["frames"] += len(frames)
    SOAK["last_frame_ms"] = t

def _started(cid):
    _turn(cid)["start_ms"] = SOAK["last_turn_ms"] = now_ms()
    SOAK["turns_started"] += 1

def _ended(cid, reason):
    turn = _turn(cid)
    turn["end_ms"], turn["reason"] = now_ms(), str(reason)
    SOAK["turns_ended"] += 1
    SOAK["done"].append(SOAK["turns"].pop(_key(cid)))

def _stalled():
    SOAK["stalls"] += 1
    SOAK["actions"].append(["stalled", now_ms(), player.connection_state])
    if player.connection_state == "connected":
        asyncio.ensure_future(soak_reconnect("stalled"))

renderer.yield_frames_data = _frames
renderer.turn_started = _started
renderer.turn_ended = _ended
renderer.stalled = _stalled

async def soak_grant():
    SOAK["rooms"] += 1
    room = f"soak-{SOAK_ID}-{SOAK['rooms']}"
    init = to_js({"method": "POST", "headers": {"content-type": "application/json"},
                  "body": json.dumps({"room": room})}, dict_converter=js.Object.fromEntries)
    reply = await (await js.fetch("/api/token", init)).json()
    SOAK["room"] = reply.roomName
    SOAK["actions"].append(["grant", now_ms(), reply.roomName])
    return reply

async def soak_reconnect(why):
    if SOAK["busy"]:
        return
    SOAK["busy"] = True
    SOAK["actions"].append(["reconnect", now_ms(), why])
    try:
        await player.reconnect()
        SOAK["connected_ms"] = now_ms()
    except Exception as exc:
        SOAK["errors"].append(f"reconnect ({why}): {exc!r}")
    finally:
        SOAK["busy"] = False

async def soak_watchdog():
    while True:
        await asyncio.sleep(1.0)
        if SOAK["busy"]:
            continue
        state = player.connection_state
        if state in ("failed", "disconnected"):
            await soak_reconnect(f"state {state}")
        elif state == "connected" and now_ms() - max(SOAK["last_turn_ms"], SOAK["connected_ms"]) > SILENCE_MS:
            await soak_reconnect("no turn")

def soak_status():
    done, SOAK["done"] = SOAK["done"], []
    actions, SOAK["actions"] = SOAK["actions"], []
    errors, SOAK["errors"] = SOAK["errors"], []
    events.clear()  # the harness's event log: nothing may pile up
    return {"state": player.connection_state, "room": SOAK["room"], "frames": SOAK["frames"],
            "last_frame_ms": SOAK["last_frame_ms"], "last_turn_ms": SOAK["last_turn_ms"],
            "turns_started": SOAK["turns_started"], "turns_ended": SOAK["turns_ended"], "stalls": SOAK["stalls"],
            "open_turns": list(SOAK["turns"].values()), "done": done, "actions": actions, "errors": errors,
            "reconnect_count": player.session_summary.reconnect_count}

def soak_memory():
    gc.collect()
    return {"py_objects": len(gc.get_objects()),
            "diagnostics": provider.diagnostics()}

async def soak_connect():
    await player.connect(soak_grant)
    SOAK["connected_ms"] = now_ms()
    globals()["_soak_watchdog_task"] = asyncio.ensure_future(soak_watchdog())
'''


# ----------------------------------------------------------------------------- the worker


class DispatchWorker:
    """``python -m avatar_worker --dispatch`` in a process group of its own; credentials in the
    environment only."""

    def __init__(self, server, workdir: Path, cfg: SoakConfig) -> None:
        self.workdir = workdir
        self.output = workdir / "worker.out"
        self.send_log = workdir / "sent.jsonl"
        self.cmd = [sys.executable, "-m", "avatar_worker", "--dispatch", AGENT_NAME, "--mode", "speech",
                    "--text", cfg.text, "--repeat-every-s", f"{cfg.turn_every_s:g}", "--send-log",
                    str(self.send_log), "--load-threshold", cfg.load_threshold, *REALTIME]
        self.env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key,
                        LIVEKIT_API_SECRET=server.api_secret, PYTHONUNBUFFERED="1")
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while "registered with the server as agent" not in self.output.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the dispatch worker did not register:\n" + self.tail())
            time.sleep(0.2)

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        return "<no worker output>"

    def tree(self) -> list:
        import psutil

        try:
            main = psutil.Process(self.process.pid)
            return [main, *main.children(recursive=True)]
        except psutil.Error:
            return []

    def rss(self) -> dict:
        """RSS of the worker process, of every other process of its tree (job processes, the warm
        idle one, multiprocessing's helpers), and the total (MB)."""
        import psutil

        procs = self.tree()
        sizes = {}
        for p in procs:
            with contextlib.suppress(psutil.Error):
                sizes[p.pid] = p.memory_info().rss / MB
        main = sizes.get(self.process.pid, 0.0)
        return {"main_mb": round(main, 2), "others_mb": round(sum(sizes.values()) - main, 2),
                "total_mb": round(sum(sizes.values()), 2), "processes": len(sizes)}

    def job_processes(self, room: str) -> list:
        """The descendants that hold ``room``'s send log open: that session's job process."""
        import psutil

        name = f"{self.send_log.stem}-{room}{self.send_log.suffix}"
        found = []
        for p in self.tree()[1:]:
            with contextlib.suppress(psutil.Error):
                if any(Path(f.path).name == name for f in p.open_files()):
                    found.append(p)
        return found

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        end_process_group(process.pid)  # the job processes, whatever is left

    def sent_turns(self) -> list[dict]:
        """Every turn of every session, from the per-room send logs ``sent-<room>.jsonl``: room,
        label (``speech-N``, N counted per session), first/last frame time, frames sent, completed."""
        turns = []
        for path in sorted(self.workdir.glob(f"{self.send_log.stem}-*{self.send_log.suffix}")):
            room = path.stem[len(self.send_log.stem) + 1:]
            n, current = 0, None
            for line in path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a killed process
                kind = rec.get("kind")
                if kind == "transition":
                    n += 1
                    current = {"room": room, "label": f"speech-{n}", "start_ms": rec["t_ms"], "end_ms": None,
                               "frames": 0, "completed": False}
                    turns.append(current)
                elif kind == "frame" and current is not None and rec.get("sent"):
                    current["frames"] += 1
                    current["end_ms"] = rec["t_ms"]
                elif kind == "transition_end" and current is not None:
                    current["completed"] = True
                    current = None
        return turns


# ----------------------------------------------------------------------------- the page


class SoakPage:
    def __init__(self, page, cdp) -> None:
        self.page = page
        self.cdp = cdp
        self.off_loopback: list[str] = []
        self.console: list[str] = []

    def run(self, code: str):
        return json.loads(self.page.evaluate("(code) => window.harness.run(code)", code))

    def status(self) -> dict:
        return self.run("soak_status()")

    def memory(self) -> dict:
        """JS heap after a forced GC, the Pyodide heap, Python's own counts and the diagnostics."""
        inside = self.run("soak_memory()")
        self.cdp.send("HeapProfiler.collectGarbage")
        heap = self.cdp.send("Runtime.getHeapUsage")
        wasm = self.page.evaluate("window.harness.pyodide._module.HEAP8.length")
        # JS objects Python holds references to (Pyodide's hiwire table), where this build exposes it
        refs = self.page.evaluate("(() => { const m = window.harness.pyodide._module;"
                                  " return typeof m._hiwire_num_refs === 'function' ? m._hiwire_num_refs() : null; })()")
        dom = self.page.evaluate("({nodes: document.getElementsByTagName('*').length, "
                                 "audio: document.querySelectorAll('audio').length})")
        return {"js_heap_mb": heap["usedSize"] / MB, "js_heap_total_mb": heap["totalSize"] / MB,
                "js_backing_mb": heap.get("backingStorageSize", 0) / MB,
                "pyodide_heap_mb": wasm / MB, "js_refs_from_python": refs, **inside, "dom_nodes": dom["nodes"], "audio_in_dom": dom["audio"]}


def open_page(browser, app, server, cfg: SoakConfig, soak_id: str) -> SoakPage:
    context = browser.new_context()
    page = context.new_page()
    soak = SoakPage(page, context.new_cdp_session(page))
    context.on("request", lambda r: None if is_loopback_url(r.url) else soak.off_loopback.append(r.url))
    page.on("websocket", lambda ws: None if is_loopback_url(ws.url) else soak.off_loopback.append(ws.url))
    page.on("console", lambda m: soak.console.append(f"[{m.type}] {m.text}"[:500]) if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: soak.console.append(f"[pageerror] {e}"[:2000]))
    page.on("crash", lambda _p: soak.console.append("[crash] the page crashed"))
    query = urllib.parse.urlencode({"url": server.url, "token": "-", "autoconnect": "0", "log": "warning"})
    page.goto(app.url(f"/dev/player.html?{query}"))
    deadline = time.monotonic() + 90
    while page.evaluate("window.harness && window.harness.phase") != "ready":
        if page.evaluate("window.harness && window.harness.phase") == "error" or time.monotonic() > deadline:
            raise RuntimeError(f"the harness page did not boot: {page.evaluate('window.harness && window.harness.errors')}")
        time.sleep(0.2)
    soak.run(f"TURN_EVERY_S = {cfg.turn_every_s!r}\nSOAK_ID = {soak_id!r}\n" + PAGE_APP)
    return soak


# ----------------------------------------------------------------------------- the run


def linear_fit(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t_s, value) in value per hour."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return None if sxx == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx * 3600


def growth(samples: list[dict], key, warmup_s: float) -> dict:
    """Slope after the warm-up (per hour) and max - min after it, of ``key(sample)``."""
    points = [(s["t_s"], key(s)) for s in samples if s["t_s"] >= warmup_s and key(s) is not None]
    values = [v for _, v in points]
    return {"per_hour": None if linear_fit(points) is None else round(linear_fit(points), 3),
            "max_minus_min": round(max(values) - min(values), 3) if values else None,
            "first": round(values[0], 3) if values else None, "last": round(values[-1], 3) if values else None,
            "samples": len(values)}


@dataclass
class Disruption:
    kind: str  # "livekit-restart" | "job-kill"
    at_ms: float
    t_s: float
    detail: dict = field(default_factory=dict)
    recovered_ms: float | None = None
    """The first frame rendered after it (page clock = epoch ms on this host)."""


def run_soak(cfg: SoakConfig, workdir: Path, *, playwright=None,
             progress=lambda text: print(text, file=sys.stderr, flush=True)) -> dict:
    """Run the soak; returns the report (see the module's docstring). Raises RuntimeError when the
    stack cannot start. ``playwright``: a running sync Playwright (tests have one already; a
    second could not start in the same thread), else one of its own."""
    from playwright.sync_api import sync_playwright

    from tools import bootstrap
    from tools.devstack import LiveKitServer
    from tools.webapp import build_app

    bootstrap.ensure_web_wheels()
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run `python3 tools/bootstrap.py browser`")
    workdir.mkdir(parents=True, exist_ok=True)
    soak_id = uuid.uuid4().hex[:6]
    server = LiveKitServer(workdir / "lk").start()
    worker = DispatchWorker(server, workdir / "worker", cfg)
    browser = None
    samples: list[dict] = []
    disruptions: list[Disruption] = []
    page_turns: list[dict] = []
    actions: list[list] = []
    page_errors: list[str] = []
    try:
        worker.start()
        with build_app(server, rooms=r"soak-[a-z0-9-]+", default_room="soak-default", dev=True,
                       dispatch=AGENT_NAME) as app, contextlib.ExitStack() as own:
            pw = playwright or own.enter_context(sync_playwright())
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=[*CHROMIUM_ARGS, "--enable-precise-memory-info"])
            chromium_pid = _browser_pid(browser)
            page = open_page(browser, app, server, cfg, soak_id)
            # let the page's boot settle first (see SoakConfig.load_threshold)
            time.sleep(cfg.settle_s)
            page.run("await soak_connect()")
            started = time.monotonic()
            t0_ms = time.time() * 1000
            progress(f"soak {soak_id}: connected; {cfg.minutes:g} min, a turn every {cfg.turn_every_s:g} s")
            duration_s = cfg.minutes * 60
            lk_every = cfg.livekit_restart_every_min * 60 if cfg.livekit_restart_every_min > 0 else None
            job_every = cfg.job_restart_every_min * 60 if cfg.job_restart_every_min > 0 else None
            next_lk = lk_every
            next_job = job_every
            next_sample = 0.0
            last_status: dict = {}

            def poll() -> dict:
                status = page.status()
                page_turns.extend(status["done"])
                actions.extend(status["actions"])
                page_errors.extend(status["errors"])
                for d in disruptions:
                    if d.recovered_ms is None:
                        firsts = [t["first_frame_ms"] for t in [*status["done"], *status["open_turns"]]
                                  if t["first_frame_ms"] is not None and t["first_frame_ms"] > d.at_ms]
                        if firsts:
                            d.recovered_ms = min(firsts)
                            progress(f"  {d.kind} at {d.t_s:.0f} s: frames again after "
                                     f"{(d.recovered_ms - d.at_ms) / 1000:.1f} s")
                return status

            while (elapsed := time.monotonic() - started) < duration_s:
                last_status = poll()
                if next_lk is not None and elapsed >= next_lk and next_lk < duration_s - 30:
                    next_lk += lk_every
                    at = time.time() * 1000
                    took = time.monotonic()
                    server.restart(kill=cfg.livekit_kill)
                    disruptions.append(Disruption("livekit-restart", at, round(elapsed, 1),
                                                  {"kill": cfg.livekit_kill, "restart_s": round(time.monotonic() - took, 2)}))
                    progress(f"  {elapsed:.0f} s: LiveKit {'killed' if cfg.livekit_kill else 'stopped'} and restarted")
                elif next_job is not None and elapsed >= next_job and next_job < duration_s - 30:
                    next_job += job_every
                    disruption = _kill_job_mid_turn(page, worker, poll, elapsed, progress)
                    disruptions.append(disruption)
                if elapsed >= next_sample:
                    next_sample += cfg.sample_every_s
                    samples.append(_sample(page, worker, chromium_pid, last_status, elapsed))
                    _record(workdir, samples[-1], progress)
                time.sleep(1.0)
            ended_ms = time.time() * 1000  # the page's last look at its turns
            last_status = poll()
            samples.append(_sample(page, worker, chromium_pid, last_status, time.monotonic() - started))
            console = page.console[-50:]
            off_loopback = list(page.off_loopback)
            with contextlib.suppress(Exception):
                page.page.context.close()
            browser.close()
            browser = None
    finally:
        worker.stop()
        server.stop()
    time.sleep(0.5)
    return build_report(cfg, samples, disruptions, page_turns, worker.sent_turns(), actions, page_errors,
                        console, off_loopback, t0_ms, worker.tail(15), soak_id, ended_ms=ended_ms)


def _browser_pid(browser) -> int | None:
    """Chromium's main process (the child of this process running /usr/bin/chromium)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "chromium" in child.name() and "--type=" not in " ".join(child.cmdline()):
                return child.pid
    return None


def _tree_rss_mb(pid: int | None) -> float | None:
    import psutil

    if pid is None:
        return None
    try:
        main = psutil.Process(pid)
        total = 0
        for p in [main, *main.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / MB
    except psutil.Error:
        return None


def _sample(page: SoakPage, worker: DispatchWorker, chromium_pid, status: dict, elapsed: float) -> dict:
    memory = page.memory()
    return {"t_s": round(elapsed, 1), **{k: round(v, 3) if isinstance(v, float) else v for k, v in memory.items()},
            "worker": worker.rss(), "chromium_rss_mb": round(_tree_rss_mb(chromium_pid) or 0.0, 1),
            "state": status.get("state"), "frames": status.get("frames"),
            "turns_started": status.get("turns_started"), "turns_ended": status.get("turns_ended"),
            "stalls": status.get("stalls"), "reconnects": status.get("reconnect_count")}


def _record(workdir: Path, sample: dict, progress) -> None:
    """One line per sample to ``samples.jsonl`` (a run cut short keeps its data) and the console."""
    with (workdir / "samples.jsonl").open("a") as out:
        out.write(json.dumps(sample) + "\n")
    d = sample["diagnostics"]
    progress(f"  {sample['t_s']:7.1f} s {sample['state']:>12}: JS {sample['js_heap_mb']:.2f} MB, Pyodide "
             f"{sample['pyodide_heap_mb']:.1f} MB, {sample['py_objects']} Python objects, worker "
             f"{sample['worker']['main_mb']:.1f}/{sample['worker']['total_mb']:.1f} MB, Chromium "
             f"{sample['chromium_rss_mb']:.0f} MB; turns {sample['turns_started']}, frames {sample['frames']}; "
             f"proxies {d['proxies']}, audio {d['audio_elements']}/{d['audio_elements_in_page']}, transforms "
             f"{d['transforms_live']}/{d['transform_channels']}, hooks {d['pc_hook_listeners']}")


def _kill_job_mid_turn(page: SoakPage, worker: DispatchWorker, poll, elapsed: float, progress) -> Disruption:
    """Wait (up to two turn periods) for a turn to begin on the page, then SIGKILL the job process
    of the page's room half a second later."""
    status = poll()
    last = status["last_turn_ms"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = poll()
        if status["last_turn_ms"] > last and status["state"] == "connected":
            break
        time.sleep(0.1)
    time.sleep(0.5)
    room = status["room"]
    jobs = worker.job_processes(room)
    at = time.time() * 1000
    for p in jobs:
        with contextlib.suppress(Exception):
            p.send_signal(signal.SIGKILL)
    progress(f"  {elapsed:.0f} s: killed the job process(es) {[p.pid for p in jobs]} of room {room}")
    return Disruption("job-kill", at, round(elapsed, 1), {"room": room, "pids": [p.pid for p in jobs],
                                                           "found": len(jobs)})


def build_report(cfg: SoakConfig, samples, disruptions, page_turns, sent_turns, actions, page_errors, console,
                 off_loopback, t0_ms, worker_tail, soak_id, *, ended_ms: float | None = None) -> dict:
    warmup_s = cfg.warmup_min * 60
    rendered = match_turns(sent_turns, page_turns)
    windows = [(d.at_ms, d.recovered_ms if d.recovered_ms is not None else float("inf")) for d in disruptions]
    unplanned = unplanned_reconnects(actions, windows, page_turns, cfg)
    windows += [(u["from_ms"], u["recovered_ms"] or float("inf")) for u in unplanned]

    def disrupted(turn: dict) -> bool:
        start, end = turn["start_ms"], turn["end_ms"] or turn["start_ms"]
        return any(start <= b and end >= a for a, b in windows)

    completed = [t for t in sent_turns if t["completed"]]
    # a turn that ended less than 3 s before the page's last look (or after it) may still be
    # playing there: it was cut by the end of the run, not missed
    if ended_ms is None:
        ended_ms = t0_ms + samples[-1]["t_s"] * 1000 if samples else float("inf")
    clean = [t for t in completed if not disrupted(t) and (t["end_ms"] or t["start_ms"]) < ended_ms - 3000]
    missing = [t for t in clean if (t["room"], t["label"]) not in rendered]
    short = [{**t, "rendered": rendered[(t["room"], t["label"])]["frames"]} for t in clean
             if (t["room"], t["label"]) in rendered and rendered[(t["room"], t["label"])]["frames"] < t["frames"]]
    frames_sent = sum(t["frames"] for t in clean)
    frames_rendered = sum(min(rendered[(t["room"], t["label"])]["frames"], t["frames"]) for t in clean
                          if (t["room"], t["label"]) in rendered)
    diag_keys = sorted(samples[0]["diagnostics"]) if samples else []
    report = {
        "soak_id": soak_id,
        "samples_t0_ms": t0_ms,
        "ended_ms": ended_ms,
        "config": asdict(cfg),
        "duration_s": samples[-1]["t_s"] if samples else 0,
        "growth_after_warmup": {
            "js_heap_mb": growth(samples, lambda s: s["js_heap_mb"], warmup_s),
            "pyodide_heap_mb": growth(samples, lambda s: s["pyodide_heap_mb"], warmup_s),
            "python_objects": growth(samples, lambda s: s["py_objects"], warmup_s),
            "js_refs_from_python": growth(samples, lambda s: s.get("js_refs_from_python"), warmup_s),
            "worker_main_rss_mb": growth(samples, lambda s: s["worker"]["main_mb"], warmup_s),
            "worker_tree_rss_mb": growth(samples, lambda s: s["worker"]["total_mb"], warmup_s),
            "chromium_rss_mb": growth(samples, lambda s: s["chromium_rss_mb"], warmup_s),
            "dom_nodes": growth(samples, lambda s: s["dom_nodes"], warmup_s),
        },
        "diagnostics": {k: {"min": min(s["diagnostics"][k] for s in samples),
                            "max": max(s["diagnostics"][k] for s in samples),
                            "last": samples[-1]["diagnostics"][k]} for k in diag_keys},
        "unplanned_reconnects": unplanned,
        "disruptions": [{**asdict(d), "recovery_s": None if d.recovered_ms is None
                         else round((d.recovered_ms - d.at_ms) / 1000, 2)} for d in disruptions],
        "turns": {
            "worker_sessions": len({t["room"] for t in sent_turns}),
            "worker_started": len(sent_turns), "worker_completed": len(completed),
            "page_started": samples[-1]["turns_started"] if samples else 0,
            "page_ended": samples[-1]["turns_ended"] if samples else 0,
            "page_rendered": sum(1 for t in page_turns if t["frames"] > 0),
            "completed_outside_disruptions": len(clean),
            "completed_outside_disruptions_rendered": len(clean) - len(missing),
            "missing": missing[:20], "fewer_frames": short[:20],
            "frames_sent_outside_disruptions": frames_sent, "frames_rendered_of_those": frames_rendered,
            "page_end_reasons": _count(t["reason"] for t in page_turns),
            "clean": [{"room": t["room"], "label": t["label"], "start_ms": t["start_ms"], "sent": t["frames"],
                       "rendered": rendered[(t["room"], t["label"])]["frames"]
                       if (t["room"], t["label"]) in rendered else None} for t in clean],
        },
        "page": {"stalls": samples[-1]["stalls"] if samples else 0, "actions": actions, "errors": page_errors,
                 "console": console, "off_loopback": off_loopback},
        "worker_tail": worker_tail,
        "samples": samples,
        "page_turns": page_turns,
        "worker_turns": sent_turns,
    }
    return report


def unplanned_reconnects(actions: list[list], windows: list[tuple[float, float]], page_turns: list[dict],
                         cfg: SoakConfig) -> list[dict]:
    """The page's reconnects that no restart or kill explains (a stall on a starved machine, a
    dispatch LiveKit dropped): each with the span it disrupted, from what made the page decide
    (3 s of stall, the silence it waited for) to the first frame rendered after it."""
    out = []
    for name, at_ms, why in actions:
        if name != "reconnect" or any(a <= at_ms <= b for a, b in windows):
            continue
        before = 4000.0 if why == "stalled" else (2 * cfg.turn_every_s + 5) * 1000 if why == "no turn" else 1000.0
        firsts = [t["first_frame_ms"] for t in page_turns if t["first_frame_ms"] is not None and t["first_frame_ms"] > at_ms]
        recovered = min(firsts) if firsts else None
        out.append({"at_ms": at_ms, "why": why, "from_ms": at_ms - before, "recovered_ms": recovered,
                    "recovery_s": None if recovered is None else round((recovered - at_ms) / 1000, 2)})
    return out


def match_turns(sent_turns: list[dict], page_turns: list[dict], max_latency_ms: float = 2000.0) -> dict:
    """(room, label) of a worker turn -> the page's record of it: same room, the page's turn began
    (or its first frame came) 0..``max_latency_ms`` after the worker sent the turn's first packet.
    (The page's conversation ids are its own, random per turn.)"""
    by_room: dict[str, list[dict]] = {}
    for t in page_turns:
        by_room.setdefault(t["room"], []).append(t)
    matched, used = {}, set()
    for w in sent_turns:
        best = None
        for p in by_room.get(w["room"], []):
            began = p["start_ms"] if p["start_ms"] is not None else p["first_frame_ms"]
            if began is None or id(p) in used:
                continue
            lag = began - w["start_ms"]
            if 0 <= lag <= max_latency_ms and (best is None or lag < best[0]):
                best = (lag, p)
        if best is not None:
            used.add(id(best[1]))
            matched[(w["room"], w["label"])] = best[1]
    return matched


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def reanalyze(report: dict) -> dict:
    """The report again from a saved one's raw data (samples, turns, actions, disruptions), with
    this version's analysis."""
    cfg = SoakConfig(**{k: v for k, v in report["config"].items() if k in SoakConfig.__dataclass_fields__})
    disruptions = [Disruption(d["kind"], d["at_ms"], d["t_s"], d["detail"], d["recovered_ms"])
                   for d in report["disruptions"]]
    t0_ms = report.get("samples_t0_ms") or (disruptions[0].at_ms - disruptions[0].t_s * 1000)
    page = report["page"]
    return build_report(cfg, report["samples"], disruptions, report["page_turns"], report["worker_turns"],
                        page["actions"], page["errors"], page["console"], page["off_loopback"], t0_ms,
                        report["worker_tail"], report["soak_id"], ended_ms=report.get("ended_ms"))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    axes[0].plot(t, [s["js_heap_mb"] for s in samples], label="JS heap after GC")
    axes[0].plot(t, [s["pyodide_heap_mb"] for s in samples], label="Pyodide heap (wasm memory)")
    axes[0].set_ylabel("MB")
    axes[0].legend(loc="upper left")
    axes[1].plot(t, [s["worker"]["main_mb"] for s in samples], label="worker (main process) RSS")
    axes[1].plot(t, [s["worker"]["total_mb"] for s in samples], label="worker tree RSS (with job processes)")
    axes[1].plot(t, [s["chromium_rss_mb"] / 10 for s in samples], label="Chromium tree RSS / 10")
    axes[1].set_ylabel("MB")
    axes[1].legend(loc="upper left")
    for key in ("proxies", "audio_elements", "transforms_live", "transform_channels", "pc_hook_listeners"):
        axes[2].plot(t, [s["diagnostics"][key] for s in samples], label=key, drawstyle="steps-post")
    axes[2].set_ylabel("count")
    axes[2].set_xlabel("minutes")
    axes[2].legend(loc="upper left")
    for d in report["disruptions"]:
        for ax in axes:
            ax.axvline(d["t_s"] / 60, color="red" if d["kind"] == "livekit-restart" else "purple",
                       linestyle="--", alpha=0.6)
    growth_ = report["growth_after_warmup"]
    fig.suptitle(f"soak {report['duration_s'] / 60:.0f} min: JS heap {growth_['js_heap_mb']['per_hour']} MB/h, "
                 f"Pyodide heap {growth_['pyodide_heap_mb']['per_hour']} MB/h after warm-up "
                 "(red: LiveKit restart, purple: job killed)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def summary_line(report: dict) -> str:
    g, turns = report["growth_after_warmup"], report["turns"]
    return (f"{report['duration_s'] / 60:.1f} min: JS heap {g['js_heap_mb']['per_hour']} MB/h "
            f"(max-min {g['js_heap_mb']['max_minus_min']}), Pyodide heap {g['pyodide_heap_mb']['per_hour']} MB/h "
            f"(max-min {g['pyodide_heap_mb']['max_minus_min']}), worker RSS {g['worker_main_rss_mb']['per_hour']} MB/h; "
            f"turns {turns['completed_outside_disruptions_rendered']}/{turns['completed_outside_disruptions']} "
            f"rendered; recoveries {[d['recovery_s'] for d in report['disruptions']]} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--turn-every-s", type=float, default=10.0)
    parser.add_argument("--livekit-restart-every-min", type=float, default=15.0, help="0: never")
    parser.add_argument("--job-restart-every-min", type=float, default=20.0, help="0: never")
    parser.add_argument("--sample-every-s", type=float, default=30.0)
    parser.add_argument("--warmup-min", type=float, default=5.0)
    parser.add_argument("--load-threshold", default="1.0",
                        help="the dispatch worker's --load-threshold (default: %(default)s; see SoakConfig)")
    parser.add_argument("--graceful-livekit", action="store_true", help="SIGTERM the server instead of SIGKILL")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="memory over time (PNG)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the logs here (default: a temporary one)")
    parser.add_argument("--reanalyze", type=Path, default=None, metavar="REPORT",
                        help="run nothing: rebuild the report (and plot) from a saved --out JSON")
    args = parser.parse_args()
    if args.reanalyze:
        report = reanalyze(json.loads(args.reanalyze.read_text()))
        _write(report, args)
        return
    cfg = SoakConfig(minutes=args.minutes, turn_every_s=args.turn_every_s,
                     livekit_restart_every_min=args.livekit_restart_every_min,
                     job_restart_every_min=args.job_restart_every_min, sample_every_s=args.sample_every_s,
                     warmup_min=args.warmup_min, livekit_kill=not args.graceful_livekit,
                     load_threshold=args.load_threshold)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        report = run_soak(cfg, workdir)
    _write(report, args)


def _write(report: dict, args: argparse.Namespace) -> None:
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.plot:
        try:
            plot(report, args.plot)
        except ImportError:
            print("matplotlib is not installed: no plot", file=sys.stderr)
    print(text)
    print(summary_line(report), file=sys.stderr)


if __name__ == "__main__":
    main()
