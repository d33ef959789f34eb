"""Captions on the face's clock (avatarplayer/captions.py, and the player's wiring of it): timed
transcript chunks wait for the frame they are spoken at; barge-in, late, lost and hostile timing."""

import asyncio
import json

import pytest

from avatarplayer.captions import CaptionClock
from avatarplayer.player import AvatarPlayer
from avatarplayer.wire.datamsg import TranscriptChunk, parse_data_message
from avatarplayer.wire.motion import Flags, MotionPacket, encode_packet


def chunk(text, seq=None, turn_seq=None, final=False, **extra):
    data = {"role": "agent", "text": text, "final": final, **extra}
    if seq is not None:
        data["seq"] = seq
    if turn_seq is not None:
        data["turn_seq"] = turn_seq
    message = parse_data_message(json.dumps({"type": "transcript_chunk", "data": data}).encode(), "t", "avatar")
    assert isinstance(message, TranscriptChunk)
    return message


def texts(chunks):
    return [c.text for c in chunks]


# ------------------------------------------------------------------------------ parsing


def test_timing_fields_parse_as_u32_sequence_numbers():
    c = chunk("hi", 7, 3)
    assert (c.seq, c.turn_seq, c.timing_error) == (7, 3, None)
    assert chunk("hi", 7).turn_seq == 7  # no turn_seq: the chunk starts its own turn
    plain = chunk("hi")
    assert (plain.seq, plain.turn_seq, plain.timing_error) == (None, None, None)
    assert chunk("wrapped", 2, 0xFFFFFFFE).turn_seq == 0xFFFFFFFE  # a turn across the wrap


@pytest.mark.parametrize("data, error", [
    ({"seq": -1}, "bad-seq"), ({"seq": 2**32}, "bad-seq"), ({"seq": True}, "bad-seq"), ({"seq": 1.5}, "bad-seq"),
    ({"seq": "12"}, "bad-seq"), ({"seq": None}, "bad-seq"), ({"turn_seq": 4}, "bad-seq"),
    ({"seq": 5, "turn_seq": "0"}, "bad-turn-seq"), ({"seq": 5, "turn_seq": [0]}, "bad-turn-seq"),
    ({"seq": 5, "turn_seq": 9}, "seq-before-turn"),
])
def test_bad_timing_fields_leave_the_chunk_untimed_and_say_why(data, error):
    payload = json.dumps({"type": "transcript_chunk", "data": {"text": "x", **data}}).encode()
    c = parse_data_message(payload)
    assert isinstance(c, TranscriptChunk) and c.text == "x"
    assert (c.seq, c.turn_seq, c.timing_error) == (None, None, error)


# ------------------------------------------------------------------------------ the clock


def test_untimed_chunks_go_out_on_arrival_as_before():
    clock = CaptionClock()
    assert texts(clock.offer(chunk("user said"), 0)) == ["user said"]
    assert clock.waiting == 0 and clock.held == 0


def test_a_timed_chunk_waits_for_its_frame_and_words_come_out_in_order():
    clock = CaptionClock()
    for word, seq in (("Hello ", 100), ("there, ", 104), ("friend.", 109)):
        assert clock.offer(chunk(word, seq, 100, final=word == "friend."), 0) == []
    assert clock.rendered(99) == []
    assert texts(clock.rendered(100)) == ["Hello "]
    assert clock.rendered(103) == []
    assert texts(clock.rendered(104)) == ["there, "]
    assert texts(clock.rendered(112)) == ["friend."]  # frames 109..111 were lost: the next one releases it
    assert clock.waiting == 0 and clock.held == 3


def test_several_due_at_once_come_out_by_frame():
    clock = CaptionClock()
    clock.offer(chunk("b ", 6, 5), 0)
    clock.offer(chunk("a ", 5, 5), 0)
    assert texts(clock.rendered(7)) == ["a ", "b "]


def test_a_chunk_whose_frame_already_rendered_goes_out_at_once():
    clock = CaptionClock()
    clock.rendered(50)
    assert texts(clock.offer(chunk("late ", 48, 40), 0)) == ["late "]
    assert clock.released_late == 1


