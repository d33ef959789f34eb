"""tools/httpserve.py over real sockets: what it serves, every malformed or hostile request it
refuses (and with which status), and that it keeps serving afterwards.

Requests are written byte for byte on raw sockets (``exchange``), so a test controls framing,
header order and timing exactly; ``Response`` parses what comes back, and ``closed`` says whether
the server ended the connection after its answer.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from tools.httpserve import MAX_BODY, StaticServer, normalize_host

SECRET = b"top secret, outside every mount"
PAGE = b"<!doctype html><title>t</title><script>window.x = 1;</script><p>hello</p>"


# ----------------------------------------------------------------------------- raw HTTP


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Exchange:
    responses: list[Response]
    closed: bool          # the server closed the connection
    reset: bool = False   # ... with a reset
    rest: bytes = b""     # bytes after the last complete response
    elapsed_s: float = 0.0

    @property
    def status(self) -> int:
        assert self.responses, f"no response (closed={self.closed}, reset={self.reset}, rest={self.rest[:200]!r})"
        return self.responses[0].status

    @property
    def first(self) -> Response:
        assert self.responses, f"no response (closed={self.closed}, reset={self.reset}, rest={self.rest[:200]!r})"
        return self.responses[0]


def parse_responses(data: bytes, head_request: bool = False) -> tuple[list[Response], bytes]:
    responses = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return responses, data
        lines = data[:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        raw = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
        headers = {k.lower(): v for k, v in raw}
        length = 0 if head_request or status == 100 else int(headers.get("content-length", 0))
        if len(data) < end + 4 + length:
            return responses, data
        if status != 100:
            responses.append(Response(status, headers, data[end + 4:end + 4 + length], raw))
        data = data[end + 4 + length:]


def exchange(port: int, data: bytes | list[bytes], *, shut: bool = False, timeout: float = 5.0,
             pause_s: float = 0.0, head: bool = False, wait_close: bool = True) -> Exchange:
    """Send ``data`` (a list: separate writes ``pause_s`` apart), then read until the server closes
    or ``timeout`` passes (or, with ``wait_close=False``, until one complete response)."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    received = b""
    closed = reset = False
    try:
        for i, part in enumerate(data if isinstance(data, list) else [data]):
            if i and pause_s:
                time.sleep(pause_s)
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        if shut:
            sock.shutdown(socket.SHUT_WR)
        deadline = started + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = reset = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
            if not wait_close and parse_responses(received, head)[0]:
                break
    finally:
        sock.close()
    responses, rest = parse_responses(received, head)
    return Exchange(responses, closed, reset, rest, time.monotonic() - started)


def request(method: str = "GET", target: str = "/", *, host: str | None = "127.0.0.1", body: bytes | None = None,
            headers: list[tuple[str, str]] | None = None, version: str = "HTTP/1.1", close: bool = True) -> bytes:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers or []]
    if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers or []):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def get(port: int, target: str = "/", **kwargs) -> Exchange:
    return exchange(port, request("GET", target, **kwargs))


def assert_serving(server: StaticServer) -> None:
    """A plain GET on a fresh connection still answers 200 with the page."""
    result = get(server.port, "/index.html")
    assert result.status == 200 and result.first.body == PAGE, result


def assert_refused_and_closed(result: Exchange, status: int) -> None:
    assert result.status == status, (result.status, result.first.body)
    assert len(result.responses) == 1, f"more than one response: {[r.status for r in result.responses]}"
    assert result.closed and not result.reset, f"connection not closed cleanly: {result}"
    assert result.first.headers.get("connection") == "close"
    assert result.first.headers.get("x-content-type-options") == "nosniff"


# ----------------------------------------------------------------------------- the server under test


def echo(body: bytes) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps({"length": len(body), "body": body.decode("latin-1")}).encode()


