"""AvatarPlayer's logic under CPython, with a stand-in provider (the real one is browser-only and
is exercised by tests/browser against a real LiveKit server)."""

import asyncio
import logging
import sys

import pytest

from avatarplayer.events import ConnectionState
from avatarplayer.wire.motion import Flags, MotionPacket, encode_packet
from avatarplayer.player import AvatarPlayer, ConnectConfig, ConnectError


class StandInProvider:
    def __init__(self, fail=None, delay=0.0):
        self.fail, self.delay, self.opened, self.closed = fail, delay, [], 0
        self.sink = None

    async def open(self, sink, url, token):
        self.sink = sink
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        self.opened.append((url, token))

    async def close(self):
        self.closed += 1


class Recorder:
    def __init__(self):
        self.calls = []

    def yield_frames_data(self, frames, conversation_id):
        self.calls.append((list(frames), conversation_id))

    def yield_audio_data(self, data, is_last):
        return None


def make(**kw):
    provider = kw.pop("provider", StandInProvider())
    renderer = kw.pop("renderer", Recorder())
    player = AvatarPlayer(provider, renderer, **kw)
    states = []
    player.on("connection-state-changed", states.append)
    return player, provider, renderer, states


def test_connect_and_disconnect_states_in_order():
    async def main():
        player, provider, _, states = make()
        await player.connect(url="ws://127.0.0.1:7880", token="t")
        assert player.is_connected and player.connection_state == "connected"
        await player.disconnect()
        return player, provider, states

    player, provider, states = asyncio.run(main())
    assert states == ["connecting", "connected", "disconnected"]
    assert provider.opened == [("ws://127.0.0.1:7880", "t")] and provider.closed == 1


def test_token_endpoint_json_is_accepted_as_is():
    cfg = ConnectConfig.of({"token": "abc", "serverUrl": "ws://127.0.0.1:7880", "roomName": "r"})
    assert cfg == ConnectConfig("ws://127.0.0.1:7880", "abc", "r")


def js_object(values):
    """The JS object ``fetch(...).json()`` gives: a real one inside Pyodide, a stand-in elsewhere."""
    if sys.platform == "emscripten":
        import js
        from pyodide.ffi import to_js

        return to_js(values, dict_converter=js.Object.fromEntries)

    class JsObject:  # a JsProxy: not a Mapping, converted with to_py()
        def to_py(self):
            return dict(values)

    return JsObject()


def test_the_js_object_of_fetch_json_is_accepted_as_is():
    endpoint = {"token": "abc", "serverUrl": "ws://127.0.0.1:7880", "roomName": "r", "identity": "viewer-1"}
    assert ConnectConfig.of(js_object(endpoint)) == ConnectConfig("ws://127.0.0.1:7880", "abc", "r")
    with pytest.raises(ValueError, match="token"):
        ConnectConfig.of(js_object({"serverUrl": "ws://127.0.0.1:7880"}))


@pytest.mark.parametrize("kwargs, match", [(dict(url="ftp://x", token="t"), "url"), (dict(url="ws://x", token=""), "token")])
def test_bad_connect_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConnectConfig.of(**kwargs)


def test_failed_connect_ends_in_failed_with_error_event_and_exception():
    async def main():
        player, _, _, states = make(provider=StandInProvider(fail=RuntimeError("could not establish signal connection")))
        errors = []
        player.on("error", errors.append)
        with pytest.raises(ConnectError) as info:
            await player.connect(url="ws://127.0.0.1:1", token="t")
        return states, errors, info.value

    states, errors, exc = asyncio.run(main())
    assert states == ["connecting", "failed"]
    assert errors == [exc] and exc.cause == "unreachable"


def test_connect_times_out_with_a_clear_error():
    async def main():
        player, _, _, states = make(provider=StandInProvider(delay=5), connect_timeout_s=0.05)
        with pytest.raises(ConnectError, match="timed out") as info:
            await player.connect(url="ws://127.0.0.1:7880", token="t")
        return states, info.value

    states, exc = asyncio.run(main())
    assert states == ["connecting", "failed"] and exc.cause == "timeout"


