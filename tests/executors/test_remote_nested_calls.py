"""A nested ExecutionEvent call in work shipped to a remote executor says why it cannot
run there (issue 15, item 9), in real worker processes."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest

from rh_agents import ExecutionEvent, ExecutionState, Tool
from rh_agents.core.errors import InvalidArgumentError, LifecycleError
from rh_agents.executors import ProcessPoolItemExecutor


async def add_one(data: int, extra: dict[str, Any], state: Any) -> int:
    return data + 1


INNER = Tool(name="inner", handler=add_one)


async def calls_inner(data: int, extra: dict[str, Any], state: Any) -> int:
    """A handler that makes a nested call with the state it was given (None remotely)."""
    result = await ExecutionEvent(actor=INNER)(data, extra, state)
    return result.result


async def item_calls_inner(data: int) -> Any:
    """A plain item, shipped as a whole, that makes an ExecutionEvent call."""
    return await ExecutionEvent(actor=INNER)(data, {}, None)


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolItemExecutor]:
    with ProcessPoolItemExecutor(1) as executor:
        yield executor


def _says_why(message: str) -> None:
    assert "The ExecutionEvent call of actor 'inner' runs on a remote executor" in message
    assert "nested calls cannot run on a remote executor" in message
    assert "execution_state=None" in message  # why: the state stays in the coordinator
    assert "history, event bus, cache and telemetry" in message
    assert "without executor=" in message  # what to do instead


async def test_a_nested_call_in_a_shipped_handler_says_it_cannot_run_remotely(
    pool: ProcessPoolItemExecutor,
) -> None:
    state = ExecutionState()
    outer = Tool(name="outer", handler=calls_inner)
    async with state.parallel(executor=pool, name="remote") as p:
        p.add(lambda: ExecutionEvent(actor=outer)(1, {}, state), name="nested")
    [result] = p.results
    assert not result.ok
    assert result.error_type == "LifecycleError"
    _says_why(result.error_message or "")
    assert "in the handler of 'outer'" in (result.error_message or "")
    assert "needs the ExecutionState" not in (result.error_message or "")


async def test_a_nested_call_in_a_shipped_item_says_it_cannot_run_remotely(
    pool: ProcessPoolItemExecutor,
) -> None:
    state = ExecutionState()
    async with state.parallel(executor=pool, name="remote") as p:
        p.add(functools.partial(item_calls_inner, 1), name="plain")
    [result] = p.results
    assert not result.ok
    assert isinstance(result.exception, LifecycleError)
    _says_why(result.error_message or "")
    assert "in item 'plain'" in (result.error_message or "")


async def test_the_same_handler_runs_its_nested_call_in_process() -> None:
    state = ExecutionState()
    outer = Tool(name="outer", handler=calls_inner)
    async with state.parallel(name="local") as p:
        p.add(lambda: ExecutionEvent(actor=outer)(1, {}, state))
    assert p.results[0].result == 2
    assert state.history["parallel:local[0]/outer/inner"].result == 2


async def test_a_call_without_state_in_process_still_asks_for_the_state() -> None:
    with pytest.raises(InvalidArgumentError, match="needs the ExecutionState"):
        await ExecutionEvent(actor=INNER)(1, {}, None)
