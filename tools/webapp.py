"""The demo's web app: static files, the locally served runtimes, the wheels, and the token endpoint.

One definition used by ``serve.py`` and by the browser tests, so the tests exercise what users run.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

from devstack import LiveKitServer
from httpserve import StaticServer

ROOT = Path(__file__).resolve().parent.parent
WEB_WHEELS = ROOT / ".cache" / "wheels" / "web"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TOKEN_TTL_S = 15 * 60

LIVEKIT_CLIENTS = {"2.23.0": "livekit-client", "2.16.1": "livekit-client-2.16.1"}
"""livekit-client builds served under /vendor/<folder>/ (the default first)."""


def mounts() -> dict[str, Path]:
    nm = ROOT / "node_modules"
    table = {
        "/worker_transform/": ROOT / "worker_transform",
        "/vendor/pyodide/": nm / "pyodide",
        "/vendor/pyscript/": nm / "@pyscript" / "core" / "dist",
        "/wheels/": WEB_WHEELS,
    }
    for folder in LIVEKIT_CLIENTS.values():
        table[f"/vendor/{folder}/"] = nm / folder / "dist"
    table["/"] = ROOT / "web"  # last: the most general mount
    return table


def web_config() -> dict:
    """What a page needs to boot: the wheels to install and where the runtimes are."""
    wheels = sorted(p.name for p in WEB_WHEELS.glob("*.whl"))
    return {
        "pyodideIndexURL": "/vendor/pyodide/",
        "wheels": [f"/wheels/{name}" for name in wheels],
        "livekitClients": {v: f"/vendor/{f}/livekit-client.esm.mjs" for v, f in LIVEKIT_CLIENTS.items()},
        "transformWorker": "/worker_transform/motion-transform.js",
    }


def pyscript_config() -> dict:
    """PyScript with the local interpreter and the local wheels: nothing from a CDN."""
    return {
        "interpreter": "/vendor/pyodide/pyodide.mjs",
        "packages": web_config()["wheels"],
        "packages_cache": "passthrough",
    }


class TokenEndpoint:
    """``POST /api/token`` → ``{token, serverUrl, roomName}``.

    Input: optional JSON ``{"identity": str, "name": str, "room": str}``. Names are checked against
    a strict pattern, the room must be one this app allows, and the grant is the least a viewer
    needs: join that room, subscribe, publish a microphone and data; 15 minutes. The API secret
    stays on the server.
    """

    def __init__(self, server: LiveKitServer, rooms: re.Pattern[str] | str, default_room: str) -> None:
        self.server = server
        self.rooms = re.compile(rooms) if isinstance(rooms, str) else rooms
        self.default_room = default_room

    def __call__(self, body: bytes) -> tuple[int, str, bytes]:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return self._error(400, "body must be JSON")
        if not isinstance(request, dict):
            return self._error(400, "body must be a JSON object")
        unknown = set(request) - {"identity", "name", "room"}
        if unknown:
            return self._error(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        identity = request.get("identity") or f"viewer-{secrets.token_hex(4)}"
        room = request.get("room") or self.default_room
        name = request.get("name") or identity
        for field, value in (("identity", identity), ("room", room)):
            if not isinstance(value, str) or not NAME_RE.match(value):
                return self._error(400, f"{field} must match {NAME_RE.pattern}")
        if not isinstance(name, str) or len(name) > 64:
            return self._error(400, "name must be a string of at most 64 characters")
        if not self.rooms.fullmatch(room):
            return self._error(403, f"room {room!r} is not offered here")
        token = self.server.token(identity, room, name=name, ttl_s=TOKEN_TTL_S, can_publish=True,
                                  can_subscribe=True, can_publish_data=True, sources=["microphone"])
        reply = {"token": token, "serverUrl": self.server.url, "roomName": room, "identity": identity}
        return 200, "application/json", json.dumps(reply).encode()

    @staticmethod
    def _error(status: int, message: str) -> tuple[int, str, bytes]:
        return status, "application/json", json.dumps({"error": message}).encode()


def build_app(server: LiveKitServer, *, rooms: str = r"avatar-demo", default_room: str = "avatar-demo",
              host: str = "127.0.0.1", port: int = 0) -> StaticServer:
    def json_route(make):
        return lambda _body: (200, "application/json", json.dumps(make()).encode())

    routes = {
        ("POST", "/api/token"): TokenEndpoint(server, rooms, default_room),
        ("GET", "/api/config"): json_route(web_config),
        ("GET", "/pyscript.json"): json_route(pyscript_config),
    }
    return StaticServer(ROOT, mounts(), host=host, port=port, routes=routes)
