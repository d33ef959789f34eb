"""Idempotent set-up for the demo and the tests, using only the standard library.

Every step installs from the package registries this project is allowed to reach (Debian, PyPI,
npm, the Go module proxy), caches what it made under git-ignored folders (.venv, .cache, .tools,
node_modules), and records a stamp holding a hash of its inputs, so a second run with nothing
changed costs well under a second.

    python3 tools/bootstrap.py core      # venv + test deps + npm packages + Pyodide wheels
    python3 tools/bootstrap.py demo      # core + Debian chromium + LiveKit server (what serve.py runs)
    python3 tools/bootstrap.py browser   # demo + firefox-esr, pulseaudio and geckodriver (the tests)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
CACHE = ROOT / ".cache"
STAMPS = CACHE / "stamps"
PYODIDE_WHEELS = CACHE / "wheels" / "pyodide"
TOOLS_BIN = ROOT / ".tools" / "bin"

LIVEKIT_SERVER_VERSION = "v1.13.5"
LIVEKIT_SERVER_MODULE = "github.com/livekit/livekit-server/cmd/server"
GECKODRIVER_VERSION = "0.37.1"  # WebDriver for Firefox ESR (tools/firefox.py); crates.io ships its source
APT_PACKAGES = ("chromium", "chromium-driver", "ffmpeg", "espeak-ng", "sox", "iproute2",
                "redis-server")  # redis-server: the multi-node LiveKit cluster (tools/devstack.py)
FIREFOX_APT_PACKAGES = ("firefox-esr",  # the tests' second browser engine (tools/firefox.py, `--browser firefox`)
                        "pulseaudio")  # a null sink: Firefox's audio output on a machine without a sound card
MIN_PYTHON = (3, 11)


def log(message: str) -> None:
    print(f"[bootstrap] {message}", flush=True)


def run(cmd: list[str], **kwargs) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, **kwargs)


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(part.read_bytes() if part.is_file() else b"<missing>")
        else:
            h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


def _fresh(name: str, digest: str) -> bool:
    stamp = STAMPS / name
    return stamp.is_file() and stamp.read_text() == digest


def _mark(name: str, digest: str) -> None:
    STAMPS.mkdir(parents=True, exist_ok=True)
    (STAMPS / name).write_text(digest)


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> Path:
    """A virtualenv with every pinned requirements/*.txt (but pyodide.txt) and this package, editable."""
    if sys.version_info < MIN_PYTHON:
        sys.exit(f"Python >= {'.'.join(map(str, MIN_PYTHON))} is needed, this is {sys.version.split()[0]}")
    reqs = sorted(p for p in (ROOT / "requirements").glob("*.txt") if p.name != "pyodide.txt")
    digest = _digest(sys.version, ROOT / "pyproject.toml", *reqs)
    if _fresh("venv", digest) and venv_python().exists():
        return venv_python()
    if not venv_python().exists():
        log(f"creating {VENV.relative_to(ROOT)}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [str(venv_python()), "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "install", "--upgrade", "pip"])
    run([*pip, "install", *(a for r in reqs for a in ("-r", str(r))), "-e", str(ROOT)])
    _mark("venv", digest)
    return venv_python()


def ensure_npm() -> None:
    """node_modules from package-lock.json (npm ci), redone only when the lockfile changes."""
    lock = ROOT / "package-lock.json"
    if not lock.exists():
        return
    digest = _digest(lock)
    if _fresh("npm", digest) and (ROOT / "node_modules").is_dir():
        return
    if shutil.which("npm") is None:
        ensure_apt(("nodejs", "npm"))
    run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT)
    _mark("npm", digest)


def ensure_pyodide_wheels() -> Path:
    """Pure-Python wheels (pinned in requirements/pyodide.txt) for the in-Pyodide test run."""
    reqs = ROOT / "requirements" / "pyodide.txt"
    digest = _digest(reqs)
    if _fresh("pyodide-wheels", digest) and PYODIDE_WHEELS.is_dir():
        return PYODIDE_WHEELS
    if PYODIDE_WHEELS.exists():
        shutil.rmtree(PYODIDE_WHEELS)
    PYODIDE_WHEELS.mkdir(parents=True)
    run([str(venv_python()), "-m", "pip", "--disable-pip-version-check", "-q", "download",
         "--no-deps", "--only-binary=:all:", "--python-version", "3.14", "--platform", "any",
         "-d", str(PYODIDE_WHEELS), "-r", str(reqs)])
    _mark("pyodide-wheels", digest)
    return PYODIDE_WHEELS


def ensure_web_wheels() -> Path:
    """The wheels a page installs into Pyodide: avatarplayer itself (rebuilt when its sources
    change) plus the pinned pure-Python ones of requirements/web.txt, if any."""
    out = CACHE / "wheels" / "web"
    sources = sorted(p for p in (ROOT / "avatarplayer").rglob("*")
                     if p.is_file() and p.suffix in (".py", ".js", ".typed"))
    web_reqs = ROOT / "requirements" / "web.txt"
    digest = _digest(ROOT / "pyproject.toml", web_reqs, *sources, *(p.relative_to(ROOT).as_posix() for p in sources))
    if _fresh("web-wheels", digest) and any(out.glob("avatarplayer-*.whl")):
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pip = [str(venv_python()), "-m", "pip", "--disable-pip-version-check", "-q"]
    # setuptools builds in ./build and keeps what it finds there: a module moved or deleted since
    # the last build would still ship
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    run([*pip, "wheel", "--no-deps", "-w", str(out), str(ROOT)])
    if web_reqs.exists():
        run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.14",
             "--platform", "any", "-d", str(out), "-r", str(web_reqs)])
    _mark("web-wheels", digest)
    return out


def ensure_apt(packages: tuple[str, ...] = APT_PACKAGES) -> None:
    """Debian packages; apt-get runs only when one of them is missing."""
    missing = [p for p in packages if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
    ).stdout.strip() != "install ok installed"]
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run([*sudo, "apt-get", "update", "-q"], env=env)
    run([*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env)


def livekit_server_binary() -> Path:
    return TOOLS_BIN / "livekit-server"


def ensure_livekit_server() -> Path:
    """LiveKit server built from the Go module proxy at the pinned tag (no registry ships a binary)."""
    binary = livekit_server_binary()
    digest = _digest(LIVEKIT_SERVER_MODULE, LIVEKIT_SERVER_VERSION)
    if _fresh("livekit-server", digest) and binary.exists():
        return binary
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOTOOLCHAIN="local", CGO_ENABLED="0", GOBIN=str(TOOLS_BIN), GOFLAGS="-trimpath")
    cmd = ["go", "install", f"{LIVEKIT_SERVER_MODULE}@{LIVEKIT_SERVER_VERSION}"]
    try:
        run(cmd, env=env, cwd=TOOLS_BIN)
    except subprocess.CalledProcessError:
        log("go install failed; retrying without the checksum database (go.sum still pins every module)")
        run(cmd, env=dict(env, GOSUMDB="off"), cwd=TOOLS_BIN)
    (TOOLS_BIN / "server").replace(binary)
    _mark("livekit-server", digest)
    return binary


def geckodriver_binary() -> Path:
    return TOOLS_BIN / "geckodriver"


def ensure_geckodriver() -> Path:
    """geckodriver built from crates.io at the pinned version with its own lockfile (Mozilla's
    GitHub releases are not a registry this project may download from)."""
    binary = geckodriver_binary()
    digest = _digest("geckodriver", GECKODRIVER_VERSION)
    if _fresh("geckodriver", digest) and binary.exists():
        return binary
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    if not Path(cargo).exists():
        sys.exit("cargo is needed to build geckodriver (Rust from rustup): none on PATH or in ~/.cargo/bin")
    run([cargo, "install", "--quiet", "--locked", "--root", str(TOOLS_BIN.parent), "geckodriver",
         "--version", GECKODRIVER_VERSION])
    _mark("geckodriver", digest)
    return binary


def core() -> Path:
    ensure_apt(("ffmpeg",))  # tests decode the carrier's VP8 key frame with libvpx
    python = ensure_venv()
    ensure_npm()
    ensure_pyodide_wheels()
    return python


def demo() -> Path:
    """What ``serve.py`` needs: core + Debian's Chromium and tools + the LiveKit server + the page's wheels."""
    python = core()
    ensure_apt()
    ensure_livekit_server()
    ensure_web_wheels()
    return python


def browser() -> Path:
    """What the browser tests need: the demo's set-up + Firefox ESR, PulseAudio and geckodriver."""
    python = demo()
    ensure_apt(FIREFOX_APT_PACKAGES)
    ensure_geckodriver()
    return python


STEPS = {"core": core, "demo": demo, "browser": browser}

if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else "core"
    if step not in STEPS:
        sys.exit(f"usage: {sys.argv[0]} [{'|'.join(STEPS)}]")
    STEPS[step]()
