// Receiver-side transform for the VP8 motion carrier (docs/wire-format.md §3a):
//
//     frame = vp8_prefix | packet | packet_length:u32 LE | "AVMF"
//
// Each carrier frame's packet goes to the main thread; the frame continues to the decoder as
// the bare prefix (a valid VP8 key frame). The protocol is in docs/transform-worker.md.
//
// No import/export statements: the file loads as a classic or a module worker, so the page
// can pick either one.
//
// A transform worker must never stall or break the media pipeline. Every frame is enqueued
// exactly once, and any error is counted rather than thrown, because an exception in a
// TransformStream errors the pipe and the receiver then drops every later frame.

"use strict";

const MAGIC = [0x41, 0x56, 0x4d, 0x46]; // "AVMF"; a future layout gets a new magic (see spec)
const TRAILER = 8; // packet_length:u32 LE + magic

const transforms = new Set(); // live transforms, for worker-level stats requests

function now() {
  // Wall-clock ms, comparable with the main thread's performance.timeOrigin + performance.now()
  return performance.timeOrigin + performance.now();
}

function endsWithMagic(bytes) {
  const n = bytes.length;
  return n >= 4 && bytes[n - 4] === MAGIC[0] && bytes[n - 3] === MAGIC[1] &&
    bytes[n - 2] === MAGIC[2] && bytes[n - 1] === MAGIC[3];
}

function rtpTimestampOf(frame) {
  // Chromium puts it in the metadata; frame.timestamp is the older spelling of the same value.
  try {
    const md = frame.getMetadata();
    if (md && typeof md.rtpTimestamp === "number") return md.rtpTimestamp;
  } catch (_) { /* fall through */ }
  return typeof frame.timestamp === "number" ? frame.timestamp : null;
}

// Compact packet message (opt-in with `compact: true`): one transferred ArrayBuffer,
//   id:u32 | arrivalMs:f64 | rtpTimestamp:f64 (-1 when unknown) | packet bytes   (little-endian)
// so the receiving side reads one buffer instead of several object properties (each property
// read from Pyodide crosses the JS/Python boundary).
const COMPACT_HEADER = 20;

function compactPacket(id, arrivalMs, rtpTimestamp, bytes, start, end) {
  const out = new ArrayBuffer(COMPACT_HEADER + (end - start));
  const view = new DataView(out);
  view.setUint32(0, id >>> 0, true);
  view.setFloat64(4, arrivalMs, true);
  view.setFloat64(12, rtpTimestamp === null ? -1 : rtpTimestamp, true);
  new Uint8Array(out, COMPACT_HEADER).set(bytes.subarray(start, end));
  return out;
}

// Audio receivers get an observer, not an extractor: every frame passes through untouched, and
// twice a second the worker reports where the audio's RTP clock stands against the page clock,
//   {type:"audio-clock", id, rtpTimestamp, transitMs, count}:
// the median over the last 2 s of (arrival - rtp/48) in ms, rtp counted from rtpTimestamp (the
// latest frame's, 48 kHz). Compared with the same figure for the motion packets, it tells which
// audio position goes with which motion frame (avatarplayer/sync.py); it costs the main thread
// nothing per frame.
const AUDIO_WINDOW = 100; // frames (2 s of 20 ms Opus packets)
const AUDIO_REPORT_MS = 500;

function observeAudio(readable, writable, port, id, mode) {
  const t = { id, mode, port, framesSeen: 0, errors: 0, lastError: null, ended: false,
              packetsExtracted: 0, passedThrough: 0, malformed: 0, bytesExtracted: 0,
              firstFrameMs: null, lastFrameMs: null };
  transforms.add(t);
  const samples = []; // [arrivalMs, rtp] of the last AUDIO_WINDOW frames
  let reportedAt = 0;
  const post = (msg) => {
    try { if (port) port.postMessage(msg); } catch (e) { t.errors++; t.lastError = String(e); }
  };
  if (port) {
    port.onmessage = (ev) => {
      const req = ev.data || {};
      if (req.type === "stats") post(statsOf(t, req.requestId));
    };
  }
  const report = (now, latest) => {
    // rtp distances from the latest frame, as signed 32-bit differences (the clock wraps)
    const transits = samples.map(([arrival, rtp]) => arrival - ((rtp - latest) | 0) / 48);
    transits.sort((a, b) => a - b);
    post({ type: "audio-clock", id, rtpTimestamp: latest, transitMs: transits[transits.length >> 1],
           count: transits.length });
    reportedAt = now;
  };
  const handle = (frame, controller) => {
    const arrivalMs = now();
    t.framesSeen++;
    if (t.firstFrameMs === null) t.firstFrameMs = arrivalMs;
    t.lastFrameMs = arrivalMs;
    let rtp = null;
    try { rtp = rtpTimestampOf(frame); } catch (e) { t.errors++; t.lastError = String(e); }
    try { controller.enqueue(frame); } catch (e) { t.errors++; t.lastError = String(e); }
    if (rtp === null) return;
    samples.push([arrivalMs, rtp]);
    if (samples.length > AUDIO_WINDOW) samples.shift();
    if (arrivalMs - reportedAt >= AUDIO_REPORT_MS && samples.length >= 10) {
      try { report(arrivalMs, rtp); } catch (e) { t.errors++; t.lastError = String(e); }
    }
  };
  post({ type: "attached", id, mode, atMs: now(), kind: "audio" });
  readable.pipeThrough(new TransformStream({ transform: handle })).pipeTo(writable).then(
    () => finish(null), (e) => finish(e));
  function finish(error) {
    t.ended = true;
    transforms.delete(t);
    post({ type: "ended", id, error: error ? String(error) : null, stats: statsOf(t) });
  }
}

