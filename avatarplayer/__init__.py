"""avatarplayer: a Python-first client for real-time talking avatars in the browser.

In a page (PyScript / Pyodide)::

    from avatarplayer import AvatarPlayer, LiveKitProvider

    player = AvatarPlayer(LiveKitProvider(), renderer)   # renderer.yield_frames_data(frames, cid)
    await player.connect(url=server_url, token=token)

the player joins a LiveKit room, reads the avatar's motion
packets from its VP8 track, paces them at 25 fps and hands them to a renderer.

The pure core, importable anywhere (CPython or Pyodide, no browser needed):

* :mod:`avatarplayer.wire.motion` – motion packets and VP8 carrier frames
  (:func:`decode_packet`, :func:`encode_packet`, :func:`wrap_frame`, :func:`unwrap_frame`).
* :mod:`avatarplayer.jitter` – :class:`JitterBuffer`, 40 ms ticks, 80 ms max delay.
* :mod:`avatarplayer.stall` – :class:`StallDetector`; :mod:`avatarplayer.turns` – turn tracking.
* :mod:`avatarplayer.pipeline` – :class:`MotionPipeline`: all of the above, packets in,
  render-ordered events out; :class:`SessionSummary` its counters.

The reference renderer, :class:`FaceRenderer` (:mod:`avatarplayer.face.canvas`), draws a stylized
face on a ``<canvas>`` from each frame's FLAME values; it needs the ``protobuf`` wheel in the page
and is imported on first use, so ``import avatarplayer`` stays light::

    renderer = FaceRenderer(js.document.getElementById("avatar"))
"""

from .events import ConnectionState, PlayerEvent
from .jitter import JitterBuffer, JitterCounters, PushResult
from .wire.motion import (
    Flags,
    MotionPacket,
    PacketError,
    Reason,
    decode_packet,
    encode_packet,
    unwrap_frame,
    wrap_frame,
)
from .browser.livekit import LiveKitProvider
from .pipeline import MotionPipeline, Stalled
from .wire.datamsg import AgentStatus, DataMessage, TranscriptChunk
from .errors import ConnectConfigError, ConnectError, MediaDeviceError
from .player import AvatarPlayer, ConnectConfig, Renderer
from .stall import StallDetector
from .summary import SessionSummary
from .turns import Frame, Transition, TurnEnded, TurnStarted, TurnTracker, new_conversation_id

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "FaceRenderer":  # lazily: the player alone does not need the renderer
        from .face.canvas import FaceRenderer

        return FaceRenderer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"FaceRenderer"})


__all__ = [
    "AvatarPlayer",
    "AgentStatus",
    "ConnectConfig",
    "ConnectConfigError",
    "ConnectError",
    "DataMessage",
    "MediaDeviceError",
    "TranscriptChunk",
    "ConnectionState",
    "FaceRenderer",
    "LiveKitProvider",
    "PlayerEvent",
    "Renderer",
    "Flags",
    "Frame",
    "JitterBuffer",
    "JitterCounters",
    "MotionPacket",
    "MotionPipeline",
    "PacketError",
    "PushResult",
    "Reason",
    "SessionSummary",
    "StallDetector",
    "Stalled",
    "Transition",
    "TurnEnded",
    "TurnStarted",
    "TurnTracker",
    "decode_packet",
    "encode_packet",
    "new_conversation_id",
    "unwrap_frame",
    "wrap_frame",
]
