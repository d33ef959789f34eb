"""The player's data path without the browser: packets in, render-ordered events out.

``MotionPipeline`` chains the packet decoder, the jitter buffer, the turn tracker and the stall
detector, and follows the avatar's audio with a :class:`~avatarplayer.sync.PlayoutClock`. The
browser player feeds it packets from the transform worker (with their RTP timestamps) and the
audio receiver's statistics, and calls :meth:`tick` every 40 ms; everything it decides is plain
Python, tested under CPython and in Pyodide.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

from .captions import CaptionClock
from .constants import FRAME_INTERVAL_MS, JITTER_MAX_FRAMES, MAX_BUFFER_DELAY_MS, STALL_TIMEOUT_MS
from .jitter import JitterBuffer
from .wire.motion import Flags, MotionPacket, PacketError, decode_packet
from .stall import StallDetector
from .summary import SessionSummary
from .sync import AUDIO_PATH_MS, NEW_CLOCK_MS, AudioStats, PlayoutClock, SyncMode, SyncReason
from .turns import Frame, Transition, TurnEnded, TurnStarted, TurnTracker, new_conversation_id

__all__ = ["MotionPipeline", "Stalled", "SyncChanged", "PipelineEvent", "SYNC_MAX_FRAMES"]

SYNC_MAX_FRAMES = 48
"""Frames the jitter buffer may hold while following the audio: the audio delay (up to
:data:`~avatarplayer.sync.MAX_AUDIO_DELAY_MS`) plus ``max_buffer_delay_ms``, at 25 fps. On its
own clock the buffer keeps :data:`~avatarplayer.constants.JITTER_MAX_FRAMES`."""

MAX_CATCH_UP = 4
"""Extra frames one tick may render to catch up with the audio after a hold."""


@dataclass(frozen=True, slots=True)
class Stalled:
    """Inside a turn, no frame for the stall timeout: the renderer should blend to idle."""

    conversation_id: str | None


@dataclass(frozen=True, slots=True)
class SyncChanged:
    """Frames now follow the audio (``mode`` "audio"), or their own clock ("independent"), and why."""

    mode: SyncMode
    reason: SyncReason


PipelineEvent = TurnStarted | Frame | TurnEnded | Transition | Stalled | SyncChanged

_Item = tuple[Flags, bytes]
_START, _END, _REDUNDANT, _IDLE = int(Flags.START), int(Flags.END), int(Flags.REDUNDANT), int(Flags.IDLE)
_IDLE_OR_TRANSITION_END = int(Flags.TRANSITION_END) | _IDLE


class MotionPipeline:
    """Decoder → jitter buffer → turn tracker → stall detector, with the session's counters."""

    def __init__(
        self,
        *,
        enable_jitter_buffer: bool = True,
        max_buffer_delay_ms: float = MAX_BUFFER_DELAY_MS,
        stall_timeout_ms: float = STALL_TIMEOUT_MS,
        new_conversation_id: Callable[[], str] = new_conversation_id,
        sync: SyncMode | str = SyncMode.AUDIO,
        audio_path_ms: float = AUDIO_PATH_MS,
        sync_offset_ms: float = 0.0,
    ) -> None:
        if not isinstance(enable_jitter_buffer, bool):
            raise TypeError(f"enable_jitter_buffer must be a bool, got {type(enable_jitter_buffer).__name__}")
        self.sync = SyncMode(sync)
        self._config = (enable_jitter_buffer, max_buffer_delay_ms, stall_timeout_ms, new_conversation_id,
                        audio_path_ms, sync_offset_ms)
        JitterBuffer(max_buffer_delay_ms)  # validate the options now, with their names
        StallDetector(stall_timeout_ms)
        self.start_session(0.0)

    def start_session(self, now_ms: float) -> None:
        """Forget everything (a new ``connect``): counters restart from zero."""
        enabled, delay, stall_ms, new_id, audio_path_ms, sync_offset_ms = self._config
        self.buffer: JitterBuffer[_Item] = JitterBuffer(delay, enabled=enabled)
        self.turns = TurnTracker(new_id)
        self.stall = StallDetector(stall_ms)
        self.clock = PlayoutClock(audio_path_ms=audio_path_ms, trim_ms=sync_offset_ms)
        self.captions = CaptionClock()
        """Transcript chunks waiting for their frame (the player feeds it as it renders)."""
        self.follows_audio = self.sync is SyncMode.AUDIO and enabled
        """Whether this session tries to follow the audio (it does whenever it can)."""
        self.sync_mode = SyncMode.INDEPENDENT
        self.sync_reason = SyncReason.NO_AUDIO if self.follows_audio else SyncReason.DISABLED
        self.sync_changes = 0
        self._offset: float | None = None
        self._holding = False
        self._av_offset_ms: float | None = None
        self._controls: list[tuple[int | None, MotionPacket, float | None]] = []
        self._closed_media_ms: float | None = None
        """Media time of the IDLE/TRANSITION_END that last ended the stream (for late frames)."""
        self._session_start_ms = now_ms
        self._first_frame_ms: float | None = None
        self._last_render: tuple[str, float] | None = None  # (conversation id, time)
        self._turn_interval_ms = 0.0
        self._turn_intervals = 0
        self.packets_received = 0
        self.packets_malformed = 0
        self.packets_idle = 0
        self.controls_stale = 0
        self._newest_media_ms: float | None = None
        self.malformed_reasons: Counter[str] = Counter()
        self.frames_passed_through = 0
        self.reconnect_count = 0
        self.renderer_errors = 0

    # ----------------------------------------------------------------------------- input

    def receive_packet(self, data: bytes | bytearray | memoryview, now_ms: float,
                       rtp_timestamp: float | None = None) -> list[PipelineEvent]:
        """One motion packet arrived (with the RTP timestamp of the VP8 frame that carried it,
        if any). Malformed ones are counted and skipped, never raised."""
        self.packets_received += 1
        try:
            packet = decode_packet(data)
        except PacketError as exc:
            self.packets_malformed += 1
            self.malformed_reasons[exc.reason.value] += 1
            return []
        if rtp_timestamp is None:
            self.clock.observe_motion_without_rtp()
            media_ms = None
        else:
            media_ms = self.clock.observe_motion(now_ms, rtp_timestamp)
        return self.receive(packet, now_ms, media_ms)

    def receive(self, packet: MotionPacket, now_ms: float, media_ms: float | None = None) -> list[PipelineEvent]:
        """One decoded packet arrived. Returns events that are due at once (buffer disabled)."""
        flags = packet.flags
        bits = int(flags)  # plain int masks: IntFlag operators run Python-level enum code
        newest = self._newest_media_ms
        if media_ms is not None and newest is not None and abs(media_ms - newest) > NEW_CLOCK_MS:
            self._newest_media_ms = None  # another RTP clock: the track was republished
        if packet.sequenced:
            assert packet.seq is not None
            closed = self._closed_media_ms
            if (media_ms is not None and closed is not None and not bits & _START and media_ms < closed
                    and closed - media_ms <= NEW_CLOCK_MS):
                # sent before the TRANSITION_END/IDLE that already ended its turn, and arrived after
                # it (a retransmission of a lost last frame): its turn is over. Played now, it would
                # open a phantom one-frame turn.
                self.buffer.refuse()
                return []
            if media_ms is not None and (self._newest_media_ms is None or media_ms > self._newest_media_ms):
                self._newest_media_ms = media_ms
            self.buffer.push(packet.seq, (flags, packet.message), now_ms,
                             start=bool(bits & _START), end=bool(bits & _END), media_ms=media_ms)
            if media_ms is not None and self._controls:
                self._order_before_controls(packet.seq, media_ms)
            if bits & _REDUNDANT and not bits & _START:
                # a START's predecessors belong to the previous turn: never resurrect them
                for seq, message in packet.recovered():
                    media = None if media_ms is None else media_ms - (packet.seq - seq) * FRAME_INTERVAL_MS
                    self.buffer.push(seq, (Flags(0), message), now_ms, recovered=True, media_ms=media)
        else:
            if media_ms is not None and self._newest_media_ms is not None and media_ms < self._newest_media_ms:
                # older than a frame we already have: an IDLE heartbeat or TRANSITION_END of before
                # this turn, retransmitted after a loss (NACK). Applied now it would end the turn.
                self.controls_stale += 1
                return []
            if bits & _IDLE:
                self.packets_idle += 1
            # a control takes effect after every frame that arrived before it has been rendered
            self._controls.append((self._highest_seq(), packet, media_ms))
        if self.buffer.enabled:
            return self._release_controls(now_ms) if not packet.sequenced else []
        events: list[PipelineEvent] = []
        while (item := self.buffer.tick(now_ms)) is not None:
            events += self._render(item, now_ms)
        return events + self._release_controls(now_ms)

    def _order_before_controls(self, seq: int, media_ms: float) -> None:
        """A frame that arrived after a control still waiting in the queue, but was sent before it
        (an earlier media time: reordered on the way, or a retransmission): it renders before that
        control. Otherwise a TRANSITION_END/IDLE would end its turn first and the frame would open a
        phantom turn of its own."""
        for i, (after, control, control_ms) in enumerate(self._controls):
            if (control_ms is not None and media_ms < control_ms and control_ms - media_ms <= NEW_CLOCK_MS
                    and (after is None or after < seq)):
                self._controls[i] = (seq, control, control_ms)

    def _highest_seq(self) -> int | None:
        seqs = self.buffer.buffered_seqs
        return seqs[-1] if seqs else self.buffer.last_rendered

    # ------------------------------------------------------------------------------ clock

    def observe_audio(self, stats: AudioStats) -> None:
        """A snapshot of the avatar audio receiver's statistics (about twice a second)."""
        self.clock.observe_audio(stats)

    def observe_audio_arrivals(self, rtp_timestamp: float, transit_ms: float) -> None:
        """When the avatar's audio packets arrive (the transform worker's report, twice a second)."""
        self.clock.observe_audio_arrivals(rtp_timestamp, transit_ms)

    def observe_audio_playout(self, rtp_timestamp: float, delivered_ms: float, now_ms: float) -> None:
        """The avatar audio receiver's synchronization source, read at ``now_ms``."""
        self.clock.observe_audio_playout(rtp_timestamp, delivered_ms, now_ms)

    def tick(self, now_ms: float) -> list[PipelineEvent]:
        """One 40 ms tick: the next frame when it is due (following the audio, a few more to catch
        up after a hold), due controls, a stall if one began, a sync change."""
        events: list[PipelineEvent] = self._update_sync(now_ms)
        offset = self._offset
        self._holding = offset is not None and self.clock.frozen(now_ms)
        if self._holding:
            pass  # the voice stalled: the face holds with it (PlayoutClock.frozen)
        elif self.buffer.enabled and (item := self.buffer.tick(now_ms, offset)) is not None:
            events += self._render(item, now_ms)
            extra = 0
            while extra < MAX_CATCH_UP and self.buffer.overdue(now_ms, offset):
                item = self.buffer.tick(now_ms, offset)
                if item is None:
                    break
                self.buffer.counters.caught_up += 1
                events += self._render(item, now_ms)
                extra += 1
        events += self._release_controls(now_ms)
        if self.stall.check(now_ms):
            events.append(Stalled(self.turns.conversation_id))
        return events

    def next_due(self) -> float | None:
        """When the next frame's audio is heard, if the pipeline follows the audio and the frame
        is here: the player's clock ticks then, so a frame renders on time, not up to 40 ms late.
        None while the face holds for a stalled voice: the clock keeps its own pace then."""
        return None if self._holding else self.buffer.next_due(self._offset)

    def _update_sync(self, now_ms: float) -> list[PipelineEvent]:
        if not self.follows_audio:
            return []
        self._offset = self.clock.offset(now_ms)
        mode = SyncMode.INDEPENDENT if self._offset is None else SyncMode.AUDIO
        self.buffer.max_frames = SYNC_MAX_FRAMES if self._offset is not None else JITTER_MAX_FRAMES
        self.sync_reason = self.clock.reason
        if mode is self.sync_mode:
            return []
        self.sync_mode = mode
        self.sync_changes += 1
        return [SyncChanged(mode, self.sync_reason)]

    def close(self, now_ms: float, reason: str = "disconnect") -> list[PipelineEvent]:
        """The connection ended: end the turn, drop what is buffered (counted as flushed)."""
        events = self._track(self.turns.close(reason), now_ms)
        self.buffer.reset()
        self._controls.clear()
        self._closed_media_ms = None
        return events

    # ---------------------------------------------------------------------------- helpers

    def _render(self, item: _Item, now_ms: float) -> list[PipelineEvent]:
        flags, message = item
        seq = self.buffer.last_rendered
        assert seq is not None
        if self._first_frame_ms is None:
            self._first_frame_ms = now_ms
        media_ms = self.buffer.last_media_ms
        heard_offset = None
        if self.follows_audio and media_ms is not None:  # this tick's offset, if it has one
            heard_offset = self._offset if self._offset is not None else self.clock.target(now_ms)
        if heard_offset is not None:
            assert media_ms is not None
            # the player's own estimate of render time - heard time (+ = face late), smoothed
            error = now_ms - (media_ms + heard_offset)
            previous = self._av_offset_ms
            self._av_offset_ms = error if previous is None else previous + 0.2 * (error - previous)
        return self._track(self.turns.frame(seq, flags, message), now_ms)

    def _release_controls(self, now_ms: float) -> list[PipelineEvent]:
        events: list[PipelineEvent] = []
        buffered = self.buffer.buffered_seqs
        while self._controls:
            after, packet, media_ms = self._controls[0]
            if after is not None and buffered and buffered[0] <= after:
                break
            self._controls.pop(0)
            if int(packet.flags) & _IDLE_OR_TRANSITION_END:
                self.buffer.end_stream()
                if media_ms is not None:
                    self._closed_media_ms = media_ms
            events += self._track(self.turns.control(packet.flags, packet.message), now_ms)
        return events

    def _track(self, events: list, now_ms: float) -> list[PipelineEvent]:
        for event in events:
            if isinstance(event, Frame):
                self.stall.frame(now_ms)
                if self._last_render is not None and self._last_render[0] == event.conversation_id:
                    self._turn_interval_ms += now_ms - self._last_render[1]
                    self._turn_intervals += 1
                self._last_render = (event.conversation_id, now_ms)
            elif isinstance(event, TurnEnded):
                self.stall.turn_ended(now_ms)
        return events

    # ---------------------------------------------------------------------------- summary

    def summary(self, now_ms: float | None = None) -> SessionSummary:
        """A snapshot of the counters; ``now_ms`` includes a stall still going on."""
        c = self.buffer.counters
        ongoing = self.stall.ongoing_stall_ms(now_ms) if now_ms is not None else 0.0
        return SessionSummary(
            packets_received=self.packets_received,
            packets_malformed=self.packets_malformed,
            packets_idle=self.packets_idle,
            packets_stale_control=self.controls_stale,
            frames_received=c.received,
            frames_rendered=c.rendered,
            frames_dropped=c.dropped,
            frames_dropped_late=c.dropped_late,
            frames_dropped_stale=c.dropped_stale,
            frames_dropped_overflow=c.dropped_overflow,
            frames_dropped_duplicate=c.dropped_duplicate,
            frames_dropped_flushed=c.dropped_flushed,
            frames_buffered=self.buffer.buffered,
            frames_skipped=c.skipped,
            frames_recovered=c.recovered,
            frames_out_of_order=c.out_of_order,
            frames_passed_through=self.frames_passed_through,
            starved_ticks=c.starved_ticks,
            jitter_buffer_delay=c.delay_ms_total / 1000.0,
            jitter_buffer_emitted_count=c.rendered,
            average_fps=1000.0 * self._turn_intervals / self._turn_interval_ms if self._turn_interval_ms else 0.0,
            stall_count=self.stall.stall_count,
            stalled_duration_ms=self.stall.stalled_duration_ms + ongoing,
            reconnect_count=self.reconnect_count,
            time_to_first_frame_ms=(None if self._first_frame_ms is None
                                    else self._first_frame_ms - self._session_start_ms),
            turns=self.turns.turns,
            renderer_errors=self.renderer_errors,
            last_rendered_seq=self.buffer.last_rendered,
            malformed_reasons=MappingProxyType(dict(self.malformed_reasons)),
            sync_mode=self.sync_mode.value,
            sync_reason=self.sync_reason.value,
            sync_changes=self.sync_changes,
            av_sync_offset_ms=self._av_offset_ms,
            audio_delay_ms=self.clock.audio_delay_ms,
            audio_jitter_buffer_delay_ms=self.clock.audio_jitter_buffer_ms,
            audio_concealed_samples=self.clock.audio_concealed_samples,
            audio_packets_lost=self.clock.audio_packets_lost,
            frames_held_for_sync=c.held,
            frames_caught_up=c.caught_up,
            sync_freezes=self.clock.freezes,
            sync_mapping=self.clock.mapping_source if self.clock.follows_playout else None,
            captions_held=self.captions.held,
            captions_released_late=self.captions.released_late,
            captions_discarded=self.captions.discarded,
            captions_expired=self.captions.expired,
            captions_timing_invalid=self.captions.timing_invalid,
        )
