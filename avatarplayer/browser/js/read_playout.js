// Evaluated by avatarplayer/browser/livekit.py with pyodide's run_js (one expression: no
// trailing semicolon, no exports); loaded with browser.jsutil.js_source("read_playout.js").
//
// Where NetEq is: the RTP timestamp of the avatar's audio delivered last, and when (epoch ms;
// some browsers count from the time origin). Read every tick: one call, one string back.
(receiver) => {
  const sources = receiver.getSynchronizationSources();
  if (!sources.length) return "";
  const s = sources[0];
  const at = s.timestamp < 1e12 ? performance.timeOrigin + s.timestamp : s.timestamp;
  return s.rtpTimestamp + " " + at;
}
