// Test/benchmark harness: plain Pyodide (no PyScript) running the real AvatarPlayer.
// Query: url, token, lk (livekit-client version), mode (auto|script|streams|data), jitter (1|0),
//        autoconnect (1|0), log (info|warning|error|none), tap (1: time the avatar's voice as
//        heard, audio-tap.js), sync (audio|independent: the player's option), shared (0: the
//        player's own room;
//        "before": the app creates a Room, hands it to the provider, then connects it itself;
//        "after": the app connects its Room first, then creates the provider), timeout (s).
const params = new URLSearchParams(location.search);
const status = document.getElementById("status");
const t0 = performance.now();
window.harness = { phase: "booting", bootMs: null, errors: [] };

const show = (text) => { status.textContent = text; };

try {
  const config = await (await fetch("/api/config")).json();
  const { loadPyodide } = await import(config.pyodideIndexURL + "pyodide.mjs");
  const pyodide = await loadPyodide({ indexURL: config.pyodideIndexURL });
  window.harness.bootMs = performance.now() - t0;
  await pyodide.loadPackage(config.wheels.map((w) => new URL(w, location.href).href));
  window.harness.installedMs = performance.now() - t0;
  pyodide.globals.set("INSTALLED_MS", window.harness.installedMs);
  window.harness.pyodide = pyodide; // for in-page measurements (bench/e2e.py)
  const lkVersion = params.get("lk") || Object.keys(config.livekitClients)[0];
  pyodide.globals.set("HARNESS_CONFIG", pyodide.toPy({
    url: params.get("url"), token: params.get("token"),
    livekitClientUrl: config.livekitClients[lkVersion],
    transformWorker: config.transformWorker,
    mode: params.get("mode") || "auto",
    jitter: params.get("jitter") !== "0",
    autoconnect: params.get("autoconnect") !== "0",
    logLevel: params.get("log") || "info",
    shared: params.get("shared") || "",
    timeout: Number(params.get("timeout") || 15),
    sync: params.get("sync") || "audio",
  }));
  // tap=1: time the avatar's voice as heard (A/V offset measurements: audio-tap.js)
  if (params.get("tap") === "1") {
    const tap = await import("./audio-tap.js");
    tap.installAudioTap();
    tap.installReceiverSampler(() => (window.harness.getRoom ? window.harness.getRoom() : null));
  }
  const source = await (await fetch("player_harness.py")).text();
  show("running player…");
  await pyodide.runPythonAsync(source);
} catch (e) {
  window.harness.errors.push(String(e && e.stack || e));
  window.harness.phase = "error";
  show("error: " + e);
}
