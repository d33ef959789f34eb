"""The demo's web app: static files, the locally served runtimes, the wheels, and the token endpoint.

One definition used by ``serve.py`` and by the browser tests, so the tests exercise what users run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import threading
import time
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
VISIT_PREFIX = "visit-"
"""Rooms of visitor sessions: ``visit-`` and 24 hex digits, chosen here."""
MAX_SESSIONS = 10_000
AVATAR_IDENTITY = "avatar-worker"

log = logging.getLogger("webapp")

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


class VisitorSessions:
    """One room per visitor session (``rooms="visitor"``): a new session gets a fresh room, chosen
    here, and a secret that resumes it. A secret is good for :data:`TOKEN_TTL_S` after the last
    token it got (the lifetime of that token); then it is forgotten. Only a hash of each secret is
    kept. At most ``limit`` live sessions: beyond that, new ones are refused (the caller says 503).
    Thread-safe (the web server answers each connection in a thread)."""

    def __init__(self, ttl_s: float = TOKEN_TTL_S, limit: int = MAX_SESSIONS, clock=time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self._clock = clock
        self._rooms: dict[bytes, tuple[str, float]] = {}  # sha256(secret) -> (room, expires)
        self._lock = threading.Lock()

    def open(self) -> tuple[str, str] | None:
        """A new session: (secret, room), or None when ``limit`` sessions are live."""
        secret = secrets.token_urlsafe(24)
        room = VISIT_PREFIX + secrets.token_hex(12)
        with self._lock:
            self._expire()
            if len(self._rooms) >= self.limit:
                return None
            self._rooms[_digest(secret)] = (room, self._clock() + self.ttl_s)
        return secret, room

    def resume(self, secret: object) -> str | None:
        """The room of a live session (its lifetime starts again), or None."""
        if not isinstance(secret, str) or not 0 < len(secret) <= 64:
            return None
        key = _digest(secret)
        with self._lock:
            self._expire()
            found = self._rooms.get(key)
            if found is None:
                return None
            self._rooms[key] = (found[0], self._clock() + self.ttl_s)
            return found[0]

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._rooms)

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, (_, expires) in self._rooms.items() if expires <= now]:
            del self._rooms[key]


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class AvatarDispatch:
    """Who brings each visitor their avatar: LiveKit, by explicit dispatch to the agent workers
    registered as ``agent_name`` (``python -m avatar_worker --dispatch``). A new visitor's token
    carries it in its room configuration, so LiveKit dispatches the avatar when the room is
    created. A resumed session gets a fresh avatar: the old one, healthy or not, is removed, and a
    new job is asked for.

    LiveKit offers a job once: if no worker is free at that moment (all full, or one restarting
    after a crash) the room stays without an avatar. So after every token a watcher (a thread,
    :meth:`ensure`) looks at the room for up to :data:`ENSURE_S`: when no avatar has joined
    :data:`REDISPATCH_S` after the room appeared (or after the last request), and no job of ours is
    starting there, it asks again; a job still starting gets three times as long. Asking too early
    is worse than late: a second avatar takes the first one's identity, that session ends, and in
    a full run LiveKit then ended the newer job as well, leaving the room empty."""

    def __init__(self, server: LiveKitServer, agent_name: str, identity: str = AVATAR_IDENTITY) -> None:
        self.server = server
        self.agent_name = agent_name
        self.identity = identity

    def ensure(self, room: str, *, fresh: bool) -> threading.Thread:
        """Watch ``room`` until its avatar is there, in a daemon thread. Errors are logged, never
        raised: the visitor gets their token anyway.

        ``fresh``: replace the one it has. The old avatar is removed at once, before the token goes
        out: a page that joined while the old one was still listed would subscribe to its tracks,
        and the new avatar's tracks would then come on the recycled receivers, where Chromium runs
        no new script transform (docs/player-guide.md, "Motion carriers"): the player would fall
        back to the data carrier and miss the start of the greeting."""
        if fresh:
            try:
                removed = asyncio.run(self._remove(room))
                log.info("avatar of room %s: %s", room, "the old one removed" if removed else "none to remove")
            except Exception as exc:
                log.warning("avatar of room %s: could not remove the old one: %s", room, exc)
        thread = threading.Thread(target=self._run, args=(room, fresh), name=f"avatar-{room}", daemon=True)
        thread.start()
        return thread

    async def _remove(self, room: str) -> bool:
        from livekit import api

        async with api.LiveKitAPI(self.server.http_url, self.server.api_key, self.server.api_secret) as lk:
            try:
                await lk.room.remove_participant(api.RoomParticipantIdentity(room=room, identity=self.identity))
                return True
            except api.TwirpError:
                return False  # no avatar there (it left, or never came)

    def _run(self, room: str, fresh: bool) -> None:
        try:
            log.info("avatar of room %s: %s", room, asyncio.run(self._ensure(room, fresh)))
        except Exception as exc:  # the API unreachable, a refusal
            log.warning("avatar of room %s: %s", room, exc)

    async def _ensure(self, room: str, fresh: bool) -> str:
        from livekit import api

        async with api.LiveKitAPI(self.server.http_url, self.server.api_key, self.server.api_secret) as lk:
            asked_at: float | None = None
            if fresh:  # the old avatar is gone already (ensure)
                if await self._exists(lk, room):
                    await self._dispatch(lk, room)
                    asked_at = time.monotonic()
            deadline = time.monotonic() + ENSURE_S
            while time.monotonic() < deadline:
                await asyncio.sleep(ENSURE_POLL_S)
                if not await self._exists(lk, room):
                    continue  # the visitor has not joined yet: the token dispatches when they do
                if await self._avatar_here(lk, room):
                    return "the avatar is here"
                now = time.monotonic()
                if asked_at is None:
                    asked_at = now  # the room exists: the token's dispatch is under way, give it time
                elif now - asked_at >= REDISPATCH_S * (3 if await self._starting(lk, room) else 1):
                    # nobody took the job (no worker was free), or its session never came (a job
                    # still starting gets three times as long: a second avatar would end the first)
                    await self._dispatch(lk, room)
                    asked_at = now
            return f"no avatar after {ENSURE_S:.0f} s (no worker free?)"

    @staticmethod
    async def _exists(lk, room: str) -> bool:
        from livekit import api

        return bool((await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms)

    async def _avatar_here(self, lk, room: str) -> bool:
        from livekit import api

        found = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        return any(p.identity == self.identity for p in found.participants)

    async def _starting(self, lk, room: str) -> bool:
        from livekit.protocol.agent import JobStatus

        live = (JobStatus.JS_PENDING, JobStatus.JS_RUNNING)
        return any(job.state.status in live for d in await lk.agent_dispatch.list_dispatch(room)
                   if d.agent_name == self.agent_name for job in d.state.jobs)

    async def _dispatch(self, lk, room: str) -> None:
        from livekit import api

        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name=self.agent_name, room=room))
        log.info("avatar of room %s: asked LiveKit for one", room)


ENSURE_S = 60.0
"""How long a room is watched for its avatar after a token."""
ENSURE_POLL_S = 1.0
REDISPATCH_S = 10.0
"""A job that has not brought the avatar this long after it was asked for is asked for again."""


class TokenEndpoint:
    """``POST /api/token`` → ``{token, serverUrl, roomName, identity}`` (and ``session`` for
    visitor rooms).

    Input: an empty body or a JSON object with at most ``{"name": str, "room": str}``. The server
    chooses every identity (``viewer-<16 hex digits>``): a request that names one gets 400, so a
    browser can never take the avatar's, an agent's or another viewer's identity (LiveKit would
    disconnect the one already in the room). ``name`` is only a display name: at most 64
    characters, no control or format characters. The room must match this app's pattern (403
    otherwise). The grant is the least a viewer needs: join that room, subscribe, publish data and
    a microphone (no camera, no screen share); 15 minutes. The API secret stays on the server.
    Every answer is JSON; a refusal is ``{"error": "..."}`` with 400 or 403.

    With ``sessions`` (visitor rooms) the server also chooses the room: the body may not name one.
    ``{}`` opens a new session in a fresh room and the answer carries its ``session`` secret;
    ``{"session": secret}`` resumes it: a new token for the same room, never another's (403 for an
    unknown or expired secret). With ``dispatch`` the tokens ask LiveKit for the avatar, the room is
    watched until it has one, and a resumed session gets a fresh one (:class:`AvatarDispatch`).
    """

    def __init__(self, server: LiveKitServer, rooms: re.Pattern[str] | str, default_room: str, *,
                 sessions: VisitorSessions | None = None, dispatch: AvatarDispatch | None = None) -> None:
        self.server = server
        self.rooms = re.compile(rooms) if isinstance(rooms, str) else rooms
        self.default_room = default_room
        self.sessions = sessions
        self.dispatch = dispatch
        self._urls = list(getattr(server, "urls", None) or [server.url])
        self._next_url = 0
        self._url_lock = threading.Lock()

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
        allowed = {"name", "session"} if self.sessions is not None else {"name", "room"}
        if self.sessions is not None and "room" in request:
            return self._error(400, "the room is chosen by the server; send only name (and session to resume)")
        unknown = set(request) - allowed
        if unknown:
            return self._error(400, f"unknown field(s): {', '.join(sorted(map(repr, unknown)))[:200]}")
        identity = f"viewer-{secrets.token_hex(8)}"
        name = request.get("name", identity)
        if not valid_display_name(name):
            return self._error(400, f"name must be a string of 1 to {NAME_MAX} characters without control characters")
        reply: dict[str, str] = {}
        resumed = False
        if self.sessions is not None:
            if "session" in request:
                room = self.sessions.resume(request["session"])
                if room is None:
                    return self._error(403, "unknown or expired session: start a new one (send no session)")
                reply["session"], resumed = request["session"], True
            else:
                opened = self.sessions.open()
                if opened is None:
                    return self._error(503, "too many visitor sessions; try again later")
                reply["session"], room = opened
        else:
            room = request.get("room", self.default_room)
            if not isinstance(room, str) or not NAME_RE.match(room):
                return self._error(400, f"room must match {NAME_RE.pattern}")
            if not self.rooms.fullmatch(room):
                return self._error(403, f"room {room!r} is not offered here")
        if self.dispatch is not None:
            self.dispatch.ensure(room, fresh=resumed)
        token = self.server.token(identity, room, name=name, ttl_s=TOKEN_TTL_S, can_publish=True,
                                  can_subscribe=True, can_publish_data=True, sources=list(VIEWER_SOURCES),
                                  dispatch=[self.dispatch.agent_name] if self.dispatch is not None else [])
        reply.update(token=token, serverUrl=self._server_url(), roomName=room, identity=identity)
        return 200, "application/json", json.dumps(reply).encode()

    def _server_url(self) -> str:
        """The server's URL; with several nodes (``server.urls``), each in turn, as a load balancer
        in front of a cluster would spread them: a room is reachable through any node."""
        with self._url_lock:
            url = self._urls[self._next_url % len(self._urls)]
            self._next_url += 1
        return url

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


def content_security_policy(livekit_url: str | Iterable[str]) -> Callable[[str, bytes], str]:
    """The CSP of each HTML page: strict for the app's pages (scripts from this server and the
    page's own inline scripts by hash, plus WebAssembly and eval for Pyodide/PyScript; connections
    to this server and the LiveKit server only; no frames, no plugins). The harness pages under
    ``/dev/`` (served with ``dev=True`` only) run whatever Python a test sends and connect where
    their ``?url=`` says: they get the basic policy (no framing, no plugins)."""
    urls = [livekit_url] if isinstance(livekit_url, str) else list(livekit_url)
    connect = " ".join(["'self'", *[source for url in urls for source in livekit_sources(url)]])

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
              timeout_s: float = DEFAULT_TIMEOUT_S, max_connections: int = DEFAULT_MAX_CONNECTIONS,
              visitors: bool = False, dispatch: str | None = None) -> StaticServer:
    """The app on ``host:port``. ``dev``: also serve the test harness pages under ``/dev/`` (404
    otherwise). ``allowed_hosts``: host names besides the loopback ones that browsers may use to
    reach it (the ``Host`` and ``Origin`` checks of tools/httpserve.py). ``visitors``: a room per
    visitor session (:class:`VisitorSessions`) instead of the ``rooms`` pattern; ``dispatch``: the
    agent name LiveKit dispatches each visitor's avatar to (:class:`AvatarDispatch`)."""
    def json_route(make):
        return lambda _body: (200, "application/json", json.dumps(make()).encode())

    routes = {
        ("POST", "/api/token"): TokenEndpoint(
            server, rooms, default_room, sessions=VisitorSessions() if visitors else None,
            dispatch=AvatarDispatch(server, dispatch) if dispatch else None),
        ("GET", "/api/config"): json_route(web_config),
        ("GET", "/pyscript.json"): json_route(pyscript_config),
    }
    return StaticServer(ROOT, mounts(), host=host, port=port, routes=routes, allowed_hosts=allowed_hosts,
                        exclude=() if dev else (DEV_PAGES,), csp=content_security_policy(getattr(server, "urls", None) or server.url),
                        timeout_s=timeout_s, max_connections=max_connections)
