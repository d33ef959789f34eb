"""The compact message the transform worker posts to Python for each motion packet.

``avatarplayer/browser/js/motion-transform.js`` (``COMPACT_HEADER``, 20 bytes) writes it, the provider
(:mod:`avatarplayer.browser.livekit`) reads it: one ``ArrayBuffer`` per packet, the header then
the packet (docs/wire-format.md §5, where the table of shared constants checks both sides).
"""

from __future__ import annotations

import struct

COMPACT_HEADER = struct.Struct("<Idd")
"""Little-endian: attach id (uint32), arrival time in ms (float64), RTP timestamp (float64,
negative when the worker had none: read as ``None``). Then the packet bytes."""
