"""An open-source avatar worker: publishes an avatar's speech and motion into a LiveKit room.

It joins as an ``agent`` participant, publishes a 48 kHz mono audio track (source microphone)
and a VP8 motion track named ``avatar-motion`` (source camera) whose every frame is a tiny valid
VP8 key frame carrying one motion packet (``docs/wire-format.md``), paced at 25 fps against absolute
deadlines. While silent it sends IDLE heartbeats; a turn is TRANSITION, START ... END,
TRANSITION_END. Viewers may ask for the same packets as lossy data messages too (the data-packet
carrier); on request it also sends agent status / transcript messages, reports the audio it
hears from the others, and swaps its motion track mid-turn (tests of a player's recovery).

Packages and modules, by responsibility:

- :mod:`~avatar_worker.transport` the room side: :mod:`~avatar_worker.transport.publisher`
  (LiveKit connection and publications, from :mod:`~avatar_worker.transport.rejoin`,
  :mod:`~avatar_worker.transport.tracks` and :mod:`~avatar_worker.transport.dataqueue`),
  :mod:`~avatar_worker.transport.pacing` (the absolute-deadline 25 fps clock),
  :mod:`~avatar_worker.transport.streamer` (the real-time loop: heartbeats, turns, send log,
  stats), :mod:`~avatar_worker.transport.carrier` (the data-packet carrier and the control
  messages asking for it), :mod:`~avatar_worker.transport.messaging` (data messages: the
  transport interface, logged JSON messages), :mod:`~avatar_worker.transport.republish`
  (replacing the motion track mid-turn)
- :mod:`~avatar_worker.modes` one module per mode and the table of them:
  :mod:`~avatar_worker.modes.scripted` (deterministic payloads, fault injection),
  :mod:`~avatar_worker.modes.speech` (WAV / espeak-ng playback),
  :mod:`~avatar_worker.modes.demo` (greets, listens, answers; its speech recognisers in
  :mod:`~avatar_worker.asr`, its replies in :mod:`~avatar_worker.dialogue`),
  :mod:`~avatar_worker.modes.replay` (a recorded animation, byte for byte; ``REPLAY.md``;
  :mod:`~avatar_worker.record` writes one), :mod:`~avatar_worker.modes.agents` (the LiveKit
  Agents avatar contract; its wire protocol in :mod:`~avatar_worker.modes.agents_wire`, its
  playback in :mod:`~avatar_worker.modes.agents_playback`)
- :mod:`~avatar_worker.audio` :mod:`~avatar_worker.audio.pcm` (all PCM conversion),
  :mod:`~avatar_worker.audio.vad` (voice activity), :mod:`~avatar_worker.audio.report`
  (per-second levels of the other participants' audio)
- :mod:`~avatar_worker.turns` planning a turn tick by tick; :mod:`~avatar_worker.motion_gen` FLAME
  poses from the audio envelope, blinks, head, gaze; :mod:`~avatar_worker.agent_data` agent
  status and transcript messages around each turn; :mod:`~avatar_worker.token` access tokens
- :mod:`~avatar_worker.app` one run; :mod:`~avatar_worker.config` its settings;
  :mod:`~avatar_worker.cli` the command line

Importing this package does not load the LiveKit native library; :func:`run` and the publisher
do.
"""

from __future__ import annotations

from typing import Any

from .config import LiveKitSettings, WorkerConfig
from .modes.scripted import Injection, payload_for

__all__ = ["WorkerConfig", "LiveKitSettings", "Injection", "payload_for", "run", "main"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from .app import run
        return run
    if name == "main":
        from .cli import main
        return main
    raise AttributeError(name)
