"""A griffe extension (mkdocs.yml) that reads the reStructuredText bits of rh_agents'
docstrings as Markdown for the site, at build time (the sources stay as they are):

* a role, ``:class:`~rh_agents.core.errors.UsageError``` or ``:meth:`close```, becomes
  an optional cross-reference: a link where the object is documented on the site, plain
  code otherwise (autorefs' ``optional``, as for type annotations). A relative name is
  looked up from the docstring's object outwards (its class, its module, the modules
  above), then as an absolute path; with ``~`` only the last part is shown.
* a literal block introduced by ``::`` becomes a fenced code block (Python when it
  parses as Python); ``Example::`` becomes a Google-style ``Example:`` section.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Iterator
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj|const):`(~?)([^`]+)`")
SECTIONS = {"Example", "Examples"}


def objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every object defined below it (aliases, i.e. imports, left out)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from objects(member)  # type: ignore[arg-type]


def resolve(target: str, obj: griffe.Object, collection: griffe.ModulesCollection) -> str | None:
    """The canonical path of ``target`` as seen from ``obj``'s docstring, if it exists."""
    scopes = []
    scope: griffe.Object | None = obj if (obj.is_class or obj.is_module) else obj.parent
    while scope is not None:
        scopes.append(f"{scope.path}.{target}")
        scope = scope.parent
    for path in [*scopes, target]:
        try:
            found = collection.get_member(path)
        except (KeyError, ValueError, griffe.AliasResolutionError):
            continue
        try:
            return str(found.canonical_path)
        except griffe.AliasResolutionError:
            return path
    return None


def roles_to_refs(text: str, obj: griffe.Object, collection: griffe.ModulesCollection) -> str:
    def replace(match: re.Match[str]) -> str:
        short, target = match.group(1) == "~", match.group(2).strip()
        shown = target.rpartition(".")[2] if short else target
        path = resolve(target.lstrip("."), obj, collection)
        if path is None:
            return f"`{shown}`"
        return f'<autoref identifier="{path}" optional>`{shown}`</autoref>'

    return ROLE.sub(replace, text)


def literal_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        lead = line.rstrip()[:-2]
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        start = j
        while j < len(lines) and (
            not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > len(indent)
        ):
            j += 1
        while j > start and not lines[j - 1].strip():
            j -= 1
        if j == start:  # no indented block follows: not a literal block
            out.append(line)
            i += 1
            continue
        code = textwrap.dedent("\n".join(lines[start:j]))
        try:
            ast.parse(code)
            language = "python"
        except SyntaxError:
            language = "text"
        fence_indent = indent
        if lead.strip() in SECTIONS:
            out.append(f"{lead}:")
            fence_indent = indent + "    "
        elif lead.strip():
            out += [f"{lead}:", ""]
        block = [f"```{language}", *code.splitlines(), "```"]
        out += [f"{fence_indent}{b}" if b else "" for b in block]
        out.append("")
        i = j
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite the docstrings of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in objects(pkg):
            if obj.docstring is not None:
                value = literal_blocks(obj.docstring.value)
                obj.docstring.value = roles_to_refs(value, obj, loader.modules_collection)
