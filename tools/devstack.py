"""The LiveKit server for the demo and the tests: the pinned binary on loopback, or an external one.

One implementation, used by ``serve.py``, the browser tests, the worker tests and the benchmarks::

    with LiveKitServer(workdir) as server:     # free loopback ports, a fresh 48-character secret
        server.url, server.api_key, server.api_secret, server.token("viewer", "room")
        server.restart(kill=True)               # same ports and keys: a crash as clients see it

Several nodes sharing one Redis, as a multi-node deployment runs them, all on loopback
(docs/scaling.md)::

    with LiveKitCluster(workdir, nodes=2) as cluster:   # Debian's redis-server + 2 livekit-servers
        cluster.urls, cluster.token("viewer", "room")    # any node's URL reaches any room
        cluster.restart_node(1, kill=True)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
LIVEKIT_BINARY = Path(os.environ.get("LIVEKIT_SERVER_BIN", ROOT / ".tools" / "bin" / "livekit-server"))
REDIS_BINARY = Path(os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server") or "/usr/bin/redis-server")

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

_REDIS_CONFIG = """\
redis:                            # shared by every node: rooms, routing, signal relay
  address: {address}
  password: "{password}"
"""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel just handed out on 127.0.0.1 (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds a secret), from its first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        out.write(text)


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
                 empty_timeout: int = 30, departure_timeout: int = 5, startup_timeout: float = 30.0,
                 redis: RedisServer | None = None, api_secret: str | None = None) -> None:
        """``redis``: a node of a cluster (:class:`LiveKitCluster`), whose nodes share that Redis and
        ``api_secret``; without it a standalone server with a fresh secret."""
        self.binary = Path(binary)
        self.workdir = Path(workdir) if workdir is not None else None
        self.port = port or free_port()
        self.tcp_port = 0  # no ICE-TCP: its listener ignores bind_addresses (all interfaces); loopback has UDP
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.api_key = "devkey"
        self.api_secret = api_secret or secrets.token_urlsafe(36)  # 48 characters: the server wants 32+
        self.redis = redis
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
        write_private(config, _CONFIG.format(  # it holds the secret
            port=self.port, api_key=self.api_key, api_secret=self.api_secret, udp_port=self.udp_port,
            tcp_port=self.tcp_port, empty_timeout=self.empty_timeout, departure_timeout=self.departure_timeout)
            + (_REDIS_CONFIG.format(address=self.redis.address, password=self.redis.password) if self.redis else ""))
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


class RedisError(RuntimeError):
    """Redis answered with an error reply (``-ERR ...``), or not at all."""


class RedisServer:
    """Debian's ``redis-server``, started by us on a free loopback port with a random password: the
    shared state of a :class:`LiveKitCluster`. Nothing is saved to disk (``save ""``, no AOF).

    Its config is a file in ``workdir`` (mode 0600: it holds the password), never a command line.
    :meth:`command` speaks RESP over a socket: enough for the readiness PING and for tests that look
    at LiveKit's keys (``nodes``, ``room_node_map``)."""

    def __init__(self, workdir: Path, *, port: int | None = None, binary: Path = REDIS_BINARY,
                 startup_timeout: float = 10.0) -> None:
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(24)
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis-server.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RedisServer:
        if not self.binary.is_file():
            raise RuntimeError(f"redis-server not found at {self.binary}: run `python3 tools/bootstrap.py browser` "
                               "(it installs Debian's redis-server) or set REDIS_SERVER_BIN")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "redis.conf"
        write_private(config, (  # it holds the password
            f"bind 127.0.0.1\nport {self.port}\nprotected-mode yes\nrequirepass {self.password}\n"
            f'save ""\nappendonly no\ndaemonize no\nsupervised no\nlogfile ""\ndir "{self.workdir}"\n'))
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen([str(self.binary), str(config)], stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=self.workdir)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                if self.command("PING") == "PONG":
                    return self
            except (OSError, RedisError):
                pass
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise RuntimeError(f"redis-server exited with {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server not answering PING after {self.startup_timeout:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def command(self, *args: str | bytes, timeout: float = 2.0) -> object:
        """Authenticate, run one command, return its reply: ``str`` for a status, ``bytes`` for a
        bulk string, ``int``, ``None`` or a list of those. An error reply raises :class:`RedisError`."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            reader = sock.makefile("rb")
            sock.sendall(_resp("AUTH", self.password) + _resp(*args))
            _read_reply(reader)
            return _read_reply(reader)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"<no redis log: {exc}>"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _resp(*args: str | bytes) -> bytes:
    parts = [arg.encode() if isinstance(arg, str) else arg for arg in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _read_reply(reader) -> object:
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise RedisError("connection closed mid-reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RedisError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = reader.read(size + 2)
        return data[:-2]
    if kind == b"*":
        size = int(body)
        return None if size < 0 else [_read_reply(reader) for _ in range(size)]
    raise RedisError(f"unexpected reply {line!r}")


class LiveKitCluster:
    """``nodes`` livekit-servers sharing one :class:`RedisServer`, all on loopback: what a multi-node
    deployment runs, on one machine (docs/scaling.md). Each node has its own signalling (HTTP) and
    UDP port and its own log (``workdir/node<i>/``); the api key and secret are the same everywhere,
    so a token from :meth:`token` is good on every node, and a room is reachable through any of them.

    On one host the nodes need nothing more: each process draws a random node ID at start, and
    ``node_ip`` (127.0.0.1 for all) only goes into ICE candidates of the node hosting a room."""

    def __init__(self, workdir: Path, *, nodes: int = 2, port: int | None = None, binary: Path = LIVEKIT_BINARY,
                 redis_binary: Path = REDIS_BINARY, **server_options: object) -> None:
        """``port``: node 0's signalling port (the others get free ones); ``server_options`` go to
        every :class:`LiveKitServer` (``empty_timeout``, ``departure_timeout``, ``startup_timeout``)."""
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        self.workdir = Path(workdir)
        self.redis = RedisServer(self.workdir / "redis", binary=redis_binary)
        secret = secrets.token_urlsafe(36)
        self.nodes = [LiveKitServer(self.workdir / f"node{i}", port=port if i == 0 else None, binary=binary,
                                    redis=self.redis, api_secret=secret, **server_options)  # type: ignore[arg-type]
                      for i in range(nodes)]

    @property
    def api_key(self) -> str:
        return self.nodes[0].api_key

    @property
    def api_secret(self) -> str:
        return self.nodes[0].api_secret

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def http_url(self) -> str:
        return self.nodes[0].http_url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def running(self) -> bool:
        """Redis and every node are up."""
        return self.redis.running and all(node.running for node in self.nodes)

    @property
    def log_paths(self) -> list[Path]:
        """Redis' log, then each node's."""
        return [self.redis.log_path, *(node.log_path for node in self.nodes if node.log_path is not None)]

    def start(self) -> LiveKitCluster:
        """Redis first, then the nodes one after the other (each waits for ``GET /`` == OK)."""
        try:
            self.redis.start()
            for node in self.nodes:
                node.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """The nodes, side by side (each leaves Redis' node list on a clean stop), then Redis."""
        stoppers = [threading.Thread(target=node.stop, name=f"stop-node{i}") for i, node in enumerate(self.nodes)]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        self.redis.stop()

    def restart_node(self, index: int, *, kill: bool = False) -> None:
        """Stop (or SIGKILL) one node and start it again, same ports. It comes back under a new node
        ID; a killed node stays in Redis' node list until its stats are 5 s old, and rooms it hosted
        move to a live node only then (livekit-server's ``selector.AvailableSeconds``)."""
        self.nodes[index].restart(kill=kill)

    def token(self, identity: str, room: str, **options: object) -> str:
        """:meth:`LiveKitServer.token`: valid on every node."""
        return self.nodes[0].token(identity, room, **options)  # type: ignore[arg-type]

    def log_tail(self, lines: int = 30) -> str:
        return "\n\n".join([f"== redis ==\n{self.redis.log_tail(lines)}"]
                           + [f"== node {i} ==\n{node.log_tail(lines)}" for i, node in enumerate(self.nodes)])

    def __enter__(self) -> LiveKitCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def end_process_group(pgid: int, grace_s: float = 5.0) -> None:
    """End what is left of a process group whose leader we started with ``start_new_session`` and
    stopped (a dispatch worker's job processes and multiprocessing's forkserver wind down on their
    own when it goes): wait ``grace_s``, SIGTERM, wait as much again, SIGKILL."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        if sig is not None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return


def start_livekit_server(workdir: Path, *, port: int | None = None) -> LiveKitServer:
    """Start a loopback server and wait for ``GET /`` == OK. Raises RuntimeError."""
    return LiveKitServer(workdir, port=port).start()
