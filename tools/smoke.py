"""Check an installed rh_agents wheel as a user gets it (run by `make smoke`).

Run it with the interpreter of a fresh venv holding only the wheel and its declared
dependencies, with ``-I`` and from outside the source tree, so that nothing of the
checkout can be imported. It checks that:

* rh_agents is imported from that venv's site-packages;
* every public module (no part of its dotted name starts with ``_``) imports, and every
  name of its ``__all__`` exists, except a module that needs a package rh_agents does
  not depend on (the pytest plugin needs pytest, which loads it): it is listed;
* ``py.typed`` ships next to the package;
* both entry points are registered and load where their host is there: the
  ``rh-agents`` command (and ``rh-agents --help`` runs) and the ``rh_agents`` pytest
  plugin.

With ``--pytest`` (once pytest is installed in that venv too) the pytest plugin imports
as well, and a test using its ``rh_telemetry`` fixture passes under pytest there.
Prints what it checked; exits non-zero on the first failure.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PLUGIN_TEST = """
import asyncio

from pydantic import BaseModel

from rh_agents import ExecutionEvent, ExecutionState, Tool


class Query(BaseModel):
    text: str


async def echo(query, extra_context, state):
    return query.text


def test_the_plugin_captures_spans_and_metrics(rh_telemetry):
    tool = Tool(name="echo", input_model=Query, handler=echo)
    result = asyncio.run(ExecutionEvent(actor=tool)(Query(text="hi"), {}, ExecutionState()))
    assert result.ok and result.result == "hi"
    assert [span.name for span in rh_telemetry.spans] == ["execute_tool echo"]
    rh_telemetry.assert_metric("rh_agents_events_total", 1, name="echo", outcome="completed")
    rh_telemetry.assert_no_open_spans()
"""


def fail(message: str) -> None:
    print(f"smoke: FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


def dependencies() -> set[str]:
    """The normalized names of rh_agents' required (not extra) dependencies."""
    names = set()
    for requirement in importlib.metadata.requires("rh_agents") or []:
        if "extra ==" not in requirement:
            names.add(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower())
    return {name.replace("_", "-") for name in names}


def check_modules() -> Path:
    import rh_agents

    where = Path(rh_agents.__file__).resolve().parent
    if not where.is_relative_to(Path(sys.prefix).resolve()):
        fail(f"rh_agents was imported from {where}, not from the venv at {sys.prefix}")
    version = importlib.metadata.version("rh_agents")
    print(f"smoke: Python {sys.version.split()[0]}, rh_agents {version} from {where}")

    names = ["rh_agents"] + [
        info.name
        for info in pkgutil.walk_packages(rh_agents.__path__, "rh_agents.")
        if not any(part.startswith("_") for part in info.name.split("."))
    ]
    required = dependencies()
    left_out = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            needed = (exc.name or "").partition(".")[0]
            if needed == "rh_agents" or needed.replace("_", "-") in required:
                raise
            left_out.append(f"{name} (needs {needed})")
            continue
        absent = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
        if absent:
            fail(f"{name}.__all__ names what the module does not define: {absent}")
    print(f"smoke: {len(names) - len(left_out)} of {len(names)} public modules import")
    if left_out:
        print(f"smoke: left out (not a dependency): {', '.join(left_out)}")
    return where


def check_entry_points(with_pytest: bool) -> None:
    command = Path(sys.executable).parent / "rh-agents"
    done = subprocess.run([str(command), "--help"], capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.startswith("usage: rh-agents"):
        fail(f"`rh-agents --help` exited {done.returncode}: {done.stdout}{done.stderr}")
    entry_points = importlib.metadata.entry_points()
    wanted = {
        ("console_scripts", "rh-agents"): "rh_agents.cli:main",
        ("pytest11", "rh_agents"): "rh_agents.testing.pytest_plugin",
    }
    for (group, name), value in wanted.items():
        found = list(entry_points.select(group=group, name=name))
        if [ep.value for ep in found] != [value]:
            fail(f"entry point {group}:{name} is {[ep.value for ep in found]}, not [{value!r}]")
        if group != "pytest11" or with_pytest:
            found[0].load()
    print("smoke: entry points registered: rh-agents (--help runs), pytest11 rh_agents")


def check_plugin_under_pytest() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "test_plugin.py").write_text(PLUGIN_TEST)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_plugin.py"],
            capture_output=True,
            text=True,
            cwd=tmp,
        )
    if done.returncode != 0:
        fail(f"a test using the rh_telemetry fixture failed:\n{done.stdout}{done.stderr}")
    print("smoke: under pytest, a test using the plugin's rh_telemetry fixture passes")


def main() -> None:
    with_pytest = "--pytest" in sys.argv[1:]
    where = check_modules()
    if not (where / "py.typed").is_file():
        fail(f"py.typed is missing from {where}")
    print("smoke: py.typed ships")
    check_entry_points(with_pytest)
    if with_pytest:
        check_plugin_under_pytest()


if __name__ == "__main__":
    main()
