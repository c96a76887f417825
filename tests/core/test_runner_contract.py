"""What one call records and returns at its edges: the name of a failed check, the
metadata of a call made inside a group, and what the history says of a call that was
cancelled, interrupted or paused for a human."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

import rh_agents
from rh_agents import ExecutionEvent, ExecutionState, Tool
from rh_agents.core.errors import ConditionFailedError
from rh_agents.core.types import ExecutionStatus as S


async def echo(data: Any, extra: Any, state: Any) -> Any:
    return data


def refuse(data: Any, extra: Any, state: Any) -> bool:
    return False


class Refuser:
    """A callable object: no ``__qualname__`` or ``__name__`` of its own."""

    def __call__(self, data: Any, extra: Any, state: Any) -> bool:
        return False

    def __repr__(self) -> str:
        return "<Refuser>"


def entries(state: ExecutionState, address: str) -> list[tuple[S, str | None]]:
    return [(e.execution_status, e.message) for e in state.history.events if e.address == address]


@pytest.mark.parametrize(
    ("check", "shown"),
    [
        (refuse, "refuse"),
        (lambda data, extra, state: False, "<lambda>"),
        (Refuser(), "<Refuser>"),
        (functools.partial(refuse), "functools.partial(<function refuse at"),
    ],
    ids=["function", "lambda", "callable object", "partial"],
)
async def test_a_failed_check_is_named_in_the_error(check: Any, shown: str) -> None:
    state = ExecutionState(telemetry=False)
    before = Tool(name="t", handler=echo, preconditions=[lambda *a: True, check])
    result = await ExecutionEvent(actor=before)(1, {}, state)
    assert isinstance(result.exception, ConditionFailedError)
    assert str(result.exception).startswith(f"Precondition 2 of actor 't' ({shown}")
    assert str(result.exception).endswith(") returned False; the handler was not called.")

    after = Tool(name="u", handler=echo, postconditions=[check])
    result = await ExecutionEvent(actor=after)(1, {}, state)
    assert str(result.exception).startswith(f"Postcondition 1 of actor 'u' ({shown}")
    assert str(result.exception).endswith(") returned False for its result.")


def test_a_check_is_named_by_its_qualified_name() -> None:
    from rh_agents.core._runner import _callable_name

    class Checks:
        @staticmethod
        def positive(data: Any) -> bool:
            return True

    assert _callable_name(Checks.positive) == (
        "test_a_check_is_named_by_its_qualified_name.<locals>.Checks.positive"
    )

    class NameOnly:
        __name__ = "only-a-name"

    assert _callable_name(NameOnly()) == "only-a-name"


async def test_a_call_in_a_group_describes_where_it_ran() -> None:
    state = ExecutionState(telemetry=False)
    tool = Tool(name="echo", handler=echo)
    async with state.parallel(name="fan") as p:
        p.add(lambda: ExecutionEvent(actor=tool)(1, {}, state))
        p.add(lambda: ExecutionEvent(actor=tool)(2, {}, state))
        results = await p.gather()
    inner = results[1]
    assert inner.result == 2
    assert inner.metadata == {
        "address": "parallel:fan[1]/echo",
        "actor": "echo",
        "event_type": "tool_call",
        "group_id": p.group.group_id,
        "parallel_index": 1,
        "from_cache": False,
        "is_replayed": False,
        "status": "completed",
    }
    outside = await ExecutionEvent(actor=tool)(3, {}, state)
    assert outside.metadata == {}


async def test_a_cancelled_call_says_so_in_the_history() -> None:
    state = ExecutionState(telemetry=False)
    started = asyncio.Event()

    async def wait_forever(data: Any, extra: Any, st: Any) -> Any:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(
        ExecutionEvent(actor=Tool(name="slow", handler=wait_forever))(None, {}, state)
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert entries(state, "slow") == [(S.STARTED, None), (S.CANCELLED, "cancelled")]
    ended = state.history.events[-1]
    assert ended.execution_time is not None and 0 <= ended.execution_time < 60


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
async def test_a_call_stopped_by_the_process_says_how(stop: type[BaseException]) -> None:
    state = ExecutionState(telemetry=False)

    async def stopping(data: Any, extra: Any, st: Any) -> Any:
        raise stop()

    with pytest.raises(stop):
        await ExecutionEvent(actor=Tool(name="s", handler=stopping))(None, {}, state)
    assert entries(state, "s") == [
        (S.STARTED, None),
        (S.INTERRUPTED, f"interrupted ({stop.__name__})"),
    ]
    ended = state.history.events[-1]
    assert ended.execution_time is not None and 0 <= ended.execution_time < 60


async def test_a_paused_call_records_how_many_answers_it_awaits() -> None:
    state = ExecutionState(telemetry=False)

    async def ask_twice(data: Any, extra: Any, st: Any) -> Any:
        async with st.parallel(name="asks") as group:
            group.add(lambda: rh_agents.interrupt({"q": 1}))
            group.add(lambda: rh_agents.interrupt({"q": 2}))
            await group.gather()
        return "answered"

    tool = Tool(name="ask", handler=ask_twice)
    result = await ExecutionEvent(actor=tool)(None, {}, state)
    assert result.ok is False and result.status is S.AWAITING
    assert result.error_type == "Interrupted" and result.address == "ask"
    assert result.error_message == str(result.exception)
    assert result.error_message.startswith("The run is waiting for 2 answer(s) at ")
    assert result.metadata == {}  # a top-level call, not a group item
    assert entries(state, "ask") == [(S.STARTED, None), (S.AWAITING, "awaiting 2 answer(s)")]
    assert result.execution_time is not None and 0 <= result.execution_time < 60
