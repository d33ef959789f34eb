"""A network-impairment relay: netem in user space, for a browser in its own network namespace.

This kernel has no netem, so a WebRTC client cannot be tested under loss and delay with ``tc``.
Instead the browser runs in a private network namespace that has only loopback. Inside it, this
relay listens on the same ``127.0.0.1:PORT`` addresses as the real servers (LiveKit signalling,
the web page, the SFU's UDP port) and forwards to them in the root namespace, so the browser uses
its usual URLs and every packet between it and the SFU crosses the relay. The relay delays, drops
and rate-limits the UDP (media) traffic per direction, and holds TCP bytes during an outage.

Top-down (docs/network-profiles.md has the picture and the numbers):

- ``PROFILES``: named link settings as plain JSON-serialisable dicts.
- ``Shaper``: one direction's pure, seeded decisions: ``admit(now_s, size) -> departure_s | None``.
- ``Link``: both directions and the outages, still pure (times are passed in).
- the relay (the command line): sockets, and one asyncio loop sending each packet at its time.
- ``NetNamespace``, ``ImpairedLink``, ``chromium_wrapper``: the Python API for tests and benchmarks.

Stdlib only: ``from tools import netimpair``, or run as a script (it starts itself so inside a namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import ctypes
import ipaddress
import itertools
import json
import math
import os
import queue
import random
import re
import selectors
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

# --------------------------------------------------------------------------------------------
# Profiles
#
# "down" is SFU -> browser, "up" is browser -> SFU. A direction's keys are the fields of
# DirectionSettings below; a key left out means "no impairment of that kind". Jitter is uniform
# in [-jitter_ms, +jitter_ms] around delay_ms, clamped at 0, and never reorders a flow's packets
# (reorder = 0). Top-level "outage_at_s"/"outage_s" schedule one outage of both directions (UDP
# dropped, TCP held) that many seconds after the profile takes effect.


def _both_ways(settings: dict[str, Any]) -> dict[str, dict]:
    return {"down": settings, "up": copy.deepcopy(settings)}  # not shared: editing one leaves the other


PROFILES: dict[str, dict] = {
    # Loopback as it is: a baseline for the others.
    "perfect": _both_ways({}),
    # A good home Wi-Fi: ~10 ms one way, +-15 ms of jitter, 0.5 % random loss.
    "wifi": _both_ways({"delay_ms": 10, "jitter_ms": 15, "loss": 0.005}),
    # A decent 4G cell: ~40 ms +-40 ms, 2 % random loss, and a 1.5 Mbit/s bottleneck whose buffer
    # holds up to 250 ms of queueing (deep, as cellular buffers are) before it drops the tail.
    "4g": _both_ways({
        "delay_ms": 40, "jitter_ms": 40, "loss": 0.02,
        "rate": {"kbps": 1500, "burst_bytes": 15_000, "queue_ms": 250},
    }),
    # A bad Wi-Fi far from the access point: ~80 ms +-80 ms, about 8 % loss in bursts
    # (Gilbert-Elliott: 11.5 % of packets in the bad state, 70 % lost there, ~4 packets per bad
    # spell), and every ~4 s a 250 ms hold when the radio leaves the channel to scan.
    "bad": _both_ways({
        "delay_ms": 80, "jitter_ms": 80,
        "gilbert": {"p_good_to_bad": 0.0325, "p_bad_to_good": 0.25, "loss_bad": 0.7, "loss_good": 0.0},
        "spikes": {"every_s": 4.0, "hold_ms": 250},
    }),
    # A perfect link that goes away for 1.5 s, 12 s in: a tunnel, a handover, a router reboot.
    # Tests rather call ImpairedLink.outage() at the moment they care about (mid-turn).
    "outage": {**_both_ways({}), "outage_at_s": 12.0, "outage_s": 1.5},
}

DROP_REASONS = ("outage", "queue", "loss", "burst_loss")


# --------------------------------------------------------------------------------------------
# Settings: the profile dicts, parsed and checked (a typo in a key is an error, not a no-op).

@dataclass(frozen=True)
class RateLimit:
    """A token bucket in front of a drop-tail queue: the bottleneck of an access link.

    ``burst_bytes`` may leave back to back; beyond that the link drains at ``kbps``. A packet that
    would wait more than ``queue_ms`` in the queue is dropped (reason ``queue``)."""

    kbps: float
    burst_bytes: int = 15_000
    queue_ms: float = 250.0

    def __post_init__(self) -> None:
        if self.kbps <= 0 or self.burst_bytes < 0 or self.queue_ms < 0:
            raise ValueError(f"rate: kbps must be > 0, burst_bytes and queue_ms >= 0: {self}")


@dataclass(frozen=True)
class GilbertElliott:
    """Bursty loss: a per-packet Markov chain between a good and a bad state, each with its own
    loss probability. Radio fades lose runs of packets, which hurts far more than the same rate
    spread evenly (FEC and NACK cope with singles, not with runs)."""

    p_good_to_bad: float
    p_bad_to_good: float
    loss_bad: float = 1.0
    loss_good: float = 0.0

    def __post_init__(self) -> None:
        _check_probabilities("gilbert", self, ("p_good_to_bad", "p_bad_to_good", "loss_bad", "loss_good"))
        if self.p_good_to_bad + self.p_bad_to_good == 0:
            raise ValueError("gilbert: p_good_to_bad and p_bad_to_good cannot both be 0")

    @property
    def mean_loss(self) -> float:
        """The long-run loss rate: the share of packets in each state times its loss."""
        bad_share = self.p_good_to_bad / (self.p_good_to_bad + self.p_bad_to_good)
        return bad_share * self.loss_bad + (1 - bad_share) * self.loss_good


@dataclass(frozen=True)
class DelaySpikes:
    """Every ``every_s`` seconds (+-50 %, seeded), the link holds every packet for ``hold_ms`` and
    then releases them together: what a Wi-Fi background scan does to a call."""

    every_s: float
    hold_ms: float

    def __post_init__(self) -> None:
        if self.every_s <= 0 or self.hold_ms < 0:
            raise ValueError(f"spikes: every_s must be > 0 and hold_ms >= 0: {self}")


@dataclass(frozen=True)
class DirectionSettings:
    """How one direction of the link treats UDP packets. The defaults are a perfect link."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder: float = 0.0
    """Probability that a packet ignores the no-overtaking rule (so jitter can reorder it)."""
    loss: float = 0.0
    """Independent random loss probability."""
    gilbert: GilbertElliott | None = None
    rate: RateLimit | None = None
    spikes: DelaySpikes | None = None

    def __post_init__(self) -> None:
        _check_probabilities("direction", self, ("reorder", "loss"))
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError(f"delay_ms and jitter_ms must be >= 0: {self}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DirectionSettings:
        return _from_dict(cls, data, "direction")


@dataclass(frozen=True)
class Profile:
    """Both directions, and an optional outage ``outage_at_s`` after the profile takes effect."""

    down: DirectionSettings = field(default_factory=DirectionSettings)
    up: DirectionSettings = field(default_factory=DirectionSettings)
    outage_at_s: float | None = None
    outage_s: float = 0.0

    def __post_init__(self) -> None:
        if self.outage_at_s is not None and (self.outage_at_s < 0 or self.outage_s <= 0):
            raise ValueError(f"profile: outage_at_s must be >= 0 and outage_s > 0: {self}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        return _from_dict(cls, data, "profile")


_NESTED = {"down": DirectionSettings, "up": DirectionSettings,
           "gilbert": GilbertElliott, "rate": RateLimit, "spikes": DelaySpikes}

_Settings = TypeVar("_Settings")


def _from_dict(cls: type[_Settings], data: Mapping[str, Any], where: str) -> _Settings:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object, got {data!r}")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    values = {key: _from_dict(_NESTED[key], value, key) if key in _NESTED and value is not None else value
              for key, value in data.items()}
    try:
        return cls(**values)
    except TypeError as error:  # a required key is missing
        raise ValueError(f"{where}: {error}") from None


def _check_probabilities(where: str, settings: object, names: Sequence[str]) -> None:
    for name in names:
        if not 0.0 <= getattr(settings, name) <= 1.0:
            raise ValueError(f"{where}: {name} must be within [0, 1], got {getattr(settings, name)}")


def load_profile(spec: str | Mapping[str, Any]) -> tuple[str, Profile]:
    """A profile name from PROFILES, a JSON object (as text), or a dict -> (label, Profile)."""
    if isinstance(spec, Mapping):
        return "custom", Profile.from_dict(spec)
    if spec in PROFILES:
        return spec, Profile.from_dict(PROFILES[spec])
    if spec.lstrip().startswith("{"):
        return "custom", Profile.from_dict(json.loads(spec))
    raise ValueError(f"unknown profile {spec!r}; known: {', '.join(PROFILES)} (or a JSON object)")


# --------------------------------------------------------------------------------------------
# The pure part: deciding each packet's fate.

class DelayStats:
    """Percentiles of many durations in bounded memory: a histogram with 10 us bins."""

    def __init__(self) -> None:
        self._bins: Counter[int] = Counter()
        self.count = 0

    def add(self, ms: float) -> None:
        self._bins[round(ms * 100)] += 1
        self.count += 1

    def summary(self) -> dict[str, float | int | None]:
        """``count`` and ``p50``/``p95``/``max`` in ms (None before the first value)."""
        if not self.count:
            return {"count": 0, "p50": None, "p95": None, "max": None}
        ranks = {"p50": math.ceil(0.50 * self.count), "p95": math.ceil(0.95 * self.count)}
        result: dict[str, float | int | None] = {"count": self.count}
        seen = 0
        for key in sorted(self._bins):
            seen += self._bins[key]
            for name, rank in ranks.items():
                if name not in result and seen >= rank:
                    result[name] = key / 100
        result["max"] = max(self._bins) / 100
        return result


class Shaper:
    """One direction of an impaired link: decides when each packet leaves, or why it is dropped.

    Pure and deterministic: no sockets and no clock (the caller passes the times, in seconds on
    any clock), and all randomness from ``random.Random(seed)``, so the same seed and the same
    packets give the same decisions. A packet goes through, in order: an outage (dropped); the
    rate limiter's queue (dropped if it would wait longer than ``queue_ms``, so the packet never
    used the link); random loss and Gilbert-Elliott loss; then delay, jitter and delay spikes.
    Packets of one ``flow`` leave in the order they came, as on a real access link, unless
    ``reorder`` lets one skip the line.
    """

    def __init__(self, settings: DirectionSettings | Mapping[str, Any], seed: int | str = 0) -> None:
        self._rng = random.Random(seed)
        # Spikes come from their own stream, so their times do not depend on the traffic.
        self._spike_rng = random.Random(f"spikes:{seed}")
        self._outages: list[tuple[float, float]] = []
        self._last_departure: dict[Hashable, float] = {}
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.dropped: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
        self.delay = DelayStats()
        self.reconfigure(settings)

    def reconfigure(self, settings: DirectionSettings | Mapping[str, Any]) -> None:
        """Switch to new settings mid-run. Counters, outages and packet order carry over; the
        rate limiter's queue, the loss state and the spike schedule start afresh."""
        self.settings = settings if isinstance(settings, DirectionSettings) else DirectionSettings.from_dict(settings)
        self._queue_clear_at = -math.inf  # when the token bucket is full again
        self._in_bad_state = False
        self._spike_start: float | None = None

    def add_outage(self, start_s: float, end_s: float) -> None:
        """Drop every packet that arrives in [start_s, end_s)."""
        self._outages.append((start_s, end_s))

    def admit(self, now_s: float, size_bytes: int, flow: Hashable = None) -> float | None:
        """A packet of ``size_bytes`` arrives at ``now_s``: its departure time, or None if dropped."""
        self.packets_in += 1
        self.bytes_in += size_bytes
        if any(start <= now_s < end for start, end in self._outages):
            return self._drop("outage")
        s = self.settings
        leave = now_s
        if s.rate is not None:
            bytes_per_s = s.rate.kbps * 125
            # Token bucket as a debt horizon: the packet may go once the bucket has refilled
            # enough to hold it, i.e. (burst - size) bytes before it would be full.
            burst = max(s.rate.burst_bytes, size_bytes)
            leave = max(now_s, self._queue_clear_at - (burst - size_bytes) / bytes_per_s)
            if leave - now_s > s.rate.queue_ms / 1000:
                return self._drop("queue")
            self._queue_clear_at = max(self._queue_clear_at, leave) + size_bytes / bytes_per_s
        if s.gilbert is not None:
            switch = s.gilbert.p_bad_to_good if self._in_bad_state else s.gilbert.p_good_to_bad
            if self._rng.random() < switch:
                self._in_bad_state = not self._in_bad_state
        if s.loss and self._rng.random() < s.loss:
            return self._drop("loss")
        if s.gilbert is not None:
            loss = s.gilbert.loss_bad if self._in_bad_state else s.gilbert.loss_good
            if self._rng.random() < loss:
                return self._drop("burst_loss")
        delay_ms = s.delay_ms + (self._rng.uniform(-s.jitter_ms, s.jitter_ms) if s.jitter_ms else 0.0)
        departure = leave + max(0.0, delay_ms) / 1000 + self._spike_hold(now_s)
        if not (s.reorder and self._rng.random() < s.reorder):
            departure = max(departure, self._last_departure.get(flow, -math.inf))
            self._last_departure[flow] = departure
        self.packets_out += 1
        self.bytes_out += size_bytes
        self.delay.add((departure - now_s) * 1000)
        return departure

    def counters(self) -> dict[str, Any]:
        return {"packets_in": self.packets_in, "bytes_in": self.bytes_in,
                "packets_out": self.packets_out, "bytes_out": self.bytes_out,
                "dropped": dict(self.dropped), "delay_ms": self.delay.summary()}

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        return None

    def _spike_hold(self, now_s: float) -> float:
        """Seconds a packet arriving now waits for the current delay spike to end (0 if none)."""
        spikes = self.settings.spikes
        if spikes is None:
            return 0.0
        hold_s = spikes.hold_ms / 1000
        if self._spike_start is None:
            self._spike_start = now_s + self._spike_gap(spikes, hold_s)
        while now_s >= self._spike_start + hold_s:
            self._spike_start += self._spike_gap(spikes, hold_s)
        return self._spike_start + hold_s - now_s if now_s >= self._spike_start else 0.0

    def _spike_gap(self, spikes: DelaySpikes, hold_s: float) -> float:
        return max(hold_s, spikes.every_s * self._spike_rng.uniform(0.5, 1.5))


class Link:
    """Both directions of one impaired link and its outages (which also hold TCP). Pure: times
    are seconds on the caller's clock, usually since the relay started."""

    def __init__(self, profile: Profile, seed: int, now_s: float = 0.0) -> None:
        self.down = Shaper(profile.down, seed=f"{seed}:down")
        self.up = Shaper(profile.up, seed=f"{seed}:up")
        self.outages: list[dict[str, Any]] = []
        self._schedule_profile_outage(profile, now_s)

    def set_profile(self, profile: Profile, now_s: float) -> None:
        self.down.reconfigure(profile.down)
        self.up.reconfigure(profile.up)
        self._schedule_profile_outage(profile, now_s)

    def outage(self, start_s: float, duration_s: float, source: str = "command") -> dict[str, Any]:
        """Cut both directions for ``duration_s`` from ``start_s``; returns the outage's record."""
        start_s, end_s = round(start_s, 4), round(start_s + duration_s, 4)
        record = {"start_s": start_s, "end_s": end_s, "source": source}
        self.outages.append(record)
        for shaper in (self.down, self.up):
            shaper.add_outage(start_s, end_s)
        return record

    def stalled_until(self, now_s: float) -> float | None:
        """The end of the outage in force at ``now_s``, or None if the link is up."""
        ends = [o["end_s"] for o in self.outages if o["start_s"] <= now_s < o["end_s"]]
        return max(ends) if ends else None

    def _schedule_profile_outage(self, profile: Profile, now_s: float) -> None:
        if profile.outage_at_s is not None:
            self.outage(now_s + profile.outage_at_s, profile.outage_s, source="profile")


# --------------------------------------------------------------------------------------------
# Network namespaces

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
_NAME_PATTERN = re.compile(r"avp-(\d+)-\d+")
_namespace_numbers = itertools.count()
_T = TypeVar("_T")


def call_in_netns(name: str, fn: Callable[..., _T], *args: Any) -> _T:
    """Run ``fn(*args)`` on a short-lived thread that joined network namespace ``name``.

    A socket stays in the namespace it was created in, so this is how one process in the root
    namespace owns sockets inside another. Only that thread switches, and it ends right after,
    so nothing else ever runs there by accident. Python 3.11 has no ``os.setns``: libc's, via ctypes.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(NETNS_DIR / name, os.O_RDONLY)
            try:
                if _libc().setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into network namespace {name}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            outcome["value"] = fn(*args)
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name=f"netns-{name}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def cleanup_stale() -> list[str]:
    """Delete ``avp-<pid>-<n>`` namespaces whose creating process is gone (a test killed before
    its ``finally``); returns their names."""
    removed = []
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        match = _NAME_PATTERN.fullmatch(name)
        if match and not _pid_alive(int(match.group(1))):
            _ip("netns", "delete", name)
            removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NetNamespace:
    """A private network namespace with only loopback (up): where the browser lives.

        with NetNamespace() as ns:
            subprocess.run(ns.wrap(["python3", "client.py"]))
    """

    def __init__(self) -> None:
        self.name = f"avp-{os.getpid()}-{next(_namespace_numbers)}"

    def __enter__(self) -> NetNamespace:
        cleanup_stale()
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
        except RuntimeError:
            _ip("netns", "delete", self.name)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        _ip("netns", "delete", self.name)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` with sockets it creates inside this namespace (see ``call_in_netns``)."""
        return call_in_netns(self.name, fn, *args)


def chromium_wrapper(ns: NetNamespace | str, directory: Path | str, chromium: str = "/usr/bin/chromium") -> Path:
    """Write an executable script that runs ``chromium`` inside ``ns``, for Playwright's
    ``executable_path``. Playwright talks to Chromium over inherited pipes, which ``ip netns
    exec`` passes through untouched."""
    name = ns.name if isinstance(ns, NetNamespace) else ns
    ip = shutil.which("ip")
    if ip is None:
        raise RuntimeError("no `ip` command (iproute2) on PATH")
    path = Path(directory) / f"chromium-in-{name}"
    path.write_text(f"#!/bin/sh\n# Chromium inside network namespace {name} (tools/netimpair.py)\n"
                    f'exec {shlex.quote(ip)} netns exec {shlex.quote(name)} {shlex.quote(chromium)} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# --------------------------------------------------------------------------------------------
# The relay process

Address = tuple[str, int]


def parse_address(text: str) -> Address:
    """``"127.0.0.1:7882"`` -> ``("127.0.0.1", 7882)``. Only IPv4 loopback: this relay must
    never send anything off the machine."""
    host, _, port = text.rpartition(":")
    try:
        address = ipaddress.IPv4Address(host)
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected IPV4:PORT, got {text!r}") from None
    if not address.is_loopback or not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: only loopback addresses (127.0.0.0/8) with a port")
    return str(address), number


def _format(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


@dataclass
class _SendStats:
    """What the relay did with admitted packets: how late it sent them against their departure."""

    sent: int = 0
    send_errors: int = 0
    pending: int = 0
    late: DelayStats = field(default_factory=DelayStats)

    def summary(self) -> dict[str, Any]:
        return {"sent": self.sent, "send_errors": self.send_errors, "unsent": self.pending,
                "send_late_ms": self.late.summary()}


@dataclass
class _UdpFlow:
    """One client address of one relayed UDP port, with its own upstream socket (symmetric NAT)."""

    client: Address
    target: Address
    upstream: socket.socket
    upstream_address: Address
    to_client: Callable[[bytes], object]
    first_seen_s: float
    packets_up: int = 0
    packets_down: int = 0

    def summary(self) -> dict[str, Any]:
        return {"client": _format(self.client), "target": _format(self.target),
                "upstream": _format(self.upstream_address), "first_seen_s": round(self.first_seen_s, 3),
                "packets_up": self.packets_up, "packets_down": self.packets_down}


def _drain(sock: socket.socket) -> Iterator[tuple[bytes, Address]]:
    """Every datagram waiting on a non-blocking socket."""
    while True:
        try:
            yield sock.recvfrom(65536)
        except BlockingIOError:
            return
        except ConnectionRefusedError:  # an ICMP port-unreachable for an earlier send: skip it
            continue


class _Relay:
    """Listeners inside the namespace, upstream sockets in the root namespace, one asyncio loop.

    Times are seconds since the relay started on ``loop.time()``, i.e. CLOCK_MONOTONIC, which
    other processes share: ``t0_monotonic`` in the ready line converts."""

    def __init__(self, args: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> None:
        self.args = args
        self.loop = loop
        self.t0 = loop.time()
        self.profile_label, profile = load_profile(args.profile)
        self.link = Link(profile, args.seed)
        self.sends = {"down": _SendStats(), "up": _SendStats()}
        self.flows: list[_UdpFlow] = []
        self.tcp = {"connections": 0, "refused": 0, "bytes_up": 0, "bytes_down": 0,
                    "stalled_chunks": 0, "stalled_s_max": 0.0}
        self._sockets: list[socket.socket] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self.stopped = asyncio.Event()
        self.stop_reason = ""

    def now(self) -> float:
        return self.loop.time() - self.t0

    async def bind(self) -> None:
        """Bind every listener inside the namespace (raises OSError if an address is taken)."""
        for target in self.args.udp:
            listener = call_in_netns(self.args.netns, _bound_socket, socket.SOCK_DGRAM, target)
            self._sockets.append(listener)
            self.loop.add_reader(listener.fileno(), self._from_clients, listener, target, {})
        for target in self.args.tcp:
            listener = call_in_netns(self.args.netns, _bound_socket, socket.SOCK_STREAM, target)
            self._servers.append(await asyncio.start_server(
                lambda r, w, target=target: self._serve_tcp(target, r, w), sock=listener))

    def stop(self, reason: str) -> None:
        if not self.stopped.is_set():
            self.stop_reason = reason
            self.stopped.set()

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for writer in self._tcp_writers:
            writer.close()
        for sock in self._sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    # UDP ------------------------------------------------------------------------------------

    def _from_clients(self, listener: socket.socket, target: Address, flows: dict[Address, _UdpFlow]) -> None:
        for data, client in _drain(listener):
            flow = flows.get(client)
            if flow is None:
                flow = flows[client] = self._open_flow(listener, client, target)
            flow.packets_up += 1
            self._forward("up", flow, data, flow.upstream.send)

    def _open_flow(self, listener: socket.socket, client: Address, target: Address) -> _UdpFlow:
        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        upstream.setblocking(False)
        upstream.bind(("127.0.0.1", 0))
        upstream.connect(target)  # only the server's replies come back on it
        flow = _UdpFlow(client, target, upstream, upstream.getsockname(),
                        lambda data: listener.sendto(data, client), self.now())
        self._sockets.append(upstream)
        self.flows.append(flow)
        self.loop.add_reader(upstream.fileno(), self._from_server, flow)
        return flow

    def _from_server(self, flow: _UdpFlow) -> None:
        for data, _ in _drain(flow.upstream):
            flow.packets_down += 1
            self._forward("down", flow, data, flow.to_client)

    def _forward(self, direction: str, flow: _UdpFlow, data: bytes, send: Callable[[bytes], object]) -> None:
        now = self.now()
        departure = getattr(self.link, direction).admit(now, len(data), flow=id(flow))
        if departure is None:
            return
        if departure <= now:
            self._send(direction, send, data, departure)
        else:
            self.sends[direction].pending += 1
            self.loop.call_at(self.t0 + departure, self._send_scheduled, direction, send, data, departure)

    def _send_scheduled(self, direction: str, send: Callable[[bytes], object], data: bytes, departure: float) -> None:
        self.sends[direction].pending -= 1
        self._send(direction, send, data, departure)

    def _send(self, direction: str, send: Callable[[bytes], object], data: bytes, departure: float) -> None:
        stats = self.sends[direction]
        stats.late.add((self.now() - departure) * 1000)
        try:
            send(data)
            stats.sent += 1
        except OSError:  # e.g. the socket buffer is full or the peer's port is closed: a loss
            stats.send_errors += 1

    # TCP ------------------------------------------------------------------------------------

    async def _serve_tcp(self, target: Address, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tcp["connections"] += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        except OSError:
            self.tcp["refused"] += 1
            writer.close()
            return
        pair = (writer, upstream_writer)
        self._tcp_writers.update(pair)
        await asyncio.gather(self._pump(reader, upstream_writer, "bytes_up", pair),
                             self._pump(upstream_reader, writer, "bytes_down", pair))
        for w in pair:
            w.close()
            self._tcp_writers.discard(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str,
                    pair: tuple[asyncio.StreamWriter, ...]) -> None:
        """Copy one direction of a TCP connection, holding the bytes while the link is out."""
        try:
            while True:
                data = await reader.read(1 << 18)
                await self._hold_during_outage()  # the end of the stream too: no FIN gets through
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                self.tcp[counter] += len(data)
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:  # reset or broken pipe: end both directions
            for w in pair:
                w.close()

    async def _hold_during_outage(self) -> None:
        held_since = self.now()
        while (until := self.link.stalled_until(self.now())) is not None:
            await asyncio.sleep(until - self.now())
        if (held := self.now() - held_since) > 0.001:
            self.tcp["stalled_chunks"] += 1
            self.tcp["stalled_s_max"] = round(max(self.tcp["stalled_s_max"], held), 3)

    # Control --------------------------------------------------------------------------------

    def command(self, line: bytes) -> None:
        """One JSON control line from stdin; answers with one JSON line on stdout."""
        try:
            request = json.loads(line)
            cmd = request["cmd"]
            if cmd == "outage":
                duration_s = float(request["duration_s"])
                if not 0 < duration_s < 3600:
                    raise ValueError(f"duration_s must be within (0, 3600), got {duration_s}")
                _emit({"event": "outage", **self.link.outage(self.now(), duration_s)})
            elif cmd == "profile":
                label, profile = load_profile(request["profile"] if "profile" in request else request["name"])
                self.link.set_profile(profile, self.now())
                self.profile_label = label
                _emit({"event": "profile", "profile": label, "t_s": round(self.now(), 4)})
            elif cmd == "stats":
                _emit({"event": "stats", **self.stats()})
            else:
                raise ValueError(f"unknown cmd {cmd!r}; known: outage, profile, stats")
        except (ValueError, KeyError, TypeError) as error:
            _emit({"event": "error", "error": f"{type(error).__name__}: {error}",
                   "line": line.decode(errors="replace")})

    def stats(self) -> dict[str, Any]:
        return {
            "t_s": round(self.now(), 3),
            "cpu_s": round(time.process_time(), 3),
            "profile": self.profile_label,
            "seed": self.args.seed,
            "udp": {d: {**getattr(self.link, d).counters(), **self.sends[d].summary()} for d in ("down", "up")},
            "tcp": dict(self.tcp),
            "outages": list(self.link.outages),
            "flows": [flow.summary() for flow in self.flows],
        }


def _bound_socket(kind: int, address: Address) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # Rebind over the last run's TIME_WAIT. Not for UDP: there it would let two relays
            # share one address and split its packets between them, silently.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def _read_commands(loop: asyncio.AbstractEventLoop, relay: _Relay) -> None:
    """Forward stdin lines to the loop; stop the relay at EOF. Raw ``os.read`` on purpose: a
    daemon thread blocked inside ``sys.stdin``'s buffered reader can abort interpreter shutdown."""

    def post(callback: Callable[..., object], *args: object) -> None:
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the relay already stopped for another reason
            pass

    pending = b""
    try:
        while chunk := os.read(0, 4096):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in filter(bytes.strip, lines):
                post(relay.command, line)
    except OSError:  # no usable stdin: the same as its end
        pending = b""
    if pending.strip():
        post(relay.command, pending)
    post(relay.stop, "stdin closed")


async def _watch_parent(relay: _Relay, parent: int) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(0.2)
    relay.stop("parent exited")


async def _run(args: argparse.Namespace, realtime: bool) -> int:
    loop = asyncio.get_running_loop()
    relay = _Relay(args, loop)
    try:
        await relay.bind()
    except OSError as error:
        print(f"netimpair: cannot listen inside namespace {args.netns}: {error}", file=sys.stderr)
        return 2
    loop.call_later(args.max_duration_s, relay.stop, "max duration")
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop, sig.name)
    watcher = loop.create_task(_watch_parent(relay, os.getppid()))
    threading.Thread(target=_read_commands, args=(loop, relay), name="stdin", daemon=True).start()
    _emit({"event": "ready", "pid": os.getpid(), "netns": args.netns, "profile": relay.profile_label,
           "seed": args.seed, "udp": [_format(a) for a in args.udp], "tcp": [_format(a) for a in args.tcp],
           "t0_monotonic": relay.t0, "realtime": realtime})
    await relay.stopped.wait()
    watcher.cancel()
    final = {"event": "final", "stop_reason": relay.stop_reason, **relay.stats()}
    relay.close()
    if args.stats_file:
        Path(args.stats_file).write_text(json.dumps(final, indent=1) + "\n")
    _emit(final)
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="netimpair.py",
        description="Relay 127.0.0.1 ports from inside a network namespace to the root namespace, "
                    "impairing UDP per direction (docs/network-profiles.md). Control: JSON lines on stdin "
                    '({"cmd": "outage", "duration_s": 1.5}, {"cmd": "profile", "name": "4g"}, {"cmd": "stats"}); '
                    "stops at stdin EOF, SIGTERM/SIGINT, --max-duration-s or when its parent exits.")
    parser.add_argument("--netns", required=True, help="the namespace to listen in (ip netns add NAME)")
    parser.add_argument("--udp", type=parse_address, action="append", default=[], metavar="IP:PORT",
                        help="relay (and impair) this UDP address; repeatable")
    parser.add_argument("--tcp", type=parse_address, action="append", default=[], metavar="IP:PORT",
                        help="relay this TCP address (unimpaired, held during outages); repeatable")
    parser.add_argument("--profile", default="perfect",
                        help=f"one of {', '.join(PROFILES)}, or a profile as a JSON object")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-duration-s", type=float, default=300.0)
    parser.add_argument("--stats-file", type=Path, help="also write the final stats here (JSON)")
    args = parser.parse_args(argv)
    if not args.udp and not args.tcp:
        parser.error("nothing to relay: give at least one --udp or --tcp")
    if not (NETNS_DIR / args.netns).exists():
        parser.error(f"no network namespace {args.netns!r} (create it with: ip netns add {args.netns})")
    try:
        load_profile(args.profile)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:  # round-robin real-time priority: sends stay on time while the machine is busy
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))
        realtime = True
    except OSError:
        realtime = False
    # select(2) takes its timeout in microseconds; epoll, asyncio's default, in milliseconds,
    # rounded up, which would send packets up to 1 ms late. A handful of sockets: select is cheap.
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selectors.SelectSelector())) as runner:
        return runner.run(_run(args, realtime))