def test_barge_in_discards_the_words_never_said_and_closes_the_line():
    clock = CaptionClock()
    clock.offer(chunk("I ", 10, 10), 0)
    clock.offer(chunk("was ", 14, 10), 0)
    clock.offer(chunk("saying ", 20, 10), 0)  # sent ahead; the user speaks over the avatar before frame 20
    assert texts(clock.rendered(10)) == ["I "]
    assert texts(clock.rendered(15)) == ["was "]
    # the worker's closing piece, at the last frame it sent (rendered already: out at once)
    assert [(c.text, c.final) for c in clock.offer(chunk("", 15, 10, final=True), 0)] == [("", True)]
    assert clock.turn_ended() == []  # TRANSITION_END renders: "saying " was never said
    assert clock.waiting == 0 and clock.discarded == 1
    # a word of that turn that arrives after it ended is dropped too; a final one closes the line empty
    assert clock.offer(chunk("more ", 22, 10), 0) == []
    assert clock.offer(chunk("end.", 30, 10, final=True), 0) == []  # the line was closed already
    assert clock.discarded == 3 and clock.released_late == 1


def test_a_final_chunk_never_said_closes_the_line_with_empty_text():
    clock = CaptionClock()
    clock.offer(chunk("Bye ", 10, 10), 0)
    clock.offer(chunk("now.", 30, 10, final=True), 0)
    clock.rendered(12)
    assert [(c.text, c.final) for c in clock.turn_ended()] == [("", True)]
    assert [(c.text, c.final) for c in clock.offer(chunk("", 12, 10, final=True), 0)] == []


def test_the_end_of_a_turn_keeps_the_next_turns_words():
    clock = CaptionClock()
    clock.offer(chunk("next ", 40, 40), 0)  # the next turn's first word arrives before this one ends
    clock.offer(chunk("cut.", 30, 20, final=True), 0)
    clock.rendered(25)
    assert [(c.text, c.final) for c in clock.turn_ended()] == [("", True)]
    assert clock.waiting == 1
    assert texts(clock.rendered(40)) == ["next "]


def test_held_chunks_expire_when_their_frames_never_come():
    clock = CaptionClock(max_hold_ms=1000)
    clock.offer(chunk("a ", 5), 0)
    clock.offer(chunk("b ", 6), 500)
    assert clock.expire(900) == []
    assert texts(clock.expire(1200)) == ["a "]
    assert texts(clock.expire(1600)) == ["b "] and clock.expired == 2 and clock.waiting == 0


def test_at_most_max_held_wait_and_the_oldest_goes_out_first():
    clock = CaptionClock(max_held=3)
    out = [c for i in range(5) for c in clock.offer(chunk(f"w{i} ", 1000 + i, 1000), 0)]
    assert texts(out) == ["w0 ", "w1 "] and clock.waiting == 3 and clock.expired == 2


def test_sequence_numbers_wrap():
    clock = CaptionClock()
    clock.offer(chunk("before ", 0xFFFFFFFF, 0xFFFFFFF0), 0)
    clock.offer(chunk("after ", 3, 0xFFFFFFF0), 0)
    assert texts(clock.rendered(0xFFFFFFFF)) == ["before "]
    assert clock.rendered(2) == []
    assert texts(clock.rendered(3)) == ["after "]


def test_bad_timing_is_counted_and_the_chunk_goes_out_untimed():
    clock = CaptionClock()
    bad = parse_data_message(b'{"type": "transcript_chunk", "data": {"text": "x", "seq": "soon"}}')
    assert clock.offer(bad, 0) == [bad] and clock.timing_invalid == 1


def test_reset_forgets_everything():
    clock = CaptionClock()
    clock.offer(chunk("a ", 5), 0)
    clock.reset()
    assert clock.waiting == 0 and clock.held == 0 and clock.rendered(5) == []


# ------------------------------------------------------------------------------ in the player


class StandInProvider:
    async def open(self, sink, url, token):
        self.sink = sink

    async def close(self):
        pass


