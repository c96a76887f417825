"""Cancellation and cleanup: every exit path of a group leaves nothing running."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from rh_agents import (
    ErrorStrategy,
    EventFailedError,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    GroupStatus,
    Limiter,
    ParallelExecutionManager,
    ParallelTimeoutError,
    Tool,
)
from rh_agents.core.events import EventKind
from rh_agents.testing.clock import FakeClock

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


@dataclass
class Probe:
    """Items that record when they start and when their cleanup ran."""

    clock: FakeClock
    started: list[int] = field(default_factory=list)
    cleaned: list[int] = field(default_factory=list)
    first_started: asyncio.Event = field(default_factory=asyncio.Event)

    def item(self, i: int, seconds: float, fail: bool = False) -> Callable[[], Awaitable[int]]:
        async def work() -> int:
            self.started.append(i)
            self.first_started.set()
            try:
                await self.clock.sleep(seconds)
                if fail:
                    raise ValueError(f"item {i} failed")
                return i
            finally:
                self.cleaned.append(i)

        return work


Scenario = Callable[[ExecutionState, Limiter, Probe], Awaitable[ParallelExecutionManager]]


async def success(
    state: ExecutionState, limiter: Limiter, probe: Probe
) -> ParallelExecutionManager:
    async with state.parallel(max_workers=2, limiter=limiter) as p:
        for i in range(5):
            p.add(probe.item(i, 1))
    assert p.group.status is GroupStatus.COMPLETED
    return p


async def fail_fast(
    state: ExecutionState, limiter: Limiter, probe: Probe
) -> ParallelExecutionManager:
    p = state.parallel(max_workers=2, limiter=limiter, error_strategy=ErrorStrategy.FAIL_FAST)
    with pytest.raises(ValueError):
        async with p:
            p.add(probe.item(0, 5))
            p.add(probe.item(1, 1, fail=True))
            for i in range(2, 6):
                p.add(probe.item(i, 1))
    assert p.group.status is GroupStatus.FAILED
    return p


async def timeout(
    state: ExecutionState, limiter: Limiter, probe: Probe
) -> ParallelExecutionManager:
    p = state.parallel(max_workers=2, limiter=limiter, timeout=2.5)
    with pytest.raises(ParallelTimeoutError):
        async with p:
            for i in range(6):
                p.add(probe.item(i, 1))
    assert p.group.status is GroupStatus.FAILED
    return p


async def stream_break(
    state: ExecutionState, limiter: Limiter, probe: Probe
) -> ParallelExecutionManager:
    async with state.parallel(max_workers=2, limiter=limiter) as p:
        for i in range(6):
            p.add(probe.item(i, i + 1))
        async for _ in p.stream():
            break
    assert p.group.status is GroupStatus.CANCELLED
    return p


async def stream_break_stops_at_once(
    state: ExecutionState, limiter: Limiter, probe: Probe
) -> ParallelExecutionManager:
    async with state.parallel(max_workers=2, limiter=limiter) as p:
        for i in range(6):
            p.add(probe.item(i, i + 1))
        async for _ in p.stream():
            break
        started = list(probe.started)
        await probe.clock.sleep(100)  # time enough for every queued item, were it allowed
        # Still inside the block: the running items were cancelled, nothing else started.
        assert probe.started == started
        assert sorted(probe.cleaned) == sorted(started)
        assert p.statistics()["in_flight"] == 0
        assert p.group.status is GroupStatus.CANCELLED
    return p


async def gather_in_another_task(
    state: ExecutionState, limiter: Limiter, probe: Probe
) -> ParallelExecutionManager:
    async with state.parallel(max_workers=2, limiter=limiter) as p:
        for i in range(5):
            p.add(probe.item(i, 10))
        collector = asyncio.create_task(p.gather())
        await probe.first_started.wait()
    # The block owns the group: its exit cancelled and awaited the work.
    assert [r.status for r in await collector] == [ExecutionStatus.CANCELLED] * 5
    assert p.group.status is GroupStatus.CANCELLED
    return p


async def gather_in_another_task_body_error(
    state: ExecutionState, limiter: Limiter, probe: Probe
) -> ParallelExecutionManager:
    p = state.parallel(max_workers=2, limiter=limiter)
    with pytest.raises(KeyError):
        async with p:
            for i in range(5):
                p.add(probe.item(i, 10))
            collector = asyncio.create_task(p.gather())
            await probe.first_started.wait()
            raise KeyError("body")
    await collector
    assert p.group.status is GroupStatus.CANCELLED
    return p


async def worker_crash(
    state: ExecutionState, limiter: Limiter, probe: Probe
) -> ParallelExecutionManager:
    def buggy(exc: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    p = state.parallel(max_workers=2, limiter=limiter, max_retries=1, retry_on=buggy)
    with pytest.raises(RuntimeError, match="predicate bug"):
        async with p:
            p.add(probe.item(0, 5))
            p.add(probe.item(1, 1, fail=True))
            for i in range(2, 6):
                p.add(probe.item(i, 1))
    assert probe.started == [0, 1]
    assert p.group.status is GroupStatus.FAILED
    return p


async def stream_aclose(
    state: ExecutionState, limiter: Limiter, probe: Probe
) -> ParallelExecutionManager:
    async with state.parallel(max_workers=2, limiter=limiter) as p:
        for i in range(6):
            p.add(probe.item(i, i + 1))
        async with contextlib.aclosing(p.stream()) as results:
            async for _ in results:
                break
        # aclose() cancelled the rest at once, before the block exits.
        assert p.statistics()["in_flight"] == 0
        assert sorted(probe.cleaned) == sorted(probe.started)
        assert p.group.status is GroupStatus.CANCELLED
    return p


async def body_error(
    state: ExecutionState, limiter: Limiter, probe: Probe
) -> ParallelExecutionManager:
    p = state.parallel(max_workers=2, limiter=limiter)
    with pytest.raises(KeyError):
        async with p:
            for i in range(4):
                p.add(probe.item(i, 1))
            raise KeyError("body")
    assert probe.started == []
    assert p.group.status is GroupStatus.CANCELLED
    return p


async def body_error_while_streaming(
    state: ExecutionState, limiter: Limiter, probe: Probe
) -> ParallelExecutionManager:
    p = state.parallel(max_workers=2, limiter=limiter)
    with pytest.raises(KeyError):
        async with p:
            for i in range(6):
                p.add(probe.item(i, i + 1))
            async for _ in p.stream():
                raise KeyError("consumer failed")
    assert p.group.status is GroupStatus.CANCELLED
    return p


async def external_cancel(
    state: ExecutionState, limiter: Limiter, probe: Probe
) -> ParallelExecutionManager:
    p = state.parallel(max_workers=2, limiter=limiter)

    async def run() -> None:
        async with p:
            for i in range(6):
                p.add(probe.item(i, 10))

    task = asyncio.create_task(run())
    await probe.first_started.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert p.group.status is GroupStatus.CANCELLED
    return p


async def external_cancel_in_body(
    state: ExecutionState, limiter: Limiter, probe: Probe
) -> ParallelExecutionManager:
    p = state.parallel(max_workers=2, limiter=limiter)
    entered = asyncio.Event()

    async def run() -> None:
        async with p:
            for i in range(3):
                p.add(probe.item(i, 1))
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(run())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert probe.started == []
    assert p.group.status is GroupStatus.CANCELLED
    return p


@pytest.mark.parametrize(
    "scenario",
    [
        success,
        fail_fast,
        timeout,
        stream_break,
        stream_break_stops_at_once,
        stream_aclose,
        body_error,
        body_error_while_streaming,
        external_cancel,
        external_cancel_in_body,
        gather_in_another_task,
        gather_in_another_task_body_error,
        worker_crash,
    ],
)
async def test_no_task_or_permit_outlives_the_group(scenario: Scenario) -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        limiter = Limiter("shared", 3, clock=clock)
        probe = Probe(clock)
        before = asyncio.all_tasks()
        p = await scenario(state, limiter, probe)
        assert asyncio.all_tasks() == before
        assert limiter.statistics().in_use == 0
        assert limiter.statistics().waiting == 0
        assert p.statistics()["in_flight"] == 0
        # Every item that started was finished (its cleanup ran) before the exit.
        assert sorted(probe.cleaned) == sorted(probe.started)
        # One result per item, in add order, whatever happened.
        assert [r.index for r in p.results] == list(range(p.group.total))
        counts = p.group.completed + p.group.failed + p.group.cancelled
        assert counts == p.group.total
        # A group that started always publishes a terminal event.
        last = [e for e in state.history.get_event_list() if e.kind == EventKind.GROUP][-1]
        assert last.execution_status.value == p.group.status.value


async def test_external_cancellation_cancels_running_and_skips_queued_items() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        probe = Probe(clock)
        await external_cancel(state, Limiter("l", 5, clock=clock), probe)
    assert probe.started == [0, 1]
    assert sorted(probe.cleaned) == [0, 1]


async def test_cancelled_events_are_recorded_as_cancelled() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        running = asyncio.Event()

        async def slow(data: Any, extra: Any, st: Any) -> None:
            running.set()
            await clock.sleep(100)

        tool = Tool(name="slow", handler=slow)

        async def run() -> None:
            async with state.parallel(max_workers=1, name="c") as p:
                for i in range(3):
                    p.add(ExecutionEvent(actor=tool)(i, {}, state))

        task = asyncio.create_task(run())
        await running.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    statuses = [
        (e.address, e.execution_status.value)
        for e in state.history.get_event_list()
        if e.kind == EventKind.EVENT
    ]
    assert statuses == [("parallel:c[0]/slow", "started"), ("parallel:c[0]/slow", "cancelled")]


async def test_an_item_that_swallows_cancellation_does_not_keep_the_group_running() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        started: list[int] = []
        entered = asyncio.Event()

        async def stubborn() -> str:
            started.append(0)
            entered.set()
            try:
                await clock.sleep(100)
            except asyncio.CancelledError:
                return "ignored the cancellation"
            return "slept"  # pragma: no cover

        async def queued(i: int) -> int:
            started.append(i)
            return i

        p = state.parallel(max_workers=1)

        async def run() -> None:
            async with p:
                p.add(stubborn)
                for i in range(1, 4):
                    p.add(lambda i=i: queued(i))

        task = asyncio.create_task(run())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert started == [0]
    assert p.group.status is GroupStatus.CANCELLED


async def test_an_item_raising_cancelled_error_by_itself_is_a_failure() -> None:
    state = ExecutionState()

    async def rogue() -> None:
        raise asyncio.CancelledError()

    async def fine() -> int:
        return 1

    async with state.parallel(max_workers=1) as p:
        p.add(rogue, name="rogue")
        p.add(fine, name="fine")
    rogue_result, fine_result = p.results
    assert not rogue_result.ok and rogue_result.error_type == "CancelledError"
    assert rogue_result.status is ExecutionStatus.FAILED
    assert fine_result.ok
    assert p.group.status is GroupStatus.FAILED

    with pytest.raises(EventFailedError, match="raised CancelledError although"):
        async with state.parallel(error_strategy="fail_fast") as p2:
            p2.add(rogue)


async def test_a_second_cancellation_during_cleanup_still_records_the_end() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        limiter = Limiter("l", 2, clock=clock)
        running = asyncio.Event()
        cleaning = asyncio.Event()
        cleaned: list[str] = []

        async def slow_cleanup() -> None:
            running.set()
            try:
                await clock.sleep(100)
            finally:
                cleaning.set()
                await clock.sleep(1)  # cleanup that takes a while
                cleaned.append("done")

        p = state.parallel(max_workers=2, limiter=limiter)

        async def run() -> None:
            async with p:
                p.add(slow_cleanup)
                p.add(lambda: clock.sleep(100))

        before = asyncio.all_tasks()
        task = asyncio.create_task(run())
        await running.wait()
        task.cancel()
        await cleaning.wait()
        task.cancel()  # impatient caller
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.all_tasks() == before
    assert cleaned == ["done"]
    assert p.group.status is GroupStatus.CANCELLED
    assert limiter.statistics().in_use == 0
    last = [e for e in state.history.get_event_list() if e.kind == EventKind.GROUP][-1]
    assert last.execution_status is ExecutionStatus.CANCELLED


class Fatal(BaseException):
    """Not an Exception: must not be turned into a failed result."""


async def test_a_base_exception_from_an_item_propagates() -> None:
    state = ExecutionState()

    async def fatal() -> None:
        raise Fatal("stop everything")

    async def fine() -> int:
        await asyncio.sleep(0)
        return 1

    before = asyncio.all_tasks()
    with pytest.raises(Fatal):
        async with state.parallel(max_workers=2) as p:
            p.add(fine)
            p.add(fatal)
    assert asyncio.all_tasks() == before
    assert p.statistics()["in_flight"] == 0


async def test_a_stream_consumed_by_another_task_is_stopped_when_the_body_fails() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        seen: list[int | None] = []
        first = asyncio.Event()
        before = asyncio.all_tasks()

        async def consume(p: ParallelExecutionManager) -> None:
            async for result in p.stream():
                seen.append(result.index)
                first.set()

        with pytest.raises(KeyError):
            async with state.parallel(max_workers=2) as p:
                for i in range(4):
                    p.add(lambda i=i: clock.sleep(i + 1))
                consumer = asyncio.create_task(consume(p))
                await first.wait()
                raise KeyError("the body gave up")
        await consumer  # the stream ended when the group was cancelled
        assert asyncio.all_tasks() == before
    assert seen == [0]
    assert p.group.status is GroupStatus.CANCELLED


async def test_a_stream_left_early_in_another_task_stops_the_work_too() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        probe = Probe(clock)
        async with state.parallel(max_workers=2) as p:
            for i in range(6):
                p.add(probe.item(i, i + 1))

            async def first_result() -> int | None:
                async for result in p.stream():
                    return result.index
                return None  # pragma: no cover

            assert await asyncio.create_task(first_result()) == 0
            started = list(probe.started)
            await clock.sleep(100)
            assert probe.started == started
            assert p.statistics()["in_flight"] == 0
    assert sorted(probe.cleaned) == sorted(probe.started)
    assert p.group.status is GroupStatus.CANCELLED


@pytest.mark.parametrize("body_raises", [False, True])
async def test_leaving_the_block_ends_a_gather_running_in_another_task(body_raises: bool) -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        probe = Probe(clock)
        before = asyncio.all_tasks()
        failing = pytest.raises(KeyError) if body_raises else contextlib.nullcontext()
        with failing:
            async with state.parallel(max_workers=2) as p:
                for i in range(4):
                    p.add(probe.item(i, 10))
                collector = asyncio.create_task(p.gather())
                await probe.first_started.wait()
                if body_raises:
                    raise KeyError("body")
        # Nothing of the group is left, at most the caller's own task, about to return.
        assert asyncio.all_tasks() - before <= {collector}
        assert clock.monotonic() == 0
        assert sorted(probe.cleaned) == sorted(probe.started) == [0, 1]
        assert p.group.status is GroupStatus.CANCELLED
        results = await collector
    assert [r.error_message for r in results] == [
        "Item 0 ('item_0') was cancelled while running.",
        "Item 1 ('item_1') was cancelled while running.",
        "Item 2 ('item_2') was cancelled before it started.",
        "Item 3 ('item_3') was cancelled before it started.",
    ]
    assert results == p.results


async def test_a_gather_in_another_task_cancelled_before_its_first_step_ends_cleanly() -> None:
    state = ExecutionState()

    async def work() -> int:
        return 1

    async with state.parallel() as p:
        p.add(work())
        p.add(work())
        collector = asyncio.create_task(p.gather())
        # The collector starts the group's runner task, which has not run yet when the
        # block exits and cancels it.
        await asyncio.sleep(0)
    results = await collector
    assert [r.error_message for r in results] == [
        "Item 0 ('item_0') was cancelled before it started.",
        "Item 1 ('item_1') was cancelled before it started.",
    ]
    assert p.group.status is GroupStatus.CANCELLED
    groups = [e for e in state.history.get_event_list() if e.kind == EventKind.GROUP]
    assert [e.execution_status for e in groups] == [ExecutionStatus.CANCELLED]
    gc.collect()  # the never-started coroutines were closed: no "never awaited" warning


# One worker and no timeout: the group runs its worker in the calling task (no task of
# its own). Cancellation must behave exactly as with worker tasks.


async def test_a_single_worker_group_cancelled_from_outside_stops_and_reraises() -> None:
    state = ExecutionState()
    started: list[int] = []
    release = asyncio.Event()

    running = asyncio.Event()

    async def work(i: int) -> int:
        started.append(i)
        running.set()
        await release.wait()
        return i

    groups: list[ParallelExecutionManager] = []

    async def run() -> None:
        async with state.parallel(max_workers=1, name="one") as p:
            groups.append(p)
            for i in range(3):
                p.add(lambda i=i: work(i))
            await p.gather()

    task = asyncio.create_task(run())
    await running.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (p,) = groups
    assert started == [0]  # queued items never started
    assert p.group.status is GroupStatus.CANCELLED
    assert [r.status for r in p.results] == [ExecutionStatus.CANCELLED] * 3
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_a_single_worker_group_stops_when_an_item_swallows_the_cancellation() -> None:
    state = ExecutionState()
    started: list[int] = []
    inside = asyncio.Event()

    async def stubborn() -> str:
        started.append(0)
        inside.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "swallowed"  # bad manners: the group must still stop
        return "never"

    async def other(i: int) -> int:
        started.append(i)
        return i

    groups: list[ParallelExecutionManager] = []

    async def run() -> None:
        async with state.parallel(max_workers=1, name="one") as p:
            groups.append(p)
            p.add(stubborn)
            p.add(lambda: other(1))
            await p.gather()

    task = asyncio.create_task(run())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert started == [0]
    assert groups[0].group.status is GroupStatus.CANCELLED


async def test_a_single_worker_group_in_a_task_that_swallowed_a_cancellation_earlier() -> None:
    # The task's cancelling() count stays up after a swallowed CancelledError; the group
    # must still tell an item's own CancelledError (a failure) from being cancelled.
    state = ExecutionState()

    async def own_cancel() -> None:
        raise asyncio.CancelledError  # the item's own, nobody cancelled the group

    async def fine() -> int:
        return 1

    async def run() -> list[Any]:
        me = asyncio.current_task()
        assert me is not None
        me.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        assert me.cancelling() == 1
        async with state.parallel(max_workers=1) as p:
            p.add(own_cancel)
            p.add(fine)
            return await p.gather()

    results = await asyncio.create_task(run())
    assert [r.ok for r in results] == [False, True]
    assert results[0].error_type == "CancelledError"
