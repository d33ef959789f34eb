"""The data-packet carrier, the player's side: asking the avatar worker for motion packets as data
messages, and reading its answers on the control topic (docs/wire-format.md §3b).

A request sent while either side is still joining can be lost, so it is repeated about once a
second until the worker acknowledges it (``carrier-ack``) or refuses (``carrier-error``: asking
again would get the same answer).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..wire.datamsg import CONTROL_TOPIC, parse_json
from . import jsutil

REQUEST_EVERY_MS = 900
"""An unanswered request is sent again after this long (the provider polls about once a second)."""


class DataCarrierRequests:
    """Which avatars were asked for the data carrier, and what they answered."""

    def __init__(self, data_topic: str, log: logging.Logger) -> None:
        self.data_topic = data_topic
        self.log = log
        self.requested: set[str] = set()
        self.acked: set[str | None] = set()
        self.refused: set[str | None] = set()
        self.requested_at_ms = 0.0
        self.malformed = 0
        """Control messages that were not a small JSON object."""

    def reset(self) -> None:
        """A new connection: nobody was asked yet."""
        self.requested.clear()
        self.acked.clear()
        self.refused.clear()
        self.malformed = 0

    def forget(self, identity: str) -> None:
        """``identity`` left the room."""
        self.requested.discard(identity)
        self.acked.discard(identity)

    def due(self, identity: str | None, now_ms: float) -> bool:
        """Should the request to ``identity`` be sent again now?"""
        return (identity is not None and identity not in self.acked and identity not in self.refused
                and now_ms - self.requested_at_ms > REQUEST_EVERY_MS)

    def request(self, room: Any, identity: str | None, *, again: bool = False) -> None:
        """Ask ``identity`` (the avatar) to send us motion packets on the data topic."""
        if identity is None or room is None or (identity in self.requested and not again):
            return
        import js

        self.requested.add(identity)
        if again:
            self.acked.discard(identity)
        self.requested_at_ms = jsutil.now_ms()
        message = json.dumps({"type": "carrier", "carrier": "data", "topic": self.data_topic})
        promise = room.localParticipant.publishData(
            js.TextEncoder.new().encode(message),
            jsutil.js_object({"reliable": True, "topic": CONTROL_TOPIC, "destinationIdentities": [identity]}))
        promise.catch(jsutil.js_catch(self.log, "asking the avatar for the data carrier failed"))
        self.log.info("asked %s for motion packets on the data topic %r", identity, self.data_topic)

    def on_control(self, payload: bytes, identity: str | None) -> ConnectionError | None:
        """A control message from the avatar; returns the error to report when it refused."""
        message = parse_json(payload)
        if not isinstance(message, dict):
            self.malformed += 1
            self.log.warning("a control message from %s that is not a small JSON object (%d bytes)",
                             identity, len(payload))
            return None
        if message.get("type") == "carrier-ack" and message.get("carrier") == "data":
            self.acked.add(identity)
            self.log.info("%s sends motion packets on the data topic %r", identity, message.get("topic"))
        elif message.get("type") == "carrier-error":
            why = message.get("error")
            self.log.error("%s cannot use the data carrier: %s", identity, why)
            self.refused.add(identity)  # asking again would get the same answer
            return ConnectionError(f"the avatar refused the data carrier: {str(why)[:200]}")
        return None
