# Over 400 lines: a third is the explanation of the method (the docstring below); the rest is
# one clock, PlayoutClock, whose parts only make sense together.
"""When is the avatar's voice heard? The playout clock that motion frames are released on.

A motion frame and the 40 ms of audio captured with it leave the avatar worker together, but
they reach the screen and the loudspeaker along different paths: the frame is read out of the
VP8 track as soon as it arrives (the transform runs before the video jitter buffer), while the
audio waits in the browser's audio jitter buffer (NetEq) and then in the output path. Rendered on
arrival, the face leads the voice by that audio delay, and the lead grows as NetEq grows its
buffer on a jittery network. (The browser's own lip sync does not help: measured with LiveKit
1.13.5 and Chromium 156, with and without ``room.sync_streams``, the motion track's frames are
presented 66-100 ms before their audio is heard; see docs/sync.md.)

So the player follows the audio's playout itself, on two levels.

**Where NetEq is now.** The audio receiver's synchronization source says which RTP timestamp
NetEq delivered last and when (``getSynchronizationSources()``, read every tick): a steady line
``local time = audio position + anchor`` while the audio plays, which moves when NetEq stalls for
a late packet, stretches or accelerates. This is read, not estimated, so the face follows the
voice through a Wi-Fi scan or an outage as closely as the voice itself went.

**Which motion frame goes with which audio position.** The audio's and the motion's RTP clocks
start at random origins, so one constant ``C`` (audio position = motion media time + C) has to be
learnt. Both travel one UDP flow, so their packets take the same time through the network; the
transform worker watches the audio packets arrive too (it passes them through untouched) and
reports the median of ``arrival - audio position`` twice a second. With the same median for the
motion packets::

    C            = median(arrival - media_ms) of motion - median(arrival - position) of audio
    heard(frame) = media_ms(frame) + C + anchor + audio_path_ms + sync_offset_ms

Where the audio cannot be watched (``createEncodedStreams``, a room shared after it connected),
``C`` comes from NetEq's own accounting instead. It reports, for every sample, how long it waited
from its packet's arrival until it was played (``jitterBufferDelay``, inbound-rtp); over a window
of packets the playout delay is ``D = mean(arrival - media time) + mean(wait)``::

    D_window = mean over the window's motion packets of (arrival_ms - media_ms)
               + jitterBufferDelay per emitted sample in the window       (about every 0.5 s)
    C        = median over recent windows of (D_window - anchor)

This holds while NetEq plays at a steady pace; on a network that makes it stall and accelerate
often (the ``bad`` profile) it is 20-50 ms off, where the arrivals are not.

Packets that arrive after ``D`` are left out of the mean: their audio came too late to be played,
and one outage's burst must not drag the estimate. ``audio_path_ms`` is what follows NetEq (the
sender's Opus packetization, the output path). Without synchronization sources (a browser that
lacks them), the smoothed ``D_window`` stands in for ``anchor + C``, moving at most ``slew`` of real
time unless it jumps by more than :data:`JUMP_MS`.

When NetEq delivers nothing for :data:`FREEZE_AFTER_MS` the voice has stopped (a stall, an outage):
:meth:`PlayoutClock.frozen` holds the motion with it, for at most :data:`MAX_FREEZE_MS` and only
after the audio had been flowing steadily (so a sender that goes quiet with DTX costs at most one
short hold at the end of its speech).

``media_ms`` is the frame's RTP timestamp (90 kHz) in milliseconds, unwrapped: the worker stamps
frames with their capture deadlines, exactly 40 ms apart. Everything here is pure (times are
passed in), tested under CPython and in Pyodide.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

__all__ = ["AudioStats", "PlayoutClock", "SyncMode", "SyncReason", "RtpUnwrapper",
           "AUDIO_PATH_MS", "AUDIO_PATH_MS_FIREFOX", "MAX_AUDIO_DELAY_MS"]

VIDEO_CLOCK_KHZ = 90.0
"""Video RTP timestamps tick at 90 kHz."""

AUDIO_CLOCK_KHZ = 48.0
"""Opus RTP timestamps tick at 48 kHz, whatever the sample rate."""

AUDIO_PATH_MS = 60.0
"""What the audio adds after NetEq delivers it, relative to its motion frame: the worker's audio
source sends each 40 ms chunk in 10 ms steps and Opus packs 20 ms per packet, then the browser's
output path to the Web Audio output on headless Chromium 156. Measured as a whole, not derived:
the median A/V offset over the benchmark's sessions and profiles (docs/sync.md).
``sync_offset_ms`` adds to it for other devices (Bluetooth adds 100+ ms)."""

AUDIO_PATH_MS_FIREFOX = 20.0
""":data:`AUDIO_PATH_MS` on Firefox, measured the same way (headless Firefox 153 ESR, Web Audio
output to a PulseAudio null sink): with 60 ms the face was 35-43 ms late there, so what follows
the synchronization source's delivery is about 40 ms shorter than on Chromium. The provider
picks it (:class:`~avatarplayer.browser.livekit.LiveKitProvider`)."""

MAX_AUDIO_DELAY_MS = 1500.0
"""An audio delay beyond this is not a jitter buffer any more but a fault: sync is given up."""

JUMP_MS = 150.0
"""Without synchronization sources: a change of the offset larger than this is taken at once."""

ANCHOR_JUMP_MS = 15.0
"""A move of NetEq's playout line larger than this (a stall, an acceleration) is followed at once;
smaller ones are the 10 ms granularity of its deliveries and are smoothed."""

ANCHOR_SMOOTHING = 0.3
"""Weight of the newest synchronization source reading in the anchor (about one per tick)."""

MOTION_HISTORY_MS = 4000.0
"""How long motion arrivals are kept for the windows of the audio statistics."""

SMOOTHING = 0.25
"""Weight of the newest statistics window (about 0.5 s) in the playout delay estimate."""

MAPPING_WINDOWS = 15
"""Statistics windows whose median gives the audio-to-motion mapping ``C``."""

NEW_CLOCK_MS = 60_000.0
"""A transit that changes by more than this is another RTP clock, not a slower network."""

STALE_AUDIO_MS = 1200.0
"""No audio packet received for this long (two or three statistics windows in a row; one alone is
a burst of loss on a bad network) means the audio is not playing: no clock to follow."""

FREEZE_AFTER_MS = 60.0
"""NetEq delivered nothing for this long: the voice has stopped, the face holds too."""

MAX_FREEZE_MS = 400.0
"""A hold lasts at most this long (a silent sender using DTX delivers nothing either)."""

STEADY_MS = 1000.0
"""The audio must have been delivered steadily this long before a gap counts as a stall."""

READ_FAST_MS = 160.0
"""How often to read the synchronization source while NetEq's playout moves (each read is a
blocking call into the browser's WebRTC thread, about 0.2 ms in Chromium 156)."""

