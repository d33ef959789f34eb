"""avatar_worker/token.py: the worker's access token and its grants. No server, no network."""

from __future__ import annotations

import pytest

from avatar_worker.token import mint_token


def test_token_grants_are_minimal() -> None:
    import jwt

    token = mint_token("key", "s" * 40, room="demo", identity="avatar-worker")
    claims = jwt.decode(token, "s" * 40, algorithms=["HS256"])
    assert claims["iss"] == "key" and claims["sub"] == "avatar-worker"
    assert claims["kind"] == "agent"
    assert claims["exp"] > claims["nbf"]
    assert claims["video"] == {
        "roomJoin": True, "room": "demo", "canPublish": True, "canSubscribe": True,
        "canPublishData": True, "canPublishSources": ["camera", "microphone"]}
    with pytest.raises(ValueError):
        mint_token("key", "s" * 40, room="", identity="x")
