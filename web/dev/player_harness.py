"""Runs inside Pyodide (player-harness.js): the real AvatarPlayer with a recording renderer."""

import json
import logging

import js
from pyodide.ffi import create_proxy

from avatarplayer import AvatarPlayer, LiveKitProvider

cfg = dict(HARNESS_CONFIG)  # noqa: F821 (a Python dict, set by player-harness.js)
logging.basicConfig(level=logging.INFO)


def now_ms():
    return js.performance.timeOrigin + js.performance.now()


class RecordingRenderer:
    """Keeps every frame with its render time, and the renderer hooks it saw."""

    def __init__(self):
        self.frames = []
        self.times = []
        self.conversations = []
        self.hooks = []
        self.python_ms = 0.0

    def yield_frames_data(self, frames, conversation_id):
        t = now_ms()
        for frame in frames:
            self.frames.append(bytes(frame).hex())
            self.times.append(t)
            self.conversations.append(conversation_id)

    def yield_audio_data(self, data, is_last):
        return None

    def turn_started(self, conversation_id):
        self.hooks.append(["turn_started", conversation_id, now_ms()])

    def turn_ended(self, conversation_id, reason):
        self.hooks.append(["turn_ended", conversation_id, reason, now_ms()])

    def stalled(self):
        self.hooks.append(["stalled", now_ms()])


renderer = RecordingRenderer()
provider = LiveKitProvider(livekit_client_url=cfg["livekitClientUrl"],
                           transform_worker_url=cfg["transformWorker"], transform_mode=cfg["mode"])
player = AvatarPlayer(provider, renderer, log_level="info", enable_jitter_buffer=cfg["jitter"])
events = []

for name in ("connected", "disconnected", "connection-state-changed", "stalled", "turn-started",
             "turn-ended", "error", "motion-track-attached"):
    player.on(name, lambda *args, name=name: events.append([name, [str(a) for a in args], now_ms()]))


def results():
    return json.dumps({
        "frames": renderer.frames,
        "times": renderer.times,
        "conversations": renderer.conversations,
        "hooks": renderer.hooks,
        "events": events,
        "state": player.connection_state,
        "summary": player.session_summary.as_dict(),
        "motionMode": player.motion_mode,
        "arrivals": arrivals,
        "reattaches": provider.reattach_count,
        "transformStats": {str(k): v for k, v in provider.transform_stats.items()},
        "ticker": {"ticks": player._ticker.ticks, "caughtUp": player._ticker.caught_up,
                   "overruns": player._ticker.overruns,
                   "meanLatenessMs": player._ticker.lateness_ms_total / max(1, player._ticker.ticks)},
    })


async def disconnect():
    await player.disconnect()


async def connect():
    await player.connect(url=cfg["url"], token=cfg["token"])


arrivals = []
_on_packet = player.on_packet


def recording_on_packet(packet, arrival_ms):
    arrivals.append(arrival_ms)
    _on_packet(packet, arrival_ms)


player.on_packet = recording_on_packet  # the provider calls the sink's on_packet: record arrivals
def progress():
    """Cheap to poll: counts and event names only (results() serializes every frame)."""
    return json.dumps({"frames": len(renderer.frames), "events": [e[0] for e in events],
                       "state": player.connection_state})


js.window.harness.results = create_proxy(results)
js.window.harness.progress = create_proxy(progress)
js.window.harness.disconnect = create_proxy(disconnect)  # JS gets a Promise (a Python awaitable)
js.window.harness.connect = create_proxy(connect)
js.window.harness.player = player
js.window.harness.phase = "ready"
if cfg["autoconnect"]:
    js.window.harness.phase = "connecting"
    try:
        await connect()  # noqa: F704 (top-level await: runPythonAsync)
        js.window.harness.phase = "connected"
        js.document.getElementById("status").textContent = "connected"
    except Exception as exc:
        js.window.harness.phase = "error"
        js.window.harness.errors.push(repr(exc))
