"""tools/netimpair.py: the pure shaper's statistics, then the real relay between a network
namespace and the root namespace (UDP echo, TCP/HTTP, outages, stopping by itself, isolation).

Needs root and `ip netns` (iproute2); without them the namespace tests FAIL with the reason, as
the browser tests do: a relay test that silently skips proves nothing.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from tools import netimpair
from tools.netimpair import (
    PROFILES, DelayStats, DirectionSettings, ImpairedLink, Link, NetNamespace, Shaper, load_profile,
)

RELAY = ROOT / "tools" / "netimpair.py"
FIXED_50_MS = {"down": {"delay_ms": 50}, "up": {"delay_ms": 50}}


def feed(shaper: Shaper, count: int, interval_s: float, size: int = 1000, flow: object = None,
         start_s: float = 0.0) -> list[tuple[float, float | None]]:
    """(arrival, departure or None) for ``count`` packets ``interval_s`` apart."""
    return [(t, shaper.admit(t, size, flow)) for t in (start_s + i * interval_s for i in range(count))]


def loss_runs(decisions: list[tuple[float, float | None]]) -> list[int]:
    """Lengths of the runs of consecutive drops."""
    runs, current = [], 0
    for _, departure in decisions:
        if departure is None:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs + ([current] if current else [])


# --------------------------------------------------------------------------------------------
# Profiles and the pure shaper

def test_profiles_are_plain_json_and_parse() -> None:
    assert {"perfect", "wifi", "4g", "bad", "outage"} <= set(PROFILES)
    for name, profile in PROFILES.items():
        assert json.loads(json.dumps(profile)) == profile, name
        assert load_profile(name)[0] == name
    assert PROFILES["outage"]["outage_s"] == 1.5
    assert load_profile(json.dumps(FIXED_50_MS))[1].up.delay_ms == 50
    with pytest.raises(ValueError, match="unknown profile"):
        load_profile("lte")


@pytest.mark.parametrize("settings", [{"delay": 10}, {"loss": 1.5}, {"rate": {"burst_bytes": 10}},
                                      {"gilbert": {"p_good_to_bad": 0.1, "p_bad_to_good": 0.2, "typo": 1}}])
def test_bad_settings_are_errors_not_silently_ignored(settings: dict) -> None:
    with pytest.raises(ValueError):
        DirectionSettings.from_dict(settings)


def test_delay_stats_percentiles() -> None:
    stats = DelayStats()
    assert stats.summary() == {"count": 0, "p50": None, "p95": None, "max": None}
    for ms in range(1, 101):
        stats.add(float(ms))
    assert stats.summary() == {"count": 100, "p50": 50.0, "p95": 95.0, "max": 100.0}


@pytest.mark.parametrize("name", ["wifi", "4g"])
def test_random_loss_matches_the_profile(name: str) -> None:
    settings = PROFILES[name]["down"]
    shaper = Shaper(settings, seed=3)
    decisions = feed(shaper, 20_000, interval_s=0.01)  # 800 kbit/s: under 4g's rate limit
    lost = sum(d is None for _, d in decisions) / len(decisions)
    assert abs(lost - settings["loss"]) < 0.25 * settings["loss"], lost
    assert shaper.dropped["queue"] == 0 and shaper.dropped["loss"] == shaper.packets_in - shaper.packets_out
    assert statistics.mean(loss_runs(decisions)) < 1.2  # independent losses rarely come in pairs


def test_gilbert_elliott_loss_is_bursty_at_the_profile_rate() -> None:
    bad = DirectionSettings.from_dict(PROFILES["bad"]["down"])
    decisions = feed(Shaper(bad, seed=3), 20_000, interval_s=0.02)
    lost = sum(d is None for _, d in decisions) / len(decisions)
    assert abs(bad.gilbert.mean_loss - 0.08) < 0.005
    assert abs(lost - 0.08) < 0.015, lost
    assert statistics.mean(loss_runs(decisions)) > 1.5
    # The same average loss without the two states: singles, which is what the test tells apart.
    independent = feed(Shaper({"loss": 0.08}, seed=3), 20_000, interval_s=0.02)
    assert statistics.mean(loss_runs(independent)) < 1.2


@pytest.mark.parametrize("name", ["wifi", "4g", "bad"])
def test_jitter_stays_within_the_profile_and_never_reorders(name: str) -> None:
    settings = DirectionSettings.from_dict(PROFILES[name]["down"])
    decisions = [(a, d) for a, d in feed(Shaper(settings, seed=5), 5000, interval_s=0.02) if d is not None]
    delays_ms = [(d - a) * 1000 for a, d in decisions]
    spike_ms = settings.spikes.hold_ms if settings.spikes else 0.0
    queue_ms = settings.rate.queue_ms if settings.rate else 0.0
    low = max(0.0, settings.delay_ms - settings.jitter_ms)
    assert low - 1e-6 <= min(delays_ms)
    assert max(delays_ms) <= settings.delay_ms + settings.jitter_ms + spike_ms + queue_ms + 1e-6
    assert max(delays_ms) - min(delays_ms) > settings.jitter_ms  # the jitter is really there
    departures = [d for _, d in decisions]
    assert departures == sorted(departures)


def test_delay_spikes_hold_packets_every_few_seconds() -> None:
    decisions = feed(Shaper({"spikes": {"every_s": 2.0, "hold_ms": 300}}, seed=1), 3000, interval_s=0.01)
    held = [(a, d) for a, d in decisions if d - a > 0]
    spells = 1 + sum(b[0] - a[0] > 0.05 for a, b in zip(held, held[1:]))
    assert 8 <= spells <= 24, spells  # 30 s at one spike every 1-3 s
    assert max(d - a for a, d in held) <= 0.3 + 1e-9


def test_reorder_lets_packets_overtake_within_a_flow_only_when_asked() -> None:
    jittery = {"delay_ms": 30, "jitter_ms": 30}
    in_order = feed(Shaper(jittery, seed=2), 2000, interval_s=0.005, flow="a")
    assert [d for _, d in in_order] == sorted(d for _, d in in_order)
    reordered = [d for _, d in feed(Shaper({**jittery, "reorder": 0.2}, seed=2), 2000, interval_s=0.005)]
    overtaken = sum(later < earlier for earlier, later in zip(reordered, reordered[1:]))
    assert 0.05 * 2000 < overtaken < 0.25 * 2000, overtaken
    # Two flows keep their own order but do not wait for each other.
    shaper = Shaper(jittery, seed=2)
    mixed = [(flow, shaper.admit(i * 0.005, 1000, flow)) for i, flow in enumerate("ab" * 1000)]
    for flow in "ab":
        departures = [d for f, d in mixed if f == flow]
        assert departures == sorted(departures)
    assert [d for _, d in mixed] != sorted(d for _, d in mixed)


def test_rate_limit_is_respected_and_the_queue_drops_its_tail() -> None:
    rate = {"kbps": 1500, "burst_bytes": 15_000, "queue_ms": 250}
    shaper = Shaper({"rate": rate}, seed=1)
    size, bytes_per_s = 1250, 1500 * 125
    decisions = feed(shaper, 3000, interval_s=size / (2 * bytes_per_s), size=size)  # offered: twice the rate
    departures = sorted(d for _, d in decisions if d is not None)
    assert shaper.dropped["queue"] > 0 and shaper.dropped["queue"] == shaper.packets_in - shaper.packets_out
    for window_s in (0.01, 0.1, 1.0):
        end = 0
        for start, first in enumerate(departures):  # every window that starts at a departure
            while end < len(departures) and departures[end] <= first + window_s + 1e-9:
                end += 1
            assert (end - start) * size <= bytes_per_s * window_s + rate["burst_bytes"] + 1e-6
    throughput = (len(departures) - 1) * size / (departures[-1] - departures[0])
    assert abs(throughput - bytes_per_s) < 0.02 * bytes_per_s
    assert max(d - a for a, d in decisions if d is not None) <= rate["queue_ms"] / 1000 + 1e-9


def test_outage_drops_everything_inside_its_window_and_nothing_outside() -> None:
    shaper = Shaper({}, seed=1)
    shaper.add_outage(5.0, 6.5)
    decisions = feed(shaper, 1000, interval_s=0.01)
    assert all((d is None) == (5.0 <= a < 6.5) for a, d in decisions)
    assert shaper.dropped == {"outage": 150, "queue": 0, "loss": 0, "burst_loss": 0}
    # The outage profile schedules the same thing for both directions, 12 s in, for 1.5 s.
    link = Link(load_profile("outage")[1], seed=1, now_s=100.0)
    assert link.outages == [{"start_s": 112.0, "end_s": 113.5, "source": "profile"}]
    assert link.up.admit(112.7, 100) is None and link.down.admit(113.49, 100) is None
    assert link.up.admit(111.9, 100) is not None and link.down.admit(113.5, 100) is not None
    assert link.stalled_until(112.0) == 113.5 and link.stalled_until(113.5) is None


def test_same_seed_same_decisions() -> None:
    def run(seed: int) -> list[float | None]:
        shaper = Shaper(PROFILES["bad"]["down"], seed=seed)
        return [shaper.admit(i * 0.007, 300 + i % 900) for i in range(5000)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_reconfigure_keeps_counters_and_order() -> None:
    shaper = Shaper({"delay_ms": 200}, seed=1)
    slow = shaper.admit(0.0, 100)
    fast = shaper.admit(0.01, 100)
    shaper.reconfigure({})
    assert slow < fast == shaper.admit(0.02, 100)  # a faster profile does not let packets overtake
    assert shaper.counters()["packets_out"] == 3


# --------------------------------------------------------------------------------------------
# The relay, for real: a namespace, sockets on both sides

class EchoServer:
    """A UDP echo server in the root namespace; remembers what it received."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.received.append(data)
            self.sock.sendto(data, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def ping(sock: socket.socket, port: int, count: int, interval_s: float, tag: bytes = b"p",
         linger_s: float = 0.3) -> list[tuple[float, float | None]]:
    """Send ``count`` tagged datagrams on a fixed schedule; (sent, echoed or None) for each."""
    sent: list[float] = []
    echoed: dict[int, float] = {}
    done = threading.Event()

    def receive() -> None:
        sock.settimeout(0.02)
        while not done.is_set():
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            got_tag, seq = data.split(b":")
            assert got_tag == tag, f"{tag!r} received {data!r}: the relay mixed up two flows"
            echoed.setdefault(int(seq), time.monotonic())

    receiver = threading.Thread(target=receive)
    receiver.start()
    start = time.monotonic()
    for seq in range(count):
        time.sleep(max(0.0, start + seq * interval_s - time.monotonic()))
        sent.append(time.monotonic())
        sock.sendto(tag + b":%d" % seq, ("127.0.0.1", port))
    time.sleep(linger_s)
    done.set()
    receiver.join()
    return [(t, echoed.get(seq)) for seq, t in enumerate(sent)]


def rtts_ms(results: list[tuple[float, float | None]]) -> list[float]:
    return [(back - sent) * 1000 for sent, back in results if back is not None]


def udp_socket_in(ns: NetNamespace) -> socket.socket:
    return ns.call(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b"x" * (2 << 20)  # several relay reads, so back-pressure is exercised

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def http_get(port: int) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def ns() -> Iterator[NetNamespace]:
    with NetNamespace() as namespace:
        yield namespace


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def test_perfect_link_echoes_every_packet_and_keeps_clients_apart(ns: NetNamespace, echo: EchoServer) -> None:
    with ImpairedLink(ns, udp=[echo.address]) as link:
        clients = {tag: udp_socket_in(ns) for tag in (b"a", b"b")}
        results: dict[bytes, list] = {}
        threads = [threading.Thread(target=lambda t=t, s=s: results.__setitem__(t, ping(s, echo.port, 50, 0.01, t)))
                   for t, s in clients.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = link.close()
    for tag, result in results.items():
        assert all(back is not None for _, back in result), tag
        assert statistics.median(rtts_ms(result)) < 20
    assert len(echo.received) == 100
    assert final["stop_reason"] == "stdin closed"
    assert len(final["flows"]) == 2 and {f["packets_up"] for f in final["flows"]} == {50}
    for direction in ("up", "down"):
        assert final["udp"][direction]["packets_out"] == final["udp"][direction]["sent"] == 100
        assert final["udp"][direction]["send_late_ms"]["p95"] < 5


def test_fixed_delay_adds_the_round_trip_time(ns: NetNamespace, echo: EchoServer) -> None:
    with ImpairedLink(ns, udp=[echo.address], profile=FIXED_50_MS) as link:
        result = ping(udp_socket_in(ns), echo.port, 30, 0.02)
        final = link.close()
    rtts = rtts_ms(result)
    assert len(rtts) == 30
    assert min(rtts) >= 90 and statistics.median(rtts) < 160, rtts
    for direction in ("up", "down"):
        assert final["udp"][direction]["delay_ms"]["p50"] == 50.0
        assert final["udp"][direction]["send_late_ms"]["p95"] < 5  # ~0.2 ms measured; generous for busy hosts


def test_profile_switches_over_stdin(ns: NetNamespace, echo: EchoServer) -> None:
    with ImpairedLink(ns, udp=[echo.address]) as link:
        client = udp_socket_in(ns)
        before = statistics.median(rtts_ms(ping(client, echo.port, 10, 0.01, linger_s=0.05)))
        assert link.set_profile(FIXED_50_MS)["profile"] == "custom"
        after = statistics.median(rtts_ms(ping(client, echo.port, 10, 0.01, linger_s=0.2)))
        with pytest.raises(ValueError, match="unknown profile"):
            link.set_profile("lte")
        assert link.stats()["profile"] == "custom"
    assert before < 20 and after >= 90


def test_outage_drops_udp_holds_tcp_then_both_flow_again(ns: NetNamespace, echo: EchoServer, http_port: int) -> None:
    with ImpairedLink(ns, udp=[echo.address], tcp=[f"127.0.0.1:{http_port}"]) as link:
        pings: list = []
        pinger = threading.Thread(target=lambda: pings.extend(ping(udp_socket_in(ns), echo.port, 100, 0.025)))
        pinger.start()
        time.sleep(0.6)
        outage = link.outage(1.0)
        start = link.ready["t0_monotonic"] + outage["start_s"]
        end = link.ready["t0_monotonic"] + outage["end_s"]
        fetched: dict = {}
        fetcher = threading.Thread(target=lambda: fetched.update(
            response=ns.call(http_get, http_port), done=time.monotonic()))
        fetcher.start()
        pinger.join()
        fetcher.join()
        final = link.close()
    assert end - start == pytest.approx(1.0, abs=1e-3)
    inside = [back for sent, back in pings if start + 0.05 <= sent <= end - 0.05]
    outside = [back for sent, back in pings if sent < start - 0.1 or sent > end + 0.1]
    assert len(inside) >= 30 and all(back is None for back in inside)
    assert len(outside) >= 40 and all(back is not None for back in outside)
    lost = sum(back is None for _, back in pings)
    assert final["udp"]["up"]["dropped"]["outage"] + final["udp"]["down"]["dropped"]["outage"] == lost
    # TCP was held, not dropped: the request made during the outage completes after it, intact.
    assert fetched["response"] == (200, _Handler.body)
    assert fetched["done"] >= end - 0.01
    assert final["tcp"]["stalled_chunks"] >= 1 and final["outages"][0]["source"] == "command"


def test_tcp_carries_http_from_inside_the_namespace(ns: NetNamespace, http_port: int) -> None:
    with ImpairedLink(ns, tcp=[f"127.0.0.1:{http_port}"]) as link:
        assert ns.call(http_get, http_port) == (200, _Handler.body)
        final = link.close()
    assert final["tcp"]["connections"] == 1 and final["tcp"]["bytes_down"] > len(_Handler.body)
    with pytest.raises(ConnectionRefusedError):  # no relay, no server inside the namespace
        ns.call(http_get, http_port)


def test_only_relayed_ports_leave_the_namespace(ns: NetNamespace, echo: EchoServer) -> None:
    unrelayed = EchoServer()
    try:
        with ImpairedLink(ns, udp=[echo.address]):
            client = udp_socket_in(ns)
            for _ in range(5):
                client.sendto(b"p:0", ("127.0.0.1", unrelayed.port))
                client.sendto(b"p:0", ("127.0.0.1", echo.port))
            time.sleep(0.3)
    finally:
        unrelayed.close()
    assert len(echo.received) == 5 and unrelayed.received == []


def start_relay(ns: NetNamespace, *args: str, stdin: int | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RELAY), "--netns", ns.name, *args], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def final_line(stdout: str) -> dict:
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines[0]["event"] == "ready" and lines[-1]["event"] == "final", lines
    return lines[-1]


def test_relay_stops_after_its_max_duration(ns: NetNamespace, echo: EchoServer, tmp_path: Path) -> None:
    read_end, write_end = os.pipe()  # stdin stays open: only the time limit can stop it
    stats_file = tmp_path / "stats.json"
    try:
        started = time.monotonic()
        relay = start_relay(ns, "--udp", echo.address, "--max-duration-s", "1", "--stats-file", str(stats_file),
                            stdin=read_end)
        stdout, stderr = relay.communicate(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        os.close(read_end)
        os.close(write_end)
    assert relay.returncode == 0, stderr
    assert final_line(stdout)["stop_reason"] == "max duration"
    assert json.loads(stats_file.read_text()) == final_line(stdout)
    assert 1.0 <= elapsed < 5.0


def test_relay_stops_when_its_parent_exits(ns: NetNamespace, echo: EchoServer) -> None:
    read_end, write_end = os.pipe()
    argv = [sys.executable, str(RELAY), "--netns", ns.name, "--udp", echo.address]
    spawn_and_leave = f"import subprocess, time; subprocess.Popen({argv!r}); time.sleep(1.5)"
    parent = subprocess.Popen([sys.executable, "-c", spawn_and_leave],
                              stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The relay holds the same stdout pipe: EOF comes only once it exited too.
        stdout, stderr = parent.communicate(timeout=10)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert final_line(stdout)["stop_reason"] == "parent exited", stderr


def test_relay_refuses_what_it_must_not_do(ns: NetNamespace) -> None:
    for args in (["--udp", "10.0.0.1:53"], ["--tcp", "127.0.0.1:0"], ["--udp", "localhost:53"],
                 ["--udp", "127.0.0.1:53", "--profile", "lte"], []):
        relay = start_relay(ns, *args)
        _, stderr = relay.communicate(timeout=10)
        assert relay.returncode == 2 and "error" in stderr, (args, stderr)
    missing = subprocess.run([sys.executable, str(RELAY), "--netns", "avp-missing", "--udp", "127.0.0.1:9"],
                             capture_output=True, text=True, timeout=10)
    assert missing.returncode == 2 and "no network namespace" in missing.stderr


def test_a_second_relay_on_the_same_address_fails_clearly(ns: NetNamespace, echo: EchoServer) -> None:
    with ImpairedLink(ns, udp=[echo.address]):
        with pytest.raises(RuntimeError, match="cannot listen inside namespace.*Address already in use"):
            ImpairedLink(ns, udp=[echo.address])


def test_namespaces_are_removed_and_stale_ones_cleaned_up() -> None:
    with NetNamespace() as namespace:
        assert (netimpair.NETNS_DIR / namespace.name).exists()
        inside = subprocess.run(namespace.wrap(["ip", "-brief", "address"]), capture_output=True, text=True, check=True)
        assert inside.stdout.split()[:2] == ["lo", "UNKNOWN"] and len(inside.stdout.splitlines()) == 1
    assert not (netimpair.NETNS_DIR / namespace.name).exists()
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = f"avp-{gone.pid}-0"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    assert stale in netimpair.cleanup_stale()
    assert not (netimpair.NETNS_DIR / stale).exists()


def test_chromium_wrapper_runs_the_browser_inside_the_namespace(ns: NetNamespace, tmp_path: Path) -> None:
    wrapper = netimpair.chromium_wrapper(ns, tmp_path, chromium="/usr/bin/readlink")
    assert os.access(wrapper, os.X_OK)
    inside = subprocess.run([str(wrapper), "/proc/self/ns/net"], capture_output=True, text=True, check=True).stdout
    assert inside.strip() == f"net:[{os.stat(netimpair.NETNS_DIR / ns.name).st_ino}]"
    assert inside.strip() != os.readlink("/proc/self/ns/net")
