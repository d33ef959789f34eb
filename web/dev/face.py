"""Preview of the reference face renderer, fed with synthetic motion frames (no LiveKit).

Run by face.js inside Pyodide. Frames are real serialized ``Message`` bytes made with
``avatarplayer.wire.messages.build_message`` and handed to the renderer the way the player does: a
TRANSITION, then ``turn_started`` and one ``yield_frames_data`` per 40 ms tick, ``turn_ended`` at
the end.

Query: ``mode`` = ``idle`` (default) | ``speaking`` (turns in a loop) | ``blend`` (one short turn,
then the blend back to idle); ``seed``; ``blendIn``, ``blendOut``, ``disconnectBlend`` (frames).

``window.face``: ``phase`` ("ready"), ``snapshot()``, ``speak(seconds)``, ``loop(on)``,
``endTurn(reason)``, ``stall()``, ``disconnect()``, ``badFrame()``,
``hold({jaw, blink, gazeX, gazeY, yaw, pitch, roll, smile, brow})`` (one fixed frame, the turn left
open), ``bench(n)`` (n frames and n idle draws timed synchronously) and ``errors``.
"""

import asyncio
import json
import math
import random

import js
from pyodide.ffi import create_proxy

from avatarplayer import FaceRenderer
from avatarplayer.wire.messages import FLAME_FIELDS, build_message

params = js.URLSearchParams.new(js.location.search)
face_api = js.window.face


def param(name):
    value = params.get(name)  # JS null arrives as JsNull, not None
    return value if isinstance(value, str) and value else None


def number_param(name, default):
    value = param(name)
    return default if value is None else int(value)


renderer = FaceRenderer(
    js.document.getElementById("face"),
    seed=number_param("seed", 7),
    blend_in_frames=number_param("blendIn", 8),
    blend_out_frames=number_param("blendOut", 40),
    disconnect_blend_frames=number_param("disconnectBlend", 12),
)


class SyntheticSpeech:
    """Plausible talking motion: syllables on the jaw, phrases with pauses, blinks, glances,
    small nods and sway, and the leading expression components the way the worker moves them."""

    def __init__(self, seed=3):
        self.rng = random.Random(seed)
        self.t = 0
        self.blink_at = 30
        self.gaze = (0.0, 0.0)
        self.gaze_until = 20

    def pose(self):
        t = self.t / 25.0
        self.t += 1
        phrase = max(0.0, math.sin(2 * math.pi * 0.23 * t + 0.4)) ** 0.3  # short pauses between phrases
        syllable = abs(math.sin(2 * math.pi * 2.6 * t)) ** 0.7
        loud = phrase * syllable * (0.65 + 0.35 * math.sin(2 * math.pi * 0.9 * t))
        jaw = 0.32 * max(0.0, loud)
        self.blink_at -= 1
        lid = 0.0
        if -6 < self.blink_at <= 0:
            lid = (0.4, 0.9, 1.0, 0.7, 0.35, 0.1)[-self.blink_at]
        elif self.blink_at <= -6:
            self.blink_at = self.rng.randint(50, 110)
        self.gaze_until -= 1
        if self.gaze_until <= 0:
            self.gaze = (self.rng.uniform(-0.05, 0.06), self.rng.uniform(-0.14, 0.14))
            self.gaze_until = self.rng.randint(15, 60)
        pitch = 0.03 * math.sin(2 * math.pi * 0.3 * t) + 0.03 * loud
        yaw = 0.07 * math.sin(2 * math.pi * 0.11 * t + 1.0)
        roll = 0.04 * math.sin(2 * math.pi * 0.17 * t + 0.5)
        flame = {name: [0.0] * size for name, size in FLAME_FIELDS.items()}
        flame["jaw_pose"] = [jaw, 0.0, 0.0]
        flame["eye_lid"] = [lid, lid]
        flame["eye_pose"] = [self.gaze[0] - 0.4 * pitch, self.gaze[1] - 0.5 * yaw, 0.0] * 2
        flame["rotation"] = [pitch, yaw, roll]
        flame["neck_pose"] = [0.4 * pitch, 0.3 * yaw, 0.5 * roll]
        expression = flame["expression"]
        expression[0] = 1.2 * loud
        expression[1] = -0.4 * loud
        expression[2] = 0.25 * max(0.0, math.sin(2 * math.pi * 0.4 * t))
        expression[3] = 0.08 + 0.06 * math.sin(2 * math.pi * 0.07 * t)
        return flame


speech = SyntheticSpeech()
state = {"task": None, "loop": False, "turn": 0, "cid": None}


def new_cid():
    state["turn"] += 1
    return f"preview_{state['turn']:04d}"


async def play_turn(seconds):
    """TRANSITION, then frames at 40 ms deadlines (START..END), then turn_ended — like the player."""
    frames = max(1, round(seconds * 25))
    loop = asyncio.get_running_loop()
    cid = new_cid()
    state["cid"] = cid
    first = build_message(speech.pose(), req_id=cid)
    renderer.transition(first)
    deadline = loop.time() + 0.04
    message = first
    for i in range(frames):
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        deadline += 0.04
        if i == 0:
            renderer.turn_started(cid)
        else:
            message = build_message(speech.pose(), req_id=cid, end=i == frames - 1)
        renderer.yield_frames_data([message], cid)
    renderer.turn_ended(cid, "end")
    state["cid"] = None


