"""``--audio-report PATH``: what the worker hears from the other participants' audio tracks.

The worker subscribes to every remote audio track (the publisher otherwise subscribes to
nothing), reads it with ``rtc.AudioStream`` as 48 kHz mono int16, and writes JSON lines, flushed
after every record (so at least once a second while audio flows):

- ``{"kind": "audio-track", "event": "subscribed" | "unsubscribed", "identity", "track", "sid", "t_ms"}``
- ``{"kind": "audio", "identity", "track", "sid", "second", "samples", "rms", "peak", "t_ms"}``
  per whole second of samples of one track: ``second`` counts from 0 since the subscription,
  ``samples`` is 48000, ``rms`` is the RMS of the int16 samples (0..32767, one decimal) and
  ``peak`` their largest absolute value (0..32767). A part second left at unsubscription is
  not reported.

``track`` is the publication's name, ``sid`` the track sid, ``t_ms`` ``time.time() * 1000``.
A test that plays a WAV into a browser's fake microphone can then prove that real sound arrived
(non-silent RMS) and that it stopped after the browser unpublished.
"""

from __future__ import annotations

import array
import asyncio
import json
import logging
import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .pcm import SAMPLE_RATE

if TYPE_CHECKING:
    from livekit import rtc

__all__ = ["AudioMeter", "AudioReport", "SecondStats"]

log = logging.getLogger("avatar_worker.audio_report")  # the name it always logged under (serve.py, tests filter on it)

_MAX = 32767


@dataclass(frozen=True, slots=True)
class SecondStats:
    """One whole second of a track's samples."""

    second: int
    samples: int
    rms: float
    peak: int


class AudioMeter:
    """Cuts a stream of int16 mono samples into whole seconds and measures each."""

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        if rate < 1:
            raise ValueError("rate must be >= 1")
        self.rate = rate
        self.second = 0
        self._count = 0
        self._squares = 0
        self._peak = 0

    def feed(self, pcm: bytes | bytearray | memoryview) -> list[SecondStats]:
        """Add native-endian int16 samples; returns the seconds they completed (often none)."""
        raw = pcm.tobytes() if isinstance(pcm, memoryview) else bytes(pcm)  # a memoryview's len counts items
        samples = array.array("h")
        samples.frombytes(raw[: len(raw) - len(raw) % 2])
        done: list[SecondStats] = []
        start = 0
        while start < len(samples):
            take = min(len(samples) - start, self.rate - self._count)
            self._add(samples[start:start + take])
            start += take
            if self._count == self.rate:
                done.append(self._close())
        return done

    def _add(self, part: "array.array[int]") -> None:
        if not part:
            return
        self._count += len(part)
        self._squares += sum(map(operator.mul, part, part))
        self._peak = max(self._peak, min(_MAX, max(max(part), -min(part))))

    def _close(self) -> SecondStats:
        stats = SecondStats(self.second, self._count, round(min(_MAX, math.sqrt(self._squares / self._count)), 1),
                            self._peak)
        self.second += 1
        self._count = self._squares = self._peak = 0
        return stats


class AudioReport:
    """Subscribes to remote audio and writes the report (a ``RoomHook`` for the publisher)."""

    def __init__(self, path: str | Path, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = self.path.open("w", encoding="utf-8")
        self._wall = wall_clock
        self._readers: dict[str, tuple[asyncio.Task[None], dict[str, Any]]] = {}
        """track sid → the task reading it, and the track's identity/track/sid record fields"""

    # ------------------------------------------------------------------------- the hook

    def attach(self, room: rtc.Room) -> None:
        from livekit import rtc

        @room.on("track_published")
        def _published(publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant) -> None:
            if publication.kind == rtc.TrackKind.KIND_AUDIO:
                publication.set_subscribed(True)

        @room.on("track_subscribed")
        def _subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                        participant: rtc.RemoteParticipant) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO and track.sid not in self._readers:
                info = {"identity": participant.identity, "track": publication.name, "sid": track.sid}
                self._write({"kind": "audio-track", "event": "subscribed", **info})
                task = asyncio.get_running_loop().create_task(self._read(track, info), name=f"audio-report-{track.sid}")
                self._readers[track.sid] = (task, info)

        @room.on("track_unsubscribed")
        def _unsubscribed(track: rtc.Track | None, publication: rtc.RemoteTrackPublication,
                          participant: rtc.RemoteParticipant) -> None:
            self._stop(publication.sid)

        @room.on("disconnected")
        def _disconnected(*_: Any) -> None:
            for sid in list(self._readers):  # one room at a time: these are all this room's
                self._stop(sid)

    def joined(self, room: rtc.Room) -> None:
        from livekit import rtc

        for participant in room.remote_participants.values():
            for publication in participant.track_publications.values():
                if publication.kind == rtc.TrackKind.KIND_AUDIO and not publication.subscribed:
                    publication.set_subscribed(True)

    # --------------------------------------------------------------------------- reading

    async def _read(self, track: rtc.Track, info: dict[str, Any]) -> None:
        from livekit import rtc

        meter = AudioMeter()
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        try:
            async for event in stream:
                for stats in meter.feed(event.frame.data):  # native-endian int16
                    self._write({"kind": "audio", **info, "second": stats.second, "samples": stats.samples,
                                 "rms": stats.rms, "peak": stats.peak})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading audio track %s failed", info["sid"])
        finally:
            await asyncio.shield(stream.aclose())

    def _stop(self, sid: str) -> None:
        reader = self._readers.pop(sid, None)
        if reader is None:
            return
        task, info = reader
        task.cancel()
        self._write({"kind": "audio-track", "event": "unsubscribed", **info})

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        record["t_ms"] = round(self._wall() * 1000, 3)
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    async def close(self) -> None:
        """Stop reading (no records for the part seconds) and close the file."""
        tasks = [task for task, _ in self._readers.values()]
        self._readers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._file is not None:
            self._file.close()
            self._file = None

