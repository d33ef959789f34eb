"""``python -m avatarplayer.bundle`` (avatarplayer/bundle.py) without a browser: the files it writes,
the PyScript config and page it writes (relative URLs, nothing from a CDN unless ``--cdn``), and its
errors. tests/browser/test_bundle.py plays the bundle in Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from avatarplayer import bundle

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = ROOT / "node_modules"
REMOTE = re.compile(r"https?://")


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("bundle") / "out"
    return out, bundle.build(out)


def test_the_bundle_holds_the_page_the_config_the_wheels_and_the_runtimes(local) -> None:
    out, files = local
    assert files == sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert {"index.html", "main.py", "pyscript.json", "avatarplayer-bundle.json",
            "vendor/livekit-client/livekit-client.esm.mjs",
            "vendor/pyscript/core.js", "vendor/pyscript/core.css"} <= set(files)
    assert {f"vendor/pyodide/{name}" for name in bundle.PYODIDE_FILES} <= set(files)
    assert not [f for f in files if f.startswith("vendor/pyodide/") and f.split("/")[-1] not in bundle.PYODIDE_FILES]
    wheels = [f for f in files if f.startswith("wheels/")]
    assert [w.split("/")[1].split("-")[0] for w in wheels] == ["avatarplayer", "protobuf"], wheels
    chunks = {f.split("/")[-1] for f in files if f.startswith("vendor/pyscript/")}
    core = next(n for n in chunks if re.fullmatch(r"core-[\w-]+\.js", n))  # what core.js imports
    assert core in (out / "vendor/pyscript/core.js").read_text()
    assert not [n for n in chunks if n.endswith(".map")], "source maps are not needed"
    manifest = json.loads((out / "avatarplayer-bundle.json").read_text())
    assert manifest["files"] == files and manifest["cdn"] is False
    assert manifest["versions"]["pyodide"] == json.loads((NODE_MODULES / "pyodide/package.json").read_text())["version"]
    assert "transform_worker_url" not in (out / "main.py").read_text()  # the wheel's own copy, from a Blob URL


def test_the_config_and_the_page_are_local_and_relative(local) -> None:
    out, files = local
    config = json.loads((out / "pyscript.json").read_text())
    assert config == {"interpreter": "./vendor/pyodide/pyodide.mjs",
                      "packages": [f"./{f}" for f in files if f.startswith("wheels/")],
                      "packages_cache": "passthrough"}
    for name in ("pyscript.json", "index.html", "main.py"):
        text = (out / name).read_text()
        assert not REMOTE.search(text), f"{name} names a remote URL"
        # no root-relative URL either: the folder must work under any path prefix
        assert not re.search(r"""(?:src|href|config)=["']/|["']/vendor/|["']/wheels/""", text), name
    html = (out / "index.html").read_text()
    assert 'src="vendor/pyscript/core.js"' in html and 'config="pyscript.json"' in html
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert "blob:" in directives["worker-src"], csp
    assert {"'unsafe-eval'", "'wasm-unsafe-eval'"} <= set(directives["script-src"].split()), csp
    assert "'unsafe-inline'" not in directives["script-src"], csp
    main = (out / "main.py").read_text()
    assert 'TOKEN_ENDPOINT = "/api/token"' in main
    assert "from avatarplayer import AvatarPlayer, FaceRenderer, LiveKitProvider" in main
    compile(main, "main.py", "exec")  # valid Python


def test_cdn_writes_the_pinned_cdn_urls_instead_of_copies(tmp_path: Path) -> None:
    out = tmp_path / "cdn"
    files = bundle.build(out, cdn=True, token_endpoint="https://api.example/token?x=1&y=2")
    versions = json.loads((out / "avatarplayer-bundle.json").read_text())["versions"]
    assert not [f for f in files if f.startswith(("vendor/pyodide/", "vendor/pyscript/"))], files
    assert "vendor/livekit-client/livekit-client.esm.mjs" in files  # always local
    config = json.loads((out / "pyscript.json").read_text())
    assert config["interpreter"] == f"https://cdn.jsdelivr.net/pyodide/v{versions['pyodide']}/full/pyodide.mjs"
    assert all(p.startswith("./wheels/") for p in config["packages"])
    html = (out / "index.html").read_text()
    release = f"https://pyscript.net/releases/{versions['@pyscript/core']}/"
    assert f'src="{release}core.js"' in html and f'href="{release}core.css"' in html
    assert "https://cdn.jsdelivr.net" in html and "https://pyscript.net" in html  # allowed by the CSP
    assert "ask https://api.example/token?x=1&amp;y=2" in html
    assert 'TOKEN_ENDPOINT = "https://api.example/token?x=1&y=2"' in (out / "main.py").read_text()


def test_a_missing_node_modules_is_named_with_the_set_up_command(tmp_path: Path) -> None:
    missing = tmp_path / "no-node-modules"
    with pytest.raises(bundle.BundleError) as raised:
        bundle.build(tmp_path / "out", node_modules=missing)
    assert str(missing) in str(raised.value) and "python3 tools/bootstrap.py browser" in str(raised.value)
    assert not (tmp_path / "out").exists(), "nothing is written when an input is missing"

    result = subprocess.run([sys.executable, "-m", "avatarplayer.bundle", str(tmp_path / "out"), "--node-modules",
                             str(missing)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert result.stderr.startswith("avatarplayer.bundle: node_modules not found") and str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_wheels_and_a_foreign_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    with pytest.raises(bundle.BundleError, match="no avatarplayer wheel in"):
        bundle.build(tmp_path / "out", wheels=tmp_path / "wheels")
    foreign = tmp_path / "site"
    foreign.mkdir()
    (foreign / "index.html").write_text("mine")
    with pytest.raises(bundle.BundleError, match="not empty"):
        bundle.build(foreign)
    assert (foreign / "index.html").read_text() == "mine"


def test_a_second_build_replaces_the_first(local, tmp_path: Path) -> None:
    out = tmp_path / "again"
    bundle.build(out)
    (out / "stale.txt").write_text("left over")
    bundle.build(out)
    assert not (out / "stale.txt").exists()


def test_import_avatarplayer_does_not_import_the_bundle_command() -> None:
    code = "import sys, avatarplayer; assert 'avatarplayer.bundle' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
