"""Driving the real stack from tests and benchmarks: the avatar worker as a subprocess, the
recording harness page (web/dev/player.html or pyscript-player.html), and reading its results."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Keep Chromium off the (closed) network and let WebRTC reach a same-host SFU (docs/platform.md).
CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--no-default-browser-check",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    # Anything not on loopback goes to a proxy that is not there, so it fails inside Chromium.
    # Loopback always bypasses proxies. This is done in the browser rather than with Playwright's
    # route(): sync Playwright answers routed requests only while the test is inside a Playwright
    # call, so a page would stall whenever the test waits on something else (a subprocess, say).
    "--proxy-server=http://127.0.0.1:9",
]


# SCHED_FIFO pacing (root or CAP_SYS_NICE): on a loaded 2-core machine a normal-priority worker
# sends frames up to ~60 ms late, in bursts; the test is about the player, not the scheduler.
REALTIME = ["--realtime"] if os.geteuid() == 0 else []


def is_loopback_url(url: str) -> bool:
    """True for loopback hosts and for URLs that never leave the browser (data:, blob:, about:):
    the requests a page of the tests and benchmarks may make (any other fails them)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "chrome", "chrome-extension", "devtools"):
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Worker:
    """A running ``python -m avatar_worker`` and its send log."""

    process: subprocess.Popen
    send_log: Path
    output: Path

    def sent(self) -> list[dict]:
        if not self.send_log.exists():
            return []
        return [json.loads(line) for line in self.send_log.read_text().splitlines() if line.strip()]

    def sent_frames(self) -> dict[int, dict]:
        """seq -> first send record of every frame that really left (in order or reordered)."""
        out: dict[int, dict] = {}
        for rec in self.sent():
            if rec.get("kind") in ("frame", "reordered") and rec.get("sent") and rec.get("seq") is not None:
                out.setdefault(rec["seq"], rec)
        return out

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no worker output>"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_worker(server, room: str, workdir: Path, *args: str, wait_for_viewer: bool = True) -> Worker:
    """The real avatar worker in scripted mode (by default waiting for a viewer before its turn)."""
    workdir.mkdir(parents=True, exist_ok=True)
    send_log = workdir / "send.jsonl"
    output = workdir / "worker.out"
    env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key,
               LIVEKIT_API_SECRET=server.api_secret)
    cmd = [sys.executable, "-m", "avatar_worker", "--mode", "scripted", "--room", room, *REALTIME,
           *(["--wait-for-participant"] if wait_for_viewer else []), "--send-log", str(send_log),
           "--exit-when-done", *args]
    with output.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    return Worker(process, send_log, output)


@dataclass
class HarnessRun:
    results: dict = field(default_factory=dict)
    phase: str = ""
    errors: list = field(default_factory=list)
    boot_ms: float | None = None

    @property
    def summary(self) -> dict:
        return self.results.get("summary", {})

    @property
    def frames(self) -> list[bytes]:
        return [bytes.fromhex(h) for h in self.results.get("frames", [])]

    def event_names(self) -> list[str]:
        return [e[0] for e in self.results.get("events", [])]

    def states(self) -> list[str]:
        return [e[1][0] for e in self.results.get("events", []) if e[0] == "connection-state-changed"]

    def explain(self) -> str:
        """What a failure message should show: the session summary first."""
        return (f"phase={self.phase} errors={self.errors}\nsession_summary={json.dumps(self.summary, indent=1)}\n"
                f"events={self.event_names()}\nticker={self.results.get('ticker')}\n"
                f"reattaches={self.results.get('reattaches')} transforms={self.results.get('transformStats')}")


HARNESS_PAGES = {"pyodide": "/dev/player.html", "pyscript": "/dev/pyscript-player.html"}


def harness_url(app, server, token: str, page: str = "pyodide", **params: str) -> str:
    query = urllib.parse.urlencode({"url": server.url, "token": token, **params})
    return app.url(f"{HARNESS_PAGES[page]}?{query}")


def read_harness(page, full: bool = True) -> HarnessRun:
    run = HarnessRun(phase=page.evaluate("window.harness && window.harness.phase") or "",
                     errors=page.evaluate("window.harness ? Array.from(window.harness.errors) : []"),
                     boot_ms=page.evaluate("window.harness && window.harness.bootMs"))
    what = "results" if full else "progress"
    if page.evaluate(f"!!(window.harness && window.harness.{what})"):
        data = json.loads(page.evaluate(f"window.harness.{what}()"))
        if not full:  # the same shape, without the bulk
            data = {"frames": [None] * data["frames"], "events": [[n, args, 0] for n, args in data["events"]],
                    "state": data["state"]}
        run.results = data
    return run


