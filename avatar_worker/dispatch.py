"""Avatar sessions dispatched by LiveKit: the worker registers as a LiveKit Agents worker and runs
one session per job, in the job's room.

    python -m avatar_worker --dispatch avatarplayer-avatar --mode demo     # see serve.py

The worker connects to the server's agent endpoint under an ``agent_name`` (explicit dispatch:
LiveKit sends it no job unless asked). A visitor's token carries a room configuration that names
that agent (``tools/webapp.py``), so when the visitor's room is created LiveKit picks a registered
worker by load and hands it a job for that room; the token endpoint can also ask for one with the
dispatch API. Each job runs in a process of its own (livekit-agents' process pool: a crash takes
down one session, not the worker), and there runs :func:`avatar_worker.app.run` with the worker's
configuration and the job's room, exactly as ``--room`` would.

A session differs from a ``--room`` run in how it ends: it belongs to its room, so it ends (and its
job with it) when the room is closed or deleted (its visitors left), when the server removes it,
or when another avatar takes its identity in that room (a newer job); a plain connection loss is
rejoined as always. See docs/avatar-worker.md, "Dispatch".

livekit-agents is imported only here, and only when ``--dispatch`` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import signal
import time
from typing import Any

from .config import WorkerConfig

__all__ = ["DEFAULT_AGENT_NAME", "SESSION_ENDS_ON", "DispatchOptions", "job_config", "serve"]

log = logging.getLogger("avatar_worker.dispatch")

DEFAULT_AGENT_NAME = "avatarplayer-avatar"
"""The agent name the demo's tokens dispatch (``serve.py``)."""

SESSION_ENDS_ON = frozenset({"ROOM_CLOSED", "ROOM_DELETED", "PARTICIPANT_REMOVED", "DUPLICATE_IDENTITY"})
"""Disconnect reasons that end a dispatched session instead of a rejoin: its room is gone, the
server removed it, or a newer avatar of that room took its identity."""

REGISTERED = "registered with the server as agent"
"""What the worker logs once LiveKit may send it jobs (``serve.py`` waits for it)."""

AGENT_IDENTITY_PLACEHOLDER = "agent-from-dispatch"
"""The agents mode's ``agent_identity`` until a job's metadata names the real one."""


@dataclasses.dataclass(frozen=True)
class DispatchOptions:
    """How the worker registers with LiveKit. The load it reports is its running sessions over
    ``max_sessions``; at ``load_threshold`` (1.0: with ``max_sessions`` running) LiveKit sends it no
    more jobs, ``math.inf``: never full. (Not livekit-agents' default, the host's CPU use: a browser
    on the same machine, or a busy neighbour, would make the worker refuse visitors it has room
    for, and LiveKit does not offer a refused job again.) ``idle_processes``: job processes kept
    warm, so a session starts without an interpreter boot."""

    agent_name: str = DEFAULT_AGENT_NAME
    idle_processes: int = 1
    load_threshold: float = 1.0
    executor: str = "process"
    max_sessions: int = 8

    def __post_init__(self) -> None:
        if not self.agent_name or len(self.agent_name) > 128:
            raise ValueError("agent_name must be 1 to 128 characters")
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if self.idle_processes < 0:
            raise ValueError("idle_processes must be >= 0")
        if not 0 < self.load_threshold:
            raise ValueError("load_threshold must be > 0")
        if self.executor not in ("process", "thread"):
            raise ValueError(f"executor must be 'process' or 'thread', got {self.executor!r}")


def job_config(template: WorkerConfig, room: str, metadata: str = "") -> WorkerConfig:
    """The configuration of one session: the worker's, in the job's ``room``. Modes that would
    start at once wait for the visitor. A send log or audio report gets a file per session, named
    after the room (``sent.jsonl`` → ``sent-visit-….jsonl``). In agents mode the job's metadata (JSON
    ``{"agent_identity": ...}``, set by whoever dispatched the avatar) names the agent, unless the
    worker was given one. Raises ValueError for metadata that does not fit."""
    livekit = dataclasses.replace(template.livekit, room=room)
    changes: dict[str, Any] = {"livekit": livekit, "wait_for_participant": True}
    for name in ("send_log", "audio_report"):  # one file per session: <stem>-<room><suffix>
        path = getattr(template, name)
        if path is not None:
            changes[name] = path.with_name(f"{path.stem}-{room}{path.suffix}")
    if template.mode == "agents":
        agent = template.agent_identity
        if agent == AGENT_IDENTITY_PLACEHOLDER:
            agent = _metadata(metadata).get("agent_identity")
            if not isinstance(agent, str) or not agent:
                raise ValueError("agents mode: the job's metadata names no agent_identity")
        attributes = {k: v for k, v in livekit.attributes.items() if v != AGENT_IDENTITY_PLACEHOLDER}
        changes.update(agent_identity=agent, livekit=dataclasses.replace(livekit, attributes=attributes))
    return dataclasses.replace(template, **changes)


