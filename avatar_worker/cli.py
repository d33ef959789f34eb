"""``python -m avatar_worker``: the command line.

    python -m avatar_worker --room demo                                 # speak a greeting once
    python -m avatar_worker --room demo --text "Hi there" --repeat-every-s 10
    python -m avatar_worker --room bench --mode scripted --frames 500 --wait-for-participant \\
        --loss 0.05 --seed 7 --send-log sent.jsonl --exit-when-done
    python -m avatar_worker --room demo --mode demo --reply both              # greets, answers (demo.py)
    python -m avatar_worker --room demo --mode replay --replay-dir rec/       # a recording (REPLAY.md)
    python -m avatar_worker --room demo --mode agents --agent-identity agent-1  # LiveKit Agents (agents.py)
    python -m avatar_worker --dispatch avatarplayer-avatar --mode demo       # one session per LiveKit job
    python -m avatar_worker --room demo --text "Hello there" --agent-data --audio-report heard.jsonl \\
        --data-carrier --republish-after 50 --send-log sent.jsonl

The last one also sends every motion packet as a lossy data message on ``avatarplayer.motion``
to everyone else (without ``--data-carrier`` only to viewers who ask, see
:mod:`avatar_worker.transport.carrier`), agent status and transcript messages on ``avatarplayer.agent``
(:mod:`avatar_worker.agent_data`), writes one line per second of every other participant's
audio to ``heard.jsonl`` (:mod:`avatar_worker.audio.report`), and swaps the motion track for a
fresh one after 50 frames of the first turn (:mod:`avatar_worker.transport.republish`).

Connection settings come from ``--url/--api-key`` or ``LIVEKIT_URL``, ``LIVEKIT_API_KEY``; the API
secret only from the environment (``LIVEKIT_API_SECRET``) or a file (``--api-secret-file PATH``,
its first line): a command line is visible to every local user (``ps``, ``/proc/PID/cmdline``), so
``--api-secret`` is refused (exit 2, saying what to use instead). The secret is removed from the
worker's own environment once read, so the programs it runs (sox, espeak-ng) do not inherit it.
Logs go to stderr; the last line on stdout is a JSON
summary. Exit status: 0 after a normal or signalled stop, 1 if the room could not be joined, 2 for
bad arguments, 3 if shutdown got stuck before the summary was made.

Ending is certain: once the worker winds down, each step has a time limit, and if the process is
still alive :data:`SHUTDOWN_GRACE_S` later it prints every thread's stack to stderr and ends
(:class:`ExitGuard`). ``kill -USR1 <pid>`` prints the same stacks from a running worker.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import signal
import sys
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .audio.pcm import AudioError
from .transport.carrier import DEFAULT_DATA_TOPIC
from .config import WorkerConfig
from .dispatch import AGENT_IDENTITY_PLACEHOLDER, DispatchOptions
from .transport.publisher import LiveKitSettings, PublisherError
from .modes.replay import ReplayError
from .modes.scripted import SCRIPT_AUDIO, Injection

__all__ = ["build_parser", "config_from_args", "main"]


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability within 0..1")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


SECRET_ENV = "LIVEKIT_API_SECRET"

API_SECRET_REFUSED = (
    "--api-secret is not accepted: a secret on the command line is visible to every user of this "
    "machine (ps, /proc/PID/cmdline). Put it in the environment (LIVEKIT_API_SECRET) or in a file "
    "readable only by you (--api-secret-file PATH)")


class _RefuseSecret(argparse.Action):
    """``--api-secret``: refused with a message saying what to use instead. It stays an option
    of its own so that argparse never takes it for an abbreviation of ``--api-secret-file``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(API_SECRET_REFUSED)


