"""LiveKitProvider.diagnostics() (avatarplayer.browser.livekit): what the provider holds alive,
counted from its own bookkeeping. The JavaScript objects are replaced by stand-ins; the counts
that need a page (``audio_elements_in_page``, ``pc_hook_listeners``) are 0 outside one."""

from avatarplayer.browser.livekit import LiveKitProvider

KEYS = {"proxies", "room_handlers", "audio_elements", "audio_elements_in_page", "pc_hook_listeners",
        "transform_workers", "transform_channels", "transforms_ended", "transforms_live"}


def test_a_new_provider_holds_nothing():
    counts = LiveKitProvider().diagnostics()
    assert set(counts) == KEYS
    assert all(value == 0 for value in counts.values()), counts
    assert all(type(value) is int for value in counts.values()), counts


def test_counts_follow_what_the_provider_and_its_tap_hold():
    provider = LiveKitProvider()
    provider._proxies.extend(object() for _ in range(11))
    provider._room_handlers.extend(("event", object()) for _ in range(9))
    provider.audio_out.elements["TR_a"] = (object(), object())
    tap = provider.tap
    tap._worker, tap._port_handler = object(), object()
    tap._ports.update({1: object(), 2: object(), 3: object()})
    tap.stats.update({1: {"ended": True}, 2: {"ended": False}, 7: {"ended": True}})  # 7: its channel is closed
    counts = provider.diagnostics()
    assert counts == {"proxies": 12, "room_handlers": 9, "audio_elements": 1, "audio_elements_in_page": 0,
                      "pc_hook_listeners": 0, "transform_workers": 1, "transform_channels": 3,
                      "transforms_ended": 1, "transforms_live": 2}


def test_closing_releases_everything_counted():
    provider = LiveKitProvider()
    provider._proxies.append(_Destroyable())
    tap = provider.tap
    tap._ports[1] = _Port()
    tap._port_handler = _Destroyable()
    tap._worker = _Worker()
    tap.close()
    provider._proxies[0].destroy()
    provider._proxies.clear()
    assert all(value == 0 for value in provider.diagnostics().values())


class _Destroyable:
    def destroy(self):
        pass


class _Port:
    onmessage = None

    def close(self):
        pass


class _Worker:
    def terminate(self):
        pass
