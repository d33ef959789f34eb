"""The session summary: a read-only snapshot of what the player did (``docs/player.md``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["SessionSummary"]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """Counters since the last ``connect``. Names follow W3C ``getStats`` where one exists.

    ``frames_dropped`` is the sum of the ``frames_dropped_*`` reasons; at any moment
    ``frames_received == frames_rendered + frames_dropped + frames_buffered``.
    """

    packets_received: int = 0
    packets_malformed: int = 0
    packets_idle: int = 0
    packets_stale_control: int = 0
    """IDLE, TRANSITION or TRANSITION_END packets older (by RTP timestamp) than a frame already
    received: retransmitted after a loss, and ignored (applied late they would end the turn)."""
    frames_received: int = 0
    frames_rendered: int = 0
    frames_dropped: int = 0
    frames_dropped_late: int = 0
    frames_dropped_stale: int = 0
    frames_dropped_overflow: int = 0
    frames_dropped_duplicate: int = 0
    frames_dropped_flushed: int = 0
    frames_buffered: int = 0
    frames_skipped: int = 0
    frames_recovered: int = 0
    frames_out_of_order: int = 0
    frames_passed_through: int = 0
    starved_ticks: int = 0
    jitter_buffer_delay: float = 0.0
    """Seconds, summed over rendered frames (divide by ``jitter_buffer_emitted_count``)."""
    jitter_buffer_emitted_count: int = 0
    average_fps: float = 0.0
    """Rendered frames per second while a turn was playing (gaps between turns excluded)."""
    stall_count: int = 0
    stalled_duration_ms: float = 0.0
    reconnect_count: int = 0
    time_to_first_frame_ms: float | None = None
    turns: int = 0
    renderer_errors: int = 0
    last_rendered_seq: int | None = None
    malformed_reasons: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    sync_mode: str = "independent"
    """"audio": frames are released when their audio is heard; "independent": on arrival."""
    sync_reason: str = "no-audio"
    """Why (:class:`~avatarplayer.sync.SyncReason`): "locked", "disabled", "no-audio",
    "audio-stalled", "no-rtp", "audio-delay"."""
    sync_changes: int = 0
    av_sync_offset_ms: float | None = None
    """The player's own live estimate of render time - heard time of the frames it renders
    (+ = face late; near 0 while following the audio, the face's lead otherwise). None until it
    has heard from the audio receiver."""
    audio_delay_ms: float | None = None
    """Arrival to heard, of the avatar's audio: its jitter buffer plus the audio path."""
    audio_jitter_buffer_delay_ms: float | None = None
    """The audio receiver's jitterBufferDelay per emitted sample, over the last window."""
    audio_concealed_samples: int = 0
    audio_packets_lost: int = 0
    frames_held_for_sync: int = 0
    """Frames that waited in the buffer for their audio to be heard."""
    frames_caught_up: int = 0
    """Frames rendered together with the one before them to catch up with the audio."""
    sync_freezes: int = 0
    """Times the face held because the voice stalled (the audio jitter buffer ran dry)."""
    sync_mapping: str | None = None
    """How audio positions are matched to motion frames: "arrivals" (the audio packets are
    watched as they arrive), "statistics" (NetEq's own accounting), or None (the playout
    position is not followed: the statistics' estimate of the delay alone)."""

    untrusted_ignored: int = 0
    """Tracks and data messages from participants other than the avatar (and the agent it speaks
    for) that were ignored; by kind in ``untrusted_reasons``."""
    untrusted_reasons: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """"motion-track" (a video track named like the motion track), "data-carrier" (packets on the
    carrier's topic), "control" (the player/worker control topic), "data" (transcripts, agent
    status and any other message)."""
    control_messages_malformed: int = 0
    """Messages from the avatar on the control topic that were not small, shallow JSON objects."""
    captions_held: int = 0
    """Timed transcript chunks that waited for their frame to render (:mod:`avatarplayer.captions`)."""
    captions_released_late: int = 0
    """Timed chunks whose frame had rendered before they arrived (emitted at once)."""
    captions_discarded: int = 0
    """Timed chunks of a turn that ended before their frame rendered (never said: dropped; a
    final one is emitted with empty text)."""
    captions_expired: int = 0
    """Timed chunks emitted without their frame: held too long, or too many held."""
    captions_timing_invalid: int = 0
    """Transcript chunks whose ``seq``/``turn_seq`` did not parse (emitted on arrival)."""

    @property
    def average_buffer_delay_ms(self) -> float:
        """Mean time a rendered frame spent in the jitter buffer."""
        n = self.jitter_buffer_emitted_count
        return 1000.0 * self.jitter_buffer_delay / n if n else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The counters under their camelCase names (``framesRendered``, ...), JSON-ready."""
        out = {_camel(f.name): getattr(self, f.name) for f in fields(self)}
        out["malformedReasons"] = dict(self.malformed_reasons)
        out["untrustedReasons"] = dict(self.untrusted_reasons)
        return out
