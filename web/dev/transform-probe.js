// Transform probe: connect to a LiveKit room with livekit-client (served from local node_modules),
// attach avatarplayer/browser/js/motion-transform.js to the avatar's motion track receiver, and record
// what comes out on window.probe for a test (or a person with devtools) to read.
//
// Query parameters:
//   url, token       LiveKit server URL and access token (required)
//   lk               livekit-client version: "2.23.0" (default) or "2.16.1"
//   transform        "script" (RTCRtpScriptTransform), "streams" (createEncodedStreams) or "auto"
//   singlePC         "1" / "0": livekit-client's singlePeerConnection option (>= 2.17 only);
//                    absent = the library default (true in 2.23.0)
//   track            regex for the motion publication name (default: motion|animation)
//   workerType       "module" (default) or "classic": the worker file works as both
//   autoconnect      "0" to wait for window.probe.start()
//   attach           when to attach the transform (script mode):
//                      "subscribed" (default) on livekit-client's TrackSubscribed;
//                      "early": on every video receiver as soon as its transceiver exists
//                        (RTCPeerConnection.addTransceiver and the "track" event), before any
//                        negotiation: the only timing that worked in every mode on Chromium 156;
//                      "track": from the "track" event only (experiment)
//   audioPipe        "0": in streams mode, do not pipe the audio receiver through (experiment)
//   reattach         "always": replace the transform on every TrackSubscribed even when the
//                    receiver already has a live one (experiment; default keeps it)
//   reattachMs       re-attach the script transform this many ms after the first attach (experiment)

const LIVEKIT_BUILDS = {
  "2.23.0": "../../node_modules/livekit-client/dist/livekit-client.esm.mjs",
  "2.16.1": "../../node_modules/livekit-client-2.16.1/dist/livekit-client.esm.mjs",
};
const WORKER_URL = new URL("../../js/avatarplayer/motion-transform.js", import.meta.url);
const STATS_INTERVAL_MS = 500;

const params = new URLSearchParams(location.search);
const ATTACH = params.get("attach") || "subscribed";
const nowMs = () => performance.timeOrigin + performance.now();

// Count every peer connection livekit-client makes, to tell single- from dual-PC mode and to
// find the motion receiver's transceiver; with attach=early also hook transceiver creation.
// Patched before livekit-client is imported (it looks RTCPeerConnection up when connecting).
const peerConnections = [];
const NativePC = window.RTCPeerConnection;
window.RTCPeerConnection = class extends NativePC {
  constructor(...args) {
    super(...args);
    peerConnections.push(this);
    if (ATTACH === "early" || ATTACH === "track") {
      // Remotely offered transceivers (dual-PC subscriber connection) first show up here.
      this.addEventListener("track", (ev) => earlyAttach(ev.receiver));
    }
  }
  addTransceiver(trackOrKind, init) {
    // Locally added transceivers: livekit-client >= 2.17 pre-adds recvonly video sections on
    // its single connection; the avatar's track later arrives on one of them.
    const transceiver = super.addTransceiver(trackOrKind, init);
    if (ATTACH === "early" && transceiver.receiver.track.kind === "video") earlyAttach(transceiver.receiver);
    return transceiver;
  }
};
function earlyAttach(receiver) {
  // Every video receiver gets the transform: frames without our magic just pass through.
  if (receiver.track.kind !== "video" || attachedReceivers.has(receiver)) return;
  if (probe.options.transform === "streams" || !probe.capabilities.scriptTransform) return;
  try {
    attachTransform(receiver, "script");
  } catch (e) {
    fail("early attach", e);
  }
}

