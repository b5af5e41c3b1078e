"""The docs site: every page is in the nav, every public name in the API reference, and the site builds.

ci/docs (run by the README's test command, after the suite) installs setup.cfg's ``docs`` extra
and builds the site with warnings as errors. The checks here that need no docs tools always run;
the build itself runs here too when the docs tools are installed (they are in the README's .venv
once ci/docs has run).
"""

from __future__ import annotations

import configparser
import http.client
import importlib.util
import os
import pkgutil
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.sync.client import connect

import crowtwist

from .proc import ROOT, Server, env, free_port, twistd

DOCS = ROOT / "docs"

# Public modules (no leading underscore) that get no `::: module` section in docs/api.md, and why.
NOT_IN_API_REFERENCE = {
    "crowtwist.websocket": "its public names are crowtwist's own (re-exported), documented there",
    "crowtwist.tap": "twistd crow's command line, documented as options (README, --help), not called from code",
}


def nav_pages() -> list[str]:
    """The Markdown files mkdocs.yml's nav names, in order."""
    text = (ROOT / "mkdocs.yml").read_text()
    block = re.search(r"^nav:\n((?:[ \t]+.*\n)+)", text, re.MULTILINE)
    assert block, "mkdocs.yml has no nav"
    return re.findall(r"^\s+- [^:\n]+:\s*(\S+\.md)\s*$", block.group(1), re.MULTILINE)


def api_directives() -> list[str]:
    """The objects docs/api.md renders (its ``::: name`` lines)."""
    return re.findall(r"^::: (\S+)\s*$", (DOCS / "api.md").read_text(), re.MULTILINE)


def public_names() -> list[str]:
    """crowtwist's ``__all__`` less ``__version__``, which the page states in its text."""
    return [name for name in crowtwist.__all__ if name != "__version__"]


def public_modules() -> list[str]:
    """crowtwist's submodules and subpackages whose names do not start with an underscore."""
    return [f"crowtwist.{m.name}" for m in pkgutil.iter_modules(crowtwist.__path__) if not m.name.startswith("_")]


def test_nav_lists_every_page_once() -> None:
    """Every docs/*.md is in the nav exactly once, and every nav entry is a file in docs/."""
    pages = nav_pages()
    assert len(pages) == len(set(pages)), pages
    on_disk = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
    assert sorted(pages) == on_disk
    assert pages[:3] == ["index.md", "getting-started.md", "crow.md"]  # the Crow guide, prominently


def test_api_reference_names_every_public_name() -> None:
    """docs/api.md renders each name of crowtwist.__all__ once, and nothing that is not public."""
    directives = api_directives()
    assert len(directives) == len(set(directives)), directives
    objects = [d for d in directives if d.removeprefix("crowtwist.") in crowtwist.__all__]
    assert sorted(d.removeprefix("crowtwist.") for d in objects) == sorted(public_names())
    modules = [d for d in directives if d not in objects]
    assert set(modules) <= set(public_modules()), modules


def test_api_reference_has_a_line_per_public_module() -> None:
    """Each public module (crowtwist.testing, say) is one ``::: crowtwist.NAME`` line, unless excluded here."""
    directives = set(api_directives())
    missing = [m for m in public_modules() if m not in directives and m not in NOT_IN_API_REFERENCE]
    assert not missing, f"add `::: {missing[0]}` to docs/api.md's last section"
    assert set(NOT_IN_API_REFERENCE) <= set(public_modules()), "an exclusion names a module that is gone"


def test_ci_docs_builds_strictly() -> None:
    """ci/docs is executable, installs the docs extra, and builds with --strict (not --quiet, which hides the warnings)."""
    script = ROOT / "ci" / "docs"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    (build,) = [line for line in text.splitlines() if "mkdocs build" in line and not line.startswith("#")]
    assert "--strict" in build and "--quiet" not in build and " -q" not in build, build
    assert '["docs"]' in text
    assert "build/" in (ROOT / ".gitignore").read_text().splitlines()


