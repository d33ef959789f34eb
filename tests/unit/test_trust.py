"""Whom the provider obeys (avatarplayer.browser.livekit): only the avatar, and the agent it speaks for.

The provider's decisions are plain Python over a few participant fields; the JavaScript objects
are replaced by small stand-ins with the same fields (identity, kind, attributes).
"""

import json
from types import SimpleNamespace

import pytest

from avatarplayer.wire.datamsg import CONTROL_TOPIC, MOTION_TOPIC, parse_json
from avatarplayer.browser.livekit import LiveKitProvider
from avatarplayer.browser.transform import MAX_PENDING_PACKETS

AGENT = 4


def person(identity, *, agent=False, on_behalf=""):
    attributes = {"lk.publish_on_behalf": on_behalf} if on_behalf else {}
    return SimpleNamespace(identity=identity, kind=AGENT if agent else 0, attributes=attributes)


class Filter:
    """The JS data filter's Python face: what the provider asks of it."""

    def __init__(self):
        self.trusted, self.open = [], True

    def isAgent(self, p):  # noqa: N802 (the JS name)
        return p is not None and p.kind == AGENT

    def onBehalfOf(self, p):  # noqa: N802
        return p.attributes.get("lk.publish_on_behalf", "")

    def trust(self, identities, open_):
        self.trusted, self.open = json.loads(identities), open_

    def counts(self):
        return "{}"


class Payload(bytes):
    def to_bytes(self):
        return bytes(self)


class Sink:
    def __init__(self):
        self.data, self.packets, self.errors = [], [], []

    def on_error(self, error):
        self.errors.append(error)

    def on_data(self, payload, topic, identity):
        self.data.append((bytes(payload), topic, identity))

    def on_packet(self, packet, arrival_ms, rtp_timestamp=None):
        self.packets.append(packet)

    def on_motion_attached(self, mode):
        pass


class Room:
    def __init__(self, *participants):
        self.remoteParticipants = {p.identity: p for p in participants}  # noqa: N815


@pytest.fixture(autouse=True)
def page_clock(monkeypatch):
    monkeypatch.setattr("avatarplayer.browser.jsutil.now_ms", lambda: 1000.0)


def provider(*participants, **options):
    p = LiveKitProvider(**options)
    p._sink = p.tap.sink = Sink()
    p.room = Room(*participants)
    p.trust.install(Filter())
    return p


def send(p, who, payload=b'{"type": "agent_status", "data": "speaking"}', topic=None):
    p._on_data_received(Payload(payload), who, None, topic)


def test_the_avatar_is_an_agent_or_publishes_for_one():
    agent = person("agent-1", agent=True)
    p = provider(agent)
    assert p.trust.is_avatar(person("avatar", agent=True), p.room)
    assert not p.trust.is_avatar(person("viewer-1"), p.room)
    assert p.trust.is_avatar(person("avatar-2", on_behalf="agent-1"), p.room)  # on behalf of an agent in the room
    assert not p.trust.is_avatar(person("viewer-2", on_behalf="viewer-1"), p.room)  # ... not of anybody
    assert not p.trust.is_avatar(person("viewer-3", on_behalf="nobody-here"), p.room)
    p.trust.become_avatar(person("avatar", agent=True))
    assert not p.trust.is_avatar(person("another-agent", agent=True), p.room)  # the first avatar keeps the face
    named = provider(avatar_identity="viewer-7")
    assert named.trust.is_avatar(person("viewer-7"), named.room) and not named.trust.is_avatar(person("avatar", agent=True), named.room)
    with pytest.raises(TypeError, match="avatar_identity"):
        LiveKitProvider(avatar_identity="")


def test_data_from_others_is_ignored_and_counted():
    p = provider()
    send(p, person("viewer-1"))  # before any avatar: agents only
    send(p, person("helper", agent=True))
    assert [d[2] for d in p._sink.data] == ["helper"]
    p.trust.become_avatar(person("avatar", agent=True, on_behalf="llm-agent"))
    assert p.trust.filter.trusted == ["avatar", "llm-agent"] and p.trust.filter.open is False
    send(p, person("avatar", agent=True))
    send(p, person("llm-agent", agent=True))  # the agent the avatar speaks for: its transcripts
    send(p, person("helper", agent=True))  # another agent, once the avatar is known: no
    send(p, person("viewer-1"))
    assert [d[2] for d in p._sink.data] == ["helper", "avatar", "llm-agent"]
    assert p.untrusted_counts() == {"data": 3}
    send(p, None)  # the server itself (no participant): an app message
    assert p._sink.data[-1][2] is None


