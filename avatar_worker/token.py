"""Access tokens for the worker: minted locally with the LiveKit API key and secret."""

from __future__ import annotations

import datetime

from livekit import api

__all__ = ["PUBLISH_SOURCES", "mint_token"]

PUBLISH_SOURCES = ("camera", "microphone")
"""The only track sources the worker may publish: motion (camera) and speech (microphone)."""

DEFAULT_TTL = datetime.timedelta(hours=6)


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
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
        can_publish_sources=list(PUBLISH_SOURCES),
    )
    token = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_name(name or identity)
        .with_kind("agent")
        .with_grants(grants)
        .with_ttl(ttl)
    )
    if attributes:
        token = token.with_attributes(dict(attributes))
    return token.to_jwt()
