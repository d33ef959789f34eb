"""A small, strict HTTP/1.1 server for the demo and the browser tests, on 127.0.0.1 by default.

Serves chosen folders of the repository under URL prefixes (by default ``/web/``,
``/js/avatarplayer/`` (the player's JavaScript) and ``/node_modules/``) with the MIME types browsers insist on for
module scripts and WebAssembly, and ``Cache-Control: no-store`` so a test never sees a stale
file. Anything outside the mounts, or inside one of the ``exclude`` folders, is 404; paths cannot
escape a mount, through ``..``, ``%2e%2e`` or a symlink.

    with StaticServer(ROOT) as server:
        page.goto(server.url("/web/dev/transform-probe.html"))

Besides files it answers ``routes``: ``{("POST", "/api/token"): handler}`` where a handler takes the
request body and returns ``(status, content_type, body)`` (serve.py's token endpoint).

What it accepts (everything else is refused with a status, never a traceback or a reset):

- request line ``METHOD /path HTTP/1.0|1.1`` of at most 8 KiB (414 beyond), at most 64 header
  lines of at most 8 KiB each, 32 KiB in all (431 beyond); no obsolete line folding, no control
  characters in values (400);
- exactly one ``Host``, naming an allowed host: by default only ``127.0.0.1``, ``localhost`` and
  ``[::1]``, with any port (403 otherwise: a DNS-rebinding page sends its own name and gets nothing);
  ``allowed_hosts`` adds names;
- on POST routes, an ``Origin`` header, when there is one, must be ``http(s)://`` an allowed host
  (403 otherwise);
- bodies framed by one ``Content-Length`` of plain decimal digits (none on a POST: an empty body),
  at most ``MAX_BODY`` (16 KiB, 413); any ``Transfer-Encoding`` is refused (400): no chunked
  bodies. After any such refusal the connection is closed (the unread body is never taken for the
  next request);
- a whole request (from waiting for its first byte to its last body byte) within ``timeout_s``
  (default 10 s; a stalled request gets 408, an idle keep-alive connection is closed); a response
  chunk that the client does not take within ``timeout_s`` drops the connection;
- at most ``max_connections`` connections at once (default 64, one thread each); the next ones
  get a quick 503 and are closed, from at most 8 more short-lived threads, and beyond that are
  closed at once. The thread count is bounded.

Every response carries ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
``X-Frame-Options: DENY`` and ``Cache-Control: no-store``; HTML pages carry the
``Content-Security-Policy`` that ``csp(url_path, html)`` returns (by default only ``frame-ancestors
'none'``, ``object-src 'none'``, ``base-uri 'self'``; tools/webapp.py gives the demo page a strict
one). Nothing is logged per request: ``server.requests`` keeps the last (target, status) pairs for
a failing test; a handler that raises is logged to stderr and answers a 500 without details.

Why the standard library and not aiohttp (which is in the venv, through livekit-api): the server
has three routes and a folder of files, and its callers (serve.py, the browser tests, bench/) are
synchronous and want a thread they can start and stop. aiohttp is only a transitive dependency
here, its version chosen by livekit-api, and it would not have given the rules above for free
either: it accepts chunked bodies, has no Host or Origin allow-list, no bound on connections and
no deadline for a whole request head, so the same checks would be written around it, plus an event
loop in a thread. ``http.server``'s request parsing is what was lenient (int() of any
Content-Length, no timeouts, unread bodies on kept-alive connections, tracebacks on odd paths), so
this module reads requests itself (request line, headers, body: about a hundred lines, tested with
raw sockets and hypothesis in tests/tools/test_httpserve.py) and uses ``socketserver`` only for the
listening socket.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import mimetypes
import posixpath
import re
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

Route = Callable[[bytes], tuple[int, str, bytes]]
CspPolicy = Callable[[str, bytes], str]

MAX_BODY = 16 * 1024
MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_LINE = 8 * 1024
MAX_HEADERS = 64
MAX_HEAD = 32 * 1024
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 64
REJECT_THREADS = 8          # short-lived threads that answer 503 to connections over the limit
LINGER_S = 1.0              # after a response that closes, read what the client still sends (no RST)
LINGER_BYTES = 256 * 1024
SEND_CHUNK = 256 * 1024

DEFAULT_MOUNTS = {"/web/": ROOT / "web", "/node_modules/": ROOT / "node_modules",
                  "/js/avatarplayer/": ROOT / "avatarplayer" / "browser" / "js"}
"""The tests' static server: the pages, the npm runtimes, and the player's JavaScript (the transform
worker, which the wheel otherwise carries, under a URL for the pages that load it by URL)."""
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
DEFAULT_CSP = "object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".py": "text/x-python; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".toml": "text/plain; charset=utf-8",
    ".whl": "application/zip",
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".wav": "audio/wav",
    ".bin": "application/octet-stream",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

REASONS = {200: "OK", 100: "Continue", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
           414: "URI Too Long", 417: "Expectation Failed", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
           505: "HTTP Version Not Supported"}

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (\S+) HTTP/([0-9])\.([0-9])\r?\n")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*\r?\n", re.DOTALL)
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(r"[0-9]{1,12}")
_HOST_NAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_INLINE_SCRIPT = re.compile(rb"<script\b([^>]*)>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL)

log = logging.getLogger("avatarplayer.httpserve")


class HttpError(Exception):
    """A request refused before it reached a handler; the connection is closed after the reply."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ClientGone(ConnectionError):
    """The client closed its side (or reset) in the middle of a request."""


