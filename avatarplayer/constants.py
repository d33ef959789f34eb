"""One source of truth for the numbers shared by the avatar worker, the player and the tests."""

FRAME_RATE = 25
"""Motion frames per second."""

FRAME_INTERVAL_MS = 1000 // FRAME_RATE
"""One motion frame, one jitter-buffer tick: 40 ms."""

MAX_BUFFER_DELAY_MS = 80
"""Default longest wait for a missing frame before the jitter buffer skips the gap."""

JITTER_START_FRAMES = 2
"""Playback starts once this many frames are buffered."""

JITTER_MAX_FRAMES = 4
"""The jitter buffer holds at most this many frames; overflow evicts the oldest."""

STALL_TIMEOUT_MS = 3000
"""Inside a turn, this long without a motion frame is a stall."""

MAX_PACKET_BODY = 64 * 1024
"""Cap on a packet body, before and after decompression (a keyframe is ~500 bytes)."""

CARRIER_MAGIC = b"AVMF"
"""Trailer magic of the VP8 carrier layout, version 1 (docs/wire-format.md §3a)."""

LIVEKIT_TRAILER_MAGIC = b"LKTS"
"""LiveKit's own packet-trailer marker: a carrier frame must never end with it."""
