"""The package stays in pieces one can hold in one's head.

No module over 900 lines (the demo package aside), no class over 450 lines, no function
over 80 lines; cyclomatic complexity is capped at 20 by ruff (``C90`` in pyproject.toml),
and imports from the core upward by tests/architecture/test_architecture.py.

A class or function is measured without its own docstring: documenting every argument
of a public function must never be what pushes it over the limit.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "rh_agents"

MAX_MODULE_LINES = 900
MAX_CLASS_LINES = 450
MAX_FUNCTION_LINES = 80


def oversized(source: str, path: str, exempt_module: bool = False) -> list[str]:
    """What in ``source`` is over the limits, as ``path:line name (n lines)``."""
    found = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES and not exempt_module:
        found.append(f"{path} ({lines} lines, module)")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            limit, kind = MAX_CLASS_LINES, "class"
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            limit, kind = MAX_FUNCTION_LINES, "function"
        else:
            continue
        assert node.end_lineno is not None
        size = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
        if size > limit:
            found.append(f"{path}:{node.lineno} {node.name} ({size} lines, {kind})")
    return found


def _docstring_lines(node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0] if node.body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        assert first.end_lineno is not None
        return first.end_lineno - first.lineno + 1
    return 0


def test_modules_classes_and_functions_stay_small() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        exempt = relative.parts[:2] == ("rh_agents", "demo")
        found += oversized(path.read_text(), str(relative), exempt)
    assert found == []


def test_the_limits_are_enforced() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    source = f"class Small:\n    pass\n\n\ndef long():\n{body}\n"
    assert oversized(source, "m.py") == ["m.py:5 long (81 lines, function)"]
    methods = "\n".join(f"    def m{i}(self):\n        return {i}\n" for i in range(160))
    big_class = f"class Big:\n{methods}"
    assert oversized(big_class, "c.py") == ["c.py:1 Big (480 lines, class)"]
    doc = "\n".join(['    """Documented.', *(["    arg: what it is"] * 40), '    """'])
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 2))
    assert oversized(f"def documented():\n{doc}\n{body}\n", "d.py") == []
    long_module = "x = 1\n" * (MAX_MODULE_LINES + 1)
    assert oversized(long_module, "l.py") == ["l.py (901 lines, module)"]
    assert oversized(long_module, "demo.py", exempt_module=True) == []
