"""Modes that bring their own turn driver: ``demo`` (:mod:`avatar_worker.modes.demo`) and ``replay``
(:mod:`avatar_worker.modes.replay`).

:func:`avatar_worker.app.run` asks :func:`mode_runner` for the configured mode's runner and uses
it in four places: :meth:`ModeRunner.prepare` before joining (load / synthesize what it needs, so
a bad file fails before anyone sees a half start), :meth:`ModeRunner.install` before the
streamer is built (room hooks, turn observers), :meth:`ModeRunner.drive` as the run's turn
driver, and :meth:`ModeRunner.summary` / :meth:`ModeRunner.close` at the end.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import WorkerConfig

__all__ = ["ModeRunner", "mode_runner"]


class ModeRunner(Protocol):
    async def prepare(self) -> None:
        """Before joining: load or synthesize everything the mode needs (raises on bad input)."""
        ...

    def install(self, publisher: Any, messages: Any, observers: list[Any]) -> None:
        """Before the streamer is built: add room hooks to ``publisher.hooks`` and turn observers
        to ``observers``; ``messages`` is the run's :class:`avatar_worker.transport.messaging.MessageSender`."""
        ...

    async def drive(self, streamer: Any, lead_in: Callable[[], Awaitable[None]]) -> str:
        """Play turns on ``streamer``; returns the outcome (``"done"``) if it ever finishes.
        ``lead_in`` is the run's ``--wait-for-participant`` wait plus lead-in."""
        ...

    def summary(self) -> dict[str, Any]:
        """Extra keys for the exit summary."""
        ...

    async def close(self) -> None:
        """Release what the mode holds (tasks, streams); called once, at the end of the run."""
        ...


def mode_runner(config: WorkerConfig) -> ModeRunner | None:
    """The runner of ``config.mode``, or None for the modes app.py drives itself."""
    if config.mode == "demo":
        from .demo import DemoAgent
        return DemoAgent(config)
    if config.mode == "replay":
        from .replay import ReplayMode
        return ReplayMode(config)
    if config.mode == "agents":
        from .agents import AgentsMode
        return AgentsMode(config)
    return None
