"""The page's Python: draw the avatar's face from the Room the JavaScript app owns (app.js).

The hand-over: ``LiveKitProvider(room=window.appRoom)`` before app.js connects the room, then
``player.connect()`` with no arguments once it is connected (app.js calls ``avatarPlayer.start()``).
``player.disconnect()`` (``avatarPlayer.stop()``) leaves the app's room connected.
``window.avatarStats()`` returns the player's state and counters as JSON (for you, and for tests).
"""

import json

import js
from pyodide.ffi import create_proxy, to_js
from pyscript import document

from avatarplayer import AvatarPlayer, FaceRenderer, LiveKitProvider

room = getattr(js.window, "appRoom", None)
if room is None:
    raise RuntimeError("window.appRoom is not set: app.js must load before PyScript")

# the same livekit-client module app.js imported (one URL: one module instance in the page)
livekit_client_url = js.URL.new("vendor/livekit-client/livekit-client.esm.mjs", document.baseURI).href
provider = LiveKitProvider(room=room, livekit_client_url=livekit_client_url)  # before the room connects
renderer = FaceRenderer(document.getElementById("avatar"))
player = AvatarPlayer(provider, renderer)


def show_state(state):
    document.getElementById("player-state").textContent = str(state)


show_state(player.connection_state)  # Python is up: "disconnected" until app.js connects the room
player.on("connection-state-changed", show_state)


async def start():
    await player.connect()  # no arguments: the app's room is connected already


async def stop():
    await player.disconnect()  # the player leaves the room alone: the app disconnects it


same_object = getattr(js.Object, "is")  # Object.is ("is" is a Python keyword)


def stats():
    return json.dumps({"state": player.connection_state, "motionPath": player.motion_mode,
                       "sameRoom": bool(same_object(player.get_native_client(), js.window.appRoom)),
                       "face": renderer.snapshot(), "summary": player.session_summary.as_dict()})


js.window.avatarStats = create_proxy(stats)
js.window.avatarPlayer = to_js({"start": create_proxy(start), "stop": create_proxy(stop)},
                               dict_converter=js.Object.fromEntries)
js.window.dispatchEvent(js.Event.new("avatarplayer-ready"))
