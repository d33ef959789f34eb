"""Issue 10, the worker side, without a server: the rejoin backoff, the secret kept out of
``repr`` and off the command line. The live tests are in test_worker_live.py (an impostor takes
the worker's identity) and test_agents_contract.py (a non-agent participant, an oversized stream).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from avatar_worker.config import LiveKitSettings
from avatar_worker.transport.publisher import Publisher, PublisherError, RejoinBackoff

SECRET = "the-api-secret-nobody-may-see-0123456789"
SETTINGS = LiveKitSettings(url="ws://127.0.0.1:1", api_key="devkey", api_secret=SECRET, room="r")


# ------------------------------------------------------------------------------- rejoining


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_backoff_first_at_once_then_doubling_to_the_cap() -> None:
    clock = Clock()
    backoff = RejoinBackoff(1.0, 30.0, stable_after=20.0, clock=clock)
    backoff.connected()
    clock.now = 100.0
    backoff.lost()
    assert [backoff.next_delay() for _ in range(8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.attempts == 8


def test_backoff_short_connections_keep_counting_a_stable_one_resets() -> None:
    """Someone who takes the identity back each time: every connection is short, so the waits grow
    (never a tight loop); once a connection held for ``stable_after`` seconds, it starts afresh."""
    clock = Clock()
    backoff = RejoinBackoff(1.0, 30.0, stable_after=20.0, clock=clock)
    delays = []
    for _ in range(7):
        backoff.connected()
        clock.now += 0.5  # dropped again half a second later
        backoff.lost()
        delay = backoff.next_delay()
        delays.append(delay)
        clock.now += delay
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    backoff.connected()
    clock.now += 20.0
    backoff.lost()
    assert backoff.next_delay() == 0.0 and backoff.next_delay() == 1.0
    with pytest.raises(ValueError):
        RejoinBackoff(0.0, 1.0)


class FakeRoom:
    def __init__(self) -> None:
        self.connected = True

    def isconnected(self) -> bool:
        return self.connected

    async def disconnect(self) -> None:
        self.connected = False


def test_rejoin_loop_backs_off_between_failed_attempts_and_logs_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    publisher = Publisher(SETTINGS, rejoin_backoff=(0.05, 0.2))
    attempts: list[float] = []

    async def join() -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 6:
            raise PublisherError("server unreachable")
        publisher.room = FakeRoom()  # type: ignore[assignment]
        publisher.backoff.connected()

    publisher._join = join  # type: ignore[method-assign]

    async def go() -> None:
        publisher._start_rejoin("DUPLICATE_IDENTITY: test")
        assert publisher._rejoin_task is not None
        await asyncio.wait_for(publisher._rejoin_task, 5)

    caplog.set_level("WARNING", logger="avatar_worker.publisher")
    asyncio.run(go())
    gaps = [round(b - a, 3) for a, b in zip(attempts, attempts[1:])]
    assert len(attempts) == 6 and publisher.rejoins == 1 and publisher.rejoin_attempts == 6
    for gap, planned in zip(gaps, (0.05, 0.1, 0.2, 0.2, 0.2)):
        assert planned - 0.01 <= gap < planned + 0.5, gaps
    text = caplog.text
    assert "rejoin attempt 1 (after DUPLICATE_IDENTITY: test) now" in text
    assert "rejoin attempt 3 (after DUPLICATE_IDENTITY: test) in 0.1 s" in text
    assert "rejoin attempt 5 failed: server unreachable" in text
    assert "rejoined the room (attempt 6, after DUPLICATE_IDENTITY: test)" in text


def test_a_clean_shutdown_stops_the_rejoin_loop() -> None:
    publisher = Publisher(SETTINGS, rejoin_backoff=(0.05, 0.05))
    attempts: list[float] = []

    async def join() -> None:
        attempts.append(time.monotonic())
        raise PublisherError("server unreachable")

    publisher._join = join  # type: ignore[method-assign]

    async def go() -> None:
        publisher._start_rejoin("SIGNAL_CLOSE: test")
        await asyncio.sleep(0.3)
        await asyncio.wait_for(publisher.close(), 5)
        seen = len(attempts)
        await asyncio.sleep(0.3)
        assert len(attempts) == seen
        assert publisher._rejoin_task is not None and publisher._rejoin_task.done()
        publisher._start_rejoin("after close")  # nothing: closed for good
        assert publisher._rejoin_task.done()

    asyncio.run(go())
    assert 2 <= len(attempts) <= 8, attempts


def test_a_join_step_ends_when_the_room_is_lost() -> None:
    """The SDK's connect or publish may wait forever once the room is gone (dropped again as a
    duplicate while joining): each step waits for the room as well, and for a time limit."""
    from livekit import rtc

    from avatar_worker.transport.publisher import _settle

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def fails() -> None:
        raise RuntimeError("refused")

    async def go() -> list[object]:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[int] = loop.create_future()
        never: asyncio.Future[int] = loop.create_future()
        loop.call_later(0.05, lost.set_result, rtc.DisconnectReason.DUPLICATE_IDENTITY)
        started = time.monotonic()
        results: list[object] = [await _settle(forever(), lost, 10.0), time.monotonic() - started]
        results.append(await _settle(forever(), never, 0.05))
        results.append(await _settle(fails(), never, 1.0))
        results.append(await _settle(asyncio.sleep(0), never, 1.0))
        return results

    lost, took, timed_out, failed, ok = asyncio.run(go())
    assert lost == "the room was lost (DUPLICATE_IDENTITY)" and took < 2.0
    assert timed_out == "no answer within 0.05 s"
    assert isinstance(failed, RuntimeError) and str(failed) == "refused"
    assert ok is None


# --------------------------------------------------------------------------------- secrets


def test_settings_never_show_the_secret() -> None:
    from avatar_worker.config import WorkerConfig

    config = WorkerConfig(SETTINGS, mode="agents", agent_identity="agent-1")
    for text in (repr(SETTINGS), str(SETTINGS), f"{SETTINGS}", repr(config), str(config), repr([SETTINGS])):
        assert SECRET not in text
        assert "api_secret='***'" in text
    assert SETTINGS.api_secret == SECRET  # still there for minting tokens
    assert "api_key='devkey'" in repr(SETTINGS) and "room='r'" in repr(SETTINGS)


@pytest.mark.parametrize("argv", [["--api-secret", SECRET], [f"--api-secret={SECRET}"], ["--api-secret"]])
def test_api_secret_on_the_command_line_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from avatar_worker.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--room", "r", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--api-secret is not accepted" in err and "LIVEKIT_API_SECRET" in err and "--api-secret-file" in err
    assert SECRET not in err


def test_the_worker_refuses_api_secret_and_says_what_to_use() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "avatar_worker", "--room", "r", "--url", "ws://127.0.0.1:1",
                           "--api-key", "k", "--api-secret", SECRET], cwd=root, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "LIVEKIT_API_SECRET" in proc.stderr and "--api-secret-file" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout


def test_secret_from_the_environment_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from avatar_worker.cli import build_parser, config_from_args, read_secret_file

    base = ["--room", "r", "--url", "ws://x", "--api-key", "k"]
    monkeypatch.setenv("LIVEKIT_API_SECRET", SECRET)
    assert config_from_args(build_parser().parse_args(base)).livekit.api_secret == SECRET
    path = tmp_path / "secret"
    path.write_text("from-the-file-0123456789012345678901\nignored\n")
    path.chmod(0o600)
    config = config_from_args(build_parser().parse_args([*base, "--api-secret-file", str(path)]))
    assert config.livekit.api_secret == "from-the-file-0123456789012345678901"  # the file wins
    assert read_secret_file(path)[1] is None
    path.chmod(0o644)
    assert "chmod 600" in (read_secret_file(path)[1] or "")
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_secret_file(path)
    with pytest.raises(ValueError, match="missing"):
        read_secret_file(tmp_path / "missing")
    monkeypatch.delenv("LIVEKIT_API_SECRET")
    with pytest.raises(ValueError, match="LIVEKIT_API_SECRET or --api-secret-file"):
        config_from_args(build_parser().parse_args(base))


def test_the_worker_drops_the_secret_from_its_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once read, the secret is not passed on to the programs the worker runs (sox, espeak-ng)."""
    import os

    from avatar_worker.cli import main
    from avatar_worker.modes.replay import MESSAGES_FILE

    (tmp_path / MESSAGES_FILE).write_bytes(b"\x05\x00\x00")  # a bad recording: fails before joining
    monkeypatch.setenv("LIVEKIT_API_SECRET", SECRET)
    code = main(["--room", "r", "--url", "ws://127.0.0.1:1", "--api-key", "k", "--mode", "replay",
                 "--replay-dir", str(tmp_path)])
    assert code == 1
    assert "LIVEKIT_API_SECRET" not in os.environ