const probe = (window.probe = {
  state: "loading", // loading -> connecting -> connected -> (failed | disconnected)
  options: {
    lk: params.get("lk") || "2.23.0",
    transform: params.get("transform") || "auto",
    singlePC: params.has("singlePC") ? params.get("singlePC") === "1" : null,
    track: params.get("track") || "motion|animation",
    workerType: params.get("workerType") || "module",
    attach: ATTACH,
  },
  lkVersion: null,
  transformMode: null, // what was used: "script" | "streams"
  capabilities: {
    scriptTransform: typeof window.RTCRtpScriptTransform !== "undefined",
    encodedStreams: typeof RTCRtpReceiver !== "undefined" && "createEncodedStreams" in RTCRtpReceiver.prototype,
  },
  times: { pageStart: performance.timeOrigin }, // epoch ms
  pcMode: null, // livekit-client's PCTransportManager mode
  peerConnectionCount: 0,
  motion: null, // {trackName, trackSid, participant, transceiverDirection, ...}
  subscriptions: [], // one per TrackSubscribed of the motion track: {t, trackSid, sameReceiver, hadTransform}
  attachments: [], // one per attach: {id, mode, attachedMs, ackMs, ended}
  packets: [], // {id, hex, rtpTimestamp, arrivalMs, mainMs}
  workerStats: {}, // id -> latest stats from the worker
  receiverStats: null, // latest inbound-rtp (video) of the motion receiver (kept after it ends)
  audioStats: null, // latest inbound-rtp (audio) of the avatar
  statsHistory: [], // {t, framesReceived, framesDecoded, frameWidth, frameHeight, framesSeen}: the watchdog's view
  events: [],
  errors: [],
  room: null,
  start,
  disconnect,
  requestStats,
  snapshot, // everything above but the room and the functions: JSON-safe, for tests
});

function log(msg) {
  probe.events.push({ t: nowMs(), msg });
  const el = document.getElementById("log");
  if (el) el.textContent += msg + "\n";
  console.log("[probe] " + msg);
}

function fail(where, err) {
  const text = `${where}: ${err && err.stack ? err.stack : err}`;
  probe.errors.push(text);
  console.error("[probe] " + text);
}

