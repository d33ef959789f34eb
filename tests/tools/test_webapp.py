"""tools/webapp.py: the token endpoint (server-chosen identities, validated names and rooms,
least-privilege grants), the app's pages (CSP, dev pages only with dev=True), serve.py's options,
a hypothesis run of arbitrary requests against the endpoint over real sockets, and a real LiveKit
server refusing a camera track from a viewer token (while taking its microphone).

Only the last test starts a LiveKit server; the others mint tokens with
``LiveKitServer.external(...)`` (credentials only, nothing started) and check them with
livekit-api's TokenVerifier.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]

from tools.devstack import LiveKitServer
from tools.httpserve import DEFAULT_CSP, MAX_BODY, inline_script_hashes
from tools.webapp import (TOKEN_TTL_S, AvatarDispatch, TokenEndpoint, VisitorSessions, build_app,
                          content_security_policy)

from .test_httpserve import exchange, get, request  # noqa: E402

API_KEY, API_SECRET = "devkey", "s" * 48
LIVEKIT_URL = "ws://127.0.0.1:7880"


def claims_of(token: str):
    from livekit import api

    return api.TokenVerifier(API_KEY, API_SECRET).verify(token)


@pytest.fixture(scope="module")
def credentials() -> LiveKitServer:
    return LiveKitServer.external(LIVEKIT_URL, API_KEY, API_SECRET)


@pytest.fixture(scope="module")
def endpoint(credentials) -> TokenEndpoint:
    return TokenEndpoint(credentials, r"avatar-demo|e2e-[a-z0-9-]+", "avatar-demo")


def call(endpoint: TokenEndpoint, body: bytes) -> tuple[int, dict]:
    status, ctype, payload = endpoint(body)
    assert ctype == "application/json"
    return status, json.loads(payload)


# ----------------------------------------------------------------------------- identities and grants


@pytest.mark.parametrize("body", [b"", b"{}", b"  ", b'{"name": "Ada"}', b'{"room": "e2e-x1"}'])
def test_the_server_chooses_the_identity_and_grants_the_least(endpoint, body: bytes):
    status, reply = call(endpoint, body)
    assert status == 200, reply
    assert re.fullmatch(r"viewer-[0-9a-f]{16}", reply["identity"]), reply["identity"]
    assert reply["serverUrl"] == LIVEKIT_URL
    claims = claims_of(reply["token"])
    assert claims.identity == reply["identity"]
    grants = claims.video
    assert grants.room_join is True and grants.room == reply["roomName"]
    assert grants.can_subscribe is True and grants.can_publish is True and grants.can_publish_data is True
    assert grants.can_publish_sources == ["microphone"]  # an empty list would mean every source
    for admin in ("room_create", "room_list", "room_record", "room_admin", "ingress_admin", "hidden", "recorder",
                  "agent", "can_update_own_metadata", "destination_room"):
        assert not getattr(grants, admin), admin
    name = json.loads(body or b"{}").get("name") if body.strip() else None
    assert claims.name == (name or reply["identity"])


def test_token_lifetime_is_15_minutes(endpoint):
    import jwt  # livekit-api's dependency

    token = call(endpoint, b"{}")[1]["token"]
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["exp"] - payload["nbf"] == TOKEN_TTL_S == 15 * 60


def test_every_request_gets_a_new_identity(endpoint):
    identities = {call(endpoint, b"{}")[1]["identity"] for _ in range(50)}
    assert len(identities) == 50


@pytest.mark.parametrize("identity", ['"avatar-worker"', '"viewer-0011223344556677"', '""', "null", "5", '"agent"',
                                      '["avatar-worker"]'])
def test_a_request_naming_an_identity_is_400(endpoint, identity: str):
    """The avatar worker's or an agent's identity, or another viewer's: LiveKit would disconnect the
    participant already in the room (DUPLICATE_IDENTITY). No identity can be asked for."""
    status, reply = call(endpoint, f'{{"identity": {identity}, "name": "x"}}'.encode())
    assert status == 400 and "identity is chosen by the server" in reply["error"], reply


@pytest.mark.parametrize("name", ["a" * 65, "", "line\nbreak", "tab\there", "nul\x00", "bell\x07", "del\x7f",
                                  "rtl\u202eoverride", "zero\u200bwidth", "sep\u2028line", "\ud800", 5, None,
                                  ["x"], {"x": 1}, True])
def test_bad_display_names_are_400(endpoint, name):
    status, reply = call(endpoint, json.dumps({"name": name}).encode())
    assert status == 400 and "name" in reply["error"], (name, reply)


@pytest.mark.parametrize("name", ["a" * 64, "Ada Lovelace", "Zoë 🙂", "名前", "<script>"])
def test_good_display_names_are_kept_as_names_only(endpoint, name: str):
    status, reply = call(endpoint, json.dumps({"name": name}).encode())
    assert status == 200, reply
    claims = claims_of(reply["token"])
    assert claims.name == name and claims.identity.startswith("viewer-")


@pytest.mark.parametrize("room, status", [("other-room", 403), ("e2e-", 403), ("avatar-demo2", 403),
                                          ("../avatar-demo", 400), ("", 400), ("a" * 65, 400), (5, 400),
                                          (None, 400), ("avatar-demo\n", 400), ("e2e-ok", 200)])
def test_rooms_must_be_offered_here(endpoint, room, status: int):
    got, reply = call(endpoint, json.dumps({"room": room}).encode())
    assert got == status, (room, reply)
    if status == 200:
        assert claims_of(reply["token"]).video.room == room


@pytest.mark.parametrize("body", [
    b"{", b"[]", b'"x"', b"5", b"null", b"true", b"\xff\xfe{\x00}\x00", b"\xff", b"{}\xc3",
    "{}".encode("utf-16"), "{}".encode("utf-32"), b"\xef\xbb\xbf{}", b"[" * 14000, b"{\"a\":" * 5000,
    b'{"name": "a", "name": "b"}', b'{"room": "e2e-a", "room": "e2e-b"}', b'{"token": "x"}',
    b'{"name": "a", "admin": true}', b"1" * 5000, b"NaN", b'{"name": NaN}',
])
def test_bad_bodies_are_400(endpoint, body: bytes):
    status, reply = call(endpoint, body)
    assert status == 400 and isinstance(reply["error"], str), (body[:40], reply)


# ----------------------------------------------------------------------------- the app over HTTP


@pytest.fixture(scope="module")
def app(credentials):
    with build_app(credentials, rooms=r"e2e-[a-z0-9-]+", default_room="e2e-default", timeout_s=1.0) as server:
        yield server


@pytest.fixture(scope="module")
def dev_app(credentials):
    with build_app(credentials, rooms=r"e2e-[a-z0-9-]+", default_room="e2e-default", dev=True) as server:
        yield server


def post_token(port: int, body: bytes, headers=None) -> tuple[int, dict]:
    result = exchange(port, request("POST", "/api/token", body=body, headers=headers))
    return result.status, json.loads(result.first.body)


def test_the_endpoint_over_http(app):
    status, reply = post_token(app.port, b"{}", [("Origin", f"http://127.0.0.1:{app.port}"),
                                                  ("Content-Type", "application/json")])
    assert status == 200 and reply["roomName"] == "e2e-default" and reply["identity"].startswith("viewer-")
    status, reply = post_token(app.port, b'{"identity": "avatar-worker"}')
    assert status == 400 and "identity is chosen by the server" in reply["error"]
    status, reply = post_token(app.port, b"[" * 14000)  # json.loads raises RecursionError
    assert status == 400, reply
    status, reply = post_token(app.port, b"{}", [("Origin", "http://evil.example")])
    assert status == 403
    assert exchange(app.port, request("POST", "/api/token", host="evil.example", body=b"{}")).status == 403
    assert exchange(app.port, request("POST", "/api/token", body=b" " * (MAX_BODY + 1))).status == 413
    assert get(app.port, "/api/token").status == 405
    assert get(app.port, "/").status == 200


def test_dev_pages_only_with_dev(app, dev_app):
    for target in ("/dev/player.html", "/dev/transform-probe.html", "/dev/", "/dev/player_harness.py",
                   "/%64ev/player.html", "/./dev/player.html"):
        assert get(app.port, target).status == 404, target
    assert get(dev_app.port, "/dev/player.html").status == 200
    assert get(app.port, "/index.html").status == 200


def test_the_demo_page_has_a_strict_csp(app):
    page = get(app.port, "/")
    assert page.status == 200
    csp = dict(part.strip().split(" ", 1) for part in page.first.headers["content-security-policy"].split(";"))
    html = (ROOT / "web" / "index.html").read_bytes()
    hashes = inline_script_hashes(html)
    assert hashes, "index.html has an inline script: its hash must be allowed"
    assert csp["script-src"].split() == ["'self'", "'wasm-unsafe-eval'", "'unsafe-eval'", *hashes]
    assert "'unsafe-inline'" not in csp["script-src"]
    assert csp["connect-src"].split() == ["'self'", LIVEKIT_URL, LIVEKIT_URL.replace("ws://", "http://")]
    assert csp["default-src"] == "'self'" and csp["object-src"] == "'none'"
    assert csp["frame-ancestors"] == "'none'" and csp["base-uri"] == "'self'"
    assert csp["worker-src"].split() == ["'self'", "blob:"]
    headers = page.first.headers
    assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"


def test_dev_pages_get_the_basic_policy(dev_app):
    page = get(dev_app.port, "/dev/player.html")
    assert page.first.headers["content-security-policy"] == DEFAULT_CSP


def test_csp_for_an_external_livekit_server():
    policy = content_security_policy("wss://proj.livekit.cloud")("/", b"")
    connect = re.search(r"connect-src ([^;]+)", policy).group(1).split()
    assert connect == ["'self'", "wss://proj.livekit.cloud", "https://proj.livekit.cloud", "wss://*.livekit.cloud",
                       "https://*.livekit.cloud"]
    policy = content_security_policy("wss://lk.example.com:7443")("/", b"")
    assert "connect-src 'self' wss://lk.example.com:7443 https://lk.example.com:7443;" in policy


def test_inline_script_hashes():
    html = (b'<script>a()</script><script type="module">b()</script><script src="x.js"></script>'
            b'<script type="py">print(1)</script><SCRIPT type="text/javascript">c()</SCRIPT>')
    assert len(inline_script_hashes(html)) == 3


# ----------------------------------------------------------------------------- serve.py's options


def load_serve():
    spec = importlib.util.spec_from_file_location("serve_under_test", ROOT / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_options():
    serve = load_serve()
    args = serve.build_parser().parse_args(["--dev", "--allowed-host", "Demo.LAN", "--allowed-host", "::1"])
    assert args.dev is True and args.allowed_host == ["demo.lan", "[::1]"]
    defaults = serve.build_parser().parse_args([])
    assert defaults.dev is False and defaults.allowed_host == [] and defaults.host == "127.0.0.1"
    assert serve.web_allowed_hosts(defaults) == []
    remote = serve.build_parser().parse_args(["--host", "192.168.1.5", "--allow-remote", "--allowed-host", "x.lan"])
    assert serve.web_allowed_hosts(remote) == ["x.lan", "192.168.1.5"]
    wildcard = serve.build_parser().parse_args(["--host", "0.0.0.0", "--allow-remote"])
    assert serve.web_allowed_hosts(wildcard) == []
    for bad in ("http://x.lan", "x.lan:80", "a b"):
        with pytest.raises(SystemExit):
            serve.build_parser().parse_args(["--allowed-host", bad])


def test_serve_rooms_workers_and_nodes_options():
    serve = load_serve()
    defaults = serve.build_parser().parse_args([])
    assert (defaults.rooms, defaults.workers, defaults.nodes, defaults.sessions_per_worker) == ("visitor", 1, 1, 8)
    args = serve.build_parser().parse_args(["--rooms", "shared", "--workers", "3", "--nodes", "2"])
    assert (args.rooms, args.workers, args.nodes) == ("shared", 3, 2)
    for bad in (["--workers", "0"], ["--nodes", "0"], ["--rooms", "everyone"], ["--sessions-per-worker", "0"]):
        with pytest.raises(SystemExit):
            serve.build_parser().parse_args(bad)


# ----------------------------------------------------------------------------- visitor rooms


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Watcher(AvatarDispatch):
    """Records what the endpoint asks of the avatar watcher, without a server."""

    def __init__(self, server) -> None:
        super().__init__(server, "avatar-test")
        self.asked: list[tuple[str, bool]] = []

    def ensure(self, room: str, *, fresh: bool):
        self.asked.append((room, fresh))


@pytest.fixture
def visitors(credentials):
    clock = Clock()
    watcher = Watcher(credentials)
    endpoint = TokenEndpoint(credentials, r"avatar-demo", "avatar-demo",
                             sessions=VisitorSessions(clock=clock, limit=3), dispatch=watcher)
    return endpoint, clock, watcher


def test_each_visitor_gets_a_room_of_their_own_and_a_token_that_dispatches_the_avatar(visitors):
    endpoint, _, watcher = visitors
    first, second = call(endpoint, b"{}"), call(endpoint, b'{"name": "Ada"}')
    assert first[0] == second[0] == 200
    rooms = [first[1]["roomName"], second[1]["roomName"]]
    assert rooms[0] != rooms[1] and all(re.fullmatch(r"visit-[0-9a-f]{24}", room) for room in rooms)
    assert first[1]["session"] != second[1]["session"] and len(first[1]["session"]) >= 32
    for reply, room in zip((first[1], second[1]), rooms):
        claims = claims_of(reply["token"])
        assert claims.video.room == room and claims.video.room_join
        assert [a.agent_name for a in claims.room_config.agents] == ["avatar-test"]
    assert watcher.asked == [(rooms[0], False), (rooms[1], False)]


def test_a_session_resumes_its_own_room_with_a_fresh_avatar_and_never_another(visitors):
    endpoint, _, watcher = visitors
    _, a = call(endpoint, b"{}")
    _, b = call(endpoint, b"{}")
    status, again = call(endpoint, json.dumps({"session": a["session"]}).encode())
    assert status == 200 and again["roomName"] == a["roomName"] and again["session"] == a["session"]
    assert again["identity"] != a["identity"] and claims_of(again["token"]).video.room == a["roomName"]
    assert watcher.asked[-1] == (a["roomName"], True)
    for body in ({"session": "x" * 32}, {"session": b["session"][:-1]}, {"session": 7}, {"session": ""}):
        assert call(endpoint, json.dumps(body).encode())[0] == 403, body
    for body in ({"room": b["roomName"]}, {"session": a["session"], "room": b["roomName"]}):
        status, reply = call(endpoint, json.dumps(body).encode())
        assert status == 400 and "chosen by the server" in reply["error"], reply


def test_a_session_expires_a_token_lifetime_after_its_last_token(visitors):
    endpoint, clock, _ = visitors
    _, a = call(endpoint, b"{}")
    clock.now += TOKEN_TTL_S - 1
    assert call(endpoint, json.dumps({"session": a["session"]}).encode())[0] == 200  # and its lifetime restarts
    clock.now += TOKEN_TTL_S - 1
    assert call(endpoint, json.dumps({"session": a["session"]}).encode())[0] == 200
    clock.now += TOKEN_TTL_S
    assert call(endpoint, json.dumps({"session": a["session"]}).encode())[0] == 403


def test_live_sessions_are_capped(visitors):
    endpoint, clock, _ = visitors
    assert [call(endpoint, b"{}")[0] for _ in range(4)] == [200, 200, 200, 503]
    clock.now += TOKEN_TTL_S + 1  # they expire: room for new ones
    assert call(endpoint, b"{}")[0] == 200


def test_a_cluster_hands_out_its_nodes_in_turn(credentials):
    class Cluster:
        url, urls = "ws://127.0.0.1:7880", ["ws://127.0.0.1:7880", "ws://127.0.0.1:7881"]
        api_key, api_secret = credentials.api_key, credentials.api_secret
        token = credentials.token

    endpoint = TokenEndpoint(Cluster(), r"avatar-demo", "avatar-demo", sessions=VisitorSessions())
    assert [call(endpoint, b"{}")[1]["serverUrl"] for _ in range(3)] == [*Cluster.urls, Cluster.urls[0]]
    policy = content_security_policy(Cluster.urls)("/", b"<html></html>")
    assert "ws://127.0.0.1:7880" in policy and "ws://127.0.0.1:7881" in policy


# ----------------------------------------------------------------------------- hypothesis: arbitrary requests

HEADER_NAMES = st.sampled_from(["Content-Type", "Origin", "Host", "Content-Length", "Transfer-Encoding",
                                "Connection", "Cookie", "X-Forwarded-Host", "Accept", "Authorization"]) | \
    st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=20).filter(
        lambda n: n.lower() != "expect")
HEADER_VALUES = st.text(max_size=60) | st.text(string.printable[:-4], max_size=60) | st.sampled_from([
    "application/json", "text/plain", "http://127.0.0.1", "http://evil.example", "null", "localhost", "127.0.0.1:1",
    "evil.example", "chunked", "-1", "0", "+1", "1e3", "99999999999", "close", "keep-alive", "[::1]", " ", ""])
BODIES = st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), st.fixed_dictionaries(
    {}, optional={"name": st.text(max_size=70), "room": st.sampled_from(["e2e-a", "e2e-default", "other", ""])})) | \
    st.builds(lambda v: json.dumps(v).encode(), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "room", "identity", "x"]) | st.text(max_size=8), inner, max_size=4),
    max_leaves=10)) | st.sampled_from([b"[" * 14000, b"{}", b'{"name": "Ada"}', b'{"room": "e2e-x"}'])


@st.composite
def token_requests(draw) -> bytes:
    """POST /api/token with an arbitrary body and headers; about half of them well-formed enough
    to reach the endpoint, so both the HTTP layer and the endpoint's own checks are exercised."""
    body = draw(BODIES)
    lines = ["POST /api/token HTTP/1.1"]
    host = draw(st.sampled_from(["127.0.0.1", "localhost:8000", "[::1]:1", "LOCALHOST", "evil.example",
                                 "127.0.0.1.evil.example", None]) if draw(st.integers(0, 4)) else HEADER_VALUES)
    if host is not None:
        lines.append(f"Host: {host}")
    length = draw(st.sampled_from(["exact"] * 6 + ["none", "shorter", "longer", "negative", "garbage", "double",
                                                  "huge"]))
    lines += {"exact": [f"Content-Length: {len(body)}"], "none": [],
              "shorter": [f"Content-Length: {max(0, len(body) - 1)}"], "longer": [f"Content-Length: {len(body) + 5}"],
              "negative": ["Content-Length: -1"], "garbage": [f"Content-Length: {draw(HEADER_VALUES)}"],
              "double": [f"Content-Length: {len(body)}", "Content-Length: 7"],
              "huge": [f"Content-Length: {MAX_BODY + 1 + len(body)}"]}[length]
    origin = draw(st.sampled_from([None, None, "http://127.0.0.1:8000", "http://localhost", "http://evil.example"])
                  if draw(st.integers(0, 4)) else HEADER_VALUES)
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if draw(st.booleans()):
        lines.append(f"Content-Type: {draw(HEADER_VALUES)}")
    for name, value in draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=2)):
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass") + body


