"""The demo's web app: static files, the locally served runtimes, the wheels, and the token endpoint.

One definition used by ``serve.py`` and by the browser tests, so the tests exercise what users run.
"""

from __future__ import annotations

import json
import re
import secrets
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path

from .devstack import LiveKitServer
from .httpserve import (DEFAULT_CSP, DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT_S, StaticServer,
                       inline_script_hashes)

ROOT = Path(__file__).resolve().parent.parent
WEB_WHEELS = ROOT / ".cache" / "wheels" / "web"
DEV_PAGES = ROOT / "web" / "dev"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # room names
NAME_MAX = 64  # display names
TOKEN_TTL_S = 15 * 60
VIEWER_SOURCES = ("microphone",)

TRANSFORM_WORKER_URL = "/js/avatarplayer/motion-transform.js"
"""Where the app serves the packaged transform worker, for pages that load it by URL (the harness
pages; the player itself starts it from the wheel)."""

LIVEKIT_CLIENTS = {"2.23.0": "livekit-client", "2.16.1": "livekit-client-2.16.1"}
"""livekit-client builds served under /vendor/<folder>/ (the default first)."""


def mounts() -> dict[str, Path]:
    nm = ROOT / "node_modules"
    table = {
        "/js/avatarplayer/": ROOT / "avatarplayer" / "browser" / "js",
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
        "transformWorker": TRANSFORM_WORKER_URL,
    }


def pyscript_config() -> dict:
    """PyScript with the local interpreter and the local wheels: nothing from a CDN."""
    return {
        "interpreter": "/vendor/pyodide/pyodide.mjs",
        "packages": web_config()["wheels"],
        "packages_cache": "passthrough",
    }


class TokenEndpoint:
    """``POST /api/token`` → ``{token, serverUrl, roomName, identity}``.

    Input: an empty body or a JSON object with at most ``{"name": str, "room": str}``. The server
    chooses every identity (``viewer-<16 hex digits>``): a request that names one gets 400, so a
    browser can never take the avatar's, an agent's or another viewer's identity (LiveKit would
    disconnect the one already in the room). ``name`` is only a display name: at most 64
    characters, no control or format characters. The room must match this app's pattern (403
    otherwise). The grant is the least a viewer needs: join that room, subscribe, publish data and
    a microphone (no camera, no screen share); 15 minutes. The API secret stays on the server.
    Every answer is JSON; a refusal is ``{"error": "..."}`` with 400 or 403.
    """

    def __init__(self, server: LiveKitServer, rooms: re.Pattern[str] | str, default_room: str) -> None:
        self.server = server
        self.rooms = re.compile(rooms) if isinstance(rooms, str) else rooms
        self.default_room = default_room

    def __call__(self, body: bytes) -> tuple[int, str, bytes]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(400, "body must be UTF-8 JSON")
        try:
            request = json.loads(text, object_pairs_hook=_unique_keys) if text.strip() else {}
        except (ValueError, RecursionError):  # RecursionError: nested too deep for the parser
            return self._error(400, "body must be a JSON object")
        if not isinstance(request, dict):
            return self._error(400, "body must be a JSON object")
        if "identity" in request:
            return self._error(400, "identity is chosen by the server; send only name and room")
        unknown = set(request) - {"name", "room"}
        if unknown:
            return self._error(400, f"unknown field(s): {', '.join(sorted(map(repr, unknown)))[:200]}")
        room = request.get("room", self.default_room)
        if not isinstance(room, str) or not NAME_RE.match(room):
            return self._error(400, f"room must match {NAME_RE.pattern}")
        if not self.rooms.fullmatch(room):
            return self._error(403, f"room {room!r} is not offered here")
        identity = f"viewer-{secrets.token_hex(8)}"
        name = request.get("name", identity)
        if not valid_display_name(name):
            return self._error(400, f"name must be a string of 1 to {NAME_MAX} characters without control characters")
        token = self.server.token(identity, room, name=name, ttl_s=TOKEN_TTL_S, can_publish=True,
                                  can_subscribe=True, can_publish_data=True, sources=list(VIEWER_SOURCES))
        reply = {"token": token, "serverUrl": self.server.url, "roomName": room, "identity": identity}
        return 200, "application/json", json.dumps(reply).encode()

    @staticmethod
    def _error(status: int, message: str) -> tuple[int, str, bytes]:
        return status, "application/json", json.dumps({"error": message}).encode()


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def valid_display_name(name: object) -> bool:
    """A display name: a string of 1 to NAME_MAX characters, none of them a control, format,
    surrogate, private-use or unassigned character, nor a line or paragraph separator."""
    return (isinstance(name, str) and 0 < len(name) <= NAME_MAX
            and not any(unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp") for c in name))


def livekit_sources(url: str) -> list[str]:
    """CSP sources for the LiveKit server at ``url``: its signalling WebSocket and the HTTP(S) origin
    livekit-client asks when a connection fails (and, for LiveKit Cloud, its region hosts)."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    ws, http = ("wss", "https") if secure else ("ws", "http")
    sources = [f"{ws}://{parts.netloc}", f"{http}://{parts.netloc}"]
    if (parts.hostname or "").endswith(".livekit.cloud"):
        sources += [f"{ws}://*.livekit.cloud", f"{http}://*.livekit.cloud"]
    return sources


def content_security_policy(livekit_url: str) -> Callable[[str, bytes], str]:
    """The CSP of each HTML page: strict for the app's pages (scripts from this server and the
    page's own inline scripts by hash, plus WebAssembly and eval for Pyodide/PyScript; connections
    to this server and the LiveKit server only; no frames, no plugins). The harness pages under
    ``/dev/`` (served with ``dev=True`` only) run whatever Python a test sends and connect where
    their ``?url=`` says: they get the basic policy (no framing, no plugins)."""
    connect = " ".join(["'self'", *livekit_sources(livekit_url)])

    def policy(url_path: str, html: bytes) -> str:
        if url_path == "/dev" or url_path.startswith("/dev/"):
            return DEFAULT_CSP
        scripts = " ".join(["'self'", "'wasm-unsafe-eval'", "'unsafe-eval'", *inline_script_hashes(html)])
        return "; ".join([
            "default-src 'self'",
            f"script-src {scripts}",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "media-src 'self' blob: mediastream:",
            "worker-src 'self' blob:",
            f"connect-src {connect}",
            "font-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ])

    return policy


def build_app(server: LiveKitServer, *, rooms: str = r"avatar-demo", default_room: str = "avatar-demo",
              host: str = "127.0.0.1", port: int = 0, dev: bool = False, allowed_hosts: Iterable[str] = (),
              timeout_s: float = DEFAULT_TIMEOUT_S, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> StaticServer:
    """The app on ``host:port``. ``dev``: also serve the test harness pages under ``/dev/`` (404
    otherwise). ``allowed_hosts``: host names besides the loopback ones that browsers may use to
    reach it (the ``Host`` and ``Origin`` checks of tools/httpserve.py)."""
    def json_route(make):
        return lambda _body: (200, "application/json", json.dumps(make()).encode())

    routes = {
        ("POST", "/api/token"): TokenEndpoint(server, rooms, default_room),
        ("GET", "/api/config"): json_route(web_config),
        ("GET", "/pyscript.json"): json_route(pyscript_config),
    }
    return StaticServer(ROOT, mounts(), host=host, port=port, routes=routes, allowed_hosts=allowed_hosts,
                        exclude=() if dev else (DEV_PAGES,), csp=content_security_policy(server.url),
                        timeout_s=timeout_s, max_connections=max_connections)
