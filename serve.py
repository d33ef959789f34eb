#!/usr/bin/env python3
"""The whole demo on one machine: LiveKit server + avatar worker + the web page.

    python3 serve.py                  # then open http://127.0.0.1:8000/ and click Connect
    python3 serve.py --help

What it does, in order:

1. the set-up (``tools/bootstrap.py demo``: venv, npm packages, Debian chromium/ffmpeg/espeak-ng/sox,
   the LiveKit server binary, the wheels the page loads into Pyodide); idempotent, about a second
   when nothing changed;
2. re-executes itself with ``.venv/bin/python`` (the venv has livekit-api and the worker's SDK);
3. starts a loopback-only LiveKit server (or uses an external one, see ``--external``);
4. starts the avatar worker as the demo agent: it greets whoever joins (espeak-ng, offline),
   listens to their microphone (voice-activity detection, offline speech recognition with
   Whisper tiny.en) and answers what they said (a small dialogue policy), sending
   ``agent_status`` and ``transcript_chunk`` data messages. By default every visitor gets a room
   and an avatar of their own: ``--workers N`` worker processes register with LiveKit as an agent
   (``avatar_worker/dispatch.py``), and LiveKit dispatches a session to one of them, by load, for
   each visitor's room. ``--rooms shared`` is the old way: one worker in one room (``--room``)
   that everyone joins;
5. serves ``web/`` with the token endpoint (``tools/webapp.py``) and prints the URL.

Ctrl-C or SIGTERM stops everything it started (worker, then web server, then LiveKit server).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
SETUP_DONE_ENV = "AVATARPLAYER_SETUP_DONE"  # set by the re-exec so the set-up runs once per start
EXTERNAL_ENV = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")

DEFAULT_ROOM = "avatar-demo"
AGENT_NAME = "avatarplayer-demo"
"""The agent name the demo's workers register as, and its tokens dispatch."""
WORKER_RESTART_DELAY_S = 3.0
WORKER_MAX_RESTARTS = 5
WORKER_REGISTER_TIMEOUT_S = 60.0


def log(message: str) -> None:
    print(f"[serve] {message}", flush=True)


# ----------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 serve.py",
        description="Run the avatarplayer demo: a LiveKit server, the avatar worker and the web page, "
                    "all on this machine. Stops everything on Ctrl-C / SIGTERM.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
external LiveKit server:
  Set all three environment variables to use an existing server instead of starting one
  (the secret is read from the environment only, never from the command line):
    LIVEKIT_URL          e.g. wss://my-project.livekit.cloud or ws://127.0.0.1:7880
    LIVEKIT_API_KEY      an API key of that server
    LIVEKIT_API_SECRET   its secret (used here to mint tokens and passed to the worker by environment)
  Their presence alone selects the external server; --external makes it explicit and fails if one
  of them is missing.

examples:
  python3 serve.py                        # a room and an avatar per visitor
  python3 serve.py --workers 2            # two worker processes; LiveKit spreads the visitors
  python3 serve.py --rooms shared         # one room, one avatar, for everyone
  python3 serve.py --nodes 2 --workers 2  # two LiveKit nodes sharing a Redis (docs/scaling.md)
  python3 serve.py --dev                  # also the test harness pages under /dev/
  python3 serve.py --host 0.0.0.0 --allow-remote --allowed-host demo.lan   # see docs/security.md
  python3 serve.py --port 8080 --livekit-port 7890
  LIVEKIT_URL=wss://... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... python3 serve.py --external
