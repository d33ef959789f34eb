"""A small threaded HTTP server for the demo and the browser tests, on 127.0.0.1 by default.

Serves chosen folders of the repository under URL prefixes (by default ``/web/``,
``/worker_transform/`` and ``/node_modules/``) with the MIME types browsers insist on for
module scripts and WebAssembly, and ``Cache-Control: no-store`` so a test never sees a stale
file. Anything outside the mounts is 404; paths cannot escape a mount.

    with StaticServer(ROOT) as server:
        page.goto(server.url("/web/dev/transform-probe.html"))

Besides files it answers ``routes``: ``{("POST", "/api/token"): handler}`` where a handler takes the
request body and returns ``(status, content_type, body)`` (serve.py's token endpoint).
"""

from __future__ import annotations

import http.server
import mimetypes
import posixpath
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

Route = Callable[[bytes], tuple[int, str, bytes]]
MAX_BODY = 16 * 1024

DEFAULT_MOUNTS = ("web", "worker_transform", "node_modules")

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


class StaticServer:
    """Serve ``mounts`` (URL prefix -> folder) from a daemon thread. Use as a context manager."""

    def __init__(self, root: Path = ROOT, mounts: dict[str, Path] | tuple[str, ...] = DEFAULT_MOUNTS,
                 host: str = "127.0.0.1", port: int = 0, routes: dict[tuple[str, str], Route] | None = None) -> None:
        if not isinstance(mounts, dict):
            mounts = {f"/{name}/": Path(root) / name for name in mounts}
        self.mounts = {("/" + prefix.strip("/") + "/").replace("//", "/"): Path(folder).resolve()
                       for prefix, folder in mounts.items()}
        self.routes = dict(routes or {})
        self.requests: list[tuple[str, int]] = []  # (path, status), for debugging a failed test
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    def start(self) -> StaticServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="static-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> StaticServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def resolve(self, url_path: str) -> Path | None:
        """The file a URL path maps to, or None (outside every mount, missing, or a folder)."""
        path = posixpath.normpath(urllib.parse.unquote(urllib.parse.urlsplit(url_path).path))
        for prefix, folder in self.mounts.items():
            stem = prefix.rstrip("/")
            if path != stem and not path.startswith(prefix):
                continue
            rel = path[len(stem):].lstrip("/")
            target = (folder / rel).resolve()
            if target != folder and folder not in target.parents:
                return None  # ".." or a symlink leading out of the mount
            if target.is_dir():
                target = target / "index.html"
            return target if target.is_file() else None
        return None

    def _record(self, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((path, status))

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's spelling)
                if not self._route("GET"):
                    self._serve(body=True)

            def do_POST(self) -> None:  # noqa: N802
                if not self._route("POST"):
                    server._record(self.path, 405)
                    self.send_error(405)

            def _route(self, method: str) -> bool:
                handler = server.routes.get((method, urllib.parse.urlsplit(self.path).path))
                if handler is None:
                    return False
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    status, ctype, payload = 413, "application/json", b'{"error": "request body too large"}'
                else:
                    try:
                        status, ctype, payload = handler(self.rfile.read(length) if length else b"")
                    except Exception as exc:  # a handler bug answers 500, never kills the server
                        status, ctype, payload = 500, "application/json", f'{{"error": "{type(exc).__name__}"}}'.encode()
                server._record(self.path, status)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(payload)
                return True

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(body=False)

            def _serve(self, body: bool) -> None:
                target = server.resolve(self.path)
                if target is None:
                    server._record(self.path, 404)
                    self.send_error(404)
                    return
                data = target.read_bytes()
                server._record(self.path, 200)
                self.send_response(200)
                self.send_header("Content-Type", content_type(target))
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # requests are kept in server.requests instead of spamming stderr

        return Handler


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
