// Evaluated by avatarplayer/browser/livekit.py with pyodide's run_js (one expression: no
// trailing semicolon, no exports); loaded with browser.jsutil.js_source("data_filter.js").
//
// Data messages go through this filter before they reach Python: messages from participants the
// player does not trust are counted here (by topic) and dropped, so a burst of them costs no
// Python call. Trusted: the identities Python put in ``trusted``, server messages (no
// participant), and, while ``open`` (no avatar known yet), any participant of kind agent. Python
// checks again: this is only the cheap first cut.
((handler, lk) => {
  const agentKind = lk.ParticipantKind ? lk.ParticipantKind.AGENT : 4;
  const filter = { trusted: new Set(), open: true, ignored: {} };
  filter.isAgent = (p) => !!p && (p.isAgent === true || p.kind === agentKind);
  filter.onBehalfOf = (p) => (p && p.attributes && p.attributes["lk.publish_on_behalf"]) || "";
  filter.trust = (identities, open) => {
    filter.trusted = new Set(JSON.parse(identities));
    filter.open = open;
  };
  filter.counts = () => JSON.stringify(filter.ignored);
  filter.handler = (payload, participant, kind, topic) => {
    if (!participant || filter.trusted.has(participant.identity) || (filter.open && filter.isAgent(participant))) {
      return handler(payload, participant, kind, topic);
    }
    const key = typeof topic === "string" ? topic : "";
    filter.ignored[key] = (filter.ignored[key] || 0) + 1;
  };
  return filter;
})
