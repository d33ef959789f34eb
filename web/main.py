"""The demo page, in Python (PyScript): the player, a canvas renderer, the controls, a live panel.

Runs in the browser. ``index.html`` loads it with ``config="/pyscript.json"``, which points PyScript
at the locally served Pyodide and installs the ``avatarplayer`` wheel, so nothing comes from a CDN.

The renderer here is deliberately small: a stylized face whose jaw, eyelids, gaze and head follow
the FLAME values of each motion frame (``jaw_pose``, ``eye_lid``, ``eye_pose``, ``rotation``). A full
face renderer is a later piece of work; this one shows that frames arrive, in time with the voice.

Tests read ``window.demo``: ``phase`` ("loading" → "ready"), ``state`` (the connection state),
``summary`` (``session_summary.as_dict()``, refreshed twice a second), ``framesRendered`` (frames
drawn since the last connect), ``rendererMode`` ("face" or "bars"), ``audioBlocked``, ``mic``
("off", "on", "busy"), ``agentStatus``, ``transcript`` (lines ``{role, text, final}``), ``errors`` and
``timings`` (ms since navigation start). ``?autoconnect=1`` connects without a click.
"""

import asyncio
import json
import math
import random
import struct
from collections import deque

import js
from pyodide.http import pyfetch
from pyscript import when

from avatarplayer import AvatarPlayer, LiveKitProvider

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

# ----------------------------------------------------------------------------- decoding frames

try:  # the full protobuf schema, when google.protobuf is installed in the page
    from avatarplayer.messages import parse_message
except ImportError:
    parse_message = None

FLAME_FIELDS = ("translation", "rotation", "neck_pose", "jaw_pose", "eye_pose", "eye_lid", "expression")
"""FLAME parameters by protobuf field number (1..7) of ``Flame`` (wire-format.md)."""


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """(number, wire type, value) of each field of one protobuf message."""
    i, end = 0, len(buf)
    while i < end:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > end:
            raise ValueError("truncated message")
        yield number, wire, value


