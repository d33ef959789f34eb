"""avatar_worker/dispatch.py without a server: the configuration of each dispatched session."""

from pathlib import Path

import pytest

from avatar_worker.config import LiveKitSettings, WorkerConfig
from avatar_worker.dispatch import AGENT_IDENTITY_PLACEHOLDER, DispatchOptions, job_config
from avatar_worker.modes.agents_wire import PUBLISH_ON_BEHALF


def template(**kwargs):
    settings = LiveKitSettings(url="ws://127.0.0.1:7880", api_key="k", api_secret="s", room="(dispatched)")
    return WorkerConfig(livekit=settings, **kwargs)


def test_a_session_runs_in_the_jobs_room_and_waits_for_its_visitor():
    config = job_config(template(mode="speech", text="Hi"), "visit-1")
    assert config.livekit.room == "visit-1" and config.wait_for_participant
    assert config.livekit.identity == "avatar-worker" and config.text == "Hi"


def test_each_session_gets_its_own_send_log_and_audio_report(tmp_path: Path):
    config = job_config(template(mode="demo", send_log=tmp_path / "sent.jsonl",
                                 audio_report=tmp_path / "heard.jsonl"), "visit-7")
    assert config.send_log == tmp_path / "sent-visit-7.jsonl"
    assert config.audio_report == tmp_path / "heard-visit-7.jsonl"


def test_agents_mode_takes_the_agent_from_the_jobs_metadata():
    base = template(mode="agents", agent_identity=AGENT_IDENTITY_PLACEHOLDER)
    config = job_config(base, "visit-2", '{"agent_identity": "agent-AJ_1"}')
    assert config.agent_identity == "agent-AJ_1"
    assert config.livekit.attributes[PUBLISH_ON_BEHALF] == "agent-AJ_1"
    for metadata in ("", "not json", "[1]", '{"agent_identity": ""}', '{"agent_identity": 3}'):
        with pytest.raises(ValueError, match="metadata"):
            job_config(base, "visit-2", metadata)
    fixed = job_config(template(mode="agents", agent_identity="agent-x"), "visit-3", '{"agent_identity": "y"}')
    assert fixed.agent_identity == "agent-x"  # the worker's own setting wins


@pytest.mark.parametrize("kwargs, name", [
    ({"agent_name": ""}, "agent_name"),
    ({"idle_processes": -1}, "idle_processes"),
    ({"load_threshold": 0}, "load_threshold"),
    ({"executor": "fiber"}, "executor"),
])
def test_bad_dispatch_options_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DispatchOptions(**kwargs)


def test_the_load_a_worker_reports_is_its_sessions_over_its_capacity():
    from avatar_worker.dispatch import session_load

    class Worker:
        active_jobs = [object()] * 3

    assert session_load(8, Worker()) == 3 / 8
    assert session_load(3, Worker()) == 1.0  # full at the default threshold
    with pytest.raises(ValueError, match="max_sessions"):
        DispatchOptions(max_sessions=0)
