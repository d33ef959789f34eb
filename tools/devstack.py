"""The local LiveKit server: config, start, readiness, tokens. Used by serve.py and the tests."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIVEKIT_BINARY = ROOT / ".tools" / "bin" / "livekit-server"
READY_TIMEOUT_S = 30.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A currently free loopback port (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveKitServer:
    """A LiveKit server (ours on loopback, or an external one) and its credentials."""

    url: str  # ws://127.0.0.1:PORT
    api_key: str
    api_secret: str
    log_path: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def http_url(self) -> str:
        return self.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)

    def token(self, identity: str, room: str, *, name: str | None = None, ttl_s: int = 3600,
              can_publish: bool = True, can_subscribe: bool = True, can_publish_data: bool = True,
              sources: list[str] | None = None, kind: str | None = None,
              attributes: dict[str, str] | None = None) -> str:
        """An access token for ``identity`` in ``room`` only (livekit-api)."""
        from livekit import api

        grants = api.VideoGrants(room_join=True, room=room, can_publish=can_publish,
                                 can_subscribe=can_subscribe, can_publish_data=can_publish_data,
                                 can_publish_sources=sources or [])
        token = (api.AccessToken(self.api_key, self.api_secret).with_identity(identity)
                 .with_name(name or identity).with_grants(grants).with_ttl(timedelta(seconds=ttl_s)))
        if kind:
            token = token.with_kind(kind)
        if attributes:
            token = token.with_attributes(attributes)
        return token.to_jwt()

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None:
            return "<external server: no log>"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"<no server log: {exc}>"

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def livekit_config(port: int, tcp_port: int, udp_port: int, api_key: str, api_secret: str) -> str:
    """Loopback-only server config (platform.md). Unknown keys are an error for the server."""
    return f"""\
port: {port}
bind_addresses: [127.0.0.1]
keys: {{{api_key}: "{api_secret}"}}
logging: {{level: info}}
rtc:
  node_ip: 127.0.0.1
  use_external_ip: false
  enable_loopback_candidate: true
  ips: {{includes: [127.0.0.1/32]}}
  udp_port: {udp_port}
  tcp_port: {tcp_port}
  stun_servers: ["127.0.0.1:3478"]
room: {{empty_timeout: 30, departure_timeout: 5}}
"""


def start_livekit_server(workdir: Path, *, port: int | None = None, binary: Path = LIVEKIT_BINARY,
                         api_secret: str | None = None) -> LiveKitServer:
    """Start a server on loopback (free ports unless ``port``) and wait for ``GET /`` == OK."""
    if not binary.is_file():
        raise RuntimeError(f"{binary} is missing: run `python3 tools/bootstrap.py browser`")
    workdir.mkdir(parents=True, exist_ok=True)
    api_key, api_secret = "devkey", api_secret or secrets.token_urlsafe(36)  # 48 characters
    port = port or free_port()
    config = workdir / "livekit.yaml"
    config.write_text(livekit_config(port, free_port(), free_port(socket.SOCK_DGRAM), api_key, api_secret))
    os.chmod(config, 0o600)  # it holds the secret
    log_path = workdir / "livekit-server.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen([str(binary), "--config", str(config)], stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = LiveKitServer(f"ws://127.0.0.1:{port}", api_key, api_secret, log_path, process)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not is_ready(server.http_url):
        if process.poll() is not None:
            raise RuntimeError(f"livekit-server exited with {process.returncode}:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            stop_process(process)
            raise RuntimeError(f"livekit-server not ready after {READY_TIMEOUT_S:.0f} s:\n{server.log_tail()}")
        time.sleep(0.1)
    return server


def is_ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(http_url + "/", timeout=1) as response:
            return response.status == 200 and response.read().strip() == b"OK"
    except (urllib.error.URLError, OSError):
        return False


def stop_process(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