async def speaking_loop(seconds=6.0, pause=1.6):
    while state["loop"]:
        await play_turn(seconds)
        await asyncio.sleep(pause)


def cancel_task():
    task = state["task"]
    if task is not None and not task.done():
        task.cancel()
    state["task"] = None


def speak(seconds=3.0):
    cancel_task()
    state["loop"] = False
    state["task"] = asyncio.ensure_future(play_turn(float(seconds)))


def loop(on=True):
    cancel_task()
    state["loop"] = bool(on)
    if on:
        state["task"] = asyncio.ensure_future(speaking_loop())


def end_turn(reason="end"):
    cancel_task()
    state["loop"] = False
    renderer.turn_ended(state["cid"] or "", str(reason))
    state["cid"] = None


def stall():
    cancel_task()
    state["loop"] = False
    renderer.stalled()


def disconnect():
    end_turn("disconnect")


def bad_frame():
    renderer.yield_frames_data([b"\xff\x00not a protobuf message", b""], state["cid"] or "bad")


def hold(spec=None):
    """Show one fixed frame (a turn is opened and left open: the face holds it)."""
    cancel_task()
    state["loop"] = False
    spec = spec.to_py() if hasattr(spec, "to_py") else dict(spec or {})
    g = lambda key, default=0.0: float(spec.get(key, default))  # noqa: E731
    flame = {name: [0.0] * size for name, size in FLAME_FIELDS.items()}
    flame["jaw_pose"] = [0.32 * g("jaw"), 0.0, 0.0]
    flame["eye_lid"] = [g("blink"), g("blink")]
    flame["eye_pose"] = [0.25 * g("gazeY"), 0.25 * g("gazeX"), 0.0] * 2
    flame["rotation"] = [g("pitch"), g("yaw"), g("roll")]
    flame["expression"][3] = g("smile") / 2.5
    flame["expression"][2] = g("brow") / 3.0
    cid = state["cid"] or new_cid()
    if state["cid"] is None:
        renderer.turn_started(cid)
        state["cid"] = cid
    message = build_message(flame, req_id=cid)
    renderer.yield_frames_data([message], cid)


def bench(n=600):
    """Python cost per drawn frame, timed with performance.now() around each call: ``n`` turn frames
    (decode + pose + draw) and ``n`` idle redraws."""
    n = int(n)
    cancel_task()
    state["loop"] = False
    now = js.performance.now
    gen = SyntheticSpeech(seed=11)
    messages = [build_message(gen.pose(), req_id="bench") for _ in range(n)]
    renderer.turn_started("bench")
    frame_ms = []
    for message in messages:
        t = now()
        renderer.yield_frames_data([message], "bench")
        frame_ms.append(now() - t)
    renderer.turn_ended("bench", "end")
    idle_ms = []
    for _ in range(n):
        t = now()
        renderer.draw()
        idle_ms.append(now() - t)
    decode_ms = []
    from avatarplayer.face.model import pose_from_message

    for message in messages:
        t = now()
        pose_from_message(message)
        decode_ms.append(now() - t)

    def summary(values):
        values = sorted(values)
        return {"mean": sum(values) / len(values), "p50": values[len(values) // 2],
                "p95": values[int(len(values) * 0.95)], "max": values[-1], "n": len(values)}

    result = {"frame": summary(frame_ms), "idle": summary(idle_ms), "decode": summary(decode_ms)}
    return js.JSON.parse(json.dumps(result))


def snapshot():
    return js.JSON.parse(json.dumps(renderer.snapshot()))


# keep every proxy referenced for the life of the page
proxies = {
    "snapshot": create_proxy(snapshot),
    "speak": create_proxy(speak),
    "loop": create_proxy(loop),
    "endTurn": create_proxy(end_turn),
    "stall": create_proxy(stall),
    "disconnect": create_proxy(disconnect),
    "badFrame": create_proxy(bad_frame),
    "hold": create_proxy(hold),
    "bench": create_proxy(bench),
}
for name, proxy in proxies.items():
    setattr(face_api, name, proxy)

buttons = {
    "btn-idle": lambda e: end_turn("end"),
    "btn-speak": lambda e: speak(3.0),
    "btn-loop": lambda e: loop(True),
    "btn-stall": lambda e: stall(),
    "btn-disconnect": lambda e: disconnect(),
    "btn-bad": lambda e: bad_frame(),
}
for id_, handler in buttons.items():
    proxy = create_proxy(handler)
    proxies[id_] = proxy
    js.document.getElementById(id_).addEventListener("click", proxy)


async def status_loop():
    element = js.document.getElementById("status")
    while True:
        element.textContent = json.dumps(renderer.snapshot(), indent=1)
        await asyncio.sleep(0.25)


status_task = asyncio.ensure_future(status_loop())
mode = param("mode") or "idle"
if mode == "speaking":
    loop(True)
elif mode == "blend":
    speak(1.6)
face_api.mode = mode
face_api.phase = "ready"
