"""``python -m avatar_worker.record``: write a replay recording from the worker's own generator.

    python -m avatar_worker.record --text "Hello there" --out rec/            # espeak-ng
    python -m avatar_worker.record --wav speech.wav --out rec/ --seed 3
    python -m avatar_worker.record --text "Hi" --frames 50 --out rec/          # exactly 50 frames

Writes ``rec/messages.bin`` and ``rec/audio.wav`` in the format of :mod:`avatar_worker.modes.replay`
(see also ``avatar_worker/REPLAY.md``): the motion speech mode would generate for that audio
(:class:`avatar_worker.motion_gen.MotionGenerator` with ``--seed``, so the same audio and seed
give the same bytes), and the audio cut into whole 40 ms frames at 48 kHz. ``--frames`` cuts the
speech or pads it with silence to that many frames. Prints one JSON line: ``{"out", "frames",
"bytes", "duration_s", "sha256"}`` (``sha256`` of ``messages.bin``). Exit status: 0, 1 when the
audio cannot be read or synthesized, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .audio.pcm import SAMPLE_RATE, AudioError
from .motion_gen import MotionGenerator
from .modes.replay import MESSAGES_FILE, ReplayError, speech_messages, write_recording
from .modes.speech import load_speech

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m avatar_worker.record`` argument parser."""
    p = argparse.ArgumentParser(prog="python -m avatar_worker.record",
                                description="Write a replay recording (messages.bin + audio.wav) from the "
                                            "worker's speech-driven motion generator.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="synthesized offline with espeak-ng")
    source.add_argument("--wav", type=Path, help="any WAV sox can read")
    p.add_argument("--out", type=Path, required=True, help="the recording directory (created if needed)")
    p.add_argument("--voice", default=None, help="espeak-ng voice, e.g. en-us")
    p.add_argument("--seed", type=int, default=0, help="seed of the motion generator (blinks, gaze, sway)")
    p.add_argument("--frames", type=_positive_int, default=None,
                   help="exactly this many 40 ms frames (cut, or padded with silence)")
    p.add_argument("--req-id", default="replay", help="req_id in every Message")
    p.add_argument("--avatar-id", default="", help="avatar_id in every Message")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Write a recording (see the module docstring); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        speech = load_speech(wav=args.wav, text=args.text, voice=args.voice)
    except AudioError as exc:
        print(f"record: {exc}", file=sys.stderr)
        return 1
    messages, pcm = speech_messages(speech, MotionGenerator(args.seed), frames=args.frames,
                                    req_id=args.req_id, avatar_id=args.avatar_id)
    try:
        out = write_recording(args.out, messages, pcm)
    except (OSError, ReplayError) as exc:
        print(f"record: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    data = (out / MESSAGES_FILE).read_bytes()
    print(json.dumps({"out": str(out), "frames": len(messages), "bytes": len(data),
                      "duration_s": round(len(pcm) / 2 / SAMPLE_RATE, 3),
                      "sha256": hashlib.sha256(data).hexdigest()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
