"""A real LiveKit server for tests: the pinned binary, loopback only, on free ports.

``LiveKitServer`` is deliberately free of pytest so other suites (browser tests, benchmarks) can
reuse it::

    with LiveKitServer(workdir) as server:
        server.url, server.api_key, server.api_secret
        server.restart()          # same ports and keys: a server restart as clients see it
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
from pathlib import Path
from types import TracebackType

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIVEKIT_SERVER = Path(os.environ.get("LIVEKIT_SERVER_BIN", ROOT / ".tools" / "bin" / "livekit-server"))

_CONFIG = """\
port: {port}
bind_addresses: [127.0.0.1]
keys: {{{api_key}: "{api_secret}"}}
rtc:
  node_ip: 127.0.0.1
  use_external_ip: false
  enable_loopback_candidate: true
  ips: {{includes: [127.0.0.1/32]}}
  udp_port: {udp_port}
  tcp_port: {tcp_port}
  stun_servers: ["127.0.0.1:3478"]
room: {{empty_timeout: {empty_timeout}, departure_timeout: {departure_timeout}}}
"""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel just handed out on 127.0.0.1 (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveKitServer:
    """Start/stop the pinned ``livekit-server`` with a generated loopback-only config."""

    def __init__(self, workdir: Path, *, binary: Path = LIVEKIT_SERVER, empty_timeout: int = 30,
                 departure_timeout: int = 5, startup_timeout: float = 20.0) -> None:
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.port = free_port()
        self.tcp_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.api_key = "devkey"
        self.api_secret = secrets.token_hex(24)  # 48 characters: the server wants 32+
        self.empty_timeout = empty_timeout
        self.departure_timeout = departure_timeout
        self.startup_timeout = startup_timeout
        self.config_path = self.workdir / "livekit.yaml"
        self.log_path = self.workdir / "livekit-server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveKitServer:
        if not self.binary.is_file():
            raise FileNotFoundError(
                f"LiveKit server binary not found at {self.binary}; build it with "
                "`python3 tools/bootstrap.py browser` (or set LIVEKIT_SERVER_BIN)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(_CONFIG.format(
            port=self.port, api_key=self.api_key, api_secret=self.api_secret, udp_port=self.udp_port,
            tcp_port=self.tcp_port, empty_timeout=self.empty_timeout,
            departure_timeout=self.departure_timeout))
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [str(self.binary), "--config", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"livekit-server exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.http_url + "/", timeout=1) as resp:
                    if resp.status == 200 and resp.read().strip() == b"OK":
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"livekit-server not ready after {self.startup_timeout} s:\n{self.log_tail()}")

    def stop(self, *, grace: float = 2.0, kill: bool = False) -> None:
        """Stop the server: SIGTERM, which waits for participants to leave, then a second signal
        after ``grace`` seconds (livekit-server treats it as "force"), then SIGKILL. With
        ``kill`` it is SIGKILL at once: a crash, as the clients see it."""
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

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def __enter__(self) -> LiveKitServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@pytest.fixture
def livekit_server_binary() -> Path:
    return LIVEKIT_SERVER


@pytest.fixture
def livekit_server(tmp_path: Path):
    """A fresh server per test. Fails (never skips) when the binary is missing."""
    server = LiveKitServer(tmp_path / "livekit")
    with server:
        yield server
