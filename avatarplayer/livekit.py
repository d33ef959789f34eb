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
import struct
from typing import Any

from . import options
from .events import ConnectionState

__all__ = ["LiveKitProvider", "DEFAULT_LIVEKIT_CLIENT_URL", "DEFAULT_TRANSFORM_WORKER_URL"]

DEFAULT_LIVEKIT_CLIENT_URL = "/vendor/livekit-client/livekit-client.esm.mjs"
DEFAULT_TRANSFORM_WORKER_URL = "/worker_transform/motion-transform.js"
TRANSFORM_MODES = ("auto", "script", "streams")
_COMPACT = struct.Struct("<Idd")  # id, arrivalMs, rtpTimestamp: the compact packet header
ATTACH_ACK_TIMEOUT_MS = 2000
"""A transform the worker has not reported running after this long is attached again."""
WATCHDOG_MIN_FRAMES = 10
"""Frames the receiver counted, but the worker never saw, that make the watchdog re-attach."""
MAX_REATTACH = 3
"""Re-attaching rarely revives a transform that never ran: after this many, report an error."""

# Chromium calls a receiver's script transform reliably only when it is set as the transceiver is
# created, before negotiation (measured on Chromium 156 with livekit-client 2.16.1 and 2.23.0:
# 44 of 44 runs; at TrackSubscribed it failed up to 10 in 26). So wrap RTCPeerConnection, once per
# page, before livekit-client connects, and offer every new video receiver to the provider:
# ``addTransceiver`` covers the recvonly sections livekit-client >= 2.17 pre-adds on its single
# connection, the ``track`` event the transceivers the SFU offers on a subscriber connection.
_PC_HOOK_JS = """
(() => {
  if (globalThis.__avatarplayerPcHook) return globalThis.__avatarplayerPcHook;
  const hook = { onVideoReceiver: null, offered: new WeakSet() };
  const offer = (receiver) => {
    if (!receiver || !receiver.track || receiver.track.kind !== "video" || hook.offered.has(receiver)) return;
    hook.offered.add(receiver);
    if (hook.onVideoReceiver) hook.onVideoReceiver(receiver);
  };
  const Native = globalThis.RTCPeerConnection;
  class AvatarPlayerPeerConnection extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("track", (event) => offer(event.receiver));
    }
    addTransceiver(trackOrKind, init) {
      const transceiver = super.addTransceiver(trackOrKind, init);
      offer(transceiver.receiver);
      return transceiver;
    }
  }
  globalThis.RTCPeerConnection = AvatarPlayerPeerConnection;
  globalThis.__avatarplayerPcHook = hook;
  return hook;
})()
"""

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
        self._port_handler: Any = None
        self._resolved_mode = transform_mode
        self._motion_attach_id: int | None = None
        self._attach_count = 0
        self._acknowledged: set[int] = set()
        self._motion_track: Any = None
        self._attached_at_ms = 0.0
        self._packets: dict[int, int] = {}  # per attachment, counted here (stats replies arrive late)
        self._last_rtp_frames: int | None = None
        self._last_seen_total = 0
        self._checking = False
        self.reattach_count = 0
        self._pc_hook: Any = None
        self._passed_through: dict[int, int] = {}
        self._audio_elements: dict[str, Any] = {}
        self.avatar_identity: str | None = None
        self.transform_stats: dict[int, dict] = {}
        self.timings: dict[str, float] = {}
        """Start-up costs of the last ``open`` (ms): loading livekit-client, ``room.connect``."""

    # ------------------------------------------------------------------------------ set-up

    def is_motion_publication(self, track_name: str) -> bool:
        return options.is_motion_track(track_name, self.animation_track_name, self.animation_track_name_pattern)

    async def _load_livekit(self) -> Any:
        from pyodide.code import run_js

        return await run_js(f"import({json.dumps(self.livekit_client_url)})")

    async def open(self, sink: Any, url: str, token: str) -> None:
        """Connect the room (unless shared and connected) and start listening."""
        self._sink = sink
        self._resolved_mode = self._resolve_mode()
        started = _now_ms()
        self.lk = self.lk or await self._load_livekit()
        self.timings["livekit_client_loaded_ms"] = _now_ms() - started
        if self._shared_room is None:
            room_options: dict[str, Any] = {"adaptiveStream": False, "dynacast": False,
                                            "singlePeerConnection": self.single_peer_connection}
            if self._mode() == "streams":
                room_options["encodedInsertableStreams"] = True  # livekit-client puts it in rtcConfig
            self.room = self.lk.Room.new(_js_object(room_options))
            if self._mode() == "streams":
                self.room.options.rtcConfig = _js_object({"encodedInsertableStreams": True})
        self._listen()
        if self._mode() == "script":
            self._install_pc_hook()
        if self._shared_room is None or self.room.state != "connected":
            before = _now_ms()
            await self.room.connect(url, token, _js_object({"autoSubscribe": True}))
            self.timings["room_connect_ms"] = _now_ms() - before
        else:
            # a shared room that was already connected: its tracks were subscribed before we listened
            for participant in self.room.remoteParticipants.values():
                for publication in participant.trackPublications.values():
                    if publication.track is not None and publication.isSubscribed:
                        self._on_track_subscribed(publication.track, publication, participant)
        _log.info("connected to %s with livekit-client %s", url, getattr(self.lk, "version", "?"))

    def _install_pc_hook(self) -> None:
        from pyodide.code import run_js
        from pyodide.ffi import create_proxy

        self._pc_hook = run_js(_PC_HOOK_JS)
        proxy = create_proxy(self._on_video_receiver)
        self._proxies.append(proxy)
        self._pc_hook.onVideoReceiver = proxy

    def _on_video_receiver(self, receiver: Any) -> None:
        """A video transceiver was just created: attach now, before any frame can arrive."""
        try:
            self._attach_to_receiver(receiver)
        except Exception:
            _log.exception("attaching the transform to a new video receiver failed")

    def _mode(self) -> str:
        """How packets are read in this connection (resolved once per ``open``)."""
        return self._resolved_mode

    def _resolve_mode(self) -> str:
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
                self._motion_track = track
                self._attach_transform(track)
                for pub in participant.trackPublications.values():  # audio subscribed earlier
                    if pub.kind == "audio" and pub.track is not None:
                        self._attach_audio(pub.track, participant.identity)
            elif track.kind == "audio" and participant.identity == self.avatar_identity:
                self._attach_audio(track, participant.identity)
        except Exception:
            _log.exception("handling TrackSubscribed failed")

    def _on_track_unsubscribed(self, track: Any, publication: Any, participant: Any) -> None:
        if self._motion_track is not None and track.sid == self._motion_track.sid:
            self._motion_track = None
        element = self._audio_elements.pop(track.sid, None)
        if element is not None:
            track.detach(element)
            element.remove()

    def _attach_audio(self, track: Any, identity: str) -> None:
        import js

        if track.sid in self._audio_elements:
            return
        if self._mode() == "streams" and getattr(track.receiver, "avatarplayerPiped", None) is None:
            # with encodedInsertableStreams every receiver must be read, or its media stops here
            streams = track.receiver.createEncodedStreams()
            streams.readable.pipeTo(streams.writable)
            track.receiver.avatarplayerPiped = True
        element = track.attach()
        element.dataset.avatarIdentity = identity
        js.document.body.appendChild(element)
        self._audio_elements[track.sid] = element

    # ------------------------------------------------------------------------- transform

    def _attach_transform(self, track: Any) -> None:
        """The motion track was subscribed: make sure its receiver has a running transform.

        Usually it has one already, set when its transceiver was created (see ``_PC_HOOK_JS``); a
        receiver the SFU reuses keeps it. Otherwise (a shared room that was connected before we
        listened, or the streams mode) attach now.
        """
        receiver = track.receiver
        if receiver is None:
            _log.error("the motion track has no RTCRtpReceiver; cannot read motion packets")
            return
        attach_id = getattr(receiver, "avatarplayerAttachId", None)
        if attach_id is None or attach_id not in self._ports:
            attach_id = self._attach_to_receiver(receiver)
        self._motion_attach_id = attach_id
        self._attached_at_ms = _now_ms()
        self._last_rtp_frames = None
        if self._sink is not None:
            self._sink.on_motion_attached(self._mode())

    def _attach_to_receiver(self, receiver: Any, *, replace: bool = False) -> int:
        import js
        from pyodide.ffi import create_proxy, to_js

        existing = getattr(receiver, "avatarplayerAttachId", None)
        if existing is not None and existing in self._ports and not replace:
            return existing
        if self._worker is None:
            self._worker = js.Worker.new(self.transform_worker_url, _js_object({"name": "avatar-motion"}))
        self._attach_count += 1
        attach_id = self._attach_count
        channel = js.MessageChannel.new()
        if self._port_handler is None:
            self._port_handler = create_proxy(self._on_port_message)
            self._proxies.append(self._port_handler)
        channel.port1.onmessage = self._port_handler
        self._ports[attach_id] = channel.port1
        mode = self._mode()
        if mode == "script":
            receiver.transform = js.RTCRtpScriptTransform.new(
                self._worker, _js_object({"port": channel.port2, "id": attach_id, "compact": True}),
                to_js([channel.port2]))
        else:
            streams = receiver.createEncodedStreams()
            self._worker.postMessage(
                _js_object({"readable": streams.readable, "writable": streams.writable,
                            "port": channel.port2, "id": attach_id, "compact": True}),
                to_js([streams.readable, streams.writable, channel.port2]))
        receiver.avatarplayerAttachId = attach_id
        _log.info("motion transform attached (%s, #%d)", mode, attach_id)
        return attach_id

    def _on_port_message(self, event: Any) -> None:
        data = event.data
        to_bytes = getattr(data, "to_bytes", None)  # (isinstance(data, JsBuffer) costs more in Pyodide)
        if to_bytes is not None:  # the hot path: a compact packet (worker_transform/README.md)
            raw = to_bytes()
            attach_id, arrival_ms, _rtp = _COMPACT.unpack_from(raw)
            self._packets[attach_id] = self._packets.get(attach_id, 0) + 1
            self._sink.on_packet(raw[_COMPACT.size:], arrival_ms)
            return
        kind = data.type
        if kind == "packet":
            attach_id = data.id
            self._packets[attach_id] = self._packets.get(attach_id, 0) + 1
            self._sink.on_packet(data.packet.to_bytes(), data.arrivalMs)
        elif kind == "attached":
            _log.info("transform #%s running in the worker (%s)", data.id, data.mode)
            self._acknowledged.add(data.id)
        elif kind in ("stats", "ended"):
            stats = (data.stats if kind == "ended" else data).to_py()
            self.transform_stats[stats.get("id")] = stats
            self._passed_through[stats.get("id")] = stats.get("passedThrough", 0)
            self._sink.on_passed_through(sum(self._passed_through.values()))

    # -------------------------------------------------------------------------- watchdog

    def poll(self, now_ms: float) -> None:
        """Called about once a second by the player: ask the transforms for their counters and
        re-attach when the motion track's one never started, or when the receiver counts frames
        that the worker never saw. After ``MAX_REATTACH`` tries it reports an error instead."""
        track = self._motion_track
        if track is None or self._worker is None or self._motion_attach_id is None:
            return
        self.request_stats()
        current = self._motion_attach_id
        if current not in self._acknowledged:
            if now_ms - self._attached_at_ms > ATTACH_ACK_TIMEOUT_MS:
                self._reattach(track, "the transform never started in the worker")
            return
        if not self._checking:
            import asyncio

            self._checking = True
            asyncio.ensure_future(self._check_receiver(track, current))

    async def _check_receiver(self, track: Any, attach_id: int) -> None:
        try:
            report = await track.receiver.getStats()
            rtp_frames = None
            for entry in report.values():
                if entry.type == "inbound-rtp":
                    rtp_frames = getattr(entry, "framesReceived", None)
            seen = self._packets.get(attach_id, 0) + self.transform_stats.get(attach_id, {}).get("passedThrough", 0)
            if rtp_frames is None or attach_id != self._motion_attach_id:
                return
            if self._last_rtp_frames is not None:
                arrived = rtp_frames - self._last_rtp_frames
                if arrived >= WATCHDOG_MIN_FRAMES and seen == self._last_seen_total:
                    self._reattach(track, f"{arrived} frames reached the receiver but not the transform")
                    return
            self._last_rtp_frames, self._last_seen_total = rtp_frames, seen
        except Exception:
            _log.exception("the transform watchdog failed")
        finally:
            self._checking = False

    def _reattach(self, track: Any, why: str) -> None:
        if self.reattach_count >= MAX_REATTACH:
            if self.reattach_count == MAX_REATTACH:
                self.reattach_count += 1
                error = RuntimeError(f"the motion transform receives no frames ({why}); "
                                     f"{MAX_REATTACH} re-attachments did not help")
                _log.error("%s", error)
                if self._sink is not None:
                    self._sink.on_error(error)
            return
        self.reattach_count += 1
        _log.warning("re-attaching the motion transform: %s", why)
        self._motion_attach_id = self._attach_to_receiver(track.receiver, replace=True)
        self._attached_at_ms = _now_ms()
        self._last_rtp_frames = None

    def request_stats(self) -> None:
        """Ask every attached transform for its counters (answers arrive asynchronously)."""
        for port in self._ports.values():
            port.postMessage(_js_object({"type": "stats"}))

    # ------------------------------------------------------------------------------ close

    async def close(self) -> None:
        if self._pc_hook is not None:
            self._pc_hook.onVideoReceiver = None
            self._pc_hook = None
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
        self._motion_attach_id = None
        self._motion_track = None
        self._port_handler = None
        for proxy in self._proxies:
            proxy.destroy()
        self._proxies.clear()
        self._room_handlers.clear()
        if self._worker is not None:
            self._worker.terminate()
            self._worker = None
        if self._shared_room is None:
            self.room = None


def _now_ms() -> float:
    import js

    return js.performance.timeOrigin + js.performance.now()


def _js_object(value: dict[str, Any]) -> Any:
    import js
    from pyodide.ffi import to_js

    return to_js(value, dict_converter=js.Object.fromEntries)