def boom(body: bytes) -> tuple[int, str, bytes]:
    raise ZeroDivisionError("secret detail /etc/shadow in the message")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """www/ (mounted at /) with a page, a sub folder, an excluded dev/ folder and symlinks out of
    the mount; static/ (mounted at /static/); secret.txt next to them, outside every mount."""
    root = tmp_path_factory.mktemp("tree")
    www = root / "www"
    (www / "sub").mkdir(parents=True)
    (www / "dev").mkdir()
    (root / "static").mkdir()
    (root / "outside").mkdir()
    (www / "index.html").write_bytes(PAGE)
    (www / "sub" / "file.txt").write_bytes(b"sub file\n")
    (www / "app.js").write_bytes(b"console.log(1);\n")
    (www / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (www / "dev" / "page.html").write_bytes(b"<p>dev page</p>")
    (root / "static" / "s.css").write_bytes(b"p {}\n")
    (root / "secret.txt").write_bytes(SECRET)
    (root / "outside" / "x.txt").write_bytes(SECRET)
    (www / "link.txt").symlink_to(root / "secret.txt")
    (www / "linkdir").symlink_to(root / "outside")
    (www / "devlink.html").symlink_to(www / "dev" / "page.html")
    return root


def make_server(tree: Path, extra_mounts: dict[str, Path] | None = None, **kwargs) -> StaticServer:
    options = dict(routes={("POST", "/api/echo"): echo, ("POST", "/api/boom"): boom,
                           ("GET", "/api/config"): lambda _b: (200, "application/json", b'{"ok": true}')},
                   exclude=[tree / "www" / "dev"], timeout_s=1.0, max_connections=8)
    options.update(kwargs)
    return StaticServer(tree, {"/": tree / "www", "/static/": tree / "static", **(extra_mounts or {})}, **options)


@pytest.fixture(scope="module")
def server(tree: Path):
    with make_server(tree) as srv:
        yield srv


@pytest.fixture
def fresh(tree: Path):
    """A server of the test's own, with the given options: ``fresh(timeout_s=..., ...)``."""
    started = []

    def start(**kwargs) -> StaticServer:
        srv = make_server(tree, **kwargs).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


# ----------------------------------------------------------------------------- files and headers


def test_files_are_served_with_security_headers(server: StaticServer):
    page = get(server.port, "/")
    assert page.status == 200 and page.first.body == PAGE
    headers = page.first.headers
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "object-src 'none'" in headers["content-security-policy"]
    script = get(server.port, "/app.js")
    assert script.status == 200 and script.first.headers["content-type"].startswith("text/javascript")
    assert script.first.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in script.first.headers  # only documents get one
    assert get(server.port, "/static/s.css").first.headers["content-type"].startswith("text/css")
    for target in ("/nope.html", "/api/config?x=1"):
        result = get(server.port, target)
        assert result.first.headers["x-content-type-options"] == "nosniff", target
        assert result.first.headers["x-frame-options"] == "DENY", target
    assert get(server.port, "/api/config").first.body == b'{"ok": true}'


def test_a_csp_callback_decides_the_policy_of_each_page(fresh):
    seen = []

    def csp(path: str, html: bytes) -> str:
        seen.append((path, html))
        return "default-src 'none'"

    srv = fresh(csp=csp)
    assert get(srv.port, "/").first.headers["content-security-policy"] == "default-src 'none'"
    assert seen == [("/", PAGE)]


def test_big_file_streams_whole(server: StaticServer, tree: Path):
    result = exchange(server.port, request("GET", "/big.bin"), timeout=10)
    assert result.status == 200 and result.first.body == (tree / "www" / "big.bin").read_bytes()


def test_head_answers_headers_only(server: StaticServer):
    result = exchange(server.port, request("HEAD", "/index.html"), head=True)
    assert result.status == 200 and result.first.body == b"" and not result.rest
    assert result.first.headers["content-length"] == str(len(PAGE))


def test_keep_alive_serves_several_requests_on_one_connection(server: StaticServer):
    two = request("GET", "/index.html", close=False) + request("GET", "/sub/file.txt", close=True)
    result = exchange(server.port, two)
    assert [r.status for r in result.responses] == [200, 200] and result.closed
    assert result.responses[1].body == b"sub file\n"


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize("target", [
    "/../secret.txt", "/../../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/%2e%2e/secret.txt",
    "/sub/..%2f..%2fsecret.txt", "/sub/%2e%2e/%2e%2e/secret.txt", "/static/../../secret.txt",
    "/static/%2e%2e/secret.txt", "/link.txt", "/linkdir/x.txt", "/linkdir/", "//etc/passwd",
    "/%2fetc%2fpasswd", "/..%5c..%5csecret.txt", "/sub/../../outside/x.txt",
])
def test_path_traversal_is_404(server: StaticServer, target: str):
    """Kept from the old server (which handled these well): nothing outside a mount, whatever the
    spelling, and no symlink out of it."""
    result = get(server.port, target)
    assert result.status in (400, 404), (target, result.status)
    assert SECRET not in result.first.body
    assert_serving(server)


@pytest.mark.parametrize("target", ["/dev/page.html", "/dev/", "/dev", "/devlink.html", "/sub/../dev/page.html",
                                    "/%64ev/page.html"])
def test_excluded_folder_is_404(server: StaticServer, target: str):
    assert get(server.port, target).status == 404


@pytest.mark.parametrize("target, status", [
    ("/%00", 400), ("/index.html%00.txt", 400), ("/%0a", 400), ("/%zz", 400), ("/%", 400), ("/%4", 400),
    ("/%C3%28", 400), ("/%ff", 400), ("*", 400), ("http://127.0.0.1/index.html", 400), ("index.html", 400),
    ("/" + "a" * 300, 404), ("/sub/" + "b" * 5000, 404), ("/" + "c" * 9000, 414),
])
def test_bad_paths_get_400_404_or_414_and_the_server_keeps_serving(server: StaticServer, capfd, target, status):
    result = get(server.port, target)
    assert result.status == status, (target, result.status, result.first.body)
    assert not result.reset
    assert_serving(server)
    assert capfd.readouterr().err == "", "the server wrote to stderr"


def test_resolve_maps_url_paths_to_files(server: StaticServer, tree: Path):
    assert server.resolve("/sub/file.txt?x=1") == tree / "www" / "sub" / "file.txt"
    assert server.resolve("/") == tree / "www" / "index.html"
    for bad in ("/%00", "/../secret.txt", "/link.txt", "/dev/page.html", "/" + "x" * 4000):
        assert server.resolve(bad) is None, bad


# ----------------------------------------------------------------------------- body framing


@pytest.mark.parametrize("value", ["-1", "-0", "abc", "1e3", "+2", "0x2", "2.0", "2 2", "\xb2", "",
                                   "99999999999999999999999"])
def test_a_bad_content_length_is_400_and_closes(server: StaticServer, value: str):
    data = request("POST", "/api/echo", headers=[("Content-Length", value)], close=False) + b"{}"
    result = exchange(server.port, data)
    assert_refused_and_closed(result, 400)
    assert_serving(server)


@pytest.mark.parametrize("values", [("2", "3"), ("2", "2"), ("2", "-1")])
def test_several_content_lengths_are_400(server: StaticServer, values):
    headers = [("Content-Length", v) for v in values]
    result = exchange(server.port, request("POST", "/api/echo", headers=headers, close=False) + b"{}x")
    assert_refused_and_closed(result, 400)
    assert_serving(server)


def test_a_negative_content_length_does_not_read_until_eof(server: StaticServer):
    """The old server called rfile.read(-1): it waited for the client to close, unbounded."""
    data = request("POST", "/api/echo", headers=[("Content-Length", "-1")], close=False) + b"{}"
    result = exchange(server.port, data, timeout=3)  # the client keeps its side open
    assert result.status == 400 and result.elapsed_s < 2.5


def test_post_without_content_length_has_an_empty_body(server: StaticServer):
    result = exchange(server.port, request("POST", "/api/echo"))
    assert result.status == 200 and json.loads(result.first.body)["length"] == 0


def test_a_body_over_the_limit_is_413_and_never_read_as_the_next_request(server: StaticServer):
    body = b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * (MAX_BODY // 40)
    data = request("POST", "/api/echo", headers=[("Content-Length", str(len(body)))], close=False) + body
    result = exchange(server.port, data)
    assert len(body) > MAX_BODY
    assert_refused_and_closed(result, 413)
    assert_serving(server)


def test_a_body_at_the_limit_is_accepted(server: StaticServer):
    result = exchange(server.port, request("POST", "/api/echo", body=b"x" * MAX_BODY))
    assert result.status == 200 and json.loads(result.first.body)["length"] == MAX_BODY


def test_a_huge_declared_body_is_413_at_once(server: StaticServer):
    data = request("POST", "/api/echo", headers=[("Content-Length", str(10 ** 9))], close=False)
    result = exchange(server.port, data, timeout=3)
    assert_refused_and_closed(result, 413)
    assert result.elapsed_s < 1.5


@pytest.mark.parametrize("te", ["chunked", "gzip, chunked", "identity", "Chunked", "chunked, chunked"])
def test_transfer_encoding_is_400_and_closes(server: StaticServer, te: str):
    chunked = b"2\r\n{}\r\n0\r\n\r\n" + request("GET", "/index.html")
    data = request("POST", "/api/echo", headers=[("Transfer-Encoding", te)], close=False) + chunked
    result = exchange(server.port, data)
    assert_refused_and_closed(result, 400)
    assert_serving(server)


def test_transfer_encoding_with_a_content_length_is_400(server: StaticServer):
    """The classic request-smuggling pair: refused, whatever the order."""
    for headers in ([("Content-Length", "4"), ("Transfer-Encoding", "chunked")],
                    [("Transfer-Encoding", "chunked"), ("Content-Length", "4")]):
        data = request("POST", "/api/echo", headers=headers, close=False) + b"0\r\n\r\nGET / HTTP/1.1\r\n\r\n"
        assert_refused_and_closed(exchange(server.port, data), 400)
    assert_serving(server)


def test_a_get_with_a_body_has_it_read_not_parsed_as_a_request(server: StaticServer):
    smuggled = b"GET /sub/file.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    first = request("GET", "/index.html", headers=[("Content-Length", str(len(smuggled)))], close=False)
    result = exchange(server.port, first + smuggled + request("GET", "/app.js"))
    assert [r.status for r in result.responses] == [200, 200]
    assert result.responses[0].body == PAGE and result.responses[1].body == b"console.log(1);\n"


def test_a_short_body_then_eof_is_400(server: StaticServer):
    data = request("POST", "/api/echo", headers=[("Content-Length", "100")], close=False) + b"{}"
    result = exchange(server.port, data, shut=True)
    assert_refused_and_closed(result, 400)


def test_expect_100_continue(server: StaticServer):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=3)
    try:
        sock.sendall(request("POST", "/api/echo", headers=[("Content-Length", "2"), ("Expect", "100-continue")]))
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"{}")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
    responses, _ = parse_responses(data)
    assert responses[0].status == 200 and json.loads(responses[0].body)["body"] == "{}"