READ_SLOW_MS = 480.0
"""... and once it has kept still for :data:`CALM_MS`."""

CALM_MS = 5000.0


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
    """32-bit RTP timestamps to a monotonic millisecond media clock."""

    def __init__(self, clock_khz: float = VIDEO_CLOCK_KHZ) -> None:
        self.clock_khz = clock_khz
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
        return (self._base + value) / self.clock_khz

    def reset(self) -> None:
        self._last = None
        self._base = 0


class PlayoutClock:
    """Maps a frame's media time to the local time its audio is heard (see the module docstring).

    Feed it every motion packet that has an RTP timestamp (:meth:`observe_motion`), the audio
    receiver's statistics about twice a second (:meth:`observe_audio`) and its synchronization
    source every tick (:meth:`observe_audio_playout`); ask :meth:`offset` at each tick. ``offset``
    is None while the audio cannot be followed; :attr:`reason` says why.
    """

    def __init__(self, *, audio_path_ms: float = AUDIO_PATH_MS, trim_ms: float = 0.0,
                 slew: float = 0.1) -> None:
        if not 0.0 < slew <= 1.0:
            raise ValueError(f"slew must be within 0..1, got {slew}")
        self.audio_path_ms = float(audio_path_ms)
        self.trim_ms = float(trim_ms)
        self.slew = slew
        self.unwrap = RtpUnwrapper()
        self._audio_unwrap = RtpUnwrapper(AUDIO_CLOCK_KHZ)
        self._motion: deque[tuple[float, float]] = deque()
        """(arrival ms, transit ms) of recent motion packets."""
        self._audio: AudioStats | None = None
        self._audio_seen_at: float | None = None
        """When the last statistics window with audio packets in it was taken."""
        self._playout_ms: float | None = None
        """D: motion media time to the moment NetEq plays its audio, smoothed (the statistics)."""
        self._anchor: float | None = None
        """NetEq's playout line: local time - audio position (ms), smoothed."""
        self._last_delivery: tuple[float, float] | None = None
        """(audio position, local time) of the last synchronization source reading."""
        self._steady_since: float | None = None
        self._silent_at_read = 0.0
        self._read_at: float | None = None
        self._anchor_moved_at = 0.0
        """How long NetEq had delivered nothing when the synchronization source was last read."""
        self._freeze_armed = False
        self._freezing = False
        self._mappings: deque[float] = deque(maxlen=MAPPING_WINDOWS)
        """``C`` per statistics window (D_window - anchor), when the arrivals are not watched."""
        self._audio_transit: float | None = None
        """Median arrival - position of the audio packets (the transform worker's report)."""
        self._mapping: float | None = None
        self.mapping_source: str | None = None
        """"arrivals", "statistics" or None: where :attr:`mapping_ms` comes from."""
        self._audio_delay_ms: float | None = None
        self._no_rtp = False
        self._offset: float | None = None
        self._offset_at: float | None = None
        self.reason = SyncReason.NO_AUDIO
        self.audio_jitter_buffer_ms: float | None = None
        self.audio_packets_lost = 0
        self.audio_concealed_samples = 0
        self.jumps = 0
        self.freezes = 0
        """Times the face held because NetEq stopped delivering (see :meth:`frozen`)."""

    # ------------------------------------------------------------------------------ input

    def observe_motion(self, arrival_ms: float, rtp_timestamp: float) -> float:
        """A motion packet arrived; returns its media time (ms)."""
        media = self.unwrap(rtp_timestamp)
        transit = arrival_ms - media
        if self._motion and abs(transit - self._motion[-1][1]) > NEW_CLOCK_MS:
            # a new RTP clock (the track was republished, with another random origin): start over
            self.unwrap.reset()
            media = self.unwrap(rtp_timestamp)
            transit = arrival_ms - media
            self._motion.clear()
            self._mappings.clear()
            self._audio_transit = self._playout_ms = self._offset = None
            self._update_mapping()
        self._motion.append((arrival_ms, transit))
        while self._motion and self._motion[0][0] < arrival_ms - MOTION_HISTORY_MS:
            self._motion.popleft()
        self._no_rtp = False
        return media

    def observe_motion_without_rtp(self) -> None:
        """A motion packet came without an RTP timestamp (the data-packet carrier): there is no
        media clock to map until packets carry one again."""
        self._no_rtp = True

    def playout_reading_due(self, now_ms: float) -> bool:
        """Whether to read the synchronization source now: every :data:`READ_FAST_MS` while
        NetEq's playout moves or stalls, every :data:`READ_SLOW_MS` once it has kept still."""
        if self._read_at is None:
            return True
        calm = (self._freeze_armed and self._silent_at_read < FREEZE_AFTER_MS
                and now_ms - self._anchor_moved_at >= CALM_MS)
        return now_ms - self._read_at >= (READ_SLOW_MS if calm else READ_FAST_MS) - 1.0

    def observe_audio_playout(self, rtp_timestamp: float, delivered_ms: float, now_ms: float) -> None:
        """The audio receiver's synchronization source, read at ``now_ms``: NetEq delivered the
        audio with this RTP timestamp at ``delivered_ms`` (the page clock, epoch ms)."""
        self._read_at = now_ms
        self._silent_at_read = now_ms - delivered_ms
        if self._silent_at_read < FREEZE_AFTER_MS:
            if self._steady_since is None:
                self._steady_since = now_ms
            elif now_ms - self._steady_since >= STEADY_MS:
                self._freeze_armed = True
        else:
            self._steady_since = None  # NetEq has gone quiet: steady again only from the next sound
        position = self._audio_unwrap(rtp_timestamp)
        last = self._last_delivery
        if last is not None and (position, delivered_ms) == last:
            return  # nothing new delivered since the last reading
        if last is not None and abs(position - last[0]) > NEW_CLOCK_MS:
            self._audio_unwrap.reset()  # a new audio track: its RTP clock starts anywhere
            position = self._audio_unwrap(rtp_timestamp)
            self._anchor = self._audio_transit = None
            self._mappings.clear()
            self._update_mapping()
        if last is not None and position > last[0]:
            # new audio was played: its packets are arriving, whatever the (asynchronous, and under
            # load slow) statistics reads say
            self._audio_seen_at = now_ms if self._audio_seen_at is None else max(self._audio_seen_at, now_ms)
        self._last_delivery = (position, delivered_ms)
        anchor = delivered_ms - position
        if self._anchor is None or abs(anchor - self._anchor) > ANCHOR_JUMP_MS:
            self._anchor = anchor
            self._anchor_moved_at = now_ms
        else:
            self._anchor += ANCHOR_SMOOTHING * (anchor - self._anchor)

    def observe_audio_arrivals(self, rtp_timestamp: float, transit_ms: float) -> None:
        """The transform worker's report on the audio packets: the median of arrival - position,
        positions counted from ``rtp_timestamp`` (its latest packet's)."""
        if self._last_delivery is None or not self._motion:
            return  # positions are counted on the synchronization source's unwrapped clock
        self._audio_transit = transit_ms - self._audio_unwrap(rtp_timestamp)
        self._update_mapping()

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
            self._audio_seen_at = None
            return
        if received <= 0 or emitted <= 0:
            return  # no audio in this window (a burst of loss, a stall): see STALE_AUDIO_MS
        self._audio_seen_at = stats.now_ms
        wait = 1000.0 * (stats.jitter_buffer_delay_s - previous.jitter_buffer_delay_s) / emitted
        self.audio_jitter_buffer_ms = wait
        # the samples emitted in this window arrived about ``wait`` earlier
        begin, end = previous.now_ms - wait, stats.now_ms - wait
        limit = self._playout_ms if self._playout_ms is not None else float("inf")
        transits = [t for a, t in self._motion if begin < a <= end and t <= limit]
        if not transits:  # a wait longer than the motion history: the window's own arrivals
            transits = [t for a, t in self._motion if previous.now_ms < a <= stats.now_ms and t <= limit]
        if not transits:
            return
        window = sum(transits) / len(transits) + wait
        current = self._playout_ms
        if current is None or abs(window - current) > JUMP_MS / 2:
            self._playout_ms = window  # NetEq resized (an outage): follow at once
        else:
            self._playout_ms = current + SMOOTHING * (window - current)
        if self._anchor is not None and self._delivering(stats.now_ms):
            mapping = window - self._anchor
            if self._mappings and abs(mapping - _median(list(self._mappings))) > NEW_CLOCK_MS:
                self._mappings.clear()
            self._mappings.append(mapping)
        self._update_mapping()
        transit = self.transit_ms
        self._audio_delay_ms = (None if transit is None else
                                self._heard_offset() - transit + self.audio_path_ms + self.trim_ms)

    def _update_mapping(self) -> None:
        """``C`` from the arrivals if they are watched, else from the statistics windows (done
        when new evidence comes, twice a second: :meth:`offset` runs every tick and stays O(1))."""
        if self._audio_transit is not None and self._motion:
            transit = self.transit_ms
            assert transit is not None
            self._mapping, self.mapping_source = transit - self._audio_transit, "arrivals"
        elif self._mappings:
            self._mapping, self.mapping_source = _median(list(self._mappings)), "statistics"
        else:
            self._mapping, self.mapping_source = None, None

    # ----------------------------------------------------------------------------- output

    def target(self, now_ms: float) -> float | None:
        """The offset (local playout time - media time) the evidence points to now, unslewed;
        None (and :attr:`reason` set) when the audio cannot be followed."""
        audio = self._audio
        if audio is None or self._playout_ms is None:
            self.reason = SyncReason.NO_RTP if self._no_rtp else SyncReason.NO_AUDIO
            return None
        if self._audio_seen_at is None or now_ms - self._audio_seen_at > STALE_AUDIO_MS:
            self.reason = SyncReason.AUDIO_STALLED
            return None
        if self._no_rtp:
            self.reason = SyncReason.NO_RTP
            return None
        delay = self.audio_delay_ms
        if delay is not None and delay > MAX_AUDIO_DELAY_MS:
            self.reason = SyncReason.AUDIO_DELAY
            return None
        self.reason = SyncReason.LOCKED
        return self._heard_offset() + self.audio_path_ms + self.trim_ms

    def offset(self, now_ms: float) -> float | None:
        """Local heard time minus media time. Following the synchronization source it is exact at
        every tick; on the statistics alone it moves towards :meth:`target` by at most ``slew``
        of the time since the last call (or at once for a jump of :data:`JUMP_MS`)."""
        target = self.target(now_ms)
        if target is None:
            self._offset = None
            return None
        if self.follows_playout:
            if self._offset is not None and abs(target - self._offset) > JUMP_MS:
                self.jumps += 1
            self._offset = target
        elif self._offset is None or self._offset_at is None or abs(target - self._offset) > JUMP_MS:
            if self._offset is not None:
                self.jumps += 1
            self._offset = target
        else:
            step = self.slew * max(0.0, now_ms - self._offset_at)
            self._offset += max(-step, min(step, target - self._offset))
        self._offset_at = now_ms
        return self._offset

    def frozen(self, now_ms: float) -> bool:
        """At the last reading, NetEq had delivered nothing for a while although it was playing
        steadily: the voice stalled (a late packet, an outage), so the face holds too, for a
        moment."""
        if not self._freeze_armed or self._last_delivery is None or self._offset is None:
            return False
        if self._silent_at_read < FREEZE_AFTER_MS:
            self._freezing = False
            return False
        if now_ms - self._last_delivery[1] > FREEZE_AFTER_MS + MAX_FREEZE_MS:
            self._freeze_armed = self._freezing = False  # perhaps DTX: re-armed once steady again
            return False
        if not self._freezing:
            self._freezing = True
            self.freezes += 1
        return True

    @property
    def follows_playout(self) -> bool:
        """True when the audio's synchronization source drives the clock (else the statistics)."""
        return self._anchor is not None and self._mapping is not None

    @property
    def mapping_ms(self) -> float | None:
        """``C``: audio position - motion media time (see :attr:`mapping_source`)."""
        return self._mapping

    @property
    def audio_delay_ms(self) -> float | None:
        """Arrival to heard, of the avatar's audio (what the motion waits for, on average):
        as of the last statistics window."""
        return self._audio_delay_ms

    @property
    def transit_ms(self) -> float | None:
        """Median arrival - media time of the motion packets of the last seconds."""
        return _median([t for _, t in self._motion]) if self._motion else None

    def _heard_offset(self) -> float:
        """Media time to NetEq's delivery of the matching audio: anchor + C, or D."""
        if self._anchor is not None and self._mapping is not None:
            return self._anchor + self._mapping
        assert self._playout_ms is not None
        return self._playout_ms

    def _delivering(self, now_ms: float) -> bool:
        return self._last_delivery is not None and self._silent_at_read < FREEZE_AFTER_MS


def _median(values: list[float]) -> float:
    """The median: a burst of late frames after an outage (up to half the window) or the
    packets a Wi-Fi scan held up must not drag an estimate."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
