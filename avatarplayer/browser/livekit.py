# Over 400 lines: LiveKitProvider is the one class a user configures; it routes the room's events
# to its collaborators (trust.py, transform.py, carrier.py, media.py), a third of it is docstrings.
"""LiveKitProvider: the livekit-client ``Room`` and its events, handed to its collaborators.

Browser only (Pyodide): everything JavaScript goes through this package (``avatarplayer.browser``),
so the rest stays plain Python. The provider owns the room's lifecycle and routes its events to:

* :class:`~avatarplayer.browser.trust.AvatarTrust`: who the avatar is, what others sent (ignored);
* :class:`~avatarplayer.browser.transform.MotionTap`: the transform worker on the video receivers,
  the motion packets, the watchdog;
* :class:`~avatarplayer.browser.carrier.DataCarrierRequests`: the data-packet carrier fallback;
* :class:`~avatarplayer.browser.media.AvatarAudio` and :class:`~avatarplayer.browser.media.Microphone`.

Interop rules followed (docs/platform.md): long-lived callbacks are ``create_proxy`` objects kept
referenced and destroyed only after they are detached; options are plain JS objects; bytes cross
once per packet as one ``ArrayBuffer``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from .. import options
from ..events import ConnectionState
from ..wire.datamsg import CONTROL_TOPIC, MAX_TOPIC_LENGTH, MOTION_TOPIC, topic_problem
from . import jsutil
from .carrier import DataCarrierRequests
from .media import AvatarAudio, Microphone
from .transform import MotionTap
from .trust import AvatarTrust

__all__ = ["LiveKitProvider", "DEFAULT_LIVEKIT_CLIENT_URL"]

DEFAULT_LIVEKIT_CLIENT_URL = "/vendor/livekit-client/livekit-client.esm.mjs"
TRANSFORM_MODES = ("auto", "script", "streams", "data")
AUDIO_POLICIES = ("avatar", "all", "none")

_log = logging.getLogger("avatarplayer.livekit")


class LiveKitProvider:
    """Owns (or shares) a livekit-client ``Room`` and feeds the player.

    :param animation_track_name: exact publication name of the motion track.
    :param animation_track_name_pattern: a regex (str or ``re.Pattern``) for it. Without either,
        a video publication whose name contains "motion" or "animation" is the motion track.
    :param room: an existing livekit-client ``Room`` to share (not disconnected by the player).
    :param livekit_client_url: where the page serves livekit-client's ESM build (local, no CDN).
    :param transform_worker_url: a URL to load the transform worker from. By default (``None``) it
        starts from the copy in this package (a Blob URL), so the page serves nothing for it; the
        page's Content-Security-Policy must then allow ``worker-src blob:``.
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
        transform_worker_url: str | None = None,
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
        if topic_problem(data_topic) is not None:
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
        """The livekit-client ``Room`` (the shared one, or the provider's own while connected)."""
        self.lk: Any = None
        """The livekit-client module, once loaded."""
        self._sink: Any = None
        self._audio_retried = False
        self.audio_path_ms: float | None = None
        """What follows the audio's delivery in this browser, for lip sync (None: the player's
        default, measured on Chromium); set when the room opens (see :func:`_audio_path_ms`)."""
        self._proxies: list[Any] = []
        self._room_handlers: list[tuple[str, Any]] = []
        self._resolved_mode = transform_mode
        self._pc_hook: Any = None
        self._hook_entry: Any = None
        self.trust = AvatarTrust(self.fixed_avatar_identity, self.data_topic, _log)
        """Who the avatar is, and what was ignored from others."""
        self.audio_out = AvatarAudio(_log)
        """The audio elements, and where the avatar's audio plays."""
        self.microphone = Microphone(_log)
        """The user's microphone or custom audio track."""
        self.data_requests = DataCarrierRequests(self.data_topic, _log)
        """The data-packet carrier: whom we asked, what they answered."""
        self.tap = MotionTap(transform_worker_url, _log, fall_back=self.fall_back_to_data,
                             audio_receiver=lambda: self.audio_out.receiver)
        """The transform worker on the video receivers, and the motion packets it finds."""
        self.timings: dict[str, float] = {}
        """Start-up costs of the last ``open`` (ms): loading livekit-client, ``room.connect``."""
        self.carrier: str | None = None
        """How motion packets arrive now: "script", "streams" or "data"."""
        self.fallbacks: list[str] = []
        """Why the provider fell back to another carrier, in order (for the app and the tests)."""
        self.data_packets_ignored = 0
        """Packets on the data topic while the video carrier is in use."""
        if room is not None and jsutil.in_browser():
            self._prepare_shared_room(room)

    # ------------------------------------------------------------- what the player reads

    @property
    def avatar_identity(self) -> str | None:
        """The avatar participant's identity, once known (or as given)."""
        return self.trust.avatar_identity

    @property
    def agent_identity(self) -> str | None:
        """The agent the avatar speaks for (its ``lk.publish_on_behalf`` attribute), if any."""
        return self.trust.agent_identity

    @property
    def transform_stats(self) -> dict[int, dict]:
        """The transform worker's counters, per attachment."""
        return self.tap.stats

    @property
    def reattach_count(self) -> int:
        """How often the watchdog attached the motion track's transform again."""
        return self.tap.reattach_count

    @property
    def packets_before_open(self) -> int:
        """Packets that arrived before the player opened (a shared, connected room)."""
        return self.tap.packets_before_open

    @property
    def foreign_packets(self) -> int:
        """Packets from a video track other than the motion track (ignored)."""
        return self.tap.foreign_packets

    @property
    def control_messages_malformed(self) -> int:
        """Control messages from the avatar that were not a small JSON object."""
        return self.data_requests.malformed

    def diagnostics(self) -> dict[str, int]:
        """What the provider holds alive right now, for leak checks in long sessions (read-only,
        cheap; a soak polls it, docs/player-guide.md "Diagnostics"):

        * ``proxies``: live ``create_proxy`` handles (room listeners, the data filter's callback,
          the peer-connection hook's callbacks, the transform channels' message handler);
        * ``room_handlers``: listeners this provider put on the ``Room``;
        * ``audio_elements``: ``<audio>`` elements it attached (``audio_elements_in_page``: those
          in the document, found by their ``data-avatar-identity``; browser only, else 0);
        * ``pc_hook_listeners``: providers registered with the page-wide RTCPeerConnection hook
          (all players of the page; browser only, else 0);
        * ``transform_workers``, ``transform_channels``, ``transforms_ended``, ``transforms_live``:
          see :meth:`MotionTap.diagnostics <avatarplayer.browser.transform.MotionTap.diagnostics>`.

        Between sessions (after ``disconnect()``) every count is 0 but ``pc_hook_listeners`` of
        other players; while connected they stay at the same level turn after turn."""
        tap = self.tap.diagnostics()
        counts = {"proxies": len(self._proxies) + tap.pop("port_handler_proxies"),
                  "room_handlers": len(self._room_handlers), "audio_elements": len(self.audio_out.elements),
                  "audio_elements_in_page": 0, "pc_hook_listeners": 0, **tap}
        if jsutil.in_browser():
            import js

            document = getattr(js.globalThis, "document", None)  # none in Pyodide under Node (the tests)
            if document is not None:
                counts["audio_elements_in_page"] = int(document.querySelectorAll("audio[data-avatar-identity]").length)
            hook = getattr(js.globalThis, "__avatarplayerPcHook", None)
            counts["pc_hook_listeners"] = int(hook.listeners.length) if hook is not None else 0
        return counts

    def untrusted_counts(self) -> dict[str, int]:
        """What was ignored from participants other than the avatar, by kind (see
        ``SessionSummary.untrusted_reasons``)."""
        return self.trust.counts()

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
                room.options.rtcConfig = jsutil.js_object({"encodedInsertableStreams": True})
            else:
                config.encodedInsertableStreams = True

    def shares_connected_room(self) -> bool:
        """True when the app handed over a Room it already connected (``connect()`` needs no URL)."""
        return self._shared_room is not None and self._shared_room.state == "connected"

    # ------------------------------------------------------------------------------ set-up

    def is_motion_publication(self, track_name: str) -> bool:
        """Is a publication of this name the motion track (by name or pattern, see the options)?"""
        return options.is_motion_track(track_name, self.animation_track_name, self.animation_track_name_pattern)

    async def _load_livekit(self) -> Any:
        from pyodide.code import run_js

        return await run_js(f"import({json.dumps(self.livekit_client_url)})")

    async def open(self, sink: Any, url: str, token: str) -> None:
        """Connect the room (unless shared and connected) and start listening; ``sink`` is the
        player (:class:`~avatarplayer.player.ProviderSink`)."""
        if self._room_handlers:
            # the last session ended without close(): the app disconnected its shared room under
            # the player. Release it, or its listeners would stay on the room and run twice.
            await self.close()
        self._sink = sink
        self._audio_retried = False  # once per connection: see _audio_status
        self.audio_path_ms = _audio_path_ms()
        parent = getattr(sink, "logger", None)
        self.log = parent.getChild("livekit") if isinstance(parent, logging.Logger) else _log
        for part in (self.trust, self.audio_out, self.microphone, self.data_requests, self.tap):
            part.log = self.log
        if self._shared_room is None or self._pc_hook is None:
            self._resolved_mode = self._resolve_mode()
        self.carrier = self._resolved_mode
        self.fallbacks = []
        self.trust.reset()
        self.data_requests.reset()
        self.tap.reset()  # counters since this connect
        self.tap.mode = self._resolved_mode
        self.tap.sink = self.audio_out.sink = sink
        self.data_packets_ignored = 0
        started = jsutil.now_ms()
        self.lk = self.lk or await self._load_livekit()
        self.timings["livekit_client_loaded_ms"] = jsutil.now_ms() - started
        if self._shared_room is None:
            room_options: dict[str, Any] = {"adaptiveStream": False, "dynacast": False,
                                            "singlePeerConnection": self.single_peer_connection}
            if self._mode() == "streams":
                room_options["encodedInsertableStreams"] = True  # livekit-client puts it in rtcConfig
            self.room = self.lk.Room.new(jsutil.js_object(room_options))
            if self._mode() == "streams":
                self.room.options.rtcConfig = jsutil.js_object({"encodedInsertableStreams": True})
        self._listen()
        if self._mode() in ("script", "streams"):
            self._install_pc_hook()
        if self._shared_room is None or self.room.state != "connected":
            if not url:
                raise ValueError("the shared room is not connected: give connect() a url and token")
            before = jsutil.now_ms()
            await self.room.connect(url, token, jsutil.js_object({"autoSubscribe": True}))
            self.timings["room_connect_ms"] = jsutil.now_ms() - before
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
        self.tap.mode = self._mode()
        self._pc_hook = run_js(jsutil.js_source("pc_hook.js"))
        proxy = create_proxy(self._on_video_receiver)
        self._proxies.append(proxy)
        entry = {"onVideoReceiver": proxy, "pipeSenders": self._mode() == "streams"}
        if self._mode() == "script" and not _has_encoded_streams():
            track_proxy = create_proxy(self._on_video_track)
            self._proxies.append(track_proxy)
            entry["onVideoTrack"] = track_proxy
        if self._mode() == "script":
            audio_proxy = create_proxy(self._on_audio_receiver)
            self._proxies.append(audio_proxy)
            entry["onAudioReceiver"] = audio_proxy
        self._hook_entry = jsutil.js_object(entry)
        self._pc_hook.add(self._hook_entry)

    def _on_video_receiver(self, receiver: Any) -> None:
        """A video transceiver was just created: attach now, before any frame can arrive."""
        if self.carrier == "data":
            return
        try:
            self.tap.attach_to_receiver(receiver)
        except Exception:
            self.log.exception("attaching the transform to a new video receiver failed")

    def _on_video_track(self, receiver: Any) -> None:
        """A task after the ``track`` event of a video receiver: give it a new transform. Only
        where the browser lacks createEncodedStreams (Firefox): there a transform set inside the
        ``track`` event never sees a frame, and one set now does. Chromium runs the first one,
        and is left alone (see js/pc_hook.js)."""
        if self.carrier == "data":
            return
        try:
            self.tap.attach_again(receiver)
        except Exception:
            self.log.exception("attaching the transform to a negotiated video receiver failed")

    def _on_audio_receiver(self, receiver: Any) -> None:
        """An audio transceiver was just created: watch its packets arrive (lip sync)."""
        try:
            self.tap.attach_audio_observer(receiver)
        except Exception:
            self.log.exception("attaching the audio observer failed; lip sync uses the statistics alone")

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
        if _has_encoded_streams():
            return "streams"
        return "data"

    def _listen(self) -> None:
        from pyodide.code import run_js
        from pyodide.ffi import create_proxy

        events = self.lk.RoomEvent
        data_proxy = create_proxy(self._on_data_received)
        self._proxies.append(data_proxy)
        data_filter = run_js(jsutil.js_source("data_filter.js"))(data_proxy, self.lk)
        self.trust.install(data_filter)
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
        self._room_handlers.append((events.DataReceived, data_filter.handler))  # a JS function
        self.room.on(events.DataReceived, data_filter.handler)

    def _state(self, state: ConnectionState, error: BaseException | None = None) -> None:
        if self._sink is not None:
            self._sink.on_room_state(state, error)

    def _on_disconnected(self, reason: Any = None, *_: Any) -> None:
        client_initiated = reason is not None and reason == self.lk.DisconnectReason.CLIENT_INITIATED
        if client_initiated:
            self._state(ConnectionState.DISCONNECTED)
        else:
            self._state(ConnectionState.FAILED, ConnectionError(f"the room disconnected (reason {reason})"))

    # ------------------------------------------------------------------------ room events

    def _on_track_subscribed(self, track: Any, publication: Any, participant: Any, *_: Any) -> None:
        try:
            if track.kind == "video" and self.is_motion_publication(publication.trackName):
                if not self.trust.is_avatar(participant, self.room):
                    self.trust.ignore("motion-track", participant.identity, f"track {publication.trackName!r}")
                    return
                self.trust.become_avatar(participant)
                if self.carrier == "data":
                    self.tap.track = track
                    self.data_requests.request(self.room, participant.identity, again=True)
                    if self._sink is not None:
                        self._sink.on_motion_attached("data")
                else:
                    self.tap.attach_track(track)
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
        return self.audio == "avatar" and identity == self.trust.avatar_identity

    def _attach_audio(self, track: Any, identity: str) -> None:
        if self._plays_audio_of(identity):
            self.audio_out.attach(track, identity, is_avatar=identity == self.trust.avatar_identity,
                                  pipe=self._mode() == "streams")

    def _on_track_unsubscribed(self, track: Any, publication: Any, participant: Any, *_: Any) -> None:
        if self.tap.track is not None and track.sid == self.tap.track.sid:
            self.tap.forget_track()  # until the next motion track: hold, then deliver only its packets
        self.audio_out.detach(track.sid)

    def _on_participant_disconnected(self, participant: Any, *_: Any) -> None:
        self.data_requests.forget(participant.identity)
        self.trust.forget(participant)  # the avatar left: the next avatar to publish takes over

    def _audio_status(self) -> None:
        room = self.room
        if room is None or self._sink is None or not hasattr(self._sink, "on_audio_playback"):
            return
        can_play = bool(room.canPlaybackAudio)
        if not can_play and not self._audio_retried and _autoplay_allowed():
            # livekit-client gives its new AudioContext 200 ms to run, and says "blocked" when it
            # is not running yet. Firefox takes longer to open its audio output, with autoplay
            # allowed: start it once more instead of telling the app that sound is blocked.
            self._audio_retried = True
            asyncio.ensure_future(self._start_allowed_audio(room))
            return
        self._sink.on_audio_playback(can_play)

    async def _start_allowed_audio(self, room: Any) -> None:
        try:
            await room.startAudio()
        except Exception as exc:
            self.log.info("starting the audio again failed: %s", exc)
        if room is self.room:
            self._audio_status()

    # ------------------------------------------------------------------------- data messages

    def _on_data_received(self, payload: Any, participant: Any = None, kind: Any = None, topic: Any = None,
                          *_: Any) -> None:
        """Motion packets on ``data_topic`` (the data carrier), the worker's acknowledgements on
        the control topic, and anything else as a data message for the app."""
        topic = topic if isinstance(topic, str) else None
        identity = participant.identity if participant is not None else None
        try:
            if topic in (self.data_topic, CONTROL_TOPIC) and not self.trust.is_from_avatar(identity):
                self.trust.ignore(self.trust.topic_kind(topic), identity)
                return
            if participant is not None and not self.trust.trusts(participant):
                self.trust.ignore("data", identity)
                return
            if topic == self.data_topic:
                if self.carrier == "data" and self._sink is not None:
                    self._sink.on_packet(payload.to_bytes(), jsutil.now_ms())
                else:
                    self.data_packets_ignored += 1
            elif topic == CONTROL_TOPIC:
                error = self.data_requests.on_control(payload.to_bytes(), identity)
                if error is not None and self._sink is not None:
                    self._sink.on_error(error)
            elif self._sink is not None and hasattr(self._sink, "on_data"):
                self._sink.on_data(payload.to_bytes(), topic, identity)
        except Exception:
            self.log.exception("handling a data message failed")

    def fall_back_to_data(self, why: str) -> None:
        """Stop reading the video carrier and ask for the data-packet carrier instead."""
        if self.carrier == "data":
            return
        self.log.warning("motion via the data-packet carrier from now on: %s", why)
        self.fallbacks.append(f"{self.carrier} -> data: {why}")
        self.carrier = "data"
        self.tap.detach_track()
        self.data_requests.request(self.room, self.trust.avatar_identity, again=True)
        if self._sink is not None:
            self._sink.on_motion_attached("data")

    # ---------------------------------------------------------------- polled by the player

    def poll(self, now_ms: float) -> None:
        """Called about once a second by the player. On the video carrier: the transform watchdog
        (:meth:`MotionTap.watch`). On the data carrier: repeat the request until the avatar worker
        acknowledges it."""
        if self.carrier == "data":
            identity = self.trust.avatar_identity
            if self.data_requests.due(identity, now_ms):
                self.data_requests.request(self.room, identity, again=True)
            return
        self.tap.watch(now_ms)

    def request_stats(self) -> None:
        """Ask every attached transform for its counters (answers arrive asynchronously)."""
        self.tap.request_stats()

    def poll_audio(self, now_ms: float, *, playout: bool = True, stats: bool = False) -> None:
        """Hand the player where the avatar's audio plays: with ``playout`` the receiver's
        synchronization source (a synchronous call), with ``stats`` its ``inbound-rtp`` counters
        (answered asynchronously; one read at a time)."""
        self.audio_out.poll(playout=playout, stats=stats)

    # --------------------------------------------------------------------- audio, microphone

    async def start_audio(self) -> None:
        """``room.startAudio()``: plays the attached audio elements; needs a user gesture."""
        if self.room is None:
            raise RuntimeError("start_audio() needs a room: connect first")
        await self.room.startAudio()
        self._audio_status()

    async def start_publishing(self) -> None:
        """Open the microphone (the browser asks for permission) and publish it."""
        self._require_room("start_publishing")
        await self.microphone.start(self.room, pipe=self._mode() == "streams")

    async def stop_publishing(self) -> None:
        """Unpublish the microphone and stop it (the browser's "in use" indicator goes off)."""
        self._require_room("stop_publishing")
        await self.microphone.stop(self.room, self.lk.Track.Source.Microphone)

    async def publish_audio(self, track: Any) -> None:
        """Publish any audio ``MediaStreamTrack`` as the user's audio (replacing a previous one)."""
        if getattr(track, "kind", None) != "audio":
            raise TypeError(f"publish_audio() needs an audio MediaStreamTrack, got {track!r}")
        self._require_room("publish_audio")
        await self.microphone.publish(self.room, track, self.lk.Track.Source.Microphone,
                                      pipe=self._mode() == "streams")

    async def unpublish_audio(self) -> None:
        """Unpublish the :meth:`publish_audio` track without stopping it."""
        self._require_room("unpublish_audio")
        await self.microphone.unpublish(self.room)

    def _require_room(self, what: str) -> None:
        if self.room is None or self.room.state != "connected":
            raise RuntimeError(f"{what}() needs a connected room")

    # ------------------------------------------------------------------------------ close

    async def close(self) -> None:
        """Leave the room (a shared one stays connected), and release every JS object held."""
        if self._pc_hook is not None:
            self._pc_hook.remove(self._hook_entry)  # another player's entry stays
            self._pc_hook = self._hook_entry = None
        self.trust.detach()  # the filter goes with this connection
        room = self.room
        if room is not None:
            for name, proxy in self._room_handlers:
                room.off(name, proxy)
            if self._shared_room is None:
                await room.disconnect()
        self.audio_out.close()
        self.microphone.close()
        self._sink = None
        self.tap.close()
        for proxy in self._proxies:
            proxy.destroy()
        self._proxies.clear()
        self._room_handlers.clear()
        if self._shared_room is None:
            self.room = None