def test_an_unknown_expectation_is_417(server: StaticServer):
    data = request("POST", "/api/echo", headers=[("Content-Length", "2"), ("Expect", "magic")]) + b"{}"
    assert_refused_and_closed(exchange(server.port, data), 417)


# ----------------------------------------------------------------------------- request line and headers


@pytest.mark.parametrize("data, status", [
    (b"GET /\r\n\r\n", 400),                                    # HTTP/0.9
    (b"GET / HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505),
    (b"GET / HTTP/1.1 extra\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"G\x00T / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS hello
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nNoColon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A : 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\rb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: 1\r\n" * 100 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: " + b"a" * 10000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (b"X-A: " + b"a" * 4000 + b"\r\n") * 10 + b"\r\n", 431),
    (b"BREW / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 501),
    (b"DELETE /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
    (b"POST /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"GET /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
])
def test_malformed_requests_get_a_status_and_the_server_keeps_serving(server: StaticServer, capfd, data, status):
    result = exchange(server.port, data, shut=True)
    assert result.status == status, (data[:60], result.status, result.first.body)
    assert not result.reset
    assert_serving(server)
    assert capfd.readouterr().err == ""


# ----------------------------------------------------------------------------- Host and Origin


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]",
                                  "[::1]:8000", "[0:0:0:0:0:0:0:1]:80"])
def test_loopback_host_names_are_answered(server: StaticServer, host: str):
    assert get(server.port, "/", host=host).status == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.",
                                  "0.0.0.0", "127.0.0.2", "10.0.0.1:8000", "::1", "[::1", "127.0.0.1:abc",
                                  "127.0.0.1:", "127.0.0.1:80:80", "user@127.0.0.1", "127.0.0.1 evil", ""])