function toHex(buffer) {
  const bytes = new Uint8Array(buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += bytes[i].toString(16).padStart(2, "0");
  return s;
}

let worker = null;
let nextId = 1;
const ports = new Map(); // id -> MessagePort (main side)
const attachedReceivers = new WeakMap(); // receiver -> attachment (createEncodedStreams is once-only)

function getWorker() {
  if (!worker) {
    worker = new Worker(WORKER_URL, probe.options.workerType === "classic" ? {} : { type: "module" });
    worker.onerror = (e) => fail("worker", e.message || e);
  }
  return worker;
}

function onPortMessage(attachment, ev) {
  const msg = ev.data || {};
  if (msg.type === "packet") {
    const mainMs = nowMs();
    if (probe.times.firstPacket === undefined) {
      probe.times.firstPacket = msg.arrivalMs;
      probe.times.firstPacketMain = mainMs;
      log(`first packet after ${(msg.arrivalMs - probe.times.connectStart).toFixed(0)} ms from connect`);
    }
    probe.packets.push({ id: msg.id, hex: toHex(msg.packet), rtpTimestamp: msg.rtpTimestamp, arrivalMs: msg.arrivalMs, mainMs });
  } else if (msg.type === "stats") {
    probe.workerStats[msg.id] = msg;
    const resolve = pendingStats.get(msg.requestId);
    if (resolve) {
      pendingStats.delete(msg.requestId);
      resolve();
    }
  } else if (msg.type === "attached") {
    attachment.ackMs = msg.atMs;
    log(`worker attached transform ${msg.id} (${msg.mode})`);
  } else if (msg.type === "ended") {
    attachment.ended = msg.error || "closed";
    if (msg.stats) probe.workerStats[msg.id] = msg.stats;
    log(`transform ${msg.id} ended: ${attachment.ended}`);
  }
}

// Attach the motion worker to a receiver. Returns the attachment record.
function attachTransform(receiver, mode) {
  const existing = attachedReceivers.get(receiver);
  if (existing && !existing.ended && params.get("reattach") !== "always") {
    // A receiver the SFU reuses for a new track keeps its transform, and createEncodedStreams
    // can be called only once per receiver: keep the running one. (Replacing a script transform
    // works on Chromium 156, but it cannot revive one that never fired.)
    log(`receiver already has transform ${existing.id}, keeping it`);
    return existing;
  }
  const id = nextId++;
  const channel = new MessageChannel();
  const attachment = { id, mode, attachedMs: nowMs(), ackMs: null, ended: null };
  channel.port1.onmessage = (ev) => onPortMessage(attachment, ev);
  ports.set(id, channel.port1);
  if (mode === "script") {
    receiver.transform = new RTCRtpScriptTransform(getWorker(), { port: channel.port2, id }, [channel.port2]);
  } else {
    const { readable, writable } = receiver.createEncodedStreams();
    getWorker().postMessage({ readable, writable, port: channel.port2, id }, [readable, writable, channel.port2]);
  }
  attachedReceivers.set(receiver, attachment);
  probe.attachments.push(attachment);
  log(`attached transform ${id} (${mode})`);
  return attachment;
}

// With encodedInsertableStreams every receiver on the connection must be piped, or its media
// stops at the transform: pass the avatar's audio straight through on the main thread.
function passThrough(receiver) {
  if (attachedReceivers.has(receiver)) return;
  const { readable, writable } = receiver.createEncodedStreams();
  readable.pipeTo(writable).catch((e) => log(`audio pass-through ended: ${e}`));
  attachedReceivers.set(receiver, { id: 0, mode: "passthrough" });
  log("audio receiver piped through");
}

// Ask every attachment for its counters; resolves once all answered (or after 1 s).
let nextRequestId = 1;
const pendingStats = new Map(); // requestId -> resolve
function requestStats() {
  const waits = [];
  for (const port of ports.values()) {
    const requestId = nextRequestId++;
    waits.push(new Promise((resolve) => {
      pendingStats.set(requestId, resolve);
      setTimeout(() => { pendingStats.delete(requestId); resolve(); }, 1000);
    }));
    port.postMessage({ type: "stats", requestId });
  }
  return Promise.all(waits);
}

function findTransceiver(receiver) {
  for (let i = 0; i < peerConnections.length; i++) {
    for (const t of peerConnections[i].getTransceivers()) {
      if (t.receiver === receiver) return { pcIndex: i, mid: t.mid, direction: t.direction, currentDirection: t.currentDirection };
    }
  }
  return null;
}

async function inboundRtp(receiver) {
  const report = await receiver.getStats();
  for (const s of report.values()) {
    if (s.type === "inbound-rtp") return s;
  }
  return null;
}

const PICK_VIDEO = ["framesReceived", "framesDecoded", "keyFramesDecoded", "framesDropped", "frameWidth",
  "frameHeight", "packetsReceived", "packetsLost", "bytesReceived", "nackCount", "pliCount", "firCount",
  "jitter", "framesPerSecond", "decoderImplementation"];
const PICK_AUDIO = ["packetsReceived", "packetsLost", "bytesReceived", "totalSamplesReceived",
  "concealedSamples", "jitter", "audioLevel"];

function pick(s, keys) {
  if (!s) return null;
  const out = { timestamp: s.timestamp };
  for (const k of keys) if (s[k] !== undefined) out[k] = s[k];
  return out;
}

let motionReceiver = null;
let audioReceiver = null;
let statsTimer = null;

async function pollStats() {
  try {
    await requestStats();
    if (motionReceiver) {
      const video = pick(await inboundRtp(motionReceiver), PICK_VIDEO);
      if (video) probe.receiverStats = video;
      const transceiver = findTransceiver(motionReceiver);
      if (probe.motion && transceiver) probe.motion.transceiver = transceiver;
      const seen = Object.values(probe.workerStats).reduce((n, s) => n + s.framesSeen, 0);
      probe.statsHistory.push({ t: nowMs(), framesReceived: video?.framesReceived ?? null,
        framesDecoded: video?.framesDecoded ?? null, frameWidth: video?.frameWidth ?? null,
        frameHeight: video?.frameHeight ?? null, framesSeen: seen });
    }
    if (audioReceiver) {
      const audio = pick(await inboundRtp(audioReceiver), PICK_AUDIO);
      if (audio) probe.audioStats = audio;
    }
    probe.peerConnectionCount = peerConnections.length;
  } catch (e) {
    fail("stats", e);
  }
}

async function start() {
  const url = params.get("url");
  const token = params.get("token");
  if (!url || !token) throw new Error("url and token query parameters are required");
  const buildPath = LIVEKIT_BUILDS[probe.options.lk];
  if (!buildPath) throw new Error(`unknown lk version ${probe.options.lk}`);

  const LK = await import(buildPath);
  probe.lkVersion = LK.version;
  probe.times.imported = nowMs();
  log(`livekit-client ${LK.version}`);

  let mode = probe.options.transform;
  if (mode === "auto") mode = probe.capabilities.scriptTransform ? "script" : "streams";
  probe.transformMode = mode;
  const trackPattern = new RegExp(probe.options.track, "i");

  const roomOptions = { adaptiveStream: false, dynacast: false };
  if (probe.options.singlePC !== null) roomOptions.singlePeerConnection = probe.options.singlePC;
  const room = new LK.Room(roomOptions);
  probe.room = room;

  room.on(LK.RoomEvent.TrackSubscribed, (track, publication, participant) => {
    try {
      if (track.kind === "video" && trackPattern.test(publication.trackName)) {
        probe.times.subscribed ??= nowMs();
        probe.subscriptions.push({ t: nowMs(), trackSid: publication.trackSid,
          sameReceiver: motionReceiver === track.receiver, hadTransform: attachedReceivers.has(track.receiver) });
        motionReceiver = track.receiver;
        const transceiver = findTransceiver(track.receiver);
        probe.motion = { trackName: publication.trackName, trackSid: publication.trackSid,
          participant: participant.identity, source: publication.source, transceiver, atSubscribe: transceiver };
        log(`motion track ${publication.trackName} from ${participant.identity}`);
        attachTransform(track.receiver, mode);
        const reattachMs = Number(params.get("reattachMs") || 0);
        if (reattachMs > 0 && mode === "script") {
          setTimeout(() => { attachedReceivers.delete(track.receiver); attachTransform(track.receiver, mode); }, reattachMs);
        }
        const video = document.getElementById("motion");
        if (video) track.attach(video);
      } else if (track.kind === "audio") {
        audioReceiver = track.receiver;
        if (mode === "streams" && params.get("audioPipe") !== "0") passThrough(track.receiver);
        track.attach(); // an audio element, so the receiver decodes and its sample counters move
      }
    } catch (e) {
      fail("TrackSubscribed", e);
    }
  });
  room.on(LK.RoomEvent.TrackUnsubscribed, (track, publication) => log(`unsubscribed ${publication.trackName}`));
  room.on(LK.RoomEvent.Disconnected, (reason) => {
    probe.state = probe.state === "failed" ? "failed" : "disconnected";
    log(`disconnected (${reason})`);
  });
  room.on(LK.RoomEvent.Reconnecting, () => log("reconnecting"));
  room.on(LK.RoomEvent.Reconnected, () => log("reconnected"));

  probe.state = "connecting";
  probe.times.connectStart = nowMs();
  const connectOptions = { autoSubscribe: true };
  if (mode === "streams") connectOptions.rtcConfig = { encodedInsertableStreams: true };
  try {
    await room.connect(url, token, connectOptions);
  } catch (e) {
    probe.state = "failed";
    fail("connect", e);
    return;
  }
  probe.times.connected = nowMs();
  probe.pcMode = room.engine?.pcManager?.mode ?? null;
  probe.state = "connected";
  log(`connected in ${(probe.times.connected - probe.times.connectStart).toFixed(0)} ms, pc mode ${probe.pcMode}`);
  statsTimer = setInterval(pollStats, STATS_INTERVAL_MS);
}

function snapshot() {
  const out = {};
  for (const [k, v] of Object.entries(probe)) if (k !== "room" && typeof v !== "function") out[k] = v;
  out.peerConnectionCount = peerConnections.length;
  return JSON.parse(JSON.stringify(out));
}

async function disconnect() {
  if (statsTimer) clearInterval(statsTimer);
  await pollStats();
  if (probe.room) await probe.room.disconnect();
}

window.addEventListener("error", (e) => fail("window", e.message));
window.addEventListener("unhandledrejection", (e) => fail("promise", e.reason));

if (params.get("autoconnect") !== "0") {
  start().catch((e) => {
    probe.state = "failed";
    fail("start", e);
  });
}
