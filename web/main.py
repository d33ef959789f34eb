"""The demo page, in Python (PyScript): the player, a canvas renderer, the controls, a live panel.

Runs in the browser. ``index.html`` loads it with ``config="/pyscript.json"``, which points PyScript
at the locally served Pyodide and installs the ``avatarplayer`` wheel, so nothing comes from a CDN.

The renderer is the package's reference face (:mod:`avatarplayer.face.canvas`): it decodes each
frame's FLAME values with protobuf and draws mouth, blinks, gaze, head and a little expression, with
an idle loop and eased blends into and out of each turn.

Tests read ``window.demo``: ``phase`` ("loading" → "ready"), ``state`` (the connection state),
``summary`` (``session_summary.as_dict()``, refreshed twice a second), ``framesRendered`` (frames
drawn since the last connect), ``rendererMode`` ("face", or "undecodable" when no frame decodes),
``face`` (the renderer's ``snapshot()``), ``audioBlocked``, ``mic``
("off", "on", "busy"), ``agentStatus``, ``transcript`` (lines ``{role, text, final}``), ``errors`` and
``timings`` (ms since navigation start). ``?autoconnect=1`` connects without a click.
"""

import asyncio
import json
from collections import deque

import js
from pyodide.ffi import create_proxy
from pyodide.http import pyfetch
from pyscript import when

from avatarplayer import AvatarPlayer, LiveKitProvider
from avatarplayer.face.canvas import FaceRenderer

demo = js.window.demo
document = js.document


def now_ms() -> float:
    return js.performance.now()


timings = {"pyscriptReadyMs": None, "pythonReadyMs": now_ms(), "connectClickMs": None, "connectedMs": None,
           "firstFrameMs": None}
"""Milliseconds since navigation start, mirrored to ``window.demo.timings``."""
if isinstance(demo.timings.pyscriptReadyMs, (int, float)):  # set by index.html (JS null is not None here)
    timings["pyscriptReadyMs"] = demo.timings.pyscriptReadyMs


def publish_timings() -> None:
    demo.timings = js.JSON.parse(json.dumps(timings))


publish_timings()

# ----------------------------------------------------------------------------- the renderer


class DemoRenderer(FaceRenderer):
    """The reference face renderer (avatarplayer.face.canvas), plus the counters the page shows."""

    def __init__(self, canvas) -> None:
        super().__init__(canvas)
        self.frames_rendered = 0
        self.first_frame_ms = None

    def yield_frames_data(self, frames, conversation_id) -> None:
        super().yield_frames_data(frames, conversation_id)
        self.frames_rendered += len(frames)
        if self.first_frame_ms is None:
            self.first_frame_ms = now_ms()
            timings["firstFrameMs"] = self.first_frame_ms
            publish_timings()
        demo.framesRendered = self.frames_rendered

    def reset(self) -> None:
        self.frames_rendered = 0
        self.first_frame_ms = None
        demo.framesRendered = 0

    @property
    def decoded_ok(self) -> bool:
        stats = self.snapshot()
        return stats["framesReceived"] == 0 or stats["decodeErrors"] < stats["framesReceived"]


# ----------------------------------------------------------------------------- the page


def element(id_: str):
    return document.getElementById(id_)


renderer = DemoRenderer(element("avatar"))
player = AvatarPlayer(LiveKitProvider(), renderer)
recent_events: deque = deque(maxlen=14)


def log_event(text: str) -> None:
    recent_events.appendleft((now_ms(), text))
    items = element("events")
    items.innerHTML = ""
    for t, line in recent_events:
        li = document.createElement("li")
        stamp = document.createElement("span")
        stamp.className = "t"
        stamp.textContent = f"{t / 1000:7.1f}s"
        li.append(stamp, line)
        items.append(li)


def show_error(text: str | None) -> None:
    box = element("error")
    box.hidden = not text
    box.textContent = text or ""
    if text:
        demo.errors.push(text)


def show_state(state: str) -> None:
    demo.state = state
    badge = element("state")
    badge.textContent = state
    badge.dataset.state = state
    element("connect").disabled = state not in ("disconnected", "failed")
    element("disconnect").disabled = state not in ("connected", "reconnecting")
    element("reconnect").disabled = state not in ("connected", "failed")
    mic = element("mic")
    if mic is not None and getattr(mic.dataset, "state", None) != "busy":
        mic.disabled = state != "connected"
    if state in ("disconnected", "failed") and element("caption") is not None:
        element("caption").hidden = True  # words still held were never said


def on_state(state) -> None:
    show_state(str(state))
    log_event(f"state → {state}")
    if state == "connected":
        timings["connectedMs"] = now_ms()
        publish_timings()