def test_other_host_names_are_403(server: StaticServer, host: str):
    """A DNS-rebinding page (evil.example resolving to 127.0.0.1) sends its own name as Host."""
    result = get(server.port, "/", host=host)
    assert result.status == 403, (host, result.status)
    assert PAGE not in result.first.body
    assert_serving(server)


def test_a_missing_or_doubled_host_is_400(server: StaticServer):
    assert get(server.port, "/", host=None).status == 400
    assert get(server.port, "/", host=None, version="HTTP/1.0").status == 400
    assert get(server.port, "/", headers=[("Host", "127.0.0.1")]).status == 400
    assert get(server.port, "/", headers=[("Host", "evil.example")]).status == 400
    assert_serving(server)


def test_allowed_hosts_adds_names(fresh):
    srv = fresh(allowed_hosts=["Demo.LAN", "192.168.1.5", "::2"])
    for host in ("demo.lan", "DEMO.lan:8000", "192.168.1.5:8000", "[::2]", "127.0.0.1"):
        assert get(srv.port, "/", host=host).status == 200, host
    assert get(srv.port, "/", host="other.lan").status == 403


@pytest.mark.parametrize("name, normalized", [("LocalHost", "localhost"), ("::1", "[::1]"), ("[::1]", "[::1]"),
                                              ("10.0.0.1", "10.0.0.1"), ("demo-1.lan", "demo-1.lan")])
