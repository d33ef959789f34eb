"""A fresh real LiveKit server per worker test (tools/devstack.py), loopback only, free ports."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from tools.devstack import LIVEKIT_BINARY as LIVEKIT_SERVER
from tools.devstack import LiveKitServer


@pytest.fixture
def livekit_server_binary() -> Path:
    return LIVEKIT_SERVER


@pytest.fixture
def livekit_server(tmp_path: Path):
    """A fresh server per test. Fails (never skips) when the binary is missing."""
    server = LiveKitServer(tmp_path / "livekit")
    with server:
        yield server
