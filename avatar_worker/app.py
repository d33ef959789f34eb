"""One worker run: publish, stream heartbeats, play the configured turns, stop cleanly."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .agent_data import AgentMessages
from .audio.report import AudioReport
from .config import WorkerConfig
from .modes import mode_runner
from .transport.carrier import DataCarrier
from .transport.messaging import MessageSender
from .transport.pacing import try_realtime
from .transport.publisher import Publisher
from .transport.republish import RepublishAfter
from .transport.streamer import MotionStreamer, SendLog, StreamerStopping, TurnObserver

__all__ = ["run"]

log = logging.getLogger("avatar_worker")

_ABANDONED: list[Publisher] = []


async def run(config: WorkerConfig, *, stop: asyncio.Event | None = None,
              on_shutdown: Callable[[], None] | None = None,
              ends_on: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Run until the script is done (``exit_when_done``), ``exit_after_ms`` passes, or ``stop``
    is set; returns the summary (also what the CLI prints as its last stdout line).

    With ``leave_after`` and ``leave_mode="crash"`` the room is left as it is (outcome
    ``crashed``): the caller is expected to end the process at once (``os._exit``), so the server
    only notices when the connections drop, like after a real crash.

    ``on_shutdown`` is called once, when the worker starts to wind down (the CLI arms its exit
    guard there).

    ``ends_on``: disconnect reasons that end the run instead of a rejoin (outcome ``room-closed``,
    ``removed`` or ``replaced``): a dispatched session ends with its room (avatar_worker/dispatch.py).

    Raises :class:`avatar_worker.transport.publisher.PublisherError` if the first join fails.
    """
    stop = stop or asyncio.Event()
    started = time.monotonic()
    runner = mode_runner(config)  # the modes load what they need before joining
    await runner.prepare()

    publisher = Publisher(config.livekit, ends_on=ends_on)
    send_log = SendLog(config.send_log) if config.send_log else None
    messages = MessageSender(publisher, send_log=send_log)
    carrier = DataCarrier(publisher, messages=messages,
                          everyone_topic=config.data_topic if config.data_carrier else None)
    publisher.hooks.append(carrier)
    report = AudioReport(config.audio_report) if config.audio_report else None
    if report is not None:
        publisher.hooks.append(report)
    observers: list[TurnObserver] = []
    if config.agent_data:
        observers.append(AgentMessages(messages))
    republisher = None
    if config.republish_after is not None:
        republisher = RepublishAfter(functools.partial(publisher.republish_video, config.republish_gap_ms / 1000),
                                     config.republish_after, send_log=send_log)
        observers.append(republisher)
    runner.install(publisher, messages, observers)
    streamer = MotionStreamer(publisher, send_log=send_log, data_path=carrier, observers=observers)
    tasks: list[asyncio.Future[Any]] = []
    outcome = "stopped"
    abandoned = ""
    realtime = False
    try:
        # Before the SDK starts its threads, so they inherit the class: its FFI callback thread
        # takes the GIL for every event, and a normal-class thread holding the GIL while the
        # host is busy would stall the real-time loop anyway (priority inversion).
        realtime = config.realtime and try_realtime()
        await publisher.start()
        stream_task = asyncio.create_task(streamer.run(), name="motion-streamer")
        driver = runner.drive(streamer, functools.partial(_lead_in, config, publisher))
        driver_task = asyncio.create_task(driver, name="driver")
        driver_task.add_done_callback(_log_driver_failure)
        stop_task = asyncio.create_task(stop.wait(), name="stop")
        ended_task = asyncio.create_task(publisher.ended.wait(), name="room-ended")
        tasks = [stream_task, driver_task, stop_task, ended_task]
        waits: set[asyncio.Future[Any]] = {stop_task, stream_task, ended_task}
        if config.exit_when_done or config.leave_after is not None:
            waits.add(driver_task)
        if config.exit_after_ms is not None:
            timer = asyncio.ensure_future(asyncio.sleep(config.exit_after_ms / 1000))
            tasks.append(timer)
            waits.add(timer)
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if on_shutdown is not None:
            on_shutdown()

        if stream_task in done:
            stream_task.result()  # it only ends on its own by raising
        if driver_task in done:
            outcome = driver_task.result()
        elif stop_task in done:
            outcome = "signal"
        elif ended_task in done:
            outcome = _ENDED.get(publisher.ended_reason or "", "room-closed")
        else:
            outcome = "timeout"
        if outcome == "left" and config.leave_mode == "crash":
            # the streamer aborted itself right after the truncated turn; leave the room hanging
            # (the caller exits the process without cleanup: see cli.main)
            await stream_task
            outcome = abandoned = "crashed"
            _ABANDONED.append(publisher)  # no garbage collection either: that would close the room
        elif outcome == "left":
            # the streamer aborted itself right after the truncated turn; leave without unpublishing
            await stream_task
            await publisher.abort()
        else:
            streamer.stop()  # before the driver is cancelled: an unfinished turn gets its TRANSITION_END
            await asyncio.wait_for(stream_task, STREAMER_STOP_S)
            await bounded(publisher.close(), CLOSE_LIMIT_S, "leaving the room")
    finally:
        if on_shutdown is not None:
            on_shutdown()
        streamer.abort()
        for task in tasks:
            task.cancel()

        async def release() -> None:
            if tasks:
                await asyncio.wait(tasks, timeout=5.0)
            if republisher is not None:
                await republisher.close()
            await runner.close()
            if not abandoned:
                await publisher.close()  # idempotent; after abort() it only releases what is left
            if report is not None:
                await report.close()

        try:
            await bounded(release(), CLOSE_LIMIT_S, "releasing the worker's tasks and sources")
        finally:
            if send_log is not None:
                send_log.close()

    summary: dict[str, Any] = {
        "event": "summary",
        "mode": config.mode,
        "outcome": outcome,
        "duration_s": round(time.monotonic() - started, 3),
        **streamer.stats.as_dict(),
        "next_seq": streamer.next_seq,
        "keyframe_requests": publisher.keyframe_requests,
        "rejoins": publisher.rejoins,
        "rejoin_attempts": publisher.rejoin_attempts,
        "disconnects": dict(publisher.disconnects),
        "recovered_after_s": publisher.rejoin_took,
        "data_dropped": publisher.data_dropped,
        "data_messages": messages.sent,
        "realtime": realtime,
        **runner.summary(),
    }
    log.info("exit: %d frames sent, %d idle, %d late (max %.1f ms), %d dropped by injection",
             summary["frames_sent"], summary["idle_sent"], summary["late"], summary["max_late_ms"],
             summary["dropped_by_injection"])
    return summary


