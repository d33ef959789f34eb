"""The demo's voice-activity detector on synthetic PCM: tone bursts ("speech") over noise."""

from __future__ import annotations

import array
import math
import random

import pytest

from avatar_worker.audio import pcm as pcm_audio
from avatar_worker.audio.vad import SpeechStarted, Utterance, VadSettings, VoiceActivityDetector, level_dbfs

RATE = 48_000


def pcm(*segments: tuple[float, float | None, float], seed: int = 1, wobble: float = 0.25) -> bytes:
    """Concatenated segments of ``(seconds, tone_dbfs or None, noise_dbfs)``: a 220 Hz tone with
    a 3 Hz "syllable" wobble of its amplitude (``1 - wobble .. 1 + wobble`` times ``tone_dbfs``
    as a sine's RMS) over Gaussian noise (RMS at ``noise_dbfs``)."""
    rng = random.Random(seed)
    out = array.array("h")
    t0 = 0
    for seconds, tone_db, noise_db in segments:
        n = round(seconds * RATE)
        noise = 32768 * 10 ** (noise_db / 20)
        tone = 32768 * 10 ** (tone_db / 20) * math.sqrt(2) if tone_db is not None else 0.0
        for i in range(n):
            t = (t0 + i) / RATE
            value = rng.gauss(0.0, noise)
            if tone:
                value += tone * math.sin(2 * math.pi * 220 * t) * (1 + wobble * math.sin(2 * math.pi * 3 * t))
            out.append(max(-32768, min(32767, int(value))))
        t0 += n
    return out.tobytes()


def run(data: bytes, settings: VadSettings | None = None, chunk: int = 960) -> list[SpeechStarted | Utterance]:
    vad = VoiceActivityDetector(settings)
    events = []
    for start in range(0, len(data), chunk):
        events += vad.feed(data[start:start + chunk])
    return events


def utterances(events) -> list[Utterance]:
    return [e for e in events if isinstance(e, Utterance)]


QUIET = -65.0
VOICE = -22.0


def test_level_dbfs() -> None:
    full = array.array("h", [32767, -32767] * 240)
    assert level_dbfs(full) == pytest.approx(0.0, abs=0.01)
    assert level_dbfs(array.array("h", [0] * 480)) == -100.0
    assert level_dbfs(array.array("h")) == -100.0
    half = array.array("h", [16384, -16384] * 240)
    assert level_dbfs(half) == pytest.approx(-6.02, abs=0.01)


def test_one_utterance_with_onset_end_and_audio() -> None:
    events = run(pcm((1.0, None, QUIET), (1.0, VOICE, QUIET), (1.5, None, QUIET)))
    assert [e.kind for e in events] == ["start", "utterance"]
    start, utt = events
    assert start.onset_s == pytest.approx(1.0, abs=0.02)
    assert start.at_s == pytest.approx(1.15, abs=0.02)  # 150 ms of loud audio
    assert utt.reason == "silence"
    assert utt.onset_s == pytest.approx(1.0, abs=0.02) and utt.end_s == pytest.approx(2.0, abs=0.02)
    assert utt.duration_s == pytest.approx(1.0, abs=0.03)
    assert utt.at_s == pytest.approx(2.6, abs=0.02)  # 600 ms of silence
    # 200 ms pre-roll + the speech + 200 ms tail, whole 10 ms blocks
    assert utt.audio_s == pytest.approx(1.4, abs=0.02)
    assert len(utt.pcm) % 960 == 0


def test_the_utterance_audio_is_the_input() -> None:
    data = pcm((0.6, None, QUIET), (0.5, VOICE, QUIET), (1.0, None, QUIET))
    (utt,) = utterances(run(data, chunk=777))
    first = round((utt.onset_s - 0.2) * RATE) * 2
    assert data[first:first + len(utt.pcm)] == utt.pcm


