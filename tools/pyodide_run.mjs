#!/usr/bin/env node
// Run the repo's Python code inside Pyodide under Node, with nothing fetched from the network.
//
//   node tools/pyodide_run.mjs --pytest [pytest args...]     exit code = pytest's
//   node tools/pyodide_run.mjs --script file.py [args...]    exit code = the script's (SystemExit)
//
// How it works:
//   * Pyodide is loaded from node_modules/pyodide (indexURL points at the local package; the
//     npm package holds the runtime and the stdlib, no wheels, so no package is ever loaded
//     through loadPackage / the CDN).
//   * The repo is COPIED into Pyodide's in-memory file system (MEMFS) at the same absolute path
//     (git, venv, node_modules and caches left out), and the working directory is that copy.
//     Nothing Python writes (.pytest_cache, .hypothesis, __pycache__, tmp files) can reach the
//     host: there is no host mount at all. Paths outside the repo that are named on the command
//     line (a test file in /tmp, say) are copied in the same way.
//   * The pure-Python wheels in .cache/wheels/pyodide/*.whl (made by `tools/bootstrap.py core`)
//     are unzipped with Python's zipfile straight into site-packages: no micropip, no network.
//     The *.dist-info folders come along, so pytest finds plugins through entry points
//     (hypothesis' pytest plugin).
//   * The repo root goes first on sys.path, so `import avatarplayer` is the repo's code.
//   * Hypothesis: its storage directory (HYPOTHESIS_STORAGE_DIRECTORY) is in MEMFS, and under
//     --pytest a tiny plugin loads a "pyodide" settings profile (database=None, deadline=None:
//     wasm timing is slower and noisier) unless --hypothesis-profile is given; pytest runs with
//     `-p no:cacheprovider`.
//
// The first stdout line is a banner the tests check:
//   [pyodide_run] pyodide=<js version> sys.platform=emscripten sys.version=3.14.x ...

import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";
import { fileURLToPath, pathToFileURL } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const PYODIDE_DIR = path.join(ROOT, "node_modules", "pyodide");
const WHEEL_DIR = path.join(ROOT, ".cache", "wheels", "pyodide");

// Not copied into MEMFS: large, irrelevant, or caches that must never be read back.
const SKIP_DIRS = new Set([
  ".git", ".venv", "venv", "node_modules", ".cache", ".tools", "__pycache__", ".pytest_cache",
  ".hypothesis", ".mypy_cache", ".ruff_cache", "build", "dist", "test-results",
]);
const SKIP_REL = new Set(["bench/out"]);
const MAX_FILE_BYTES = 16 * 1024 * 1024;

function usage(message) {
  if (message) process.stderr.write(`pyodide_run: ${message}\n`);
  process.stderr.write(
    "usage: node tools/pyodide_run.mjs --pytest [pytest args...]\n" +
    "       node tools/pyodide_run.mjs --script file.py [args...]\n",
  );
  process.exit(2);
}

function fail(message) {
  process.stderr.write(`pyodide_run: ${message}\n`);
  process.exit(3);
}

// ------------------------------------------------------------------------------------ arguments

const argv = process.argv.slice(2);
if (argv.length === 0) usage("nothing to run");
const mode = argv[0];
if (mode !== "--pytest" && mode !== "--script") usage(`unknown mode ${mode}`);
const rest = argv.slice(1);
if (mode === "--script" && rest.length === 0) usage("--script needs a file");

// ------------------------------------------------------------------------ JS promise integration
// Pyodide's asyncio (asyncio.run, loop.run_until_complete) needs WebAssembly stack switching
// (JSPI). Node 20 has it only behind a V8 flag (--experimental-wasm-stack-switching, the old
// Suspender API, which Pyodide 314 still accepts); newer Node has --experimental-wasm-jspi or ships
// it. Setting the flag at run time (v8.setFlagsFromString) segfaults, so when it is missing the
// runner re-executes itself once with the flag. PYODIDE_RUN_NO_JSPI=1 turns this off.