def test_rejected_token_is_named():
    async def main():
        player, *_ = make(provider=StandInProvider(fail=RuntimeError("unauthorized: invalid token (401)")))
        with pytest.raises(ConnectError) as info:
            await player.connect(url="ws://127.0.0.1:7880", token="t")
        return info.value

    assert asyncio.run(main()).cause == "token"


def test_reconnect_without_connect_raises():
    player, *_ = make()
    with pytest.raises(RuntimeError, match="previous connect"):
        asyncio.run(player.reconnect())


def test_room_reconnecting_and_back_counts_a_reconnect_without_duplicate_states():
    async def main():
        player, provider, _, states = make()
        await player.connect(url="ws://127.0.0.1:7880", token="t")
        provider.sink.on_room_state(ConnectionState.RECONNECTING)
        provider.sink.on_room_state(ConnectionState.RECONNECTING)  # signal + media: one state change
        provider.sink.on_room_state(ConnectionState.CONNECTED)
        summary = player.session_summary
        await player.disconnect()
        return states, summary

    states, summary = asyncio.run(main())
    assert states == ["connecting", "connected", "reconnecting", "connected", "disconnected"]
    assert summary.reconnect_count == 1


def test_the_providers_audio_path_replaces_the_default_for_each_connection():
    """The provider knows its browser's audio path (Firefox's is shorter): lip sync uses it."""
    from avatarplayer.sync import AUDIO_PATH_MS

    async def main():
        provider = StandInProvider()
        player, *_ = make(provider=provider)
        await player.connect(url="ws://127.0.0.1:7880", token="t")
        default = player._pipeline.clock.audio_path_ms
        await player.disconnect()
        provider.audio_path_ms = 20.0
        await player.connect(url="ws://127.0.0.1:7880", token="t")
        chosen = player._pipeline.clock.audio_path_ms
        await player.disconnect()
        return default, chosen

    assert asyncio.run(main()) == (AUDIO_PATH_MS, 20.0)


def test_a_reconnect_that_never_ends_fails_after_reconnect_timeout_s_and_reconnect_starts_afresh():
    """livekit-client stuck in ``reconnecting`` (Firefox after a server restart): the player gives
    up, closes the room, goes ``failed`` with a ``reconnect-timeout`` error; reconnect() works."""
    async def main():
        player, provider, _, states = make(reconnect_timeout_s=0.2)
        errors = []
        player.on("error", errors.append)
        await player.connect(url="ws://127.0.0.1:7880", token="t")
        provider.sink.on_room_state(ConnectionState.RECONNECTING)
        await asyncio.sleep(0.1)
        failed_early = player.connection_state
        await asyncio.sleep(0.3)
        failed = (player.connection_state, provider.closed, list(errors))
        await player.reconnect()
        connected = player.connection_state
        provider.sink.on_room_state(ConnectionState.RECONNECTING)  # this time it comes back in time
        provider.sink.on_room_state(ConnectionState.CONNECTED)
        await asyncio.sleep(0.3)
        await player.disconnect()
        return failed_early, failed, connected, states, errors

    failed_early, (state, closed, errors_then), connected, states, errors = asyncio.run(main())
    assert failed_early == "reconnecting"
    assert state == "failed" and closed == 1
    assert [(type(e).__name__, e.cause) for e in errors_then] == [("ConnectError", "reconnect-timeout")]
    assert connected == "connected" and len(errors) == 1  # the watch ended with the second reconnect
    assert states == ["connecting", "connected", "reconnecting", "failed", "disconnected", "connecting", "connected",
                      "reconnecting", "connected", "disconnected"]


