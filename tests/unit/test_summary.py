import json
from dataclasses import FrozenInstanceError, fields

import pytest

from avatarplayer.summary import SessionSummary

SPEC_NAMES = """packetsReceived packetsMalformed framesReceived framesRendered framesDropped framesSkipped
framesRecovered framesOutOfOrder framesPassedThrough starvedTicks jitterBufferDelay jitterBufferEmittedCount
averageFps stallCount stalledDurationMs reconnectCount timeToFirstFrameMs turns rendererErrors
lastRenderedSeq""".split()


def test_every_counter_of_the_spec_is_there_in_camel_case():
    d = SessionSummary().as_dict()
    assert set(SPEC_NAMES) <= set(d)
    assert {"framesDroppedLate", "framesDroppedStale", "framesDroppedOverflow", "framesDroppedDuplicate"} <= set(d)
    assert len(d) == len(fields(SessionSummary))
    json.dumps(d)


def test_snake_case_attributes_and_values_carry_over():
    s = SessionSummary(frames_rendered=7, time_to_first_frame_ms=12.5, malformed_reasons={"truncated": 2})
    d = s.as_dict()
    assert d["framesRendered"] == 7 and d["timeToFirstFrameMs"] == 12.5
    assert d["malformedReasons"] == {"truncated": 2}


def test_snapshot_is_read_only():
    with pytest.raises(FrozenInstanceError):
        SessionSummary().frames_rendered = 3


def test_average_buffer_delay():
    assert SessionSummary(jitter_buffer_delay=0.5, jitter_buffer_emitted_count=10).average_buffer_delay_ms == 50
    assert SessionSummary().average_buffer_delay_ms == 0
