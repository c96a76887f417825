"""Failure handling of parallel groups: FAIL_SLOW, FAIL_FAST, ok=False events, timeouts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rh_agents import (
    ErrorStrategy,
    EventFailedError,
    ExecutionEvent,
    ExecutionResult,
    ExecutionState,
    ExecutionStatus,
    GroupStatus,
    Limiter,
    ParallelExecutionManager,
    ParallelGroupError,
    ParallelTimeoutError,
    Tool,
)
from rh_agents.core.errors import StateError
from rh_agents.core.events import EventKind
from rh_agents.testing.clock import FakeClock

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def group_events(state: ExecutionState) -> list[ExecutionEvent[Any]]:
    return [e for e in state.history.get_event_list() if e.kind == EventKind.GROUP]


# --------------------------------------------------------------------- FAIL_SLOW


async def run_ten_with_three_failures(p: ParallelExecutionManager) -> list[str]:
    ran: list[str] = []

    async def work(i: int) -> int:
        ran.append(f"item_{i}")
        await asyncio.sleep(0)
        if i in (2, 7):
            raise ConnectionError("refused")
        if i == 5:
            raise TimeoutError()
        return i

    async with p:
        for i in range(10):
            p.add(work(i))
    return ran


async def test_fail_slow_runs_every_item_and_summarizes_the_failures() -> None:
    state = ExecutionState()
    p = state.parallel(max_workers=3, name="fetch", circuit_breaker_threshold=None)
    ran = await run_ten_with_three_failures(p)

    assert sorted(ran) == sorted(f"item_{i}" for i in range(10))
    results = p.results
    assert [r.ok for r in results] == [i not in (2, 5, 7) for i in range(10)]
    assert results[2].error_type == "ConnectionError" and results[2].error_message == "refused"
    assert results[5].error_type == "TimeoutError" and results[5].error_message == "TimeoutError"
    assert all(r.status is ExecutionStatus.FAILED for r in results if not r.ok)

    group = p.group
    assert (group.total, group.completed, group.failed, group.cancelled) == (10, 7, 3, 0)
    assert group.status is GroupStatus.FAILED
    assert group.success_rate == 0.7
    assert group.error_summary() == (
        "3 of 10 events failed with 2 error types: ConnectionError 'refused' (2), TimeoutError (1)"
    )
    assert group.categorized_errors() == [
        ("ConnectionError", "refused", 2),
        ("TimeoutError", "", 1),
    ]
    assert sorted(group.errors) == sorted(
        ["ConnectionError: refused", "ConnectionError: refused", "TimeoutError"]
    )


async def test_error_summary_groups_messages_that_differ_only_in_numbers() -> None:
    state = ExecutionState()

    async def work(i: int) -> None:
        raise ConnectionError(f"port {8000 + i} refused")

    async with state.parallel(circuit_breaker_threshold=None) as p:
        for i in range(3):
            p.add(work(i))
    assert p.group.error_summary() == (
        "3 of 3 events failed with 1 error type: ConnectionError 'port N refused' (3)"
    )


async def test_fail_slow_is_the_default_and_has_no_breaker_by_default() -> None:
    state = ExecutionState()
    p = ParallelExecutionManager(state, max_workers=1, name="fetch")
    assert p.error_strategy is ErrorStrategy.FAIL_SLOW
    assert p.circuit_breaker is None
    ran = await run_ten_with_three_failures(p)
    assert len(ran) == 10


async def test_state_parallel_default_runs_every_failing_item() -> None:
    state = ExecutionState()
    calls = 0

    async def fail() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    async with state.parallel(max_workers=1) as p:
        for _ in range(10):
            p.add(fail)
    assert calls == 10


async def test_raise_for_failures_raises_an_exception_group() -> None:
    state = ExecutionState()
    p = state.parallel(max_workers=3, name="fetch", circuit_breaker_threshold=None)
    await run_ten_with_three_failures(p)

    with pytest.raises(ParallelGroupError) as info:
        p.raise_for_failures()
    error = info.value
    assert isinstance(error, ExceptionGroup)
    assert error.group is p.group
    assert str(error).startswith("Parallel group 'fetch': 3 of 10 events failed with 2 error types")
    assert [type(e).__name__ for e in error.exceptions] == [
        "ConnectionError",
        "TimeoutError",
        "ConnectionError",
    ]

    caught: dict[str, int] = {}
    try:
        p.raise_for_failures()
    except* ConnectionError as group:
        caught["connection"] = len(group.exceptions)
        assert isinstance(group, ParallelGroupError)
        assert group.group is p.group
    except* TimeoutError as group:
        caught["timeout"] = len(group.exceptions)
    assert caught == {"connection": 2, "timeout": 1}


async def test_raise_for_failures_does_nothing_without_failures() -> None:
    state = ExecutionState()

    async def work() -> int:
        return 1

    async with state.parallel() as p:
        p.add(work)
    p.raise_for_failures()
    assert p.group.error_summary() == ""


async def test_raise_for_failures_includes_cancelled_and_failed_events() -> None:
    state = ExecutionState()

    async def handler(data: Any, extra: Any, st: Any) -> None:
        raise KeyError("missing")

    tool = Tool(name="lookup", handler=handler)

    async def not_an_exception() -> ExecutionResult[Any]:
        return ExecutionResult(ok=False, error_message="declined")

    async with state.parallel() as p:
        p.add(ExecutionEvent(actor=tool)(1, {}, state))
        p.add(not_an_exception())
    with pytest.raises(ParallelGroupError) as info:
        p.raise_for_failures()
    first, second = info.value.exceptions
    assert isinstance(first, KeyError)
    assert isinstance(second, EventFailedError) and str(second) == "declined"


async def test_ok_false_event_results_count_as_failures() -> None:
    state = ExecutionState()
    bus_statuses: list[str] = []
    state.event_bus.subscribe(lambda e: bus_statuses.append(e.execution_status.value))

    async def handler(data: Any, extra: Any, st: Any) -> str:
        if data == 1:
            raise ValueError("bad document")
        return "ok"

    tool = Tool(name="parse", handler=handler)
    async with state.parallel(name="docs") as p:
        for i in range(3):
            p.add(ExecutionEvent(actor=tool)(i, {}, state))
    assert [r.ok for r in p.results] == [True, False, True]
    assert p.group.failed == 1 and p.group.completed == 2
    assert p.group.error_summary() == (
        "1 of 3 events failed with 1 error type: ValueError 'bad document' (1)"
    )
    assert p.group.status is GroupStatus.FAILED
    assert bus_statuses[-1] == "failed"  # the group's own terminal event


# --------------------------------------------------------------------- FAIL_FAST


async def test_seed_error_handling() -> None:
    state = ExecutionState()

    async def failing_task() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("Intentional error")

    async def success_task() -> str:
        await asyncio.sleep(0.02)
        return "Success"

    async with state.parallel(max_workers=2, circuit_breaker_threshold=None) as p:
        p.add(failing_task())
        p.add(success_task())
        results = await p.gather()

    assert len(results) == 2
    assert not results[0].ok
    assert results[1].ok

    with pytest.raises(ValueError, match="Intentional error"):
        async with state.parallel(max_workers=2, error_strategy=ErrorStrategy.FAIL_FAST) as p:
            p.add(failing_task())
            p.add(success_task())
            await p.gather()


async def test_fail_fast_cancels_running_items_and_never_starts_queued_ones() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        started: list[int] = []
        cleaned_up: list[int] = []

        async def work(i: int) -> int:
            started.append(i)
            try:
                if i == 0:
                    await clock.sleep(1)
                    raise ValueError("item 0 broke")
                await clock.sleep(100)
                return i
            finally:
                cleaned_up.append(i)

        p = state.parallel(max_workers=2, error_strategy=ErrorStrategy.FAIL_FAST, name="ff")
        with pytest.raises(ValueError, match="item 0 broke"):
            async with p:
                for i in range(6):
                    p.add(lambda i=i: work(i))
                await p.gather()
        assert clock.monotonic() == 1.0

    assert started == [0, 1]
    assert sorted(cleaned_up) == [0, 1]  # the running item was cancelled *and awaited*
    results = p.results
    assert len(results) == 6
    assert results[0].error_type == "ValueError" and results[0].status is ExecutionStatus.FAILED
    assert results[1].status is ExecutionStatus.CANCELLED
    assert results[1].error_message == "Item 1 ('item_1') was cancelled while running."
    for r in results[2:]:
        assert r.status is ExecutionStatus.CANCELLED and r.attempts == 0
        assert (
            r.error_message == f"Item {r.index} ('item_{r.index}') was cancelled before it started."
        )
    group = p.group
    assert (group.failed, group.completed, group.cancelled) == (1, 0, 5)
    assert group.status is GroupStatus.FAILED
    assert p.statistics()["in_flight"] == 0
    last = group_events(state)[-1]
    assert last.execution_status is ExecutionStatus.FAILED
    assert last.metadata["cancelled"] == 5 and last.metadata["failed"] == 1


async def test_fail_fast_reraises_the_first_failure_only() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)

        async def fail(delay: float, exc: Exception) -> None:
            await clock.sleep(delay)
            raise exc

        with pytest.raises(KeyError):
            async with state.parallel(max_workers=3, error_strategy="fail_fast") as p:
                p.add(fail(2, ValueError("second")))
                p.add(fail(1, KeyError("first")))
                p.add(fail(2, RuntimeError("third")))
        assert p.group.failed == 1 and p.group.cancelled == 2


async def test_fail_fast_ok_false_event_raises_event_failed_error() -> None:
    state = ExecutionState()

    async def handler(data: Any, extra: Any, st: Any) -> str:
        if data == "bad":
            raise ValueError("cannot parse 'bad'")
        return "ok"

    tool = Tool(name="parse", handler=handler)
    with pytest.raises(EventFailedError) as info:
        async with state.parallel(error_strategy=ErrorStrategy.FAIL_FAST, name="docs") as p:
            p.add(ExecutionEvent(actor=tool)("good", {}, state), name="good")
            p.add(ExecutionEvent(actor=tool)("bad", {}, state), name="bad")
    error = info.value
    assert str(error) == ("Item 1 ('bad') of parallel group 'docs' failed: cannot parse 'bad'")
    assert isinstance(error.result, ExecutionResult) and not error.result.ok
    assert error.result.metadata["address"] == "parallel:docs[1]/parse"
    assert isinstance(error.__cause__, ValueError)


async def test_fail_fast_plain_ok_false_result_raises_event_failed_error() -> None:
    state = ExecutionState()

    async def declined() -> ExecutionResult[Any]:
        return ExecutionResult(ok=False, error_message="quota exceeded")

    with pytest.raises(EventFailedError, match="quota exceeded"):
        async with state.parallel(error_strategy=ErrorStrategy.FAIL_FAST) as p:
            p.add(declined())
    assert p.group.status is GroupStatus.FAILED


async def test_fail_fast_in_stream_yields_earlier_results_then_raises() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)

        async def work(i: int) -> int:
            await clock.sleep(i + 1)
            if i == 2:
                raise ValueError("boom")
            return i

        seen: list[int | None] = []
        with pytest.raises(ValueError, match="boom"):
            async with state.parallel(max_workers=5, error_strategy="fail_fast") as p:
                for i in range(5):
                    p.add(work(i))
                async for r in p.stream():
                    seen.append(r.index)
    assert seen == [0, 1]
    assert [r.status for r in p.results[3:]] == [ExecutionStatus.CANCELLED] * 2


# ----------------------------------------------------------------------- timeouts


async def test_timeout_cancels_the_rest_and_reports_partial_results() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        cleaned_up: list[int] = []

        async def fetch(data: Any, extra: Any, st: Any) -> str:
            try:
                await clock.sleep(0.5 * (data + 1) if data < 3 else 10)
                return f"page {data}"
            finally:
                cleaned_up.append(data)

        tool = Tool(name="fetch", handler=fetch)
        p = state.parallel(max_workers=10, timeout=2.0, name="crawl")
        try:
            async with p:
                for i in range(10):
                    p.add(ExecutionEvent(actor=tool)(i, {}, state))
                await p.gather()
        except asyncio.TimeoutError as exc:  # noqa: UP041 - the seed's spelling must work
            error = exc
        else:  # pragma: no cover
            pytest.fail("the group did not time out")
        assert clock.monotonic() == 2.0

    assert isinstance(error, ParallelTimeoutError)
    assert str(error) == (
        "Parallel group 'crawl' timed out after 2.0s. Completed 3/10 events. "
        "Consider increasing timeout or max_workers."
    )
    assert sorted(cleaned_up) == list(range(10))  # cancelled items were awaited
    assert len(error.results) == 10
    assert [r.ok for r in error.results] == [True] * 3 + [False] * 7
    assert [r.result for r in error.completed_results] == ["page 0", "page 1", "page 2"]
    for r in error.results[3:]:
        assert r.error_type == "TimeoutError"
        assert "did not finish before the group's 2.0s timeout" in (r.error_message or "")
    assert [r.index for r in p.results] == list(range(10))
    assert [r.ok for r in p.results] == [r.ok for r in error.results]
    assert error.group is p.group
    assert p.group.timed_out and p.group.status is GroupStatus.FAILED
    assert (p.group.completed, p.group.cancelled) == (3, 7)
    for i in range(3):
        assert state.history.has_completed_event(f"parallel:crawl[{i}]/fetch")
    assert state.history["parallel:crawl[5]/fetch"].execution_status is ExecutionStatus.CANCELLED
    last = group_events(state)[-1]
    assert last.execution_status is ExecutionStatus.FAILED and last.metadata["timed_out"]
    assert last.message == str(error)  # a pure timeout: nothing failed, it just ran out


async def test_the_final_event_of_a_timed_out_group_with_failures_says_both() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)

        async def bad() -> None:
            raise ValueError("bad row")

        with pytest.raises(ParallelTimeoutError):
            async with state.parallel(timeout=1.0, name="rows") as p:
                p.add(bad)
                p.add(clock.sleep(5))
    assert group_events(state)[-1].message == (
        "Parallel group 'rows' timed out after 1.0s. Completed 0/2 events. Consider "
        "increasing timeout or max_workers. 1 of 2 events failed with 1 error type: "
        "ValueError 'bad row' (1)"
    )
    assert group_events(state)[0].message is None  # STARTED: nothing to say yet


async def test_stream_with_timeout_yields_completed_results_first() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        seen: list[Any] = []
        with pytest.raises(ParallelTimeoutError, match="Completed 2/4 events") as info:
            async with state.parallel(timeout=5, name="slow") as p:
                for d in (1, 8, 3, 9):
                    p.add(clock.sleep(d), name=f"sleep{d}")
                async for result in p.stream():
                    seen.append(result.name)
    assert seen == ["sleep1", "sleep3"]
    assert len(info.value.results) == 4


async def test_timeout_counts_queued_items_as_unfinished() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        with pytest.raises(ParallelTimeoutError, match="Completed 2/6 events") as info:
            async with state.parallel(max_workers=1, timeout=2.5) as p:
                for _ in range(6):
                    p.add(lambda: clock.sleep(1))
    assert [r.ok for r in info.value.results] == [True, True, False, False, False, False]
    assert info.value.results[-1].attempts == 0


async def test_no_timeout_when_everything_finishes_in_time() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(timeout=3.0) as p:
            p.add(clock.sleep(1))
            p.add(clock.sleep(2))
        assert clock.monotonic() == 2.0
    assert p.group.status is GroupStatus.COMPLETED and not p.group.timed_out


async def test_work_finishing_exactly_at_the_deadline_is_not_a_timeout() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(timeout=2.0) as p:
            p.add(clock.sleep(2.0))
            p.add(clock.sleep(2.0))
    assert p.group.status is GroupStatus.COMPLETED
    assert [r.ok for r in p.results] == [True, True]


async def test_collecting_again_after_a_failure_raises_it_again() -> None:
    state = ExecutionState()

    async def fail() -> None:
        raise ValueError("once")

    p = state.parallel(error_strategy=ErrorStrategy.FAIL_FAST)
    async with p:
        p.add(fail)
        with pytest.raises(ValueError) as first:
            await p.gather()
        with pytest.raises(ValueError) as second:
            await p.gather_dict()
    assert first.value is second.value
    assert len(p.results) == 1


async def test_error_categories_use_the_first_sentence_of_a_message() -> None:
    state = ExecutionState()

    async def work(i: int) -> None:
        raise OSError(f"Disk {i} is full. Free some space on volume {i}; then retry.")

    async with state.parallel() as p:
        for i in range(2):
            p.add(work(i))
    assert p.group.categorized_errors() == [("OSError", "Disk N is full", 2)]
    assert p.group.errors[0] == "OSError: Disk 0 is full. Free some space on volume 0; then retry."


# ------------------------------------------- errors outside an item's own work


class PredicateBug(Exception):
    pass


def buggy_predicate(exc: BaseException) -> bool:
    raise PredicateBug("the predicate has a bug")


class BrokenLimiter(Limiter):
    """A limiter whose acquire fails once ``fail`` is set (e.g. a lost connection)."""

    fail = False

    async def acquire(self) -> None:
        if self.fail:
            raise PredicateBug("limiter backend unreachable")
        await super().acquire()


@pytest.mark.parametrize("strategy", [ErrorStrategy.FAIL_SLOW, ErrorStrategy.FAIL_FAST])
async def test_a_raising_retry_predicate_stops_the_group(strategy: ErrorStrategy) -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        started: list[int] = []
        cleaned: list[int] = []

        async def bad() -> None:
            raise ConnectionError("refused")

        async def good(i: int) -> int:
            started.append(i)
            try:
                await clock.sleep(10)
                return i
            finally:
                cleaned.append(i)

        p = state.parallel(
            max_workers=2, max_retries=1, retry_on=buggy_predicate, error_strategy=strategy
        )
        with pytest.raises(PredicateBug) as info:
            async with p:
                p.add(lambda: good(0))
                p.add(bad)
                for i in range(2, 5):
                    p.add(lambda i=i: good(i))
        # The group did not wait for the running item, and started nothing after it.
        assert clock.monotonic() == 0
    assert started == cleaned == [0]
    assert any("parallel group" in note and "item 1" in note for note in info.value.__notes__)
    assert p.group.status is GroupStatus.FAILED
    assert [(r.ok, r.status) for r in p.results] == [
        (False, ExecutionStatus.CANCELLED),
        (False, ExecutionStatus.FAILED),
        *[(False, ExecutionStatus.CANCELLED)] * 3,
    ]
    assert p.results[1].error_type == "PredicateBug" and p.results[1].exception is info.value
    assert p.group.errors == ["PredicateBug: the predicate has a bug"]
    assert group_events(state)[-1].execution_status is ExecutionStatus.FAILED
    assert p.statistics()["in_flight"] == 0


async def test_a_failing_limiter_stops_the_group_and_leaks_no_permit() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        limiter = BrokenLimiter("svc", max_concurrency=2, clock=clock)

        async def second_item() -> int:
            limiter.fail = True  # from now on, every acquire fails
            await clock.sleep(5)
            return 1

        before = asyncio.all_tasks()
        with pytest.raises(PredicateBug, match="limiter backend unreachable"):
            async with state.parallel(max_workers=1, limiter=limiter) as p:
                p.add(second_item)
                p.add(asyncio.sleep(0))
                p.add(asyncio.sleep(0))
        assert asyncio.all_tasks() == before
    assert limiter.in_use == 0 and limiter.waiting == 0
    assert p.group.status is GroupStatus.FAILED
    assert [r.status for r in p.results] == [
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.CANCELLED,
    ]


async def test_a_history_refusing_the_retry_event_stops_the_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        publish = state.publish_event

        async def refuse_retries(event: ExecutionEvent[Any]) -> None:
            if event.is_retry:
                raise StateError("The history could not record the retry: disk full.")
            await publish(event)

        monkeypatch.setattr(state, "publish_event", refuse_retries)
        ran: list[int] = []

        async def flaky() -> None:
            raise ConnectionError("refused")

        async def later(i: int) -> int:
            ran.append(i)
            return i

        with pytest.raises(StateError, match="disk full"):
            async with state.parallel(max_workers=1, max_retries=2, retry_delay=1) as p:
                p.add(flaky)
                for i in range(3):
                    p.add(lambda i=i: later(i))
    assert ran == []
    assert p.group.status is GroupStatus.FAILED
    assert group_events(state)[-1].execution_status is ExecutionStatus.FAILED


def test_error_categories_show_numbers_unless_the_messages_differ_only_in_them() -> None:
    from rh_agents.core.parallel import ParallelEventGroup

    group = ParallelEventGroup(total=5, failed=5)
    group._record_failure("HTTPError", "HTTP 503 Service Unavailable. Retry later.")
    group._record_failure("HTTPError", "HTTP 503 Service Unavailable. Retry soon.")
    group._record_failure("ConnectionError", "refused on port 8080")
    group._record_failure("ConnectionError", "refused on port 9090")
    group._record_failure("ConnectionError", "refused on port 9090")
    assert group.categorized_errors() == [
        ("ConnectionError", "refused on port N", 3),
        ("HTTPError", "HTTP 503 Service Unavailable", 2),
    ]
