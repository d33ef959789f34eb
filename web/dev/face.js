// Preview of avatarplayer's reference face renderer (FaceRenderer): plain Pyodide from the local
// install, the wheels listed by /api/config, then face.py (synthetic frames, window.face API).
// Query: mode (idle|speaking|blend), seed, blendIn, blendOut, disconnectBlend (frames).
const status = document.getElementById("status");
const t0 = performance.now();
window.face = { phase: "booting", bootMs: null, errors: [], snapshot: () => null };

try {
  const config = await (await fetch("/api/config")).json();
  const { loadPyodide } = await import(config.pyodideIndexURL + "pyodide.mjs");
  const pyodide = await loadPyodide({ indexURL: config.pyodideIndexURL });
  window.face.bootMs = performance.now() - t0;
  await pyodide.loadPackage(config.wheels.map((w) => new URL(w, location.href).href));
  window.face.pyodide = pyodide; // for in-page measurements
  const source = await (await fetch("face.py")).text();
  status.textContent = "starting the renderer…";
  await pyodide.runPythonAsync(source);
} catch (e) {
  window.face.errors.push(String(e && e.stack || e));
  window.face.phase = "error";
  status.textContent = "error: " + e;
}
