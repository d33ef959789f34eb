"""Whom the provider obeys: the avatar participant and the agent it speaks for, nobody else.

The avatar is the participant named by ``avatar_identity``, else the first one that publishes the
motion track as an agent (``kind == agent``) or on behalf of an agent in the room (the
``lk.publish_on_behalf`` attribute). What others send is ignored and counted by kind. The JS data
filter (``js/data_filter.js``) applies the same list to data messages before they reach Python;
this class keeps it up to date and adds its counts to its own. docs/player.md, "Trust".
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..wire.datamsg import CONTROL_TOPIC

PUBLISH_ON_BEHALF = "lk.publish_on_behalf"
"""The attribute a LiveKit Agents avatar sets to the identity of the agent it speaks for."""


class AvatarTrust:
    """The avatar's identity (and its agent's), once known, and what was ignored from others.

    Plain Python over a participant's ``identity``, ``kind`` and ``attributes``; ``filter`` is the
    page's JS data filter of the current connection (``None`` between connections).
    """

    def __init__(self, fixed_identity: str | None, data_topic: str, log: logging.Logger) -> None:
        self.fixed_identity = fixed_identity
        """The avatar's identity as given to the provider, or ``None`` (the first agent wins)."""
        self.avatar_identity = fixed_identity
        """The avatar participant's identity, once known (or as given)."""
        self.agent_identity: str | None = None
        """The agent the avatar speaks for (its ``lk.publish_on_behalf`` attribute), if any."""
        self.data_topic = data_topic
        self.log = log
        self.filter: Any = None
        self._ignored: dict[str, int] = {}
        self._warned: set[tuple[str, str]] = set()

    def reset(self) -> None:
        """A new connection: nobody is known yet, nothing was ignored."""
        self.avatar_identity = self.fixed_identity
        self.agent_identity = None
        self._ignored.clear()
        self._warned.clear()

    def install(self, data_filter: Any) -> None:
        """Use this connection's JS data filter (and tell it whom to let through)."""
        self.filter = data_filter
        self.update()

    def detach(self) -> None:
        """The connection ends: keep the filter's counts, drop the filter."""
        self._ignored = self.counts()
        self.filter = None

    def is_avatar(self, participant: Any, room: Any) -> bool:
        """May ``participant``'s motion track drive the face? The named avatar, else the first
        agent (or a participant publishing on behalf of an agent in ``room``) with a motion track."""
        identity = participant.identity
        if self.fixed_identity is not None:
            return identity == self.fixed_identity
        if self.avatar_identity is not None and identity != self.avatar_identity:
            return False  # one avatar at a time: the first one keeps the face
        if self.filter is None:
            return False
        if self.filter.isAgent(participant):
            return True
        principal = self.filter.onBehalfOf(participant)
        if not principal or room is None:
            return False
        agent = room.remoteParticipants.get(principal)
        return agent is not None and bool(self.filter.isAgent(agent))

    def is_from_avatar(self, identity: str | None) -> bool:
        """Did the avatar itself send this (motion packets and control messages must)?"""
        return identity is not None and identity == self.avatar_identity

    def trusts(self, participant: Any) -> bool:
        """May ``participant``'s data messages drive the player's events?"""
        identity = participant.identity
        if identity in (self.avatar_identity, self.agent_identity):
            return True
        if self.avatar_identity is None and self.filter is not None:
            return bool(self.filter.isAgent(participant))  # not known yet: agents only
        return False

    def become_avatar(self, participant: Any) -> None:
        """``participant`` is the avatar from now on (and the agent it publishes for, if any)."""
        self.avatar_identity = participant.identity
        principal = self.filter.onBehalfOf(participant) if self.filter is not None else ""
        self.agent_identity = principal if principal and principal != participant.identity else None
        self.update()

    def forget(self, participant: Any) -> None:
        """``participant`` left: if it was the avatar (not a named one), the next one takes over."""
        if participant.identity == self.avatar_identity and self.fixed_identity is None:
            self.avatar_identity = self.agent_identity = None
            self.update()

    def update(self) -> None:
        """Tell the JS filter whom to let through (and whether any agent may, while no avatar is known)."""
        if self.filter is None:
            return
        identities = [i for i in (self.avatar_identity, self.agent_identity) if i]
        self.filter.trust(json.dumps(identities), self.avatar_identity is None)

    def ignore(self, what: str, identity: str | None, detail: str = "") -> None:
        """Count something ignored from ``identity`` (warned once per kind and sender)."""
        self._ignored[what] = self._ignored.get(what, 0) + 1
        if (what, identity or "") not in self._warned:
            self._warned.add((what, identity or ""))
            self.log.warning("ignoring %s from %s: not the avatar%s", what.replace("-", " "), identity,
                             f" ({detail})" if detail else "")

    def counts(self) -> dict[str, int]:
        """What was ignored, by kind: this class's counts plus the JS filter's (by topic)."""
        counts = dict(self._ignored)
        if self.filter is not None:
            for topic, n in json.loads(self.filter.counts()).items():
                what = self.topic_kind(topic)
                counts[what] = counts.get(what, 0) + n
        return counts

    def topic_kind(self, topic: str | None) -> str:
        """``"data-carrier"``, ``"control"`` or ``"data"``: how an ignored message is counted."""
        if topic == self.data_topic:
            return "data-carrier"
        if topic == CONTROL_TOPIC:
            return "control"
        return "data"
