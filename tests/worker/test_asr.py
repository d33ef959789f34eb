"""The recognisers (avatar_worker/asr.py) on real models and espeak-ng speech: the words come
out, the resampler keeps speech, the model loads from the wheel's folder without the network."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import jiwer
import numpy as np
import pytest

from avatar_worker.asr import ASR_RATE, SphinxRecognizer, WhisperRecognizer, make_recognizer, resample_to, words
from avatar_worker.audio import pcm as pcm_audio

SENTENCES = ("What time is it?", "What can you do?", "Thank you very much for your help.")


def spoken(text: str) -> bytes:
    return pcm_audio.synthesize(text)


@pytest.fixture(scope="module")
def whisper() -> WhisperRecognizer:
    return WhisperRecognizer()


def test_words() -> None:
    assert words("What's the TIME, Ava?") == ["what's", "the", "time", "ava"]
    assert words("  ") == []


def test_resample_keeps_a_tone_and_drops_what_is_above_nyquist() -> None:
    t = np.arange(48_000) / 48_000
    def level(freq: float) -> float:
        pcm = (np.sin(2 * np.pi * freq * t) * 16000).astype("<i2").tobytes()
        out = resample_to(pcm, 48_000)
        assert out.size == ASR_RATE and out.dtype == np.float32
        return float(np.sqrt(np.mean(out[1000:-1000] ** 2)))
    assert 0.3 < level(440.0) < 0.4  # 16000/32768/sqrt(2) = 0.345
    assert level(12_000.0) < 0.02  # would alias to 4 kHz without the low-pass
    assert resample_to(b"", 48_000).size == 0
    assert resample_to(np.zeros(22_050, "<i2").tobytes(), 22_050).size == 16_000


def test_whisper_hears_espeak_sentences(whisper: WhisperRecognizer) -> None:
    assert Path(whisper.model_path, "model.bin").is_file()
    hyps = [" ".join(words(whisper.transcribe(spoken(s), pcm_audio.SAMPLE_RATE).text)) for s in SENTENCES]
    refs = [" ".join(words(s)) for s in SENTENCES]
    assert jiwer.wer(refs, hyps) <= 0.2, list(zip(refs, hyps))
    silence = whisper.transcribe(bytes(2 * 48_000), pcm_audio.SAMPLE_RATE)
    assert len(words(silence.text)) <= 2 and silence.audio_s == 1.0


def test_sphinx_runs_and_returns_text() -> None:
    sphinx = make_recognizer("sphinx")
    assert isinstance(sphinx, SphinxRecognizer)
    result = sphinx.transcribe(spoken("What time is it?"), pcm_audio.SAMPLE_RATE)
    # pocketsphinx does poorly on espeak-ng's voice (docs/avatar-worker.md): it returns words, not these
    assert isinstance(result.text, str) and result.seconds > 0 and 1.0 < result.audio_s < 2.0
    assert sphinx.transcribe(b"", pcm_audio.SAMPLE_RATE).text == ""


def test_make_recognizer_names() -> None:
    assert make_recognizer("none") is None
    with pytest.raises(ValueError, match="asr must be one of whisper, sphinx, none"):
        make_recognizer("google")  # type: ignore[arg-type]


def test_whisper_loads_offline_from_the_wheel(tmp_path: Path) -> None:
    """In a fresh process with no proxy to anywhere and the hub's cache empty: it loads and hears."""
    code = ("from avatar_worker.asr import WhisperRecognizer; from avatar_worker.audio import pcm;"
            "r = WhisperRecognizer(); print(r.transcribe(pcm.synthesize('What can you do?'), 48000).text)")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY":
           "http://127.0.0.1:9", "NO_PROXY": ""}
    out = subprocess.run([os.sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert words(out.stdout) == ["what", "can", "you", "do"], out.stdout
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.bin"))


def test_one_sphinx_recogniser_from_two_threads() -> None:
    """Sessions of a thread-executor worker share one recogniser: concurrent calls give the same
    words as one after the other (pocketsphinx's decoder holds one utterance at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    sphinx = SphinxRecognizer()
    clips = [spoken(s) for s in SENTENCES[:2]]
    alone = [sphinx.transcribe(c, pcm_audio.SAMPLE_RATE).text for c in clips]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda c: sphinx.transcribe(c, pcm_audio.SAMPLE_RATE).text, clips * 2))
    assert together == alone * 2
