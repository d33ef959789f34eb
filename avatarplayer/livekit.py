"""LiveKitProvider: the livekit-client ``Room``, the motion track's transform, the avatar's audio.

Browser only (Pyodide): everything JavaScript goes through here, so the rest of the package stays
plain Python. Interop rules followed (platform.md): long-lived callbacks are ``create_proxy``
objects kept referenced and destroyed only after they are detached; options are plain JS objects;
bytes cross once per packet as one ``ArrayBuffer``.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from . import options
from .events import ConnectionState

__all__ = ["LiveKitProvider", "DEFAULT_LIVEKIT_CLIENT_URL", "DEFAULT_TRANSFORM_WORKER_URL"]

DEFAULT_LIVEKIT_CLIENT_URL = "/vendor/livekit-client/livekit-client.esm.mjs"
DEFAULT_TRANSFORM_WORKER_URL = "/worker_transform/motion-transform.js"
TRANSFORM_MODES = ("auto", "script", "streams")

_log = logging.getLogger("avatarplayer.livekit")


class LiveKitProvider:
    """Owns (or shares) a livekit-client ``Room`` and feeds the player.

    :param animation_track_name: exact publication name of the motion track.
    :param animation_track_name_pattern: a regex (str or ``re.Pattern``) for it. Without either,
        a video publication whose name contains "motion" or "animation" is the motion track.
    :param room: an existing livekit-client ``Room`` to share (not disconnected by the player).
    :param livekit_client_url: where the page serves livekit-client's ESM build (local, no CDN).
    :param transform_worker_url: where the page serves ``worker_transform/motion-transform.js``.
    :param transform_mode: "auto" (RTCRtpScriptTransform, else createEncodedStreams), "script"
        or "streams".
    :param single_peer_connection: livekit-client >= 2.17 defaults to one peer connection; receiver
        transforms are only reliable on a recvonly transceiver, so this defaults to False.
    """

    def __init__(
        self,
        animation_track_name: str | None = None,
        animation_track_name_pattern: str | re.Pattern[str] | None = None,
        room: Any = None,
        *,
        livekit_client_url: str = DEFAULT_LIVEKIT_CLIENT_URL,
        transform_worker_url: str = DEFAULT_TRANSFORM_WORKER_URL,
        transform_mode: str = "auto",
        single_peer_connection: bool = False,
    ) -> None:
        self.animation_track_name = options.optional_text("animation_track_name", animation_track_name)
        self.animation_track_name_pattern = options.optional_pattern(
            "animation_track_name_pattern", animation_track_name_pattern)
        if animation_track_name is not None and animation_track_name_pattern is not None:
            raise ValueError("give animation_track_name or animation_track_name_pattern, not both")
        options.optional_text("livekit_client_url", livekit_client_url)
        options.optional_text("transform_worker_url", transform_worker_url)
        if transform_mode not in TRANSFORM_MODES:
            raise ValueError(f"transform_mode must be one of {TRANSFORM_MODES}, got {transform_mode!r}")
        self.livekit_client_url = livekit_client_url
        self.transform_worker_url = transform_worker_url
        self.transform_mode = transform_mode
        self.single_peer_connection = options.flag("single_peer_connection", single_peer_connection)
        self._shared_room = room
        self.room: Any = room
        self.lk: Any = None
        self._sink: Any = None
        self._proxies: list[Any] = []
        self._room_handlers: list[tuple[str, Any]] = []
        self._worker: Any = None
        self._ports: dict[int, Any] = {}
        self._attach_count = 0
        self._passed_through: dict[int, int] = {}
        self._audio_elements: dict[str, Any] = {}
        self.avatar_identity: str | None = None
        self.transform_stats: dict[int, dict] = {}

    # ------------------------------------------------------------------------------ set-up

    def is_motion_publication(self, track_name: str) -> bool:
        return options.is_motion_track(track_name, self.animation_track_name, self.animation_track_name_pattern)

    async def _load_livekit(self) -> Any:
        from pyodide.code import run_js

        return await run_js(f"import({json.dumps(self.livekit_client_url)})")

    async def open(self, sink: Any, url: str, token: str) -> None:
        """Connect the room (unless shared and connected) and start listening."""
        import js

        self._sink = sink
        self.lk = self.lk or await self._load_livekit()
        if self._shared_room is None:
            room_options: dict[str, Any] = {"adaptiveStream": False, "dynacast": False,
                                            "singlePeerConnection": self.single_peer_connection}
            if self._mode() == "streams":
                room_options["encodedInsertableStreams"] = True  # livekit-client puts it in rtcConfig
            self.room = self.lk.Room.new(_js_object(room_options))
            if self._mode() == "streams":
                self.room.options.rtcConfig = _js_object({"encodedInsertableStreams": True})
        self._listen()
        if self._shared_room is None or self.room.state != "connected":
            await self.room.connect(url, token, _js_object({"autoSubscribe": True}))
        else:
            # a shared room that was already connected: its tracks were subscribed before we listened
            for participant in self.room.remoteParticipants.values():
                for publication in participant.trackPublications.values():
                    if publication.track is not None and publication.isSubscribed:
                        self._on_track_subscribed(publication.track, publication, participant)
        _log.info("connected to %s with livekit-client %s", url, getattr(self.lk, "version", "?"))
        del js

    def _mode(self) -> str:
        import js

        if self.transform_mode != "auto":
            return self.transform_mode
        return "script" if hasattr(js, "RTCRtpScriptTransform") else "streams"

    def _listen(self) -> None:
        from pyodide.ffi import create_proxy

        events = self.lk.RoomEvent
        handlers = {
            events.TrackSubscribed: self._on_track_subscribed,
            events.TrackUnsubscribed: self._on_track_unsubscribed,
            events.Reconnecting: lambda *a: self._state(ConnectionState.RECONNECTING),
            events.SignalReconnecting: lambda *a: self._state(ConnectionState.RECONNECTING),
            events.Reconnected: lambda *a: self._state(ConnectionState.CONNECTED),
            events.Disconnected: self._on_disconnected,
        }
        for name, handler in handlers.items():
            proxy = create_proxy(handler)
            self._proxies.append(proxy)
            self._room_handlers.append((name, proxy))
            self.room.on(name, proxy)

    # ------------------------------------------------------------------------ room events

    def _state(self, state: ConnectionState, error: BaseException | None = None) -> None:
        if self._sink is not None:
            self._sink.on_room_state(state, error)

    def _on_disconnected(self, reason: Any = None, *_: Any) -> None:
        client_initiated = reason is not None and reason == self.lk.DisconnectReason.CLIENT_INITIATED
        if client_initiated:
            self._state(ConnectionState.DISCONNECTED)
        else:
            self._state(ConnectionState.FAILED, ConnectionError(f"the room disconnected (reason {reason})"))

    def _on_track_subscribed(self, track: Any, publication: Any, participant: Any) -> None:
        try:
            if track.kind == "video" and self.is_motion_publication(publication.trackName):
                self.avatar_identity = participant.identity
                self._attach_transform(track)
                for pub in participant.trackPublications.values():  # audio subscribed earlier
                    if pub.kind == "audio" and pub.track is not None:
                        self._attach_audio(pub.track, participant.identity)
            elif track.kind == "audio" and participant.identity == self.avatar_identity:
                self._attach_audio(track, participant.identity)
        except Exception:
            _log.exception("handling TrackSubscribed failed")

    def _on_track_unsubscribed(self, track: Any, publication: Any, participant: Any) -> None:
        element = self._audio_elements.pop(track.sid, None)
        if element is not None:
            track.detach(element)
            element.remove()

    def _attach_audio(self, track: Any, identity: str) -> None:
        import js

        if track.sid in self._audio_elements:
            return
        element = track.attach()
        element.dataset.avatarIdentity = identity
        js.document.body.appendChild(element)
        self._audio_elements[track.sid] = element

    # ------------------------------------------------------------------------- transform

    def _attach_transform(self, track: Any) -> None:
        """(Re)attach the transform to the motion track's receiver, on every TrackSubscribed."""
        import js
        from pyodide.ffi import create_proxy, to_js

        receiver = track.receiver
        if receiver is None:
            _log.error("the motion track has no RTCRtpReceiver; cannot read motion packets")
            return
        if self._worker is None:
            self._worker = js.Worker.new(self.transform_worker_url, _js_object({"name": "avatar-motion"}))
        self._attach_count += 1
        attach_id = self._attach_count
        channel = js.MessageChannel.new()
        handler = create_proxy(self._on_port_message)
        self._proxies.append(handler)
        channel.port1.onmessage = handler
        self._ports[attach_id] = channel.port1
        mode = self._mode()
        if mode == "script":
            receiver.transform = js.RTCRtpScriptTransform.new(
                self._worker, _js_object({"port": channel.port2, "id": attach_id}), to_js([channel.port2]))
        else:
            streams = receiver.createEncodedStreams()
            self._worker.postMessage(
                _js_object({"readable": streams.readable, "writable": streams.writable,
                            "port": channel.port2, "id": attach_id}),
                to_js([streams.readable, streams.writable, channel.port2]))
        _log.info("motion transform attached (%s, #%d)", mode, attach_id)
        if self._sink is not None:
            self._sink.on_motion_attached(mode)

    def _on_port_message(self, event: Any) -> None:
        data = event.data
        kind = data.type
        if kind == "packet":
            self._sink.on_packet(data.packet.to_bytes(), data.arrivalMs)
        elif kind in ("stats", "ended"):
            stats = (data.stats if kind == "ended" else data).to_py()
            self.transform_stats[stats.get("id")] = stats
            self._passed_through[stats.get("id")] = stats.get("passedThrough", 0)
            self._sink.on_passed_through(sum(self._passed_through.values()))

    def request_stats(self) -> None:
        """Ask every attached transform for its counters (answers arrive asynchronously)."""
        for port in self._ports.values():
            port.postMessage(_js_object({"type": "stats"}))

    # ------------------------------------------------------------------------------ close

    async def close(self) -> None:
        room = self.room
        if room is not None:
            for name, proxy in self._room_handlers:
                room.off(name, proxy)
            if self._shared_room is None:
                await room.disconnect()
        for element in self._audio_elements.values():
            element.remove()
        self._audio_elements.clear()
        for port in self._ports.values():
            port.onmessage = None
            port.close()
        self._ports.clear()
        for proxy in self._proxies:
            proxy.destroy()
        self._proxies.clear()
        self._room_handlers.clear()
        if self._worker is not None:
            self._worker.terminate()
            self._worker = None
        if self._shared_room is None:
            self.room = None


def _js_object(value: dict[str, Any]) -> Any:
    import js
    from pyodide.ffi import to_js

    return to_js(value, dict_converter=js.Object.fromEntries)