function jspiFlag() {
  if (typeof WebAssembly.Suspending === "function" || typeof WebAssembly.Suspender === "function") return null;
  if (process.env.PYODIDE_RUN_NO_JSPI || process.env.PYODIDE_RUN_CHILD) return null;
  const probe = spawnSync(process.execPath, ["--v8-options"], { encoding: "utf8" });
  const options = probe.stdout || "";
  for (const flag of ["--experimental-wasm-jspi", "--experimental-wasm-stack-switching"]) {
    if (options.includes(`${flag} `)) return flag;
  }
  return null;
}

const flag = jspiFlag();
if (flag) {
  const child = spawnSync(process.execPath, [flag, ...process.execArgv, fileURLToPath(import.meta.url), ...argv], {
    stdio: "inherit",
    env: { ...process.env, PYODIDE_RUN_CHILD: "1" },
  });
  if (child.error) fail(`could not re-run node with ${flag}: ${child.error.message}`);
  process.exit(child.status ?? 128 + (os.constants.signals[child.signal] || 0));
}

// ---------------------------------------------------------------------------------- file system

function copyTree(FS, hostPath, memPath, rel = "") {
  const st = fs.statSync(hostPath);
  if (st.isDirectory()) {
    FS.mkdirTree(memPath);
    for (const entry of fs.readdirSync(hostPath, { withFileTypes: true })) {
      const childRel = rel ? `${rel}/${entry.name}` : entry.name;
      if (SKIP_DIRS.has(entry.name) || SKIP_REL.has(childRel) || entry.name.endsWith(".egg-info")) continue;
      if (entry.isSymbolicLink()) {
        // follow links that resolve to a plain file or folder; drop dangling ones
        try { fs.statSync(path.join(hostPath, entry.name)); } catch { continue; }
      } else if (!entry.isDirectory() && !entry.isFile()) {
        continue;
      }
      copyTree(FS, path.join(hostPath, entry.name), `${memPath}/${entry.name}`, childRel);
    }
  } else if (st.isFile()) {
    if (st.size > MAX_FILE_BYTES) return;
    FS.mkdirTree(path.posix.dirname(memPath));
    FS.writeFile(memPath, fs.readFileSync(hostPath));
  }
}

function isInside(child, parent) {
  const rel = path.relative(parent, child);
  return rel === "" || (!rel.startsWith("..") && !path.isAbsolute(rel));
}

// Host paths named on the command line outside the repo (e.g. a throwaway test in /tmp) are
// copied into MEMFS at the same absolute path, so the arguments need no rewriting.
function copyExternalArgs(FS, args) {
  for (const arg of args) {
    if (arg.startsWith("-")) continue;
    const candidate = path.resolve(process.cwd(), arg.split("::")[0]);
    if (isInside(candidate, ROOT) || !fs.existsSync(candidate)) continue;
    copyTree(FS, candidate, candidate);
  }
}

// ------------------------------------------------------------------------------------- pyodide

