"""When is the avatar's voice heard? The playout clock that motion frames are released on.

A motion frame and the 40 ms of audio captured with it leave the avatar worker together, but
they reach the screen and the loudspeaker along different paths: the frame is read out of the
VP8 track as soon as it arrives (the transform runs before the video jitter buffer), while the
audio waits in the browser's audio jitter buffer (NetEq) and then in the output path. Rendered on
arrival, the face leads the voice by that audio delay, and the lead grows as NetEq grows its
buffer on a jittery network. (The browser's own lip sync does not help: measured with LiveKit
1.13.5 and Chromium 156, with and without ``room.sync_streams``, the motion track's frames are
presented 66-100 ms before their audio is heard; see docs/sync.md.)

So the player estimates, for each frame, the local time its audio is heard::

    heard(frame) = media_ms(frame) + transit + audio_delay
    transit      = mean over the last ~2 s of (arrival_ms - media_ms)   # motion and audio share the path
    audio_delay  = audio jitterBufferDelay per emitted sample (inbound-rtp stats, last window)
                   + audio_path_ms                                       # packetization + output

``media_ms`` is the frame's RTP timestamp (90 kHz) in milliseconds, unwrapped: the worker stamps
frames with their capture deadlines, exactly 40 ms apart, so the mapping is smooth whatever the
network did to the packets. The offset (``transit + audio_delay``) moves at most ``slew`` of real
time (a 10 % speed change of the motion, invisible), except for a jump of more than
:data:`JUMP_MS` (an outage, NetEq resizing), which is taken at once.

Everything here is pure (times are passed in), tested under CPython and in Pyodide.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

__all__ = ["AudioStats", "PlayoutClock", "SyncMode", "SyncReason", "RtpUnwrapper",
           "AUDIO_PATH_MS", "MAX_AUDIO_DELAY_MS"]

RTP_CLOCK_KHZ = 90.0
"""Video RTP timestamps tick at 90 kHz."""

AUDIO_PATH_MS = 50.0
"""What the audio adds after the motion frame besides NetEq's buffer: the worker's audio source
sends each 40 ms chunk in 10 ms steps, Opus packs 20 ms per packet (~15 ms), and the browser's
output path (~35 ms to the Web Audio output on headless Chromium 156). Measured, not derived:
docs/sync.md. ``sync_offset_ms`` adds to it for other devices (Bluetooth headsets add 100+ ms)."""

MAX_AUDIO_DELAY_MS = 1500.0
"""An audio delay beyond this is not a jitter buffer any more but a fault: sync is given up."""

JUMP_MS = 150.0
"""A change of the target offset larger than this is applied at once instead of slewed."""

TRANSIT_WINDOW = 50
"""Motion packets (frames and idle heartbeats, 25 per second) the transit estimate averages."""

NEW_CLOCK_MS = 60_000.0
"""A transit that changes by more than this is another RTP clock, not a slower network."""

STALE_AUDIO_MS = 1500.0
"""Audio statistics older than this (or a window without a received audio packet) mean the audio
is not playing: no clock to follow."""


class SyncMode(enum.StrEnum):
    AUDIO = "audio"
    """Frames are released when their audio is heard."""
    INDEPENDENT = "independent"
    """Frames are released on arrival, through the jitter buffer (the audio is not followed)."""


class SyncReason(enum.StrEnum):
    LOCKED = "locked"
    """Following the audio playout clock."""
    DISABLED = "disabled"
    """``sync="independent"`` was asked for."""
    NO_AUDIO = "no-audio"
    """No audio statistics yet: the avatar's audio track is not subscribed or not playing."""
    AUDIO_STALLED = "audio-stalled"
    """The audio stopped (no packet received in the last window, or autoplay blocked it) while
    motion flows: the face moves on its own until the voice returns."""
    NO_RTP = "no-rtp"
    """Frames carry no RTP timestamp (the data-packet carrier)."""
    AUDIO_DELAY = "audio-delay"
    """The estimated audio delay is beyond :data:`MAX_AUDIO_DELAY_MS`."""


@dataclass(frozen=True, slots=True)
class AudioStats:
    """One snapshot of the avatar audio receiver's ``inbound-rtp`` statistics (cumulative
    counters, as the browser reports them) taken at ``now_ms``."""

    now_ms: float
    jitter_buffer_delay_s: float
    jitter_buffer_emitted_count: int
    packets_received: int = 0
    packets_lost: int = 0
    concealed_samples: int = 0
    total_samples_received: int = 0
    jitter_buffer_target_delay_s: float | None = None


