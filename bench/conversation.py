#!/usr/bin/env python3
"""Conversation benchmark: the demo agent's recognisers, and a spoken conversation timed by the
visitor. Prints JSON.

    .venv/bin/python bench/conversation.py                  # both parts, ~5 minutes
    .venv/bin/python bench/conversation.py --quick          # fewer sentences and visitors, ~1 minute
    .venv/bin/python bench/conversation.py --part asr       # only the recogniser comparison (no server)
    .venv/bin/python bench/conversation.py --out bench/out/conversation.json

**asr**: each recogniser of ``avatar_worker/asr.py`` (``whisper``, ``sphinx``) on the test
sentences, synthesised with espeak-ng at run time in several voices, clean and with white noise
at 20 dB SNR (``sox``): word error rate (jiwer, over lower-case words without punctuation),
recognition time per utterance (median, p95: the call the demo makes, 48 kHz in), load time and
the model's size on disk. The repository has no recorded (human) speech, and none is downloaded:
these are synthetic voices only.

**conversation**: a loopback LiveKit server, the avatar worker as ``serve.py`` runs it
(``--mode demo``, Whisper and the dialogue policy, ``--realtime``), and ``--visitors`` Python
participants (tools/talker.py) joining one after the other, each asking the conversation
sentences into its microphone. On the visitor's clock (``time.time()`` in this process):

* ``greeting_latency_ms``: the room connection is up → the first voiced avatar audio frame;
* ``reply_latency_ms``: the end of the visitor's voice (the last loud sample of the utterance
  left its microphone) → the first voiced avatar audio frame of the answer (p50, p95);
* ``recognition_ms``: the worker's own time in the recogniser per utterance (its summary);
* ``wer``: of the final user transcripts against the sentences said.

A browser adds its audio playout delay (about 70-100 ms in bench/e2e.py) to what this visitor
hears; the issue's targets: greeting <= 1000 ms, reply <= 1200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as bench/conversation.py: the repository is not on the path

TEST_SENTENCES = (
    "What is the weather like in Paris today?",
    "Hello avatar, can you hear me?",
    "What is your name?",
    "What time is it?",
    "What can you do?",
    "Goodbye, see you later.",
    "I would like to book a table for two people tomorrow evening.",
    "The quick brown fox jumps over the lazy dog.",
    "Please tell me a story about the sea.",
    "Thank you very much for your help.",
)
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-us+f3")
CONVERSATION = ("What time is it?", "What can you do?", "What is the weather like in Paris today?")
TARGETS = {"greeting_latency_ms": 1000.0, "reply_latency_p95_ms": 1200.0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def spread(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(statistics.median(values), 1), "p95": round(percentile(values, 95), 1),
            "max": round(max(values), 1)}


def with_noise(pcm: bytes, snr_db: float, seed: int) -> bytes:
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    voiced = samples[np.abs(samples) > 300]
    signal_rms = float(np.sqrt(np.mean(voiced ** 2))) if voiced.size else 1000.0
    noise = np.random.default_rng(seed).normal(0.0, signal_rms / 10 ** (snr_db / 20), samples.size)
    return np.clip(np.rint(samples + noise), -32768, 32767).astype("<i2").tobytes()


def folder_mb(path: str) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6, 1)


def bench_recognizers(sentences: tuple[str, ...], voices: tuple[str, ...]) -> dict:
    import jiwer

    from avatar_worker.asr import make_recognizer, words
    from avatar_worker.audio import pcm as pcm_audio

    clips = []
    for v, voice in enumerate(voices):
        for s, text in enumerate(sentences):
            pcm = pcm_audio.synthesize(text, voice=voice)
            clips.append(("clean", voice, text, pcm))
            clips.append(("noise 20 dB", voice, text, with_noise(pcm, 20.0, seed=100 * v + s)))
    out = {}
    for name in ("whisper", "sphinx"):
        started = time.perf_counter()
        recognizer = make_recognizer(name)  # type: ignore[arg-type]
        load_s = time.perf_counter() - started
        assert recognizer is not None
        if name == "whisper":
            size = folder_mb(recognizer.model_path)  # type: ignore[attr-defined]
        else:
            import pocketsphinx

            size = folder_mb(os.path.join(os.path.dirname(pocketsphinx.__file__), "model", "en-us"))
        recognizer.transcribe(bytes(48_000), 48_000)  # the first call warms up
        rows: dict[str, dict[str, list]] = {}
        for condition, voice, text, pcm in clips:
            result = recognizer.transcribe(pcm, 48_000)
            row = rows.setdefault(condition, {"refs": [], "hyps": [], "ms": []})
            row["refs"].append(" ".join(words(text)))
            row["hyps"].append(" ".join(words(result.text)))
            row["ms"].append(result.seconds * 1000)
        entry = {"load_s": round(load_s, 2), "model_mb": size}
        for condition, row in rows.items():
            entry[condition] = {"wer": round(jiwer.wer(row["refs"], row["hyps"]), 3),
                                "utterances": len(row["refs"]), "ms_per_utterance": spread(row["ms"])}
        entry["examples"] = [f"{r!r} -> {h!r}" for r, h in zip(rows["clean"]["refs"][:3], rows["clean"]["hyps"][:3])]
        out[name] = entry
        print(f"{name}: load {load_s:.2f} s, clean WER {entry['clean']['wer']}, noisy WER "
              f"{entry['noise 20 dB']['wer']}, {entry['clean']['ms_per_utterance']['p50']} ms per utterance",
              file=sys.stderr)
    return out


async def visit(server, room: str, identity: str, spoken: list[bytes]) -> dict:
    from tools.talker import Talker

    talker = Talker(server.url, server.token(identity, room, sources=["microphone"]))
    await talker.connect()
    try:
        await talker.wait_for(lambda: talker.statuses()[-2:] == ["speaking", "listening"], 30, "the greeting")
        greeting = talker.first_voice_after(talker.joined) - talker.joined
        replies = []
        for pcm in spoken:
            await asyncio.sleep(0.5)
            before = talker.statuses().count("speaking")
            ended = await talker.say(pcm)
            await talker.wait_for(lambda: talker.statuses().count("speaking") > before
                                  and talker.statuses()[-1] == "listening", 30, "an answer")
            replies.append(talker.first_voice_after(ended) - ended)
        finals = [c["text"] for c in talker.chunks("user") if c["final"]]
        return {"greeting_s": greeting, "replies_s": replies, "heard": finals}
    finally:
        await talker.close()


def bench_conversation(visitors: int) -> dict:
    import jiwer

    from avatar_worker.asr import words
    from avatar_worker.audio import pcm as pcm_audio
    from tools.devstack import LiveKitServer

    spoken = [pcm_audio.synthesize(text) for text in CONVERSATION]
    with tempfile.TemporaryDirectory(prefix="bench-conv-") as tmp, LiveKitServer(Path(tmp) / "lk") as server:
        room = f"bench-{uuid.uuid4().hex[:8]}"
        env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key,
                   LIVEKIT_API_SECRET=server.api_secret)
        log_path = Path(tmp) / "worker.log"
        worker = subprocess.Popen([sys.executable, "-m", "avatar_worker", "--room", room, "--mode", "demo", "--realtime"],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log_path.open("w"), text=True)
        try:
            deadline = time.monotonic() + 60
            while not ("joined room" in log_path.read_text() and "recogniser ready" in log_path.read_text()):
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise RuntimeError(f"the worker did not get ready:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            runs = [asyncio.run(visit(server, room, f"visitor-{i}", spoken)) for i in range(visitors)]
        finally:
            worker.send_signal(signal.SIGTERM)
            out, _ = worker.communicate(timeout=30)
        summary = json.loads([line for line in out.splitlines() if line.strip()][-1])
    refs = [" ".join(words(text)) for _ in runs for text in CONVERSATION]
    hyps = [" ".join(words(text)) for run in runs for text in run["heard"]]
    greetings = [run["greeting_s"] * 1000 for run in runs]
    replies = [r * 1000 for run in runs for r in run["replies_s"]]
    return {
        "visitors": visitors,
        "sentences": list(CONVERSATION),
        "greeting_latency_ms": {"median": round(statistics.median(greetings), 1), "runs": [round(g, 1) for g in greetings]},
        "reply_latency_ms": spread(replies),
        "recognition_ms": spread(summary["demo"]["recognition_ms"]),
        "worker_reply_latency_ms": spread(summary["demo"]["reply_latency_ms"]),
        "wer": round(jiwer.wer(refs, hyps), 3) if len(refs) == len(hyps) else None,
        "heard": runs[0]["heard"],
        "targets": TARGETS,
        "targets_met": {"greeting": statistics.median(greetings) <= TARGETS["greeting_latency_ms"],
                        "reply_p95": percentile(replies, 95) <= TARGETS["reply_latency_p95_ms"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "asr", "conversation"), default="all")
    parser.add_argument("--quick", action="store_true", help="4 sentences in 2 voices, 2 visitors")
    parser.add_argument("--visitors", type=int, default=None, help="visitors in the conversation part (default 5)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    report: dict = {"cpus": os.cpu_count()}
    if args.part in ("all", "asr"):
        sentences, voices = (TEST_SENTENCES[:4], VOICES[:2]) if args.quick else (TEST_SENTENCES, VOICES)
        report["asr"] = bench_recognizers(sentences, voices)
    if args.part in ("all", "conversation"):
        report["conversation"] = bench_conversation(args.visitors or (2 if args.quick else 5))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
