"""Type-check user code as a user's plain mypy would: examples/ and the README's snippets.

``rh_agents/`` itself is checked with ``mypy --strict``; this checks the code users copy,
with mypy's defaults (not strict, no plugin), so that typing never fights someone who
follows the README. Each ```python block of the README becomes a module:

* a block that is not a whole module (``await`` or ``async with`` at top level) becomes
  the body of an ``async def``;
* names the block uses but does not define (``state``, ``docs``, ``client``, ...) are
  declared first: a name ``rh_agents`` exports is imported from it, ``state`` is an
  ``ExecutionState``, any other is ``Any``.

Usage: ``python tools/typecheck_user_code.py [--readme README.md] [paths ...]``; exits
with mypy's status (0 when clean) and prints mypy's report, naming README blocks as
``README.md[<n>]`` with their line in the README.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
KNOWN_TYPES = {"state": "ExecutionState"}
CONFIG = "[mypy]\npython_version = 3.11\n"


def readme_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line in the README, code)`` of each python block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def _is_module(code: str) -> bool:
    try:
        compile(code, "<snippet>", "exec", dont_inherit=True)
    except SyntaxError:
        return False
    return True


def _free_names(tree: ast.Module) -> list[str]:
    """Names loaded but never bound anywhere in ``tree`` (nor builtins)."""
    bound: set[str] = set()
    loaded: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                loaded.append(node.id)
            else:
                bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
            if not isinstance(node, ast.ClassDef):
                args = node.args
                every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
                every += [a for a in (args.vararg, args.kwarg) if a is not None]
                bound.update(a.arg for a in every)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    seen: dict[str, None] = {}
    for name in loaded:
        if name not in bound and not hasattr(builtins, name):
            seen.setdefault(name)
    return list(seen)


def as_module(code: str) -> str:
    """The snippet as a module mypy can check (see the module docstring)."""
    import rh_agents

    body = (
        code
        if _is_module(code)
        else ("async def _snippet() -> None:\n" + textwrap.indent(code, "    "))
    )
    free = _free_names(ast.parse(body))
    lines = ["from typing import Any"]
    exported = set(getattr(rh_agents, "__all__", ()))
    needed = {KNOWN_TYPES.get(name) for name in free} - {None}
    for name in sorted((set(free) & exported) | (needed & exported)):
        lines.append(f"from rh_agents import {name}")
    for name in free:
        if name in exported:
            continue
        lines.append(f"{name}: {KNOWN_TYPES.get(name, 'Any')}")
    return "\n".join(lines) + "\n\n" + body


def run(readme: Path, paths: list[Path]) -> int:
    blocks = readme_blocks(readme.read_text())
    with tempfile.TemporaryDirectory(prefix="rh_agents_snippets_") as tmp:
        directory = Path(tmp)
        names: dict[str, tuple[int, int]] = {}
        files: list[str] = []
        for n, (line, code) in enumerate(blocks):
            module = as_module(code)
            path = directory / f"readme_{n}.py"
            path.write_text(module)
            offset = line - 1 - module.count("\n", 0, module.index(code.splitlines()[0]))
            names[path.name] = (n, offset)
            files.append(str(path))
        config = directory / "mypy.ini"
        config.write_text(CONFIG)
        command = [sys.executable, "-m", "mypy", "--config-file", str(config)]
        # A cache of its own (mypy's for rh_agents/ is strict), kept between runs.
        cache = os.environ.get("MYPY_CACHE_DIR") or str(ROOT / ".mypy_cache" / "user-code")
        command += ["--no-error-summary", "--cache-dir", cache]
        done = subprocess.run(
            [*command, *files, *map(str, paths)], capture_output=True, text=True, cwd=ROOT
        )
        report = done.stdout + done.stderr
        for name, (n, offset) in names.items():
            report = re.sub(
                rf"^{re.escape(str(directory / name))}:(\d+)",
                lambda m, n=n, offset=offset: f"{readme.name}[{n}]:{int(m.group(1)) + offset}",
                report,
                flags=re.M,
            )
        errors = len(re.findall(r": error:", report))
        print(report, end="")
        print(
            f"plain mypy: {errors} error(s) in {len(blocks)} README snippet(s) and "
            f"{', '.join(map(str, paths)) or 'no other path'}"
        )
        return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("paths", nargs="*", type=Path, default=[ROOT / "examples"])
    args = parser.parse_args(argv)
    return run(args.readme, args.paths)


if __name__ == "__main__":
    raise SystemExit(main())
