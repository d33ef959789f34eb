"""The audio and motion tracks: their long-lived sources, publishing them on each room, and
capturing into them (a part of :class:`avatar_worker.transport.publisher.Publisher`).

The motion track is fed through ``rtc.EncodedVideoSource``: every frame we capture is sent as-is
(``video_encoder=ENCODER_BACKEND_PRE_ENCODED``); the source does not pace, the streamer does.
Frames are handed to the native source only while the track is published on a connected room,
so the send log's ``sent`` means "given to WebRTC". (Checked with frame-id metadata: frames
captured before publication are not queued up and sent late; the first frames after publication
may be dropped while the encoder starts; worker → SFU → subscriber takes 13–20 ms on loopback.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from livekit import rtc

from ..audio.pcm import CHANNELS, SAMPLE_RATE

if TYPE_CHECKING:
    from ..config import LiveKitSettings

__all__ = ["TrackCapture", "VIDEO_SIZE"]

log = logging.getLogger("avatar_worker.publisher")  # the name it always logged under (serve.py, tests filter on it)

VIDEO_SIZE = (16, 16)
"""The carrier's VP8 key frame is 16x16 (``avatarplayer.wire.motion.VP8_KEYFRAME_PREFIX``)."""


class TrackCapture:
    """The publisher's tracks: publishes the audio and motion tracks on a room, replaces the
    motion track (:meth:`republish_video`), and is the streamer's sink
    (:meth:`capture_video`, :meth:`capture_audio`). Mixed into
    :class:`avatar_worker.transport.publisher.Publisher`, whose state it shares."""

    settings: LiveKitSettings
    video_source: rtc.EncodedVideoSource | None
    audio_source: rtc.AudioSource | None
    room: rtc.Room | None
    _video_pub: rtc.LocalTrackPublication | None
    _audio_pub: rtc.LocalTrackPublication | None
    _live: bool
    _connected: bool
    _frames_since_feedback: int
    keyframe_requests: int

    def _create_sources(self) -> None:
        """The sources live as long as the publisher (rooms and tracks come and go)."""
        if self.video_source is None:
            self.video_source = rtc.EncodedVideoSource(*VIDEO_SIZE)
            # The queue only has to absorb scheduling jitter: we capture in 40 ms pieces on time.
            self.audio_source = rtc.AudioSource(SAMPLE_RATE, CHANNELS, queue_size_ms=200)

    async def _publish(self, room: rtc.Room) -> None:
        assert self.audio_source is not None
        s = self.settings
        self._video_pub = await self._publish_video(room)
        audio = rtc.LocalAudioTrack.create_audio_track(s.audio_track_name, self.audio_source)
        audio_options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        self._audio_pub = await room.local_participant.publish_track(audio, audio_options)

    async def _publish_video(self, room: rtc.Room) -> rtc.LocalTrackPublication:
        """A new motion track on the (long-lived) video source, published on ``room``."""
        assert self.video_source is not None
        s = self.settings
        video = rtc.LocalVideoTrack.create_video_track(s.video_track_name, self.video_source)
        video_options = rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA,
            video_codec=rtc.VideoCodec.VP8,
            video_encoder=rtc.VideoEncoderBackend.ENCODER_BACKEND_PRE_ENCODED,
            simulcast=False,
            # A motion frame may not be skipped to save bandwidth: it is the avatar's pose.
            # the SDK's IntEnum carries the proto values; its stubs only name the proto type
            degradation_preference=rtc.DegradationPreference.MAINTAIN_FRAMERATE,  # type: ignore[arg-type]
            video_encoding=rtc.VideoEncoding(max_bitrate=s.video_max_bitrate, max_framerate=50.0),
        )
        return await room.local_participant.publish_track(video, video_options)

    async def _release_sources(self) -> None:
        for source in (self.video_source, self.audio_source):
            if source is not None:
                with contextlib.suppress(Exception):  # bounded: a stuck native close must not keep us alive
                    await asyncio.wait_for(source.aclose(), 3.0)
        self.video_source = self.audio_source = None

    # --------------------------------------------------------------------------- republish

    async def republish_video(self, gap: float = 0.3) -> tuple[str, str] | None:
        """Unpublish the motion track and publish a fresh one on the same source: same name, new
        track sid. Frames captured meanwhile are refused. Returns ``(old_sid, new_sid)``, or
        None when not connected (or the room changed meanwhile).

        ``gap`` seconds pass between the two: the SDK tells the server about an unpublication
        only with its next (debounced) renegotiation, so a new track published at once reaches
        viewers ~0.1 s *before* the old one is gone. With the gap viewers see the old track
        unsubscribed first, then the new one subscribed.
        """
        room, old = self.room, self._video_pub
        if room is None or old is None or not self._connected:
            return None
        old_sid = old.sid
        self._live = False
        try:
            await room.local_participant.unpublish_track(old_sid)
            if self._video_pub is old:
                self._video_pub = None
            await asyncio.sleep(gap)
            if room is not self.room:
                return None
            self._video_pub = await self._publish_video(room)
        except Exception as exc:
            log.error("republishing the motion track failed: %s", exc)
            return None
        finally:
            if room is self.room and self._connected and self._video_pub is not None:
                self._live = True
        log.info("republished %r: %s -> %s", self.settings.video_track_name, old_sid, self._video_pub.sid)
        return old_sid, self._video_pub.sid

    # ---------------------------------------------------------------------------- the sink

    def capture_video(self, frame: bytes, timestamp_us: int) -> bool:
        """Send one carrier frame as a VP8 key frame. False while not published."""
        source = self.video_source
        if not self._live or source is None:
            return False
        accepted = source.capture_frame(rtc.EncodedVideoFrame(
            data=frame,
            width=VIDEO_SIZE[0],
            height=VIDEO_SIZE[1],
            codec=rtc.VideoCodec.VP8,
            frame_type=rtc.EncodedFrameType.ENCODED_FRAME_KEY,
            timestamp_us=timestamp_us,
        ))
        self._frames_since_feedback += 1
        if self._frames_since_feedback >= 25:
            self._frames_since_feedback = 0
            self._poll_feedback(source)
        return accepted

    def _poll_feedback(self, source: rtc.EncodedVideoSource) -> None:
        feedback = source.take_feedback()
        if feedback.keyframe_requested:
            # Every frame is already a key frame: nothing to do but note that someone asked.
            self.keyframe_requests += 1
            log.info("key frame requested by a receiver (every frame is a key frame)")
        if feedback.rate_control is not None:
            log.debug("rate control: %d bit/s at %.1f fps", feedback.rate_control.target_bitrate_bps,
                      feedback.rate_control.framerate_fps)

    def audio_backlog_ms(self) -> float:
        """Audio queued in the source but not sent yet (the SDK's estimate, from what was captured
        and when)."""
        source = self.audio_source
        return 0.0 if source is None or not self._live else 1000.0 * source.queued_duration

    def drop_audio_backlog(self) -> None:
        """Throw away the audio queued in the source (an interruption)."""
        if self.audio_source is not None and self._live:
            self.audio_source.clear_queue()

    async def capture_audio(self, pcm: bytes) -> None:
        """Queue 40 ms of audio. Silently skipped while not connected (nothing would play it)."""
        source = self.audio_source
        if source is None or not self._live:
            return
        frame = rtc.AudioFrame(pcm, SAMPLE_RATE, CHANNELS, len(pcm) // (2 * CHANNELS))
        await source.capture_frame(frame)