class Log:
    """The renderer, and the transcript handler, writing into one timeline."""

    def __init__(self):
        self.timeline = []

    def yield_frames_data(self, frames, conversation_id):
        self.timeline += [("frame", f) for f in frames]

    def yield_audio_data(self, data, is_last):
        return None

    def turn_ended(self, conversation_id, reason):
        self.timeline.append(("turn-ended", reason))


def transcript(text, seq, turn_seq, final=False):
    data = {"role": "agent", "text": text, "turn": 1, "final": final, "seq": seq, "turn_seq": turn_seq}
    return json.dumps({"type": "transcript_chunk", "data": data}).encode()


def test_the_player_emits_a_caption_right_after_its_frame_is_rendered_never_before():
    async def main():
        log = Log()
        player = AvatarPlayer(StandInProvider(), log, sync="independent")
        player.on("transcript", lambda c: log.timeline.append(("caption", c.text)))
        arrivals = []
        player.on("data-message", lambda m: arrivals.append(m.type))
        await player.connect(url="ws://127.0.0.1:7880", token="t")
        sink = player.provider.sink
        # the worker sends the words ahead of the frames they are spoken at
        sink.on_data(transcript("Hello ", 20, 20), "avatarplayer.agent", "avatar")
        sink.on_data(transcript("world.", 24, 20, final=True), "avatarplayer.agent", "avatar")
        sink.on_data(b'{"type": "transcript_chunk", "data": {"role": "user", "text": "(1.0 s)"}}', "t", "avatar")
        for seq in range(20, 27):
            flags = Flags.START if seq == 20 else Flags.END if seq == 26 else Flags(0)
            sink.on_packet(encode_packet(MotionPacket(flags, seq, b"f%d" % seq)), player._clock())
            await asyncio.sleep(0.04)
        await asyncio.sleep(0.3)
        summary = player.session_summary
        await player.disconnect()
        return log.timeline, arrivals, summary

    timeline, arrivals, summary = asyncio.run(main())
    assert arrivals == ["transcript_chunk"] * 3  # data-message still fires on arrival
    assert timeline[0] == ("caption", "(1.0 s)")  # untimed: at once
    assert timeline.index(("caption", "Hello ")) == timeline.index(("frame", b"f20")) + 1
    assert timeline.index(("caption", "world.")) == timeline.index(("frame", b"f24")) + 1
    assert summary.captions_held == 2 and summary.captions_discarded == 0


def test_the_player_drops_the_words_of_an_interrupted_turn():
    async def main():
        log = Log()
        player = AvatarPlayer(StandInProvider(), log, sync="independent")
        player.on("transcript", lambda c: log.timeline.append(("caption", c.text, c.final)))
        await player.connect(url="ws://127.0.0.1:7880", token="t")
        sink = player.provider.sink
        sink.on_data(transcript("One ", 0, 0), "a", "avatar")
        sink.on_data(transcript("two ", 3, 0), "a", "avatar")
        sink.on_data(transcript("three.", 8, 0, final=True), "a", "avatar")
        for seq in range(4):  # barge-in after frame 3: no more frames, a TRANSITION_END
            sink.on_packet(encode_packet(MotionPacket(Flags.START if seq == 0 else Flags(0), seq, b"f")),
                           player._clock())
            await asyncio.sleep(0.04)
        # the worker closes the transcript once the last frame went out: here, once it rendered
        # (not a race with the ticker, which Pyodide's timers lost now and then)
        for _ in range(200):
            if sum(entry[0] == "frame" for entry in log.timeline) == 4:
                break
            await asyncio.sleep(0.005)
        sink.on_data(transcript("", 3, 0, final=True), "a", "avatar")
        sink.on_packet(encode_packet(MotionPacket(Flags.TRANSITION_END, None, b"")), player._clock())
        await asyncio.sleep(0.3)
        summary = player.session_summary
        await player.disconnect()
        return log.timeline, summary

    timeline, summary = asyncio.run(main())
    captions = [entry[1:] for entry in timeline if entry[0] == "caption"]
    # "three." was sent ahead but never said; the worker's empty final closes the line, once
    assert captions == [("One ", False), ("two ", False), ("", True)]
    assert summary.captions_discarded == 1 and summary.captions_released_late == 1
