"""LiveKit data messages as the rest of the worker sees them: a transport, and logged JSON messages.

The transport (the publisher, or a recorder in tests) only queues: sending happens later, in
order, on the event loop, so callers in the real-time loop never wait for the network.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .streamer import SendLog

__all__ = ["DataTransport", "MessageSender", "encode_json"]

log = logging.getLogger("avatar_worker.messaging")  # the name it always logged under (serve.py, tests filter on it)


class DataTransport(Protocol):
    """Where data messages go: :class:`avatar_worker.transport.publisher.Publisher`, or a fake in tests."""

    def send_data(self, payload: bytes, *, topic: str, reliable: bool,
                  destinations: Sequence[str] = ()) -> bool:
        """Queue one data message; ``destinations`` empty means everyone else in the room.
        False when it cannot go out (not connected, nobody to send to, queue full)."""
        ...

    def other_identities(self) -> list[str]:
        """The identities of everyone else in the room now."""
        ...


def encode_json(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (non-ASCII text stays as it is)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class MessageSender:
    """Sends reliable JSON data messages and logs each one in the send log.

    Log record: ``{"kind": "data-message", "t_ms", "topic", "to", "sent", "type", "message"}``,
    where ``type`` repeats the message's own ``type`` and ``to`` is the list of destination
    identities (empty: everyone).
    """

    def __init__(self, transport: DataTransport, *, send_log: SendLog | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.transport = transport
        self.send_log = send_log
        self._wall = wall_clock
        self.sent = 0

    def send(self, message: dict[str, Any], *, topic: str, destinations: Sequence[str] = ()) -> bool:
        """Queue ``message`` (reliable) on ``topic``; True if it was accepted for sending."""
        try:
            ok = self.transport.send_data(encode_json(message), topic=topic, reliable=True,
                                          destinations=list(destinations))
        except Exception:
            log.exception("sending a data message on %r failed", topic)
            ok = False
        if ok:
            self.sent += 1
        if self.send_log is not None:
            self.send_log.write({
                "kind": "data-message",
                "t_ms": round(self._wall() * 1000, 3),
                "topic": topic,
                "to": list(destinations),
                "sent": ok,
                "type": message.get("type"),
                "message": message,
            })
        return ok
