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
    closed = False

    def close(self):
        self.closed = True


class _Worker:
    def terminate(self):
        pass


def _receiver(track_state="live", transport_state="connected", *, transport=True):
    from types import SimpleNamespace

    return SimpleNamespace(track=SimpleNamespace(readyState=track_state),
                           transport=SimpleNamespace(state=transport_state) if transport else None)


def test_the_channels_of_dead_receivers_are_closed_and_no_longer_counted():
    """livekit-client's full reconnect replaces its peer connections: the old receivers' tracks end
    and their transports close, but Chromium never ends their transforms. The tap closes their
    channels (the watchdog calls this once a second), keeps the motion track's own attachment, and
    leaves receivers that are merely not negotiated yet (no transport) alone."""
    import logging

    provider = LiveKitProvider()
    tap = provider.tap
    ports = {i: _Port() for i in range(1, 7)}
    tap._ports.update(ports)
    tap._receivers.update({1: _receiver("ended", "closed"), 2: _receiver("ended"), 3: _receiver("live", "closed"),
                           4: _receiver(transport=False), 5: _receiver(), 6: _receiver("ended", "closed")})
    tap.attach_id = 6  # the motion track's: kept even so
    tap._acknowledged.update({1, 2, 5})
    tap.log = logging.getLogger("test")
    assert tap.prune_dead_receivers() == 3
    assert sorted(tap._ports) == [4, 5, 6] and sorted(tap._receivers) == [4, 5, 6]
    assert tap._acknowledged == {5}
    assert all(ports[i].closed for i in (1, 2, 3)) and not any(ports[i].closed for i in (4, 5, 6))
    assert provider.diagnostics()["transform_channels"] == 3
    assert tap.prune_dead_receivers() == 0
