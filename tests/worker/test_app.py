"""avatar_worker/app.py: the bounded shutdown steps. No server, no network."""

from __future__ import annotations

import asyncio
import time


def test_bounded_goes_on_without_a_step_that_ignores_cancellation(caplog):
    """A step that swallows its cancel (as a native-SDK task may) would hang ``asyncio.wait_for``
    for ever; ``bounded`` gives up after its time, says where the step was stuck, and returns."""
    from avatar_worker.app import bounded

    async def stubborn_inner() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # ignores every cancel

    async def stubborn() -> None:
        await stubborn_inner()

    async def quick() -> int:
        return 7

    async def main() -> tuple[bool, bool, float]:
        started = time.monotonic()
        stuck = await bounded(stubborn(), 0.3, "the stubborn step")
        took = time.monotonic() - started
        ok = await bounded(quick(), 1.0, "the quick step")
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.get_coro().close()  # let the test's loop end (the worker leaves such a task to the exit guard)
        return stuck, ok, took

    with caplog.at_level("ERROR", logger="avatar_worker.app"):
        stuck, ok, took = asyncio.run(main())
    assert (stuck, ok) == (False, True) and took < 2.0
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert "the stubborn step did not finish within 0 s" in message
    assert "stubborn (" in message and "stubborn_inner (" in message  # the chain of awaits


def test_the_bounded_shutdown_fits_inside_the_exit_guard():
    """Every bounded step running out of time still leaves the worker time to print its summary
    before the guard ends the process."""
    from avatar_worker.app import CLOSE_LIMIT_S, STREAMER_STOP_S
    from avatar_worker.cli import SHUTDOWN_GRACE_S

    assert STREAMER_STOP_S + 2 * CLOSE_LIMIT_S + 2.0 <= SHUTDOWN_GRACE_S
