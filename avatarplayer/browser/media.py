"""Audio in the page: the elements that play remote participants' audio and where the avatar's
audio plays (for lip sync), and the user's microphone or custom audio track."""

from __future__ import annotations

import logging
from typing import Any

from . import jsutil

MEDIA_ERROR_CAUSES = {"NotAllowedError": "permission-denied", "SecurityError": "permission-denied",
                      "NotFoundError": "no-device", "OverconstrainedError": "no-device",
                      "NotReadableError": "device-busy", "AbortError": "device-busy"}
"""The browser's ``getUserMedia`` error names → :attr:`MediaDeviceError.cause`."""


def pipe_encoded_streams(endpoint: Any) -> None:
    """With ``encodedInsertableStreams`` every receiver and sender must be read, or its media stops
    there: pipe ``endpoint``'s encoded frames straight through (once)."""
    if getattr(endpoint, "avatarplayerPiped", None) is not None:
        return
    streams = endpoint.createEncodedStreams()
    streams.readable.pipeTo(streams.writable)
    endpoint.avatarplayerPiped = True


class AvatarAudio:
    """The ``<audio>`` elements of the participants the page plays, by track sid, and the avatar's
    audio receiver, whose playout the player reads (:meth:`poll`)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.sink: Any = None
        """The player, while connected."""
        self.elements: dict[str, tuple[Any, Any]] = {}
        self.avatar: tuple[str, Any] | None = None
        """(track sid, RTCRtpReceiver) of the avatar's audio, once it plays."""
        self._read_playout: Any = None
        """The JS reader of the audio's synchronization source; False in a browser without one."""
        self._reading_stats = False

    @property
    def receiver(self) -> Any:
        """The avatar's audio ``RTCRtpReceiver``, or ``None``."""
        return None if self.avatar is None else self.avatar[1]

    def attach(self, track: Any, identity: str, *, is_avatar: bool, pipe: bool) -> None:
        """Play ``track`` (of ``identity``) in an ``<audio>`` element appended to the page."""
        import js

        if track.sid in self.elements:
            return
        if pipe:
            pipe_encoded_streams(track.receiver)
        element = track.attach()
        element.dataset.avatarIdentity = identity
        js.document.body.appendChild(element)
        self.elements[track.sid] = (track, element)
        if is_avatar:
            self.avatar = (track.sid, track.receiver)

    def detach(self, track_sid: str) -> None:
        """The track was unsubscribed: remove its element."""
        attached = self.elements.pop(track_sid, None)
        if attached is not None:
            _detach(*attached)
        if self.avatar is not None and self.avatar[0] == track_sid:
            self.avatar = None

    def poll(self, *, playout: bool, stats: bool) -> None:
        """Hand the player where the avatar's audio plays: with ``playout`` the receiver's
        synchronization source (a synchronous call), with ``stats`` its ``inbound-rtp`` counters
        (answered asynchronously; one read at a time)."""
        receiver, sink = self.receiver, self.sink
        if sink is None or receiver is None:
            return
        if playout and self._read_playout is not False and hasattr(sink, "on_audio_playout"):
            if self._read_playout is None:
                from pyodide.code import run_js

                has_sources = getattr(receiver, "getSynchronizationSources", None) is not None
                self._read_playout = run_js(jsutil.js_source("read_playout.js")) if has_sources else False
            if self._read_playout:
                reading = self._read_playout(receiver)  # one call, one string: the hot path
                if reading:
                    rtp, delivered = reading.split()
                    sink.on_audio_playout(float(rtp), float(delivered))
        if stats and not self._reading_stats and hasattr(sink, "on_audio_stats"):
            import asyncio

            self._reading_stats = True
            asyncio.ensure_future(self._read_stats(receiver))

    async def _read_stats(self, receiver: Any) -> None:
        from ..sync import AudioStats

        try:
            report = await receiver.getStats()
            now = jsutil.now_ms()
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
                if self.sink is not None:  # not after close
                    self.sink.on_audio_stats(stats)
                break
        except Exception:
            self.log.exception("reading the audio receiver's statistics failed")
        finally:
            self._reading_stats = False

    def close(self) -> None:
        """Remove every element."""
        for track, element in self.elements.values():
            _detach(track, element)
        self.elements.clear()
        self.avatar = None
        self.sink = None


class Microphone:
    """The user's audio in the room: the microphone, or any audio track the app publishes."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.mic_publication: Any = None
        self.custom_publication: Any = None

    async def start(self, room: Any, *, pipe: bool) -> None:
        """Open the microphone (the browser asks for permission) and publish it."""
        from ..errors import MediaDeviceError

        try:
            publication = await room.localParticipant.setMicrophoneEnabled(True)
        except Exception as exc:  # a JsException carrying the DOMException
            name = getattr(exc, "name", None) or type(exc).__name__
            raise MediaDeviceError(f"the microphone could not be opened: {name}: {jsutil.js_message(exc)}",
                                   name, MEDIA_ERROR_CAUSES.get(name, "other")) from exc
        self.mic_publication = publication
        if pipe:
            self._pipe_sender(publication)
        self.log.info("publishing the microphone")

    async def stop(self, room: Any, microphone_source: Any) -> None:
        """Unpublish the microphone and stop it (the browser's "in use" indicator goes off).
        livekit-client's ``setMicrophoneEnabled(false)`` only mutes it, still published."""
        local = room.localParticipant
        publication = local.getTrackPublication(microphone_source)
        self.mic_publication = None
        custom = self.custom_publication
        if publication is not None and publication.track is not None and (
                custom is None or publication.trackSid != custom.trackSid):
            await local.unpublishTrack(publication.track, True)

    async def publish(self, room: Any, track: Any, microphone_source: Any, *, pipe: bool) -> None:
        """Publish an audio ``MediaStreamTrack`` as the user's audio (replacing a previous one)."""
        if self.custom_publication is not None:
            await self.unpublish(room)
        self.custom_publication = await room.localParticipant.publishTrack(
            track, jsutil.js_object({"name": "user-audio", "source": microphone_source}))
        if pipe:
            self._pipe_sender(self.custom_publication)

    async def unpublish(self, room: Any) -> None:
        """Unpublish the :meth:`publish` track without stopping it."""
        publication, self.custom_publication = self.custom_publication, None
        if publication is not None and publication.track is not None:
            await room.localParticipant.unpublishTrack(publication.track, False)

    def close(self) -> None:
        """The connection ends (the room unpublishes everything as it leaves)."""
        self.mic_publication = self.custom_publication = None

    def _pipe_sender(self, publication: Any) -> None:
        if publication is None or publication.track is None:
            return
        sender = publication.track.sender
        if sender is not None and getattr(sender, "avatarplayerPiped", None) is None:
            try:  # the PC hook pipes new senders; this covers one it did not see
                pipe_encoded_streams(sender)
            except Exception as exc:
                self.log.warning("the %s sender sends nothing: its encoded streams are not read (%s)",
                                 publication.kind, exc)


def _detach(track: Any, element: Any) -> None:
    try:
        track.detach(element)
    finally:
        element.remove()