def test_normalize_host(name: str, normalized: str):
    assert normalize_host(name) == normalized


@pytest.mark.parametrize("name", ["http://x", "x:80", "a b", "", "-x", "x..y", "[x]", "a/b", "x_y"])
def test_normalize_host_refuses_what_is_not_a_host(name: str):
    with pytest.raises(ValueError):
        normalize_host(name)


@pytest.mark.parametrize("origin, status", [
    (None, 200), ("http://127.0.0.1", 200), ("http://127.0.0.1:8000", 200), ("http://localhost:1", 200),
    ("http://[::1]:8000", 200), ("https://localhost", 200),
    ("http://evil.example", 403), ("http://evil.example:8000", 403), ("null", 403), ("", 403),
    ("http://127.0.0.1.evil.example", 403), ("http://localhost@evil.example", 403), ("ftp://127.0.0.1", 403),
    ("http://127.0.0.1/path", 403), ("file://", 403), ("http://127.0.0.1:99999999", 403),
])
def test_origin_of_a_post_must_be_an_allowed_host(server: StaticServer, origin: str | None, status: int):
    headers = [] if origin is None else [("Origin", origin)]
    result = exchange(server.port, request("POST", "/api/echo", body=b"{}", headers=headers))
    assert result.status == status, (origin, result.first.body)
    assert_serving(server)


def test_two_origins_are_403(server: StaticServer):
    headers = [("Origin", "http://127.0.0.1"), ("Origin", "http://evil.example")]
    assert exchange(server.port, request("POST", "/api/echo", body=b"{}", headers=headers)).status == 403


def test_origin_is_not_checked_on_get(server: StaticServer):
    assert get(server.port, "/", headers=[("Origin", "http://evil.example")]).status == 200


# ----------------------------------------------------------------------------- timeouts and limits


def test_a_stalled_request_line_is_dropped_after_the_timeout(server: StaticServer):
    result = exchange(server.port, b"GET / HT", timeout=5)
    assert result.closed and result.elapsed_s < 2.5, result
    assert result.status == 408
    assert_serving(server)


