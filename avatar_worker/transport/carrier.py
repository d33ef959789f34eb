"""The data-packet carrier (docs/wire-format.md §3b), for viewers that ask for it.

A viewer asks with a *reliable* data message to the worker on topic ``avatarplayer.control``::

    {"type": "carrier", "carrier": "data", "topic": "avatarplayer.motion"}   # topic optional
    {"type": "carrier", "carrier": "video"}                                  # cancels

and the worker answers on the same topic, reliably, to the requester only::

    {"type": "carrier-ack", "carrier": "data", "topic": "avatarplayer.motion"}
    {"type": "carrier-ack", "carrier": "video"}
    {"type": "carrier-error", "error": "<why>"}     # a carrier request it cannot honour

From the ack on, every motion packet the worker emits (frames, TRANSITION, TRANSITION_END, IDLE
heartbeats, and injected duplicates and bad packets) also goes to that participant as one
*lossy* data message on the requested topic: the bare packet, not a VP8 carrier frame, and frames
always REDUNDANT (:attr:`avatar_worker.turns.Emission.data_bytes`). The video track goes on as
before. With ``everyone_topic`` (the CLI's ``--data-carrier``) every other participant gets the
packets on that topic without asking, unless it asked for another topic or for ``video``.

Only participants in the room get packets. A requester that leaves is forgotten, unless it comes
back within ``rejoin_grace`` seconds (20 by default): a server restart makes every client leave
and rejoin (the LiveKit SDKs report the others as gone while they reconnect themselves), and
a viewer must not lose its carrier to that. One that comes back later starts over (video only).

Control messages of other types on the control topic are ignored (they are not ours).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from avatarplayer.wire.datamsg import CONTROL_TOPIC, MAX_TOPIC_LENGTH, MOTION_TOPIC, topic_problem

from .messaging import DataTransport, MessageSender

__all__ = [
    "CONTROL_TOPIC",
    "DEFAULT_DATA_TOPIC",
    "CarrierRequest",
    "ControlError",
    "DataCarrier",
    "parse_control",
]

log = logging.getLogger("avatar_worker.carrier")  # the name it always logged under (serve.py, tests filter on it)

DEFAULT_DATA_TOPIC = MOTION_TOPIC
"""The data-packet carrier's topic unless a viewer asks for another: the player's
:data:`avatarplayer.wire.datamsg.MOTION_TOPIC` (``CONTROL_TOPIC`` is the player's too)."""
MAX_CONTROL_MESSAGE = 4096


class ControlError(ValueError):
    """A control message that is not valid JSON, or a carrier request that cannot be honoured.

    ``answerable``: it was a carrier request (answered with ``carrier-error``); otherwise the
    bytes are ignored (they may be someone else's protocol on a topic we share).
    """

    def __init__(self, message: str, *, answerable: bool = True) -> None:
        super().__init__(message)
        self.answerable = answerable


@dataclass(frozen=True, slots=True)
class CarrierRequest:
    """A viewer's choice: ``data`` (packets also as data messages on ``topic``) or ``video`` only."""

    carrier: Literal["data", "video"]
    topic: str | None = None
    """The data topic (``data`` only)."""


def check_topic(topic: object) -> str:
    """``topic`` if it is usable as a data topic, else ControlError."""
    problem = topic_problem(topic)
    if problem is not None:
        raise ControlError(problem)
    assert isinstance(topic, str)
    return topic


def parse_control(payload: bytes) -> CarrierRequest | None:
    """The carrier request in a control message; ``None`` for a JSON object of another type.

    Raises ControlError for anything else: not UTF-8 JSON, not an object, or a ``carrier``
    message with an unknown carrier or a bad topic.
    """
    if len(payload) > MAX_CONTROL_MESSAGE:
        raise ControlError(f"control message over {MAX_CONTROL_MESSAGE} bytes", answerable=False)
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"not a JSON message: {exc}", answerable=False) from None
    if not isinstance(message, dict):
        raise ControlError("a control message is a JSON object", answerable=False)
    if message.get("type") != "carrier":
        return None
    carrier = message.get("carrier")
    if carrier == "video":
        return CarrierRequest("video")
    if carrier == "data":
        return CarrierRequest("data", check_topic(message.get("topic", DEFAULT_DATA_TOPIC)))
    raise ControlError(f"unknown carrier {carrier!r} (expected 'data' or 'video')")


def ack_for(request: CarrierRequest) -> dict[str, Any]:
    """The ``carrier-ack`` answering ``request``."""
    if request.carrier == "data":
        return {"type": "carrier-ack", "carrier": "data", "topic": request.topic}
    return {"type": "carrier-ack", "carrier": "video"}


