"""The LiveKit server for the demo and the tests: the pinned binary on loopback, or an external one.

One implementation, used by ``serve.py``, the browser tests, the worker tests and the benchmarks::

    with LiveKitServer(workdir) as server:     # free loopback ports, a fresh 48-character secret
        server.url, server.api_key, server.api_secret, server.token("viewer", "room")
        server.restart(kill=True)               # same ports and keys: a crash as clients see it
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
LIVEKIT_BINARY = Path(os.environ.get("LIVEKIT_SERVER_BIN", ROOT / ".tools" / "bin" / "livekit-server"))

_CONFIG = """\
port: {port}
bind_addresses: [127.0.0.1]
keys: {{{api_key}: "{api_secret}"}}
logging: {{level: info}}
rtc:
  node_ip: 127.0.0.1
  use_external_ip: false          # true would query public STUN at start-up
  enable_loopback_candidate: true # without it a same-host browser cannot connect
  ips: {{includes: [127.0.0.1/32]}}
  udp_port: {udp_port}
  tcp_port: {tcp_port}
  stun_servers: ["127.0.0.1:3478"] # keeps the public STUN list out of the join response
room: {{empty_timeout: {empty_timeout}, departure_timeout: {departure_timeout}}}
"""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel just handed out on 127.0.0.1 (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(http_url + "/", timeout=1) as response:
            return response.status == 200 and response.read().strip() == b"OK"
    except (urllib.error.URLError, OSError):
        return False


class LiveKitServer:
    """The pinned ``livekit-server`` with a generated loopback-only config (docs/platform.md), or, from
    :meth:`external`, credentials for a server someone else runs."""

    def __init__(self, workdir: Path | None, *, port: int | None = None, binary: Path = LIVEKIT_BINARY,
                 empty_timeout: int = 30, departure_timeout: int = 5, startup_timeout: float = 30.0) -> None:
        self.binary = Path(binary)
        self.workdir = Path(workdir) if workdir is not None else None
        self.port = port or free_port()
        self.tcp_port = 0  # no ICE-TCP: its listener ignores bind_addresses (all interfaces); loopback has UDP
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.api_key = "devkey"
        self.api_secret = secrets.token_urlsafe(36)  # 48 characters: the server wants 32+
        self.empty_timeout = empty_timeout
        self.departure_timeout = departure_timeout
        self.startup_timeout = startup_timeout
        self._url: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @classmethod
    def external(cls, url: str, api_key: str, api_secret: str) -> LiveKitServer:
        server = cls(None, port=1)
        server._url, server.api_key, server.api_secret = url, api_key, api_secret
        return server

    @property
    def url(self) -> str:
        return self._url or f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return self.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "livekit-server.log" if self.workdir else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LiveKitServer:
        if self._url is not None:
            return self  # external: nothing to start
        if not self.binary.is_file():
            raise RuntimeError(f"LiveKit server binary not found at {self.binary}: "
                               "run `python3 tools/bootstrap.py browser` (or set LIVEKIT_SERVER_BIN)")
        assert self.workdir is not None and self.log_path is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "livekit.yaml"
        config.write_text(_CONFIG.format(
            port=self.port, api_key=self.api_key, api_secret=self.api_secret, udp_port=self.udp_port,
            tcp_port=self.tcp_port, empty_timeout=self.empty_timeout, departure_timeout=self.departure_timeout))
        os.chmod(config, 0o600)  # it holds the secret
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen([str(self.binary), "--config", str(config)], stdout=self._log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while not is_ready(self.http_url):
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise RuntimeError(f"livekit-server exited with {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"livekit-server not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def stop(self, *, grace: float = 2.0, kill: bool = False) -> None:
        """SIGTERM (the server waits for participants to leave), a second one after ``grace``
        seconds (livekit-server's "force"), then SIGKILL. ``kill``: SIGKILL at once, a crash."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            steps = [(signal.SIGKILL, 5.0)] if kill else [
                (signal.SIGTERM, grace), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)]
            for sig, wait in steps:
                proc.send_signal(sig)
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or kill) and start again on the same ports with the same keys."""
        self.stop(kill=kill)
        self.start()

    def token(self, identity: str, room: str, *, name: str | None = None, ttl_s: int = 3600,
              can_publish: bool = True, can_subscribe: bool = True, can_publish_data: bool = True,
              sources: list[str] | None = None, kind: str | None = None,
              attributes: dict[str, str] | None = None, dispatch: list[str] | None = None) -> str:
        """An access token for ``identity`` in ``room`` only: the worker's minter,
        :func:`avatar_worker.token.access_token` (``sources`` empty: any source; ``dispatch``: agent
        names LiveKit dispatches into the room when the token's holder creates it)."""
        from avatar_worker.token import access_token  # (imported here: livekit-api is slow to load)

        return access_token(self.api_key, self.api_secret, room=room, identity=identity, name=name, kind=kind,
                            attributes=attributes, ttl=timedelta(seconds=ttl_s), can_publish=can_publish,
                            can_subscribe=can_subscribe, can_publish_data=can_publish_data, sources=sources or (),
                            dispatch=dispatch or ())

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None:
            return "<external server: no log here>"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"<no server log: {exc}>"

    def __enter__(self) -> LiveKitServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_livekit_server(workdir: Path, *, port: int | None = None) -> LiveKitServer:
    """Start a loopback server and wait for ``GET /`` == OK. Raises RuntimeError."""
    return LiveKitServer(workdir, port=port).start()