@pytest.fixture(scope="module")
def fuzz_app(credentials):
    with build_app(credentials, rooms=r"e2e-[a-z0-9-]+", default_room="e2e-default", timeout_s=1.0) as server:
        yield server


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=token_requests())
def test_arbitrary_requests_to_the_token_endpoint(fuzz_app, data: bytes):
    """Whatever the body and the headers: 200, 400, 403 or 413, a clean close, and the server
    still serves. The client closes its sending side, so a body shorter than announced ends."""
    result = exchange(fuzz_app.port, data, shut=True, timeout=5)
    assert not result.reset
    assert result.responses, (data[:200], result)
    assert result.status in (200, 400, 403, 413), (data[:200], result.status, result.first.body)
    event(f"status {result.status}")
    if result.status == 200:
        assert json.loads(result.first.body)["identity"].startswith("viewer-")
    assert get(fuzz_app.port, "/index.html").status == 200


# ----------------------------------------------------------------------------- a real LiveKit server


@pytest.mark.live
def test_a_viewer_token_cannot_publish_a_camera_but_can_publish_a_microphone(tmp_path: Path):
    """Real server, real SDK: the endpoint's token publishes a microphone track, and the server
    refuses a camera track from it. A token minted with the camera allowed publishes one (so the
    refusal is the grant's doing, not a broken video track)."""
    from livekit import api, rtc
    from livekit.rtc.participant import PublishTrackError

    try:
        server = LiveKitServer(tmp_path / "lk").start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        with build_app(server, rooms=r"e2e-grants") as app:
            status, grant = post_token(app.port, b'{"room": "e2e-grants", "name": "tester"}')
        assert status == 200, grant
        camera_ok = server.token("camera-control", "e2e-grants", sources=["camera", "microphone"])

        async def scenario() -> dict:
            viewer, control = rtc.Room(), rtc.Room()
            outcome: dict = {}
            try:
                await viewer.connect(grant["serverUrl"], grant["token"])
                mic = rtc.LocalAudioTrack.create_audio_track("mic", rtc.AudioSource(48000, 1))
                published = await asyncio.wait_for(viewer.local_participant.publish_track(
                    mic, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)), 15)
                outcome["mic"] = published.sid
                camera = rtc.LocalVideoTrack.create_video_track("cam", rtc.VideoSource(64, 64))
                try:
                    await asyncio.wait_for(viewer.local_participant.publish_track(
                        camera, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)), 20)
                    outcome["camera"] = "published"
                except (PublishTrackError, asyncio.TimeoutError) as exc:
                    outcome["camera"] = f"refused: {type(exc).__name__}: {exc}"
                await control.connect(server.url, camera_ok)
                video = rtc.LocalVideoTrack.create_video_track("cam", rtc.VideoSource(64, 64))
                control_pub = await asyncio.wait_for(control.local_participant.publish_track(
                    video, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)), 15)
                outcome["control_camera"] = control_pub.sid
                async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lkapi:
                    for _ in range(50):  # the server lists a track once its negotiation is done
                        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room="e2e-grants"))
                        outcome["tracks"] = {p.identity: sorted(api.TrackType.Name(t.type) for t in p.tracks)
                                             for p in listed.participants}
                        if outcome["tracks"].get("camera-control"):
                            break
                        await asyncio.sleep(0.2)
            finally:
                await viewer.disconnect()
                await control.disconnect()
            return outcome

        outcome = asyncio.run(scenario())
    finally:
        server.stop()
    assert outcome["mic"].startswith("TR_"), outcome
    assert outcome["camera"].startswith("refused"), outcome
    assert outcome["control_camera"].startswith("TR_"), outcome
    assert outcome["tracks"][grant["identity"]] == ["AUDIO"], outcome  # no video track on the server
    assert outcome["tracks"]["camera-control"] == ["VIDEO"], outcome
