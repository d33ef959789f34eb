"""Synthesized speech with its timing (avatar_worker/tts.py), mouth shapes from its phonemes
(avatar_worker/visemes.py, motion_gen.py), and the reference face drawing them. Real espeak-ng,
no server."""

from __future__ import annotations

import asyncio

import pytest

from avatar_worker.audio import pcm as pcm_audio
from avatar_worker.modes.speech import join_speech, plan_speech_turn, recorded, speak
from avatar_worker.motion_gen import (
    EXPRESSION_PRESS,
    EXPRESSION_SPREAD,
    EXPRESSION_TUCK,
    MotionGenerator,
)
from avatar_worker.tts import Phoneme, TtsError, synthesize_timed
from avatar_worker.visemes import SHAPES, MouthShape, Viseme, viseme_frames, viseme_of
from avatarplayer.face.model import FacePose, pose_from_message
from avatarplayer.face.painter import FacePainter
from avatarplayer.wire.motion import decode_packet

from tests.renderer.lips import lip_box


def frame_poses(turn) -> list[FacePose]:
    """The face's pose for each motion frame of a planned turn, decoded as the player gets it."""
    return [pose_from_message(decode_packet(e.packet).message)
            for tick in turn.ticks for e in tick.emissions if e.kind == "frame"]


def lips(pose: FacePose) -> tuple[float, float]:
    """Width and height of the lips as drawn (the bounding box of the two lip paths' points)."""
    painter = FacePainter(400, 400, background=False)
    painter.paint(pose)
    return lip_box(painter.rec.calls())


# ------------------------------------------------------------------------------ synthesis