function startTransform(readable, writable, port, id, mode, compact) {
  const t = {
    id, mode, port,
    framesSeen: 0, packetsExtracted: 0, passedThrough: 0, malformed: 0, errors: 0,
    bytesExtracted: 0, firstFrameMs: null, lastFrameMs: null, lastError: null, ended: false,
  };
  transforms.add(t);

  const post = (msg, transfer) => {
    // A closed port or a main thread that went away must not stop the frames.
    try { if (port) port.postMessage(msg, transfer || []); } catch (e) { t.errors++; t.lastError = String(e); }
  };

  if (port) {
    port.onmessage = (ev) => {
      const req = ev.data || {};
      if (req.type === "stats") post(statsOf(t, req.requestId));
    };
  }

  const handle = (frame, controller) => {
    const arrivalMs = now();
    t.framesSeen++;
    if (t.firstFrameMs === null) t.firstFrameMs = arrivalMs;
    t.lastFrameMs = arrivalMs;
    let packet = null;
    let rtpTimestamp = null;
    try {
      const data = frame.data;
      const bytes = new Uint8Array(data);
      if (!endsWithMagic(bytes)) {
        t.passedThrough++; // SFU blank frames, frames from before the publisher wrapped them
      } else if (bytes.length < TRAILER) {
        t.malformed++;
      } else {
        const end = bytes.length - TRAILER;
        const length = new DataView(data).getUint32(end, true);
        if (length > end) {
          t.malformed++; // length points before the start: pass through, let the decoder cope
        } else {
          // Read metadata before enqueue: a written frame may be neutered.
          rtpTimestamp = rtpTimestampOf(frame);
          packet = compact
            ? compactPacket(id, arrivalMs, rtpTimestamp, bytes, end - length, end)
            : data.slice(end - length, end);
          frame.data = data.slice(0, end - length);
        }
      }
    } catch (e) {
      t.errors++;
      t.lastError = String(e);
      packet = null;
    }
    // Enqueue before posting: the decoder path is the latency-critical one and must not wait.
    try { controller.enqueue(frame); } catch (e) { t.errors++; t.lastError = String(e); }
    if (packet !== null) {
      t.packetsExtracted++;
      t.bytesExtracted += packet.byteLength - (compact ? COMPACT_HEADER : 0);
      if (compact) post(packet, [packet]);
      else post({ type: "packet", id, packet, rtpTimestamp, arrivalMs }, [packet]);
    }
  };

  post({ type: "attached", id, mode, atMs: now() });
  readable
    .pipeThrough(new TransformStream({ transform: handle }))
    .pipeTo(writable)
    .then(
      () => finish(null),
      (e) => finish(e),
    );

  function finish(error) {
    // Normal when the receiver is re-attached, the track ends or the peer connection closes.
    t.ended = true;
    transforms.delete(t);
    post({ type: "ended", id, error: error ? String(error) : null, stats: statsOf(t) });
  }
}

function statsOf(t, requestId) {
  return {
    type: "stats", id: t.id, mode: t.mode, requestId: requestId ?? null,
    framesSeen: t.framesSeen, packetsExtracted: t.packetsExtracted,
    passedThrough: t.passedThrough, malformed: t.malformed, errors: t.errors,
    bytesExtracted: t.bytesExtracted, firstFrameMs: t.firstFrameMs, lastFrameMs: t.lastFrameMs,
    lastError: t.lastError, ended: t.ended,
  };
}

// RTCRtpScriptTransform: new RTCRtpScriptTransform(worker, {port, id}, [port]) on the main thread.
self.onrtctransform = (event) => {
  const { readable, writable, options } = event.transformer;
  const opts = options || {};
  if (opts.kind === "audio") {
    observeAudio(readable, writable, opts.port || null, opts.id ?? null, "script");
    return;
  }
  startTransform(readable, writable, opts.port || null, opts.id ?? null, "script", !!opts.compact);
};

// createEncodedStreams fallback: the main thread transfers {readable, writable, port, id}.
self.onmessage = (event) => {
  const msg = event.data || {};
  if (msg.readable && msg.writable) {
    startTransform(msg.readable, msg.writable, msg.port || null, msg.id ?? null, "streams", !!msg.compact);
  } else if (msg.type === "stats") {
    // Worker-wide snapshot of every live transform (the per-port request is the usual path).
    self.postMessage({ type: "stats-all", requestId: msg.requestId ?? null,
      transforms: Array.from(transforms, (t) => statsOf(t)) });
  }
};
