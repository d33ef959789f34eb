"""Everything a worker run is configured with (filled by the CLI, or built directly in Python)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from avatarplayer.wire.motion import Compression

from .transport.carrier import DEFAULT_DATA_TOPIC, check_topic
from .modes.agents_wire import PUBLISH_ON_BEHALF
from .modes.scripted import Injection

__all__ = ["LiveKitSettings", "WorkerConfig", "Mode"]

Mode = Literal["scripted", "speech", "demo", "replay", "agents"]


@dataclass(frozen=True)
class LiveKitSettings:
    """Where to publish and as whom. ``repr`` and ``str`` show the API secret as ``'***'``: a
    setting logged or printed in a traceback must not give it away."""

    url: str
    api_key: str
    api_secret: str = field(repr=False)
    room: str
    identity: str = "avatar-worker"
    name: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    video_track_name: str = "avatar-motion"
    audio_track_name: str = "avatar-audio"
    video_max_bitrate: int = 500_000
    """Head room over the ~120 kbit/s a keyframe-per-frame stream needs, so the bandwidth
    estimator never starts queueing frames."""
    connect_timeout: float = 10.0

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={'***' if f.name == 'api_secret' else getattr(self, f.name)!r}"
                          for f in fields(self))
        return f"{type(self).__name__}({shown})"

    __str__ = __repr__


@dataclass
class WorkerConfig:
    """A worker run. ``livekit`` says where; the rest says what to play and when to stop."""

    livekit: LiveKitSettings
    mode: Mode = "speech"

    # both modes
    wait_for_participant: bool = False
    lead_in_ms: int = 1500
    """Idle heartbeats after a viewer joined (and subscribed), before the first turn: the
    browser attaches its frame transform only after it learns of the subscription."""
    transition: bool = True
    redundant: bool = False
    compression: Compression = None
    turn_gap_ms: int = 1000
    """Idle time between consecutive scripted turns."""
    tail_ms: int = 500
    """Idle heartbeats after the last turn before an --exit-when-done exit."""
    exit_when_done: bool = False
    exit_after_ms: int | None = None
    send_log: Path | None = None
    seed: int = 0
    realtime: bool = False
    """Run the pacing loop in the SCHED_RR class (needs CAP_SYS_NICE): steady ticks on a busy host."""
    data_carrier: bool = False
    """Send every packet on the data carrier to every other participant without being asked
    (viewers can always ask for it: see :mod:`avatar_worker.transport.carrier`)."""
    data_topic: str = DEFAULT_DATA_TOPIC
    """The data topic ``data_carrier`` uses."""
    audio_report: Path | None = None
    """Subscribe to the others' audio and write per-second levels here (JSON lines)."""
    agent_data: bool = False
    """Agent status and transcript data messages around each turn (topic ``avatarplayer.agent``)."""
    republish_after: int | None = None
    """Replace the motion track with a fresh one after this many frames of the first turn."""
    republish_gap_ms: int = 300
    """Time between unpublishing the old motion track and publishing the new one (see
    :meth:`avatar_worker.transport.publisher.Publisher.republish_video`)."""

    # scripted mode
    frames: int = 500
    turns: int = 1
    injection: Injection = field(default_factory=Injection)
    leave_after: int | None = None
    """Disconnect abruptly after this many frames of the last turn (a worker dying mid-turn)."""
    leave_mode: Literal["disconnect", "crash"] = "disconnect"
    """``disconnect``: leave the room at once (tracks vanish); ``crash``: exit the process without
    leaving, so the participant lingers until the server notices (a stall, then a departure)."""
    script_audio: str = "tone"

    # speech mode
    wav: Path | None = None
    text: str | None = None
    voice: str | None = None
    repeat_every_s: float | None = None
    avatar_id: str = ""

    # demo mode (avatar_worker/modes/demo.py); wav / text / voice give the greeting
    reply: Literal["policy", "echo", "speak", "both"] = "policy"
    """What the demo answers an utterance with: the dialogue policy's answer to the recognised
    words (:mod:`avatar_worker.dialogue`), the user's own audio played back, a short spoken
    sentence about its length, or a spoken lead-in then the echo."""
    asr: Literal["whisper", "sphinx", "none"] = "whisper"
    """The demo's speech recogniser (:mod:`avatar_worker.asr`); ``none``: the transcript shows how
    long the user spoke."""
    vad_start_ms: int = 150
    vad_end_ms: int = 600
    max_utterance_s: float = 10.0
    barge_in_ms: int = 500
    """A user who speaks this long over the avatar stops it; 0: never."""
    max_replies: int | None = None
    """Stop after this many replies (the driver is done: with ``exit_when_done`` the run ends)."""

    # replay mode (avatar_worker/modes/replay.py); repeat_every_s repeats it
    replay_dir: Path | None = None

    # agents mode (avatar_worker/modes/agents.py): the LiveKit Agents avatar contract
    agent_identity: str | None = None
    """The agent the worker publishes for: the only sender of ``lk.audio_stream`` and caller of
    ``lk.clear_buffer`` it accepts; also set as the ``lk.publish_on_behalf`` attribute."""

    def __post_init__(self) -> None:
        if self.mode not in ("scripted", "speech", "demo", "replay", "agents"):
            raise ValueError(f"mode must be 'scripted', 'speech', 'demo', 'replay' or 'agents', got {self.mode!r}")
        self._check_demo_and_replay()
        self._check_agents()
        if self.frames < 1:
            raise ValueError("frames must be >= 1")
        if self.turns < 1:
            raise ValueError("turns must be >= 1")
        if self.leave_after is not None and not 1 <= self.leave_after:
            raise ValueError("leave_after must be >= 1")
        if self.leave_mode not in ("disconnect", "crash"):
            raise ValueError(f"leave_mode must be 'disconnect' or 'crash', got {self.leave_mode!r}")
        if self.compression not in (None, "gzip", "zlib"):
            raise ValueError(f"compression must be gzip or zlib, got {self.compression!r}")
        for name in ("lead_in_ms", "turn_gap_ms", "tail_ms", "republish_gap_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.exit_after_ms is not None and self.exit_after_ms <= 0:
            raise ValueError("exit_after_ms must be > 0")
        if self.repeat_every_s is not None and self.repeat_every_s <= 0:
            raise ValueError("repeat_every_s must be > 0")
        if self.wav is not None and self.text is not None:
            raise ValueError("give either wav or text, not both")
        if self.republish_after is not None and self.republish_after < 1:
            raise ValueError("republish_after must be >= 1")
        check_topic(self.data_topic)  # ControlError is a ValueError

    def _check_demo_and_replay(self) -> None:
        if (self.mode == "replay") != (self.replay_dir is not None):
            raise ValueError("replay mode needs a replay directory (--replay-dir), and only replay mode takes one")
        if self.mode == "demo" and self.repeat_every_s is not None:
            raise ValueError("demo mode greets each participant once and answers what they say: "
                             "it takes no repeat_every_s (--repeat-every-s)")
        if self.reply not in ("policy", "echo", "speak", "both"):
            raise ValueError(f"reply (--reply) must be 'policy', 'echo', 'speak' or 'both', got {self.reply!r}")
        if self.asr not in ("whisper", "sphinx", "none"):
            raise ValueError(f"asr (--asr) must be 'whisper', 'sphinx' or 'none', got {self.asr!r}")
        if self.mode == "demo" and self.reply == "policy" and self.asr == "none":
            raise ValueError("the dialogue policy (--reply policy) answers recognised words: it needs --asr "
                             "whisper or sphinx (or choose --reply echo, speak or both with --asr none)")
        if self.vad_start_ms < 10 or self.vad_end_ms < 10:
            raise ValueError("vad_start_ms and vad_end_ms must be >= 10")
        if not self.vad_start_ms / 1000 <= self.max_utterance_s <= 60:
            raise ValueError("max_utterance_s must be within vad_start_ms .. 60 s")
        if self.barge_in_ms < 0:
            raise ValueError("barge_in_ms must be >= 0")
        if self.max_replies is not None and self.max_replies < 1:
            raise ValueError("max_replies must be >= 1")

    def _check_agents(self) -> None:
        if (self.mode == "agents") != bool(self.agent_identity):
            raise ValueError("agents mode needs the agent's identity (--agent-identity), and only agents mode "
                             "takes one")
        if self.mode != "agents":
            return
        if self.agent_identity == self.livekit.identity:
            raise ValueError("the agent's identity must differ from the worker's")
        if self.agent_data or self.republish_after is not None:
            raise ValueError("agents mode takes no --agent-data (the agent reports its own state) "
                             "and no --republish-after")
        if self.repeat_every_s is not None or self.wav is not None or self.text is not None:
            raise ValueError("agents mode plays what the agent sends: no --wav, --text or --repeat-every-s")
        # livekit-agents: the agent's room I/O takes this participant's audio as its own speech
        attributes = {**self.livekit.attributes, PUBLISH_ON_BEHALF: self.agent_identity}
        if attributes != self.livekit.attributes:
            self.livekit = replace(self.livekit, attributes=attributes)
