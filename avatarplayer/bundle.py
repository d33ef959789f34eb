"""``python -m avatarplayer.bundle OUT/``: a static folder that plays the avatar from any web server.

CPython only, standard library only; nothing imports it (``import avatarplayer`` does not), so it
never runs in a page. It writes::

    OUT/index.html            the page: a canvas, a small connect form, the status line
    OUT/main.py               the page's Python (PyScript): AvatarPlayer + LiveKitProvider + FaceRenderer
    OUT/pyscript.json         PyScript's config: the local Pyodide, the wheels below, no micropip
    OUT/wheels/*.whl          avatarplayer and protobuf (what the set-up builds into .cache/wheels/web)
    OUT/vendor/livekit-client/livekit-client.esm.mjs
    OUT/vendor/pyscript/      core.js, core.css and every chunk core.js imports
    OUT/vendor/pyodide/       the files Pyodide boots from (no wheels: the npm package has none)
    OUT/avatarplayer-bundle.json   what was bundled: versions and files

Every URL in it is relative, so the folder works under any path prefix. ``--cdn`` loads Pyodide and
PyScript from their public CDNs at the pinned versions instead of copying them.

The page connects with ``?url=wss://…&token=…`` in its address, with a URL and token pasted into
its form, or else with the JSON a token endpoint answers to ``POST`` (``--token-endpoint``, default
``/api/token``): ``serverUrl`` and ``participantToken`` (or ``token``, as ``serve.py``'s endpoint
names it).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

__all__ = ["BundleError", "build", "main"]

REPO = Path(__file__).resolve().parent.parent
"""The source checkout this module runs from, if it is one (it has tools/bootstrap.py)."""

PYODIDE_FILES = ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json")
"""What Pyodide loads to boot: the loader, the runtime, the standard library, the package lock."""

LIVEKIT_CLIENT = "livekit-client/dist/livekit-client.esm.mjs"
PYSCRIPT_DIST = "@pyscript/core/dist"
REQUIRED_WHEELS = ("avatarplayer", "protobuf")
SETUP_COMMAND = "python3 tools/bootstrap.py browser"
MANIFEST = "avatarplayer-bundle.json"

PYODIDE_CDN = "https://cdn.jsdelivr.net/pyodide/v{version}/full/"
PYSCRIPT_CDN = "https://pyscript.net/releases/{version}/"
CDN_ORIGINS = ("https://cdn.jsdelivr.net", "https://pyscript.net")

_CHUNK = re.compile(r"""["'`]\./([A-Za-z0-9_.-]+\.(?:m?js|css))["'`]""")


class BundleError(Exception):
    """Something the bundle needs is missing; the message names it and how to get it."""


# ----------------------------------------------------------------------------- inputs


def default_node_modules() -> Path:
    return REPO / "node_modules"


def default_wheels() -> Path:
    """The web wheels of this checkout, (re)built by the set-up if its sources changed."""
    bootstrap = REPO / "tools" / "bootstrap.py"
    if not bootstrap.is_file():
        raise BundleError("not in the avatarplayer repository: pass --wheels DIR (a folder holding the "
                          f"avatarplayer and protobuf wheels; `{SETUP_COMMAND}` builds them in .cache/wheels/web)")
    if not (REPO / ".venv" / "bin" / "python").exists():
        raise BundleError(f"{REPO / '.venv'} is missing, so the wheels cannot be built: run `{SETUP_COMMAND}`")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tools import bootstrap as setup  # stdlib only, idempotent: a second call costs milliseconds

    return setup.ensure_web_wheels()


def _need(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise BundleError(f"{what} not found: {path} is missing. {hint}")
    return path


def _npm_version(node_modules: Path, package: str) -> str:
    meta = _need(node_modules / package / "package.json", f"the npm package {package}",
                 f"Install the pinned npm packages with `{SETUP_COMMAND}` (or `npm ci`), or pass --node-modules DIR.")
    return json.loads(meta.read_text())["version"]


def pyscript_chunks(dist: Path) -> list[str]:
    """core.js, core.css and every module core.js imports, statically or dynamically (transitively)."""
    names, todo = ["core.css"], ["core.js"]
    while todo:
        name = todo.pop()
        if name in names:
            continue
        names.append(name)
        source = _need(dist / name, "a PyScript chunk", f"Reinstall the npm packages (`{SETUP_COMMAND}`).")
        if name.endswith(".js"):
            todo.extend(n for n in _CHUNK.findall(source.read_text(errors="replace")) if n not in names)
    return sorted(names)


def find_wheels(wheels: Path) -> list[Path]:
    _need(wheels, "the wheels folder", f"Build the wheels with `{SETUP_COMMAND}` or pass --wheels DIR.")
    found = sorted(wheels.glob("*.whl"))
    for name in REQUIRED_WHEELS:
        if not any(w.name.startswith(name + "-") for w in found):
            raise BundleError(f"no {name} wheel in {wheels}: build the wheels with `{SETUP_COMMAND}` "
                              "or pass --wheels DIR")
    return found


# ----------------------------------------------------------------------------- outputs


def pyscript_config(wheels: list[str], *, cdn_pyodide: str | None = None) -> dict:
    """The local interpreter (or the CDN's, pinned) and the wheels, installed without micropip."""
    return {
        "interpreter": (cdn_pyodide or "./vendor/pyodide/") + "pyodide.mjs",
        "packages": [f"./wheels/{name}" for name in wheels],
        "packages_cache": "passthrough",
    }


def content_security_policy(*, cdn: bool) -> str:
    """Scripts from this folder (and the CDNs with ``--cdn``); eval and WebAssembly for Pyodide and
    PyScript; the transform worker from a Blob URL; connections to any LiveKit server (its URL is
    only known at run time: narrow ``connect-src`` to yours)."""
    cdns = list(CDN_ORIGINS) if cdn else []
    return "; ".join([
        "default-src 'self'",
        " ".join(["script-src 'self' 'wasm-unsafe-eval' 'unsafe-eval'", *cdns]),
        " ".join(["style-src 'self' 'unsafe-inline'", *cdns]),
        "img-src 'self' data: blob:",
        "media-src 'self' blob: mediastream:",
        "worker-src 'self' blob:",
        "connect-src 'self' ws: wss: http: https:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
    ])


INDEX_HTML = """\
<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <meta http-equiv="Content-Security-Policy" content="{csp}">
  <title>avatarplayer</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="{pyscript}core.css">
  <script type="module" src="{pyscript}core.js"></script>
  <style>
    body {{ font: 15px system-ui, sans-serif; max-width: 640px; margin: 2em auto; padding: 0 1em; }}
    canvas {{ width: 100%; aspect-ratio: 4 / 3; background: #eef; border-radius: 8px; }}
    #connect-form {{ display: flex; gap: .5em; flex-wrap: wrap; margin: .8em 0; }}
    input {{ flex: 1 1 12em; }}
  </style>
</head>
<body>
  <canvas id="avatar" aria-label="the avatar"></canvas>
  <p id="status" role="status">Loading Python…</p>
  <button id="sound" type="button" hidden>Enable sound</button>
  <div id="connect-form">
    <input id="url" name="url" placeholder="wss://your-livekit-server (empty: ask {endpoint})" autocomplete="off">
    <input id="token" name="token" placeholder="access token" autocomplete="off">
    <button id="connect" type="button" disabled>Connect</button>
    <button id="disconnect" type="button" disabled>Disconnect</button>
  </div>
  <script type="py" src="main.py" config="pyscript.json"></script>
</body>
</html>
"""

MAIN_PY = '''\
"""The page's Python: join a LiveKit room and draw the avatar's face as it speaks.

Credentials, first found wins: ``?url=…&token=…`` in the page's address (it connects at once), the
form's two fields, or ``POST {endpoint}`` (JSON ``serverUrl`` and ``participantToken`` or ``token``).
``window.avatarStats()`` returns the state and counters as JSON (for you, and for tests).
"""

import asyncio
import json

import js
from pyodide.ffi import create_proxy
from pyodide.http import pyfetch
from pyscript import document, when

from avatarplayer import AvatarPlayer, FaceRenderer, LiveKitProvider

TOKEN_ENDPOINT = {endpoint_literal}


def here(path):
    """A URL next to this page: the folder works under any path prefix."""
    return js.URL.new(path, document.baseURI).href


renderer = FaceRenderer(document.getElementById("avatar"))
# the transform worker is in the avatarplayer wheel: it starts from a Blob URL (CSP: worker-src blob:)
provider = LiveKitProvider(livekit_client_url=here("vendor/livekit-client/livekit-client.esm.mjs"))
player = AvatarPlayer(provider, renderer)


def field(id_):
    return document.getElementById(id_)


def show(text):
    field("status").textContent = text


def on_state(state):
    state = str(state)
    show(state)
    field("connect").disabled = state not in ("disconnected", "failed")
    field("disconnect").disabled = state not in ("connected", "reconnecting")


player.on("connection-state-changed", on_state)
player.on("error", lambda error: show(f"error: {{error}}"))
player.on("audio-playback-changed", lambda can_play: setattr(field("sound"), "hidden", bool(can_play)))


async def credentials():
    url, token = field("url").value.strip(), field("token").value.strip()
    if url and token:
        return {{"url": url, "token": token}}
    response = await pyfetch(TOKEN_ENDPOINT, method="POST", body="{{}}",
                             headers={{"Content-Type": "application/json"}})
    try:
        grant = json.loads(await response.text())
    except ValueError:
        grant = None
    grant = grant if isinstance(grant, dict) else {{}}
    token = grant.get("participantToken") or grant.get("token")
    if not response.ok or not token:
        raise RuntimeError(grant.get("error") or f"{{TOKEN_ENDPOINT}} answered HTTP {{response.status}} without "
                           "a token: paste a server URL and a token")
    return {{"url": grant.get("serverUrl"), "token": token}}


async def connect():
    try:
        await player.connect(**await credentials())
    except Exception as exc:
        on_state(player.connection_state)
        show(f"could not connect: {{exc}}")


@when("click", "#connect")
async def on_connect(event):
    await connect()


@when("click", "#disconnect")
async def on_disconnect(event):
    await player.disconnect()


@when("click", "#sound")
async def on_sound(event):
    await player.start_audio()  # from a click: the browser's autoplay policy allows it


js.window.avatarStats = create_proxy(lambda: json.dumps({{
    "state": player.connection_state, "motionPath": player.motion_mode, "face": renderer.snapshot(),
    "summary": player.session_summary.as_dict()}}))

on_state("disconnected")
params = js.URLSearchParams.new(js.location.search)
if params.get("url") and params.get("token"):
    field("url").value, field("token").value = params.get("url"), params.get("token")
    pending = asyncio.ensure_future(connect())  # held: a task nobody holds may be collected
'''


# ----------------------------------------------------------------------------- the build


def build(out: Path, *, wheels: Path | None = None, node_modules: Path | None = None,
          token_endpoint: str = "/api/token", cdn: bool = False) -> list[str]:
    """Write the bundle into ``out`` (created; an earlier bundle there is replaced, any other
    content refused). Returns the files written, relative to ``out``, sorted."""
    out = Path(out)
    node_modules = Path(node_modules) if node_modules is not None else default_node_modules()
    hint = (f"Install the pinned npm packages with `{SETUP_COMMAND}` (or `npm ci` in the repository), "
            "or pass --node-modules DIR.")
    _need(node_modules, "node_modules", hint)
    livekit = _need(node_modules / LIVEKIT_CLIENT, "livekit-client's ESM build", hint)
    versions = {"livekit-client": _npm_version(node_modules, "livekit-client"),
                "pyodide": _npm_version(node_modules, "pyodide"),
                "@pyscript/core": _npm_version(node_modules, "@pyscript/core")}
    copies: dict[str, Path] = {"vendor/livekit-client/livekit-client.esm.mjs": livekit}
    if not cdn:
        for name in PYODIDE_FILES:
            copies[f"vendor/pyodide/{name}"] = _need(node_modules / "pyodide" / name, "a Pyodide file", hint)
        dist = _need(node_modules / PYSCRIPT_DIST, "PyScript's build", hint)
        for name in pyscript_chunks(dist):
            copies[f"vendor/pyscript/{name}"] = dist / name
    wheel_files = find_wheels(Path(wheels) if wheels is not None else default_wheels())
    for wheel in wheel_files:
        copies[f"wheels/{wheel.name}"] = wheel
    versions["avatarplayer"] = next(w.name.split("-")[1] for w in wheel_files if w.name.startswith("avatarplayer-"))

    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise BundleError(f"{out} is not empty and holds no earlier bundle ({MANIFEST}): pick a new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for rel, source in copies.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out / rel)

    cdn_pyodide = PYODIDE_CDN.format(version=versions["pyodide"]) if cdn else None
    pyscript = PYSCRIPT_CDN.format(version=versions["@pyscript/core"]) if cdn else "vendor/pyscript/"
    texts = {
        "pyscript.json": json.dumps(pyscript_config([w.name for w in wheel_files], cdn_pyodide=cdn_pyodide),
                                    indent=2) + "\n",
        "index.html": INDEX_HTML.format(csp=content_security_policy(cdn=cdn), pyscript=pyscript,
                                        endpoint=_html_escape(token_endpoint)),
        "main.py": MAIN_PY.format(endpoint=token_endpoint, endpoint_literal=json.dumps(token_endpoint)),
    }
    for rel, text in texts.items():
        (out / rel).write_text(text)
    files = sorted([*copies, *texts, MANIFEST])
    manifest = {"versions": versions, "cdn": cdn, "tokenEndpoint": token_endpoint, "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return files


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatarplayer.bundle",
        description="Write a static folder (page, PyScript config, wheels, runtimes) that plays the avatar "
                    "from any web server. Every URL in it is relative.")
    parser.add_argument("out", type=Path, help="the folder to write (created; an earlier bundle is replaced)")
    parser.add_argument("--token-endpoint", default="/api/token", metavar="URL",
                        help="where the page POSTs for {serverUrl, participantToken} when its address has no "
                             "?url=&token= and its form is empty (default: %(default)s)")
    parser.add_argument("--wheels", type=Path, metavar="DIR",
                        help="the avatarplayer and protobuf wheels (default: this checkout's, built by the set-up)")
    parser.add_argument("--node-modules", type=Path, metavar="DIR",
                        help="the pinned npm packages: livekit-client, pyodide, @pyscript/core "
                             "(default: this checkout's node_modules)")
    parser.add_argument("--cdn", action="store_true",
                        help="load Pyodide and PyScript from their public CDNs (pinned versions) instead of copying them")
    args = parser.parse_args(argv)
    try:
        files = build(args.out, wheels=args.wheels, node_modules=args.node_modules,
                      token_endpoint=args.token_endpoint, cdn=args.cdn)
    except BundleError as exc:
        print(f"avatarplayer.bundle: {exc}", file=sys.stderr)
        return 2
    size = sum((args.out / f).stat().st_size for f in files)
    print(f"wrote {len(files)} files ({size / 1e6:.1f} MB) to {args.out}/: serve that folder and open index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
