"""The real AvatarPlayer with a recording renderer, for the browser tests and the e2e benchmark.

Runs under plain Pyodide (player.html + player-harness.js) and, unchanged, under PyScript
(pyscript-player.html: ``<script type="py" src="player_harness.py">``).
"""

import json
import logging

import js
from pyodide.ffi import create_proxy

from avatarplayer import AvatarPlayer, LiveKitProvider

logging.basicConfig(level=logging.INFO)


async def page_config():
    """Under PyScript (pyscript-player.html) nobody sets HARNESS_CONFIG: read the same options
    from the page's query string and /api/config, and create window.harness ourselves."""
    from pyodide.ffi import to_js

    js.window.harness = to_js({"phase": "booting", "errors": [], "bootMs": js.performance.now()},
                              dict_converter=js.Object.fromEntries)
    params = js.URLSearchParams.new(js.location.search)
    config = (await (await js.fetch("/api/config")).json()).to_py()
    lk = params.get("lk") or next(iter(config["livekitClients"]))
    return {"url": params.get("url"), "token": params.get("token"),
            "livekitClientUrl": config["livekitClients"][lk], "transformWorker": config["transformWorker"],
            "mode": params.get("mode") or "auto", "jitter": params.get("jitter") != "0",
            "autoconnect": params.get("autoconnect") != "0", "logLevel": params.get("log") or "info",
            "shared": params.get("shared") or "", "timeout": float(params.get("timeout") or 15),
            "sync": params.get("sync") or "audio"}


try:
    cfg = dict(HARNESS_CONFIG)  # noqa: F821 (a Python dict, set by player-harness.js)
except NameError:
    cfg = await page_config()  # noqa: F704 (top-level await: runPythonAsync / PyScript)


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
        start = js.performance.now()
        for frame in frames:
            self.frames.append(bytes(frame).hex())
            self.times.append(t)
            self.conversations.append(conversation_id)
        self.python_ms += js.performance.now() - start

    def yield_audio_data(self, data, is_last):
        return None

    def turn_started(self, conversation_id):
        self.hooks.append(["turn_started", conversation_id, now_ms()])

    def turn_ended(self, conversation_id, reason):
        self.hooks.append(["turn_ended", conversation_id, reason, now_ms()])

    def stalled(self):
        self.hooks.append(["stalled", now_ms()])


renderer = RecordingRenderer()
app_room = None  # the app's own Room, when the page tests sharing one (shared=before|after)


async def app_connects_its_room():
    from pyodide.code import run_js
    from pyodide.ffi import to_js

    lk = await run_js(f"import({json.dumps(cfg['livekitClientUrl'])})")
    room = lk.Room.new()  # livekit-client's defaults, as an app would
    js.window.harness.appRoom = room
    return room, lambda: room.connect(cfg["url"], cfg["token"])


def make_provider(room=None):
    return LiveKitProvider(livekit_client_url=cfg["livekitClientUrl"], room=room,
                           transform_worker_url=cfg["transformWorker"], transform_mode=cfg["mode"])


if cfg.get("shared") == "before":
    app_room, connect_app_room = await app_connects_its_room()  # noqa: F704
    provider = make_provider(app_room)
    await connect_app_room()  # noqa: F704
elif cfg.get("shared") == "after":
    app_room, connect_app_room = await app_connects_its_room()  # noqa: F704
    await connect_app_room()  # noqa: F704
    provider = make_provider(app_room)
else:
    provider = make_provider()
player = AvatarPlayer(provider, renderer, log_level=cfg.get("logLevel", "info"),
                      enable_jitter_buffer=cfg["jitter"], connect_timeout_s=cfg.get("timeout", 15.0),
                      sync=cfg.get("sync") or "audio")
events = []


def describe(value):
    """Event payloads as JSON-friendly values (data messages as their fields)."""
    if hasattr(value, "__dataclass_fields__"):
        return {k: describe(getattr(value, k)) for k in value.__dataclass_fields__ if k != "payload"} | {
            "class": type(value).__name__}
    if isinstance(value, BaseException):
        return {"class": type(value).__name__, "message": str(value), "cause": getattr(value, "cause", None),
                "name": getattr(value, "name", None) if isinstance(getattr(value, "name", None), str) else None}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    return str(value)


for name in ("connected", "disconnected", "connection-state-changed", "stalled", "turn-started",
             "turn-ended", "error", "motion-track-attached", "audio-blocked", "audio-playback-changed",
             "data-message", "transcript", "agent-status", "sync-changed"):
    player.on(name, lambda *args, name=name: events.append([name, [describe(a) for a in args], now_ms()]))