player.on("connection-state-changed", on_state)
player.on("turn-started", lambda cid: log_event(f"turn started {str(cid)[-6:]}"))
player.on("turn-ended", lambda cid, reason: log_event(f"turn ended ({reason})"))
player.on("stalled", lambda: log_event("stalled: no motion for 3 s"))
player.on("motion-track-attached", lambda mode: log_event(f"motion track attached ({mode})"))
player.on("sync-changed", lambda mode, reason: log_event(
    "lips follow the voice" if mode == "audio" else f"lips on their own clock ({reason})"))
player.on("error", lambda exc: log_event(f"error: {exc}"))


def on_audio_playback(can_play) -> None:
    demo.audioBlocked = not can_play
    element("audio-blocked").hidden = bool(can_play)
    log_event("sound on" if can_play else "audio blocked by the browser: click Enable sound")


player.on("audio-playback-changed", on_audio_playback)

# --------------------------------------------------------------------------- agent and transcript

transcript_lines: list[dict] = []


def on_agent_status(message) -> None:
    badge = element("agent-status")
    badge.textContent = message.status
    badge.dataset.status = message.status
    demo.agentStatus = message.status


def on_transcript(chunk) -> None:
    """Chunks of one speaker's turn go on its last line until a final one closes it. The avatar's
    own words come one at a time, each as the face says it (the player holds them until their
    frame renders): they add up, and also show as a subtitle over the face. A user chunk holds
    everything recognised so far, so it replaces the line."""
    role = chunk.role or "agent"
    last = transcript_lines[-1] if transcript_lines else None
    if last is not None and last["role"] == role and not last["final"]:
        # the agent's pieces joined as they are give its sentence back (spaces included)
        last["text"] = chunk.text.strip() if role == "user" else (last["text"] + chunk.text).lstrip()
        last["final"] = chunk.final
    else:
        text = chunk.text.strip() if role == "user" else chunk.text.lstrip()
        last = {"role": role, "text": text, "final": chunk.final}
        transcript_lines.append(last)
    del transcript_lines[:-12]
    items = element("transcript")
    items.innerHTML = ""
    for line in transcript_lines:
        li = document.createElement("li")
        li.dataset.role = line["role"]
        li.dataset.final = "true" if line["final"] else "false"
        who = document.createElement("strong")
        who.textContent = "You" if line["role"] == "user" else "Avatar"
        li.append(who, " " + line["text"])
        items.append(li)
    items.scrollTop = items.scrollHeight
    demo.transcript = js.JSON.parse(json.dumps(transcript_lines))
    if role == "agent":
        show_caption(last["text"], last["final"])


def show_caption(text: str, final: bool) -> None:
    """The avatar's current line under her face; it fades out 2 s after its last word."""
    caption = element("caption")
    caption.textContent = text
    caption.hidden = not text
    caption.classList.toggle("done", final)


player.on("agent-status", on_agent_status)
player.on("transcript", on_transcript)

# ------------------------------------------------------------------------------------ microphone

mic_on = False


def show_mic(state: str) -> None:
    button = element("mic")
    button.textContent = {"on": "Microphone on", "off": "Microphone off", "busy": "Microphone…"}[state]
    button.setAttribute("aria-pressed", "true" if state == "on" else "false")
    button.dataset.state = state
    button.disabled = state == "busy" or player.connection_state != "connected"
    demo.mic = state


async def toggle_mic() -> None:
    global mic_on
    show_mic("busy")
    element("mic-denied").hidden = True
    try:
        if mic_on:
            await player.stop_publishing()
            mic_on = False
        else:
            await player.start_publishing()
            mic_on = True
            log_event("microphone on: talk to the avatar")
    except Exception as exc:
        if getattr(exc, "cause", None) == "permission-denied":
            element("mic-denied").hidden = False
            log_event("microphone blocked by the browser")
        else:
            show_error(f"Microphone: {exc}")
    show_mic("on" if mic_on else "off")


@when("click", "#mic")
async def on_mic(event) -> None:
    await toggle_mic()


visit: dict[str, str | None] = {"session": None}
"""This page's visitor session (the token endpoint's secret): a reconnect resumes it."""


async def fetch_grant() -> dict:
    """A fresh grant from the token endpoint, for every connect and reconnect (the player calls
    it). The first opens a visitor session (a room of our own, where LiveKit dispatches an
    avatar); the next ones resume it, with a fresh avatar. An expired session starts over."""
    for body in ([{"session": visit["session"]}] if visit["session"] else []) + [{}]:
        response = await pyfetch("/api/token", method="POST", body=json.dumps(body),
                                 headers={"Content-Type": "application/json"})
        grant = await response.json()
        if response.ok:
            visit["session"] = grant.get("session")
            demo.roomName = grant.get("roomName")
            demo.serverUrl = grant.get("serverUrl")
            demo.identity = grant.get("identity")
            return grant  # {token, serverUrl, roomName, identity, session} as is
        if not (response.status == 403 and body):
            break
    raise RuntimeError(grant.get("error") or f"HTTP {response.status}")