def read_keyframe(message: bytes) -> dict | None:
    """The last FLAME keyframe of a serialized ``Message`` (Message.6 → .4 → .1), or None.

    A few lines of protobuf wire format, so the page needs no protobuf package; used when
    ``avatarplayer.messages`` cannot be imported.
    """
    keyframe = None
    for number, wire, response in _fields(message):
        if number != 6 or wire != 2:
            continue
        for number, wire, animation in _fields(response):
            if number != 4 or wire != 2:
                continue
            for number, wire, flame in _fields(animation):
                if number == 1 and wire == 2:
                    keyframe = flame
    if keyframe is None:
        return None
    pose = {name: [] for name in FLAME_FIELDS}
    for number, wire, value in _fields(keyframe):
        if 1 <= number <= len(FLAME_FIELDS):
            name = FLAME_FIELDS[number - 1]
            if wire == 2:  # packed
                pose[name].extend(struct.unpack(f"<{len(value) // 4}f", value[: len(value) // 4 * 4]))
            elif wire == 5:
                pose[name].append(struct.unpack("<f", value)[0])
    return pose


def decode_pose(frame: bytes) -> dict | None:
    if parse_message is not None:
        keyframes = parse_message(frame)["keyframes"]
        return keyframes[-1] if keyframes else None
    return read_keyframe(frame)


# ----------------------------------------------------------------------------- the renderer

W, H = 560, 420  # drawing units; the canvas is scaled to its CSS size × devicePixelRatio
JAW_FULL = 0.32  # radians of jaw_pose[0] drawn as a fully open mouth (the worker's maximum)
NEUTRAL = {"jaw": 0.0, "lid_l": 0.0, "lid_r": 0.0, "pitch": 0.0, "yaw": 0.0, "roll": 0.0,
           "gaze_x": 0.0, "gaze_y": 0.0, "lips": 0.0}


def _at(values, index, default=0.0):
    return float(values[index]) if len(values) > index else default


class FaceRenderer:
    """Draws a stylized face from each frame's FLAME values; falls back to a bar chart of frame
    sizes when a frame cannot be decoded. Implements the avatarplayer renderer contract."""

    def __init__(self, canvas) -> None:
        self.canvas = canvas
        self.ctx = canvas.getContext("2d")
        self.pose = dict(NEUTRAL)
        self.frames_rendered = 0
        self.decode_failures = 0
        self.mode = "face"
        self.status = "idle"
        self.conversation_id = ""
        self.last_frame_ms = -1e9
        self.first_frame_ms = None
        self.jaw_history = deque([0.0] * 140, maxlen=140)
        self.sizes = deque(maxlen=48)
        self.decoder = "avatarplayer.messages" if parse_message is not None else "built-in protobuf reader"
        self._css_width = 0
        self._blink = -1
        self._next_blink_ms = now_ms() + 2500
        self.fit()

    # -- the renderer contract ------------------------------------------------------------

    def yield_frames_data(self, frames, conversation_id) -> None:
        self.conversation_id = conversation_id
        for frame in frames:
            data = bytes(frame)
            self.sizes.append(len(data))
            try:
                pose = decode_pose(data)
            except Exception:
                pose = None
            if pose is None:
                self.decode_failures += 1
                self.mode = "bars"
                continue
            self.mode = "face"
            self._apply(pose)
        self.frames_rendered += len(frames)
        self.last_frame_ms = now_ms()
        if self.first_frame_ms is None:
            self.first_frame_ms = self.last_frame_ms
            timings["firstFrameMs"] = self.first_frame_ms
            publish_timings()
        demo.framesRendered = self.frames_rendered
        self.status = "speaking"
        self.draw()

    def yield_audio_data(self, data, is_last):
        return None  # the browser plays the avatar's WebRTC audio itself

    def turn_started(self, conversation_id) -> None:
        self.status = "speaking"

    def turn_ended(self, conversation_id, reason) -> None:
        self.status = "idle" if reason != "disconnect" else "disconnected"

    def stalled(self) -> None:
        self.status = "stalled"

    def transition(self, message) -> None:
        pass

    # -- pose ------------------------------------------------------------------------------

    def _apply(self, flame: dict) -> None:
        jaw = max(0.0, min(1.0, _at(flame.get("jaw_pose", ()), 0) / JAW_FULL))
        rotation = flame.get("rotation", ())
        lids = flame.get("eye_lid", ())
        eyes = flame.get("eye_pose", ())
        expression = flame.get("expression", ())
        self.pose.update(
            jaw=jaw,
            pitch=_at(rotation, 0), yaw=_at(rotation, 1), roll=_at(rotation, 2),
            lid_l=_at(lids, 0), lid_r=_at(lids, 1, _at(lids, 0)),
            gaze_y=_at(eyes, 0), gaze_x=_at(eyes, 1),
            lips=_at(expression, 3),
        )
        self.jaw_history.append(jaw)

    def idle_step(self) -> None:
        """Between turns (no frames): settle to a neutral face, blink now and then, redraw."""
        t = now_ms()
        if t - self.last_frame_ms < 300:
            return
        for key, target in NEUTRAL.items():
            self.pose[key] += (target - self.pose[key]) * 0.25
        if self._blink < 0 and t >= self._next_blink_ms:
            self._blink = 0
        if self._blink >= 0:
            closure = (0.5, 1.0, 0.6, 0.2)[self._blink]
            self.pose["lid_l"] = self.pose["lid_r"] = closure
            self._blink += 1
            if self._blink >= 4:
                self._blink = -1
                self._next_blink_ms = t + random.uniform(2500, 5000)
        self.jaw_history.append(self.pose["jaw"])
        self.draw()

    # -- drawing ---------------------------------------------------------------------------

    def fit(self) -> None:
        """Match the backing store to the CSS size (sharp on high-DPI screens)."""
        css = self.canvas.clientWidth or W
        if css == self._css_width:
            return
        self._css_width = css
        dpr = js.window.devicePixelRatio or 1
        self.canvas.width = round(css * dpr)
        self.canvas.height = round(css * dpr * H / W)

    def draw(self) -> None:
        ctx = self.ctx
        scale = self.canvas.width / W
        ctx.setTransform(scale, 0, 0, scale, 0, 0)
        background = ctx.createRadialGradient(W / 2, H * 0.42, 30, W / 2, H * 0.42, W * 0.7)
        background.addColorStop(0, "#24345c")
        background.addColorStop(1, "#0b1020")
        ctx.fillStyle = background
        ctx.fillRect(0, 0, W, H)
        if self.mode == "bars":
            self._draw_bars()
        else:
            self._draw_face()
        self._draw_meter()
        self._draw_caption()

    def _ellipse(self, x, y, rx, ry, fill=None, stroke=None, width=2.0) -> None:
        ctx = self.ctx
        ctx.beginPath()
        ctx.ellipse(x, y, max(rx, 0.01), max(ry, 0.01), 0, 0, 2 * math.pi)
        if fill:
            ctx.fillStyle = fill
            ctx.fill()
        if stroke:
            ctx.strokeStyle = stroke
            ctx.lineWidth = width
            ctx.stroke()

    def _draw_face(self) -> None:
        ctx, p = self.ctx, self.pose
        jaw = p["jaw"]
        cx = W / 2 + p["yaw"] * 320
        cy = H * 0.42 + p["pitch"] * 320
        ctx.save()
        ctx.translate(cx, cy)
        ctx.rotate(p["roll"] * 2.0)

        # shoulders, neck, ears, head, hair
        self._ellipse(0, 226, 172, 64, fill="#35507f")
        ctx.fillStyle = "#d99b78"
        ctx.fillRect(-36, 100, 72, 68)
        ctx.beginPath()  # round neckline
        ctx.ellipse(0, 167, 36, 16, 0, 0, math.pi)
        ctx.fill()
        self._ellipse(-118, 5, 16, 28, fill="#e8ad88")
        self._ellipse(118, 5, 16, 28, fill="#e8ad88")
        skin = ctx.createRadialGradient(-30, -40, 20, 0, 0, 170)
        skin.addColorStop(0, "#ffdcc2")
        skin.addColorStop(1, "#e6a583")
        self._ellipse(0, 8 + jaw * 6, 116, 140 + jaw * 6, fill=skin)
        ctx.beginPath()
        ctx.ellipse(0, -62, 122, 82, 0, math.pi * 1.02, math.pi * 1.98)
        ctx.quadraticCurveTo(40, -110, -110, -50)
        ctx.fillStyle = "#3b2a22"
        ctx.fill()

        # eyes: white, iris following the gaze, eyelid closing over it
        for side, lid in ((-1, p["lid_l"]), (1, p["lid_r"])):
            ex, ey = side * 44, -18
            open_ry = 15 * (1 - min(1.0, lid))
            ctx.save()
            self._ellipse(ex, ey, 24, max(open_ry, 0.6), fill="#fbfbff")
            ctx.clip()
            ix = ex + max(-1.0, min(1.0, p["gaze_x"] / 0.12)) * 10
            iy = ey + max(-1.0, min(1.0, p["gaze_y"] / 0.12)) * 6
            self._ellipse(ix, iy, 10, 10, fill="#3e78b2")
            self._ellipse(ix, iy, 4.6, 4.6, fill="#101522")
            self._ellipse(ix + 3, iy - 3, 2, 2, fill="#ffffff")
            ctx.restore()
            ctx.beginPath()  # upper lid line
            ctx.ellipse(ex, ey, 25, max(open_ry, 0.6) + 1, 0, math.pi, 2 * math.pi)
            ctx.strokeStyle = "#5a3b2e"
            ctx.lineWidth = 2.5
            ctx.stroke()
            ctx.beginPath()  # brow, lifted a little while speaking
            ctx.moveTo(ex - 24, ey - 30 - jaw * 4)
            ctx.quadraticCurveTo(ex, ey - 40 - jaw * 6, ex + 24, ey - 30 - jaw * 4)
            ctx.lineWidth = 5
            ctx.lineCap = "round"
            ctx.strokeStyle = "#3b2a22"
            ctx.stroke()

        # nose
        ctx.beginPath()
        ctx.moveTo(-4, 8)
        ctx.quadraticCurveTo(-12, 38, 0, 42)
        ctx.quadraticCurveTo(8, 42, 10, 38)
        ctx.strokeStyle = "#c98565"
        ctx.lineWidth = 2.5
        ctx.stroke()

        # mouth: the opening follows jaw_pose; teeth and tongue show when it is open
        my = 78 + jaw * 8
        mw = 40 - jaw * 8 + p["lips"] * 30
        mh = 3 + jaw * 34
        ctx.save()
        self._ellipse(0, my, mw, mh, fill="#5b1d2a")
        ctx.clip()
        if mh > 6:
            ctx.fillStyle = "#f6f1ea"
            ctx.fillRect(-mw, my - mh, 2 * mw, min(9.0, mh * 0.35))
            self._ellipse(0, my + mh * 0.85, mw * 0.6, mh * 0.5, fill="#d46a78")
        ctx.restore()
        self._ellipse(0, my, mw, mh, stroke="#b85561", width=4)
        ctx.restore()

    def _draw_bars(self) -> None:
        ctx = self.ctx
        sizes = list(self.sizes) or [0]
        top = max(sizes) or 1
        bar = (W - 80) / len(sizes)
        ctx.fillStyle = "#5b8cff"
        for i, size in enumerate(sizes):
            h = (H - 150) * size / top
            ctx.fillRect(40 + i * bar, H - 90 - h, max(1.0, bar - 2), h)
        ctx.fillStyle = "#8e98b3"
        ctx.font = "14px system-ui, sans-serif"
        ctx.fillText(f"bytes per frame (frames could not be decoded: {self.decode_failures})", 40, 40)

    def _draw_meter(self) -> None:
        """The jaw opening of the last ~5 s, a sparkline along the bottom."""
        ctx = self.ctx
        base, height = H - 14, 34
        ctx.fillStyle = "rgba(11,16,32,0.6)"
        ctx.fillRect(16, base - height, W - 32, height)
        step = (W - 32) / (len(self.jaw_history) - 1)
        ctx.beginPath()
        for i, value in enumerate(self.jaw_history):
            x, y = 16 + i * step, base - value * height
            ctx.moveTo(x, y) if i == 0 else ctx.lineTo(x, y)
        ctx.strokeStyle = "#5b8cff"
        ctx.lineWidth = 2
        ctx.stroke()

    def _draw_caption(self) -> None:
        ctx = self.ctx
        colors = {"speaking": "#3ccf8e", "stalled": "#ff6b6b", "failed": "#ff6b6b"}
        ctx.fillStyle = colors.get(self.status, "#8e98b3")
        ctx.beginPath()
        ctx.arc(26, 26, 6, 0, 2 * math.pi)
        ctx.fill()
        ctx.font = "600 14px system-ui, sans-serif"
        ctx.fillText(self.status, 40, 31)
        ctx.fillStyle = "#8e98b3"
        ctx.font = "13px ui-monospace, monospace"
        ctx.textAlign = "right"
        ctx.fillText(f"frame {self.frames_rendered}", W - 18, 31)
        ctx.textAlign = "left"

    def reset(self) -> None:
        self.frames_rendered = 0
        self.first_frame_ms = None
        demo.framesRendered = 0


# ----------------------------------------------------------------------------- the page


def element(id_: str):
    return document.getElementById(id_)


renderer = FaceRenderer(element("avatar"))
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
    mic = element("mic")
    if mic is not None and getattr(mic.dataset, "state", None) != "busy":
        mic.disabled = state != "connected"


def on_state(state) -> None:
    show_state(str(state))
    log_event(f"state → {state}")
    if state in ("disconnected", "failed"):
        renderer.status = str(state)
    if state == "connected":
        timings["connectedMs"] = now_ms()
        publish_timings()


player.on("connection-state-changed", on_state)
player.on("turn-started", lambda cid: log_event(f"turn started {str(cid)[-6:]}"))
player.on("turn-ended", lambda cid, reason: log_event(f"turn ended ({reason})"))
player.on("stalled", lambda: log_event("stalled: no motion for 3 s"))
player.on("motion-track-attached", lambda mode: log_event(f"motion track attached ({mode})"))
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
    """Chunks of one speaker's turn extend its last line until a final one closes it."""
    role = chunk.role or "agent"
    last = transcript_lines[-1] if transcript_lines else None
    if last is not None and last["role"] == role and not last["final"]:
        last["text"] = (last["text"] + " " + chunk.text).strip()
        last["final"] = chunk.final
    else:
        transcript_lines.append({"role": role, "text": chunk.text, "final": chunk.final})
    del transcript_lines[:-12]
    items = element("transcript")
    items.innerHTML = ""
    for line in transcript_lines:
        li = document.createElement("li")
        li.dataset.role = line["role"]
        who = document.createElement("strong")
        who.textContent = "You" if line["role"] == "user" else "Avatar"
        li.append(who, " " + line["text"])
        items.append(li)
    items.scrollTop = items.scrollHeight
    demo.transcript = js.JSON.parse(json.dumps(transcript_lines))


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


async def connect() -> None:
    show_error(None)
    show_state("connecting")
    renderer.reset()
    timings.update(connectClickMs=now_ms(), connectedMs=None, firstFrameMs=None)
    publish_timings()
    try:
        response = await pyfetch("/api/token", method="POST", body="{}",
                                 headers={"Content-Type": "application/json"})
        grant = await response.json()
        if not response.ok:
            raise RuntimeError(grant.get("error") or f"HTTP {response.status}")
        await player.connect(grant)  # {token, serverUrl, roomName} as is
    except Exception as exc:
        show_state(player.connection_state)
        show_error(f"Could not connect: {exc}")


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
    demo.rendererMode = renderer.mode
    values = {
        "s-framesRendered": fmt(s.frames_rendered),
        "s-fps": fmt(s.average_fps, "", 1),
        "s-delay": fmt(s.average_buffer_delay_ms, " ms", 1),
        "s-framesReceived": fmt(s.frames_received),
        "s-framesDropped": fmt(s.frames_dropped),
        "s-framesSkipped": fmt(s.frames_skipped),
        "s-stalls": f"{s.stall_count} ({s.stalled_duration_ms / 1000:.1f} s)",
        "s-turns": fmt(s.turns),
        "s-ttff": fmt(s.time_to_first_frame_ms, " ms"),
        "s-malformed": fmt(s.packets_malformed),
        "s-mode": getattr(player, "motion_mode", None) or "–",
        "s-renderer": f"{renderer.mode} · {renderer.decoder}",
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


async def idle_loop() -> None:
    while True:
        try:
            renderer.idle_step()
        except Exception as exc:
            js.console.error(f"idle drawing failed: {exc!r}")
        await asyncio.sleep(0.08)


# keep references: a task nobody holds may be garbage-collected
tasks = [asyncio.ensure_future(panel_loop()), asyncio.ensure_future(idle_loop())]
renderer.draw()
element("boot").hidden = True
show_state("disconnected")
demo.phase = "ready"
log_event("Python ready: click Connect")
if js.URLSearchParams.new(js.location.search).get("autoconnect") == "1":
    asyncio.ensure_future(connect())