def _metadata(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the job's metadata is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError("the job's metadata is not a JSON object")
    return value


_RUNNING: dict[str, Any] = {}
"""The worker of this process and its capacity (set by :func:`serve`; read by :func:`_accept`)."""


async def _accept(identity: str, name: str | None, request: Any) -> None:
    """Take the job, unless ``max_sessions`` are running already: LiveKit then offers it to another
    worker. (It skips workers that reported themselves full, but a report is up to 2.5 s old.)"""
    worker, capacity = _RUNNING.get("worker"), _RUNNING.get("max_sessions", 0)
    if worker is not None:
        running = {info.job.id for info in worker.active_jobs}
        now = time.monotonic()
        accepted: dict[str, float] = _RUNNING.setdefault("accepted", {})
        for job_id in [j for j, at in accepted.items() if j in running or now - at > STARTING_S]:
            del accepted[job_id]  # started (now counted as running), or never did
        if len(running) + len(accepted) >= capacity:
            log.info("job for room %r declined: %d sessions running or starting, the most this worker takes",
                     request.room.name, capacity)
            await request.reject()
            return
        accepted[request.id] = now
    await request.accept(identity=identity, name=name or identity)


PROCESS_START_S = 30.0
"""How long a job process may take to start (livekit-agents' default, 10 s, was too short on a
2-core machine running browsers: the worker then failed to register at all)."""

STARTING_S = 30.0
"""How long an accepted job counts against the capacity before it shows up as running."""


async def _session(template: WorkerConfig, ctx: Any) -> None:
    """One job: the session in the job's room, until it ends or the job is shut down."""
    from .app import run

    room = ctx.job.room.name
    try:
        config = job_config(template, room, ctx.job.metadata)
    except ValueError as exc:
        log.error("job %s in room %r refused: %s", ctx.job.id, room, exc)
        ctx.shutdown(reason="bad-job")
        return
    stop = asyncio.Event()
    finished = asyncio.Event()

    async def _shutdown(reason: str) -> None:
        # livekit-agents ends the process once the shutdown callbacks return: leave the room first
        # (the turn's TRANSITION_END, then a clean leave), bounded by the app's own limits
        stop.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(finished.wait(), SESSION_STOP_S)

    ctx.add_shutdown_callback(_shutdown)
    logging.getLogger("livekit.agents").addFilter(_own_room_filter)
    log.info("job %s: a session in room %r", ctx.job.id, room)
    outcome = "failed"
    try:
        summary = await run(config, stop=stop, ends_on=SESSION_ENDS_ON)
        outcome = summary["outcome"]
        log.info("job %s: session in room %r ended (%s): %s", ctx.job.id, room, outcome, json.dumps(summary))
    except Exception:
        log.exception("job %s: the session in room %r failed", ctx.job.id, room)
    finally:
        finished.set()
        ctx.shutdown(reason=outcome)


SESSION_STOP_S = 20.0
"""How long a job's shutdown waits for its session to leave the room cleanly."""


def session_load(max_sessions: int, worker: Any) -> float:
    """The load a worker reports to LiveKit: its running sessions over ``max_sessions``."""
    return len(worker.active_jobs) / max_sessions


def _own_room_filter(record: logging.LogRecord) -> bool:
    """Sessions join with a Room of their own (rejoined after losses, avatar_worker/transport/rejoin.py),
    never ``ctx.connect()``: livekit-agents' reminders to call it do not apply."""
    return "job_ctx.connect()" not in record.getMessage()


def _prewarm(template: WorkerConfig, _process: object) -> None:
    """In each new session process, before a job comes: the demo's speech recogniser (about a
    second for Whisper), its greeting and fixed replies, not while a visitor waits for them."""
    if template.mode == "demo":
        from .modes.demo import prewarm

        prewarm(template)


def serve(template: WorkerConfig, options: DispatchOptions) -> int:
    """Register with the LiveKit server at ``template.livekit.url`` and run sessions until SIGINT
    or SIGTERM; then running sessions are shut down cleanly. Returns the exit status."""
    import functools

    from livekit import agents

    settings = template.livekit
    worker_options = agents.WorkerOptions(
        entrypoint_fnc=functools.partial(_session, template),
        request_fnc=functools.partial(_accept, settings.identity, settings.name),
        agent_name=options.agent_name,
        ws_url=settings.url,
        api_key=settings.api_key,
        api_secret=settings.api_secret,
        host="127.0.0.1",  # the worker's health/metrics endpoint: loopback only
        port=0,
        num_idle_processes=options.idle_processes,
        load_fnc=functools.partial(session_load, options.max_sessions),
        load_threshold=options.load_threshold if math.isfinite(options.load_threshold) else math.inf,
        job_executor_type=agents.JobExecutorType(options.executor),
        shutdown_process_timeout=20.0,
        initialize_process_timeout=PROCESS_START_S,
        prewarm_fnc=functools.partial(_prewarm, template),
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        worker = agents.Worker(worker_options, devmode=False, loop=loop)
        _RUNNING.update(worker=worker, max_sessions=options.max_sessions)
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        worker.on("worker_registered", lambda worker_id, _info: log.info(
            "%s %r at %s (worker %s); sessions run in %s executors", REGISTERED, options.agent_name,
            settings.url, worker_id, options.executor))
        runner = asyncio.create_task(worker.run(), name="agents-worker")
        stopper = asyncio.create_task(stopping.wait(), name="stop")
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            runner.result()  # the worker stopped by itself: an error
            return
        log.info("stopping: ending %d running session(s)", len(worker.active_jobs))
        try:
            await worker.aclose()
        except AssertionError:
            pass  # stopped before it had started (livekit-agents asserts it had): nothing runs yet
        runner.cancel()

    asyncio.run(main())
    return 0