class DataCarrier:
    """Who gets motion packets as data messages, on which topic; sends them (a ``DataPath``).

    ``transport`` queues the messages (the publisher); ``messages`` sends the acks, logged. As a
    ``RoomHook`` of the publisher it hears control messages and departures in every room.
    """

    def __init__(self, transport: DataTransport, *, messages: MessageSender | None = None,
                 everyone_topic: str | None = None, rejoin_grace: float = 20.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.transport = transport
        self.messages = messages or MessageSender(transport)
        self.everyone_topic = check_topic(everyone_topic) if everyone_topic is not None else None
        self.rejoin_grace = rejoin_grace
        self._clock = clock
        self._choices: dict[str, str | None] = {}
        """identity → data topic, or None for "video only" (an explicit cancel)."""
        self._left: dict[str, float] = {}
        """identity → when it left, for those with a choice."""

    # ------------------------------------------------------------------------- the hook

    def attach(self, room: Any) -> None:
        """Listen to ``room`` (an ``rtc.Room``) for control messages and departures."""

        @room.on("data_received")
        def _data(packet: Any) -> None:
            if packet.topic == CONTROL_TOPIC and packet.participant is not None:
                self.handle_control(packet.participant.identity, bytes(packet.data))

        @room.on("participant_connected")
        def _joined(participant: Any) -> None:
            self.returned(participant.identity)

        @room.on("participant_disconnected")
        def _left(participant: Any) -> None:
            self.left(participant.identity)

    def joined(self, room: Any) -> None:
        """We (re)joined: whoever is in the room already is back."""
        for identity in room.remote_participants:
            self.returned(identity)

    # ----------------------------------------------------------------------- requests

    def handle_control(self, identity: str, payload: bytes) -> dict[str, Any] | None:
        """Act on a control message from ``identity`` and send the answer; returns the answer
        (None when the message was not a carrier request)."""
        try:
            request = parse_control(payload)
        except ControlError as exc:
            log.warning("bad control message from %r: %s", identity, exc)
            if not exc.answerable:
                return None
            answer: dict[str, Any] = {"type": "carrier-error", "error": str(exc)}
        else:
            if request is None:
                return None
            self.choose(identity, request)
            answer = ack_for(request)
        self.messages.send(answer, topic=CONTROL_TOPIC, destinations=[identity])
        return answer

    def choose(self, identity: str, request: CarrierRequest) -> None:
        """Record ``identity``'s choice (also what :meth:`handle_control` does)."""
        self._choices[identity] = request.topic if request.carrier == "data" else None
        self._left.pop(identity, None)
        log.info("participant %r chose the %s carrier%s", identity, request.carrier,
                 f" on topic {request.topic!r}" if request.topic else "")

    def left(self, identity: str) -> None:
        """``identity`` left the room: it gets nothing now, and its choice is dropped unless it
        is back within ``rejoin_grace`` seconds."""
        if identity in self._choices:
            self._left[identity] = self._clock()

    def returned(self, identity: str) -> None:
        """``identity`` is in the room (again): keep its choice if it left only briefly."""
        since = self._left.pop(identity, None)
        if since is not None and self._clock() - since > self.rejoin_grace:
            self.forget(identity)
        elif since is not None:
            log.info("participant %r is back; its carrier choice stands", identity)

    def forget(self, identity: str) -> None:
        """Drop ``identity``'s choice at once."""
        self._left.pop(identity, None)
        if self._choices.pop(identity, None) is not None:
            log.info("participant %r left; no more data-carrier packets for it", identity)

    @property
    def requesters(self) -> dict[str, str]:
        """identity → topic of everyone who asked for the data carrier."""
        return {identity: topic for identity, topic in self._choices.items() if topic is not None}

    # -------------------------------------------------------------------------- sending

    def routes(self) -> list[tuple[str, list[str]]]:
        """``(topic, destination identities)`` per topic in use, each sorted; empty when idle."""
        if self.everyone_topic is None and not self.requesters:
            return []
        by_topic: dict[str, list[str]] = {}
        for identity in self.transport.other_identities():
            topic = self._choices.get(identity, self.everyone_topic)
            if topic is not None:
                by_topic.setdefault(topic, []).append(identity)
        return [(topic, sorted(ids)) for topic, ids in sorted(by_topic.items())]

    def send_packet(self, packet: bytes) -> bool:
        """Queue ``packet`` as a lossy data message for every route; True if any took it."""
        sent = False
        for topic, destinations in self.routes():
            sent = self.transport.send_data(packet, topic=topic, reliable=False,
                                            destinations=destinations) or sent
        return sent
