// Test/benchmark instrument: when the avatar's voice is heard, measured in the page.
//
// The avatar's remote audio track (the <audio> element the player creates for it) is tapped with
// Web Audio. An AudioWorklet finds the onset of each sync-pulse click (avatar_worker/modes/scripted.py:
// silence, then a loud burst from its first sample) to the sample, in AudioContext time, and the
// main thread maps that to the page clock with AudioContext.getOutputTimestamp(): the instant the
// sample leaves the context for the loudspeaker. Onsets are kept in window.harness.audioTap as
// epoch milliseconds (performance.timeOrigin + performance.now(), the clock the renderer times use).
//
// Offset of a frame = its renderer call - the onset of the click captured with it (+ = face late).

const WORKLET = `
class OnsetDetector extends AudioWorkletProcessor {
  // After quietS of silence the detector is armed. The first sample above quietLevel starts a
  // candidate onset; it is reported (at that sample) if a sample reaches threshold within 10 ms,
  // else it was noise and the detector waits for silence again.
  constructor(options) {
    super();
    const o = options.processorOptions;
    this.threshold = o.threshold;
    this.quietLevel = o.quietLevel;
    this.quietNeeded = Math.round(o.quietS * sampleRate);
    this.riseFrames = Math.round(0.010 * sampleRate);
    this.quiet = 0;
    this.candidate = null;
    this.peak = 0;
    this.blocks = 0;
  }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    this.blocks++;
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        const a = Math.abs(channel[i]);
        const frame = currentFrame + i;
        if (a > this.peak) this.peak = a;
        if (a < this.quietLevel) {
          this.quiet++;
          continue;
        }
        if (this.candidate === null && this.quiet >= this.quietNeeded) this.candidate = frame;
        this.quiet = 0;
        if (this.candidate === null) continue;
        if (a >= this.threshold) {
          this.port.postMessage({ onsetFrame: this.candidate, sampleRate, level: a });
          this.candidate = null;
        } else if (frame - this.candidate > this.riseFrames) {
          this.candidate = null;
        }
      }
    }
    if (this.blocks % 375 === 0) {      // every second or so: liveness, for a test's failure text
      this.port.postMessage({ blocks: this.blocks, peak: this.peak });
      this.peak = 0;
    }
    return true;
  }
}
registerProcessor("onset-detector", OnsetDetector);
`;

export function installAudioTap({ threshold = 0.1, quietLevel = 0.02, quietS = 0.3 } = {}) {
  const tap = { onsets: [], state: "waiting", blocks: 0, peak: 0, outputLatency: null, baseLatency: null,
                errors: [], tapped: null };
  window.harness.audioTap = tap;
  let context = null;

  async function start(element) {
    tap.state = "starting";
    tap.tapped = element.dataset.avatarIdentity || null;
    context = new AudioContext({ latencyHint: "interactive" });
    const url = URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" }));
    await context.audioWorklet.addModule(url);
    const source = context.createMediaStreamSource(element.srcObject);
    const node = new AudioWorkletNode(context, "onset-detector",
      { numberOfOutputs: 0, processorOptions: { threshold, quietLevel, quietS } });
    node.port.onmessage = (event) => {
      const msg = event.data;
      if (msg.onsetFrame === undefined) {
        tap.blocks = msg.blocks;
        tap.peak = msg.peak;
        (tap.loudHistory = tap.loudHistory || []).push([msg.loud, msg.peak]);
        return;
      }
      try {
        const stamp = context.getOutputTimestamp();
        const onsetS = msg.onsetFrame / msg.sampleRate;
        const heardMs = performance.timeOrigin + stamp.performanceTime + (onsetS - stamp.contextTime) * 1000;
        tap.onsets.push({ heardMs, level: msg.level, contextS: onsetS });
      } catch (e) {
        tap.errors.push(String(e && e.stack || e));
      }
    };
    source.connect(node);
    if (context.state !== "running") await context.resume();
    tap.outputLatency = context.outputLatency ?? null;
    tap.baseLatency = context.baseLatency ?? null;
    tap.sampleRate = context.sampleRate;
    tap.state = "running";
  }

  // The player attaches the avatar's <audio> element once its track is subscribed.
  const find = () => document.querySelector("audio[data-avatar-identity]");
  const poll = setInterval(() => {
    const element = find();
    if (element && element.srcObject && tap.state === "waiting") {
      clearInterval(poll);
      start(element).catch((e) => { tap.state = "error"; tap.errors.push(String(e && e.stack || e)); });
    }
  }, 50);
  return tap;
}

// What the receivers say about playout, sampled for offline analysis of sync strategies: every
// 20 ms the synchronization sources of the avatar's audio and motion receivers (the RTP timestamp
// of the last frame played out / delivered, and when), every 250 ms their inbound-rtp counters.
// (docs/sync.md also measured a hidden <video> with requestVideoFrameCallback: no use, removed.)
export function installReceiverSampler(getRoom) {
  const samples = { ssrc: [], stats: [] };
  window.harness.receiverSamples = samples;
  const receivers = () => {
    const room = getRoom();
    if (!room) return null;
    let audio = null, video = null;
    for (const p of room.remoteParticipants.values()) {
      for (const pub of p.trackPublications.values()) {
        const t = pub.track;
        if (!t || !t.receiver) continue;
        if (t.kind === "audio" && !audio) audio = t.receiver;
        if (t.kind === "video" && /motion|animation/i.test(pub.trackName) && !video) video = t.receiver;
      }
    }
    return { audio, video };
  };
  setInterval(() => {
    const r = receivers();
    if (!r) return;
    const now = performance.timeOrigin + performance.now();
    const row = { t: now };
    for (const kind of ["audio", "video"]) {
      const rec = r[kind];
      if (!rec) continue;
      const s = rec.getSynchronizationSources()[0];
      if (s) row[kind] = [s.rtpTimestamp, s.timestamp < 1e12 ? performance.timeOrigin + s.timestamp : s.timestamp];
    }
    samples.ssrc.push(row);
  }, 20);
  setInterval(async () => {
    const r = receivers();
    if (!r) return;
    const row = { t: performance.timeOrigin + performance.now() };
    for (const kind of ["audio", "video"]) {
      const rec = r[kind];
      if (!rec) continue;
      const report = await rec.getStats();
      report.forEach((e) => {
        if (e.type === "inbound-rtp") {
          row[kind] = {
            jitterBufferDelay: e.jitterBufferDelay, jitterBufferEmittedCount: e.jitterBufferEmittedCount,
            jitterBufferTargetDelay: e.jitterBufferTargetDelay, jitterBufferMinimumDelay: e.jitterBufferMinimumDelay,
            totalSamplesReceived: e.totalSamplesReceived, concealedSamples: e.concealedSamples,
            packetsLost: e.packetsLost, packetsReceived: e.packetsReceived, jitter: e.jitter,
            lastPacketReceivedTimestamp: e.lastPacketReceivedTimestamp, framesDecoded: e.framesDecoded,
            totalProcessingDelay: e.totalProcessingDelay, insertedSamplesForDeceleration: e.insertedSamplesForDeceleration,
            removedSamplesForAcceleration: e.removedSamplesForAcceleration, playoutId: e.playoutId,
          };
        }
        if (e.type === "media-playout") {
          row.playout = { totalPlayoutDelay: e.totalPlayoutDelay, totalSamplesCount: e.totalSamplesCount,
                          synthesizedSamplesDuration: e.synthesizedSamplesDuration };
        }
      });
    }
    samples.stats.push(row);
  }, 250);
  return samples;
}
