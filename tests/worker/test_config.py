"""avatar_worker/config.py: what the settings show. No server, no network."""

from __future__ import annotations

from avatar_worker.config import WorkerConfig

from .helpers import SECRET, SETTINGS


def test_settings_never_show_the_secret() -> None:
    from avatar_worker.config import WorkerConfig

    config = WorkerConfig(SETTINGS, mode="agents", agent_identity="agent-1")
    for text in (repr(SETTINGS), str(SETTINGS), f"{SETTINGS}", repr(config), str(config), repr([SETTINGS])):
        assert SECRET not in text
        assert "api_secret='***'" in text
    assert SETTINGS.api_secret == SECRET  # still there for minting tokens
    assert "api_key='devkey'" in repr(SETTINGS) and "room='r'" in repr(SETTINGS)