# --------------------------------------------------------------------------------------------
# The relay from Python: tests and benchmarks

class ImpairedLink:
    """The relay as a subprocess, started at construction and ready when it returns.

        with NetNamespace() as ns, ImpairedLink(ns, udp=["127.0.0.1:7882"], tcp=["127.0.0.1:7880"],
                                                profile="4g") as link:
            ...                       # a browser in ns talks to the SFU through the link
            link.outage(1.5)          # mid-turn
            final = link.close()      # the relay's final stats
    """

    def __init__(self, ns: NetNamespace | str, *, udp: Sequence[str] = (), tcp: Sequence[str] = (),
                 profile: str | Mapping[str, Any] = "perfect", seed: int = 1, max_duration_s: float = 300.0,
                 stats_file: Path | str | None = None, ready_timeout_s: float = 10.0) -> None:
        name = ns.name if isinstance(ns, NetNamespace) else ns
        argv = [sys.executable, str(Path(__file__).resolve()), "--netns", name,
                "--profile", profile if isinstance(profile, str) else json.dumps(profile),
                "--seed", str(seed), "--max-duration-s", str(max_duration_s)]
        argv += [arg for address in udp for arg in ("--udp", address)]
        argv += [arg for address in tcp for arg in ("--tcp", address)]
        if stats_file is not None:
            argv += ["--stats-file", str(stats_file)]
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read_events, name="netimpair-events", daemon=True).start()
        self.final: dict[str, Any] | None = None
        try:
            self.ready = self._next_event("ready", ready_timeout_s)
        except RuntimeError:
            self._kill()
            raise

    def __enter__(self) -> ImpairedLink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
        else:  # the failure in the body is the story: do not bury it under a shutdown error
            self._kill()

    def outage(self, duration_s: float) -> dict[str, Any]:
        """Cut the link now for ``duration_s``; returns ``start_s``/``end_s`` on the relay's clock
        (add ``self.ready["t0_monotonic"]`` for ``time.monotonic()``)."""
        return self._request({"cmd": "outage", "duration_s": duration_s}, "outage")

    def set_profile(self, profile: str | Mapping[str, Any]) -> dict[str, Any]:
        """Switch to a named profile or a profile dict, from now on."""
        key = "name" if isinstance(profile, str) else "profile"
        return self._request({"cmd": "profile", key: profile}, "profile")

    def stats(self) -> dict[str, Any]:
        return self._request({"cmd": "stats"}, "stats")

    def close(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Close the relay's stdin (it stops), and return its final stats."""
        if self.final is None:
            self.process.stdin.close()
            try:
                self.final = self._next_event("final", timeout_s)
                self.process.wait(timeout_s)
            finally:
                self._kill()
        return self.final

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _request(self, request: dict[str, Any], event: str) -> dict[str, Any]:
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()
        return self._next_event(event, 5.0)

    def _read_events(self) -> None:
        for line in self.process.stdout:
            self._events.put(json.loads(line))
        self._events.put(None)

    def _next_event(self, expected: str, timeout_s: float) -> dict[str, Any]:
        try:
            event = self._events.get(timeout=timeout_s)
        except queue.Empty:
            raise RuntimeError(f"netimpair relay: no {expected!r} line within {timeout_s} s; "
                               f"stderr:\n{self.stderr_text()}") from None
        if event is None:
            raise RuntimeError(f"netimpair relay exited (code {self.process.wait()}) before {expected!r}; "
                               f"stderr:\n{self.stderr_text()}")
        if event["event"] == "error":
            raise ValueError(f"netimpair relay refused a command: {event['error']}")
        if event["event"] != expected:
            raise RuntimeError(f"netimpair relay: expected {expected!r}, got {event}")
        return event

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


if __name__ == "__main__":
    sys.exit(main())
