"""One attempt of a group item: what its result, its retry record and its failure say.

Everything that takes time waits on a FakeClock; no test measures real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rh_agents import Agent, ExecutionEvent, ExecutionState, Policy, RetryConfig, Tool, interrupt
from rh_agents.core.errors import EventFailedError, StateError
from rh_agents.core.events import ExecutionResult
from rh_agents.core.retry import BackoffStrategy, StopAfterDelay
from rh_agents.core.types import ExecutionStatus
from rh_agents.testing import FakeClock, TelemetryCapture


def retrying_entries(state: ExecutionState) -> list[ExecutionEvent[Any]]:
    return [e for e in state.history.events if e.execution_status is ExecutionStatus.RETRYING]


def fails_once(error: BaseException) -> Callable[[], Awaitable[str]]:
    """An item that raises ``error`` on its first attempt and returns "ok" after."""
    calls = 0

    async def item() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        return "ok"

    return item


def tool_failing_once(name: str, error: BaseException) -> Tool:
    """A tool whose first call raises ``error`` and whose later calls return "ok"."""
    first_fails = fails_once(error)

    async def handler(data: Any, extra: Any, st: Any) -> str:
        return await first_fails()

    return Tool(name=name, handler=handler)


async def test_results_carry_the_time_each_item_took() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)

        async def takes(seconds: float, fail: bool) -> str:
            await clock.sleep(seconds)
            if fail:
                raise ValueError("late and wrong")
            return "done"

        async with state.parallel(max_workers=2, name="timed") as p:
            p.add(lambda: takes(2.0, False), name="ok")
            p.add(lambda: takes(3.0, True), name="bad")
        async with state.parallel(name="guarded", policy=Policy(timeout=10.0)) as q:
            q.add(lambda: takes(4.0, False), name="guarded")
    assert [(r.name, r.ok, r.execution_time) for r in p.results] == [
        ("ok", True, 2.0),
        ("bad", False, 3.0),
    ]
    assert [(r.ok, r.execution_time) for r in q.results] == [(True, 4.0)]


def failed_result(message: str | None) -> ExecutionResult[Any]:
    return ExecutionResult(result=None, ok=False, error_message=message)


async def test_an_item_that_returns_a_failed_result_fails_with_its_message() -> None:
    state = ExecutionState(telemetry=False)
    for message, expected in (("quota exceeded", "quota exceeded"), (None, "The event failed.")):
        returned = failed_result(message)

        async def item(value: ExecutionResult[Any] = returned) -> ExecutionResult[Any]:
            return value

        with pytest.raises(EventFailedError) as info:
            async with state.parallel(error_strategy="fail_fast", name="f") as p:
                p.add(item)
        assert str(info.value) == f"Item 0 ('item_0') of parallel group 'f' failed: {expected}"
        assert info.value.result is returned
        assert p.results[0].ok is False


async def test_a_history_error_of_an_item_is_not_retried_and_stops_the_group() -> None:
    state = ExecutionState(telemetry=False)
    attempts = 0

    async def broken() -> None:
        nonlocal attempts
        attempts += 1
        raise StateError("the history refused the entry")

    with pytest.raises(StateError, match="the history refused"):
        async with state.parallel(max_workers=1, name="h", max_retries=3, retry_delay=0.01) as p:
            p.add(broken)
            p.add(broken)
    assert attempts == 1  # neither retried nor the next item started
    assert retrying_entries(state) == []


async def test_a_group_retry_budget_counts_from_the_first_attempt() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        await clock.sleep(1.0)
        raise ConnectionError(f"refused {calls}")

    budget = RetryConfig(
        max_attempts=100,
        backoff_strategy=BackoffStrategy.CONSTANT,
        initial_delay=1.0,
        jitter=False,
        stop=StopAfterDelay(4.5),
    )
    async with FakeClock() as clock:
        await clock.sleep(10.0)  # the group starts well after the clock's zero
        state = ExecutionState(clock=clock)
        async with state.parallel(name="budget", policy=Policy(retry=budget)) as p:
            p.add(down)
    # attempts start at 10, 12 and 14; a fourth would start at 16, past 10 + 4.5
    assert calls == 3
    assert p.results[0].error_message == "refused 3"


async def test_a_retry_is_recorded_with_what_failed() -> None:
    tool = tool_failing_once("fetch", ValueError("upstream said no"))
    state = ExecutionState(telemetry=False)
    async with state.parallel(name="r", max_retries=1, retry_delay=0.0) as p:
        p.add(lambda: ExecutionEvent(actor=tool)(1, {}, state), name="call")
        p.add(fails_once(TimeoutError()), name="plain")  # an error without a message
    assert [r.ok for r in p.results] == [True, True]
    entries = {e.metadata["item"]: e for e in retrying_entries(state)}
    call, plain = entries["call"], entries["plain"]
    assert call.actor_name == "fetch"
    assert call.original_error is not None and "upstream said no" in call.original_error
    assert call.error_type == "ValueError"
    assert (call.retry_attempt, call.retry_delay, call.parallel_index) == (1, 0.0, 0)
    assert plain.actor_name == "plain"  # no actor: the item's name
    assert plain.original_error == "TimeoutError"  # the class when the error says nothing
    assert plain.message == "Attempt 1 failed; retrying in 0.00s: TimeoutError"
    assert plain.address == "parallel:r[1]"
    assert plain.is_retry and plain.is_parallel


async def test_the_retry_of_an_item_added_while_running_is_recorded_at_its_address() -> None:
    state = ExecutionState(telemetry=False)
    async with state.parallel(name="g", max_retries=1, retry_delay=0.0) as p:

        async def parent() -> str:
            p.add(fails_once(ConnectionError("reset")), name="child")
            return "parent"

        p.add(parent)
    [entry] = retrying_entries(state)
    assert entry.address == "parallel:g[0.0]"  # its key, not its index (1)
    assert entry.parallel_index == 1


async def test_retries_are_counted_under_the_actor_or_else_the_group(
    rh_telemetry: TelemetryCapture,
) -> None:
    tool = tool_failing_once("fetch", ValueError("upstream said no"))
    state = ExecutionState()
    async with state.parallel(max_retries=1, retry_delay=0.0) as p:  # an unnamed group
        p.add(lambda: ExecutionEvent(actor=tool)(1, {}, state))
        p.add(fails_once(ConnectionError("reset")))
    assert [r.ok for r in p.results] == [True, True]
    rh_telemetry.assert_metric("rh_agents_retries_total", 1, name="fetch", operation="execute_tool")
    rh_telemetry.assert_metric(
        "rh_agents_retries_total", 1, name="unnamed", operation="parallel_item"
    )
    group = rh_telemetry.one("parallel*")
    retries = sorted(
        (
            str((e.attributes or {})["rh_agents.parallel.item"]),
            (e.attributes or {})["rh_agents.retry.attempt"],
        )
        for e in group.events
        if e.name == "retry"
    )
    assert retries == [("fetch", 1), ("unnamed", 1)]


async def test_final_outcomes_say_how_each_item_ended(rh_telemetry: TelemetryCapture) -> None:
    async def waits() -> str:
        return str(await interrupt({"question": "ok?"}))

    async def down() -> None:
        raise TimeoutError("down")

    groups = []

    async def pipeline(data: Any, extra: Any, st: ExecutionState) -> None:
        async with st.parallel(name="g", max_retries=1, retry_delay=0.0) as p:
            groups.append(p)
            p.add(waits, name="waits")
            p.add(fails_once(ConnectionError("reset")), name="flaky")
            p.add(down, name="down")

    state = ExecutionState()
    result = await ExecutionEvent(actor=Agent(name="pipeline", handler=pipeline))(None, {}, state)
    assert result.status is ExecutionStatus.AWAITING
    paused = groups[0].results[0]
    assert paused.status is ExecutionStatus.AWAITING
    assert isinstance(paused.execution_time, float) and paused.execution_time >= 0
    outcomes = sorted(
        (labels["outcome"], value)
        for labels, value in rh_telemetry.samples("rh_agents_final_outcomes_total")
        if labels["operation"] == "parallel_item" and labels["name"] == "g"
    )
    assert outcomes == [("awaiting", 1.0), ("completed", 1.0), ("failed", 1.0)]
    errors = sorted(
        (labels["error_type"], value)
        for labels, value in rh_telemetry.samples("rh_agents_final_errors_total")
        if labels["name"] == "g"
    )
    assert errors == [("TimeoutError", 1.0)]  # the retried ConnectionError is not final


async def test_the_wait_for_a_worker_is_measured_from_when_the_item_was_ready(
    rh_telemetry: TelemetryCapture,
) -> None:
    async with FakeClock() as clock:
        await clock.sleep(10.0)  # the group starts well after the clock's zero
        state = ExecutionState(clock=clock)

        async def two_seconds() -> None:
            await clock.sleep(2.0)

        async with state.parallel(max_workers=1, name="queue") as p:
            p.add(two_seconds)
            p.add(two_seconds)
    # the first started at once, the second waited for the first
    assert rh_telemetry.histogram_count("rh_agents_semaphore_wait_seconds", group="queue") == 2
    assert rh_telemetry.histogram_sum("rh_agents_semaphore_wait_seconds", group="queue") == 2.0


async def test_items_of_a_cancelled_group_end_cancelled(rh_telemetry: TelemetryCapture) -> None:
    state = ExecutionState()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def run() -> None:
        async with state.parallel(name="stopped", max_workers=2) as p:
            p.add(forever)
            p.add(forever)

    task = asyncio.create_task(run())
    await started.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rh_telemetry.assert_metric(
        "rh_agents_final_outcomes_total",
        2,
        operation="parallel_item",
        name="stopped",
        outcome="cancelled",
    )


async def test_items_through_an_executor_fail_and_nest_like_the_others() -> None:
    from rh_agents.core.executors import AsyncioExecutor

    state = ExecutionState(telemetry=False)

    async def echo(data: Any, extra: Any, st: Any) -> Any:
        return data

    tool = Tool(name="t", handler=echo)

    async def fails() -> ExecutionResult[Any]:
        return failed_result("refused")

    async with state.parallel(
        name="x", executor=AsyncioExecutor(), max_retries=1, retry_delay=0.0
    ) as p:
        p.add(lambda: ExecutionEvent(actor=tool)(1, {}, state), name="call")
        p.add(fails, name="fails")
    assert [r.ok for r in p.results] == [True, False]
    assert p.results[1].error_message == "refused"
    assert [r.attempts for r in p.results] == [1, 2]  # the failed result was retried
    with pytest.raises(EventFailedError, match="refused"):  # without a policy too
        async with state.parallel(
            name="y", executor=AsyncioExecutor(), error_strategy="fail_fast"
        ) as q:
            q.add(fails)
    assert [e.address for e in state.history.events if e.actor_name == "t"] == [
        "parallel:x[0]/t",
        "parallel:x[0]/t",
    ]


async def test_a_group_that_ran_nothing_had_nothing_in_flight() -> None:
    state = ExecutionState(telemetry=False)
    async with state.parallel(name="empty") as p:
        pass
    assert p.statistics().peak_in_flight == 0


async def test_an_item_returning_the_result_of_a_paused_call_waits_too() -> None:
    async def asks(data: Any, extra: Any, st: Any) -> str:
        return str(await interrupt({"question": "ok?"}))

    tool = Tool(name="asks", handler=asks)
    groups: list[Any] = []

    async def pipeline(data: Any, extra: Any, st: ExecutionState) -> None:
        async with st.parallel(name="g") as p:
            groups.append(p)
            p.add(lambda: ExecutionEvent(actor=tool)(None, {}, st), name="call")

    state = ExecutionState(telemetry=False)
    result = await ExecutionEvent(actor=Agent(name="pipeline", handler=pipeline))(None, {}, state)
    assert result.status is ExecutionStatus.AWAITING
    [paused] = groups[0].results
    assert (paused.ok, paused.status) == (False, ExecutionStatus.AWAITING)