class TestSynthesis:
    def test_the_times_are_times_in_the_audio_it_returns(self) -> None:
        text = "One. Two. Three."
        s = synthesize_timed(text)
        assert [text[w.start:w.start + w.length] for w in s.words] == ["One", "Two", "Three"]
        assert [w.start_ms for w in s.words] == sorted(w.start_ms for w in s.words)
        envelope = pcm_audio.envelope(pcm_audio.split_frames(s.pcm))
        for word in s.words[1:]:  # each word after a full stop starts where the sound comes back
            k = int(word.start_ms // 40)
            assert envelope[k - 1] < 0.05 and max(envelope[k:k + 2]) > 0.15, (word, envelope[k - 2:k + 3])
        # phonemes tile the speech, and end with the audio
        assert all(a.end_ms == b.start_ms for a, b in zip(s.phonemes, s.phonemes[1:]))
        assert s.phonemes[-1].end_ms == pytest.approx(s.duration_ms, abs=25)

    def test_the_same_text_gives_the_same_audio_every_time(self) -> None:
        first, second = synthesize_timed("Hello, I am a recording."), synthesize_timed("Hello, I am a recording.")
        assert first == second  # the library keeps state between syntheses: each runs in a fresh process

    def test_words_index_the_text_by_character(self) -> None:
        text = "Café naïve résumé, now."
        s = synthesize_timed(text)
        assert [text[w.start:w.start + w.length] for w in s.words] == ["Café", "naïve", "résumé", "now"]

    def test_phonemes_are_ipa(self) -> None:
        assert [p.symbol for p in synthesize_timed("moon").phonemes] == ["m", "uː", "n"]
        assert [p.symbol for p in synthesize_timed("mean").phonemes] == ["m", "iː", "n"]

    def test_bad_input_raises_audio_errors(self) -> None:
        with pytest.raises(TtsError, match="empty"):
            synthesize_timed("  ")
        with pytest.raises(TtsError, match="no voice"):
            synthesize_timed("hello", voice="no-such-voice")
        assert isinstance(TtsError("x"), pcm_audio.AudioError)
        assert synthesize_timed("hello again").words  # the engine is still fine after an error


# ------------------------------------------------------------------------------ visemes


class TestVisemes:
    @pytest.mark.parametrize("symbol, visemes", [
        ("m", ["closed"]), ("b", ["closed"]), ("p", ["closed"]), ("f", ["teeth"]), ("v", ["teeth"]),
        ("uː", ["rounded"]), ("w", ["rounded"]), ("ɔː", ["rounded"]), ("iː", ["spread"]), ("ɛ", ["spread"]),
        ("ɪ", ["spread"]), ("a", ["open"]), ("ˈɑː", ["open"]), ("ʌ", ["open"]), ("ə", ["mid"]),
        ("t", ["other"]), ("ɹ", ["other"]), ("_", ["rest"]), ("", ["rest"]),
        ("aɪ", ["open", "spread"]), ("əʊ", ["mid", "rounded"]), ("eɪ", ["spread"]), ("aʊ", ["open", "rounded"]),
    ])
    def test_phonemes_to_visemes(self, symbol: str, visemes: list[str]) -> None:
        assert [v.value for v in viseme_of(symbol)] == visemes

    def test_frames_weigh_what_is_heard_in_them_a_little_ahead(self) -> None:
        timeline = [Phoneme("a", 0, 100), Phoneme("iː", 100, 200)]
        shapes = viseme_frames(timeline, 6, lead_ms=0)
        assert shapes[0] == SHAPES[Viseme.OPEN]
        assert shapes[2].jaw == pytest.approx(0.5 * (SHAPES[Viseme.OPEN].jaw + SHAPES[Viseme.SPREAD].jaw))  # 80..120
        assert shapes[3].spread == SHAPES[Viseme.SPREAD].spread
        assert shapes[5] is None  # nothing heard: the loudness moves the jaw there
        ahead = viseme_frames(timeline, 6, lead_ms=20)
        assert ahead[2] == SHAPES[Viseme.SPREAD]  # the lips get there before the sound

    def test_a_short_closure_is_never_averaged_away(self) -> None:
        shapes = viseme_frames([Phoneme("a", 0, 50), Phoneme("p", 50, 65), Phoneme("a", 65, 160)], 4, lead_ms=20)
        assert shapes[0].press == 1.0 and shapes[0].jaw == 0.0

    def test_consonants_without_a_lip_shape_let_the_vowel_shape_the_lips(self) -> None:
        shape, = viseme_frames([Phoneme("uː", 0, 20), Phoneme("t", 20, 40)], 1, lead_ms=0)
        assert shape.rounding > 0.7


class TestMouthMotion:
    def test_visemes_go_in_the_flame_values_and_the_loudness_jaw_keeps_them_at_zero(self) -> None:
        gen = MotionGenerator(1)
        spoken = gen.poses([0.8] * 6, [SHAPES[Viseme.SPREAD]] * 6)[-1]
        assert spoken["expression"][EXPRESSION_SPREAD] > 0.9 and spoken["expression"][1] == 0.0
        rounded = gen.poses([0.8] * 6, [SHAPES[Viseme.ROUNDED]] * 6)[-1]
        assert rounded["expression"][1] < -0.5 and rounded["expression"][EXPRESSION_SPREAD] < 0.05
        closed = gen.poses([0.2] * 3, [SHAPES[Viseme.CLOSED]] * 3)[-1]
        assert closed["expression"][EXPRESSION_PRESS] > 0.95 and closed["jaw_pose"][0] < 0.01
        echoed = MotionGenerator(1).poses([0.8] * 6)
        assert all(p["expression"][k] == 0.0 for p in echoed for k in (EXPRESSION_SPREAD, EXPRESSION_PRESS,
                                                                      EXPRESSION_TUCK))
        assert echoed[-1]["jaw_pose"][0] > 0.2

    def test_the_mouth_moves_smoothly_from_shape_to_shape(self) -> None:
        targets = [SHAPES[v] for v in [Viseme.OPEN, Viseme.ROUNDED, Viseme.SPREAD, Viseme.OPEN] for _ in range(3)]
        poses = MotionGenerator(2).poses([0.8] * len(targets), targets)
        spreads = [p["expression"][EXPRESSION_SPREAD] for p in poses]
        assert max(abs(a - b) for a, b in zip(spreads, spreads[1:])) < 0.65  # never a jump straight to it

    def test_a_pause_inside_a_phoneme_relaxes_the_mouth(self) -> None:
        poses = MotionGenerator(2).poses([0.8] * 4 + [0.0] * 8, [SHAPES[Viseme.ROUNDED]] * 12)
        assert poses[3]["expression"][1] < -0.5 and poses[-1]["expression"][1] > -0.1

    def test_levels_and_shapes_must_pair_up(self) -> None:
        with pytest.raises(ValueError, match="mouth shapes"):
            MotionGenerator(0).poses([0.1, 0.2], [MouthShape()])


# ------------------------------------------------------------------------------ speech and turns


class TestSpeech:
    def test_synthesized_speech_carries_its_words_to_the_turn(self) -> None:
        speech = speak("Hello there, friend.")
        turn = asyncio.run(plan_speech_turn(speech, MotionGenerator(0), 500))
        assert turn.text == "Hello there, friend." and turn.first_seq == 500
        assert [start for start, _ in turn.words] == [0, 6, 13]
        frames = [frame for _, frame in turn.words]
        assert frames == sorted(frames) and frames[-1] < turn.frames
        # each word's frame starts at or after the word's first sound, less than a frame after it
        for (_, frame), word in zip(turn.words, speech.words):
            assert 0 <= frame * 40 - word.start_ms < 40, (frame, word)

    def test_recorded_speech_keeps_the_loudness_jaw(self) -> None:
        voice = speak("Hello there.")
        echo = recorded(b"".join(voice.frames), "echo")
        assert echo.phonemes == () and echo.words == ()
        turn = asyncio.run(plan_speech_turn(echo, MotionGenerator(0), 0))
        poses = frame_poses(turn)
        assert turn.words == () and max(p.jaw for p in poses) > 0.5
        assert all(p.spread == p.press == p.tuck == 0.0 for p in poses)

    def test_joined_speech_moves_times_and_text_offsets(self) -> None:
        a, b = speak("Hi."), speak("Bye now.")
        gap = recorded(bytes(pcm_audio.BYTES_PER_FRAME * 5), "gap")
        joined = join_speech([a, gap, b], "reply")
        assert joined.text == "Hi. Bye now."
        shift = (len(a.frames) + 5) * 40
        assert joined.words[-2:] == tuple(type(w)(w.start + 4, w.length, w.start_ms + shift) for w in b.words)
        assert joined.phonemes[len(a.phonemes)].start_ms == b.phonemes[0].start_ms + shift
        assert len(joined.frames) == len(a.frames) + 5 + len(b.frames)

    def test_a_reply_of_a_spoken_lead_and_an_echo(self) -> None:
        lead = speak("Here is what I heard.")
        echo = recorded(b"".join(speak("testing one two").frames), "echo", "(played back)")
        reply = join_speech([lead, recorded(bytes(pcm_audio.BYTES_PER_FRAME * 5), "gap"), echo], "reply")
        assert reply.text == "Here is what I heard. (played back)"
        turn = asyncio.run(plan_speech_turn(reply, MotionGenerator(0), 0))
        assert turn.words[-1] == (len("Here is what I heard. "), len(lead.frames) + 5)
        poses = frame_poses(turn)
        assert max(p.spread + p.pucker for p in poses[:len(lead.frames)]) > 0.5  # visemes while it speaks
        echoed = poses[len(lead.frames) + 5:]
        assert max(p.jaw for p in echoed) > 0.4 and all(p.spread == p.press == p.tuck == 0 for p in echoed)


# ------------------------------------------------------------------------------ on the face


def vowel_pose(word: str) -> FacePose:
    """The face's pose at the middle of ``word``'s vowel, as drawn from the frames sent."""
    speech = speak(word)
    vowel = speech.phonemes[1]
    turn = asyncio.run(plan_speech_turn(speech, MotionGenerator(7), 0))
    return frame_poses(turn)[int((vowel.start_ms + vowel.end_ms) / 2 // 40)]


def test_moon_and_mean_differ_at_the_vowel_on_the_drawn_face() -> None:
    moon, mean = vowel_pose("moon"), vowel_pose("mean")
    assert moon.pucker > 0.6 and moon.spread < 0.1
    assert mean.spread > 0.6 and mean.pucker < 0.1
    (moon_w, moon_h), (mean_w, mean_h) = lips(moon), lips(mean)
    # "moon": rounded lips, narrow and full; "mean": spread lips, wide and thin
    assert moon_w < 0.75 * mean_w, (moon_w, mean_w)
    assert moon_h / moon_w > 1.5 * (mean_h / mean_w), (moon_h, moon_w, mean_h, mean_w)


def test_closures_and_teeth_show_on_the_drawn_face() -> None:
    m = frame_poses(asyncio.run(plan_speech_turn(speak("mama"), MotionGenerator(7), 0)))
    assert m[1].press > 0.9 and lips(m[1])[1] < lips(FacePose())[1]  # pressed lips are thinner
    f = frame_poses(asyncio.run(plan_speech_turn(speak("five"), MotionGenerator(7), 0)))
    assert max(p.tuck for p in f[:2]) > 0.4
