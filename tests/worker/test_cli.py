"""avatar_worker/cli.py: options, the exit guard, secrets on the command line and in the environment.
No server, no network."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avatar_worker.audio import pcm as audio
from avatar_worker.cli import build_parser, config_from_args
from avatar_worker.config import LiveKitSettings, WorkerConfig
from avatar_worker.modes.scripted import Injection
from avatar_worker.transport.carrier import CONTROL_TOPIC, DEFAULT_DATA_TOPIC

from .helpers import ROOT, SECRET


EXIT_GUARD_SCRIPT = """
import sys, threading, time
from avatar_worker.cli import ExitGuard

guard = ExitGuard(grace_s=float(sys.argv[1]))
if sys.argv[2] == "summary":
    guard.summary = {"event": "summary", "outcome": "done"}
threading.Thread(target=time.sleep, args=(60,), name="stuck-native-thread").start()  # never joined in time
guard.arm()
guard.arm()  # arming twice is harmless
"""


class TestCli:
    def test_arguments_become_a_config(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LIVEKIT_URL", "ws://127.0.0.1:7880")
        monkeypatch.setenv("LIVEKIT_API_KEY", "devkey")
        monkeypatch.setenv("LIVEKIT_API_SECRET", "s" * 32)
        args = build_parser().parse_args([
            "--room", "r", "--mode", "scripted", "--frames", "20", "--loss", "0.1", "--seed", "9",
            "--compress", "zlib", "--redundant", "--leave-after", "5", "--wait-for-participant"])
        config = config_from_args(args)
        assert config.livekit.url == "ws://127.0.0.1:7880" and config.livekit.identity == "avatar-worker"
        assert config.frames == 20 and config.injection == Injection(loss=0.1, seed=9)
        assert config.compression == "zlib" and config.redundant and config.leave_after == 5
        assert config.lead_in_ms == 1500 and config.wait_for_participant

    def test_missing_connection_settings_exit_2(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
            monkeypatch.delenv(name, raising=False)
        proc = subprocess.run([sys.executable, "-m", "avatar_worker", "--room", "r"], cwd=ROOT,
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 2 and "--url" in proc.stderr

    def test_bad_probability_is_refused(self) -> None:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--room", "r", "--loss", "2"])

    def test_config_validation(self) -> None:
        settings = LiveKitSettings("ws://x", "k", "s", "r")
        with pytest.raises(ValueError):
            WorkerConfig(settings, mode="dance")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            WorkerConfig(settings, frames=0)
        with pytest.raises(ValueError):
            WorkerConfig(settings, leave_mode="explode")  # type: ignore[arg-type]

    def test_importing_the_package_does_not_load_the_native_sdk(self) -> None:
        code = "import sys, avatar_worker; print(any(m.startswith('livekit') for m in sys.modules))"
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "False"


class TestCliOptions:
    def args(self, *extra: str) -> WorkerConfig:
        base = ["--room", "r", "--url", "ws://127.0.0.1:1", "--api-key", "k"]
        with pytest.MonkeyPatch.context() as env:
            env.setenv("LIVEKIT_API_SECRET", "s" * 32)  # never on a command line
            return config_from_args(build_parser().parse_args([*base, *extra]))

    def test_defaults(self) -> None:
        config = self.args()
        assert not config.data_carrier and config.data_topic == DEFAULT_DATA_TOPIC
        assert config.audio_report is None and not config.agent_data
        assert config.republish_after is None and config.republish_gap_ms == 300

    def test_new_options(self) -> None:
        config = self.args("--data-carrier", "--data-topic", "my.topic", "--audio-report", "heard.jsonl",
                           "--agent-data", "--republish-after", "40", "--republish-gap-ms", "0")
        assert config.data_carrier and config.data_topic == "my.topic"
        assert config.audio_report == Path("heard.jsonl") and config.agent_data
        assert config.republish_after == 40 and config.republish_gap_ms == 0

    def test_demo_asr_and_reply_options(self) -> None:
        config = self.args("--mode", "demo")
        assert config.asr == "whisper" and config.reply == "policy"
        config = self.args("--mode", "demo", "--asr", "sphinx", "--reply", "echo")
        assert config.asr == "sphinx" and config.reply == "echo"
        assert self.args("--mode", "demo", "--asr", "none", "--reply", "both").asr == "none"
        with pytest.raises(ValueError, match=r"--reply policy.*--asr"):
            self.args("--mode", "demo", "--asr", "none")
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--room", "r", "--asr", "google"])
        with pytest.raises(ValueError, match=r"asr \(--asr\)"):
            WorkerConfig(LiveKitSettings("ws://x", "k", "s", "r"), mode="demo", asr="google")  # type: ignore[arg-type]

    @pytest.mark.parametrize("extra", [["--republish-after", "0"], ["--republish-gap-ms", "-1"]])
    def test_bad_values_exit_2(self, extra: list[str]) -> None:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--room", "r", *extra])

    def test_reserved_data_topic(self) -> None:
        with pytest.raises(ValueError):
            self.args("--data-topic", CONTROL_TOPIC)
        settings = LiveKitSettings("ws://x", "k", "s", "r")
        with pytest.raises(ValueError):
            WorkerConfig(settings, republish_after=0)


@pytest.mark.parametrize("with_summary", [True, False], ids=["summary-known", "no-summary"])
def test_exit_guard_ends_a_process_that_shutdown_cannot_end(with_summary):
    """A non-daemon thread that never finishes would keep the interpreter alive for a minute: the
    armed guard ends the process after its grace, says what was stuck, and still prints the summary."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", EXIT_GUARD_SCRIPT, "1", "summary" if with_summary else "none"],
                          capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parents[2])
    took = time.monotonic() - started
    assert took < 20, f"the process lived {took:.1f} s"
    assert "shutdown did not finish within 1 s" in proc.stderr, proc.stderr
    assert proc.stderr.count("Thread 0x") >= 2, proc.stderr  # every thread's stack: the stuck one too
    if with_summary:
        assert proc.returncode == 0, proc.stderr
        assert [json.loads(line) for line in proc.stdout.splitlines()] == [{"event": "summary", "outcome": "done"}]
    else:
        assert proc.returncode == 3 and proc.stdout == "", proc.stderr


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
