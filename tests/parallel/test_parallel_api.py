"""The add / gather / gather_dict / stream API of parallel groups, and its usage errors."""

from __future__ import annotations

import asyncio
import functools
import gc
import math
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from rh_agents import (
    ErrorStrategy,
    ExecutionEvent,
    ExecutionResult,
    ExecutionState,
    ExecutionStatus,
    GroupStatus,
    ParallelExecutionManager,
    Tool,
)
from rh_agents.core.errors import (
    DuplicateNameError,
    InvalidArgumentError,
    InvalidWorkError,
    LifecycleError,
)
from rh_agents.core.events import EventKind
from rh_agents.core.executors import WorkItem
from rh_agents.testing.clock import FakeClock

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


@contextmanager
def no_unawaited_coroutines() -> Iterator[None]:
    """Fail if a coroutine object was dropped without being awaited or closed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    leaked = [w for w in caught if "was never awaited" in str(w.message)]
    assert not leaked, [str(w.message) for w in leaked]


async def sleepy(clock: FakeClock, seconds: float, value: Any) -> Any:
    await clock.sleep(seconds)
    return value


async def test_seed_basic_parallel() -> None:
    state = ExecutionState()

    async def dummy_task(n: int) -> int:
        await asyncio.sleep(0.001)
        return n * 2

    async with state.parallel(max_workers=3) as p:
        p.add(dummy_task(1))
        p.add(dummy_task(2))
        p.add(dummy_task(3))
        results = await p.gather()

    assert len(results) == 3
    assert [r.result for r in results] == [2, 4, 6]
    assert all(r.ok and r.status is ExecutionStatus.COMPLETED for r in results)


async def test_gather_returns_add_order_whatever_the_completion_order() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        finished: list[int] = []

        async def work(i: int) -> int:
            await clock.sleep(10 - i)
            finished.append(i)
            return i

        async with state.parallel(max_workers=10) as p:
            for i in range(10):
                p.add(work(i))
            results = await p.gather()

    assert finished == list(reversed(range(10)))
    assert [r.result for r in results] == list(range(10))
    assert [r.index for r in results] == list(range(10))
    assert [r.name for r in results] == [f"item_{i}" for i in range(10)]
    assert all(r.attempts == 1 for r in results)


async def test_gather_dict_keys_results_by_name_with_stable_default_names() -> None:
    state = ExecutionState()

    async def value(v: str) -> str:
        return v

    async with state.parallel(max_workers=2) as p:
        assert p.add(value("a"), name="first") == 0
        assert p.add(value("b")) == 1
        assert p.add(lambda: value("c"), name="third") == 2
        results = await p.gather_dict()

    assert list(results) == ["first", "item_1", "third"]
    assert {k: r.result for k, r in results.items()} == {
        "first": "a",
        "item_1": "b",
        "third": "c",
    }
    assert results["item_1"].index == 1


async def test_default_name_never_collides_with_a_chosen_one() -> None:
    state = ExecutionState()

    async def value(v: int) -> int:
        return v

    async with state.parallel() as p:
        p.add(value(0), name="item_1")
        p.add(value(1))
        results = await p.gather_dict()

    assert {k: r.result for k, r in results.items()} == {"item_1": 0, "item_1#1": 1}


async def test_a_chosen_name_may_not_take_an_earlier_automatic_one() -> None:
    state = ExecutionState()

    async def value(v: int) -> int:
        return v

    async with state.parallel() as p:
        p.add(value(0))
        p.add(value(1), name="item_5")  # no item 5 yet: allowed
        with pytest.raises(DuplicateNameError, match="item_0"):
            p.add(value(2), name="item_0")
        p.add(value(3), name="later")
        p.add(value(4))
        p.add(value(5))  # index 4: its automatic name item_4 is free
        p.add(value(6))  # index 5: item_5 is taken, so item_5#1
        with pytest.raises(DuplicateNameError, match="item_5#1"):
            p.add(value(7), name="item_5#1")
        results = await p.gather_dict()

    assert {k: r.result for k, r in results.items()} == {
        "item_0": 0,
        "item_5": 1,
        "later": 3,
        "item_3": 4,
        "item_4": 5,
        "item_5#1": 6,
    }


async def test_stream_yields_in_completion_order_including_failures() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)

        async def work(i: int) -> int:
            await clock.sleep([3, 1, 2, 4][i])
            if i == 2:
                raise ValueError("bad input")
            return i

        seen: list[tuple[int | None, bool]] = []
        async with state.parallel(max_workers=4) as p:
            for i in range(4):
                p.add(work(i))
            async for result in p.stream():
                seen.append((result.index, result.ok))

    assert seen == [(1, True), (2, False), (0, True), (3, True)]
    assert [r.index for r in p.results] == [0, 1, 2, 3]
    assert p.results[2].error_message == "bad input"
    assert p.results[2].error_type == "ValueError"


async def test_stream_of_the_seed() -> None:
    state = ExecutionState()

    async def dummy_task(n: int) -> int:
        await asyncio.sleep(0)
        return n

    async with state.parallel(max_workers=3) as p:
        for i in range(5):
            p.add(dummy_task(i))
        results = [r async for r in p.stream()]
    assert sorted(r.result for r in results) == [0, 1, 2, 3, 4]


async def test_exiting_the_block_without_collecting_gathers() -> None:
    state = ExecutionState()
    ran: list[int] = []

    async def work(i: int) -> int:
        ran.append(i)
        return i

    async with state.parallel() as p:
        p.add(work(0))
        p.add(lambda: work(1))

    assert ran == [0, 1]
    assert [r.result for r in p.results] == [0, 1]
    assert p.group.status is GroupStatus.COMPLETED
    assert await p.gather() == p.results


async def test_gather_twice_returns_the_same_results() -> None:
    state = ExecutionState()
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        return calls

    async with state.parallel() as p:
        p.add(work)
        first = await p.gather()
        second = await p.gather()
        as_dict = await p.gather_dict()

    assert calls == 1
    assert first == second
    assert first[0] is second[0]
    assert as_dict["item_0"] is first[0]


async def test_empty_group() -> None:
    state = ExecutionState()
    async with state.parallel(name="nothing") as p:
        assert await p.gather() == []
    assert p.group.status is GroupStatus.COMPLETED
    assert p.group.total == 0
    assert p.group.success_rate == 1.0

    async with state.parallel() as p2:
        assert await p2.gather_dict() == {}
    async with state.parallel() as p3:
        assert [r async for r in p3.stream()] == []
    async with state.parallel():
        pass


async def test_single_item_group() -> None:
    state = ExecutionState()

    async def work() -> str:
        return "only"

    async with state.parallel(max_workers=5) as p:
        p.add(work(), name="solo")
        [result] = await p.gather()
    assert result.ok and result.result == "only" and result.name == "solo"
    assert p.group.completed == 1 and p.group.total == 1
    assert p.group.execution_time is not None and p.group.execution_time >= 0


async def test_factories_start_lazily_and_never_exceed_max_workers_alive() -> None:
    state = ExecutionState()
    total = 100_000
    created = 0
    finished = 0
    peak_alive = 0  # coroutines created and not finished, whether started or not

    async def work(i: int) -> int:
        nonlocal finished
        try:
            await asyncio.sleep(0)
            return i
        finally:
            finished += 1

    def factory(i: int) -> Callable[[], Awaitable[int]]:
        def make() -> Awaitable[int]:
            nonlocal created, peak_alive
            created += 1
            peak_alive = max(peak_alive, created - finished)
            return work(i)

        return make

    async with state.parallel(max_workers=8, circuit_breaker_threshold=None) as p:
        for i in range(total):
            p.add(factory(i))
        assert created == 0  # nothing starts before results are collected
        results = await p.gather()

    assert created == finished == total
    assert peak_alive == 8
    assert p.statistics()["peak_in_flight"] == 8
    assert len(results) == total
    assert results[-1].result == total - 1


async def test_factories_are_called_only_when_a_worker_is_free() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        created_at: list[float] = []

        def make(i: int) -> Callable[[], Awaitable[int]]:
            def factory() -> Awaitable[int]:
                created_at.append(clock.monotonic())
                return sleepy(clock, 1.0, i)

            return factory

        async with state.parallel(max_workers=2) as p:
            for i in range(6):
                p.add(make(i))

    assert created_at == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


async def test_coroutine_object_in_a_retrying_group_is_rejected_at_add() -> None:
    state = ExecutionState()

    async def work() -> int:
        return 1

    with no_unawaited_coroutines():
        async with state.parallel(max_retries=2) as p:
            with pytest.raises(TypeError, match=r"factory") as info:
                p.add(work(), name="w")
            assert isinstance(info.value, InvalidWorkError)
            assert "lambda" in str(info.value)
            p.add(work, name="ok")
        assert [r.result for r in p.results] == [1]


@pytest.mark.parametrize("bad", [42, None, "text", [1, 2]])
async def test_non_awaitable_work_is_rejected(bad: Any) -> None:
    state = ExecutionState()
    async with state.parallel() as p:
        with pytest.raises(TypeError, match="coroutine object or a zero-argument callable"):
            p.add(bad)
    assert p.results == []


async def test_factory_returning_a_non_awaitable_fails_that_item_only() -> None:
    state = ExecutionState()

    async def fine() -> int:
        return 1

    async with state.parallel(max_retries=3, retry_delay=0) as p:
        p.add(lambda: 42, name="wrong")
        p.add(fine, name="fine")
        wrong, ok = await p.gather()

    assert not wrong.ok
    assert wrong.error_type == "InvalidWorkError"
    assert "returned int, not an awaitable" in (wrong.error_message or "")
    assert wrong.attempts == 1  # a usage error is never retried
    assert ok.ok and ok.result == 1


async def test_duplicate_names_are_rejected_and_the_coroutine_closed() -> None:
    state = ExecutionState()

    async def work() -> int:
        return 1

    with no_unawaited_coroutines():
        async with state.parallel(name="dups") as p:
            p.add(work(), name="a")
            with pytest.raises(ValueError, match="already has an item named 'a'") as info:
                p.add(work(), name="a")
            assert isinstance(info.value, DuplicateNameError)
            for bad_name in ("", 5):
                with pytest.raises(ValueError, match="non-empty string"):
                    p.add(work(), name=bad_name)  # type: ignore[arg-type]
    assert len(p.results) == 1


async def test_add_outside_the_block_or_after_collection_is_a_lifecycle_error() -> None:
    state = ExecutionState()

    async def work() -> int:
        return 1

    with no_unawaited_coroutines():
        p = state.parallel()
        with pytest.raises(RuntimeError, match="inside `async with"):
            p.add(work())
        async with p:
            p.add(work())
            await p.gather()
            with pytest.raises(RuntimeError, match="after its results were collected") as info:
                p.add(work())
            assert isinstance(info.value, LifecycleError)
        with pytest.raises(LifecycleError):
            p.add(work())


async def test_collecting_outside_the_block_is_a_lifecycle_error() -> None:
    state = ExecutionState()
    p = state.parallel()
    with pytest.raises(RuntimeError, match=r"gather\(\) must be called inside"):
        await p.gather()
    with pytest.raises(LifecycleError, match=r"gather\(\) must be called inside"):
        await p.gather_dict()
    with pytest.raises(LifecycleError, match=r"stream\(\) must be called inside"):
        async for _ in p.stream():
            pass


async def test_a_group_can_be_entered_only_once() -> None:
    state = ExecutionState()
    p = state.parallel()
    async with p:
        pass
    with pytest.raises(LifecycleError, match="entered only once"):
        async with p:
            pass


async def test_stream_can_be_used_once_and_not_after_gather() -> None:
    state = ExecutionState()

    async def work() -> int:
        return 1

    async with state.parallel() as p:
        p.add(work)
        assert [r.result async for r in p.stream()] == [1]
        with pytest.raises(LifecycleError, match="once per group"):
            async for _ in p.stream():
                pass
        assert [r.result for r in await p.gather()] == [1]

    async with state.parallel() as p2:
        p2.add(work)
        await p2.gather()
        with pytest.raises(LifecycleError, match="already run"):
            async for _ in p2.stream():
                pass


async def test_collecting_twice_at_once_is_a_lifecycle_error() -> None:
    state = ExecutionState()

    async def work() -> int:
        await asyncio.sleep(0)
        return 1

    async with state.parallel() as p:
        p.add(work)
        p.add(work)
        async for _ in p.stream():
            with pytest.raises(LifecycleError, match="already running"):
                await p.gather()
            with pytest.raises(LifecycleError):
                async for _ in p.stream():
                    pass
            break


# ------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_workers": 0}, "max_workers must be a positive integer, got 0"),
        ({"max_workers": -3}, "max_workers must be a positive integer, got -3"),
        ({"max_workers": 2.5}, "max_workers must be a positive integer, got 2.5"),
        ({"max_workers": "4"}, "max_workers must be a positive integer, got '4'"),
        ({"max_workers": True}, "max_workers must be a positive integer"),
        ({"timeout": -1.0}, "timeout must be a positive number of seconds or None"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": math.nan}, "timeout must be a positive number"),
        ({"timeout": math.inf}, "timeout must be a positive number"),
        ({"timeout": "5"}, "timeout must be a positive number"),
        ({"error_strategy": "fail_sometimes"}, "Unknown error_strategy 'fail_sometimes'"),
        ({"max_retries": -1}, "max_retries must be an integer >= 0"),
        ({"max_retries": 1.5}, "max_retries must be an integer >= 0"),
        ({"retry_delay": -0.5}, "retry_delay must be a finite number"),
        ({"retry_delay": math.nan, "max_retries": 2}, "retry_delay must be a finite number"),
        ({"name": 12}, "name must be a string or None"),
        ({"name": ""}, "A parallel group's name must not be empty or blank, got ''"),
        ({"name": "   "}, "must not be empty or blank, got '   '"),
        ({"name": "x#1"}, "Parallel group name 'x#1' contains '#'"),
        ({"name": "y[0]"}, r"Parallel group name 'y\[0\]' contains '\[\]'"),
        ({"limiter": "openai"}, "got the string 'openai'; limiters are shared by passing"),
        ({"limiter": 3}, "limiter must be a rh_agents Limiter or None, got int"),
        ({"circuit_breaker": 12}, "circuit_breaker must be a CircuitBreaker"),
        ({"circuit_breaker_threshold": 0}, "circuit_breaker_threshold must be a positive"),
    ],
)
def test_bad_arguments_are_reported_clearly(kwargs: dict[str, Any], match: str) -> None:
    state = ExecutionState()
    with pytest.raises(ValueError, match=match) as info:
        state.parallel(**kwargs)
    assert isinstance(info.value, InvalidArgumentError)


def test_error_strategy_accepts_its_string_values() -> None:
    state = ExecutionState()
    assert state.parallel(error_strategy="fail_fast").error_strategy is ErrorStrategy.FAIL_FAST
    assert state.parallel().error_strategy is ErrorStrategy.FAIL_SLOW
    p = ParallelExecutionManager(state, error_strategy="fail_slow", timeout=2)
    assert p.error_strategy is ErrorStrategy.FAIL_SLOW
    assert p.timeout == 2.0
    assert p.group.timeout == 2.0 and p.group.max_workers == 5


# ------------------------------------------------------------------ results


async def test_results_carry_item_and_event_metadata() -> None:
    state = ExecutionState()

    async def search(query: Any, extra: Any, st: Any) -> str:
        if query == "bad":
            raise LookupError("no hits")
        return f"hits for {query}"

    tool = Tool(name="search", handler=search)
    async with state.parallel(name="queries") as p:
        p.add(ExecutionEvent(actor=tool)("cats", {}, state), name="cats")
        p.add(ExecutionEvent(actor=tool)("bad", {}, state), name="bad")
        ok, failed = await p.gather()

    gid = p.group.group_id
    assert ok.ok and ok.result == "hits for cats"
    assert (ok.index, ok.name, ok.attempts) == (0, "cats", 1)
    assert ok.metadata["address"] == "parallel:queries[0]/search"
    assert ok.metadata["group_id"] == gid
    assert ok.metadata["parallel_index"] == 0
    assert ok.address == "parallel:queries[0]/search"

    assert not failed.ok
    assert (failed.index, failed.name, failed.attempts) == (1, "bad", 1)
    assert failed.error_type == "LookupError"
    assert failed.erro_message == "no hits"  # the seed's spelling
    assert failed.metadata["address"] == "parallel:queries[1]/search"
    assert failed.metadata["parallel_index"] == 1
    assert failed.metadata["group_id"] == gid
    assert p.group.failed == 1 and p.group.completed == 1


async def test_items_run_through_a_custom_executor() -> None:
    state = ExecutionState()
    seen: list[tuple[int, str, str, int]] = []

    class RecordingExecutor:
        async def run(self, item: WorkItem) -> Any:
            seen.append((item.index, item.name, item.group_id, item.attempt))
            return await item.factory()

    async def work(i: int) -> int:
        return i * 10

    async with state.parallel(executor=RecordingExecutor(), name="ex") as p:
        p.add(work(1), name="a")
        p.add(lambda: work(2), name="b")
        results = await p.gather()

    assert [r.result for r in results] == [10, 20]
    gid = p.group.group_id
    assert seen == [(0, "a", gid, 1), (1, "b", gid, 1)]


async def test_statistics_report_live_counts() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        snapshots: list[dict[str, int]] = []
        p = state.parallel(max_workers=2)

        async def work() -> None:
            await clock.sleep(1)
            snapshots.append(p.statistics())

        async with p:
            for _ in range(5):
                p.add(work)
            assert p.statistics() == {
                "in_flight": 0,
                "peak_in_flight": 0,
                "queued": 5,
                "delayed": 0,
            }

    assert snapshots[0]["in_flight"] == 2 and snapshots[0]["queued"] == 3
    assert p.statistics() == {"in_flight": 0, "peak_in_flight": 2, "queued": 0, "delayed": 0}


async def test_a_plain_execution_result_is_passed_through() -> None:
    state = ExecutionState()

    async def precomputed() -> ExecutionResult[int]:
        return ExecutionResult(result=7, execution_time=0.5)

    async with state.parallel() as p:
        p.add(precomputed(), name="pre")
        [result] = await p.gather()
    assert result.result == 7 and result.execution_time == 0.5
    assert (result.index, result.name, result.attempts) == (0, "pre", 1)


async def test_an_executor_cannot_run_a_coroutine_item_twice() -> None:
    state = ExecutionState()

    class Twice:
        async def run(self, item: WorkItem) -> Any:
            await item.factory()
            return await item.factory()

    async def work() -> int:
        return 1

    async with state.parallel(executor=Twice()) as p:
        p.add(work(), name="once")
        p.add(work, name="factory")
    once, factory = p.results
    assert once.error_type == "InvalidWorkError"
    assert "was already awaited; pass a factory" in (once.error_message or "")
    assert factory.ok


def test_group_tracker_progress() -> None:
    from rh_agents.core.parallel import ParallelGroupTracker

    tracker = ParallelGroupTracker(group_id="g-1", name="docs")
    assert not tracker.is_complete and tracker.completion_percentage == 0.0
    tracker.total, tracker.started, tracker.completed, tracker.failed = 4, 3, 1, 1
    assert tracker.in_flight == 1
    assert tracker.completion_percentage == 50.0 and not tracker.is_complete
    tracker.cancelled = 2
    assert tracker.is_complete and tracker.completion_percentage == 100.0
    empty = ParallelGroupTracker(group_id="g-2", status=GroupStatus.COMPLETED)
    assert empty.is_complete and empty.completion_percentage == 100.0


async def test_never_started_coroutine_objects_are_closed_on_every_exit_path() -> None:
    async def work(seconds: float, fail: bool = False) -> None:
        await asyncio.sleep(seconds)
        if fail:
            raise ValueError("first failure")

    with no_unawaited_coroutines():
        async with FakeClock() as clock:
            state = ExecutionState(clock=clock)
            with pytest.raises(ValueError):
                async with state.parallel(max_workers=1, error_strategy="fail_fast") as p:
                    p.add(work(0, fail=True))
                    p.add(work(0))
                    p.add(work(0))
            with pytest.raises(TimeoutError):
                async with state.parallel(max_workers=1, timeout=1) as p:
                    p.add(clock.sleep(5))
                    p.add(clock.sleep(5))
            with pytest.raises(KeyError):
                async with state.parallel() as p:
                    p.add(work(0))
                    raise KeyError("body")
            async with state.parallel(max_workers=1) as p:
                p.add(clock.sleep(5))
                p.add(clock.sleep(5))
                async for _ in p.stream():
                    break


# ------------------------------------------------------------ names and odd work


async def test_group_names_with_a_slash_run_and_stay_distinct_from_similar_ones() -> None:
    state = ExecutionState()
    async with state.parallel(name="a/b") as slashed:
        slashed.add(asyncio.sleep(0, result=1))
    async with state.parallel(name="a_b") as underscored:
        underscored.add(asyncio.sleep(0, result=2))

    assert [r.result for r in slashed.results + underscored.results] == [1, 2]
    assert slashed.group.status is underscored.group.status is GroupStatus.COMPLETED
    # '/' separates address segments, so it becomes '_'; the ordinal keeps them apart.
    assert (slashed.group.address, underscored.group.address) == ("parallel:a_b", "parallel:a_b#1")
    assert slashed.group.group_id != underscored.group.group_id
    # The events keep the real name, on the event and on its placeholder actor.
    ends = [e for e in state.history.get_event_list() if e.kind == EventKind.GROUP]
    assert [(e.actor_name, e.execution_status) for e in ends] == [
        ("parallel:a/b", ExecutionStatus.STARTED),
        ("parallel:a/b", ExecutionStatus.COMPLETED),
        ("parallel:a_b", ExecutionStatus.STARTED),
        ("parallel:a_b", ExecutionStatus.COMPLETED),
    ]
    assert ends[0].actor is not None and ends[0].actor.name == "parallel:a/b"


@pytest.mark.parametrize("name", ["docs/a.txt", "q#2", "row[3]", None])
async def test_retried_items_may_have_address_characters_in_their_names(
    name: str | None,
) -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        calls = 0

        async def flaky() -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("refused")
            return "ok"

        async with state.parallel(max_retries=2, retry_delay=0.1) as p:
            # Unnamed, the item's automatic name 'item_1#1' contains '#' too.
            p.add(lambda: asyncio.sleep(0), name="item_1")
            p.add(flaky, name=name)

    expected = name or "item_1#1"
    assert [(r.name, r.ok, r.attempts) for r in p.results] == [
        ("item_1", True, 1),
        (expected, True, 2),
    ]
    retries = [e for e in state.history.get_event_list() if e.is_retry]
    assert [(e.actor_name, e.metadata["item"]) for e in retries] == [(expected, expected)]
    assert retries[0].actor is not None and retries[0].actor.name == expected


async def test_a_running_task_or_future_is_rejected_at_add() -> None:
    state = ExecutionState()
    release = asyncio.Event()
    task = asyncio.create_task(release.wait())
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    try:
        async with state.parallel(max_workers=1) as p:
            with pytest.raises(InvalidWorkError, match=r"is an asyncio Task, which is already"):
                p.add(task)
            with pytest.raises(TypeError, match=r"Pass a factory that starts the work"):
                p.add(future, name="f")
            p.add(release.wait)  # what to do instead: a factory
            release.set()
        assert p.group.total == 1 and p.results[0].ok
        # The group never took the task over: it is still the caller's to await.
        assert not task.cancelled()
        await task
    finally:
        task.cancel()
        future.cancel()


async def test_the_same_coroutine_object_added_twice_is_rejected_at_add() -> None:
    state = ExecutionState()

    async def work() -> int:
        return 1

    with no_unawaited_coroutines():
        coro = work()
        async with state.parallel() as p:
            p.add(coro, name="first")
            with pytest.raises(InvalidWorkError, match=r"'second' is the same coroutine object"):
                p.add(coro, name="second")
            p.add(work(), name="third")
    assert [(r.name, r.ok) for r in p.results] == [("first", True), ("third", True)]


async def test_a_factory_that_needs_arguments_fails_at_once_and_is_not_retried() -> None:
    async def needs(x: int) -> int:
        return x

    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(max_retries=3, retry_delay=1) as p:
            p.add(needs, name="function")
            p.add(functools.partial(needs), name="partial")
    for result in p.results:
        assert (result.ok, result.error_type, result.attempts) == (False, "InvalidWorkError", 1)
        assert "cannot be called without arguments" in (result.error_message or "")
        assert "functools.partial(work, x)" in (result.error_message or "")
        assert isinstance(result.exception, InvalidWorkError)
        assert isinstance(result.exception.__cause__, TypeError)
    assert clock.sleeps == [] and p.group.retries == 0


async def test_a_type_error_raised_inside_a_factory_is_the_item_s_own_failure() -> None:
    calls = 0

    def factory() -> Awaitable[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TypeError("bad input")  # from inside the factory: retried as usual
        return asyncio.sleep(0, result=5)

    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(max_retries=1, retry_delay=1) as p:
            p.add(factory)
    assert (p.results[0].ok, p.results[0].result, p.results[0].attempts) == (True, 5, 2)


# ------------------------------------------------------------ returned results


async def test_one_execution_result_returned_by_two_items_keeps_each_item_apart() -> None:
    state = ExecutionState()
    memoized: ExecutionResult[str] = ExecutionResult(result="same")

    async def cached() -> ExecutionResult[str]:
        return memoized

    async with state.parallel() as p:
        p.add(cached, name="a")
        p.add(cached, name="b")
        results = await p.gather()
        by_name = await p.gather_dict()
    assert [(r.index, r.name, r.result) for r in results] == [(0, "a", "same"), (1, "b", "same")]
    assert {k: (v.index, v.name) for k, v in by_name.items()} == {"a": (0, "a"), "b": (1, "b")}
    assert results[0] is not results[1]


async def test_returning_a_nested_group_s_result_leaves_that_group_s_result_intact() -> None:
    state = ExecutionState()
    inner_groups: list[ParallelExecutionManager] = []

    async def outer_item() -> ExecutionResult[Any]:
        async with state.parallel(name="inner") as q:
            q.add(asyncio.sleep(0, result="x"), name="first")
            q.add(asyncio.sleep(0, result="y"), name="second")
        inner_groups.append(q)
        return q.results[1]

    async with state.parallel(name="outer") as p:
        p.add(outer_item, name="outer-item")
    (inner,) = inner_groups
    assert [(r.index, r.name) for r in inner.results] == [(0, "first"), (1, "second")]
    assert (p.results[0].index, p.results[0].name, p.results[0].result) == (
        0,
        "outer-item",
        "y",
    )
