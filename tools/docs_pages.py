"""Pages generated while `mkdocs build` runs (the mkdocs-gen-files plugin, see mkdocs.yml).

* ``index.md``: the README, whose links to ``docs/*.md`` are absolute (so that they work
  on the package index) and become links between the site's pages here.
* ``reference/<module>.md``: one page per public module of rh_agents, found by walking
  the package (a module is public when no part of its dotted name starts with ``_``),
  documenting the names of its ``__all__`` in that order.
* ``reference/index.md``: the list of those modules with the first line of each
  module's docstring, and ``reference/SUMMARY.md``, the section's navigation.

Nothing is written to the working tree: the pages exist only in the build.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "rh_agents"


def public_modules() -> list[ModuleType]:
    """The package and every public module below it, sorted by dotted name."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(package.__path__, f"{PACKAGE}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return [importlib.import_module(name) for name in sorted(names)]


def summary(module: ModuleType) -> str:
    """The first line of the module's docstring (a role shown as code), or ``""``."""
    doc = (module.__doc__ or "").strip()
    first = doc.splitlines()[0] if doc else ""
    return re.sub(r":\w+:`~?([^`]+)`", lambda m: f"`{m[1].rpartition('.')[2]}`", first)


def module_page(module: ModuleType, submodules: list[ModuleType]) -> str:
    """The Markdown of one module's reference page."""
    members = list(getattr(module, "__all__", []))
    lines = [
        "---",
        f"title: {module.__name__}",
        "---",
        "",
        f"::: {module.__name__}",
        "    options:",
        "      show_root_heading: true",
        "      show_root_full_path: true",
        "      heading_level: 1",
        f"      members: [{', '.join(members)}]",
        "",
    ]
    if submodules:
        lines += ["## Modules", ""]
        lines += [f"* [`{m.__name__}`]({m.__name__}.md): {summary(m)}" for m in submodules]
        lines.append("")
    return "\n".join(lines)


def home_page(readme: str, repo_url: str) -> str:
    """The README with its absolute links to ``docs/`` pages made relative to the site."""
    docs_url = re.escape(f"{repo_url.rstrip('/')}/blob/main/docs/")
    return re.sub(rf"\]\({docs_url}([^)#]+\.md)", r"](\1", readme)


def main() -> None:
    editor = mkdocs_gen_files.editor.FilesEditor.current()
    repo_url = editor.config.repo_url or ""
    with mkdocs_gen_files.open("index.md", "w") as page:
        page.write(home_page((ROOT / "README.md").read_text(encoding="utf-8"), repo_url))
    mkdocs_gen_files.set_edit_path("index.md", "../README.md")

    modules = public_modules()
    index = [
        "# API reference",
        "",
        "Every public module of rh_agents and the names of its `__all__`. The common names",
        "are re-exported by [`rh_agents`](rh_agents.md) itself.",
        "",
        "| Module | |",
        "| --- | --- |",
    ]
    for module in modules:
        name = module.__name__
        children = [m for m in modules if m.__name__.rpartition(".")[0] == name]
        with mkdocs_gen_files.open(f"reference/{name}.md", "w") as page:
            page.write(module_page(module, children))
        index.append(f"| [`{name}`]({name}.md) | {summary(module)} |")
    with mkdocs_gen_files.open("reference/index.md", "w") as page:
        page.write("\n".join(index) + "\n")
    # The section's navigation (mkdocs-literate-nav), in dotted-name order: a package
    # right before its modules.
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as nav:
        nav.write("* [API reference](index.md)\n")
        nav.writelines(f"* [{m.__name__}]({m.__name__}.md)\n" for m in modules)


main()
