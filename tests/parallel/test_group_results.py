"""The results of items that did not finish on their own: paused, cancelled, and the
group's own lifecycle entries in the history.

Everything that takes time waits on a FakeClock; no test measures real time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from rh_agents import Agent, ExecutionEvent, ExecutionState, Policy, RetryConfig, interrupt
from rh_agents.core.errors import EventFailedError
from rh_agents.core.events import EventKind, ExecutionResult
from rh_agents.core.interrupts import Interrupted
from rh_agents.core.parallel.errors import ParallelGroupError
from rh_agents.core.retry import BackoffStrategy
from rh_agents.core.types import ExecutionStatus
from rh_agents.testing import FakeClock


async def test_a_paused_item_has_a_result_that_says_so() -> None:
    groups: list[Any] = []
    streamed: list[ExecutionResult[Any]] = []

    async def waits() -> str:
        return str(await interrupt({"question": "ok?"}))

    async def works() -> str:
        return "done"

    async def pipeline(data: Any, extra: Any, st: ExecutionState) -> None:
        async with st.parallel(name="g") as p:
            groups.append(p)
            p.add(works, name="works")
            p.add(waits, name="waits")
            async for result in p.stream():
                streamed.append(result)

    state = ExecutionState(telemetry=False)
    await ExecutionEvent(actor=Agent(name="pipeline", handler=pipeline))(None, {}, state)
    paused = groups[0].results[1]
    assert isinstance(paused.exception, Interrupted)
    assert (paused.ok, paused.status, paused.error_type) == (
        False,
        ExecutionStatus.AWAITING,
        "Interrupted",
    )
    assert paused.error_message == str(paused.exception) != ""
    assert (paused.index, paused.name, paused.attempts) == (1, "waits", 1)
    assert sorted(str(r.name) for r in streamed) == ["waits", "works"]  # streamed like the others


async def test_items_a_cancellation_cut_short_say_where_they_were() -> None:
    constant = Policy(
        retry=RetryConfig(
            max_attempts=4,
            backoff_strategy=BackoffStrategy.CONSTANT,
            initial_delay=10.0,
            jitter=False,
        )
    )
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        running = asyncio.Event()
        groups: list[Any] = []

        async def fails() -> None:
            raise ConnectionError("reset")

        async def forever() -> None:
            running.set()
            await asyncio.Event().wait()

        async def retrying() -> None:
            async with state.parallel(name="retry", policy=constant) as p:
                groups.append(p)
                p.add(fails, name="retrying")

        async def busy() -> None:
            async with state.parallel(name="busy", max_workers=1) as p:
                groups.append(p)
                p.add(forever, name="running")
                p.add(forever, name="later")

        task = asyncio.ensure_future(asyncio.gather(retrying(), busy()))
        await running.wait()
        await clock.sleep(15.0)  # "retrying" failed at 0 and 10, and waits until 20
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    results = [r for p in groups for r in p.results]
    assert [(r.name, r.status, r.error_type, r.ok) for r in results] == [
        ("retrying", ExecutionStatus.CANCELLED, "CancelledError", False),
        ("running", ExecutionStatus.CANCELLED, "CancelledError", False),
        ("later", ExecutionStatus.CANCELLED, "CancelledError", False),
    ]
    assert [r.error_message for r in results] == [
        "Item 0 ('retrying') was cancelled while waiting to retry (after 2 failed attempts).",
        "Item 0 ('running') was cancelled while running.",
        "Item 1 ('later') was cancelled before it started.",
    ]


async def test_one_failed_attempt_is_said_in_the_singular() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        groups: list[Any] = []

        async def fails() -> None:
            raise ConnectionError("reset")

        async def run() -> None:
            async with state.parallel(name="one", max_retries=1, retry_delay=10.0) as p:
                groups.append(p)
                p.add(fails, name="retrying")

        task = asyncio.create_task(run())
        await clock.sleep(5.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert groups[0].results[0].error_message == (
        "Item 0 ('retrying') was cancelled while waiting to retry (after 1 failed attempt)."
    )


async def test_the_lifecycle_entries_of_an_unnamed_group() -> None:
    state = ExecutionState(telemetry=False)

    async def flaky() -> str:
        if not getattr(flaky, "failed", False):
            flaky.failed = True  # type: ignore[attr-defined]
            raise ConnectionError("reset")
        return "ok"

    before = time.time()
    async with state.parallel(max_retries=1, retry_delay=0.0, timeout=60.0) as p:
        p.add(flaky)
    entries = [e for e in state.history.events if e.kind is EventKind.GROUP]
    assert [e.execution_status for e in entries] == [
        ExecutionStatus.STARTED,
        ExecutionStatus.COMPLETED,
    ]
    started, ended = entries
    assert started.actor_name == "parallel:group"  # an unnamed group's label
    assert started.timestamp is not None and ended.timestamp is not None
    assert before <= started.timestamp <= ended.timestamp <= time.time()
    assert ended.metadata["retries"] == 1
    assert ended.metadata["timeout"] == 60.0
    assert ended.metadata["timed_out"] is False


async def test_a_failed_result_without_an_exception_is_reported_in_the_group_error() -> None:
    state = ExecutionState(telemetry=False)
    returned = [
        ExecutionResult(result=None, ok=False, error_message="quota exceeded"),
        ExecutionResult(result=None, ok=False),
    ]

    async with state.parallel(name="f") as p:
        for value in returned:

            async def item(value: ExecutionResult[Any] = value) -> ExecutionResult[Any]:
                return value

            p.add(item)
    with pytest.raises(ParallelGroupError) as info:
        p.raise_for_failures()
    errors = info.value.exceptions
    assert all(isinstance(e, EventFailedError) for e in errors)
    assert [str(e) for e in errors] == ["quota exceeded", "failed"]
    assert [getattr(e, "result", None) for e in errors] == p.results


async def test_the_stream_passes_asend_and_athrow_to_its_generator() -> None:
    state = ExecutionState(telemetry=False)

    async def value() -> int:
        return 1

    async with state.parallel(name="s") as p:
        p.add(value)
        p.add(value)
        stream = p.stream()
        first = await stream.asend(None)
        assert first.ok
        with pytest.raises(ValueError, match="stop reading"):
            await stream.athrow(ValueError("stop reading"))


async def test_the_group_record_keeps_its_error_strategy() -> None:
    state = ExecutionState(telemetry=False)

    async def value() -> int:
        return 1

    async with state.parallel(name="strict", error_strategy="fail_fast") as p:
        p.add(value)
    assert p.group.error_strategy.value == "fail_fast"
    ended = [e for e in state.history.events if e.kind is EventKind.GROUP][-1]
    assert ended.metadata["error_strategy"] == "fail_fast"