def read_secret_file(path: Path) -> tuple[str, str | None]:
    """The secret in ``path`` (its first line, stripped) and a warning when others may read the
    file. Raises ValueError if it cannot be read or is empty."""
    try:
        text = path.read_text()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--api-secret-file {path}: {exc}") from exc
    lines = text.splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise ValueError(f"--api-secret-file {path}: the file is empty")
    warning = None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warning = f"{path} may be read by other users (mode {stat.filemode(mode)}): chmod 600 it"
    return secret, warning


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m avatar_worker`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m avatar_worker",
        description="Publish an avatar's speech audio and motion track into a LiveKit room.",
    )
    conn = p.add_argument_group("connection")
    conn.add_argument("--url", default=os.environ.get("LIVEKIT_URL"), help="server URL [$LIVEKIT_URL]")
    conn.add_argument("--api-key", default=os.environ.get("LIVEKIT_API_KEY"), help="[$LIVEKIT_API_KEY]")
    conn.add_argument("--api-secret-file", type=Path, default=None, metavar="PATH",
                      help="read the API secret from the first line of this file (default: $LIVEKIT_API_SECRET; "
                           "never on the command line)")
    conn.add_argument("--api-secret", nargs="?", action=_RefuseSecret, help=argparse.SUPPRESS)
    conn.add_argument("--room", default=None, help="the room to join (or --dispatch)")
    conn.add_argument("--dispatch", metavar="AGENT_NAME", default=None,
                      help="instead of joining --room, register with the server as the LiveKit agent "
                           "AGENT_NAME and run one session per job LiveKit dispatches, each in its own "
                           "process, in the job's room (avatar_worker/dispatch.py)")
    conn.add_argument("--idle-processes", type=_non_negative_int, default=1,
                      help="--dispatch: job processes kept warm (default: %(default)s)")
    conn.add_argument("--max-sessions", type=_positive_int, default=8,
                      help="--dispatch: the sessions this worker takes at once; its load, as LiveKit sees it, "
                           "is running sessions / max-sessions (default: %(default)s)")
    conn.add_argument("--load-threshold", type=float, default=1.0,
                      help="--dispatch: at this load LiveKit sends this worker no more jobs; inf: never full "
                           "(default: %(default)s, i.e. with --max-sessions running)")
    conn.add_argument("--job-executor", choices=("process", "thread"), default="process",
                      help="--dispatch: a process per session (isolated) or a thread per session")
    conn.add_argument("--identity", default="avatar-worker")
    conn.add_argument("--name", default=None, help="display name (default: the identity)")
    conn.add_argument("--motion-track-name", default="avatar-motion")
    conn.add_argument("--audio-track-name", default="avatar-audio")

    run = p.add_argument_group("run")
    run.add_argument("--mode", choices=("speech", "scripted", "demo", "replay", "agents"), default="speech",
                     help="speech: say --text/--wav; scripted: test frames; demo: greet and answer what "
                          "participants say (avatar_worker/modes/demo.py); replay: play a recording (--replay-dir); "
                          "agents: the LiveKit Agents avatar contract (--agent-identity; avatar_worker/modes/agents.py)")
    run.add_argument("--wait-for-participant", action="store_true",
                     help="start the first turn only once someone else joined and subscribed")
    run.add_argument("--lead-in-ms", type=_non_negative_int, default=1500,
                     help="idle heartbeats after the participant arrived, before the first turn (not in demo "
                          "mode: it greets once the visitor subscribed)")
    run.add_argument("--no-transition", dest="transition", action="store_false",
                     help="start turns without a TRANSITION packet")
    run.add_argument("--redundant", action="store_true", help="REDUNDANT packets (carry the previous two frames)")
    run.add_argument("--compress", choices=("gzip", "zlib"), default=None)
    run.add_argument("--send-log", type=Path, default=None, help="JSON lines: one per packet sent or dropped")
    run.add_argument("--exit-when-done", action="store_true", help="exit after the script / speech")
    run.add_argument("--exit-after-ms", type=_positive_int, default=None)
    run.add_argument("--tail-ms", type=_non_negative_int, default=500,
                     help="idle heartbeats after the last turn before --exit-when-done exits")
    run.add_argument("--realtime", action="store_true",
                     help="pace from the SCHED_RR real-time class (needs CAP_SYS_NICE); steadier on busy hosts")
    run.add_argument("--seed", type=int, default=0, help="seed for injected faults and generated motion")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    extra = p.add_argument_group("data messages, audio report, republishing")
    extra.add_argument("--data-carrier", action="store_true",
                       help="also send every motion packet as a lossy data message to every other participant "
                            "from the start (viewers can ask for it anyway on topic avatarplayer.control)")
    extra.add_argument("--data-topic", default=DEFAULT_DATA_TOPIC, help="data topic of --data-carrier")
    extra.add_argument("--audio-report", type=Path, default=None,
                       help="JSON lines: per-second RMS/peak of every other participant's audio track")
    extra.add_argument("--agent-data", action="store_true",
                       help="agent_status and transcript_chunk data messages (topic avatarplayer.agent) per turn")
    extra.add_argument("--republish-after", type=_positive_int, default=None,
                       help="replace the motion track with a fresh one after N frames of the first turn")
    extra.add_argument("--republish-gap-ms", type=_non_negative_int, default=300,
                       help="pause between unpublishing the old motion track and publishing the new one, so "
                            "viewers see the old one go before the new one comes")

    script = p.add_argument_group("scripted mode")
    script.add_argument("--frames", type=_positive_int, default=500, help="frames per turn")
    script.add_argument("--turns", type=_positive_int, default=1)
    script.add_argument("--turn-gap-ms", type=_non_negative_int, default=1000)
    script.add_argument("--loss", type=_probability, default=0.0)
    script.add_argument("--reorder", type=_probability, default=0.0)
    script.add_argument("--duplicate", type=_probability, default=0.0)
    script.add_argument("--bad", type=_probability, default=0.0, help="malformed packets in valid carrier frames")
    script.add_argument("--leave-after", type=_positive_int, default=None,
                        help="disconnect abruptly after N frames of the last turn")
    script.add_argument("--leave-mode", choices=("disconnect", "crash"), default="disconnect",
                        help="how --leave-after leaves: disconnect at once, or exit without leaving")
    script.add_argument("--script-audio", choices=SCRIPT_AUDIO, default="tone",
                        help="tone: a quiet 400 Hz tone; pulse: a click at the start of every 25th frame's "
                             "audio (the A/V sync pulse: avatar_worker/modes/scripted.py)")

    speech = p.add_argument_group("speech mode")
    source = speech.add_mutually_exclusive_group()
    source.add_argument("--wav", type=Path, default=None, help="any WAV sox can read")
    source.add_argument("--text", default=None, help="synthesized offline with espeak-ng (demo mode: the greeting)")
    speech.add_argument("--voice", default=None, help="espeak-ng voice, e.g. en-us")
    speech.add_argument("--repeat-every-s", type=float, default=None)
    speech.add_argument("--avatar-id", default="")

    demo = p.add_argument_group("demo mode (--text / --wav / --voice: the greeting)")
    demo.add_argument("--reply", choices=("policy", "echo", "speak", "both"), default="policy",
                      help="answer an utterance with the dialogue policy's answer to the recognised words, "
                           "the user's own audio played back, a short espeak-ng sentence, or a spoken "
                           "lead-in then the echo (default: %(default)s)")
    demo.add_argument("--asr", choices=("whisper", "sphinx", "none"), default="whisper",
                      help="offline speech recognition of what users say: faster-whisper tiny.en, "
                           "pocketsphinx, or none (the transcript shows how long they spoke) "
                           "(default: %(default)s)")
    demo.add_argument("--vad-start-ms", type=_positive_int, default=150,
                      help="loud audio that starts an utterance (default: %(default)s)")
    demo.add_argument("--vad-end-ms", type=_positive_int, default=600,
                      help="silence that ends an utterance (default: %(default)s)")
    demo.add_argument("--max-utterance-s", type=float, default=10.0,
                      help="longer utterances are cut here (default: %(default)s)")
    demo.add_argument("--barge-in-ms", type=_non_negative_int, default=500,
                      help="a user speaking this long over the avatar stops it; 0: never (default: %(default)s)")
    demo.add_argument("--max-replies", type=_positive_int, default=None,
                      help="stop answering after N replies (with --exit-when-done: exit)")

    agents = p.add_argument_group("agents mode (a LiveKit Agents voice pipeline drives the avatar)")
    agents.add_argument("--agent-identity", default=None,
                        help="the agent's participant identity: sets lk.publish_on_behalf, and only this "
                             "participant may send lk.audio_stream and call lk.clear_buffer")

    replay = p.add_argument_group("replay mode (--repeat-every-s repeats it)")
    replay.add_argument("--replay-dir", type=Path, default=None,
                        help="a recording: messages.bin + audio.wav (avatar_worker/REPLAY.md; "
                             "python -m avatar_worker.record makes one)")
    return p


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    """Turn parsed arguments into a :class:`WorkerConfig` (raises ValueError for bad combos). The
    API secret comes from ``--api-secret-file`` or else ``$LIVEKIT_API_SECRET``."""
    secret = read_secret_file(args.api_secret_file)[0] if args.api_secret_file else os.environ.get(SECRET_ENV)
    missing = [flag for flag, value in (("--url", args.url), ("--api-key", args.api_key),
                                        (f"${SECRET_ENV} or --api-secret-file", secret)) if not value]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or the LIVEKIT_* environment variables)")
    dispatched = getattr(args, "dispatch", None)
    if bool(args.room) == bool(dispatched):
        raise ValueError("give either --room or --dispatch")
    agent_identity = args.agent_identity
    if dispatched and args.mode == "agents" and not agent_identity:
        agent_identity = AGENT_IDENTITY_PLACEHOLDER  # each job's metadata names its agent
    settings = LiveKitSettings(
        url=args.url, api_key=args.api_key, api_secret=secret, room=args.room or "(dispatched)",
        identity=args.identity, name=args.name, video_track_name=args.motion_track_name,
        audio_track_name=args.audio_track_name,
    )
    return WorkerConfig(
        livekit=settings,
        mode=args.mode,
        wait_for_participant=args.wait_for_participant,
        lead_in_ms=args.lead_in_ms,
        transition=args.transition,
        redundant=args.redundant,
        compression=args.compress,
        turn_gap_ms=args.turn_gap_ms,
        tail_ms=args.tail_ms,
        exit_when_done=args.exit_when_done,
        exit_after_ms=args.exit_after_ms,
        send_log=args.send_log,
        seed=args.seed,
        realtime=args.realtime,
        data_carrier=args.data_carrier,
        data_topic=args.data_topic,
        audio_report=args.audio_report,
        agent_data=args.agent_data,
        republish_after=args.republish_after,
        republish_gap_ms=args.republish_gap_ms,
        frames=args.frames,
        turns=args.turns,
        injection=Injection(args.loss, args.reorder, args.duplicate, args.bad, seed=args.seed),
        leave_after=args.leave_after,
        leave_mode=args.leave_mode,
        script_audio=args.script_audio,
        wav=args.wav,
        text=args.text,
        voice=args.voice,
        repeat_every_s=args.repeat_every_s,
        avatar_id=args.avatar_id,
        reply=args.reply,
        asr=args.asr,
        vad_start_ms=args.vad_start_ms,
        vad_end_ms=args.vad_end_ms,
        max_utterance_s=args.max_utterance_s,
        barge_in_ms=args.barge_in_ms,
        max_replies=args.max_replies,
        replay_dir=args.replay_dir,
        agent_identity=agent_identity,
    )


SHUTDOWN_GRACE_S = 25.0
"""Once the worker starts to wind down, the process ends within this long, whatever is stuck."""


class ExitGuard:
    """Makes the end of the process certain. Every step of the shutdown has its own time limit,
    but ``asyncio.run`` still waits without one for tasks it cancels and for its thread pool, and a
    task inside the native SDK need not honour a cancel. Armed when shutdown begins: if the process
    is still alive ``grace_s`` later, it dumps every thread's stack to stderr (what is stuck),
    prints the summary if there is one, and ends the process."""

    def __init__(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        self.grace_s = grace_s
        self.summary: dict[str, Any] | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._printed = False

    def arm(self) -> None:
        """Start the countdown (once): the process ends when it runs out."""
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(self.grace_s, self._fire)
                self._timer.daemon = True
                self._timer.start()

    def print_summary(self, summary: dict[str, Any]) -> None:
        """Print the summary line once (the guard may get there first)."""
        with self._lock:
            if self._printed:
                return
            self._printed = True
        print(json.dumps(summary), flush=True)

    def _fire(self) -> None:
        logging.getLogger("avatar_worker").error(
            "shutdown did not finish within %.0f s: thread stacks follow, then the process ends", self.grace_s)
        faulthandler.dump_traceback(all_threads=True)
        if self.summary is not None:
            self.print_summary(self.summary)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if self.summary is not None else 3)


async def _main(config: WorkerConfig, guard: ExitGuard | None = None) -> dict[str, Any]:
    from .app import run  # imports the LiveKit native library: only once arguments are fine

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        summary = await run(config, stop=stop, on_shutdown=guard.arm if guard is not None else None)
        if guard is not None:
            guard.summary = summary
        return summary
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse, run, print the summary; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        dispatch_options = DispatchOptions(args.dispatch or "-", args.idle_processes, args.load_threshold,
                                           args.job_executor, args.max_sessions)
        secret_warning = read_secret_file(args.api_secret_file)[1] if args.api_secret_file else None
    except ValueError as exc:
        parser.error(str(exc))
    # read: the programs the worker runs (sox, espeak-ng) need not inherit it
    os.environ.pop(SECRET_ENV, None)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how a hung worker explains itself
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # the SDK logs every FFI event at debug; keep it at our level or quieter
    logging.getLogger("livekit").setLevel(max(logging.INFO, getattr(logging, args.log_level.upper())))
    if secret_warning:
        logging.getLogger("avatar_worker").warning("%s", secret_warning)
    if args.dispatch:
        from .dispatch import serve

        return serve(config, dispatch_options)
    try:
        guard = ExitGuard()
        summary = asyncio.run(_main(config, guard))
    except PublisherError as exc:
        logging.getLogger("avatar_worker").error("%s", exc)
        print(json.dumps({"event": "summary", "outcome": "join-failed", "error": str(exc)}), flush=True)
        return 1
    except AudioError as exc:
        logging.getLogger("avatar_worker").error("%s", exc)
        print(json.dumps({"event": "summary", "outcome": "audio-failed", "error": str(exc)}), flush=True)
        return 1
    except ReplayError as exc:
        logging.getLogger("avatar_worker").error("%s", exc)
        print(json.dumps({"event": "summary", "outcome": "replay-failed", "error": str(exc)}), flush=True)
        return 1
    guard.print_summary(summary)
    if summary.get("outcome") == "crashed":
        # no interpreter shutdown: the native SDK would close its connections politely
        sys.stderr.flush()
        os._exit(0)
    return 0