""")
    web = p.add_argument_group("web page")
    web.add_argument("--host", default="127.0.0.1",
                     help="address the web server binds to (default: %(default)s; loopback only unless --allow-remote)")
    web.add_argument("--port", type=int, default=8000,
                     help="web server port (default: %(default)s; 0 picks a free one)")
    web.add_argument("--allow-remote", action="store_true",
                     help="allow a non-loopback --host. The page and its token endpoint are plain HTTP without "
                          "any login: anyone who reaches the port gets a LiveKit token for the demo room. "
                          "The built-in LiveKit server only listens on 127.0.0.1, so remote browsers also need "
                          "an external server (see below). Browsers must reach the page by a name the server "
                          "answers for: the --host address itself (unless 0.0.0.0 or ::) and each --allowed-host")
    web.add_argument("--allowed-host", action="append", default=[], metavar="NAME", type=allowed_host,
                     help="a host name or IP address, besides 127.0.0.1, localhost and [::1], that browsers may "
                          "use in the page's URL (repeatable). Requests naming any other host in their Host "
                          "header, or posting from any other Origin, get 403: this stops DNS-rebinding pages "
                          "from minting tokens. Example: --allowed-host demo.lan")
    web.add_argument("--dev", action="store_true",
                     help="also serve the test harness pages under /dev/ (they run any Python a caller sends "
                          "and join any LiveKit URL given in their query string; 404 without --dev)")
    lk = p.add_argument_group("LiveKit server")
    lk.add_argument("--livekit-port", type=int, default=7880,
                    help="port of the built-in loopback LiveKit server (default: %(default)s; 0 picks a free one)")
    lk.add_argument("--nodes", type=positive_int, default=1,
                    help="LiveKit nodes sharing a Redis, all on loopback (docs/scaling.md); visitors may "
                         "connect through any of them (default: %(default)s)")
    lk.add_argument("--external", action="store_true",
                    help="use the server given by LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET "
                         "instead of starting one")
    avatar = p.add_argument_group("avatar worker")
    avatar.add_argument("--rooms", choices=("visitor", "shared"), default="visitor",
                        help="visitor: each visitor gets a room and an avatar session of their own, dispatched by "
                             "LiveKit to the workers; shared: everyone joins --room, where one worker speaks "
                             "(default: %(default)s)")
    avatar.add_argument("--workers", type=positive_int, default=1,
                        help="--rooms visitor: worker processes registered with LiveKit; each runs many "
                             "sessions (default: %(default)s)")
    avatar.add_argument("--sessions-per-worker", type=positive_int, default=8,
                        help="--rooms visitor: the sessions each worker process takes at once; a visitor "
                             "arriving when all are full gets no avatar (default: %(default)s)")
    avatar.add_argument("--room", default=DEFAULT_ROOM, help="--rooms shared: the room the page joins and the "
                                                              "worker speaks in (default: %(default)s)")
    avatar.add_argument("--text", default=None,
                        help="the greeting (espeak-ng, offline); default: the demo agent's own")
    avatar.add_argument("--voice", default=None, help="espeak-ng voice, e.g. en-us (default: espeak-ng's)")
    avatar.add_argument("--reply", choices=("policy", "echo", "speak", "both"), default="policy",
                        help="how the avatar answers what you say: an answer to the words it recognised, "
                             "your words played back, a spoken sentence, or a sentence then the playback "
                             "(default: %(default)s)")
    avatar.add_argument("--asr", choices=("whisper", "sphinx", "none"), default="whisper",
                        help="offline speech recognition: faster-whisper tiny.en, pocketsphinx, or none "
                             "(then --reply echo, speak or both) (default: %(default)s)")
    avatar.add_argument("--no-worker", action="store_true",
                        help="do not start the avatar worker (run your own in the room)")
    avatar.add_argument("--worker-log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="the worker's log level (default: %(default)s; its per-frame pacing lines are "
                             "shown at debug only)")
    p.add_argument("--skip-setup", action="store_true",
                   help="do not run tools/bootstrap.py (everything must already be installed)")
    return p


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return number


def allowed_host(value: str) -> str:
    """argparse type of --allowed-host: a host name or an IP address, normalized (no port, no scheme)."""
    from tools.httpserve import normalize_host

    try:
        return normalize_host(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def web_allowed_hosts(args: argparse.Namespace) -> list[str]:
    """The extra host names the web server answers for: --allowed-host, and a specific --host."""
    hosts = list(args.allowed_host)
    if args.host not in ("0.0.0.0", "::", "[::]", "") and not is_loopback_host(args.host):
        hosts.append(allowed_host(args.host))
    return hosts


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: may resolve anywhere


def port_in_use(host: str, port: int) -> bool:
    """True when ``host:port`` cannot be bound (another server has it). Checked up front: a second
    LiveKit server on a taken port would exit, but the first one would answer its readiness probe."""
    if not port:
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host.strip("[]"), port))
        except OSError:
            return True
    return False


def external_settings(args: argparse.Namespace) -> tuple[str, str, str] | None:
    """(url, key, secret) of an external server, None for the built-in one; exits on a half setting."""
    values = [os.environ.get(name, "") for name in EXTERNAL_ENV]
    if all(values):
        return values[0], values[1], values[2]
    if args.external or any(values):
        missing = [name for name, value in zip(EXTERNAL_ENV, values) if not value]
        sys.exit(f"serve.py: an external LiveKit server needs {', '.join(EXTERNAL_ENV)}; missing: {', '.join(missing)}")
    return None


# ----------------------------------------------------------------------------- set-up


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def setup_and_reexec(args: argparse.Namespace) -> None:
    """Run the set-up, then continue in the venv's interpreter (replacing this process)."""
    if os.environ.get(SETUP_DONE_ENV) == "1" or args.skip_setup:
        if not in_venv() and (VENV / "bin" / "python").exists():
            os.execv(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python"), __file__, *sys.argv[1:]])
        return
    from tools import bootstrap

    try:
        python = bootstrap.demo()
    except subprocess.CalledProcessError as exc:
        sys.exit(f"serve.py: the set-up failed ({exc}); see the output above")
    os.environ[SETUP_DONE_ENV] = "1"
    if not in_venv():
        os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


# ----------------------------------------------------------------------------- the worker


class Worker:
    """The avatar worker subprocess; its output is copied to ours with a ``[worker]`` prefix.

    Credentials go through the environment (LIVEKIT_*), never the command line, where any local
    user could read them in the process list.
    """

    def __init__(self, server, args: argparse.Namespace, index: int = 0) -> None:
        # the demo agent: greets whoever joins, then answers what they say into the microphone
        # --realtime: steady 40 ms pacing on a busy machine (SCHED_RR; the worker carries on in the
        # normal class, with a warning, where it is not allowed)
        where = (["--room", args.room] if args.rooms == "shared" else
                 ["--dispatch", AGENT_NAME, "--max-sessions", str(args.sessions_per_worker)])
        self.cmd = [sys.executable, "-m", "avatar_worker", "--mode", "demo", *where,
                    "--reply", args.reply, "--asr", args.asr, "--log-level", args.worker_log_level, "--realtime"]
        self.label = "worker" if index == 0 else f"worker{index + 1}"
        if args.text:
            self.cmd += ["--text", args.text]
        if args.voice:
            self.cmd += ["--voice", args.voice]
        self.env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key,
                        LIVEKIT_API_SECRET=server.api_secret, PYTHONUNBUFFERED="1")
        self.quiet_pacing = args.worker_log_level != "debug"
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.registered = threading.Event()
        """A dispatch worker told it is registered: LiveKit sends it jobs from now on."""
        from avatar_worker.dispatch import REGISTERED  # (the venv's: serve.py runs in it by now)

        self.registered_line = f" {REGISTERED} "

    def start(self) -> None:
        # a process group of its own: a dispatch worker's job processes (and multiprocessing's
        # forkserver) are in it, and stop() makes sure none of them outlives the worker
        self.process = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        errors="replace", bufsize=1, start_new_session=True)
        threading.Thread(target=self._pump, args=(self.process,), name="worker-log", daemon=True).start()

    def _pump(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            if self.quiet_pacing and " INFO avatar_worker.pacing: " in line:
                continue  # "tick N late by X ms": one line per late frame on a busy machine
            if self.registered_line in line:
                self.registered.set()
            print(f"[{self.label}] {line.rstrip()}", flush=True)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (the worker leaves the room cleanly), then SIGKILL after ``timeout_s``."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log(f"the {self.label} did not stop in time; killing it")
                process.kill()
                process.wait(timeout=timeout_s)
        from tools.devstack import end_process_group

        end_process_group(process.pid)


# ----------------------------------------------------------------------------- main


def main() -> int:
    args = build_parser().parse_args()
    if not is_loopback_host(args.host) and not args.allow_remote:
        sys.exit(f"serve.py: refusing --host {args.host}: the demo page and its token endpoint have no "
                 "authentication and no TLS, so anyone reaching that address could mint LiveKit tokens; and "
                 "the built-in LiveKit server listens on 127.0.0.1 only, so remote browsers could not "
                 "use it anyway. Pass --allow-remote (best with an external server, see --help) if you "
                 "really mean it.")
    external = external_settings(args)
    if external and args.nodes > 1:
        sys.exit("serve.py: --nodes runs LiveKit nodes here; it does not go with an external server")
    setup_and_reexec(args)

    taken = [f"{what} port {port}" for what, host, port in (
        ("web", args.host, args.port), ("LiveKit", "127.0.0.1", 0 if external else args.livekit_port))
        if port_in_use(host, port)]
    if taken:
        sys.exit(f"serve.py: {' and '.join(taken)} already in use (another serve.py?); "
                 "pick others with --port / --livekit-port")

    from tools import devstack, webapp

    handler = logging.StreamHandler(sys.stdout)  # the token endpoint's avatar watcher says what it did
    handler.setFormatter(logging.Formatter("[serve] %(message)s"))
    logging.getLogger("webapp").addHandler(handler)
    logging.getLogger("webapp").setLevel(logging.INFO)

    stop = threading.Event()

    def on_signal(signum: int, _frame) -> None:
        if stop.is_set():
            return
        log(f"{signal.Signals(signum).name}: stopping")
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    server = None
    http = None
    workers: list[Worker] = []
    status = 0
    visitors = args.rooms == "visitor"
    with tempfile.TemporaryDirectory(prefix="avatarplayer-serve-") as workdir:
        try:
            if external:
                server = devstack.LiveKitServer.external(*external)
                log(f"using the external LiveKit server {server.url} (from LIVEKIT_URL)")
            elif args.nodes > 1:
                server = devstack.LiveKitCluster(Path(workdir), nodes=args.nodes, port=args.livekit_port or None)
                server.start()
                log(f"LiveKit cluster of {args.nodes} nodes ready at {', '.join(server.urls)}, sharing a Redis "
                    f"(loopback only; logs: {', '.join(map(str, server.log_paths))})")
            else:
                server = devstack.start_livekit_server(Path(workdir), port=args.livekit_port or None)
                log(f"LiveKit server ready at {server.url} (loopback only; log: {server.log_path})")

            try:
                http = webapp.build_app(server, rooms=re.escape(args.room), default_room=args.room,
                                        host=args.host, port=args.port, dev=args.dev,
                                        allowed_hosts=web_allowed_hosts(args), visitors=visitors,
                                        dispatch=AGENT_NAME if visitors else None).start()
            except OSError as exc:
                raise RuntimeError(f"cannot serve on {args.host}:{args.port}: {exc}") from None

            if args.no_worker:
                log(f"no avatar worker (--no-worker): run your own in room {args.room!r}" if not visitors else
                    f"no avatar worker (--no-worker): run your own with --dispatch {AGENT_NAME}")
            else:
                for index in range(args.workers if visitors else 1):
                    worker = Worker(server, args, index)
                    worker.start()
                    workers.append(worker)
                    if visitors:
                        log(f"avatar worker {index + 1} registered for dispatch as {AGENT_NAME!r} "
                            f"(pid {worker.process.pid}): a room and an avatar per visitor")
                    else:
                        log(f"avatar worker started in room {args.room!r} (pid {worker.process.pid})")

            # a room created before any worker registered would get no avatar: wait for them
            for worker in workers if visitors else ():
                if not worker.registered.wait(WORKER_REGISTER_TIMEOUT_S) and not stop.is_set():
                    raise RuntimeError(f"the avatar {worker.label} did not register with the LiveKit server "
                                       f"within {WORKER_REGISTER_TIMEOUT_S:.0f} s (see its log above)")

            host = f"[{args.host}]" if ":" in args.host else args.host
            url = f"http://{host}:{http.port}/"
            if not external and not is_loopback_host(args.host):
                log("warning: the built-in LiveKit server is loopback-only; browsers on other machines "
                    "will load the page but cannot join the room")
            log(f"demo ready: open {url}   (Ctrl-C stops it)")

            while not stop.wait(0.5):
                if not external and not server.running:
                    if stop.wait(1.0):
                        break  # Ctrl-C reached the whole process group: the server was just quicker
                    log(f"the LiveKit server exited:\n{server.log_tail()}")
                    status = 1
                    break
                for worker in list(workers):
                    code = worker.exited()
                    if code is None:
                        continue
                    if worker.restarts >= WORKER_MAX_RESTARTS:
                        log(f"the avatar {worker.label} exited ({code}) {worker.restarts + 1} times; giving up "
                            "on it")
                        workers.remove(worker)
                        continue
                    worker.restarts += 1
                    log(f"the avatar {worker.label} exited ({code}); restarting it in {WORKER_RESTART_DELAY_S:.0f} s")
                    if stop.wait(WORKER_RESTART_DELAY_S):
                        break
                    worker.start()
        except RuntimeError as exc:
            log(f"error: {exc}")
            status = 1
        finally:
            for worker in workers:
                worker.stop(timeout_s=25.0)  # a dispatch worker first ends its sessions cleanly
            if workers:
                log("avatar worker stopped" if len(workers) == 1 else f"{len(workers)} avatar workers stopped")
            if http is not None:
                http.stop()
                log("web server stopped")
            if server is not None and not external:
                server.stop()
                log("LiveKit server stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
