"""The worker's modes, one module each, and the table :func:`avatar_worker.app.run` picks from.

- ``scripted`` (:mod:`~avatar_worker.modes.scripted`): deterministic payloads, fault injection
- ``speech`` (:mod:`~avatar_worker.modes.speech`): a WAV file or espeak-ng text as a turn
- ``demo`` (:mod:`~avatar_worker.modes.demo`): greets, listens, answers
- ``replay`` (:mod:`~avatar_worker.modes.replay`): a recorded animation, byte for byte
- ``agents`` (:mod:`~avatar_worker.modes.agents`): the LiveKit Agents avatar contract

:func:`avatar_worker.app.run` asks :func:`mode_runner` for the configured mode's runner and uses
it in four places: :meth:`ModeRunner.prepare` before joining (load / synthesize what it needs, so
a bad file fails before anyone sees a half start), :meth:`ModeRunner.install` before the
streamer is built (room hooks, turn observers), :meth:`ModeRunner.drive` as the run's turn
driver, and :meth:`ModeRunner.summary` / :meth:`ModeRunner.close` at the end.

Adding a mode: a module here with a runner, a line in :data:`MODES`, and the name in
:mod:`avatar_worker.config` / :mod:`avatar_worker.cli`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import WorkerConfig
    from ..transport.streamer import TurnResult

__all__ = ["MODES", "ModeRunner", "DriverOnly", "log_turn", "mode_runner"]

log = logging.getLogger("avatar_worker")


class ModeRunner(Protocol):
    """What a mode gives :func:`avatar_worker.app.run`: set up, drive the turns, report, release."""

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


class DriverOnly:
    """A :class:`ModeRunner` that only drives turns: nothing to prepare, install, report or
    release (subclasses override what they need)."""

    async def prepare(self) -> None:
        """Nothing to load."""
        return None

    def install(self, publisher: Any, messages: Any, observers: list[Any]) -> None:
        """No room hooks, no turn observers."""
        return None

    def summary(self) -> dict[str, Any]:
        """No extra summary keys."""
        return {}

    async def close(self) -> None:
        """Nothing held."""
        return None


def log_turn(result: TurnResult) -> None:
    """One log line per played turn (logger ``avatar_worker``)."""
    log.info("turn %s: seq %d..%d (%d frames) %s in %.2f s", result.label, result.first_seq,
             result.first_seq + result.frames - 1, result.frames,
             "completed" if result.completed else "interrupted", result.ended_at - result.started_at)


def _scripted(config: WorkerConfig) -> ModeRunner:
    from .scripted import ScriptedMode
    return ScriptedMode(config)


def _speech(config: WorkerConfig) -> ModeRunner:
    from .speech import SpeechMode
    return SpeechMode(config)


def _demo(config: WorkerConfig) -> ModeRunner:
    from .demo import DemoAgent
    return DemoAgent(config)


def _replay(config: WorkerConfig) -> ModeRunner:
    from .replay import ReplayMode
    return ReplayMode(config)


def _agents(config: WorkerConfig) -> ModeRunner:
    from .agents import AgentsMode
    return AgentsMode(config)


MODES: dict[str, Callable[[WorkerConfig], ModeRunner]] = {
    "scripted": _scripted,
    "speech": _speech,
    "demo": _demo,
    "replay": _replay,
    "agents": _agents,
}
"""Mode name (``--mode``) -> the function that builds its runner (each imports its module only
when chosen: the agents and demo modes load the LiveKit SDK)."""


def mode_runner(config: WorkerConfig) -> ModeRunner:
    """The runner of ``config.mode`` (KeyError for a mode not in :data:`MODES`)."""
    return MODES[config.mode](config)