def test_a_short_blip_is_not_an_utterance() -> None:
    events = run(pcm((0.5, None, QUIET), (0.1, VOICE, QUIET), (1.0, None, QUIET)))
    assert events == []


def test_pauses_shorter_than_the_end_time_keep_one_utterance() -> None:
    one = run(pcm((0.5, None, QUIET), (0.6, VOICE, QUIET), (0.3, None, QUIET), (0.6, VOICE, QUIET),
                  (1.0, None, QUIET)))
    assert len(utterances(one)) == 1 and utterances(one)[0].duration_s == pytest.approx(1.5, abs=0.03)
    two = run(pcm((0.5, None, QUIET), (0.6, VOICE, QUIET), (0.8, None, QUIET), (0.6, VOICE, QUIET),
                  (1.0, None, QUIET)))
    assert [round(u.duration_s, 1) for u in utterances(two)] == [0.6, 0.6]
    assert [e.kind for e in two] == ["start", "utterance", "start", "utterance"]


def test_chunk_size_does_not_matter() -> None:
    data = pcm((0.5, None, QUIET), (0.7, VOICE, QUIET), (0.9, None, QUIET))
    reference = run(data, chunk=960)
    for chunk in (2, 100, 1234, 48000, len(data)):
        assert run(data, chunk=chunk) == reference


def test_long_speech_is_capped_and_must_pause_before_the_next_one() -> None:
    settings = VadSettings(max_utterance_ms=2000)
    events = run(pcm((0.5, None, QUIET), (3.5, VOICE, QUIET), (1.0, None, QUIET), (0.5, VOICE, QUIET),
                     (1.0, None, QUIET)), settings)
    capped, second = utterances(events)
    assert capped.reason == "max_length" and capped.duration_s == pytest.approx(2.0, abs=0.02)
    assert capped.at_s == pytest.approx(2.5, abs=0.02)
    # the rest of the 3.5 s is not a new utterance; the next burst after a pause is
    assert second.onset_s == pytest.approx(5.0, abs=0.02) and second.reason == "silence"
    assert [e.kind for e in events] == ["start", "utterance", "start", "utterance"]


def test_default_cap_is_ten_seconds() -> None:
    (utt,) = utterances(run(pcm((0.5, None, QUIET), (12.0, VOICE, QUIET), (1.0, None, QUIET))))
    assert utt.reason == "max_length" and utt.duration_s == pytest.approx(10.0, abs=0.02)
    assert utt.audio_s == pytest.approx(10.2, abs=0.02)  # with the pre-roll


def test_hysteresis_keeps_a_fading_voice() -> None:
    # starts loud, then fades to ~10 dB above the noise: below the start margin (12 dB), above
    # the stay margin (6 dB). (Not for long: the floor creeps up under a steady sound.)
    events = run(pcm((1.0, None, -60.0), (0.4, -30.0, -60.0), (0.5, -50.5, -60.0), (1.0, None, -60.0), wobble=0))
    (utt,) = utterances(events)
    assert utt.duration_s == pytest.approx(0.9, abs=0.05)
    # the same faint voice alone never starts one
    assert run(pcm((1.0, None, -60.0), (1.5, -50.5, -60.0), (1.0, None, -60.0), wobble=0)) == []


def test_noise_floor_adapts_to_a_noisier_room() -> None:
    vad = VoiceActivityDetector()
    vad.feed(pcm((1.0, None, -70.0)))
    assert vad.floor_dbfs == pytest.approx(-70.0, abs=3.0)
    # a fan starts: 30 dB more noise for 20 s
    events = vad.feed(pcm((20.0, None, -40.0), seed=2))
    assert len(utterances(events)) <= 1  # at most one false utterance while the floor catches up
    assert vad.floor_dbfs == pytest.approx(-40.0, abs=3.0) and not vad.in_speech
    assert vad.feed(pcm((5.0, None, -40.0), seed=3)) == []
    # speech over the fan is still found
    events = vad.feed(pcm((1.0, -20.0, -40.0), (1.0, None, -40.0), seed=4))
    (utt,) = utterances(events)
    assert utt.duration_s == pytest.approx(1.0, abs=0.05)
    # the fan stops: the floor drops quickly, a quiet voice is found again
    events = vad.feed(pcm((1.0, None, -70.0), (0.8, -40.0, -70.0), (1.0, None, -70.0), seed=5))
    assert vad.floor_dbfs == pytest.approx(-70.0, abs=3.0)
    assert [round(u.duration_s, 1) for u in utterances(events)] == [0.8]


