"""Connection lifecycle (issue 4, point 1), in Chromium against the real LiveKit server:
clear, prompt failures for every kind of bad connect, and a server that dies mid-turn."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest

from tools import bootstrap
from tools.devstack import LiveKitServer, free_port
from tools.realstack import start_worker
from tools.webapp import build_app

from .parity import assert_in_order, explain, new_room, open_harness, py, wait_for

pytestmark = pytest.mark.firefox  # the Firefox lane runs these too


class SilentServer:
    """Accepts TCP connections and never answers: a connect that can only time out."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


ATTEMPT = '''
async def attempt(url, token, timeout=15.0):
    """One connect on a fresh player: its states, error events, exception and duration."""
    p = AvatarPlayer(make_provider(), RecordingRenderer(), log_level="none", connect_timeout_s=timeout)
    states, errors = [], []
    p.on("connection-state-changed", states.append)
    p.on("error", errors.append)
    started = js.performance.now()
    try:
        await p.connect(url=url, token=token)
        raised = None
    except Exception as exc:
        raised = exc
    took = js.performance.now() - started
    out = {"states": list(states), "errors": [describe(e) for e in errors], "raised": describe(raised),
           "ms": took, "state": p.connection_state}
    await p.disconnect()
    return out
'''


def test_bad_connects_fail_fast_with_named_causes_and_the_failed_state(browser_page, app, livekit_server):
    from livekit import api

    room = new_room()
    open_harness(browser_page, app, livekit_server, room, autoconnect="0")
    py(browser_page, ATTEMPT)
    wrong_key = (api.AccessToken(livekit_server.api_key, "another-secret-" + "x" * 40).with_identity("viewer")
                 .with_grants(api.VideoGrants(room_join=True, room=room)).to_jwt())
    expired = (api.AccessToken(livekit_server.api_key, livekit_server.api_secret).with_identity("viewer")
               .with_grants(api.VideoGrants(room_join=True, room=room))
               .with_ttl(timedelta(seconds=-300)).to_jwt())  # past the server's leeway
    good = livekit_server.token("viewer", room, can_publish=False)
    silent = SilentServer()
    cases = {
        "malformed url": ("not-a-url", good, 15, "config"),
        "unreachable server": (f"ws://127.0.0.1:{free_port()}", good, 15, "unreachable"),
        "not a LiveKit server": (app.url("/").replace("http://", "ws://").rstrip("/"), good, 3, "timeout"),  # livekit-client retries 404s until our time-out
        "token signed with another key": (livekit_server.url, wrong_key, 15, "token"),
        "expired token": (livekit_server.url, expired, 15, "token"),
        "server that never answers": (f"ws://127.0.0.1:{silent.port}", good, 2, "timeout"),
    }
    try:
        for name, (url, token, timeout, cause) in cases.items():
            out = py(browser_page, f"await attempt({url!r}, {token!r}, {timeout})")
            why = f"{name}: {out}"
            print(f"\n{name}: {out['raised'] and out['raised']['cause']} after {out['ms']:.0f} ms")
            assert out["raised"] and out["raised"]["cause"] == cause, why
            assert out["state"] == "failed", why
            assert out["states"] == (["failed"] if cause == "config" else ["connecting", "failed"]), why
            assert len(out["errors"]) == 1 and out["errors"][0]["cause"] == cause, why
            assert out["ms"] < timeout * 1000 + 3000, why  # no hang: within the time-out (plus clean-up)
            if cause == "timeout":
                assert out["ms"] >= timeout * 1000 - 100, why
        # a player that failed connects fine afterwards, and the error says what was wrong
        out = py(browser_page, f"await attempt({livekit_server.url!r}, {good!r})")
        assert out["raised"] is None and out["states"] == ["connecting", "connected"] and not out["errors"], out
        raised = py(browser_page, """
p = AvatarPlayer(make_provider(), RecordingRenderer(), log_level="none")
try:
    await p.reconnect()
    result = None
except RuntimeError as exc:
    result = str(exc)
result
""")
        assert raised and "connect" in raised, raised  # reconnect() without a previous connect() raises
    finally:
        silent.close()


@pytest.mark.parametrize("kill", [True, False], ids=["server-killed", "server-stopped"])
def test_server_restart_mid_turn_recovers_and_frames_flow_again(browser_page, tmp_path, kill):
    """Stop the LiveKit server in the middle of a turn, start it again on the same port: the player
    goes reconnecting -> connected (livekit-client's own full reconnect), or failed and then
    ``reconnect()`` works; either way the transform is attached again, frames flow, nothing raises."""
    bootstrap.ensure_web_wheels()
    server = LiveKitServer(tmp_path / "lk").start()
    room = new_room()
    worker = None
    try:
        with build_app(server, rooms=r"e2e-[a-z0-9-]+", default_room="e2e-default", dev=True) as app:
            worker = start_worker(server, room, tmp_path / "worker", "--frames", "2500", "--tail-ms", "500")
            open_harness(browser_page, app, server, room)
            run = wait_for(browser_page, lambda r: len(r.results.get("frames", [])) >= 100, timeout_s=60)
            assert len(run.frames) >= 100, explain(run, worker)
            before = len(run.frames)
            server.restart(kill=kill)
            restarted_at = time.monotonic()
            run = wait_for(browser_page, lambda r: r.results.get("state") in ("failed", "disconnected")
                           or r.results.get("state") == "connected" and "reconnecting" in r.states(),
                           timeout_s=60)
            if run.results.get("state") in ("failed", "disconnected"):
                path = "failed, then reconnect()"
                browser_page.evaluate("window.harness.run('await player.reconnect()')")
            else:
                path = "livekit-client's own reconnect"
            run = wait_for(browser_page, lambda r: len(r.results.get("frames", [])) >= before + 100, timeout_s=90)
            recovered_s = time.monotonic() - restarted_at
            why = f"path: {path}, recovered in {recovered_s:.1f} s\n" + explain(run, worker) + \
                "\nserver log:\n" + server.log_tail(20)
            states = run.states()
            print(f"\nserver {'killed' if kill else 'stopped'}: {path}; 100 more frames {recovered_s:.1f} s after "
                  f"the restart; states {states}; reconnectCount {run.summary.get('reconnectCount')}")
            assert len(run.frames) >= before + 100, why  # frames flow again
            assert run.results["state"] == "connected", why
            if path == "livekit-client's own reconnect":
                assert states[:2] == ["connecting", "connected"] and "reconnecting" in states, why
                assert states[-1] == "connected" and "failed" not in states, why
                assert run.summary["reconnectCount"] >= 1, why
            else:
                assert "failed" in states and states[-2:] == ["connecting", "connected"], why
            assert all(a != b for a, b in zip(states, states[1:])), why  # no duplicates
            assert run.results["motionMode"] in ("script", "data"), why
            assert not run.errors, why
            assert "Traceback" not in "\n".join(str(e) for e in run.results.get("errors", [])), why
            assert_in_order(run.frames, 2500, why)  # in order across the restart
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
