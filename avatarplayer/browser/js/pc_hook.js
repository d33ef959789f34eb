// Evaluated by avatarplayer/browser/livekit.py with pyodide's run_js (one expression: no
// trailing semicolon, no exports); loaded with browser.jsutil.js_source("pc_hook.js").
//
// Chromium calls a receiver's script transform reliably only when it is set as the transceiver is
// created, before negotiation (measured on Chromium 156 with livekit-client 2.16.1 and 2.23.0:
// 44 of 44 runs; at TrackSubscribed it failed up to 10 in 26). So wrap RTCPeerConnection, once per
// page, before livekit-client connects, and offer every new video receiver to the provider:
// ``addTransceiver`` covers the recvonly sections livekit-client >= 2.17 pre-adds on its single
// connection, the ``track`` event the transceivers the SFU offers on a subscriber connection.
// Firefox differs for video: a script transform set on a receiver inside its ``track`` event (while
// setRemoteDescription runs) never sees a frame, and one set a task later does (Firefox 153 ESR,
// livekit-client 2.23.0: without it, the transform watchdog had to re-attach after a second, every
// time). So where the provider asks for it (``onVideoTrack``: browsers without createEncodedStreams),
// a video receiver from a ``track`` event is offered again from a zero-delay timer.
// Audio receivers get an observer (frames pass through untouched) that reports when the audio's
// packets arrive, for lip sync (avatarplayer/sync.py).
// Each provider adds itself to ``listeners`` while it is open; new receivers go to the one that
// opened last, and closing one hands them back to the one before (it does not unhook the others).
(() => {
  if (globalThis.__avatarplayerPcHook) return globalThis.__avatarplayerPcHook;
  const hook = { listeners: [], offered: new WeakSet() };
  const current = () => hook.listeners[hook.listeners.length - 1] || null;
  hook.add = (entry) => { hook.listeners.push(entry); };
  hook.remove = (entry) => {
    const i = hook.listeners.indexOf(entry);
    if (i >= 0) hook.listeners.splice(i, 1);
  };
  const offer = (receiver, negotiated) => {
    if (!receiver || !receiver.track || hook.offered.has(receiver)) return;
    const kind = receiver.track.kind;
    if (kind !== "video" && kind !== "audio") return;
    hook.offered.add(receiver);
    const listener = current();
    if (negotiated && kind === "video" && listener && listener.onVideoTrack) {
      // once setRemoteDescription is over (see onVideoTrack above)
      setTimeout(() => { if (current() === listener) listener.onVideoTrack(receiver); }, 0);
    }
    if (!listener) return;
    if (kind === "video") listener.onVideoReceiver(receiver);
    else if (listener.onAudioReceiver) listener.onAudioReceiver(receiver);
  };
  // With encodedInsertableStreams a sender sends nothing until its encoded streams are read, and
  // they can only be created right after the sender is: pipe them straight through, here.
  const pipe = (sender) => {
    const listener = current();
    if (!listener || !listener.pipeSenders || !sender || sender.avatarplayerPiped) return;
    try {
      const { readable, writable } = sender.createEncodedStreams();
      readable.pipeTo(writable).catch(() => {});
      sender.avatarplayerPiped = true;
    } catch (e) { hook.pipeErrors = (hook.pipeErrors || 0) + 1; }
  };
  const Native = globalThis.RTCPeerConnection;
  class AvatarPlayerPeerConnection extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("track", (event) => offer(event.receiver, true));
    }
    addTransceiver(trackOrKind, init) {
      const transceiver = super.addTransceiver(trackOrKind, init);
      if (typeof trackOrKind !== "string") pipe(transceiver.sender);
      offer(transceiver.receiver);
      return transceiver;
    }
    addTrack(track, ...streams) {
      const sender = super.addTrack(track, ...streams);
      pipe(sender);
      return sender;
    }
  }
  globalThis.RTCPeerConnection = AvatarPlayerPeerConnection;
  globalThis.__avatarplayerPcHook = hook;
  return hook;
})()