_ENDED = {"PARTICIPANT_REMOVED": "removed", "DUPLICATE_IDENTITY": "replaced"}
"""The outcome of a session that ended with its room, by disconnect reason (else ``room-closed``)."""

STREAMER_STOP_S = 5.0
"""How long the motion streamer may take to finish its turn's TRANSITION_END and stop."""
CLOSE_LIMIT_S = 8.0
"""How long each of the two shutdown steps (leaving, releasing) may take before the worker goes on
without it. With the streamer's time, the whole shutdown stays under the CLI's exit guard."""


async def bounded(step: Awaitable[Any], seconds: float, what: str) -> bool:
    """Await ``step`` for at most ``seconds``; False (logged, with where it was stuck) if it did not
    finish. Unlike ``asyncio.wait_for`` this never waits for a cancelled step to wind down: a task
    inside the native SDK need not honour a cancel, and the worker must exit all the same."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        task.result()
        return True
    log.error("%s did not finish within %.0f s, going on without it; stuck in: %s",
              what, seconds, " -> ".join(awaiting(task)) or "?")
    task.cancel()
    return False


def awaiting(task: asyncio.Future[Any]) -> list[str]:
    """Where a task waits, outermost first: its chain of awaits, into tasks it awaits."""
    where: list[str] = []
    target: Any = task.get_coro() if isinstance(task, asyncio.Task) else None
    while target is not None and len(where) < 40:
        if isinstance(target, asyncio.Task):
            target = target.get_coro()
            continue
        frame = getattr(target, "cr_frame", None) or getattr(target, "gi_frame", None)
        if frame is not None:
            where.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})")
        nxt = getattr(target, "cr_await", None) or getattr(target, "gi_yieldfrom", None)
        if nxt is None and not hasattr(target, "cr_frame") and not hasattr(target, "gi_frame"):
            where.append(type(target).__name__)  # a bare future: what it is, at least
        target = nxt
    return where


def _log_driver_failure(task: asyncio.Task[Any]) -> None:
    if task.cancelled() or task.exception() is None:
        return
    if isinstance(task.exception(), StreamerStopping):
        log.debug("the turn driver ended: the streamer is stopping")  # a stop mid-turn, not a failure
        return
    log.error("the turn driver failed", exc_info=task.exception())


async def _lead_in(config: WorkerConfig, publisher: Publisher) -> None:
    if not config.wait_for_participant:
        return
    log.info("waiting for a participant to join room %r", config.livekit.room)
    viewer = await publisher.wait_for_viewer()
    log.info("viewer %r is here; %d ms of idle heartbeats before the first turn",
             viewer.identity, config.lead_in_ms)
    await asyncio.sleep(config.lead_in_ms / 1000)