def _has_encoded_streams() -> bool:
    """Chromium's createEncodedStreams (Firefox and Safari have only RTCRtpScriptTransform)."""
    import js

    return hasattr(js, "RTCRtpReceiver") and hasattr(js.RTCRtpReceiver.prototype, "createEncodedStreams")


def _autoplay_allowed() -> bool:
    """The page may start an AudioContext without a user gesture, as the browser says through the
    Autoplay Policy Detection API (Firefox has it; where it is missing: not known, so False)."""
    import js

    navigator = getattr(js, "navigator", None)
    policy = getattr(navigator, "getAutoplayPolicy", None) if navigator is not None else None
    if policy is None:
        return False
    try:
        return str(navigator.getAutoplayPolicy("audiocontext")) == "allowed"
    except Exception:
        return False


def _audio_path_ms() -> float | None:
    """This engine's :data:`~avatarplayer.sync.AUDIO_PATH_MS`: a latency, which no feature test
    can tell, so the engine is named by its user agent. Firefox's is measured (sync.py); any
    other engine gets the default, measured on Chromium."""
    import js

    from ..sync import AUDIO_PATH_MS_FIREFOX

    agent = str(getattr(getattr(js, "navigator", None), "userAgent", "") or "")
    return AUDIO_PATH_MS_FIREFOX if "Firefox/" in agent else None