def test_only_the_avatar_feeds_the_carrier_and_the_control_topic():
    p = provider()
    p.carrier = "data"
    p.trust.become_avatar(person("avatar", agent=True, on_behalf="llm-agent"))
    send(p, person("viewer-1"), b"\x01\x02", MOTION_TOPIC)
    send(p, person("llm-agent", agent=True), b"\x01\x02", MOTION_TOPIC)  # trusted for data, not motion
    send(p, person("viewer-1"), b'{"type": "carrier-ack", "carrier": "data"}', CONTROL_TOPIC)
    send(p, None, b'{"type": "carrier-ack", "carrier": "data"}', CONTROL_TOPIC)
    assert p._sink.packets == [] and p.data_requests.acked == set()
    assert p.untrusted_counts() == {"data-carrier": 2, "control": 2}
    send(p, person("avatar", agent=True), b"\x01\x02", MOTION_TOPIC)
    assert p._sink.packets == [b"\x01\x02"]
    send(p, person("avatar", agent=True), b"[" * 14_000 + b"]" * 14_000, CONTROL_TOPIC)
    assert p.control_messages_malformed == 1  # not parsed: refused by depth
    send(p, person("avatar", agent=True), b'{"type": "carrier-ack", "carrier": "data"}', CONTROL_TOPIC)
    assert p.data_requests.acked == {"avatar"}


def test_a_new_avatar_takes_over_only_after_the_old_one_left():
    p = provider()
    p.trust.become_avatar(person("avatar", agent=True))
    p._on_participant_disconnected(person("someone-else"))
    assert p.avatar_identity == "avatar"
    p._on_participant_disconnected(person("avatar", agent=True))
    assert p.avatar_identity is None and p.trust.filter.open is True
    assert p.trust.is_avatar(person("avatar-2", agent=True), p.room)
    named = provider(avatar_identity="avatar")
    named._on_participant_disconnected(person("avatar", agent=True))
    assert named.avatar_identity == "avatar"  # named by the app: never forgotten


def test_motion_packets_wait_for_the_motion_track_and_only_its_own_are_delivered():
    p = provider()
    for n in range(3):
        p.tap.deliver(1, b"intruder-%d" % n, 0.0, None)  # another video receiver, created first
        p.tap.deliver(2, b"avatar-%d" % n, 0.0, None)
    assert p._sink.packets == []
    p.tap.attach_id = 2
    p.tap.release_pending()
    assert p._sink.packets == [b"avatar-0", b"avatar-1", b"avatar-2"] and p.foreign_packets == 3
    p.tap.deliver(1, b"intruder-3", 0.0, None)
    p.tap.deliver(2, b"avatar-3", 0.0, None)
    assert p._sink.packets[-1] == b"avatar-3" and p.foreign_packets == 4
    q = provider()
    for n in range(MAX_PENDING_PACKETS + 5):
        q.tap.deliver(1, b"x", 0.0, None)
    assert len(q.tap._pending[1]) == MAX_PENDING_PACKETS and q.foreign_packets == 5  # bounded


def test_the_guarded_parser_refuses_depth_and_size_but_not_ordinary_json():
    assert parse_json(b"[" * 14_000 + b"]" * 14_000) is None
    assert parse_json(b'{"a": "' + b"x" * 300_000 + b'"}') is None
    assert parse_json(b'{"text": "[[[[[[' + b"[" * 100 + b'"}') == {"text": "[[[[[[" + "[" * 100}
    assert parse_json(b"\xff\xfe") is None and parse_json(b"") is None and parse_json(b"12") is None


def test_a_refused_data_carrier_is_reported_once_and_not_asked_again(monkeypatch):
    p = provider()
    p.carrier = "data"
    p.trust.become_avatar(person("avatar", agent=True))
    asked = []
    monkeypatch.setattr(p.data_requests, "request", lambda room, identity, again=False: asked.append(identity))
    p.poll(5000.0)
    assert asked == ["avatar"]  # not acknowledged yet: asked again
    send(p, person("avatar", agent=True), b'{"type": "carrier-error", "error": "topic is reserved"}', CONTROL_TOPIC)
    assert len(p._sink.errors) == 1 and "topic is reserved" in str(p._sink.errors[0])
    p.poll(10000.0)
    assert asked == ["avatar"]


@pytest.mark.parametrize("topic", ["avatarplayer.control", "lk.chat", " ", "x" * 129, ""])
def test_data_topics_the_worker_would_refuse_are_refused_at_construction(topic):
    with pytest.raises((TypeError, ValueError), match="data_topic"):
        LiveKitProvider(data_topic=topic)
