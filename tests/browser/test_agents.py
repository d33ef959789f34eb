"""LiveKit Agents compatibility (issue 5, point 4), end to end in the browser: an agent-side
participant using the real livekit-agents ``DataStreamAudioOutput`` speaks through the avatar
worker (``--mode agents``); the page renders the turn; ``clear_buffer()`` stops the avatar within
200 ms and the agent is told ``playback_finished`` with ``interrupted: true``."""

from __future__ import annotations

import json
import os
import subprocess
import sys


from tools.realstack import ROOT, start_worker

from .parity import events_of, explain, new_room, open_harness, wait_for


def test_an_agents_pipeline_drives_the_avatar_and_interrupts_it(browser_page, app, livekit_server, tmp_path):
    room = new_room()
    worker = start_worker(livekit_server, room, tmp_path / "worker", "--mode", "agents", "--agent-identity",
                          "agent-1", wait_for_viewer=False)
    out = tmp_path / "agent.json"
    env = dict(os.environ, LIVEKIT_URL=livekit_server.url, LIVEKIT_API_KEY=livekit_server.api_key,
               LIVEKIT_API_SECRET=livekit_server.api_secret)
    try:
        open_harness(browser_page, app, livekit_server, room)
        wait_for(browser_page, lambda r: r.results.get("state") == "connected", timeout_s=30)
        agent = subprocess.run([sys.executable, str(ROOT / "tests/browser/agent_speaker.py"), "--room", room,
                                "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        run = wait_for(browser_page, lambda r: r.event_names().count("turn-ended") >= 2, timeout_s=20)
    finally:
        worker.stop()
    why = explain(run, worker) + f"\nagent: {agent.stdout[-2000:]}{agent.stderr[-3000:]}"
    assert agent.returncode == 0, why
    result = json.loads(out.read_text())
    finished = result["finished"]
    assert [f["interrupted"] for f in finished] == [False, True], f"{result}\n{why}"
    assert abs(finished[0]["position"] - result["short_s"]) < 0.3, result

    turns = [e[0] for e in events_of(run, "turn-started")]
    assert len(turns) >= 2, why
    per_turn = {cid: [t for t, c in zip(run.results["times"], run.results["conversations"]) if c == cid]
                for cid in turns}
    assert len(per_turn[turns[0]]) >= 0.9 * result["short_s"] * 25, why  # the whole first answer is animated

    cleared = result["cleared_at_ms"]
    records = worker.sent()
    clear_rpc = next(r for r in records if r.get("kind") == "agent-rpc" and r.get("direction") == "in"
                     and r.get("answer") == "ok")
    last_frame_sent = max(r["t_ms"] for r in records if r.get("kind") == "frame" and r.get("sent")
                          and r["t_ms"] <= clear_rpc["arrived_ms"] + 1000)
    turn_end = next(r for r in records if r.get("kind") == "turn" and r.get("event") == "end"
                    and r.get("reason") == "interrupted")
    stop_ms = max(last_frame_sent, turn_end["t_ms"]) - cleared
    rendered_after = [t - cleared for t in per_turn[turns[-1]] if t > cleared]
    print(f"\ninterruption: avatar stopped {stop_ms:.0f} ms after clear_buffer() (the turn-end packet "
          f"{turn_end['t_ms'] - cleared:.0f} ms); the page rendered {len(rendered_after)} frames after it, "
          f"the last {max(rendered_after, default=0):.0f} ms after")
    assert stop_ms <= 200, why
    assert max(rendered_after, default=0) <= 200 + 150, why  # + the player's jitter buffer and the network
    ended = events_of(run, "turn-ended")
    assert ended[-1][0] == turns[-1], why
