"""Access tokens, minted locally with the LiveKit API key and secret: the worker's own
(:func:`mint_token`), and the general form it is built on (:func:`access_token`), which the dev
stack (``tools/devstack.py``) uses for the tests' and the demo's participants."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence

from livekit import api

__all__ = ["PUBLISH_SOURCES", "access_token", "mint_token"]

PUBLISH_SOURCES = ("camera", "microphone")
"""The only track sources the worker may publish: motion (camera) and speech (microphone)."""

DEFAULT_TTL = datetime.timedelta(hours=6)


def access_token(
    api_key: str,
    api_secret: str,
    *,
    room: str,
    identity: str,
    name: str | None = None,
    kind: str | None = None,
    attributes: Mapping[str, str] | None = None,
    ttl: datetime.timedelta = DEFAULT_TTL,
    can_publish: bool = True,
    can_subscribe: bool = True,
    can_publish_data: bool = True,
    sources: Sequence[str] = (),
    dispatch: Sequence[str] = (),
    dispatch_metadata: str = "",
) -> str:
    """A JWT that lets ``identity`` join ``room`` (that room only) with the grants given.

    ``name`` defaults to the identity; ``kind`` (``"agent"``, ...) and ``attributes`` are set
    only if given; ``sources`` empty means no restriction on the track sources published.
    ``dispatch``: agent names LiveKit dispatches into the room when this token's holder creates it
    (explicit dispatch: avatar_worker/dispatch.py), each job with ``dispatch_metadata``.
    """
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=can_publish,
        can_subscribe=can_subscribe,
        can_publish_data=can_publish_data,
        can_publish_sources=list(sources),
    )
    token = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_name(name or identity)
        .with_grants(grants)
        .with_ttl(ttl)
    )
    if kind:
        token = token.with_kind(kind)
    if attributes:
        token = token.with_attributes(dict(attributes))
    if dispatch:
        token = token.with_room_config(api.RoomConfiguration(
            agents=[api.RoomAgentDispatch(agent_name=name, metadata=dispatch_metadata) for name in dispatch]))
    return token.to_jwt()


def mint_token(
    api_key: str,
    api_secret: str,
    *,
    room: str,
    identity: str,
    name: str | None = None,
    attributes: dict[str, str] | None = None,
    ttl: datetime.timedelta = DEFAULT_TTL,
) -> str:
    """A JWT that lets ``identity`` join ``room`` as an ``agent`` with the least grants it needs.

    Grants: join this one room, publish camera and microphone only, publish data (RPC answers,
    the data-packet fallback carrier), subscribe (the demo listens to the user's microphone). No
    room admin, no metadata updates, no other rooms.
    """
    if not room:
        raise ValueError("room must not be empty")
    if not identity:
        raise ValueError("identity must not be empty")
    return access_token(api_key, api_secret, room=room, identity=identity, name=name, kind="agent",
                        attributes=attributes, ttl=ttl, can_publish=True, can_subscribe=True,
                        can_publish_data=True, sources=PUBLISH_SOURCES)
