"""How a group schedules its items: the default worker count and priorities."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rh_agents import ExecutionState, ExecutionStatus
from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.parallel import DEFAULT_MAX_WORKERS
from rh_agents.testing import FakeClock, TelemetryCapture


async def _run_all_at_once(state: ExecutionState, n: int, expected_together: int) -> int:
    """Run ``n`` items that each wait until ``expected_together`` of them are running;
    returns the group's peak concurrency."""
    running = 0
    all_in = asyncio.Event()

    async def item() -> None:
        nonlocal running
        running += 1
        if running == expected_together:
            all_in.set()
        await all_in.wait()

    async with state.parallel(max_workers=None, name="fan") as p:
        for _ in range(n):
            p.add(item)
        await p.gather()
        return p.statistics().peak_in_flight


async def test_max_workers_none_runs_as_many_workers_as_items(
    rh_telemetry: TelemetryCapture,
) -> None:
    state = ExecutionState()
    assert await _run_all_at_once(state, 7, expected_together=7) == 7
    group = rh_telemetry.one("parallel fan")
    assert (group.attributes or {})["rh_agents.parallel.max_workers"] == 7
    assert rh_telemetry.span_tree() == "parallel fan [outcome='completed']"
    rh_telemetry.assert_metric("rh_agents_parallel_max_workers", 7, group="fan")


async def test_max_workers_none_is_capped_by_the_documented_default() -> None:
    n = DEFAULT_MAX_WORKERS + 8
    peak = await _run_all_at_once(ExecutionState(), n, expected_together=DEFAULT_MAX_WORKERS)
    assert peak == DEFAULT_MAX_WORKERS == 32


async def test_max_workers_none_with_no_items_completes() -> None:
    state = ExecutionState()
    async with state.parallel(max_workers=None) as p:
        assert await p.gather() == []
    assert p.group.max_workers == 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, "4"])
def test_an_invalid_max_workers_names_none_as_the_alternative(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match=r"or None for as many workers as items"):
        ExecutionState().parallel(max_workers=bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- priorities


async def _start_order(priorities: list[int], max_workers: int = 1) -> tuple[list[int], list[Any]]:
    """The indexes of the items in the order they started, and the results."""
    started: list[int] = []

    def work(index: int) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            started.append(index)
            return index

        return run

    state = ExecutionState()
    async with state.parallel(max_workers=max_workers, name="prio") as p:
        for index, priority in enumerate(priorities):
            p.add(work(index), priority=priority)
        results = await p.gather()
    return started, [r.result for r in results]


async def test_higher_priorities_start_first_and_results_stay_in_add_order() -> None:
    started, results = await _start_order([0, 5, 0, 9, 5, -1])
    assert started == [3, 1, 4, 0, 2, 5]
    assert results == [0, 1, 2, 3, 4, 5]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=-3, max_value=3), max_size=12))
def test_start_order_is_priority_then_add_order(priorities: list[int]) -> None:
    started, results = asyncio.run(_start_order(priorities))
    assert started == sorted(range(len(priorities)), key=lambda i: (-priorities[i], i))
    assert results == list(range(len(priorities)))


async def test_a_retry_that_is_due_goes_before_waiting_items_of_any_priority(
    fake_clock: FakeClock,
) -> None:
    started: list[str] = []
    failed_once = False

    async def flaky() -> str:
        nonlocal failed_once
        started.append("flaky")
        if not failed_once:
            failed_once = True
            raise ConnectionError("refused")
        return "ok"

    def plain(name: str) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            started.append(name)
            await fake_clock.sleep(1.0)
            return name

        return run

    async with fake_clock:
        state = ExecutionState(clock=fake_clock)
        async with state.parallel(max_workers=1, max_retries=1, retry_delay=0.5) as p:
            p.add(flaky, priority=9)
            p.add(plain("high"), priority=5)
            p.add(plain("higher"), priority=7)
            results = await p.gather()
    # flaky fails at once and is due again (0.25-0.5 s) while "higher" runs (1 s).
    assert started == ["flaky", "higher", "flaky", "high"]
    assert [r.ok for r in results] == [True, True, True]


def test_a_priority_must_be_an_integer() -> None:
    async def run() -> None:
        async with ExecutionState().parallel() as p:
            with pytest.raises(InvalidArgumentError, match=r"priority must be an integer"):
                p.add(asyncio.sleep, priority="high")  # type: ignore[arg-type]

    asyncio.run(run())


async def test_items_added_while_running_start_by_priority() -> None:
    state = ExecutionState(telemetry=False)
    started: list[str] = []

    def work(name: str) -> Any:
        async def run() -> None:
            started.append(name)

        return run

    async with state.parallel(max_workers=1, name="dyn") as p:

        async def first() -> None:
            started.append("first")
            for name, priority in (("low", 1), ("high", 5), ("mid", 3), ("high2", 5)):
                p.add(work(name), priority=priority)

        p.add(first)
    assert started == ["first", "high", "high2", "mid", "low"]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=-2, max_value=2),
    st.lists(st.integers(min_value=-2, max_value=2), max_size=8),
)
def test_items_added_to_a_waiting_queue_keep_priority_then_add_order(
    initial: int, priority: int, added: list[int]
) -> None:
    # ``initial`` items of one priority wait (the first one runs and adds the others):
    # the queue of one priority must give way to a priority order when they differ.
    started: list[int] = []

    def work(index: int) -> Any:
        async def run() -> None:
            started.append(index)

        return run

    async def main() -> None:
        state = ExecutionState(telemetry=False)
        async with state.parallel(max_workers=1, name="mixed") as p:

            async def first() -> None:
                started.append(0)
                for offset, extra in enumerate(added):
                    p.add(work(initial + offset), priority=extra)

            p.add(first, priority=priority)
            for index in range(1, initial):
                p.add(work(index), priority=priority)

    asyncio.run(main())
    priorities = [priority] * initial + added
    waiting = sorted(range(1, len(priorities)), key=lambda i: (-priorities[i], i))
    assert started == [0, *waiting]


async def test_a_retry_counts_as_delayed_only_while_it_backs_off() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(telemetry=False, clock=clock)
        second_attempt = asyncio.Event()
        release = asyncio.Event()
        calls = 0

        async def flaky() -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("reset")
            second_attempt.set()
            await release.wait()
            return "ok"

        seen: list[Any] = []

        def on_event(event: Any) -> None:
            if event.execution_status is ExecutionStatus.RETRYING:  # the backoff begins
                seen.append(p.statistics())

        state.event_bus.subscribe(on_event)
        async with state.parallel(max_workers=1, max_retries=1, retry_delay=1.0, name="r") as p:
            p.add(flaky)
            runner = asyncio.create_task(p.gather())
            await second_attempt.wait()
            (backing_off,) = seen
            running = p.statistics()
            release.set()
            await runner
    assert (backing_off.delayed, backing_off.in_flight) == (1, 0)
    assert (running.delayed, running.in_flight) == (0, 1)
    assert p.results[0].result == "ok"