# ----------------------------------------------------------------------------- host names


def normalize_host(name: str) -> str:
    """An allow-list entry in the form Host headers are compared in: lower case, IPv6 in brackets.
    Raises ValueError for anything that is not a host name or an IP address (ports included)."""
    text = name.strip().lower()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        if text != bare or not _HOST_NAME.fullmatch(text):
            raise ValueError(f"not a host name or an IP address: {name!r}") from None
        return text
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


def split_host_port(value: str) -> str | None:
    """The host part of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``), normalized;
    None when it is malformed."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[:end + 1], value[end + 1:]
    else:
        host, sep, port = value.partition(":")
        rest = sep + port
    if rest and not (rest.startswith(":") and re.fullmatch(r"[0-9]{1,5}", rest[1:])):
        return None
    try:
        return normalize_host(host)
    except ValueError:
        return None


def origin_host(origin: str) -> str | None:
    """The host of an ``Origin`` header value (``http://name[:port]`` or ``https://…``), or None."""
    match = re.fullmatch(r"(https?)://([^/?#@]+)", origin.strip(), re.IGNORECASE)
    return split_host_port(match.group(2)) if match else None


# ----------------------------------------------------------------------------- content security policy


def inline_script_hashes(html: bytes) -> list[str]:
    """``'sha256-…'`` sources for the inline scripts of a page, for its ``script-src``."""
    hashes = []
    for attrs, body in _INLINE_SCRIPT.findall(html):
        if re.search(rb"\bsrc\s*=", attrs):
            continue
        kind = re.search(rb"""\btype\s*=\s*["']?([^"'\s>]+)""", attrs, re.IGNORECASE)
        if kind and kind.group(1).lower() not in (b"module", b"text/javascript", b"application/javascript"):
            continue  # <script type="py"> and data blocks are not scripts to the browser
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        hashes.append(f"'sha256-{digest}'")
    return hashes


def default_csp(_url_path: str, _html: bytes) -> str:
    return DEFAULT_CSP


# ----------------------------------------------------------------------------- reading requests


class _Stream:
    """The reading side of a connection with a deadline for the whole current request."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.deadline = 0.0
        self.received = 0  # bytes of the current request seen so far

    def _fill(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline")
        self.sock.settimeout(remaining)
        data = self.sock.recv(65536)
        if not data:
            raise _ClientGone()
        self.buffer += data
        self.received += len(data)

    def readline(self, limit: int, too_long: HttpError) -> bytes:
        while True:
            end = self.buffer.find(b"\n", 0, limit)
            if end >= 0:
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                return line
            if len(self.buffer) >= limit:
                raise too_long
            self._fill()

    def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


class Request:
    def __init__(self, method: str, target: str, version: tuple[int, int], headers: list[tuple[str, str]]) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # (lower-case name, value)
        self.body = b""
        self.path, _, self.query = target.partition("?")

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for v in self.header_all("connection") for t in v.split(",")}
        return self.version >= (1, 1) and "close" not in tokens


def decode_path(raw: str) -> str:
    """The percent-decoded path of a request target; HttpError(400) if it is not a clean UTF-8 path."""
    if not raw.startswith("/"):
        raise HttpError(400, "the request target must be a path starting with /")
    if _PERCENT.search(raw):
        raise HttpError(400, "invalid percent-encoding in the path")
    try:
        path = _unquote(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "the path is not UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise HttpError(400, "control characters in the path")
    return path


def _unquote(raw: str) -> bytes:
    out = bytearray()
    parts = raw.split("%")
    out += parts[0].encode("latin-1")
    for part in parts[1:]:
        out.append(int(part[:2], 16))
        out += part[2:].encode("latin-1")
    return bytes(out)


# ----------------------------------------------------------------------------- the server


class _Listener(socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: StaticServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.owner = owner
        super().__init__(address, socketserver.BaseRequestHandler)

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        self.owner._accept(request)

    def handle_error(self, request, client_address) -> None:  # type: ignore[override]
        log.error("error accepting a connection from %s", client_address, exc_info=True)


class StaticServer:
    """Serve ``mounts`` (URL prefix -> folder) and ``routes`` from daemon threads. Use as a context
    manager. See the module docstring for what it accepts."""

    def __init__(self, root: Path = ROOT, mounts: dict[str, Path] | tuple[str, ...] = DEFAULT_MOUNTS,
                 host: str = "127.0.0.1", port: int = 0, routes: dict[tuple[str, str], Route] | None = None, *,
                 allowed_hosts: Iterable[str] = (), exclude: Iterable[Path] = (), csp: CspPolicy | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        if not isinstance(mounts, dict):
            mounts = {f"/{name}/": Path(root) / name for name in mounts}
        self.mounts = {("/" + prefix.strip("/") + "/").replace("//", "/"): Path(folder).resolve()
                       for prefix, folder in mounts.items()}
        self._by_length = sorted(self.mounts.items(), key=lambda item: -len(item[0]))  # the longest prefix wins
        self.exclude = [Path(folder).resolve() for folder in exclude]
        self.routes = dict(routes or {})
        self.allowed_hosts = frozenset(normalize_host(h) for h in (*LOOPBACK_HOSTS, *allowed_hosts))
        self.csp = csp or default_csp
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.requests: deque[tuple[str, int]] = deque(maxlen=2000)  # (target, status), for a failed test
        self._slots = threading.BoundedSemaphore(max_connections)
        self._reject_slots = threading.BoundedSemaphore(REJECT_THREADS)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stopping = False
        self._httpd = _Listener((host, port), self)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        host = self._httpd.server_address[0]
        if self._httpd.address_family == socket.AF_INET6:
            return f"http://[{'::1' if host == '::' else host}]:{self.port}"
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    def start(self) -> StaticServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="static-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:  # shutdown() waits for serve_forever(): only if it runs
            self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            open_now = list(self._open)
        for sock in open_now:  # wake the connection threads up: they end on the error
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> StaticServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- files

    def resolve(self, url_path: str) -> Path | None:
        """The file a URL path (percent-encoded, query allowed) maps to, or None (outside every
        mount, excluded, missing, a folder without index.html, or not a clean path)."""
        try:
            return self._resolve_decoded(decode_path(url_path.partition("?")[0]))
        except HttpError:
            return None

    def _resolve_decoded(self, path: str) -> Path | None:
        path = posixpath.normpath(path)
        for prefix, folder in self._by_length:
            stem = prefix.rstrip("/")
            if path != stem and not path.startswith(prefix):
                continue
            rel = path[len(stem):].lstrip("/")
            try:
                target = (folder / rel).resolve()
                if target != folder and folder not in target.parents:
                    return None  # ".." or a symlink leading out of the mount
                if any(target == ex or ex in target.parents for ex in self.exclude):
                    return None
                if target.is_dir():
                    target = target / "index.html"
                return target if target.is_file() else None
            except (OSError, ValueError):  # a name too long for the file system, a loop of symlinks
                return None
        return None

    def _record(self, target: str, status: int) -> None:
        with self._lock:
            self.requests.append((target, status))

    def host_allowed(self, value: str) -> bool:
        return split_host_port(value) in self.allowed_hosts

    def origin_allowed(self, value: str) -> bool:
        return origin_host(value) in self.allowed_hosts

    # -- connections

    def _accept(self, sock: socket.socket) -> None:
        if self._slots.acquire(blocking=False):
            with self._lock:
                self._open.add(sock)
            threading.Thread(target=self._serve_connection, args=(sock,), name="http-conn", daemon=True).start()
        elif self._reject_slots.acquire(blocking=False):
            threading.Thread(target=self._reject, args=(sock,), name="http-503", daemon=True).start()
        else:
            _close(sock)  # far over the limit: refused at once

    def _reject(self, sock: socket.socket) -> None:
        try:
            body = b'{"error": "too many connections, try again"}'
            head = (f"HTTP/1.1 503 {REASONS[503]}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n"
                    + "".join(f"{k}: {v}\r\n" for k, v in SECURITY_HEADERS) + "\r\n").encode()
            sock.settimeout(min(self.timeout_s, 2.0))
            sock.sendall(head + body)
            _linger_close(sock, min(self.timeout_s, LINGER_S))
        except OSError:
            _close(sock)
        finally:
            self._reject_slots.release()

    def _serve_connection(self, sock: socket.socket) -> None:
        try:
            _Connection(self, sock).run()
        except Exception:  # never expected: _Connection handles its own errors
            log.error("HTTP connection failed", exc_info=True)
        finally:
            with self._lock:
                self._open.discard(sock)
            _close(sock)
            self._slots.release()


class _Connection:
    def __init__(self, server: StaticServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.stream = _Stream(sock)

    def run(self) -> None:
        server = self.server
        while not server._stopping:
            self.stream.deadline = time.monotonic() + server.timeout_s
            self.stream.received = len(self.stream.buffer)
            request: Request | None = None
            try:
                request = self._read_request()
                if request is None:
                    return
                keep = self._dispatch(request)
            except HttpError as exc:
                self._send_error(request, exc.status, exc.message, close=True)
                return
            except TimeoutError:
                if self.stream.received:  # a request started but did not finish in time
                    self._send_error(request, 408, "request not received in time", close=True)
                return  # else an idle keep-alive connection: just close it
            except (_ClientGone, OSError):
                return
            if not keep:
                _linger_close(self.sock, min(server.timeout_s, LINGER_S))
                return

    def _read_request(self) -> Request | None:
        stream = self.stream
        too_long = HttpError(414, "request line too long")
        try:
            line = stream.readline(MAX_REQUEST_LINE, too_long)
            for _ in range(2):  # a stray empty line before a request (RFC 9112 2.2)
                if line not in (b"\r\n", b"\n"):
                    break
                line = stream.readline(MAX_REQUEST_LINE, too_long)
        except _ClientGone:
            if stream.buffer or stream.received:
                raise
            return None  # closed between requests
        match = _REQUEST_LINE.fullmatch(line)
        if not match:
            raise HttpError(400, "malformed request line")
        method, target = match.group(1).decode(), match.group(2).decode("latin-1")
        version = (int(match.group(3)), int(match.group(4)))
        if version not in ((1, 0), (1, 1)):
            raise HttpError(505, "HTTP/1.0 and HTTP/1.1 only")
        headers: list[tuple[str, str]] = []
        size = 0
        too_big = HttpError(431, "request header fields too large")
        while True:
            line = stream.readline(MAX_HEADER_LINE, too_big)
            if line in (b"\r\n", b"\n"):
                break
            size += len(line)
            if len(headers) >= MAX_HEADERS or size > MAX_HEAD:
                raise too_big
            field = _HEADER_LINE.fullmatch(line)
            if not field or _BAD_VALUE_BYTE.search(field.group(2)):
                raise HttpError(400, "malformed header line")
            headers.append((field.group(1).decode().lower(), field.group(2).decode("latin-1")))
        request = Request(method, target, version, headers)
        self._check_head(request)
        length = int(request.header("content-length") or 0)
        if length:
            expect = request.header("expect")
            if expect is not None:
                if expect.strip().lower() != "100-continue":
                    raise HttpError(417, "only Expect: 100-continue is understood")
                if version >= (1, 1):
                    self.sock.settimeout(self.server.timeout_s)
                    self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                request.body = stream.read(length)
            except _ClientGone:
                raise HttpError(400, "the body is shorter than its Content-Length") from None
        return request

    def _check_head(self, request: Request) -> None:
        """Host, then body framing: refused requests close the connection."""
        hosts = request.header_all("host")
        if len(hosts) != 1:
            raise HttpError(400, "exactly one Host header is required")
        if not self.server.host_allowed(hosts[0]):
            raise HttpError(403, "this server does not answer for that host name")
        if request.header_all("transfer-encoding"):
            raise HttpError(400, "Transfer-Encoding is not accepted; send a Content-Length")
        lengths = request.header_all("content-length")
        if len(lengths) > 1:
            raise HttpError(400, "more than one Content-Length")
        if lengths and not _DIGITS.fullmatch(lengths[0]):
            raise HttpError(400, "Content-Length must be decimal digits")
        if lengths and int(lengths[0]) > MAX_BODY:
            raise HttpError(413, f"request body too large (at most {MAX_BODY} bytes)")

    def _dispatch(self, request: Request) -> bool:
        """Answer one request; True to keep the connection open."""
        server = self.server
        path = decode_path(request.path)  # HttpError(400) for a bad path
        method = "GET" if request.method == "HEAD" else request.method
        handler = server.routes.get((method, request.path))
        keep = request.keep_alive
        if handler is not None:
            if method == "POST":
                origin = request.header_all("origin")
                if len(origin) > 1 or (origin and not server.origin_allowed(origin[0])):
                    raise HttpError(403, "cross-origin request refused")
            try:
                status, ctype, payload = handler(request.body)
            except Exception:
                log.error("handler for %s %s failed", request.method, request.path, exc_info=True)
                self._send_error(request, 500, "internal server error", close=True)
                return False
            self._send(request, status, [("Content-Type", ctype)], payload, keep)
            return keep
        allowed = sorted({m for m, p in server.routes if p == request.path})
        if allowed:
            self._send_error(request, 405, "method not allowed", close=not keep,
                             extra=[("Allow", ", ".join(allowed + (["HEAD"] if "GET" in allowed else [])))])
            return keep
        if method != "GET":
            status = 405 if request.method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS") else 501
            self._send_error(request, status, "method not allowed", close=not keep, extra=[("Allow", "GET, HEAD")])
            return keep
        target = server._resolve_decoded(path)
        if target is None:
            self._send_error(request, 404, "not found", close=not keep)
            return keep
        try:
            with target.open("rb") as file:
                data = file.read()
        except OSError:
            self._send_error(request, 404, "not found", close=not keep)
            return keep
        ctype = content_type(target)
        headers = [("Content-Type", ctype)]
        if ctype.startswith("text/html"):
            headers.append(("Content-Security-Policy", server.csp(path, data)))
        self._send(request, 200, headers, data, keep)
        return keep

    def _send_error(self, request: Request | None, status: int, message: str, *, close: bool,
                    extra: list[tuple[str, str]] | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        try:
            self._send(request, status, [("Content-Type", "application/json"), *(extra or [])], body, not close)
        except OSError:
            return
        if close:
            _linger_close(self.sock, min(self.server.timeout_s, LINGER_S))

    def _send(self, request: Request | None, status: int, headers: list[tuple[str, str]], body: bytes,
              keep: bool) -> None:
        self.server._record(request.target if request else "<unparsed>", status)
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", *(f"{k}: {v}" for k, v in headers),
                f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in SECURITY_HEADERS)]
        if not keep:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if request is not None and request.method == "HEAD":
            body = b""
        self._write(data + body if len(body) < SEND_CHUNK else data)
        for start in range(0, len(body) if len(body) >= SEND_CHUNK else 0, SEND_CHUNK):
            self._write(body[start:start + SEND_CHUNK])

    def _write(self, data: bytes) -> None:
        """Each chunk within timeout_s: a client that stops reading is dropped."""
        self.sock.settimeout(self.server.timeout_s)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise _ClientGone() from None


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _linger_close(sock: socket.socket, seconds: float) -> None:
    """Close after a final response without resetting the connection: stop sending, then read and
    drop what the client still sends (an unread body) for up to ``seconds``. Closing a socket with
    unread data sends a reset, which can destroy the response before the client reads it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        drained = 0
        while drained < LINGER_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass
    _close(sock)


def content_type(path: Path) -> str:
    known = MIME_TYPES.get(path.suffix.lower())
    if known:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


if __name__ == "__main__":  # manual use: python tools/httpserve.py [port]
    import sys

    with StaticServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8000) as srv:
        print(f"serving {', '.join(srv.mounts)} of {ROOT} at {srv.base_url}", flush=True)
        threading.Event().wait()
