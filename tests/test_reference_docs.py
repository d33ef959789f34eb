"""The docs site builds with ``mkdocs build --strict``, its API reference covers the public API, and
no page loads anything from another host.

The reference pages (``docs/reference/``) are rendered from the docstrings by mkdocstrings, so a
``:::`` block naming something that moved, or a docstring the renderer cannot read, fails the
build here. The build runs with this test's own Python (the set-up's ``.venv``, where
``requirements/docs.txt`` is installed); without mkdocs the test fails, it never skips.
"""

from __future__ import annotations

import html
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import avatarplayer

ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = (
    "mkdocs is not installed for {python}: the docs packages are pinned in requirements/docs.txt. "
    "`python3 run_tests.py tests/test_reference_docs.py` installs them into .venv and runs this "
    "test there; or `.venv/bin/pip install -r requirements/docs.txt`."
)
BUILD_TIMEOUT_S = 300

WORKER_ENTRIES = ("avatar_worker.config.WorkerConfig", "avatar_worker.config.LiveKitSettings",
                  "avatar_worker.app.run", "avatar_worker.modes.MODES")
"""What the avatar_worker reference page must have, by its element id."""

KNOWN_BROKEN_LINKS: set[tuple[str, str]] = set()
"""Markdown links to files outside docs/, which the site cannot serve (name such a file as a
backticked path instead: tests/test_docs_paths.py checks it exists). Any link of that kind fails
``test_links_stay_inside_the_site``, and the strict build too."""

_TAG = re.compile(r"<(script|link|img|iframe|source|audio|video|embed)\b([^>]*)>", re.IGNORECASE)
_ATTR = re.compile(r"""\b(src|href|srcset)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)
_CSS_URL = re.compile(r"""@import\s+(?:url\()?\s*['"]?([^'")\s;]+)|url\(\s*['"]?([^'")\s]+)""", re.IGNORECASE)
_REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
_ID = re.compile(r"""<h[1-6][^>]*\bid="([^"]+)\"""")
_LINK_NOT_FOUND = re.compile(r"Doc file '([^']+)' contains a link '([^']+)', but the target .*not found")


@dataclass(frozen=True)
class Build:
    site: Path
    log: str


def remote_assets(page: str) -> list[str]:
    """The URLs of another host that an HTML page loads: scripts, stylesheets, icons, fonts,
    images, frames and media. Links a reader may follow (``<a href>``) and text are not loads."""
    found = []
    for tag, attrs in _TAG.findall(page):
        for name, *values in _ATTR.findall(attrs):
            if tag.lower() == "link" or name.lower() != "href":
                url = html.unescape(next(v for v in values if v) if any(values) else "")
                urls = [u.strip().split(" ")[0] for u in url.split(",")] if name.lower() == "srcset" else [url]
                found += [u for u in urls if _REMOTE.match(u)]
    return found


def remote_css_urls(css: str) -> list[str]:
    """``@import`` and ``url(...)`` references of a stylesheet that point at another host."""
    return [a or b for a, b in _CSS_URL.findall(css) if _REMOTE.match(a or b)]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    for package in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            present = importlib.util.find_spec(package) is not None
        except ModuleNotFoundError:
            present = False
        if not present:
            pytest.fail(INSTALL_HINT.format(python=sys.executable), pytrace=False)
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict exited {proc.returncode}:\n{log}", pytrace=False)
    return Build(site, log)


def reference_ids(site: Path) -> set[str]:
    return {i for page in (site / "reference").rglob("*.html") for i in _ID.findall(page.read_text())}


def test_the_strict_build_writes_every_page(build: Build) -> None:
    for page in ("index.html", "quickstart/index.html", "migrating-from-js/index.html",
                 "player-guide/index.html", "reference/index.html", "reference/player/index.html",
                 "reference/avatar-worker/index.html"):
        assert (build.site / page).is_file(), page


def test_every_public_name_has_a_reference_entry(build: Build) -> None:
    ids = reference_ids(build.site)
    missing = [name for name in avatarplayer.__all__
               if not any(i.startswith("avatarplayer.") and i.endswith("." + name) for i in ids)]
    assert missing == [], f"avatarplayer.__all__ names without an entry under docs/reference/: {missing}"


def test_the_worker_reference_has_its_config_run_and_modes(build: Build) -> None:
    ids = reference_ids(build.site)
    assert [e for e in WORKER_ENTRIES if e not in ids] == []


def test_no_page_loads_anything_from_another_host(build: Build) -> None:
    pages = sorted(build.site.rglob("*.html"))
    assert pages
    remote = [f"{p.relative_to(build.site)}: {u}" for p in pages for u in remote_assets(p.read_text())]
    remote += [f"{c.relative_to(build.site)}: {u}" for c in sorted(build.site.rglob("*.css"))
               for u in remote_css_urls(c.read_text(errors="replace"))]
    assert remote == []


def test_links_stay_inside_the_site(build: Build) -> None:
    broken = set(_LINK_NOT_FOUND.findall(build.log))
    assert broken - KNOWN_BROKEN_LINKS == set()


def test_the_checkers_find_remote_loads() -> None:
    page = ('<script src="https://cdn.example/x.js"></script><script src="../js/base.js"></script>'
            '<link rel="stylesheet" href="//fonts.example/css"><link href="../css/base.css" rel="stylesheet">'
            "<a href='https://www.mkdocs.org/'>MkDocs</a> see https://example.org/"
            '<img srcset="a.png 1x, http://img.example/b.png 2x">')
    assert remote_assets(page) == ["https://cdn.example/x.js", "//fonts.example/css", "http://img.example/b.png"]
    css = '@import url("https://fonts.example/a.css"); b { background: url(../img/x.png) } @font-face { src: url(//f.example/x.woff2) }'
    assert remote_css_urls(css) == ["https://fonts.example/a.css", "//f.example/x.woff2"]
    assert _LINK_NOT_FOUND.findall("INFO    -  Doc file 'a.md' contains a link '../x.md', but the target is not "
                                   "found among documentation files.") == [("a.md", "../x.md")]
