"""The documentation site builds with --strict and documents the whole public API.

The site is built once (mkdocs.yml, into a temporary directory). The public API is
computed here from the source tree, independently of the page generator
(tools/docs_pages.py): every module under rh_agents/ none of whose dotted-name parts
starts with ``_``, and the names of its ``__all__``. Each must have its anchor in the
site's inventory (objects.inv, which mkdocstrings writes for every object it renders),
on the module's page.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# The banners mkdocs and Material print about their own future (see the Makefile).
QUIET = {"NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}


def public_modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "rh_agents").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if not any(part.startswith("_") for part in parts):
            names.append(".".join(parts))
    return names


def read_inventory(path: Path) -> dict[str, tuple[str, str]]:
    """``{name: (role, page-uri)}`` from a Sphinx inventory (version 2)."""
    header, _, body = path.read_bytes().partition(b"zlib.\n")
    assert header.startswith(b"# Sphinx inventory version 2\n")
    entries = {}
    for line in zlib.decompress(body).decode().splitlines():
        name, role, _priority, uri, _display = line.split(" ", 4)
        entries[name] = (role, uri.partition("#")[0])
    return entries


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **QUIET},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr
    return out


def test_every_public_module_and_every_name_of_its_all_has_an_anchor(site: Path) -> None:
    inventory = read_inventory(site / "objects.inv")
    modules = public_modules()
    assert {"rh_agents", "rh_agents.core.events", "rh_agents.telemetry"} <= set(modules)
    missing = []
    for module_name in modules:
        page = f"reference/{module_name}/"
        assert (site / page / "index.html").is_file(), f"{module_name} has no page"
        if inventory.get(module_name) != ("py:module", page):
            missing.append(module_name)
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            # A submodule named in __all__ is documented on its own page.
            own = f"reference/{module_name}.{name}/"
            expected = own if f"{module_name}.{name}" in modules else page
            if inventory.get(f"{module_name}.{name}", ("", ""))[1] != expected:
                missing.append(f"{module_name}.{name}")
    assert missing == []


def test_every_name_of_rh_agents_all_is_documented(site: Path) -> None:
    import rh_agents

    inventory = read_inventory(site / "objects.inv")
    assert "ExecutionEvent" in rh_agents.__all__
    undocumented = [n for n in rh_agents.__all__ if f"rh_agents.{n}" not in inventory]
    assert undocumented == []
    # A class is documented with its members, e.g. the methods a user calls.
    assert inventory["rh_agents.ExecutionState.parallel"][0] == "py:method"


def test_the_guides_and_the_readme_are_pages(site: Path) -> None:
    for guide in (ROOT / "docs").glob("*.md"):
        assert (site / guide.stem / "index.html").is_file(), f"{guide.name} has no page"
    home = (site / "index.html").read_text()
    # The README's absolute links to docs/ pages are links between pages on the site.
    assert 'href="demo/"' in home
    assert "/blob/main/docs/demo.md" not in home
    assert "pip install rh_agents" in home
    reference = (site / "reference" / "index.html").read_text()
    assert 'href="rh_agents.core.events/"' in reference


def test_the_docstrings_restructuredtext_reads_as_links_and_code(site: Path) -> None:
    """Roles (:class:`...`) become links or code and ``::`` blocks become code blocks
    (tools/griffe_rst.py); none is left as raw text on a reference page."""
    leftovers = []
    for page in sorted((site / "reference").glob("*/index.html")):
        html = page.read_text()
        if re.search(r":(class|func|meth|attr|mod|exc|data|obj):", html) or "::</p>" in html:
            leftovers.append(page.parent.name)
    assert leftovers == []
    retry = (site / "reference" / "rh_agents.core.retry" / "index.html").read_text()
    # "... its own injectable :class:`~rh_agents.core.clock.Clock`." in the module docstring
    assert 'href="../rh_agents.core.clock/#rh_agents.core.clock.Clock"><code>Clock</code>' in retry
    # "Example::" and its indented block: an example section with highlighted Python
    assert re.search(r'<summary>Example</summary>\s*<div class="highlight">', retry)


def test_the_built_site_is_not_committed() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["site_dir"] == "site"
    assert "site/" in (ROOT / ".gitignore").read_text().splitlines()