def test_frames_reach_the_renderer_in_order_at_tick_time_and_handler_errors_are_isolated(caplog):
    async def main():
        player, provider, renderer, _ = make()
        seen = []

        def bad_handler(cid):
            raise ValueError("handler bug")

        async def bad_async_handler(cid):
            raise ValueError("async handler bug")

        player.on("turn-started", bad_handler)
        player.on("turn-started", bad_async_handler)
        player.on("turn-started", seen.append)
        await player.connect(url="ws://127.0.0.1:7880", token="t")
        for seq in range(10):  # a 25 fps producer
            flags = Flags.START if seq == 0 else (Flags.END if seq == 9 else Flags(0))
            provider.sink.on_packet(encode_packet(MotionPacket(flags, seq, b"m%d" % seq)), player._clock())
            await asyncio.sleep(0.04)
        provider.sink.on_packet(b"garbage", player._clock())
        await asyncio.sleep(0.4)
        summary = player.session_summary
        await player.disconnect()
        return renderer, seen, summary, player

    with caplog.at_level(logging.ERROR):
        renderer, seen, summary, player = asyncio.run(main())
    frames = [f for call in renderer.calls for f in call[0]]
    assert frames == [b"m%d" % i for i in range(10)]
    assert len(seen) == 1 and all(cid == seen[0] for _, cid in renderer.calls)
    assert summary.packets_malformed == 1 and summary.frames_rendered == 10
    assert player._events.handler_errors == 2
    assert "handler bug" in caplog.text


def test_a_raising_renderer_is_counted_and_playback_continues():
    class Broken(Recorder):
        def yield_frames_data(self, frames, conversation_id):
            super().yield_frames_data(frames, conversation_id)
            raise RuntimeError("renderer bug")

    async def main():
        player, provider, renderer, _ = make(renderer=Broken(), log_level="none")
        await player.connect(url="ws://127.0.0.1:7880", token="t")
        now = player._clock()
        for seq in range(4):  # the buffer holds at most 4
            provider.sink.on_packet(encode_packet(MotionPacket(Flags(0), seq, b"x")), now)
        await asyncio.sleep(0.4)
        await player.disconnect()
        return player, renderer

    player, renderer = asyncio.run(main())
    assert len(renderer.calls) == 4 and player.session_summary.renderer_errors == 4


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(log_level="debug"), "log_level"),
        (dict(enable_jitter_buffer=1), "enable_jitter_buffer"),
        (dict(max_buffer_delay_ms="80"), "max_buffer_delay_ms"),
        (dict(max_buffer_delay_ms=-5), "max_buffer_delay_ms"),
        (dict(connect_timeout_s=0), "connect_timeout_s"),
        (dict(reconnect_timeout_s=-1), "reconnect_timeout_s"),
        (dict(reconnect_timeout_s=True), "reconnect_timeout_s"),
        (dict(sync="video"), "sync"),
        (dict(sync=True), "sync"),
        (dict(sync_offset_ms=5000), "sync_offset_ms"),
        (dict(sync_offset_ms="20"), "sync_offset_ms"),
        (dict(renderer=object()), "renderer"),
        (dict(provider=object()), "provider"),
    ],
)
def test_bad_options_raise_at_construction_naming_the_option(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=name):
        make(**kwargs)


def test_unknown_event_name():
    player, *_ = make()
    with pytest.raises(ValueError, match="unknown event"):
        player.on("stall", print)


def test_ticker_catches_up_missed_ticks_and_resyncs_after_a_long_stall():
    from avatarplayer.ticker import Ticker

    clock = {"now": 0.0}
    seen = []
    ticker = Ticker(40, seen.append, lambda: clock["now"], max_catch_up=5)

    async def main():
        ticker.start()
        await asyncio.sleep(0)  # first tick at 0
        clock["now"] = 130.0  # the loop was blocked: ticks at 40, 80, 120 are due
        await asyncio.sleep(0.06)  # the ticker wakes (it slept 40 ms of real time)
        clock["now"] = 1000.0  # a long stall: resync instead of 21 ticks at once
        await asyncio.sleep(0.06)
        await ticker.stop()

    asyncio.run(main())
    assert seen[:4] == [0.0, 130.0, 130.0, 130.0]
    assert ticker.caught_up == 2 and ticker.overruns == 1
    assert seen[4:] == [1000.0]


def test_bad_connect_arguments_fail_the_player_with_a_named_error():
    from avatarplayer.player import ConnectConfigError

    async def main():
        player, provider, _, states = make()
        errors = []
        player.on("error", errors.append)
        with pytest.raises(ValueError, match="url") as info:  # a ConnectConfigError is a ValueError
            await player.connect(url="not-a-url", token="t")
        return player, provider, states, errors, info.value

    player, provider, states, errors, exc = asyncio.run(main())
    assert isinstance(exc, ConnectConfigError) and exc.cause == "config" and errors == [exc]
    assert states == ["failed"] and provider.opened == []
    with pytest.raises(RuntimeError, match="previous connect"):  # nothing to reconnect with
        asyncio.run(player.reconnect())