def test_a_client_dripping_bytes_is_dropped_at_the_request_deadline(server: StaticServer):
    """One byte every 0.2 s never trips a per-read timeout; the deadline is for the whole request."""
    drip = [bytes([b]) for b in request("GET", "/index.html", headers=[("X-Pad", "p" * 100)])]
    result = exchange(server.port, drip, pause_s=0.2, timeout=8)
    assert result.closed and result.elapsed_s < 4, result
    assert result.status == 408


def test_a_stalled_body_is_dropped(server: StaticServer):
    data = request("POST", "/api/echo", headers=[("Content-Length", "10")], close=False) + b"{}"
    result = exchange(server.port, data, timeout=5)
    assert result.closed and result.elapsed_s < 2.5 and result.status == 408


def test_an_idle_keep_alive_connection_is_closed_without_a_response(server: StaticServer):
    result = exchange(server.port, request("GET", "/index.html", close=False), timeout=5)
    assert [r.status for r in result.responses] == [200]
    assert result.closed and 0.9 < result.elapsed_s < 2.5 and not result.rest


def test_a_client_that_stops_reading_a_response_is_dropped(fresh, tree: Path, tmp_path: Path):
    """The response is sent in chunks, each within the timeout: a client that never reads holds
    its connection (and thread) for about timeout_s, not for ever."""
    (tmp_path / "huge.bin").write_bytes(b"\0" * (48 * 1024 * 1024))
    srv = fresh(timeout_s=1.0, max_connections=1, extra_mounts={"/huge/": tmp_path})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.port))
    try:
        sock.sendall(request("GET", "/huge/huge.bin"))
        time.sleep(0.5)
        assert get(srv.port, "/index.html").status == 503  # the one slot is taken by the stalled download
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            result = get(srv.port, "/index.html")
            if result.responses and result.status == 200:
                break
            time.sleep(0.2)
        assert result.status == 200, "the stalled download still holds its connection"
    finally:
        sock.close()


def test_connections_over_the_limit_get_503_and_the_thread_count_is_bounded(fresh):
    srv = fresh(max_connections=4, timeout_s=5.0)
    threads_before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(4)]
    try:
        time.sleep(0.3)
        over = exchange(srv.port, request("GET", "/index.html"), timeout=3)
        assert over.status == 503 and over.closed and over.elapsed_s < 1.5, over
        assert over.first.headers["retry-after"] == "1"
        flood = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(60)]
        time.sleep(0.5)
        assert threading.active_count() - threads_before <= 4 + 8 + 1
        for sock in flood:
            sock.close()
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the slots free up as the idle connections end
        result = get(srv.port, "/index.html")
        if result.responses and result.status == 200:
            break
        time.sleep(0.1)
    assert result.status == 200


def test_stop_ends_open_connections(fresh):
    srv = fresh(timeout_s=30.0)
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(b"GET / HT")
    time.sleep(0.2)
    started = time.monotonic()
    srv.stop()
    sock.settimeout(3)
    try:
        assert sock.recv(100) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert time.monotonic() - started < 3


# ----------------------------------------------------------------------------- handler errors, logging


def test_a_handler_exception_is_500_without_details_and_logged(server: StaticServer, caplog):
    with caplog.at_level(logging.ERROR, logger="avatarplayer.httpserve"):
        result = exchange(server.port, request("POST", "/api/boom", body=b"{}"))
    assert result.status == 500
    body = result.first.body.decode()
    assert "ZeroDivisionError" not in body and "shadow" not in body and "Traceback" not in body, body
    assert json.loads(body) == {"error": "internal server error"}
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
    assert_serving(server)


def test_nothing_is_logged_per_request(server: StaticServer, capfd):
    capfd.readouterr()
    for target in ("/", "/nope", "/%00", "/../secret.txt"):
        get(server.port, target)
    exchange(server.port, request("POST", "/api/echo", headers=[("Content-Length", "x")]))
    exchange(server.port, b"GET / HT", timeout=2)
    exchange(server.port, b"garbage\r\n\r\n")
    assert_serving(server)
    out = capfd.readouterr()
    assert out.err == "" and out.out == "", out