def test_docs_extra_has_tested_ranges() -> None:
    """Each requirement of the docs extra has a floor and a ceiling (the releases ci/docs built the site with)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in config["options.extras_require"]["docs"].splitlines() if line.strip()]
    assert {re.split(r"[<>=\[]", line)[0] for line in lines} == {
        "mkdocs", "mkdocs-material", "mkdocstrings", "mkdocstrings-python"
    }
    for line in lines:
        assert re.fullmatch(r"[\w-]+>=[\d.]+,<=[\d.]+", line), line


def test_readme_builds_and_links_the_docs() -> None:
    """The README's CI command ends by building the docs, and the README links the docs' pages."""
    readme = (ROOT / "README.md").read_text()
    command = readme.split("<!-- ci:test -->", 1)[1].split("```sh\n", 1)[1].split("\n", 1)[0]
    assert command.endswith(" && ci/docs"), command
    for page in ("index.md", "getting-started.md", "crow.md", "testing.md", "api.md"):
        assert f"(docs/{page})" in readme, page


needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="the docs extra is not installed here (ci/docs installs it and builds the site after the suite)",
)


@needs_mkdocs
def test_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    """mkdocs build --strict succeeds; each nav page and each public name has its page or anchor, and no page
    loads a script, stylesheet or font from another host."""
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in nav_pages():
        assert (site / page.replace(".md", ".html")).is_file(), page
    api = (site / "api.html").read_text()
    for name in public_names():
        assert f'id="crowtwist.{name}"' in api, name
    remote = re.compile(r"""<(?:script|link)\b[^>]*\b(?:src|href)=["']?(?:https?:)?//|fonts\.(?:googleapis|gstatic)""")
    for path in site.rglob("*.html"):
        found = remote.search(path.read_text())
        assert found is None, f"{path.relative_to(site)}: {found and found.group(0)}"
    for path in site.rglob("*.css"):
        assert not re.search(r"url\([\"']?(?:https?:)?//", path.read_text()), path.relative_to(site)


def getting_started_app() -> str:
    """The first Python block of docs/getting-started.md: the page's hello.py."""
    found = re.search(r"```python\n(.*?)```", (DOCS / "getting-started.md").read_text(), re.DOTALL)
    assert found
    return found.group(1)


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("how", ["twistd", "app.run"])
def test_getting_started_runs_as_written(tmp_path: Path, how: str) -> None:
    """The getting-started page's app, served as the page says, answers what its sample sessions show."""
    page = (DOCS / "getting-started.md").read_text()
    port = free_port()
    source = getting_started_app()
    assert "port=18080" in source
    (tmp_path / "hello.py").write_text(source.replace("port=18080", f"port={port}"))
    if how == "twistd":
        assert "twistd -n --pidfile= crow --routes hello --listen tcp:18080:interface=127.0.0.1" in page
        args = twistd("--routes", "hello", "--listen", f"tcp:{port}:interface=127.0.0.1")
    else:
        assert "python hello.py" in page
        args = [sys.executable, "hello.py"]
    with Server(args, cwd=tmp_path, environ=env(PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}")) as server:
        server.wait_tcp(port)
        assert request(port, "GET", "/add/2/3") == (200, b'{"sum": 5}')
        assert request(port, "POST", "/greet", b'{"name": "Ada"}') == (200, b"hello Ada")
        status, body = request(port, "POST", "/greet", b"nope")
        assert status == 400 and body.decode() in page
        assert request(port, "GET", "/add/x/1")[0] == 404 and request(port, "GET", "/greet")[0] == 405
        with connect(f"ws://127.0.0.1:{port}/echo/ada", open_timeout=10) as ws:
            assert ws.recv(timeout=10) == "hello ada, say something"
            ws.send("hi there")
            assert ws.recv(timeout=10) == "HI THERE"
        for shown in ('{"sum": 5}', "hello Ada", "< hello ada, say something", "< HI THERE", "closed 1000"):
            assert shown in page, shown
        output = server.stop(signal.SIGTERM)
    assert server.process.returncode == 0, output
    assert "closed 1000" in output
