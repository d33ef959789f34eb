"""Agent data messages -> typed values (avatarplayer.wire.datamsg): never raises, keeps the raw bytes."""

import json

from hypothesis import given, strategies as st

from avatarplayer.wire.datamsg import AgentStatus, DataMessage, TranscriptChunk, parse_data_message


def encode(value) -> bytes:
    return json.dumps(value).encode()


def test_transcript_chunk_with_fields():
    m = parse_data_message(encode({"type": "transcript_chunk", "data": {"text": "Hello", "role": "agent",
                                                                        "final": True}}), "t", "agent")
    assert isinstance(m, TranscriptChunk)
    assert (m.text, m.role, m.final, m.topic, m.participant_identity) == ("Hello", "agent", True, "t", "agent")


def test_transcript_chunk_as_plain_text_and_non_bool_final():
    m = parse_data_message(encode({"type": "transcript_chunk", "data": "hi"}))
    assert isinstance(m, TranscriptChunk) and m.text == "hi" and m.final is False
    m = parse_data_message(encode({"type": "transcript_chunk", "data": {"text": "x", "final": "yes"}}))
    assert isinstance(m, TranscriptChunk) and m.final is False and m.role is None


def test_agent_status_in_both_shapes():
    for data in ({"status": "thinking"}, "thinking"):
        m = parse_data_message(encode({"type": "agent_status", "data": data}))
        assert isinstance(m, AgentStatus) and m.status == "thinking"


def test_wrong_shapes_stay_generic_messages():
    for value in ({"type": "agent_status", "data": {"status": 3}}, {"type": "transcript_chunk", "data": {"text": 5}},
                  {"type": "custom", "data": [1, 2]}):
        m = parse_data_message(encode(value))
        assert type(m) is DataMessage and m.type == value["type"] and m.data == value["data"]


def test_non_json_keeps_the_bytes():
    for payload in (b"", b"\xff\xfe", b"plain text", b'{"type": ', b"[1,2]"):
        m = parse_data_message(payload, "topic", "who")
        assert type(m) is DataMessage and m.type is None and m.payload == payload


def test_deeply_nested_json_is_not_parsed():
    """Deep nesting would overflow Pyodide's stack (fatal there): kept as bytes, never parsed."""
    m = parse_data_message(b"[" * 100_000 + b"]" * 100_000)
    assert m.type is None and m.data is None
    ok = parse_data_message(encode({"type": "x", "data": [[[[1]]]], "text": "[[[[" * 40}))
    assert ok.type == "x" and ok.data == [[[[1]]]]  # brackets inside strings do not count


@given(st.binary(max_size=300))
def test_any_bytes_give_a_message(payload):
    assert parse_data_message(payload).payload == payload
