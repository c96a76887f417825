"""The distributions a user installs: what the sdist and the wheel hold, their metadata.

Both are built from this tree with ``python -m build --no-isolation`` (offline: the build
backend is in the dev dependency group) and checked by ``twine check --strict``. The
README is the package page, so its links must work off the repository too. `make smoke`
installs the wheel alone in a fresh venv (tools/smoke.py); `make matrix` does it on every
interpreter.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MKDOCS = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
REPO_URL = MKDOCS["repo_url"]

# Everything the sdist may hold at its top level: the package, its documentation and
# examples, and the files every sdist has. Nothing of the development setup.
SDIST_TOP_LEVEL = {
    "rh_agents",
    "docs",
    "examples",
    "README.md",
    "CHANGELOG.md",
    "LICENSE",
    "pyproject.toml",
    "PKG-INFO",
    ".gitignore",
}
DEVELOPMENT_FILES = {
    "Dockerfile",
    ".dockerignore",
    "docker-compose.yml",
    ".ci",
    "bench",
    "tests",
    "telemetry",
    "grafana",
    "tools",
    "mkdocs.yml",
    "Makefile",
}


def package_files() -> set[str]:
    """The package's source files in this tree (what both distributions must hold)."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "rh_agents").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in {".py", ".typed"}
    }


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(archive.read(name).decode())


def test_the_sdist_holds_the_package_docs_and_examples_and_no_development_files(
    dists: dict[str, Path],
) -> None:
    with tarfile.open(dists["sdist"]) as archive:
        names = [name.partition("/")[2] for name in archive.getnames()]
    files = {name for name in names if name}
    top_level = {name.partition("/")[0] for name in files}
    assert top_level == SDIST_TOP_LEVEL
    assert not top_level & DEVELOPMENT_FILES
    assert package_files() <= files
    docs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")}
    examples = {p.relative_to(ROOT).as_posix() for p in (ROOT / "examples").glob("*.py")}
    assert docs | examples <= files
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]


def test_the_wheel_ships_the_package_typed_with_both_entry_points_and_the_license(
    dists: dict[str, Path],
) -> None:
    with zipfile.ZipFile(dists["wheel"]) as archive:
        names = set(archive.namelist())
        dist_info = next(n.partition("/")[0] for n in names if ".dist-info/" in n)
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        license_text = archive.read(f"{dist_info}/licenses/LICENSE").decode()
    assert package_files() <= names
    assert "rh_agents/py.typed" in names
    assert {n.partition("/")[0] for n in names} == {"rh_agents", dist_info}
    assert "[console_scripts]\nrh-agents = rh_agents.cli:main" in entry_points
    assert "[pytest11]\nrh_agents = rh_agents.testing.pytest_plugin" in entry_points
    assert license_text == (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n")


def test_the_metadata_declares_license_classifiers_urls_and_no_dev_extra(
    dists: dict[str, Path],
) -> None:
    meta = wheel_metadata(dists["wheel"])
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == ">=3.11"
    classifiers = meta.get_all("Classifier")
    # PEP 639: the license expression replaces the License :: classifiers (the package
    # index rejects an upload that has both).
    assert not [c for c in classifiers if c.startswith("License ::")]
    assert {
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Typing :: Typed",
        "Framework :: AsyncIO",
        "Framework :: Pytest",
        "Framework :: OpenTelemetry",
    } <= set(classifiers)
    assert [c for c in classifiers if c.startswith("Development Status ::")]
    assert {"opentelemetry", "agents", "asyncio"} <= set(meta["Keywords"].split(","))
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL"))
    assert urls == {
        "Homepage": REPO_URL,
        "Documentation": MKDOCS["site_url"],
        "Changelog": f"{REPO_URL}/blob/main/CHANGELOG.md",
        "Source": REPO_URL,
        "Issues": f"{REPO_URL}/issues",
    }
    # Development tools live in a dependency group, which is not published.
    assert meta.get_all("Provides-Extra") == ["dask", "postgres"]
    assert not [r for r in meta.get_all("Requires-Dist") if re.match(r"(pytest|mypy|ruff)", r)]
    assert meta.get_payload() == (ROOT / "README.md").read_text()


def test_twine_accepts_both_distributions(dists: dict[str, Path]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dists.values())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2


def test_development_tools_are_a_dependency_group() -> None:
    group = PYPROJECT["dependency-groups"]["dev"]
    names = {re.split(r"[<>=\[ ]", requirement)[0] for requirement in group}
    assert {"pytest", "mypy", "ruff", "build", "twine", "mkdocs", "mkdocstrings"} <= names
    assert set(PYPROJECT["project"]["optional-dependencies"]) == {"dask", "postgres"}
    # The tests build without isolation, with the backend the build system asks for.
    assert set(PYPROJECT["build-system"]["requires"]) <= set(group)


def test_readme_links_work_on_the_package_index() -> None:
    """Every link of the README is absolute (or an anchor of the page itself), and every
    link into the repository names a file of this tree."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets, "the README has no links"
    relative = [t for t in targets if not re.match(r"https?://|#", t)]
    assert relative == []
    into_repo = [t for t in targets if t.startswith(f"{REPO_URL}/blob/main/")]
    assert {"docs/demo.md", "CHANGELOG.md"} <= {
        t.removeprefix(f"{REPO_URL}/blob/main/").partition("#")[0] for t in into_repo
    }
    missing = [
        t for t in into_repo if not (ROOT / t.split("/blob/main/")[1].partition("#")[0]).exists()
    ]
    assert missing == []
