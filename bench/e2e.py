#!/usr/bin/env python3
"""End-to-end benchmark on the real stack (same machine): LiveKit server, avatar worker, Chromium,
the real AvatarPlayer in Pyodide. Prints JSON.

    .venv/bin/python bench/e2e.py [--frames 1500] [--runs 3] [--lk 2.23.0] [--page pyodide|pyscript]
    .venv/bin/python bench/e2e.py --network all [--runs 3] [--frames 750] [--redundant]   # A/V sync
    .venv/bin/python bench/e2e.py --browser firefox [...]   # the same on Firefox ESR (tools/firefox.py)

With ``--network PROFILE`` (repeatable; ``all`` = perfect, wifi, 4g, bad, outage) each run is a
sync-pulse turn (a click on every 25th frame) played through the impairment relay
(tools/netimpair.py) by a Chromium in a network namespace of its own, and the report is per
profile: ``av_offset_ms`` {p50, p95, max, abs_p95} (renderer call - click heard, + = face late),
frames rendered %, latency p50/p95, skipped/dropped, the recovery after the outage, the player's
own estimate; a plot of every pulse's offset goes to bench/out/av-sync.png.

Per run, the worker streams one long scripted turn that is already playing when the page loads,
so the page's first frame measures start-up, not the worker's lead-in. Reported (medians over
runs, and every run):

* latency_ms: worker capture time of a seq -> the renderer call for it (p50, p95, max)
* render_interval_ms: mean, stdev, p99 between renderer calls
* worker_capture_interval_ms: median, stdev, max between the worker's motion captures (its pacing)
* python_ms_per_frame: time in the player's Python (packet handling + ticks + the recording
  renderer) per rendered frame, inside Pyodide
* first_frame_ms (page navigation -> first renderer call) and boot_ms (bare Pyodide boot) on the
  same page load, and their difference
* frames lost (sent, never rendered) and skipped
Targets (issue 3): latency p95 <= 100 ms, interval stdev <= 3 ms, Python <= 0.3 ms per frame,
first frame <= boot + 800 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as bench/e2e.py: the repository is not on the path

from tools import bootstrap  # noqa: E402
from tools.realstack import CHROMIUM_ARGS, harness_url, percentile, start_worker, wait_for  # noqa: E402

@contextlib.contextmanager
def browser_engine(name: str):
    """Playwright (Chromium) or a tools.firefox.FirefoxEngine: what tools.realstack.impaired_browser
    and :func:`launch` take."""
    if name == "firefox":
        from tools.firefox import FirefoxEngine

        yield FirefoxEngine()
    else:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            yield pw


def launch(engine, name: str):
    if name == "firefox":
        return engine.launch(CHROMIUM_ARGS)
    return engine.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)


def browser_version(name: str) -> str:
    if name == "firefox":
        from tools.firefox import version

        return version()
    import subprocess

    return subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True).stdout.strip()


TARGETS = {"latency_p95_ms": 100.0, "interval_stdev_ms": 3.0, "python_ms_per_frame": 0.3, "first_frame_over_boot_ms": 800.0}


def _event_ms(run, name: str) -> float | None:
    origin = run.results["timeOrigin"]
    return next((e[2] - origin for e in run.results.get("events", []) if e[0] == name), None)


def one_run(server, app, browser, frames: int, lk: str, page_kind: str, workdir: Path,
            mode: str = "auto", sync: str = "audio") -> dict:
    from avatar_worker.modes.scripted import payload_for

    room = f"bench-{uuid.uuid4().hex[:8]}"
    worker = start_worker(server, room, workdir, "--frames", str(frames), "--lead-in-ms", "0", "--tail-ms", "1000",
                          wait_for_viewer=False)
    try:
        deadline = time.monotonic() + 30
        while not any(r.get("kind") == "frame" for r in worker.sent()):  # the turn is playing
            if time.monotonic() > deadline or worker.process.poll() is not None:
                raise RuntimeError("the worker did not start its turn:\n" + worker.tail())
            time.sleep(0.1)
        time.sleep(1.0)
        page = browser.new_page()
        page.goto(harness_url(app, server, server.token("bench-viewer", room, can_publish=False),
                              page=page_kind, lk=lk, mode=mode, sync=sync))
        run = wait_for(page, lambda r: "turn-ended" in r.event_names(), timeout_s=frames * 0.04 + 60)
        page.close()
    finally:
        worker.stop()
    if run.phase == "error" or not run.results.get("frames"):
        raise RuntimeError("no frames rendered:\n" + run.explain() + "\n" + worker.tail())

    sent = worker.sent_frames()
    by_payload = {payload_for(seq): seq for seq in sent}
    times = run.results["times"]
    rendered = [(by_payload.get(frame), t) for frame, t in zip(run.frames, times)]
    latency = [t - sent[seq]["t_ms"] for seq, t in rendered if seq is not None]
    first_seq = next(seq for seq, _ in rendered if seq is not None)
    intervals = [b - a for a, b in zip(times, times[1:])]
    captured = [sent[seq]["t_ms"] for seq in sorted(sent)]
    capture_intervals = [b - a for a, b in zip(captured, captured[1:])]
    s = run.summary
    origin = run.results["timeOrigin"]
    first_frame_ms = times[0] - origin
    return {
        "latency_ms": {"p50": percentile(latency, 50), "p95": percentile(latency, 95), "max": max(latency)},
        "render_interval_ms": {"mean": statistics.mean(intervals), "stdev": statistics.pstdev(intervals),
                               "p99": percentile(intervals, 99)},
        "worker_capture_interval_ms": {"median": statistics.median(capture_intervals),
                                       "stdev": statistics.pstdev(capture_intervals),
                                       "max": max(capture_intervals)},
        "python_ms_per_frame": run.results["pythonMs"] / max(1, s["framesRendered"]),
        "python_ms_per_frame_without_renderer": (run.results["pythonMs"] - run.results["rendererMs"])
        / max(1, s["framesRendered"]),
        "startup_ms": {  # since navigation start
            "pyodide_booted": run.boot_ms, "wheel_installed": run.results.get("installedMs"),
            **{k: v for k, v in run.results.get("marks", {}).items()},
            "motion_attached": _event_ms(run, "motion-track-attached"),
            "first_packet": run.results["arrivals"][0] - origin if run.results.get("arrivals") else None,
            "first_frame": times[0] - origin,
            **{f"provider_{k}": v for k, v in run.results.get("providerTimings", {}).items()}},
        "first_frame_ms": first_frame_ms,
        "boot_ms": run.boot_ms,
        "first_frame_over_boot_ms": first_frame_ms - (run.boot_ms or 0),
        "frames": {"sent_after_join": len([q for q in sent if q >= first_seq]), "rendered": s["framesRendered"],
                   "lost": len([q for q in sent if q >= first_seq]) - s["framesRendered"],
                   "skipped": s["framesSkipped"], "dropped": s["framesDropped"]},
        "ticker": run.results.get("ticker"),
    }


PROFILES = ("perfect", "wifi", "4g", "bad", "outage")
SYNC_TARGETS = {"abs_p95_ms": {"perfect": 40.0, "wifi": 40.0, "4g": 40.0, "bad": 60.0, "outage": 60.0},
                "rendered_pct_4g": 99.0, "recovery_s": 3.0}
OUTAGE_S = 1.5


def sync_run(server, app, browser, link, workdir: Path, frames: int, profile: str, lk: str,
             worker_args: tuple, sync: str = "audio") -> dict:
    """One sync-pulse session through ``link``; the figures the report keeps."""
    from tools.realstack import offset_stats, run_sync_session

    outage = OUTAGE_S if profile == "outage" else None
    session = run_sync_session(server, app, browser, workdir, frames=frames, link=link, outage_s=outage,
                               outage_after_frames=frames // 3, worker_args=worker_args,
                               page_params={"lk": lk, "sync": sync})
    run = session.run
    if run.phase == "error" or not run.results.get("frames"):
        raise RuntimeError(f"{profile}: no frames rendered:\n" + run.explain() + "\n" + session.worker.tail())
    sent = session.worker.sent_frames()
    from avatar_worker.modes.scripted import payload_for

    by_payload = {payload_for(seq): seq for seq in sent}
    times = run.results["times"]
    rendered = [(by_payload.get(frame), t) for frame, t in zip(run.frames, times)]
    latency = [t - sent[seq]["t_ms"] for seq, t in rendered if seq is not None]
    intervals = [b - a for a, b in zip(times, times[1:]) if 0 < b - a < 200]
    s = run.summary
    pulses = [{"seq": p.seq, "t_s": round((p.sent_ms - min(q["t_ms"] for q in sent.values())) / 1000, 3),
               "offset_ms": None if p.offset_ms is None else round(p.offset_ms, 1)} for p in session.pulses]
    report = {
        "av_offset_ms": offset_stats(session.offsets),
        "pulses_heard": sum(p.heard_ms is not None for p in session.pulses),
        "pulses_sent": len(session.pulses),
        "frames": {"sent": len(sent), "rendered": s["framesRendered"],
                   "rendered_pct": 100.0 * s["framesRendered"] / max(1, len(sent)),
                   "skipped": s["framesSkipped"], "dropped": s["framesDropped"],
                   "recovered": s["framesRecovered"], "held_for_sync": s.get("framesHeldForSync"),
                   "caught_up": s.get("framesCaughtUp")},
        "latency_ms": {"p50": percentile(latency, 50), "p95": percentile(latency, 95)} if latency else {},
        "render_interval_stdev_ms": statistics.pstdev(intervals) if intervals else None,
        "python_ms_per_frame": run.results["pythonMs"] / max(1, s["framesRendered"]),
        "player": {k: s.get(k) for k in ("syncMode", "syncReason", "syncChanges", "avSyncOffsetMs", "audioDelayMs",
                                         "audioJitterBufferDelayMs", "audioConcealedSamples", "audioPacketsLost",
                                         "stallCount")},
        "relay": {d: {k: session.relay.get("udp", {}).get(d, {}).get(k)
                      for k in ("packets_in", "packets_out", "dropped", "delay_ms")} for d in ("down", "up")},
        "pulses": pulses,
    }
    if session.outage is not None:
        began, ended = session.outage
        after = [t for t in times if t > ended]
        back = next((p for p in session.pulses if p.heard_ms is not None and p.heard_ms > ended
                     and p.offset_ms is not None and abs(p.offset_ms) <= SYNC_TARGETS["abs_p95_ms"]["outage"]), None)
        report["outage"] = {
            "duration_s": OUTAGE_S,
            "first_frame_after_s": (after[0] - ended) / 1000 if after else None,
            "offset_back_within_bound_after_s": (back.heard_ms - ended) / 1000 if back else None,
            "av_offset_after_recovery_ms": offset_stats([p.offset_ms for p in session.pulses if p.offset_ms is not None
                                                         and back is not None and p.seq >= back.seq]),
        }
    return report


def network_main(args: argparse.Namespace) -> None:
    from tools.devstack import LiveKitServer
    from tools.realstack import impaired_browser
    from tools.webapp import build_app

    profiles = list(PROFILES) if "all" in args.network else args.network
    worker_args = ("--redundant",) if args.redundant else ()
    results: dict[str, list[dict]] = {}
    failures: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp, LiveKitServer(Path(tmp) / "lk") as server, \
            build_app(server, rooms=r"bench-[a-z0-9]+", dev=True) as app, browser_engine(args.browser) as pw:
        for profile in profiles:
            results[profile] = []
            for i in range(args.runs):
                workdir = Path(tmp) / f"{profile}-{i}"
                # the outage is cut on command, mid-turn: the relay runs the profile without its timer
                relay_profile = "perfect" if profile == "outage" else profile
                try:
                    with impaired_browser(pw, server, app, workdir, profile=relay_profile, seed=args.seed + i) \
                            as (browser, link):
                        results[profile].append(sync_run(server, app, browser, link, workdir, args.frames, profile,
                                                         args.lk, worker_args, args.sync))
                except Exception as exc:  # reported, not hidden: the other runs still count
                    failures.append({"profile": profile, "run": i + 1, "error": f"{type(exc).__name__}: {exc}"[:500]})
                    print(f"{profile} run {i + 1}/{args.runs} FAILED: {failures[-1]['error']}", file=sys.stderr)
                    continue
                r = results[profile][-1]
                print(f"{profile} run {i + 1}/{args.runs}: A/V offset p50 {r['av_offset_ms'].get('p50', float('nan')):.1f}"
                      f" ms, |p95| {r['av_offset_ms'].get('abs_p95', float('nan')):.1f} ms, rendered "
                      f"{r['frames']['rendered_pct']:.1f} %", file=sys.stderr)

    def med(runs: list[dict], *path: str):
        values = []
        for run in runs:
            value = run
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, (int, float)):
                values.append(value)
        return statistics.median(values) if values else None

    summary = {}
    for profile, runs in results.items():
        summary[profile] = {
            "av_offset_p50_ms": med(runs, "av_offset_ms", "p50"),
            "av_offset_p95_ms": med(runs, "av_offset_ms", "p95"),
            "av_offset_max_ms": med(runs, "av_offset_ms", "max"),
            "av_offset_abs_p95_ms": med(runs, "av_offset_ms", "abs_p95"),
            "av_offset_p50_per_run_ms": [r["av_offset_ms"].get("p50") for r in runs],
            "rendered_pct": med(runs, "frames", "rendered_pct"),
            "latency_p50_ms": med(runs, "latency_ms", "p50"),
            "latency_p95_ms": med(runs, "latency_ms", "p95"),
            "skipped": med(runs, "frames", "skipped"),
            "dropped": med(runs, "frames", "dropped"),
            "render_interval_stdev_ms": med(runs, "render_interval_stdev_ms"),
            "python_ms_per_frame": med(runs, "python_ms_per_frame"),
            "player_av_sync_offset_ms": med(runs, "player", "avSyncOffsetMs"),
            "audio_delay_ms": med(runs, "player", "audioDelayMs"),
        }
        if profile == "outage":
            summary[profile]["recovery_first_frame_s"] = med(runs, "outage", "first_frame_after_s")
            summary[profile]["recovery_offset_s"] = med(runs, "outage", "offset_back_within_bound_after_s")
    met = {profile: {"abs_p95": (s["av_offset_abs_p95_ms"] or 1e9) <= SYNC_TARGETS["abs_p95_ms"][profile]}
           for profile, s in summary.items()}
    if "4g" in summary:
        met["4g"]["rendered_pct"] = (summary["4g"]["rendered_pct"] or 0) >= SYNC_TARGETS["rendered_pct_4g"]
    if "outage" in summary:
        met["outage"]["recovery"] = (summary["outage"]["recovery_offset_s"] or 1e9) <= SYNC_TARGETS["recovery_s"]
    plot = plot_offsets(results, ROOT / "bench" / "out" / "av-sync.png")
    report = {"config": {k: (v if not isinstance(v, Path) else str(v)) for k, v in vars(args).items()}
              | {"browser_version": browser_version(args.browser)},
              "median": summary, "targets": SYNC_TARGETS, "target_met": met, "plot": plot, "failed_runs": failures,
              "runs": results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


def plot_offsets(results: dict[str, list[dict]], path: Path) -> str | None:
    """Every pulse's A/V offset over the turn, one panel per profile, one line per run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (python3 tools/bootstrap.py core installs it)", file=sys.stderr)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.6), sharey=True, squeeze=False)
    for ax, (profile, runs) in zip(axes[0], results.items()):
        for i, run in enumerate(runs):
            points = [(p["t_s"], p["offset_ms"]) for p in run["pulses"] if p["offset_ms"] is not None]
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", ms=3, lw=1, label=f"run {i + 1}")
        bound = SYNC_TARGETS["abs_p95_ms"][profile]
        ax.axhspan(-bound, bound, color="green", alpha=0.08)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(profile)
        ax.set_xlabel("turn time (s)")
    axes[0][0].set_ylabel("render - heard (ms), + = face late")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1500, help="frames per run (25 per second)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lk", default="2.23.0", help="livekit-client version served to the page")
    parser.add_argument("--page", default="pyodide", choices=["pyodide", "pyscript"])
    parser.add_argument("--mode", default="auto", choices=["auto", "script", "streams", "data"],
                        help="motion carrier: the transforms, or the data-packet carrier")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--browser", default="chromium", choices=("chromium", "firefox"),
                        help="Debian's Chromium (Playwright) or Firefox ESR (Selenium, tools/firefox.py)")
    parser.add_argument("--network", action="append", choices=(*PROFILES, "all"),
                        help="A/V sync through the impairment relay with this profile (repeatable, or all)")
    parser.add_argument("--redundant", action="store_true", help="the worker sends REDUNDANT packets (--network)")
    parser.add_argument("--seed", type=int, default=1, help="the relay's seed of the first run (--network)")
    parser.add_argument("--sync", default="audio", choices=("audio", "independent"),
                        help="the player's sync option: independent is the behaviour before sync")
    args = parser.parse_args()

    bootstrap.ensure_web_wheels()
    if args.network:
        if "--frames" not in sys.argv:
            args.frames = 750
        network_main(args)
        return
    from tools.devstack import LiveKitServer
    from tools.webapp import build_app

    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp, LiveKitServer(Path(tmp) / "lk") as server, \
            build_app(server, rooms=r"bench-[a-z0-9]+", dev=True) as app, browser_engine(args.browser) as engine:
        browser = launch(engine, args.browser)
        for i in range(args.runs):
            runs.append(one_run(server, app, browser, args.frames, args.lk, args.page, Path(tmp) / f"run{i}",
                                args.mode, args.sync))
            print(f"run {i + 1}/{args.runs}: latency p95 {runs[-1]['latency_ms']['p95']:.1f} ms", file=sys.stderr)
        browser.close()

    def median(path: list[str]) -> float:
        values = []
        for run in runs:
            value = run
            for key in path:
                value = value[key]
            values.append(value)
        return statistics.median(values)

    summary = {
        "latency_p50_ms": median(["latency_ms", "p50"]),
        "latency_p95_ms": median(["latency_ms", "p95"]),
        "latency_max_ms": median(["latency_ms", "max"]),
        "interval_mean_ms": median(["render_interval_ms", "mean"]),
        "interval_stdev_ms": median(["render_interval_ms", "stdev"]),
        "interval_p99_ms": median(["render_interval_ms", "p99"]),
        "worker_capture_interval_stdev_ms": median(["worker_capture_interval_ms", "stdev"]),
        "worker_capture_interval_max_ms": median(["worker_capture_interval_ms", "max"]),
        "python_ms_per_frame": median(["python_ms_per_frame"]),
        "first_frame_ms": median(["first_frame_ms"]),
        "boot_ms": median(["boot_ms"]),
        "first_frame_over_boot_ms": median(["first_frame_over_boot_ms"]),
        "frames_lost": median(["frames", "lost"]),
        "frames_skipped": median(["frames", "skipped"]),
    }
    met = {
        "latency_p95_ms": summary["latency_p95_ms"] <= TARGETS["latency_p95_ms"],
        "interval_stdev_ms": summary["interval_stdev_ms"] <= TARGETS["interval_stdev_ms"],
        "python_ms_per_frame": summary["python_ms_per_frame"] <= TARGETS["python_ms_per_frame"],
        "first_frame_over_boot_ms": summary["first_frame_over_boot_ms"] <= TARGETS["first_frame_over_boot_ms"],
    }
    report = {"config": vars(args) | {"out": str(args.out) if args.out else None,
                                      "browser_version": browser_version(args.browser)}, "median": summary,
              "targets": TARGETS, "target_met": met, "runs": runs}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
