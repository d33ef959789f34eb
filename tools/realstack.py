"""Driving the real stack from tests and benchmarks: the avatar worker as a subprocess, the
recording harness page (web/dev/player.html or pyscript-player.html), and reading its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Keep Chromium off the (closed) network and let WebRTC reach a same-host SFU (platform.md).
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