class SharedRoomProvider(StandInProvider):
    def shares_connected_room(self):
        return True


def test_a_shared_connected_room_needs_no_connect_arguments():
    async def main():
        player, provider, _, states = make(provider=SharedRoomProvider())
        await player.connect()
        return provider, states

    provider, states = asyncio.run(main())
    assert states == ["connecting", "connected"] and provider.opened == [("", "")]


def test_audio_blocked_and_resumed_events_fire_on_changes_only():
    player, *_ = make()
    seen = []
    player.on("audio-blocked", lambda: seen.append("blocked"))
    player.on("audio-playback-changed", lambda ok: seen.append(ok))
    for can_play in (True, False, False, True, True):
        player.on_audio_playback(can_play)
    assert seen == ["blocked", False, True] and player.can_play_audio is True


def test_data_messages_become_typed_events():
    from avatarplayer.wire.datamsg import AgentStatus, TranscriptChunk

    player, *_ = make()
    seen = {name: [] for name in ("data-message", "transcript", "agent-status")}
    for name, bucket in seen.items():
        player.on(name, bucket.append)
    player.on_data(b'{"type": "agent_status", "data": {"status": "thinking"}}', "agent", "a")
    player.on_data(b'{"type": "transcript_chunk", "data": {"text": "hi", "final": true}}', "agent", "a")
    player.on_data(b"\x00binary", None, "a")
    assert [type(m).__name__ for m in seen["data-message"]] == ["AgentStatus", "TranscriptChunk", "DataMessage"]
    assert isinstance(seen["agent-status"][0], AgentStatus) and seen["agent-status"][0].status == "thinking"
    assert isinstance(seen["transcript"][0], TranscriptChunk) and seen["transcript"][0].final is True


class MicProvider(StandInProvider):
    def __init__(self, error=None):
        super().__init__()
        self.error, self.calls = error, []

    async def start_publishing(self):
        self.calls.append("start")
        if self.error:
            raise self.error


def test_microphone_calls_need_a_connection_and_a_denial_is_an_error_event():
    from avatarplayer.player import MediaDeviceError

    denied = MediaDeviceError("the microphone could not be opened: NotAllowedError", "NotAllowedError",
                              "permission-denied")

    async def main():
        player, provider, *_ = make(provider=MicProvider(error=denied), log_level="none")
        errors = []
        player.on("error", errors.append)
        with pytest.raises(RuntimeError, match="connected"):
            await player.start_publishing()
        await player.connect(url="ws://127.0.0.1:7880", token="t")
        with pytest.raises(MediaDeviceError) as info:
            await player.start_publishing()
        with pytest.raises(NotImplementedError, match="publish_audio"):
            await player.publish_audio(object())
        await player.disconnect()
        return provider, errors, info.value

    provider, errors, exc = asyncio.run(main())
    assert provider.calls == ["start"] and errors == [denied] and exc.cause == "permission-denied"


@pytest.mark.parametrize("level, logged", [("none", False), ("warning", True)])
def test_log_level_none_logs_nothing_and_handler_errors_are_isolated(caplog, level, logged):
    async def main():
        player, provider, *_ = make(log_level=level)

        def bad(*_):
            raise ValueError("boom")

        async def bad_async(*_):
            raise ValueError("async boom")

        player.on("connection-state-changed", bad)
        player.on("connection-state-changed", bad_async)
        await player.connect(url="ws://127.0.0.1:7880", token="t")
        await asyncio.sleep(0)
        await player.disconnect()
        await asyncio.sleep(0.01)
        return player

    with caplog.at_level("INFO"):
        player = asyncio.run(main())
    assert player._events.handler_errors == 6 and player.connection_state == "disconnected"
    ours = [r for r in caplog.records if r.name.startswith("avatarplayer")]
    assert bool(ours) is logged
    if logged:
        assert any("boom" in str(r.exc_info[1]) for r in ours if r.exc_info)


