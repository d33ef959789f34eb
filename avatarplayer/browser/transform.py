"""The motion track's tap: the transform worker attached to video receivers, the packets it posts
back, and the watchdog that re-attaches a transform that never ran.

Each attachment has an id and a ``MessageChannel`` to ``avatarplayer/browser/js/motion-transform.js``;
the worker posts one compact message per packet (:mod:`avatarplayer.wire.compact`). Until the
avatar's motion track is known, packets of every video receiver are held, a few per receiver;
then only the motion track's are delivered (docs/player.md, docs/platform.md "Transform attach").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..wire.compact import COMPACT_HEADER
from . import jsutil

ATTACH_ACK_TIMEOUT_MS = 1500
"""A transform the worker has not reported running after this long is attached again."""
WATCHDOG_MIN_FRAMES = 10
"""Frames the receiver counted, but the worker never saw, that make the watchdog re-attach."""
MAX_REATTACH = 2
"""Re-attaching rarely revives a transform that never ran: after this many, fall back to the
data-packet carrier."""
MAX_PENDING_PACKETS = 50
"""Packets held per video receiver while the motion track is not known yet (2 s at 25 fps)."""


class MotionTap:
    """Transforms on the page's receivers, and the motion packets they find.

    :param worker_url: where the page serves the transform worker; ``None``: the packaged copy
        (``js/motion-transform.js``), started from a Blob URL.
    :param fall_back: called with a reason when the video carrier cannot work (the provider then
        switches to the data-packet carrier).
    :param audio_receiver: returns the avatar's audio receiver (its packet arrivals go to the player).
    """

    def __init__(self, worker_url: str | None, log: logging.Logger, *, fall_back: Callable[[str], None],
                 audio_receiver: Callable[[], Any]) -> None:
        self.worker_url = worker_url
        self.log = log
        self.fall_back = fall_back
        self.audio_receiver = audio_receiver
        self.sink: Any = None
        """The player, while connected."""
        self.mode = "script"
        """"script" (RTCRtpScriptTransform) or "streams" (createEncodedStreams)."""
        self.track: Any = None
        """The avatar's motion track, once subscribed."""
        self.attach_id: int | None = None
        """The motion track's attachment; ``None`` until it is known (packets are held)."""
        self.late_attach = False
        """The motion track's transform was attached after its receiver was negotiated."""
        self.reattach_count = 0
        self.stats: dict[int, dict] = {}
        """The transform worker's counters, per attachment."""
        self.foreign_packets = 0
        """Packets from a video track other than the motion track (ignored)."""
        self.packets_before_open = 0
        """Packets that arrived before the player opened (a shared, connected room)."""
        self._worker: Any = None
        self._blob_url: str | None = None
        self._ports: dict[int, Any] = {}
        self._receivers: dict[int, Any] = {}  # the receiver of each attachment, to notice it died
        self._port_handler: Any = None
        self._attach_count = 0
        self._acknowledged: set[int] = set()
        self._attached_at_ms = 0.0
        self._packets: dict[int, int] = {}  # per attachment, counted here (stats replies arrive late)
        self._passed_through: dict[int, int] = {}
        self._pending: dict[int, list[tuple[bytes, float, float | None]]] = {}
        self._last_rtp_frames: int | None = None
        self._last_seen_total = 0
        self._checking = False

    def reset(self) -> None:
        """A new connection: counters from zero, nothing held."""
        self._passed_through.clear()
        self.stats.clear()
        self._packets.clear()
        self._pending.clear()
        self.foreign_packets = 0
        self.reattach_count = 0

    # ------------------------------------------------------------------------- attaching

    def _new_port(self) -> tuple[int, Any]:
        """A fresh attachment id and MessageChannel to the transform worker (started if needed);
        returns the id and the worker's end of the channel."""
        import js
        from pyodide.ffi import create_proxy

        if self._worker is None:
            url = self.worker_url
            if url is None:  # the packaged copy: nothing to serve, nothing to fetch
                self._blob_url = url = jsutil.blob_url(jsutil.js_source("motion-transform.js"), "text/javascript")
            self._worker = js.Worker.new(url, jsutil.js_object({"name": "avatar-motion"}))
        self._attach_count += 1
        attach_id = self._attach_count
        channel = js.MessageChannel.new()
        if self._port_handler is None:
            self._port_handler = create_proxy(self._on_port_message)
        channel.port1.onmessage = self._port_handler
        self._ports[attach_id] = channel.port1
        return attach_id, channel.port2

    def attach_audio_observer(self, receiver: Any) -> None:
        """Watch an audio receiver's packets arrive (frames pass through untouched): lip sync."""
        import js

        if getattr(receiver, "avatarplayerAudioId", None) is not None:
            return
        attach_id, port2 = self._new_port()
        receiver.transform = js.RTCRtpScriptTransform.new(
            self._worker, jsutil.js_object({"port": port2, "id": attach_id, "kind": "audio"}), jsutil.js_list([port2]))
        receiver.avatarplayerAudioId = attach_id
        self._receivers[attach_id] = receiver

    def attach_to_receiver(self, receiver: Any, *, replace: bool = False) -> int:
        """Give ``receiver`` a transform (unless it has a live one and not ``replace``); its id."""
        import js
        from pyodide.ffi import to_js

        existing = getattr(receiver, "avatarplayerAttachId", None)
        if existing is not None and existing in self._ports and not replace:
            return existing
        attach_id, port2 = self._new_port()
        if self.mode == "script":
            receiver.transform = js.RTCRtpScriptTransform.new(
                self._worker, jsutil.js_object({"port": port2, "id": attach_id, "compact": True}), to_js([port2]))
        else:
            streams = receiver.createEncodedStreams()
            self._worker.postMessage(
                jsutil.js_object({"readable": streams.readable, "writable": streams.writable,
                                  "port": port2, "id": attach_id, "compact": True}),
                to_js([streams.readable, streams.writable, port2]))
        receiver.avatarplayerAttachId = attach_id
        self._receivers[attach_id] = receiver
        self.log.info("motion transform attached (%s, #%d)", self.mode, attach_id)
        return attach_id

    def attach_again(self, receiver: Any) -> None:
        """Replace ``receiver``'s transform with a new one (Firefox: see js/pc_hook.js). When it
        is the motion track's, its packets now come from the new one."""
        old = getattr(receiver, "avatarplayerAttachId", None)
        new = self.attach_to_receiver(receiver, replace=True)
        if old is None:
            return
        if old in self._pending:
            self._pending[new] = self._pending.pop(old)
        if self.attach_id == old:
            self.attach_id = new
            self._attached_at_ms = jsutil.now_ms()
            self._last_rtp_frames = None
        self._receivers.pop(old, None)
        self._close_channel(old)  # its transform was replaced: nothing comes through it any more

    def attach_track(self, track: Any) -> bool:
        """The motion track was subscribed: make sure its receiver has a running transform, and
        deliver the packets held for it. False when it could not (the provider was told why).

        Usually it has one already, set when its transceiver was created (see ``js/pc_hook.js``); a
        receiver the SFU reuses keeps it. Otherwise (a shared room that was connected before we
        listened, or the streams mode) attach now.
        """
        self.track = track
        receiver = track.receiver
        if receiver is None:
            self.fall_back("the motion track has no RTCRtpReceiver")
            return False
        attach_id = getattr(receiver, "avatarplayerAttachId", None)
        self.late_attach = attach_id is None or attach_id not in self._ports
        if self.late_attach:
            try:
                attach_id = self.attach_to_receiver(receiver)
            except Exception as exc:
                self.fall_back(f"the {self.mode} transform could not be attached ({exc})")
                return False
        self.attach_id = attach_id
        self._attached_at_ms = jsutil.now_ms()
        self._last_rtp_frames = None
        if self.sink is not None:
            self.sink.on_motion_attached(self.mode)
        self.release_pending()
        return True

    def forget_track(self) -> None:
        """The motion track went away: hold packets again until the next one."""
        self.track = None
        self.attach_id = None

    def detach_track(self) -> None:
        """Stop reading the motion track (the data carrier takes over): its frames go on to the
        decoder untouched."""
        track = self.track
        if track is not None and track.receiver is not None and self.mode == "script":
            try:
                track.receiver.transform = None
            except Exception:
                self.log.exception("detaching the transform failed")

    # --------------------------------------------------------------------------- packets

    def _on_port_message(self, event: Any) -> None:
        data = event.data
        to_bytes = getattr(data, "to_bytes", None)  # (isinstance(data, JsBuffer) costs more in Pyodide)
        if to_bytes is not None:  # the hot path: a compact packet (docs/wire-format.md §3c)
            raw = to_bytes()
            attach_id, arrival_ms, rtp_timestamp = COMPACT_HEADER.unpack_from(raw)
            self._packets[attach_id] = self._packets.get(attach_id, 0) + 1
            if self.sink is None:  # a shared room the app connected before the player did
                self.packets_before_open += 1
                return
            self.deliver(attach_id, raw[COMPACT_HEADER.size:], arrival_ms, rtp_timestamp if rtp_timestamp >= 0 else None)
            return
        kind = data.type
        if kind == "packet":
            attach_id = data.id
            self._packets[attach_id] = self._packets.get(attach_id, 0) + 1
            if self.sink is not None:
                rtp = data.rtpTimestamp
                self.deliver(attach_id, data.packet.to_bytes(), data.arrivalMs, None if rtp is None else float(rtp))
        elif kind == "audio-clock":
            receiver = self.audio_receiver()
            if (receiver is not None and getattr(receiver, "avatarplayerAudioId", None) == data.id
                    and self.sink is not None and hasattr(self.sink, "on_audio_arrivals")):
                self.sink.on_audio_arrivals(float(data.rtpTimestamp), float(data.transitMs))
        elif kind == "attached":
            self.log.info("transform #%s running in the worker (%s)", data.id, data.mode)
            self._acknowledged.add(data.id)
        elif kind in ("stats", "ended"):
            stats = (data.stats if kind == "ended" else data).to_py()
            self.stats[stats.get("id")] = stats
            self._passed_through[stats.get("id")] = stats.get("passedThrough", 0)
            if self.sink is not None:
                self.sink.on_passed_through(sum(self._passed_through.values()))

    def deliver(self, attach_id: int, packet: bytes, arrival_ms: float, rtp_timestamp: float | None) -> None:
        """Hand a packet of the avatar's motion track to the player. Until the motion track is
        known (TrackSubscribed of the avatar), packets of every video receiver are held, a few per
        receiver: only the avatar's are delivered then, in order."""
        if self.attach_id is None:
            pending = self._pending.setdefault(attach_id, [])
            if len(pending) < MAX_PENDING_PACKETS:
                pending.append((packet, arrival_ms, rtp_timestamp))
            else:
                self.foreign_packets += 1
            return
        if attach_id != self.attach_id:
            self.foreign_packets += 1  # another video track that carries packets: not the avatar's
            return
        self.sink.on_packet(packet, arrival_ms, rtp_timestamp)

    def release_pending(self) -> None:
        """The motion track is known: deliver its held packets, count the others' as foreign."""
        pending, self._pending = self._pending, {}
        for attach_id, packets in pending.items():
            if attach_id != self.attach_id or self.sink is None:
                self.foreign_packets += len(packets)
                continue
            for packet, arrival_ms, rtp_timestamp in packets:
                self.sink.on_packet(packet, arrival_ms, rtp_timestamp)

    # -------------------------------------------------------------------------- watchdog

    def watch(self, now_ms: float) -> None:
        """About once a second: ask the transforms for their counters, and re-attach when the motion
        track's one never started, or when its receiver counts frames the worker never saw; after
        ``MAX_REATTACH`` tries, fall back to the data carrier."""
        self.prune_dead_receivers()
        track = self.track
        if track is None or self._worker is None or self.attach_id is None:
            return
        self.request_stats()
        current = self.attach_id
        if current not in self._acknowledged:
            if now_ms - self._attached_at_ms > ATTACH_ACK_TIMEOUT_MS:
                self._reattach(track, "the transform never started in the worker")
            return
        if not self._checking:
            import asyncio

            self._checking = True
            asyncio.ensure_future(self._check_receiver(track, current))

    async def _check_receiver(self, track: Any, attach_id: int) -> None:
        try:
            report = await track.receiver.getStats()
            rtp_frames = None
            for entry in report.values():
                if entry.type == "inbound-rtp":
                    rtp_frames = getattr(entry, "framesReceived", None)
            seen = self._packets.get(attach_id, 0) + self.stats.get(attach_id, {}).get("passedThrough", 0)
            if rtp_frames is None or attach_id != self.attach_id:
                return
            if self._last_rtp_frames is not None:
                arrived = rtp_frames - self._last_rtp_frames
                if arrived >= WATCHDOG_MIN_FRAMES and seen == self._last_seen_total:
                    self._reattach(track, f"{arrived} frames reached the receiver but not the transform")
                    return
            self._last_rtp_frames, self._last_seen_total = rtp_frames, seen
        except Exception:
            self.log.exception("the transform watchdog failed")
        finally:
            self._checking = False

    def _reattach(self, track: Any, why: str) -> None:
        if self.late_attach and self.mode == "script":
            # attached after the receiver was negotiated: re-attaching never revived one (Chromium 156)
            self.fall_back(f"{why} (a late attach)")
            return
        if self.reattach_count >= MAX_REATTACH:
            self.fall_back(f"{why}, and {MAX_REATTACH} re-attachments did not help")
            return
        self.reattach_count += 1
        self.log.warning("re-attaching the motion transform: %s", why)
        try:
            self.attach_id = self.attach_to_receiver(track.receiver, replace=True)
        except Exception as exc:
            self.fall_back(f"re-attaching failed ({exc})")
            return
        if self.sink is not None:
            self.sink.on_motion_attached(self.mode)
        self._attached_at_ms = jsutil.now_ms()
        self._last_rtp_frames = None

    def diagnostics(self) -> dict[str, int]:
        """What this tap holds alive (read-only, for leak checks): ``transform_workers`` (0 or 1),
        ``transform_channels`` (attachments with an open ``MessageChannel``: one per transform set on
        a receiver), ``transforms_ended`` (of those, the ones the worker reported ended: their
        receiver is gone or was re-attached), ``transforms_live`` (channels minus ended) and
        ``port_handler_proxies`` (0 or 1: the ``create_proxy`` of the channels' message handler)."""
        ended = sum(1 for attach_id, stats in self.stats.items() if attach_id in self._ports and stats.get("ended"))
        return {"transform_workers": int(self._worker is not None), "transform_channels": len(self._ports),
                "transforms_ended": ended, "transforms_live": len(self._ports) - ended,
                "port_handler_proxies": int(self._port_handler is not None)}

    def prune_dead_receivers(self) -> int:
        """Close the channels of attachments whose receiver is dead: its track ended or its
        transport closed. livekit-client's full reconnect (a restarted server, say) replaces its
        peer connections, and the old receivers' transforms never report ``ended`` (Chromium 156,
        bench/soak.py): without this their channels stayed open, asked for stats every second,
        until :meth:`close`. The
        motion track's own attachment is kept. Returns how many were closed."""
        dead = []
        for attach_id, receiver in self._receivers.items():
            if attach_id == self.attach_id:
                continue
            track, transport = getattr(receiver, "track", None), getattr(receiver, "transport", None)
            if (track is not None and track.readyState == "ended") or (
                    transport is not None and transport.state == "closed"):
                dead.append(attach_id)
        for attach_id in dead:
            del self._receivers[attach_id]
            self._close_channel(attach_id)
        if dead:
            self.log.info("closed the channels of %d transform(s) on receivers that are gone", len(dead))
        return len(dead)

    def _close_channel(self, attach_id: int) -> None:
        port = self._ports.pop(attach_id, None)
        if port is not None:
            port.onmessage = None
            port.close()
        self._acknowledged.discard(attach_id)
        self._packets.pop(attach_id, None)
        self._pending.pop(attach_id, None)

    def request_stats(self) -> None:
        """Ask every attached transform for its counters (answers arrive asynchronously)."""
        for port in self._ports.values():
            port.postMessage(jsutil.js_object({"type": "stats"}))

    def close(self) -> None:
        """Close every channel, stop the worker, release the message handler."""
        self.sink = None
        self._pending.clear()
        for port in self._ports.values():
            port.onmessage = None
            port.close()
        self._ports.clear()
        self._receivers.clear()
        self.attach_id = None
        self.track = None
        if self._port_handler is not None:
            self._port_handler.destroy()
            self._port_handler = None
        if self._worker is not None:
            self._worker.terminate()
            self._worker = None
        if self._blob_url is not None:
            import js

            js.URL.revokeObjectURL(self._blob_url)
            self._blob_url = None
