"""LiveKitProvider: the livekit-client ``Room``, the motion track's transform, the avatar's audio.

Browser only (Pyodide): everything JavaScript goes through here, so the rest of the package stays
plain Python. Interop rules followed (docs/platform.md): long-lived callbacks are ``create_proxy``
objects kept referenced and destroyed only after they are detached; options are plain JS objects;
bytes cross once per packet as one ``ArrayBuffer``.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from .. import options
from ..wire.datamsg import CONTROL_TOPIC, MOTION_TOPIC, parse_json
from ..events import ConnectionState
from ..wire.compact import COMPACT_HEADER
from .jsutil import js_source

__all__ = ["LiveKitProvider", "DEFAULT_LIVEKIT_CLIENT_URL", "DEFAULT_TRANSFORM_WORKER_URL"]

DEFAULT_LIVEKIT_CLIENT_URL = "/vendor/livekit-client/livekit-client.esm.mjs"
DEFAULT_TRANSFORM_WORKER_URL = "/worker_transform/motion-transform.js"
TRANSFORM_MODES = ("auto", "script", "streams", "data")
AUDIO_POLICIES = ("avatar", "all", "none")
ATTACH_ACK_TIMEOUT_MS = 1500
"""A transform the worker has not reported running after this long is attached again."""
WATCHDOG_MIN_FRAMES = 10
"""Frames the receiver counted, but the worker never saw, that make the watchdog re-attach."""
MAX_REATTACH = 2
"""Re-attaching rarely revives a transform that never ran: after this many, fall back to the
data-packet carrier."""
MAX_TOPIC_LENGTH = 128
"""The longest data topic the avatar worker accepts for the data carrier."""
PUBLISH_ON_BEHALF = "lk.publish_on_behalf"
"""The attribute a LiveKit Agents avatar sets to the identity of the agent it speaks for."""
MAX_PENDING_PACKETS = 50
"""Packets held per video receiver while the motion track is not known yet (2 s at 25 fps)."""

_log = logging.getLogger("avatarplayer.livekit")


class LiveKitProvider:
    """Owns (or shares) a livekit-client ``Room`` and feeds the player.

    :param animation_track_name: exact publication name of the motion track.
    :param animation_track_name_pattern: a regex (str or ``re.Pattern``) for it. Without either,
        a video publication whose name contains "motion" or "animation" is the motion track.
    :param room: an existing livekit-client ``Room`` to share (not disconnected by the player).
    :param livekit_client_url: where the page serves livekit-client's ESM build (local, no CDN).
    :param transform_worker_url: where the page serves ``worker_transform/motion-transform.js``.
    :param transform_mode: "auto" (RTCRtpScriptTransform, else createEncodedStreams, else the
        data-packet carrier), or force one of "script", "streams", "data".
    :param single_peer_connection: livekit-client >= 2.17 defaults to one peer connection; receiver
        transforms are only reliable on a recvonly transceiver, so this defaults to False.
    :param data_topic: the topic of the data-packet carrier.
    :param audio: whose audio the page plays: "avatar" (default: only the avatar participant),
        "all" remote participants, or "none".
    :param avatar_identity: the identity of the avatar participant. Without it, the avatar is the
        first participant that publishes the motion track as an agent (``kind == agent``) or on
        behalf of one (the ``lk.publish_on_behalf`` attribute naming an agent in the room).

    Only the avatar is obeyed: its motion track, its audio (with ``audio="avatar"``), its packets
    on the carrier and control topics, and the data messages (transcripts, agent status) of the
    avatar and of the agent it speaks for. Everything from other participants is ignored and
    counted (``session_summary.untrusted_reasons``); data messages from the server itself (no
    participant) reach the app as data messages.

    A shared ``room`` is best handed over before the app connects it: the provider then attaches
    its transform as the receivers are created (the reliable path). A room that is already
    connected gets a late attach; if that transform sees no frames, the provider falls back to
    the data-packet carrier.
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
        data_topic: str = MOTION_TOPIC,
        audio: str = "avatar",
        avatar_identity: str | None = None,
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
        self.data_topic = options.optional_text("data_topic", data_topic)
        if (data_topic is None or not data_topic.strip() or len(data_topic) > MAX_TOPIC_LENGTH
                or data_topic == CONTROL_TOPIC or data_topic.startswith("lk.")):
            # the avatar worker refuses these (carrier-error): refuse them here, with the option's name
            raise ValueError(f"data_topic must be a topic name of at most {MAX_TOPIC_LENGTH} characters, not "
                             f"{CONTROL_TOPIC!r} and not starting with 'lk.' (LiveKit's own), got {data_topic!r}")
        if audio not in AUDIO_POLICIES:
            raise ValueError(f"audio must be one of {AUDIO_POLICIES}, got {audio!r}")
        self.audio = audio
        self.fixed_avatar_identity = options.optional_text("avatar_identity", avatar_identity)
        if room is not None and (getattr(room, "connect", None) is None or getattr(room, "on", None) is None):
            raise TypeError(f"room must be a livekit-client Room, got {type(room).__name__}")
        self.log = _log
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
        self._late_attach = False
        self.reattach_count = 0
        self._pc_hook: Any = None
        self._hook_entry: Any = None
        self._passed_through: dict[int, int] = {}
        self._audio_elements: dict[str, Any] = {}
        self.avatar_identity: str | None = self.fixed_avatar_identity
        """The avatar participant's identity, once known (or as given)."""
        self.agent_identity: str | None = None
        """The agent the avatar speaks for (its ``lk.publish_on_behalf`` attribute), if any."""
        self._filter: Any = None
        self._ignored: dict[str, int] = {}
        self._warned: set[tuple[str, str]] = set()
        self._pending: dict[int, list[tuple[bytes, float, float | None]]] = {}
        self.transform_stats: dict[int, dict] = {}
        self.timings: dict[str, float] = {}
        """Start-up costs of the last ``open`` (ms): loading livekit-client, ``room.connect``."""
        self.carrier: str | None = None
        """How motion packets arrive now: "script", "streams" or "data"."""
        self.fallbacks: list[str] = []
        """Why the provider fell back to another carrier, in order (for the app and the tests)."""
        self.packets_before_open = 0
        self.foreign_packets = 0
        """Packets from a video track other than the motion track (ignored)."""
        self.data_packets_ignored = 0
        self.control_messages_malformed = 0
        self._data_requested: set[str] = set()
        self._data_acked: set[str | None] = set()
        self._data_refused: set[str | None] = set()
        self._data_requested_at = 0.0
        self._mic_publication: Any = None
        self._custom_publication: Any = None
        self._reading_audio = False
        self._avatar_audio: tuple[str, Any] | None = None
        """(track sid, RTCRtpReceiver) of the avatar's audio, once it plays."""
        self._read_playout: Any = None
        """The JS reader of the audio's synchronization source; False in a browser without one."""
        if room is not None and _in_browser():
            self._prepare_shared_room(room)

    def _prepare_shared_room(self, room: Any) -> None:
        """Get ready before the app connects its room: resolve the mode now and, for the script
        transform, hook RTCPeerConnection so receivers get their transform as they are created."""
        self._resolved_mode = self._resolve_mode()
        if room.state == "connected":
            return
        if self._resolved_mode in ("script", "streams"):
            self._install_pc_hook()
        if self._resolved_mode == "streams":
            config = room.options.rtcConfig
            if config is None:
                room.options.rtcConfig = _js_object({"encodedInsertableStreams": True})
            else:
                config.encodedInsertableStreams = True

    def shares_connected_room(self) -> bool:
        """True when the app handed over a Room it already connected (``connect()`` needs no URL)."""
        return self._shared_room is not None and self._shared_room.state == "connected"

    # ------------------------------------------------------------------------------ set-up

    def is_motion_publication(self, track_name: str) -> bool:
        return options.is_motion_track(track_name, self.animation_track_name, self.animation_track_name_pattern)

    async def _load_livekit(self) -> Any:
        from pyodide.code import run_js

        return await run_js(f"import({json.dumps(self.livekit_client_url)})")

    async def open(self, sink: Any, url: str, token: str) -> None:
        """Connect the room (unless shared and connected) and start listening."""
        self._sink = sink
        parent = getattr(sink, "logger", None)
        self.log = parent.getChild("livekit") if isinstance(parent, logging.Logger) else _log
        if self._shared_room is None or self._pc_hook is None:
            self._resolved_mode = self._resolve_mode()
        self.carrier = self._resolved_mode
        self.fallbacks = []
        self._ignored.clear()
        self.control_messages_malformed = 0
        self._warned.clear()
        self._pending.clear()
        self.avatar_identity = self.fixed_avatar_identity
        self.agent_identity = None
        self._data_requested.clear()
        self._data_acked.clear()
        self._data_refused.clear()
        self._passed_through.clear()  # counters since this connect
        self.transform_stats.clear()
        self._packets.clear()
        self.foreign_packets = self.data_packets_ignored = 0
        self.reattach_count = 0
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
        if self._mode() in ("script", "streams"):
            self._install_pc_hook()
        if self._shared_room is None or self.room.state != "connected":
            if not url:
                raise ValueError("the shared room is not connected: give connect() a url and token")
            before = _now_ms()
            await self.room.connect(url, token, _js_object({"autoSubscribe": True}))
            self.timings["room_connect_ms"] = _now_ms() - before
        else:
            # a shared room that was already connected: its tracks were subscribed before we listened
            for participant in self.room.remoteParticipants.values():
                for publication in participant.trackPublications.values():
                    if publication.track is not None and publication.isSubscribed:
                        self._on_track_subscribed(publication.track, publication, participant)
        self._audio_status()
        self.log.info("connected to %s with livekit-client %s (motion via %s)", url or "the shared room",
                      getattr(self.lk, "version", "?"), self.carrier)

    def _install_pc_hook(self) -> None:
        from pyodide.code import run_js
        from pyodide.ffi import create_proxy

        if self._pc_hook is not None:
            return
        self._pc_hook = run_js(js_source("pc_hook.js"))
        proxy = create_proxy(self._on_video_receiver)
        self._proxies.append(proxy)
        entry = {"onVideoReceiver": proxy, "pipeSenders": self._mode() == "streams"}
        if self._mode() == "script":
            audio_proxy = create_proxy(self._on_audio_receiver)
            self._proxies.append(audio_proxy)
            entry["onAudioReceiver"] = audio_proxy
        self._hook_entry = _js_object(entry)
        self._pc_hook.add(self._hook_entry)

    def _on_video_receiver(self, receiver: Any) -> None:
        """A video transceiver was just created: attach now, before any frame can arrive."""
        if self.carrier == "data":
            return
        try:
            self._attach_to_receiver(receiver)
        except Exception:
            self.log.exception("attaching the transform to a new video receiver failed")

    def _on_audio_receiver(self, receiver: Any) -> None:
        """An audio transceiver was just created: watch its packets arrive (lip sync)."""
        try:
            self._attach_audio_observer(receiver)
        except Exception:
            self.log.exception("attaching the audio observer failed; lip sync uses the statistics alone")

    def _attach_audio_observer(self, receiver: Any) -> None:
        import js

        if getattr(receiver, "avatarplayerAudioId", None) is not None:
            return
        attach_id, port2 = self._new_port()
        receiver.transform = js.RTCRtpScriptTransform.new(
            self._worker, _js_object({"port": port2, "id": attach_id, "kind": "audio"}), _js_list([port2]))
        receiver.avatarplayerAudioId = attach_id

    def _new_port(self) -> tuple[int, Any]:
        """A fresh attachment id and MessageChannel to the transform worker (started if needed);
        returns the id and the worker's end of the channel."""
        import js
        from pyodide.ffi import create_proxy

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
        return attach_id, channel.port2

    def _mode(self) -> str:
        """How packets are read in this connection (resolved once per ``open``)."""
        return self._resolved_mode

    def _resolve_mode(self) -> str:
        """The fallback chain: RTCRtpScriptTransform, else createEncodedStreams, else data packets."""
        import js

        if self.transform_mode != "auto":
            return self.transform_mode
        if hasattr(js, "RTCRtpScriptTransform"):
            return "script"
        if hasattr(js, "RTCRtpReceiver") and hasattr(js.RTCRtpReceiver.prototype, "createEncodedStreams"):
            return "streams"
        return "data"

    def _listen(self) -> None:
        from pyodide.code import run_js
        from pyodide.ffi import create_proxy

        events = self.lk.RoomEvent
        data_proxy = create_proxy(self._on_data_received)
        self._proxies.append(data_proxy)
        self._filter = run_js(js_source("data_filter.js"))(data_proxy, self.lk)
        self._update_trust()
        handlers = {
            events.TrackSubscribed: self._on_track_subscribed,
            events.TrackUnsubscribed: self._on_track_unsubscribed,
            events.Reconnecting: lambda *a: self._state(ConnectionState.RECONNECTING),
            events.SignalReconnecting: lambda *a: self._state(ConnectionState.RECONNECTING),
            events.Reconnected: lambda *a: self._state(ConnectionState.CONNECTED),
            events.Disconnected: self._on_disconnected,
            events.AudioPlaybackStatusChanged: lambda *a: self._audio_status(),
            events.ParticipantDisconnected: self._on_participant_disconnected,
        }
        for name, handler in handlers.items():
            proxy = create_proxy(handler)
            self._proxies.append(proxy)
            self._room_handlers.append((name, proxy))
            self.room.on(name, proxy)
        self._room_handlers.append((events.DataReceived, self._filter.handler))  # a JS function
        self.room.on(events.DataReceived, self._filter.handler)

    def _state(self, state: ConnectionState, error: BaseException | None = None) -> None:
        if self._sink is not None:
            self._sink.on_room_state(state, error)

    def _on_disconnected(self, reason: Any = None, *_: Any) -> None:
        client_initiated = reason is not None and reason == self.lk.DisconnectReason.CLIENT_INITIATED
        if client_initiated:
            self._state(ConnectionState.DISCONNECTED)
        else:
            self._state(ConnectionState.FAILED, ConnectionError(f"the room disconnected (reason {reason})"))

    # ------------------------------------------------------------------------------- trust

    def _is_avatar(self, participant: Any) -> bool:
        """May ``participant``'s motion track drive the face? The named avatar, else the first
        agent (or a participant publishing on behalf of an agent in the room) with a motion track."""
        identity = participant.identity
        if self.fixed_avatar_identity is not None:
            return identity == self.fixed_avatar_identity
        if self.avatar_identity is not None and identity != self.avatar_identity:
            return False  # one avatar at a time: the first one keeps the face
        if self._filter is None:
            return False
        if self._filter.isAgent(participant):
            return True
        principal = self._filter.onBehalfOf(participant)
        if not principal or self.room is None:
            return False
        agent = self.room.remoteParticipants.get(principal)
        return agent is not None and bool(self._filter.isAgent(agent))

    def _trusts(self, participant: Any) -> bool:
        """May ``participant``'s data messages drive the player's events?"""
        identity = participant.identity
        if identity in (self.avatar_identity, self.agent_identity):
            return True
        if self.avatar_identity is None and self._filter is not None:
            return bool(self._filter.isAgent(participant))  # not known yet: agents only
        return False

    def _become_avatar(self, participant: Any) -> None:
        self.avatar_identity = participant.identity
        principal = self._filter.onBehalfOf(participant) if self._filter is not None else ""
        self.agent_identity = principal if principal and principal != participant.identity else None
        self._update_trust()

    def _update_trust(self) -> None:
        if self._filter is None:
            return
        identities = [i for i in (self.avatar_identity, self.agent_identity) if i]
        self._filter.trust(json.dumps(identities), self.avatar_identity is None)

    def _ignore(self, what: str, identity: str | None, detail: str = "") -> None:
        self._ignored[what] = self._ignored.get(what, 0) + 1
        if (what, identity or "") not in self._warned:
            self._warned.add((what, identity or ""))
            self.log.warning("ignoring %s from %s: not the avatar%s", what.replace("-", " "), identity,
                             f" ({detail})" if detail else "")

    def untrusted_counts(self) -> dict[str, int]:
        """What was ignored from participants other than the avatar, by kind (see
        ``SessionSummary.untrusted_reasons``)."""
        counts = dict(self._ignored)
        if self._filter is not None:
            for topic, n in json.loads(self._filter.counts()).items():
                what = self._topic_kind(topic)
                counts[what] = counts.get(what, 0) + n
        return counts

    def _topic_kind(self, topic: str | None) -> str:
        if topic == self.data_topic:
            return "data-carrier"
        if topic == CONTROL_TOPIC:
            return "control"
        return "data"

    # ------------------------------------------------------------------------ room events

    def _on_track_subscribed(self, track: Any, publication: Any, participant: Any, *_: Any) -> None:
        try:
            if track.kind == "video" and self.is_motion_publication(publication.trackName):
                if not self._is_avatar(participant):
                    self._ignore("motion-track", participant.identity, f"track {publication.trackName!r}")
                    return
                self._become_avatar(participant)
                self._motion_track = track
                if self.carrier == "data":
                    self._request_data_carrier(participant.identity, again=True)
                    if self._sink is not None:
                        self._sink.on_motion_attached("data")
                else:
                    self._attach_transform(track)
                for pub in participant.trackPublications.values():  # audio subscribed earlier
                    if pub.kind == "audio" and pub.track is not None:
                        self._attach_audio(pub.track, participant.identity)
            elif track.kind == "audio" and self._plays_audio_of(participant.identity):
                self._attach_audio(track, participant.identity)
        except Exception:
            self.log.exception("handling TrackSubscribed failed")

    def _plays_audio_of(self, identity: str) -> bool:
        if self.audio == "all":
            return True
        return self.audio == "avatar" and identity == self.avatar_identity

    def _on_participant_disconnected(self, participant: Any, *_: Any) -> None:
        self._data_requested.discard(participant.identity)
        self._data_acked.discard(participant.identity)
        if participant.identity == self.avatar_identity and self.fixed_avatar_identity is None:
            self.avatar_identity = self.agent_identity = None  # the next avatar to publish takes over
            self._update_trust()

    def _audio_status(self) -> None:
        room = self.room
        if room is not None and self._sink is not None and hasattr(self._sink, "on_audio_playback"):
            self._sink.on_audio_playback(bool(room.canPlaybackAudio))

    # ------------------------------------------------------------------------- data packets

    def _on_data_received(self, payload: Any, participant: Any = None, kind: Any = None, topic: Any = None,
                          *_: Any) -> None:
        """Motion packets on ``data_topic`` (the data carrier), the worker's acknowledgements on
        the control topic, and anything else as a data message for the app."""
        topic = topic if isinstance(topic, str) else None
        identity = participant.identity if participant is not None else None
        try:
            from_avatar = identity is not None and identity == self.avatar_identity
            if topic in (self.data_topic, CONTROL_TOPIC) and not from_avatar:
                self._ignore(self._topic_kind(topic), identity)
                return
            if participant is not None and not self._trusts(participant):
                self._ignore("data", identity)
                return
            if topic == self.data_topic:
                if self.carrier == "data" and self._sink is not None:
                    self._sink.on_packet(payload.to_bytes(), _now_ms())
                else:
                    self.data_packets_ignored += 1
            elif topic == CONTROL_TOPIC:
                self._on_control(payload.to_bytes(), identity)
            elif self._sink is not None and hasattr(self._sink, "on_data"):
                self._sink.on_data(payload.to_bytes(), topic, identity)
        except Exception:
            self.log.exception("handling a data message failed")

    def _on_control(self, payload: bytes, identity: str | None) -> None:
        message = parse_json(payload)
        if not isinstance(message, dict):
            self.control_messages_malformed += 1
            self.log.warning("a control message from %s that is not a small JSON object (%d bytes)",
                             identity, len(payload))
            return
        if isinstance(message, dict) and message.get("type") == "carrier-ack" and message.get("carrier") == "data":
            self._data_acked.add(identity)
            self.log.info("%s sends motion packets on the data topic %r", identity, message.get("topic"))
        elif isinstance(message, dict) and message.get("type") == "carrier-error":
            why = message.get("error")
            self.log.error("%s cannot use the data carrier: %s", identity, why)
            self._data_refused.add(identity)  # asking again would get the same answer
            if self._sink is not None:
                self._sink.on_error(ConnectionError(f"the avatar refused the data carrier: {str(why)[:200]}"))

    def _request_data_carrier(self, identity: str | None, *, again: bool = False) -> None:
        """Ask the avatar worker to send motion packets as data messages to us (docs/wire-format.md §3b).
        Repeated from :meth:`poll` until the worker acknowledges: a request sent while either side
        is still joining can be lost."""
        if identity is None or self.room is None or (identity in self._data_requested and not again):
            return
        import js

        self._data_requested.add(identity)
        if again:
            self._data_acked.discard(identity)
        self._data_requested_at = _now_ms()
        message = json.dumps({"type": "carrier", "carrier": "data", "topic": self.data_topic})
        promise = self.room.localParticipant.publishData(
            js.TextEncoder.new().encode(message),
            _js_object({"reliable": True, "topic": CONTROL_TOPIC, "destinationIdentities": [identity]}))
        promise.catch(_js_catch(self.log, "asking the avatar for the data carrier failed"))
        self.log.info("asked %s for motion packets on the data topic %r", identity, self.data_topic)

    def fall_back_to_data(self, why: str) -> None:
        """Stop reading the video carrier and ask for the data-packet carrier instead."""
        if self.carrier == "data":
            return
        self.log.warning("motion via the data-packet carrier from now on: %s", why)
        self.fallbacks.append(f"{self.carrier} -> data: {why}")
        self.carrier = "data"
        track = self._motion_track
        if track is not None and track.receiver is not None and self._mode() == "script":
            try:
                track.receiver.transform = None  # the frames go on to the decoder untouched
            except Exception:
                self.log.exception("detaching the transform failed")
        self._request_data_carrier(self.avatar_identity, again=True)
        if self._sink is not None:
            self._sink.on_motion_attached("data")

    def _on_track_unsubscribed(self, track: Any, publication: Any, participant: Any, *_: Any) -> None:
        if self._motion_track is not None and track.sid == self._motion_track.sid:
            self._motion_track = None
            self._motion_attach_id = None  # until the next motion track: hold, then deliver only its packets
        attached = self._audio_elements.pop(track.sid, None)
        if attached is not None:
            _detach(*attached)
        if self._avatar_audio is not None and self._avatar_audio[0] == track.sid:
            self._avatar_audio = None

    def _attach_audio(self, track: Any, identity: str) -> None:
        import js

        if track.sid in self._audio_elements or not self._plays_audio_of(identity):
            return
        if self._mode() == "streams" and getattr(track.receiver, "avatarplayerPiped", None) is None:
            # with encodedInsertableStreams every receiver must be read, or its media stops here
            streams = track.receiver.createEncodedStreams()
            streams.readable.pipeTo(streams.writable)
            track.receiver.avatarplayerPiped = True
        element = track.attach()
        element.dataset.avatarIdentity = identity
        js.document.body.appendChild(element)
        self._audio_elements[track.sid] = (track, element)
        if identity == self.avatar_identity:
            self._avatar_audio = (track.sid, track.receiver)

    # ------------------------------------------------------------------------- transform

    def _attach_transform(self, track: Any) -> None:
        """The motion track was subscribed: make sure its receiver has a running transform.

        Usually it has one already, set when its transceiver was created (see ``js/pc_hook.js``); a
        receiver the SFU reuses keeps it. Otherwise (a shared room that was connected before we
        listened, or the streams mode) attach now.
        """
        receiver = track.receiver
        if receiver is None:
            self.fall_back_to_data("the motion track has no RTCRtpReceiver")
            return
        attach_id = getattr(receiver, "avatarplayerAttachId", None)
        self._late_attach = attach_id is None or attach_id not in self._ports
        if self._late_attach:
            try:
                attach_id = self._attach_to_receiver(receiver)
            except Exception as exc:
                self.fall_back_to_data(f"the {self._mode()} transform could not be attached ({exc})")
                return
        self._motion_attach_id = attach_id
        self._attached_at_ms = _now_ms()
        self._last_rtp_frames = None
        if self._sink is not None:
            self._sink.on_motion_attached(self.carrier)
        self._release_pending()

    def _attach_to_receiver(self, receiver: Any, *, replace: bool = False) -> int:
        import js
        from pyodide.ffi import to_js

        existing = getattr(receiver, "avatarplayerAttachId", None)
        if existing is not None and existing in self._ports and not replace:
            return existing
        attach_id, port2 = self._new_port()
        mode = self._mode()
        if mode == "script":
            receiver.transform = js.RTCRtpScriptTransform.new(
                self._worker, _js_object({"port": port2, "id": attach_id, "compact": True}), to_js([port2]))
        else:
            streams = receiver.createEncodedStreams()
            self._worker.postMessage(
                _js_object({"readable": streams.readable, "writable": streams.writable,
                            "port": port2, "id": attach_id, "compact": True}),
                to_js([streams.readable, streams.writable, port2]))
        receiver.avatarplayerAttachId = attach_id
        self.log.info("motion transform attached (%s, #%d)", mode, attach_id)
        return attach_id

    def _on_port_message(self, event: Any) -> None:
        data = event.data
        to_bytes = getattr(data, "to_bytes", None)  # (isinstance(data, JsBuffer) costs more in Pyodide)
        if to_bytes is not None:  # the hot path: a compact packet (worker_transform/README.md)
            raw = to_bytes()
            attach_id, arrival_ms, rtp_timestamp = COMPACT_HEADER.unpack_from(raw)
            self._packets[attach_id] = self._packets.get(attach_id, 0) + 1
            if self._sink is None:  # a shared room the app connected before the player did
                self.packets_before_open += 1
                return
            self._deliver(attach_id, raw[COMPACT_HEADER.size:], arrival_ms, rtp_timestamp if rtp_timestamp >= 0 else None)
            return
        kind = data.type
        if kind == "packet":
            attach_id = data.id
            self._packets[attach_id] = self._packets.get(attach_id, 0) + 1
            if self._sink is not None:
                rtp = data.rtpTimestamp
                self._deliver(attach_id, data.packet.to_bytes(), data.arrivalMs, None if rtp is None else float(rtp))
        elif kind == "audio-clock":
            receiver = None if self._avatar_audio is None else self._avatar_audio[1]
            if (receiver is not None and getattr(receiver, "avatarplayerAudioId", None) == data.id
                    and self._sink is not None and hasattr(self._sink, "on_audio_arrivals")):
                self._sink.on_audio_arrivals(float(data.rtpTimestamp), float(data.transitMs))
        elif kind == "attached":
            self.log.info("transform #%s running in the worker (%s)", data.id, data.mode)
            self._acknowledged.add(data.id)
        elif kind in ("stats", "ended"):
            stats = (data.stats if kind == "ended" else data).to_py()
            self.transform_stats[stats.get("id")] = stats
            self._passed_through[stats.get("id")] = stats.get("passedThrough", 0)
            if self._sink is not None:
                self._sink.on_passed_through(sum(self._passed_through.values()))

    def _deliver(self, attach_id: int, packet: bytes, arrival_ms: float, rtp_timestamp: float | None) -> None:
        """Hand a packet of the avatar's motion track to the player. Until the motion track is
        known (TrackSubscribed of the avatar), packets of every video receiver are held, a few per
        receiver: only the avatar's are delivered then, in order."""
        if self._motion_attach_id is None:
            pending = self._pending.setdefault(attach_id, [])
            if len(pending) < MAX_PENDING_PACKETS:
                pending.append((packet, arrival_ms, rtp_timestamp))
            else:
                self.foreign_packets += 1
            return
        if attach_id != self._motion_attach_id:
            self.foreign_packets += 1  # another video track that carries packets: not the avatar's
            return
        self._sink.on_packet(packet, arrival_ms, rtp_timestamp)

    def _release_pending(self) -> None:
        """The motion track is known: deliver its held packets, count the others' as foreign."""
        pending, self._pending = self._pending, {}
        for attach_id, packets in pending.items():
            if attach_id != self._motion_attach_id or self._sink is None:
                self.foreign_packets += len(packets)
                continue
            for packet, arrival_ms, rtp_timestamp in packets:
                self._sink.on_packet(packet, arrival_ms, rtp_timestamp)

    # -------------------------------------------------------------------------- watchdog

    def poll(self, now_ms: float) -> None:
        """Called about once a second by the player: ask the transforms for their counters and
        re-attach when the motion track's one never started, or when the receiver counts frames
        that the worker never saw; after ``MAX_REATTACH`` tries, fall back to the data carrier.
        On the data carrier, repeat the request until the avatar worker acknowledges it."""
        track = self._motion_track
        if self.carrier == "data":
            identity = self.avatar_identity
            if (identity is not None and identity not in self._data_acked and identity not in self._data_refused
                    and now_ms - self._data_requested_at > 900):
                self._request_data_carrier(identity, again=True)
            return
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
            self.log.exception("the transform watchdog failed")
        finally:
            self._checking = False

    def _reattach(self, track: Any, why: str) -> None:
        if self._late_attach and self.carrier == "script":
            # attached after the receiver was negotiated: re-attaching never revived one (Chromium 156)
            self.fall_back_to_data(f"{why} (a late attach)")
            return
        if self.reattach_count >= MAX_REATTACH:
            self.fall_back_to_data(f"{why}, and {MAX_REATTACH} re-attachments did not help")
            return
        self.reattach_count += 1
        self.log.warning("re-attaching the motion transform: %s", why)
        try:
            self._motion_attach_id = self._attach_to_receiver(track.receiver, replace=True)
        except Exception as exc:
            self.fall_back_to_data(f"re-attaching failed ({exc})")
            return
        if self._sink is not None:
            self._sink.on_motion_attached(self.carrier)
        self._attached_at_ms = _now_ms()
        self._last_rtp_frames = None

    def request_stats(self) -> None:
        """Ask every attached transform for its counters (answers arrive asynchronously)."""
        for port in self._ports.values():
            port.postMessage(_js_object({"type": "stats"}))

    # ---------------------------------------------------------------- the audio's playout

    def poll_audio(self, now_ms: float, *, playout: bool = True, stats: bool = False) -> None:
        """Hand the player where the avatar's audio plays: with ``playout`` the receiver's
        synchronization source (a synchronous call), with ``stats`` its ``inbound-rtp`` counters
        (answered asynchronously; one read at a time)."""
        sink = self._sink
        if sink is None or self._avatar_audio is None:
            return
        receiver = self._avatar_audio[1]
        if receiver is None:
            return
        if playout and self._read_playout is not False and hasattr(sink, "on_audio_playout"):
            if self._read_playout is None:
                from pyodide.code import run_js

                has_sources = getattr(receiver, "getSynchronizationSources", None) is not None
                self._read_playout = run_js(js_source("read_playout.js")) if has_sources else False
            if self._read_playout:
                reading = self._read_playout(receiver)  # one call, one string: the hot path
                if reading:
                    rtp, delivered = reading.split()
                    sink.on_audio_playout(float(rtp), float(delivered))
        if stats and not self._reading_audio and hasattr(sink, "on_audio_stats"):
            import asyncio

            self._reading_audio = True
            asyncio.ensure_future(self._read_audio_stats(receiver))

    async def _read_audio_stats(self, receiver: Any) -> None:
        from ..sync import AudioStats

        try:
            report = await receiver.getStats()
            now = _now_ms()
            for entry in report.values():
                if entry.type != "inbound-rtp":
                    continue
                stats = AudioStats(
                    now_ms=now,
                    jitter_buffer_delay_s=float(getattr(entry, "jitterBufferDelay", 0.0) or 0.0),
                    jitter_buffer_emitted_count=int(getattr(entry, "jitterBufferEmittedCount", 0) or 0),
                    packets_received=int(getattr(entry, "packetsReceived", 0) or 0),
                    packets_lost=int(getattr(entry, "packetsLost", 0) or 0),
                    concealed_samples=int(getattr(entry, "concealedSamples", 0) or 0),
                    total_samples_received=int(getattr(entry, "totalSamplesReceived", 0) or 0),
                    jitter_buffer_target_delay_s=getattr(entry, "jitterBufferTargetDelay", None),
                )
                if self._sink is not None:
                    self._sink.on_audio_stats(stats)
                break
        except Exception:
            self.log.exception("reading the audio receiver's statistics failed")
        finally:
            self._reading_audio = False

    # --------------------------------------------------------------------- audio, microphone

    async def start_audio(self) -> None:
        """``room.startAudio()``: plays the attached audio elements; needs a user gesture."""
        if self.room is None:
            raise RuntimeError("start_audio() needs a room: connect first")
        await self.room.startAudio()
        self._audio_status()

    async def start_publishing(self) -> None:
        """Open the microphone (the browser asks for permission) and publish it."""
        from ..errors import MediaDeviceError

        self._require_room("start_publishing")
        try:
            publication = await self.room.localParticipant.setMicrophoneEnabled(True)
        except Exception as exc:  # a JsException carrying the DOMException
            name = getattr(exc, "name", None) or type(exc).__name__
            raise MediaDeviceError(f"the microphone could not be opened: {name}: {_js_message(exc)}",
                                   name, _MEDIA_ERROR_CAUSES.get(name, "other")) from exc
        self._mic_publication = publication
        self._pipe_sender(publication)
        self.log.info("publishing the microphone")

    async def stop_publishing(self) -> None:
        """Unpublish the microphone and stop it (the browser's "in use" indicator goes off).
        livekit-client's ``setMicrophoneEnabled(false)`` only mutes it, still published."""
        self._require_room("stop_publishing")
        local = self.room.localParticipant
        publication = local.getTrackPublication(self.lk.Track.Source.Microphone)
        self._mic_publication = None
        custom = self._custom_publication
        if publication is not None and publication.track is not None and (
                custom is None or publication.trackSid != custom.trackSid):
            await local.unpublishTrack(publication.track, True)

    async def publish_audio(self, track: Any) -> None:
        """Publish any audio ``MediaStreamTrack`` as the user's audio (replacing a previous one)."""
        if getattr(track, "kind", None) != "audio":
            raise TypeError(f"publish_audio() needs an audio MediaStreamTrack, got {track!r}")
        self._require_room("publish_audio")
        if self._custom_publication is not None:
            await self.unpublish_audio()
        self._custom_publication = await self.room.localParticipant.publishTrack(
            track, _js_object({"name": "user-audio", "source": self.lk.Track.Source.Microphone}))
        self._pipe_sender(self._custom_publication)

    async def unpublish_audio(self) -> None:
        """Unpublish the :meth:`publish_audio` track without stopping it."""
        self._require_room("unpublish_audio")
        publication, self._custom_publication = self._custom_publication, None
        if publication is not None and publication.track is not None:
            await self.room.localParticipant.unpublishTrack(publication.track, False)

    def _require_room(self, what: str) -> None:
        if self.room is None or self.room.state != "connected":
            raise RuntimeError(f"{what}() needs a connected room")

    def _pipe_sender(self, publication: Any) -> None:
        """With encodedInsertableStreams every sender must be read too, or its media stops."""
        if self._mode() != "streams" or publication is None or publication.track is None:
            return
        sender = publication.track.sender
        if sender is not None and getattr(sender, "avatarplayerPiped", None) is None:
            try:  # the PC hook pipes new senders; this covers one it did not see
                streams = sender.createEncodedStreams()
                streams.readable.pipeTo(streams.writable)
                sender.avatarplayerPiped = True
            except Exception as exc:
                self.log.warning("the %s sender sends nothing: its encoded streams are not read (%s)",
                                 publication.kind, exc)

    # ------------------------------------------------------------------------------ close

    async def close(self) -> None:
        if self._pc_hook is not None:
            self._pc_hook.remove(self._hook_entry)  # another player's entry stays
            self._pc_hook = self._hook_entry = None
        self._ignored = self.untrusted_counts()  # the filter goes with this connection
        self._filter = None
        self._pending.clear()
        room = self.room
        if room is not None:
            for name, proxy in self._room_handlers:
                room.off(name, proxy)
            if self._shared_room is None:
                await room.disconnect()
        for track, element in self._audio_elements.values():
            _detach(track, element)
        self._audio_elements.clear()
        self._avatar_audio = None
        self._mic_publication = self._custom_publication = None
        self._sink = None
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


_MEDIA_ERROR_CAUSES = {"NotAllowedError": "permission-denied", "SecurityError": "permission-denied",
                       "NotFoundError": "no-device", "OverconstrainedError": "no-device",
                       "NotReadableError": "device-busy", "AbortError": "device-busy"}


def _detach(track: Any, element: Any) -> None:
    try:
        track.detach(element)
    finally:
        element.remove()


def _in_browser() -> bool:
    import sys

    return sys.platform == "emscripten"


def _js_message(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc)


def _js_catch(log: logging.Logger, what: str) -> Any:
    from pyodide.ffi import create_once_callable

    return create_once_callable(lambda error: log.error("%s: %s", what, error))


def _now_ms() -> float:
    import js

    return js.performance.timeOrigin + js.performance.now()


def _js_list(values: list[Any]) -> Any:
    from pyodide.ffi import to_js

    return to_js(values)


def _js_object(value: dict[str, Any]) -> Any:
    import js
    from pyodide.ffi import to_js

    return to_js(value, dict_converter=js.Object.fromEntries)