class RtpUnwrapper:
    """32-bit RTP timestamps (90 kHz) to a monotonic millisecond media clock."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._base = 0

    def __call__(self, rtp_timestamp: float) -> float:
        value = int(rtp_timestamp) & 0xFFFFFFFF
        if self._last is not None:
            delta = value - self._last
            if delta < -(1 << 31):
                self._base += 1 << 32
            elif delta > 1 << 31:
                self._base -= 1 << 32
        self._last = value
        return (self._base + value) / RTP_CLOCK_KHZ

    def reset(self) -> None:
        self._last = None
        self._base = 0


class PlayoutClock:
    """Maps a frame's media time to the local time its audio is heard (see the module docstring).

    Feed it every motion packet that has an RTP timestamp (:meth:`observe_motion`) and the audio
    receiver's statistics about twice a second (:meth:`observe_audio`); ask :meth:`offset` at
    each tick. ``offset`` is None while the audio cannot be followed; :attr:`reason` says why.
    """

    def __init__(self, *, audio_path_ms: float = AUDIO_PATH_MS, trim_ms: float = 0.0,
                 slew: float = 0.1, window: int = TRANSIT_WINDOW) -> None:
        if not 0.0 < slew <= 1.0:
            raise ValueError(f"slew must be within 0..1, got {slew}")
        self.audio_path_ms = float(audio_path_ms)
        self.trim_ms = float(trim_ms)
        self.slew = slew
        self.unwrap = RtpUnwrapper()
        self._transit: deque[float] = deque(maxlen=window)
        self._audio: AudioStats | None = None
        self._audio_delay_ms: float | None = None
        self._audio_fresh = False
        self._last_motion_ms: float | None = None
        self._no_rtp = False
        self._offset: float | None = None
        self._offset_at: float | None = None
        self.reason = SyncReason.NO_AUDIO
        self.audio_jitter_buffer_ms: float | None = None
        self.audio_packets_lost = 0
        self.audio_concealed_samples = 0
        self.jumps = 0


    # ------------------------------------------------------------------------------ input

    def observe_motion(self, arrival_ms: float, rtp_timestamp: float) -> float:
        """A motion packet arrived; returns its media time (ms)."""
        media = self.unwrap(rtp_timestamp)
        transit = arrival_ms - media
        if self._transit and abs(transit - self._transit[-1]) > NEW_CLOCK_MS:
            # a new RTP clock (the track was republished, with another random origin): start over
            self.unwrap.reset()
            media = self.unwrap(rtp_timestamp)
            transit = arrival_ms - media
            self._transit.clear()
            self._offset = None
        self._transit.append(transit)
        self._last_motion_ms = arrival_ms
        self._no_rtp = False
        return media

    def observe_motion_without_rtp(self) -> None:
        """A motion packet came without an RTP timestamp (the data-packet carrier): there is no
        media clock to map until packets carry one again."""
        self._no_rtp = True

    def observe_audio(self, stats: AudioStats) -> None:
        """A new snapshot of the audio receiver's counters."""
        previous, self._audio = self._audio, stats
        self.audio_packets_lost = stats.packets_lost
        self.audio_concealed_samples = stats.concealed_samples
        if previous is None or stats.now_ms <= previous.now_ms:
            return
        emitted = stats.jitter_buffer_emitted_count - previous.jitter_buffer_emitted_count
        received = stats.packets_received - previous.packets_received
        if emitted < 0 or received < 0:  # a new receiver: counters restarted
            self._audio_fresh = False
            return
        self._audio_fresh = received > 0 and emitted > 0
        if self._audio_fresh:
            delay = 1000.0 * (stats.jitter_buffer_delay_s - previous.jitter_buffer_delay_s) / emitted
            self.audio_jitter_buffer_ms = delay
            self._audio_delay_ms = delay + self.audio_path_ms + self.trim_ms

    # ----------------------------------------------------------------------------- output

    def target(self, now_ms: float) -> float | None:
        """The offset (local playout time - media time) the evidence points to now, unslewed;
        None (and :attr:`reason` set) when the audio cannot be followed."""
        audio = self._audio
        if audio is None or self._audio_delay_ms is None:
            self.reason = SyncReason.NO_AUDIO
            return None
        if not self._audio_fresh or now_ms - audio.now_ms > STALE_AUDIO_MS:
            self.reason = SyncReason.AUDIO_STALLED
            return None
        if self._audio_delay_ms > MAX_AUDIO_DELAY_MS:
            self.reason = SyncReason.AUDIO_DELAY
            return None
        if self._no_rtp or not self._transit:
            self.reason = SyncReason.NO_RTP
            return None
        self.reason = SyncReason.LOCKED
        return _trimmed_mean(self._transit) + self._audio_delay_ms

    def offset(self, now_ms: float) -> float | None:
        """Local playout time minus media time, moved towards :meth:`target` by at most
        ``slew`` of the time since the last call (or at once for a jump of :data:`JUMP_MS`)."""
        target = self.target(now_ms)
        if target is None:
            self._offset = None
            return None
        if self._offset is None or self._offset_at is None or abs(target - self._offset) > JUMP_MS:
            if self._offset is not None:
                self.jumps += 1
            self._offset = target
        else:
            step = self.slew * max(0.0, now_ms - self._offset_at)
            self._offset += max(-step, min(step, target - self._offset))
        self._offset_at = now_ms
        return self._offset

    @property
    def audio_delay_ms(self) -> float | None:
        """Audio jitter buffer + path + trim, from the last audio window."""
        return self._audio_delay_ms

    @property
    def transit_ms(self) -> float | None:
        return _trimmed_mean(self._transit) if self._transit else None


def _trimmed_mean(values: deque[float]) -> float:
    """Mean of the middle 80 %: a burst of frames held up by an outage must not drag it."""
    ordered = sorted(values)
    cut = len(ordered) // 10
    middle = ordered[cut:len(ordered) - cut] or ordered
    return sum(middle) / len(middle)