async function main() {
  const entry = path.join(PYODIDE_DIR, "pyodide.mjs");
  if (!fs.existsSync(entry)) fail(`${entry} is missing: run python3 tools/bootstrap.py core`);
  const wheels = fs.existsSync(WHEEL_DIR)
    ? fs.readdirSync(WHEEL_DIR).filter((n) => n.endsWith(".whl")).sort()
    : [];
  if (mode === "--pytest" && !wheels.some((n) => n.startsWith("pytest-"))) {
    fail(`no pytest wheel in ${WHEEL_DIR}: run python3 tools/bootstrap.py core`);
  }

  const { loadPyodide, version: jsVersion } = await import(pathToFileURL(entry).href);
  const t0 = performance.now();
  const pyodide = await loadPyodide({
    indexURL: PYODIDE_DIR + path.sep,
    env: {
      HOME: "/home/pyodide",
      PYTHONDONTWRITEBYTECODE: "1",
      HYPOTHESIS_STORAGE_DIRECTORY: "/tmp/hypothesis",
      PYODIDE_RUN: "1",
    },
  });
  const bootMs = performance.now() - t0;

  // Byte-exact output, no line buffering surprises: Python's writes go straight to fds 1 and 2.
  const writer = (fd) => ({
    write: (buf) => {
      let off = 0;
      while (off < buf.length) {
        try {
          off += fs.writeSync(fd, buf, off, buf.length - off);
        } catch (err) {
          if (err.code !== "EAGAIN") throw err;
        }
      }
      return buf.length;
    },
  });
  pyodide.setStdout(writer(1));
  pyodide.setStderr(writer(2));

  const FS = pyodide.FS;
  copyTree(FS, ROOT, ROOT);
  copyExternalArgs(FS, rest);
  FS.mkdirTree("/tmp/wheels");
  FS.mkdirTree("/tmp/hypothesis");
  for (const name of wheels) FS.writeFile(`/tmp/wheels/${name}`, fs.readFileSync(path.join(WHEEL_DIR, name)));

  // the working directory is mirrored too (relative arguments mean the same thing inside)
  const cwd = process.cwd();
  FS.mkdirTree(cwd);
  const globals = pyodide.toPy({
    ROOT,
    CWD: cwd,
    MODE: mode,
    ARGS: rest,
    WHEELS: wheels.map((n) => `/tmp/wheels/${n}`),
    JS_VERSION: jsVersion,
    BOOT_MS: bootMs,
    JSPI: typeof WebAssembly.Suspending === "function" || typeof WebAssembly.Suspender === "function",
  });
  const code = String.raw`
import os, sys, sysconfig, zipfile, runpy

site = sysconfig.get_paths()["purelib"]
for whl in WHEELS:
    with zipfile.ZipFile(whl) as zf:
        zf.extractall(site)
import importlib
importlib.invalidate_caches()

os.chdir(CWD)
sys.path.insert(0, ROOT)
sys.dont_write_bytecode = True

print(f"[pyodide_run] pyodide={JS_VERSION} sys.platform={sys.platform} "
      f"sys.version={sys.version.split()[0]} implementation={sys.implementation.name} "
      f"boot_ms={BOOT_MS:.0f} wheels={len(WHEELS)} jspi={JSPI}", flush=True)

# A tiny pytest plugin (passed with -p) so hypothesis is imported by pytest itself, after the
# assertion-rewrite hook is in place, and only then switched to the "pyodide" profile.
os.makedirs("/tmp/pyodide_run_plugins", exist_ok=True)
with open("/tmp/pyodide_run_plugins/_pyodide_run_plugin.py", "w") as f:
    f.write(
        "def pytest_configure(config):\n"
        "    try:\n"
        "        from hypothesis import settings\n"
        "    except ImportError:\n"
        "        return\n"
        "    if not config.getoption('hypothesis_profile', None):\n"
        "        settings.register_profile('pyodide', database=None, deadline=None)\n"
        "        settings.load_profile('pyodide')\n"
    )
sys.path.append("/tmp/pyodide_run_plugins")

def _run():
    args = list(ARGS)
    if MODE == "--pytest":
        try:
            import pytest
        except ModuleNotFoundError as exc:
            print(f"pyodide_run: pytest cannot be imported inside Pyodide: {exc}. Every pure-Python "
                  "dependency of pytest must be pinned in requirements/pyodide.txt (then run "
                  "python3 tools/bootstrap.py core).", file=sys.stderr)
            return 4
        sys.argv = ["pytest", *args]
        return int(pytest.main(["-p", "no:cacheprovider", "-p", "_pyodide_run_plugin", *args]))
    script = os.path.abspath(args[0])
    sys.argv = [script, *args[1:]]
    sys.path.insert(0, os.path.dirname(script))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    return 0

try:
    _rc = _run()
finally:
    sys.stdout.flush()
    sys.stderr.flush()
_rc
`;
  let rc;
  try {
    rc = await pyodide.runPythonAsync(code, { globals });
  } catch (err) {
    // an uncaught Python exception (PythonError carries the formatted traceback)
    process.stderr.write(`${err && err.message ? err.message : err}\n`);
    rc = 1;
  }
  process.exit(typeof rc === "number" ? rc : 1);
}

main().catch((err) => {
  process.stderr.write(`pyodide_run: ${err && err.stack ? err.stack : err}\n`);
  process.exit(3);
});
