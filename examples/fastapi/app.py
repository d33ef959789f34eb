"""The avatar page behind your own web app: a FastAPI app with a token endpoint and the bundle.

    app = create_app(Settings.from_env(), site=Path("site"))   # then serve it with uvicorn

- ``POST /api/token`` mints a LiveKit access token for one viewer (livekit-api): an identity the
  server chooses (``viewer-<16 hex digits>``), the room of this app's settings, the least grants a
  viewer needs (join that room, subscribe, publish data, publish the microphone and nothing else),
  :data:`TOKEN_TTL` to join. The browser may send ``{}`` or ``{"name": "..."}`` (a display name);
  anything else, ``identity`` and ``room`` included, is refused with 400. The answer is
  ``{"serverUrl", "participantToken", "roomName", "identity"}``: what the bundle's page reads.
- ``/``: the bundle (``python -m avatarplayer.bundle``) as static files.

Settings come from the environment: ``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET``
and ``AVATAR_ROOM``. The API secret only signs tokens here: it is never sent to the browser.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from livekit import api

__all__ = ["DEFAULT_ROOM", "NAME_MAX", "TOKEN_TTL", "Settings", "create_app"]

DEFAULT_ROOM = "avatar-fastapi"
TOKEN_TTL = datetime.timedelta(minutes=10)
"""How long a token may be used to join (a participant already in the room stays)."""
NAME_MAX = 64
BODY_MAX = 1024
ROOM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
VIEWER_SOURCES = ["microphone"]
NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True)
class Settings:
    """Where the LiveKit server is, the key and secret to sign with, and the avatar's room."""

    url: str
    api_key: str
    api_secret: str = field(repr=False)
    room: str = DEFAULT_ROOM

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError(f"LIVEKIT_URL must be a ws://, wss://, http:// or https:// URL, not {self.url!r}")
        if not self.api_key or not self.api_secret:
            raise ValueError("LIVEKIT_API_KEY and LIVEKIT_API_SECRET must not be empty")
        if not ROOM_RE.fullmatch(self.room):
            raise ValueError(f"AVATAR_ROOM must match {ROOM_RE.pattern}, not {self.room!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """From ``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET`` and ``AVATAR_ROOM``
        (default :data:`DEFAULT_ROOM`). Raises ValueError naming what is missing or wrong."""
        env = os.environ if environ is None else environ
        missing = [name for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET") if not env.get(name)]
        if missing:
            raise ValueError(f"set {', '.join(missing)} in the environment")
        return cls(url=env["LIVEKIT_URL"], api_key=env["LIVEKIT_API_KEY"], api_secret=env["LIVEKIT_API_SECRET"],
                   room=env.get("AVATAR_ROOM") or DEFAULT_ROOM)

    @property
    def browser_url(self) -> str:
        """The URL the page connects to (livekit-client wants ws:// or wss://)."""
        for plain, secure in (("http://", "ws://"), ("https://", "wss://")):
            if self.url.startswith(plain):
                return secure + self.url[len(plain):]
        return self.url


def valid_display_name(name: object) -> bool:
    """1 to :data:`NAME_MAX` characters, none of them a control, format or unassigned one."""
    return (isinstance(name, str) and 0 < len(name) <= NAME_MAX and name.strip() != ""
            and not any(unicodedata.category(c).startswith("C") for c in name))


def refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=NO_STORE)


def viewer_token(settings: Settings, identity: str, name: str) -> str:
    grants = api.VideoGrants(room_join=True, room=settings.room, can_subscribe=True, can_publish=True,
                             can_publish_data=True, can_publish_sources=list(VIEWER_SOURCES))
    return (api.AccessToken(settings.api_key, settings.api_secret).with_identity(identity).with_name(name)
            .with_grants(grants).with_ttl(TOKEN_TTL).to_jwt())


def create_app(settings: Settings, site: Path | None) -> FastAPI:
    """The app: ``POST /api/token``, and the bundle in ``site`` at ``/`` (``None``: the endpoint only)."""
    app = FastAPI(title="avatarplayer", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/api/token")
    async def token(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > BODY_MAX:
            return refuse(400, f"the body is over {BODY_MAX} bytes")
        try:
            asked = json.loads(body) if body.strip() else {}
        except (ValueError, RecursionError):  # ValueError covers bad UTF-8 too
            return refuse(400, "the body must be a JSON object")
        if not isinstance(asked, dict):
            return refuse(400, "the body must be a JSON object")
        if "identity" in asked or "room" in asked:
            return refuse(400, "the server chooses the identity and the room: send only an optional name")
        if set(asked) - {"name"}:
            return refuse(400, "unknown field(s): send only an optional name")
        identity = f"viewer-{secrets.token_hex(8)}"
        name = asked.get("name", identity)
        if not valid_display_name(name):
            return refuse(400, f"name must be 1 to {NAME_MAX} characters, no control characters")
        return JSONResponse({"serverUrl": settings.browser_url, "participantToken": viewer_token(settings, identity, name),
                             "roomName": settings.room, "identity": identity}, headers=NO_STORE)

    if site is not None:
        app.mount("/", StaticFiles(directory=site, html=True), name="site")
    return app
