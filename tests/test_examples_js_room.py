"""examples/js-room/ without a browser: ``run.py``'s site is the bundle with the example's own
``index.html``, ``app.js`` and ``main.py`` over it, every URL they name is relative and in the site
(nothing from a CDN), and the page keeps the hand-over's order. tests/browser/test_examples_js_room.py
plays it in Chromium."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from avatarplayer import bundle

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "js-room"
REMOTE = re.compile(r"https?://|cdn\.")


@pytest.fixture(scope="module")
def run_py():
    spec = importlib.util.spec_from_file_location("js_room_run", EXAMPLE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(run_py, tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("js-room") / "site"
    return out, run_py.build(out)


def test_the_site_is_the_bundle_with_the_examples_page_over_it(run_py, site) -> None:
    out, files = site
    assert run_py.OVERLAY == ("index.html", "app.js", "main.py")
    assert files == sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    for name in run_py.OVERLAY:
        assert (out / name).read_bytes() == (EXAMPLE / name).read_bytes(), name
    assert {"pyscript.json", "vendor/livekit-client/livekit-client.esm.mjs", "vendor/pyscript/core.js"} <= set(files)
    assert any(f.startswith("wheels/avatarplayer-") for f in files)
    run_py.build(out)  # a second run replaces the first (the bundle's manifest is still there)
    assert (out / "app.js").is_file()


def test_the_page_loads_only_files_of_the_site(site) -> None:
    out, files = site
    html, app = (out / "index.html").read_text(), (out / "app.js").read_text()
    for name, text in (("index.html", html), ("app.js", app), ("main.py", (out / "main.py").read_text())):
        assert not REMOTE.search(text), f"{name} names a remote URL"
    named = re.findall(r'(?:src|href|config)="([^"]+)"', html) + re.findall(r'from "([^"]+)"', app)
    named = [n for n in named if not n.startswith("data:")]
    assert {"app.js", "vendor/pyscript/core.js", "main.py", "pyscript.json",
            "./vendor/livekit-client/livekit-client.esm.mjs"} <= set(named), named
    for url in named:
        assert not url.startswith("/"), f"{url}: relative URLs only (any path prefix)"
        assert url.removeprefix("./") in files, f"{url} is not in the site"
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert csp == bundle.content_security_policy(cdn=False), "the page's CSP drifted from the bundle's"
    assert "<script>" not in html and "onclick" not in html  # the CSP allows no inline script


def test_the_page_keeps_the_hand_overs_order() -> None:
    html = (EXAMPLE / "index.html").read_text()
    # app.js sets window.appRoom before PyScript runs main.py: module scripts run in document order
    assert html.index('src="app.js"') < html.index('src="vendor/pyscript/core.js"') < html.index('src="main.py"')
    app = (EXAMPLE / "app.js").read_text()
    assert app.index("window.appRoom = room") < app.index("await player;") < app.index("await room.connect(")
    assert app.index("await room.connect(") < app.index("await avatar.start()")
    assert app.index("await (await player).stop()") < app.index("await room.disconnect()")
    main = (EXAMPLE / "main.py").read_text()
    tree = ast.parse(main)
    calls = {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "LiveKitProvider(room=room, livekit_client_url=livekit_client_url)" in calls
    assert "player.connect()" in calls  # no arguments: the app connected its room
    assert main.index("LiveKitProvider(room=room") < main.index('dispatchEvent(js.Event.new("avatarplayer-ready"))')