def wait_for(page, predicate, timeout_s: float, poll_s: float = 0.5) -> HarnessRun:
    """Poll the harness cheaply until ``predicate(run)`` or the time-out; then read it all."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = read_harness(page, full=False)
        if run.phase == "error" or predicate(run) or time.monotonic() > deadline:
            return read_harness(page)
        time.sleep(poll_s)


# ------------------------------------------------------------------- impaired networks, A/V sync


@contextlib.contextmanager
def impaired_browser(playwright, server, app, workdir: Path, *, profile: str | dict = "perfect", seed: int = 1,
                     args: list[str] | None = None, max_duration_s: float = 900.0) -> Iterator[tuple]:
    """Chromium (or Firefox, given a ``tools.firefox.FirefoxEngine``) in a private network namespace
    whose only way to the LiveKit server and the web app is the impairment relay
    (tools/netimpair.py): ``yield (browser, link)``; ``link.outage(s)`` cuts it. The page uses the usual URLs: inside the namespace the relay answers on the same
    loopback ports (signalling, the web app, the SFU's UDP port) as the servers outside."""
    from .firefox import FirefoxEngine
    from .netimpair import ImpairedLink, NetNamespace, chromium_wrapper

    workdir.mkdir(parents=True, exist_ok=True)
    with NetNamespace() as ns, ImpairedLink(
            ns, udp=[f"127.0.0.1:{server.udp_port}"], tcp=[f"127.0.0.1:{server.port}", f"127.0.0.1:{app.port}"],
            profile=profile, seed=seed, max_duration_s=max_duration_s,
            stats_file=workdir / "relay-stats.json") as link:
        args = list(CHROMIUM_ARGS if args is None else args)
        if isinstance(playwright, FirefoxEngine):  # the Firefox lane
            browser = playwright.launch(args, netns=ns, log_dir=workdir)
        else:
            browser = playwright.chromium.launch(executable_path=str(chromium_wrapper(ns, workdir)), headless=True,
                                                 args=args)
        try:
            yield browser, link
        finally:
            browser.close()


@dataclass
class SyncPulse:
    """One sync-pulse frame (avatar_worker/modes/scripted.py): when it left the worker, when the renderer
    got it, and when its click was heard in the page (audio-tap.js). Times are epoch ms."""

    seq: int
    sent_ms: float
    rendered_ms: float | None
    heard_ms: float | None

    @property
    def offset_ms(self) -> float | None:
        """Render - heard: + when the face is late, - when it leads the voice."""
        if self.rendered_ms is None or self.heard_ms is None:
            return None
        return self.rendered_ms - self.heard_ms


def sync_pulses(run: HarnessRun, sent: dict[int, dict]) -> list[SyncPulse]:
    """Pair every pulse frame the worker sent with its renderer call and with the click onset
    heard in the page: the first onset after the frame left and before the next pulse left (clicks
    are a second apart; a click lost on the way, concealed by the audio jitter buffer, is not
    heard, and must not be paired with the next one)."""
    from avatar_worker.modes.scripted import is_pulse, payload_for

    by_payload = {payload_for(seq): seq for seq in sent}
    rendered: dict[int, float] = {}
    for frame, t in zip(run.frames, run.results.get("times", [])):
        seq = by_payload.get(frame)
        if seq is not None:
            rendered.setdefault(seq, t)
    tap = run.results.get("audioTap") or {}
    heard = sorted(o["heardMs"] for o in tap.get("onsets", []))
    seqs = sorted(s for s in sent if is_pulse(s))
    pulses = []
    for k, seq in enumerate(seqs):
        left = sent[seq]["t_ms"]
        until = sent[seqs[k + 1]]["t_ms"] if k + 1 < len(seqs) else left + 1000.0
        onset = next((h for h in heard if left <= h < until), None)
        pulses.append(SyncPulse(seq, left, rendered.get(seq), onset))
    return pulses


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def offset_stats(offsets: list[float]) -> dict:
    """p50, p95, max and the p95 of |offset| (what sync targets are stated in)."""
    if not offsets:
        return {"n": 0}
    return {"n": len(offsets), "p50": statistics.median(offsets), "p95": percentile(offsets, 95),
            "min": min(offsets), "max": max(offsets), "abs_p95": percentile([abs(o) for o in offsets], 95)}


@dataclass
class SyncSession:
    """What one sync-pulse session produced (see :func:`run_sync_session`)."""

    run: HarnessRun
    worker: Worker
    pulses: list[SyncPulse]
    outage: tuple[float, float] | None = None
    """Epoch ms when the relay's outage began and ended, if one was cut."""
    relay: dict = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    """Every URL the page requested (HTTP and WebSocket)."""

    @property
    def offsets(self) -> list[float]:
        return [p.offset_ms for p in self.pulses if p.offset_ms is not None]


def run_sync_session(server, app, browser, workdir: Path, *, frames: int = 750, link=None,
                     outage_s: float | None = None, outage_after_frames: int = 300, worker_args: tuple = (),
                     page_params: dict | None = None, timeout_s: float | None = None) -> SyncSession:
    """One scripted turn of ``frames`` sync-pulse frames (a click every 25th frame), played by the
    harness page with the audio tap; with ``outage_s``, ``link`` is cut that long once the page
    has rendered ``outage_after_frames`` frames. The worker is stopped either way."""
    import uuid

    room = f"bench-{uuid.uuid4().hex[:8]}"
    worker = start_worker(server, room, workdir, "--frames", str(frames), "--script-audio", "pulse",
                          "--lead-in-ms", "1500", "--tail-ms", "1000", *worker_args)
    outage = None
    page = None
    requests: list[str] = []
    try:
        page = browser.new_page()
        page.on("request", lambda request: requests.append(request.url))
        page.on("websocket", lambda ws: requests.append(ws.url))
        page.goto(harness_url(app, server, server.token("viewer", room, can_publish=False), tap="1",
                              **(page_params or {})))
        limit = timeout_s or frames * 0.04 + 90
        if outage_s is not None:
            assert link is not None, "an outage needs the link"
            before = wait_for(page, lambda r: len(r.results.get("frames", [])) >= outage_after_frames,
                              timeout_s=limit)
            if len(before.results.get("frames", [])) >= outage_after_frames:
                began = time.time() * 1000
                link.outage(outage_s)
                outage = (began, began + outage_s * 1000)
        run = wait_for(page, lambda r: "turn-ended" in r.event_names(), timeout_s=limit)
    finally:
        if page is not None:
            with contextlib.suppress(Exception):
                page.close()
        worker.stop()
    return SyncSession(run, worker, sync_pulses(run, worker.sent_frames()), outage,
                       link.stats() if link is not None else {}, requests)