def test_silence_and_very_quiet_rooms_need_an_absolute_level() -> None:
    # digital silence then a whisper at -60 dBFS: below min_on_dbfs (-50), never an utterance
    assert run(pcm((1.0, None, -100.0), (1.0, -60.0, -100.0), (1.0, None, -100.0))) == []
    (utt,) = utterances(run(pcm((1.0, None, -100.0), (1.0, -40.0, -100.0), (1.0, None, -100.0))))
    assert utt.duration_s == pytest.approx(1.0, abs=0.03)


def test_warmup_learns_the_floor_first() -> None:
    # a noisy room from the first sample (-45 dBFS, above the absolute start level): no false start
    assert run(pcm((3.0, None, -45.0))) == []


def test_flush_and_reset() -> None:
    vad = VoiceActivityDetector()
    vad.feed(pcm((0.5, None, QUIET), (0.8, VOICE, QUIET)))
    assert vad.in_speech and vad.onset_s == pytest.approx(0.5, abs=0.02)
    assert vad.voiced_s == pytest.approx(0.8, abs=0.03)
    utt = vad.flush()
    assert utt is not None and utt.reason == "flush" and utt.duration_s == pytest.approx(0.8, abs=0.03)
    assert not vad.in_speech and vad.flush() is None
    vad.feed(pcm((0.8, VOICE, QUIET)))
    assert vad.in_speech
    vad.reset()
    assert not vad.in_speech and vad.voiced_s == 0.0
    assert utterances(vad.feed(pcm((1.0, None, QUIET)))) == []


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        VadSettings(on_margin_db=3.0, off_margin_db=6.0)
    with pytest.raises(ValueError):
        VadSettings(block_ms=7, sample_rate=44_100)
    with pytest.raises(ValueError):
        VadSettings(start_ms=500, max_utterance_ms=400)
    with pytest.raises(ValueError):
        VadSettings(end_ms=0)


def test_stop_closures_inside_the_onset_do_not_delay_it() -> None:
    """Syllables of 60-130 ms with 30-40 ms of digital silence between them (espeak-ng's stop
    closures: "What time is it?"): the onset is the first syllable's, not the first 150 ms of
    unbroken voice; a gap over onset_gap_ms still resets the run."""
    silence = bytes(2 * 48_000)
    syllables = pcm((0.13, -20.0, -100.0)) + bytes(2 * 1440) + pcm((0.06, -30.0, -100.0), seed=2) \
        + bytes(2 * 1920) + pcm((0.8, -22.0, -100.0), seed=3)
    events = run(silence + syllables + silence)
    assert [e.kind for e in events] == ["start", "utterance"]
    assert abs(events[0].onset_s - 1.0) <= 0.02, events[0]
    # a 150 ms gap is a pause, not a closure: the run starts over after it
    events = run(silence + pcm((0.1, -20.0, -100.0)) + bytes(2 * 7200) + pcm((0.8, -22.0, -100.0), seed=3) + silence)
    assert abs(events[0].onset_s - 1.25) <= 0.02, events[0]
    # a word in the real synthesiser: the onset is at its start, not a syllable late
    spoken = pcm_audio.synthesize("What time is it?")
    events = run(silence + spoken + silence)
    assert events[0].onset_s <= 1.05 and events[1].duration_s >= 0.7, events