def _js_json(value):
    """A JS object of the tap=1 instruments (audio-tap.js) as plain JSON data, or None."""
    return None if value is None else json.loads(js.JSON.stringify(value))


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
        "packets": packets,
        "audioTap": _js_json(getattr(js.window.harness, "audioTap", None)),
        "receiverSamples": _js_json(getattr(js.window.harness, "receiverSamples", None)),
        "pythonMs": python_ms[0],
        "rendererMs": renderer.python_ms,
        "callMs": call_ms,
        "marks": marks,
        "providerTimings": provider.timings,
        "installedMs": globals().get("INSTALLED_MS"),
        "timeOrigin": js.performance.timeOrigin,
        "reattaches": provider.reattach_count,
        "carrier": provider.carrier,
        "fallbacks": provider.fallbacks,
        "packetsBeforeOpen": provider.packets_before_open,
        "audioElements": [{"identity": str(e.dataset.avatarIdentity), "paused": bool(e.paused),
                           "tag": str(e.tagName)} for e in js.document.querySelectorAll("audio")],
        "canPlayAudio": player.can_play_audio,
        "audioClicks": audio_clicks,
        "errors": list(js.window.harness.errors),
        "transformStats": {str(k): v for k, v in provider.transform_stats.items()},
        "ticker": {"ticks": player._ticker.ticks, "caughtUp": player._ticker.caught_up,
                   "overruns": player._ticker.overruns,
                   "meanLatenessMs": player._ticker.lateness_ms_total / max(1, player._ticker.ticks)},
    })


async def disconnect():
    await player.disconnect()


marks = {"pythonStart": js.performance.now()}


async def connect():
    marks["connectStart"] = js.performance.now()
    js.window.harness.getRoom = create_proxy(lambda: provider.room)
    if app_room is not None and cfg.get("shared") == "after":
        await player.connect()  # the app's room is connected: nothing to pass
    else:
        await player.connect(url=cfg["url"], token=cfg["token"])
    marks["connected"] = js.performance.now()


async def run(code):
    """Tests drive the player with Python statements (await allowed) in this namespace; the value
    of a final expression is returned as JSON."""
    from pyodide.code import eval_code_async

    return json.dumps(describe(await eval_code_async(code, globals())))


arrivals = []
python_ms = [0.0]  # time spent in the player's Python per packet and per tick (renderer included)
_on_packet = player.on_packet
_on_tick = player._ticker._on_tick


call_ms = {"packet": [], "tick": []}


packets = []  # (arrival ms, RTP timestamp or None, the packet's first 9 bytes: flags, length, seq)


def recording_on_packet(packet, arrival_ms, rtp_timestamp=None):
    arrivals.append(arrival_ms)
    packets.append((arrival_ms, rtp_timestamp, packet[:9].hex()))
    t = js.performance.now()
    _on_packet(packet, arrival_ms, rtp_timestamp)
    took = js.performance.now() - t
    python_ms[0] += took
    call_ms["packet"].append(took)


def timed_tick(now):
    t = js.performance.now()
    _on_tick(now)
    took = js.performance.now() - t
    python_ms[0] += took
    call_ms["tick"].append(took)


player.on_packet = recording_on_packet  # the provider calls the sink's on_packet: record arrivals
player._ticker._on_tick = timed_tick
def progress():
    """Cheap to poll: counts and event names only (results() serializes every frame)."""
    return json.dumps({"frames": len(renderer.frames),
                       "events": [[e[0], e[1] if e[0] == "connection-state-changed" else []] for e in events],
                       "state": player.connection_state})


js.window.harness.results = create_proxy(results)
js.window.harness.progress = create_proxy(progress)
js.window.harness.disconnect = create_proxy(disconnect)  # JS gets a Promise (a Python awaitable)
js.window.harness.connect = create_proxy(connect)
js.window.harness.run = create_proxy(run)
audio_clicks = []


async def on_start_audio_click(event):
    """The page's "Start audio" button: a user gesture, which is what start_audio() needs."""
    try:
        await player.start_audio()
        audio_clicks.append({"ok": True, "canPlayAudio": player.can_play_audio})
    except Exception as exc:
        audio_clicks.append({"ok": False, "error": repr(exc)})


_button = js.document.getElementById("start-audio")
if getattr(_button, "addEventListener", None) is not None:  # (a missing element is JS null)
    _button.addEventListener("click", create_proxy(on_start_audio_click))
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
        js.window.harness.connectError = json.dumps(describe(exc))