def test_the_player_follows_the_audio_statistics_it_is_given_and_reports_sync_changes():
    from avatarplayer.sync import AudioStats

    async def main():
        player, provider, renderer, _ = make()
        changes = []
        player.on("sync-changed", lambda mode, reason: changes.append((mode, reason)))
        await player.connect(url="ws://x", token="t")
        now = player._clock()
        provider.sink.on_audio_stats(AudioStats(now_ms=now - 100, jitter_buffer_delay_s=0.0,
                                                jitter_buffer_emitted_count=0, packets_received=0))
        provider.sink.on_packet(encode_packet(MotionPacket(Flags(0), 0, b"x")), now, 90_000.0)
        # the next window: 6720 samples emitted, each after 30 ms in NetEq; the frame's audio among them
        provider.sink.on_audio_stats(AudioStats(now_ms=now + 40, jitter_buffer_delay_s=0.03 * 6720,
                                                jitter_buffer_emitted_count=6720, packets_received=7))
        await asyncio.sleep(0.2)  # the frame is due 30 ms (NetEq) + the audio path after it arrived
        summary = player.session_summary
        await player.disconnect()
        return changes, summary, renderer

    changes, summary, renderer = asyncio.run(main())
    assert changes[0] == ("audio", "locked")
    assert summary.sync_mode == "audio" and summary.audio_jitter_buffer_delay_ms == pytest.approx(30.0)
    assert summary.frames_rendered == 1 and summary.frames_held_for_sync == 1
    assert summary.as_dict()["avSyncOffsetMs"] == pytest.approx(0.0, abs=15.0)


def test_every_error_and_event_payload_a_user_meets_is_exported():
    import avatarplayer

    for name in ("ConnectError", "ConnectConfigError", "MediaDeviceError", "DataMessage", "TranscriptChunk",
                 "AgentStatus", "SessionSummary", "ConnectionState", "PlayerEvent"):
        assert name in avatarplayer.__all__ and getattr(avatarplayer, name) is not None, name
    assert issubclass(avatarplayer.ConnectConfigError, avatarplayer.ConnectError)


def test_a_grant_source_is_asked_at_connect_and_again_at_every_reconnect():
    """connect(fetch_grant): each connection gets a fresh grant from the app's server."""
    grants = []

    async def fetch_grant():
        grants.append(len(grants) + 1)
        return {"serverUrl": "ws://127.0.0.1:7880", "token": f"t{len(grants)}", "roomName": "visit-1"}

    async def main():
        player, provider, _, states = make()
        await player.connect(fetch_grant)
        await player.reconnect()
        await player.reconnect()
        await player.disconnect()
        return provider, states

    provider, states = asyncio.run(main())
    assert grants == [1, 2, 3]
    assert provider.opened == [("ws://127.0.0.1:7880", "t1"), ("ws://127.0.0.1:7880", "t2"),
                               ("ws://127.0.0.1:7880", "t3")]
    assert states.count("connected") == 3 and "failed" not in states


def test_a_grant_source_that_raises_fails_the_connect_with_cause_grant():
    def refuse():
        raise RuntimeError("HTTP 403: session expired")

    async def main():
        player, provider, _, states = make()
        errors = []
        player.on("error", errors.append)
        with pytest.raises(ConnectError) as info:
            await player.connect(refuse)
        return provider, states, errors, info.value

    provider, states, errors, exc = asyncio.run(main())
    assert exc.cause == "grant" and "session expired" in str(exc)
    assert errors == [exc] and states == ["connecting", "failed"] and provider.opened == []


def test_plain_arguments_after_a_grant_source_replace_it_for_reconnects():
    async def fetch_grant():
        return {"url": "ws://127.0.0.1:7880", "token": "from-source"}

    async def main():
        player, provider, _, _ = make()
        await player.connect(fetch_grant)
        await player.disconnect()
        await player.connect(url="ws://127.0.0.1:7880", token="fixed")
        await player.reconnect()
        return provider

    assert [t for _, t in asyncio.run(main()).opened] == ["from-source", "fixed", "fixed"]