async def connect() -> None:
    show_error(None)
    show_state("connecting")
    renderer.reset()
    timings.update(connectClickMs=now_ms(), connectedMs=None, firstFrameMs=None)
    publish_timings()
    visit["session"] = None  # Connect: a new visit (Reconnect resumes this one)
    try:
        await player.connect(fetch_grant)
    except Exception as exc:
        show_state(player.connection_state)
        show_error(f"Could not connect: {exc}")


async def reconnect() -> None:
    show_error(None)
    renderer.reset()
    try:
        await player.reconnect()
    except Exception as exc:
        show_state(player.connection_state)
        show_error(f"Could not reconnect: {exc}")


async def disconnect() -> None:
    global mic_on
    element("disconnect").disabled = True
    mic_on = False
    show_mic("off")
    try:
        await player.disconnect()
    except Exception as exc:
        show_error(f"Disconnect failed: {exc}")
    show_state(player.connection_state)


@when("click", "#connect")
async def on_connect(event) -> None:
    await connect()


@when("click", "#reconnect")
async def on_reconnect(event) -> None:
    await reconnect()


@when("click", "#disconnect")
async def on_disconnect(event) -> None:
    await disconnect()


@when("click", "#enable-audio")
async def on_enable_audio(event) -> None:
    """Resume the avatar's audio from this click (a user gesture)."""
    try:
        await player.start_audio()
    except Exception as exc:
        show_error(f"Sound could not start: {exc}")


def fmt(value, unit="", digits=0) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def refresh_panel() -> None:
    s = player.session_summary
    summary = s.as_dict()
    summary["averageBufferDelayMs"] = s.average_buffer_delay_ms
    demo.summary = js.JSON.parse(json.dumps(summary))
    face = renderer.snapshot()
    demo.rendererMode = "face" if renderer.decoded_ok else "undecodable"
    demo.face = js.JSON.parse(json.dumps(face))
    values = {
        "s-framesRendered": fmt(s.frames_rendered),
        "s-fps": fmt(s.average_fps, "", 1),
        "s-delay": fmt(s.average_buffer_delay_ms, " ms", 1),
        "s-sync": "following the voice" if s.sync_mode == "audio" else f"own clock ({s.sync_reason})",
        "s-avOffset": fmt(s.av_sync_offset_ms, " ms", 0),
        "s-audioDelay": fmt(s.audio_delay_ms, " ms", 0),
        "s-framesReceived": fmt(s.frames_received),
        "s-framesDropped": fmt(s.frames_dropped),
        "s-framesSkipped": fmt(s.frames_skipped),
        "s-stalls": f"{s.stall_count} ({s.stalled_duration_ms / 1000:.1f} s)",
        "s-turns": fmt(s.turns),
        "s-ttff": fmt(s.time_to_first_frame_ms, " ms"),
        "s-malformed": fmt(s.packets_malformed),
        "s-untrusted": fmt(s.untrusted_ignored),
        "s-mode": getattr(player, "motion_mode", None) or "–",
        "s-renderer": f"{face['mode']} · {face['costMsMean']:.2f} ms/draw",
    }
    for id_, text in values.items():
        element(id_).textContent = text
    element("t-python").textContent = fmt(timings["pythonReadyMs"], " ms")
    click = timings["connectClickMs"]
    for id_, key in (("t-connected", "connectedMs"), ("t-first", "firstFrameMs")):
        value = timings[key]
        element(id_).textContent = "–" if click is None or value is None else f"{value - click:.0f} ms after click"


async def panel_loop() -> None:
    while True:
        try:
            renderer.fit()
            refresh_panel()
        except Exception as exc:  # the panel must never take the page down
            js.console.error(f"panel refresh failed: {exc!r}")
        await asyncio.sleep(0.5)


# keep references: a task nobody holds may be garbage-collected
tasks = [asyncio.ensure_future(panel_loop())]
# the renderer's state, read in the same JS task as the canvas pixels (tests sample both at once)
demo.faceSnapshot = create_proxy(lambda: json.dumps(renderer.snapshot()))
element("boot").hidden = True
show_state("disconnected")
demo.phase = "ready"
log_event("Python ready: click Connect")
if js.URLSearchParams.new(js.location.search).get("autoconnect") == "1":
    asyncio.ensure_future(connect())
