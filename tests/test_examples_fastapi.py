"""examples/fastapi/app.py's token endpoint, through Starlette's TestClient (no server, no browser):
the identity and the room are the server's, the grants are a viewer's least, the token is short-lived,
a body naming an identity or a room is refused, and the API secret never leaves the app."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from livekit import api

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret-" + "x" * 41
KEY = "examplekey"
ROOM = "avatar-room-1"


def load_app_module():
    spec = importlib.util.spec_from_file_location("examples_fastapi_app", ROOT / "examples" / "fastapi" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


app_module = load_app_module()


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    (tmp_path / "index.html").write_text("<!doctype html><title>page</title>")
    settings = app_module.Settings.from_env({"LIVEKIT_URL": "wss://example.livekit.cloud", "LIVEKIT_API_KEY": KEY,
                                             "LIVEKIT_API_SECRET": SECRET, "AVATAR_ROOM": ROOM})
    with TestClient(app_module.create_app(settings, tmp_path)) as client:
        yield client


def claims(token: str):
    return api.TokenVerifier(KEY, SECRET).verify(token)


def test_the_token_is_a_viewers_least_grant_in_the_apps_room(client: TestClient):
    before = int(time.time())
    answer = client.post("/api/token", json={})
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert set(body) == {"serverUrl", "participantToken", "roomName", "identity"}, body
    assert body["serverUrl"] == "wss://example.livekit.cloud" and body["roomName"] == ROOM
    grant = claims(body["participantToken"])
    assert grant.identity == body["identity"] and grant.identity.startswith("viewer-") and len(grant.identity) == 23
    video = grant.video
    assert video.room_join and video.room == ROOM
    assert video.can_subscribe and video.can_publish_data
    assert video.can_publish and video.can_publish_sources == ["microphone"]
    assert not (video.room_admin or video.room_create or video.room_list or video.room_record or video.hidden
                or video.recorder or video.agent or video.can_update_own_metadata or video.ingress_admin)
    raw = json.loads(__import__("base64").urlsafe_b64decode(body["participantToken"].split(".")[1] + "=="))
    assert before + 60 <= raw["exp"] <= before + 15 * 60 + 5, raw  # short-lived: at most 15 minutes
    # every viewer is someone else
    assert client.post("/api/token").json()["identity"] != body["identity"]


def test_a_display_name_is_the_only_thing_the_browser_may_choose(client: TestClient):
    named = client.post("/api/token", json={"name": "Ada"})
    assert named.status_code == 200, named.text
    grant = claims(named.json()["participantToken"])
    assert grant.name == "Ada" and grant.identity.startswith("viewer-") and grant.video.room == ROOM


@pytest.mark.parametrize("body", [
    {"identity": "avatar-worker"},
    {"room": "another-room"},
    {"name": "Ada", "room": ROOM},
    {"name": "Ada", "identity": "viewer-0000000000000000"},
    {"canPublish": True},
    {"name": ""},
    {"name": "x" * 65},
    {"name": "line\nbreak"},
    {"name": 7},
    ["name"],
    "name",
])
def test_anything_else_is_refused(client: TestClient, body):
    answer = client.post("/api/token", json=body)
    assert answer.status_code == 400, (body, answer.text)
    assert "error" in answer.json() and "participantToken" not in answer.json()


@pytest.mark.parametrize("raw", [b"{", b"\xff\xfe", b'{"name": "' + b"a" * 2000 + b'"}', b"[" * 100000])
def test_a_body_that_is_not_a_small_json_object_is_refused(client: TestClient, raw: bytes):
    answer = client.post("/api/token", content=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text


def test_the_secret_is_in_no_answer(client: TestClient):
    answers = [client.post("/api/token", json=b) for b in ({}, {"name": "Ada"}, {"room": "x"}, {"identity": "y"})]
    answers += [client.get(path) for path in ("/", "/index.html", "/api/token", "/docs", "/openapi.json", "/nope")]
    for answer in answers:
        text = answer.text + json.dumps(dict(answer.headers))
        assert SECRET not in text, answer.request.url
    assert client.get("/").status_code == 200 and "page" in client.get("/").text
    assert client.get("/openapi.json").status_code == 404  # no API schema on show


def test_settings_come_from_the_environment_and_are_checked():
    with pytest.raises(ValueError, match="LIVEKIT_API_SECRET"):
        app_module.Settings.from_env({"LIVEKIT_URL": "wss://x", "LIVEKIT_API_KEY": KEY})
    with pytest.raises(ValueError, match="AVATAR_ROOM"):
        app_module.Settings.from_env({"LIVEKIT_URL": "wss://x", "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET,
                                      "AVATAR_ROOM": "no spaces"})
    settings = app_module.Settings.from_env({"LIVEKIT_URL": "https://x.example", "LIVEKIT_API_KEY": KEY,
                                             "LIVEKIT_API_SECRET": SECRET})
    assert settings.room == app_module.DEFAULT_ROOM and settings.browser_url == "wss://x.example"
    assert SECRET not in repr(settings)


def test_run_py_external_without_the_environment_says_what_to_set(tmp_path: Path):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "fastapi" / "run.py"), "--external", "--skip-setup",
                           "--out", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done
    assert "LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET" in done.stdout, done.stdout
    assert not (tmp_path / "site").exists()  # it stopped before building anything
