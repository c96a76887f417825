"""The execution core imports nothing above it.

``rh_agents/core/`` defines the interfaces (storage, instrumentation, executors); storage
backends, telemetry, printers, executors, the demo and the CLI implement or use them from
above. No module of the core may import OpenTelemetry, prometheus_client, rich, dask or psycopg,
or any rh_agents module outside the core: not at module level, not inside a function,
not under ``TYPE_CHECKING`` (the top-level ``rh_agents/__init__.py`` is not the core).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "rh_agents" / "core"

FORBIDDEN_LIBRARIES = (
    "opentelemetry",
    "prometheus_client",
    "rich",
    "dask",
    "distributed",
    "psycopg",
    "psycopg_pool",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_modules(source: str, module: str, is_package: bool = False) -> Iterator[str]:
    """Every module ``source`` imports, anywhere in it, as absolute dotted names.

    ``from x import y`` yields ``x`` and ``x.y`` (``y`` may be a submodule); relative
    imports are resolved against ``module``; ``importlib.import_module("...")`` and
    ``__import__("...")`` with a literal name count as imports too.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield base
            for alias in node.names:
                if alias.name != "*":
                    yield f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                if isinstance(first.value, str):
                    yield first.value


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``source`` that a core module must not make."""
    found = []
    for name in imported_modules(source, module, is_package):
        top = name.partition(".")[0]
        if top in FORBIDDEN_LIBRARIES:
            found.append(name)
        elif (
            top == "rh_agents"
            and name != "rh_agents.core"
            and not name.startswith("rh_agents.core.")
        ):
            found.append(name)
    return sorted(set(found))


def _core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_the_core_is_where_the_test_looks() -> None:
    names = {_module_name(p) for p in _core_files()}
    assert {"rh_agents.core.execution", "rh_agents.core.hooks", "rh_agents.core.storage"} <= names
    assert len(names) > 20


def test_no_core_module_imports_anything_above_the_core() -> None:
    found = {
        str(path.relative_to(CORE.parent.parent)): imports
        for path in _core_files()
        if (imports := violations(path.read_text(), _module_name(path), _is_package(path)))
    }
    assert found == {}


def test_the_check_sees_every_kind_of_import() -> None:
    source = """
from __future__ import annotations
import asyncio
from typing import TYPE_CHECKING
from rh_agents.core.errors import StateError
from . import context
if TYPE_CHECKING:
    from rh_agents.telemetry import Telemetry
    import rich.console

def later():
    from opentelemetry import trace
    import prometheus_client
    from rh_agents import __version__
    from ...storage import sqlite
    from ... import printing

class Executor:
    def run(self):
        import dask.distributed
        return importlib.import_module("rh_agents.executors.process")

try:
    import distributed
except ImportError:
    pass
"""
    found = violations(source, "rh_agents.core.parallel.group")
    assert found == [
        "dask.distributed",
        "distributed",
        "opentelemetry",
        "opentelemetry.trace",
        "prometheus_client",
        "rh_agents",
        "rh_agents.__version__",
        "rh_agents.executors.process",
        "rh_agents.printing",
        "rh_agents.storage",
        "rh_agents.storage.sqlite",
        "rh_agents.telemetry",
        "rh_agents.telemetry.Telemetry",
        "rich.console",
    ]
    # Relative imports inside the core, and the core itself, are fine.
    assert violations("from . import context\nfrom .. import hooks\n", "rh_agents.core.x.y") == []
    assert violations("from .group import Group\n", "rh_agents.core.parallel", True) == []
    assert violations("import rh_agents.core.types\n", "rh_agents.core.x") == []


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run: all of them except the bodies of TYPE_CHECKING blocks."""
    for child in ast.iter_child_nodes(tree):
        if _is_type_checking_block(child):
            assert isinstance(child, ast.If)
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield child
        yield from _runtime_nodes(child)


def _runtime_imports(path: Path) -> set[str]:
    """The core modules ``path`` imports at run time (at module level or in a function;
    not under TYPE_CHECKING), each resolved to the module itself."""
    known = {_module_name(p) for p in _core_files()}
    module = _module_name(path)
    package = module if _is_package(path) else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        found.update(name for name in names if name in known)
    return found


def test_the_core_imports_form_no_cycle() -> None:
    # An import cycle makes the import order matter and hides which module is the lower
    # one; an import moved into a function to break a cycle hides it just as well, so
    # function-level imports count too (only TYPE_CHECKING imports, for annotations,
    # may point upward).
    graph = {_module_name(p): _runtime_imports(p) for p in _core_files()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
