"""The avatar worker against a real LiveKit server, watched by a Python ``livekit`` subscriber.

Each test starts the pinned livekit-server (tests/worker/conftest.py) on free loopback ports and
runs ``python -m avatar_worker`` as a subprocess, exactly as a user would. These tests fail, not
skip, when the server binary is missing: build it with ``python3 tools/bootstrap.py browser``.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from livekit import api, rtc

from avatarplayer.constants import FRAME_INTERVAL_MS

if TYPE_CHECKING:
    from tools.devstack import LiveKitServer

ROOT = Path(__file__).resolve().parents[2]
WORKER_IDENTITY = "avatar-worker"


# --------------------------------------------------------------------------------- helpers


@dataclass
class Seen:
    """What the subscriber saw of the worker."""

    participant_kind: int | None = None
    tracks: dict[str, tuple[str, str]] = field(default_factory=dict)
    """publication name → (source name, mime type)"""
    video: list[tuple[float, int, int]] = field(default_factory=list)
    """(receive time, width, height) per decoded frame"""
    audio_samples: int = 0
    loud_audio_frames: int = 0
    left_at: float | None = None
    subscriptions: int = 0


class Viewer:
    """A Python subscriber in the room: records the worker's tracks, frames and audio."""

    def __init__(self, server: LiveKitServer, room_name: str, identity: str = "viewer") -> None:
        self.server = server
        self.room_name = room_name
        self.identity = identity
        self.seen = Seen()
        self.room: rtc.Room | None = None
        self._readers: list[asyncio.Task[None]] = []

    def token(self) -> str:
        grants = api.VideoGrants(room_join=True, room=self.room_name, can_publish=False)
        return (api.AccessToken(self.server.api_key, self.server.api_secret)
                .with_identity(self.identity).with_grants(grants).to_jwt())

    async def connect(self) -> None:
        room = rtc.Room()
        self.room = room

        @room.on("track_subscribed")
        def _subscribed(track: rtc.Track, pub: rtc.RemoteTrackPublication, part: rtc.RemoteParticipant) -> None:
            if part.identity != WORKER_IDENTITY:
                return
            self.seen.participant_kind = part.kind
            self.seen.tracks[pub.name] = (rtc.TrackSource.Name(pub.source), pub.mime_type)
            self.seen.subscriptions += 1
            reader = self._read_video(track) if track.kind == rtc.TrackKind.KIND_VIDEO else self._read_audio(track)
            self._readers.append(asyncio.create_task(reader))

        @room.on("participant_disconnected")
        def _left(part: rtc.RemoteParticipant) -> None:
            if part.identity == WORKER_IDENTITY:
                self.seen.left_at = time.time()

        await room.connect(self.server.url, self.token())

    async def _read_video(self, track: rtc.Track) -> None:
        async for event in rtc.VideoStream(track):
            self.seen.video.append((time.time(), event.frame.width, event.frame.height))

    async def _read_audio(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
            samples = array.array("h", bytes(event.frame.data))
            self.seen.audio_samples += len(samples)
            if samples and max(samples) > 1000:  # the scripted 400 Hz tone peaks near 3277
                self.seen.loud_audio_frames += 1

    def frames_16x16(self, since: float = 0.0) -> int:
        return sum(1 for t, w, h in self.seen.video if (w, h) == (16, 16) and t >= since)

    async def close(self) -> None:
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self.room is not None:
            await self.room.disconnect()


def start_worker(server: LiveKitServer, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key,
               LIVEKIT_API_SECRET=server.api_secret)
    return subprocess.Popen(
        [sys.executable, "-m", "avatar_worker", *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=(tmp_path / "worker.log").open("w"),
    )


def summary_of(proc: subprocess.Popen[str], timeout: float) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, "the worker printed no summary"
    return json.loads(lines[-1])


def play_then_stop(worker: subprocess.Popen, scenario: Any, tmp_path: Path) -> tuple[dict, str]:
    """Run ``scenario()`` against the worker, then stop it with SIGTERM (killed if need be);
    returns its summary and its log."""
    try:
        asyncio.run(scenario())
        worker.send_signal(signal.SIGTERM)
        summary = summary_of(worker, 20)
    finally:
        if worker.poll() is None:
            worker.kill()
    return summary, (tmp_path / "worker.log").read_text()


def send_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


# ----------------------------------------------------------------------------------- tests


def test_server_binary_is_there(livekit_server_binary: Path) -> None:
    """A missing binary is a failure, not a skip: the live suite is part of the product."""
    assert livekit_server_binary.is_file(), (
        f"{livekit_server_binary} missing: run `python3 tools/bootstrap.py browser`")


def test_scripted_run_publishes_motion_and_audio(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """Tracks, kinds and sources; 16x16 frames and tone audio arrive; pacing over 500 frames."""
    frames = 500
    log_path = tmp_path / "sent.jsonl"
    worker = start_worker(livekit_server, tmp_path, "--room", "live", "--mode", "scripted",
                          "--frames", str(frames), "--wait-for-participant", "--lead-in-ms", "500",
                          "--exit-when-done", "--send-log", str(log_path), "--realtime")
    viewer = Viewer(livekit_server, "live")

    async def watch() -> None:
        await viewer.connect()
        await wait_for(lambda: len(viewer.seen.tracks) == 2, 15, "both worker tracks")
        await asyncio.to_thread(worker.wait, 60)
        await viewer.close()

    try:
        asyncio.run(watch())
        summary = summary_of(worker, 10)
    finally:
        if worker.poll() is None:
            worker.kill()
    seen = viewer.seen
    log = (tmp_path / "worker.log").read_text()

    assert worker.returncode == 0, log[-3000:]
    assert summary["outcome"] == "done" and summary["frames_sent"] == frames
    assert seen.participant_kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    assert seen.tracks["avatar-motion"] == ("SOURCE_CAMERA", "video/VP8")
    source, mime = seen.tracks["avatar-audio"]
    assert source == "SOURCE_MICROPHONE" and mime in ("audio/opus", "audio/red")

    records = send_log(log_path)
    turn = [r for r in records if r["kind"] == "frame"]
    assert [r["seq"] for r in turn] == list(range(frames)) and all(r["sent"] for r in turn)
    t_first, t_last = turn[0]["t_ms"] / 1000, turn[-1]["t_ms"] / 1000
    received = viewer.frames_16x16(since=t_first)
    sent_since = sum(1 for r in records if r["t_ms"] / 1000 >= t_first and r["sent"])
    print(f"\nsubscriber: {received} decoded 16x16 frames for {sent_since} sent, "
          f"{seen.audio_samples / 48000:.1f} s of audio, {seen.loud_audio_frames} 10 ms frames with the tone")
    # every carrier frame decodes as the 16x16 prefix; allow for the tail still in flight at exit
    assert received >= 0.95 * sent_since, (received, sent_since)
    # 20 s of turn audio with the tone, at 48 kHz
    assert seen.audio_samples >= 48000 * (t_last - t_first) * 0.9
    assert seen.loud_audio_frames >= 0.8 * (t_last - t_first) * 100  # AudioStream yields 10 ms frames

    intervals = [b["t_ms"] - a["t_ms"] for a, b in zip(turn, turn[1:])]
    mean, stdev, median = statistics.mean(intervals), statistics.stdev(intervals), statistics.median(intervals)
    print(f"\ncapture intervals over {frames} frames: mean {mean:.3f} ms, median {median:.3f} ms, "
          f"stdev {stdev:.3f} ms, max {max(intervals):.2f} ms; late ticks {summary['late']}, "
          f"max late {summary['max_late_ms']} ms, resyncs {summary['resyncs']}, realtime {summary['realtime']}")
    # Absolute deadlines: no drift, whatever the jitter. A resync (a stall of 200 ms or more, when
    # the machine is overloaded) moves the schedule by up to one stall.
    drift_ms = abs(sum(intervals) - FRAME_INTERVAL_MS * len(intervals))
    assert drift_ms <= 2.0 + summary["resyncs"] * 1000, drift_ms
    assert median == pytest.approx(FRAME_INTERVAL_MS, abs=1.0)
    # How tight the pacing is (stdev, max) depends on the host's load: bench/ measures it, printed above.


def test_sigterm_mid_turn_exits_cleanly(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """SIGTERM: the open turn is closed with TRANSITION_END, tracks unpublished, exit 0."""
    log_path = tmp_path / "sent.jsonl"
    worker = start_worker(livekit_server, tmp_path, "--room", "term", "--mode", "speech",
                          "--text", "This sentence is long enough to still be playing when the signal arrives.",
                          "--wait-for-participant", "--lead-in-ms", "200", "--send-log", str(log_path))
    viewer = Viewer(livekit_server, "term")

    async def watch() -> float:
        await viewer.connect()
        await wait_for(lambda: viewer.frames_16x16() > 0 and viewer.seen.audio_samples > 0, 15, "media")
        await asyncio.sleep(1.5)  # the lead-in is over: mid-turn now
        sent_at = time.time()
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 15)
        await wait_for(lambda: viewer.seen.left_at is not None, 10, "the worker to leave")
        await viewer.close()
        return sent_at

    try:
        sent_at = asyncio.run(watch())
        summary = summary_of(worker, 5)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert summary["outcome"] == "signal" and summary["turns_interrupted"] == 1
    assert viewer.seen.left_at is not None and viewer.seen.left_at - sent_at < 5
    records = send_log(log_path)
    assert records[-1]["kind"] == "transition_end"
    assert any(r["kind"] == "frame" and r["flags"] & 0x02 for r in records)  # START went out
    assert not any(r["kind"] == "frame" and r["flags"] & 0x04 for r in records)  # END never did


def test_worker_survives_a_server_restart(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """Kill the server mid-run and start it again: the worker comes back and publishes again."""
    worker = start_worker(livekit_server, tmp_path, "--room", "phoenix", "--mode", "scripted",
                          "--frames", "50", "--turns", "1000", "--turn-gap-ms", "200")
    try:
        async def before() -> None:
            viewer = Viewer(livekit_server, "phoenix", "viewer-1")
            await viewer.connect()
            await wait_for(lambda: viewer.frames_16x16() > 25, 15, "frames before the restart")
            await viewer.close()

        asyncio.run(before())
        livekit_server.restart(kill=True)

        async def after() -> Viewer:
            viewer = Viewer(livekit_server, "phoenix", "viewer-2")
            await viewer.connect()
            await wait_for(lambda: viewer.frames_16x16() > 25 and viewer.seen.loud_audio_frames > 10, 30,
                           "frames after the restart")
            await viewer.close()
            return viewer

        viewer = asyncio.run(after())
        assert viewer.seen.tracks["avatar-motion"] == ("SOURCE_CAMERA", "video/VP8")
        worker.send_signal(signal.SIGTERM)
        summary = summary_of(worker, 20)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert summary["outcome"] == "signal"


def test_leave_after_drops_out_mid_turn(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """--leave-after N: N frames of the turn, no END, no TRANSITION_END, then gone."""
    log_path = tmp_path / "sent.jsonl"
    worker = start_worker(livekit_server, tmp_path, "--room", "quit", "--mode", "scripted",
                          "--frames", "200", "--leave-after", "60", "--wait-for-participant",
                          "--lead-in-ms", "300", "--send-log", str(log_path))
    viewer = Viewer(livekit_server, "quit")

    async def watch() -> None:
        await viewer.connect()
        await asyncio.to_thread(worker.wait, 30)
        await wait_for(lambda: viewer.seen.left_at is not None, 10, "the worker to leave")
        await viewer.close()

    try:
        asyncio.run(watch())
        summary = summary_of(worker, 5)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0
    assert summary["outcome"] == "left" and summary["frames_sent"] == 60
    records = send_log(log_path)
    assert records[-1]["kind"] == "frame" and records[-1]["seq"] == 59
    assert not records[-1]["flags"] & 0x04


def test_bad_credentials_fail_fast(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    env = dict(os.environ, LIVEKIT_URL=livekit_server.url, LIVEKIT_API_KEY=livekit_server.api_key,
               LIVEKIT_API_SECRET="not-the-secret-but-long-enough-to-look-real")
    proc = subprocess.run([sys.executable, "-m", "avatar_worker", "--room", "nope", "--mode", "scripted"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert json.loads(proc.stdout.splitlines()[-1])["outcome"] == "join-failed"


def test_worker_takes_its_identity_back_from_an_impostor(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """Someone joins with the worker's identity (a token minted for it with the API secret): the
    server drops the worker as a duplicate. The worker rejoins (which drops the impostor in turn),
    publishes its motion and microphone tracks again within a few seconds, and logs why."""
    worker = start_worker(livekit_server, tmp_path, "--room", "twin", "--mode", "scripted",
                          "--frames", "50", "--turns", "1000", "--turn-gap-ms", "200")
    marks: dict[str, float] = {}
    kicked: list[int] = []
    # the secret reaches the worker through its environment, never its command line
    assert livekit_server.api_secret.encode() not in Path(f"/proc/{worker.pid}/cmdline").read_bytes()

    def worker_back(viewer: Viewer, old_sid: str) -> bool:
        assert viewer.room is not None
        part = viewer.room.remote_participants.get(WORKER_IDENTITY)
        if part is None or part.sid == old_sid or part.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return False
        sources = {pub.source for pub in part.track_publications.values()}
        return {rtc.TrackSource.SOURCE_CAMERA, rtc.TrackSource.SOURCE_MICROPHONE} <= sources

    async def scenario() -> None:
        viewer = Viewer(livekit_server, "twin")
        await viewer.connect()
        assert viewer.room is not None
        await wait_for(lambda: len(viewer.seen.tracks) == 2 and viewer.frames_16x16() > 10, 20,
                       "the worker's tracks and frames")
        old_sid = viewer.room.remote_participants[WORKER_IDENTITY].sid
        impostor = rtc.Room()

        @impostor.on("disconnected")
        def _gone(reason: int) -> None:
            kicked.append(reason)

        marks["impostor"] = time.time()
        await impostor.connect(livekit_server.url, livekit_server.token(WORKER_IDENTITY, "twin"))
        await wait_for(lambda: worker_back(viewer, old_sid), 8, "the worker back in the room with both tracks")
        marks["back"] = time.time()
        await wait_for(lambda: viewer.frames_16x16(since=marks["back"]) > 10, 10, "motion frames after the rejoin")
        await wait_for(lambda: bool(kicked), 5, "the impostor to be dropped")
        await impostor.disconnect()
        await viewer.close()

    summary, log = play_then_stop(worker, scenario, tmp_path)
    print(f"\nworker back {marks['back'] - marks['impostor']:.2f} s after the impostor joined; "
          f"rejoins {summary['rejoins']}, disconnects {summary['disconnects']}")
    assert worker.returncode == 0, log[-3000:]
    assert kicked and set(kicked) == {rtc.DisconnectReason.DUPLICATE_IDENTITY}
    assert "disconnected from the room (DUPLICATE_IDENTITY: another participant joined with our identity" in log
    assert "rejoined the room (attempt 1, after DUPLICATE_IDENTITY" in log, log[-3000:]
    assert summary["outcome"] == "signal"
    # the impostor's own SDK may retry its connect once more (its peer connection never came up
    # once it was dropped): the worker takes the identity back again
    assert summary["rejoins"] >= 1 and set(summary["disconnects"]) == {"DUPLICATE_IDENTITY"}


def test_worker_rejoins_after_being_removed(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """An admin removes the worker through the server API (PARTICIPANT_REMOVED): it comes back."""
    worker = start_worker(livekit_server, tmp_path, "--room", "removed", "--mode", "scripted",
                          "--frames", "50", "--turns", "1000", "--turn-gap-ms", "200")

    async def scenario() -> None:
        viewer = Viewer(livekit_server, "removed")
        await viewer.connect()
        assert viewer.room is not None
        await wait_for(lambda: len(viewer.seen.tracks) == 2, 20, "the worker's tracks")
        old_sid = viewer.room.remote_participants[WORKER_IDENTITY].sid
        lkapi = api.LiveKitAPI(livekit_server.http_url, livekit_server.api_key, livekit_server.api_secret)
        try:
            await lkapi.room.remove_participant(api.RoomParticipantIdentity(room="removed", identity=WORKER_IDENTITY))
        finally:
            await lkapi.aclose()

        def back() -> bool:
            part = viewer.room.remote_participants.get(WORKER_IDENTITY)  # type: ignore[union-attr]
            return part is not None and part.sid != old_sid and len(part.track_publications) == 2

        await wait_for(back, 8, "the worker back after its removal")
        await viewer.close()

    summary, log = play_then_stop(worker, scenario, tmp_path)
    assert summary["rejoins"] == 1 and summary["disconnects"] == {"PARTICIPANT_REMOVED": 1}, log[-3000:]
    assert "disconnected from the room (PARTICIPANT_REMOVED: removed from the room by the server API)" in log


def test_an_impostor_that_keeps_coming_back_meets_a_backoff(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    """Someone who rejoins with the worker's identity each time the worker drops it: no tight loop.
    The worker's waits grow (at once, 1 s, 2 s, 4 s, ...), and once the impostor gives up, the
    worker is back.

    Measured on the worker's side (its log and summary): how often the impostor itself notices being
    dropped depends on the SDK, whose join can hang for seconds when the other side takes the
    identity back during the handshake (seen in CI: an impostor that saw no drop in 10 s)."""
    worker = start_worker(livekit_server, tmp_path, "--room", "fight", "--mode", "scripted",
                          "--frames", "50", "--turns", "1000", "--turn-gap-ms", "200")
    worker_log = tmp_path / "worker.log"
    fight_limit_s = 40.0
    fought: list[float] = []

    async def scenario() -> None:
        viewer = Viewer(livekit_server, "fight")
        await viewer.connect()
        assert viewer.room is not None
        await wait_for(lambda: len(viewer.seen.tracks) == 2, 20, "the worker's tracks")
        start = time.monotonic()
        end = start + fight_limit_s

        def third() -> bool:  # the worker has waited 1 s, then 2 s
            return "rejoin attempt 3 (after DUPLICATE_IDENTITY)" in worker_log.read_text()

        # join as the worker each time it takes its identity back, until its third attempt
        while time.monotonic() < end and not third():
            impostor = rtc.Room()
            gone = asyncio.Event()
            impostor.on("disconnected", lambda reason: gone.set())
            with contextlib.suppress(Exception):  # a join that the worker cut short
                async with asyncio.timeout(max(0.1, end - time.monotonic())):
                    await impostor.connect(livekit_server.url, livekit_server.token(WORKER_IDENTITY, "fight"))
            while not (gone.is_set() or third()) and time.monotonic() < end:
                await asyncio.sleep(0.05)
            await impostor.disconnect()
        fought.append(time.monotonic() - start)

        def back() -> bool:
            part = viewer.room.remote_participants.get(WORKER_IDENTITY)  # type: ignore[union-attr]
            return (part is not None and part.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
                    and len(part.track_publications) == 2)

        # Once the impostor is gone, the worker's next attempt comes after its current wait (at
        # most 8 s after three attempts, 16 s if a fourth went out meanwhile), and a join the
        # impostor cut short can hang for up to connect_timeout + 5 = 15 s before that.
        await wait_for(back, 16 + 15 + 10, "the worker back once the impostor gave up")
        await viewer.close()

    summary, log = play_then_stop(worker, scenario, tmp_path)
    waits = [float(w) for w in re.findall(r"rejoin attempt \d+ \(after DUPLICATE_IDENTITY\) in ([\d.]+) s", log)]
    print(f"\nfought {fought[0]:.1f} s; worker: waits {waits}, rejoins {summary['rejoins']}, "
          f"attempts {summary['rejoin_attempts']}, disconnects {summary['disconnects']}")
    assert "rejoin attempt 1 (after DUPLICATE_IDENTITY) now" in log, log[-3000:]
    # the impostor got as far as the third attempt, and each wait doubled the one before
    assert len(waits) >= 2 and waits == [2.0 ** k for k in range(len(waits))], (waits, log[-3000:])
    # a tight loop would make hundreds of attempts: here at once, 1, 2, 4, 8, 16 s at most
    assert 3 <= summary["rejoin_attempts"] <= 6, summary
    assert summary["rejoins"] >= 1
    assert set(summary["disconnects"]) == {"DUPLICATE_IDENTITY"}
