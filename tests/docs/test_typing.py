"""Typing that works for a user (issue 15, item 10).

A user runs plain mypy (not strict, no plugin) on code written from the README: the
result of ``ExecutionEvent(actor=...)`` must be typed from the actor, without
annotations. ``make typecheck`` checks the README and examples/ that way
(tools/typecheck_user_code.py); these tests pin the inference itself and the checker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mypy_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One mypy cache for the module's runs (the first run fills it with rh_agents)."""
    return dict(os.environ, MYPY_CACHE_DIR=str(tmp_path_factory.mktemp("mypy_cache")))


INFERENCE = """
from typing import Any, assert_type

from pydantic import BaseModel

from rh_agents import LLM, Agent, ExecutionEvent, ExecutionResult, ExecutionState, Tool


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    text: str


async def search(q: Question, extra_context: Any, state: Any) -> list[str]:
    return [q.text]


async def raw(q: Question, extra_context: Any, state: Any) -> dict[str, Any]:
    return {"text": q.text}  # validated into output_model


search_tool = Tool(name="search", input_model=Question, handler=search)
agent = Agent(name="a", input_model=Question, output_model=Answer, handler=raw, tools=[search_tool])
llm = LLM(name="llm", handler=search, model="m")
assert_type(search_tool, Tool[Question, list[str]])
assert_type(agent, Agent[Question, Answer])
assert_type(llm, LLM[Question, list[str]])


async def main(state: ExecutionState) -> None:
    found = await ExecutionEvent(actor=search_tool)(Question(text="x"), {}, state)
    assert_type(found, ExecutionResult[list[str]])
    assert_type(found.result, list[str])
    answer = await ExecutionEvent(actor=agent, tag="t")(Question(text="x"), {}, state)
    assert_type(answer.result, Answer)
    print(answer.result.text.upper(), found.ok, found.from_cache, found.replayed)
    by_hand = ExecutionEvent(address="a", actor_name="x")  # printer tests build these
    assert_type(by_hand, ExecutionEvent[Any])
"""

MISMATCH = """
from typing import Any

from pydantic import BaseModel

from rh_agents import Tool


class Question(BaseModel):
    text: str


class Other(BaseModel):
    n: int


async def search(q: Question, extra_context: Any, state: Any) -> list[str]:
    return []


Tool(name="search", input_model=Other, handler=search)  # the handler gets an Other
"""


def _plain_mypy(tmp_path: Path, code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "mypy.ini").write_text("[mypy]\npython_version = 3.11\n")
    (tmp_path / "user_code.py").write_text(code)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "user_code.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )


def test_plain_mypy_infers_results_from_the_actors_types(
    tmp_path: Path, mypy_env: dict[str, str]
) -> None:
    done = _plain_mypy(tmp_path, INFERENCE, mypy_env)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_handler_that_does_not_take_the_input_model_is_a_type_error(
    tmp_path: Path, mypy_env: dict[str, str]
) -> None:
    done = _plain_mypy(tmp_path, MISMATCH, mypy_env)
    assert done.returncode == 1
    assert 'Argument "handler" to "Tool" has incompatible type' in done.stdout


def test_the_user_code_checker_names_the_readme_line_of_an_error(
    tmp_path: Path, mypy_env: dict[str, str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        textwrap.dedent(
            """\
            # Title

            ```python
            x: int = 1
            ```

            A fragment, checked as the body of an async function:

            ```python
            async with state.parallel(max_workers="4") as p:
                p.add(lambda: work(1))
            length: int = "long"
            ```
            """
        )
    )
    example = tmp_path / "example.py"
    example.write_text("print('an example')\n")
    tool = ROOT / "tools" / "typecheck_user_code.py"
    done = subprocess.run(
        [sys.executable, str(tool), "--readme", str(readme), str(example)],
        capture_output=True,
        text=True,
        env=mypy_env,
    )
    assert done.returncode == 1
    errors = done.stdout.splitlines()
    # `state` is declared an ExecutionState (its misuse is found), `work` is Any
    assert errors[0].startswith('README.md[1]:10: error: Argument "max_workers" to "parallel"')
    assert errors[1].startswith("README.md[1]:12: error: Incompatible types in assignment")
    assert errors[2] == f"plain mypy: 2 error(s) in 2 README snippet(s) and {example}"
