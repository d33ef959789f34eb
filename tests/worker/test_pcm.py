"""avatar_worker/audio/pcm.py: WAV, synthesis, frames, envelope, tones. No server, no network."""

from __future__ import annotations

import array
import math
import shutil
import wave
from pathlib import Path

import pytest

from avatar_worker.audio import pcm as audio


class TestAudio:
    def test_frame_geometry(self) -> None:
        assert audio.SAMPLES_PER_FRAME == 1920 and audio.BYTES_PER_FRAME == 3840

    def test_split_pads_the_last_frame(self) -> None:
        frames = audio.split_frames(b"\x01\x00" * 2000)
        assert [len(f) for f in frames] == [3840, 3840]
        assert frames[1][160:] == bytes(3840 - 160)

    def test_rms_and_envelope(self) -> None:
        loud, quiet = audio.tone(400.0, 0.5), audio.tone(400.0, 0.01)
        assert audio.rms(audio.SILENCE) == 0.0
        assert audio.rms(loud) == pytest.approx(0.5 / math.sqrt(2), rel=0.01)
        env = audio.envelope([audio.SILENCE, quiet, loud])
        assert env[0] == 0.0 and 0.0 < env[1] < env[2] <= 1.0

    def test_tone_is_continuous_across_frames(self) -> None:
        frame = audio.tone(400.0, 0.2)
        import array

        samples = array.array("h", frame * 2)
        jumps = max(abs(b - a) for a, b in zip(samples, samples[1:]))
        assert jumps < 0.2 * 32767 * 2 * math.pi * 400 / 48000 * 1.1
        with pytest.raises(ValueError):
            audio.tone(440.0)

    def test_load_wav_native_and_converted(self, tmp_path: Path) -> None:
        native = tmp_path / "native.wav"
        audio.write_wav(native, audio.tone() * 3)
        assert audio.load_wav(native) == audio.tone() * 3
        # a missing sox is a broken set-up (tools/bootstrap.py browser installs it), not a reason to skip
        assert shutil.which("sox") is not None, "sox is not installed: run `python3 tools/bootstrap.py browser`"
        other = tmp_path / "22k-stereo.wav"
        with wave.open(str(other), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(22050)
            w.writeframes(bytes(22050 * 4))  # one second of stereo silence
        pcm = audio.load_wav(other)
        assert abs(len(pcm) // 2 - 48000) < 10
        with pytest.raises(audio.AudioError):
            audio.load_wav(tmp_path / "missing.wav")

    def test_click_starts_loud_on_its_first_sample_then_is_silent(self) -> None:
        import array

        samples = array.array("h", audio.click(2000.0, 0.5, 20.0))
        assert len(samples) == audio.SAMPLES_PER_FRAME
        assert samples[0] == round(0.5 * 32767)  # the onset a listener times is sample 0
        assert max(abs(x) for x in samples[:960]) > 0.49 * 32767
        assert all(x == 0 for x in samples[960:])
        with pytest.raises(ValueError):
            audio.click(duration_ms=50)

    def test_synthesize(self) -> None:
        assert shutil.which("espeak-ng") is not None, (
            "espeak-ng is not installed: run `python3 tools/bootstrap.py browser` (a broken set-up, not a reason to skip)")
        pcm = audio.synthesize("Hello there")
        seconds = len(pcm) / 2 / audio.SAMPLE_RATE
        assert 0.4 < seconds < 5
        assert max(audio.envelope(audio.split_frames(pcm))) > 0.5
