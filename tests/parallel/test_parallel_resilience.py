"""Concurrency limits, retries and circuit breakers of parallel groups (fake clock)."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest

from rh_agents import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    Limiter,
    Tool,
)
from rh_agents.core.hooks import NoopInstrumentation
from rh_agents.testing.clock import FakeClock

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


class Recorder(NoopInstrumentation):
    """Instrumentation that records the wait of every item start."""

    enabled = True

    def __init__(self) -> None:
        self.waits: list[tuple[str | None, int, float]] = []

    def item_started(
        self, handle: Any, group: Any, index: int, wait: float, *, attempt: int = 1
    ) -> Any:
        self.waits.append((group.name, index, wait))
        return None


def retrying_events(events: list[Any]) -> list[Any]:
    return [e for e in events if e.execution_status is ExecutionStatus.RETRYING]


# ------------------------------------------------------------------- concurrency


async def test_never_more_than_max_workers_run_at_once() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        rng = random.Random(3)
        running = 0
        peak = 0

        async def work(seconds: float) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                await clock.sleep(seconds)
            finally:
                running -= 1

        async with state.parallel(max_workers=3) as p:
            for _ in range(20):
                p.add(work(rng.uniform(0.1, 2.0)))
    assert peak == 3
    assert p.statistics()["peak_in_flight"] == 3
    assert all(r.ok for r in p.results)


async def test_worker_wait_is_measured() -> None:
    recorder = Recorder()
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock, telemetry=SimpleNamespace(instrumentation=recorder))
        async with state.parallel(max_workers=1, name="serial") as p:
            for _ in range(3):
                p.add(lambda: clock.sleep(2))
    assert recorder.waits == [("serial", 0, 0.0), ("serial", 1, 2.0), ("serial", 2, 4.0)]


async def test_limiter_wait_is_part_of_the_measured_wait() -> None:
    recorder = Recorder()
    async with FakeClock() as clock:
        limiter = Limiter("api", 1, clock=clock)
        state = ExecutionState(clock=clock, telemetry=SimpleNamespace(instrumentation=recorder))
        async with state.parallel(max_workers=3, limiter=limiter, name="limited") as p:
            for _ in range(3):
                p.add(lambda: clock.sleep(1))
    assert sorted(w for _, _, w in recorder.waits) == [0.0, 1.0, 2.0]


async def test_a_shared_limiter_caps_sibling_and_nested_groups_together() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        limiter = Limiter("llm", 3, clock=clock)
        rng = random.Random(11)
        running = 0
        peak = 0

        async def call_llm() -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            assert limiter.in_use <= 3
            try:
                await clock.sleep(rng.uniform(0.5, 1.5))
            finally:
                running -= 1

        async def nested() -> int:
            # An item of "a" opens a group on the same limiter: its permit is lent to
            # the nested items while it waits for them, so this cannot deadlock.
            async with state.parallel(max_workers=4, limiter=limiter, name="nested") as q:
                for _ in range(4):
                    q.add(call_llm)
            return len(q.results)

        async def sibling(name: str, with_nested: bool) -> None:
            async with state.parallel(max_workers=5, limiter=limiter, name=name) as p:
                for _ in range(6):
                    p.add(call_llm)
                if with_nested:
                    p.add(nested, name="nested")
            assert all(r.ok for r in p.results), [r.error_message for r in p.results]

        await asyncio.gather(sibling("a", True), sibling("b", False))

    assert peak == 3
    stats = limiter.statistics()
    assert stats.peak_in_use == 3
    assert stats.in_use == 0 and stats.waiting == 0


async def test_nested_groups_sharing_a_saturated_limiter_do_not_deadlock() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        limiter = Limiter("db", 2, clock=clock)

        async def leaf() -> None:
            assert limiter.in_use <= 2
            await clock.sleep(1)

        async def middle() -> int:
            async with state.parallel(max_workers=2, limiter=limiter, name="inner") as q:
                for _ in range(3):
                    q.add(leaf)
            await clock.sleep(0.5)  # the item holds its permit again after the group
            assert limiter.in_use <= 2
            return len(q.results)

        async with asyncio.timeout(5):  # real seconds: a deadlock would hang here
            async with state.parallel(max_workers=3, limiter=limiter, name="outer") as p:
                for _ in range(3):
                    p.add(middle)
    assert [r.result for r in p.results] == [3, 3, 3]
    assert limiter.statistics().in_use == 0


# ------------------------------------------------------------------------- retries


async def test_retries_back_off_exponentially_with_seeded_jitter() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        events: list[Any] = []
        state.event_bus.subscribe(events.append)
        attempts = 0

        async def flaky() -> str:
            nonlocal attempts
            attempts += 1
            if attempts < 4:
                raise ConnectionError("connection reset")
            return "done"

        async with state.parallel(
            max_workers=1, max_retries=3, retry_delay=0.5, rng=random.Random(7), name="net"
        ) as p:
            p.add(flaky, name="fetch")

    reference = random.Random(7)
    expected = [0.5 * 2**k * reference.uniform(0.5, 1.0) for k in range(3)]
    assert clock.sleeps == pytest.approx(expected)
    [result] = p.results
    assert result.ok and result.result == "done" and result.attempts == 4
    assert p.group.retries == 3

    retries = retrying_events(events)
    assert [e.retry_attempt for e in retries] == [1, 2, 3]
    assert [e.retry_delay for e in retries] == pytest.approx(expected)
    for e in retries:
        assert e.is_retry and e.is_parallel and e.parallel_index == 0
        assert e.group_id == p.group.group_id
        assert e.original_error == "connection reset"
        assert e.error_type == "ConnectionError"
        assert e.actor.name == "fetch"
        assert e.address == "parallel:net[0]"
        assert "retrying in" in (e.message or "")


async def test_retries_exhausted_give_a_failed_result() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)

        async def down() -> None:
            raise ConnectionError("down")

        async with state.parallel(max_retries=2, retry_delay=1.0) as p:
            p.add(down)
    [result] = p.results
    assert not result.ok and result.attempts == 3 and result.error_type == "ConnectionError"
    assert p.group.retries == 2 and p.group.failed == 1


@pytest.mark.parametrize("queued_behind", [False, True])
async def test_fail_fast_records_an_item_in_backoff_as_waiting_to_retry(
    queued_behind: bool,
) -> None:
    # Without other work the retry waits out its backoff in a worker; with a slow item
    # queued behind it, it waits in the delayed queue. Either way it is not running.
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)

        async def flaky() -> None:
            raise ConnectionError("try again")

        async def fatal() -> None:
            await clock.sleep(1)
            raise ValueError("not worth retrying")

        p = state.parallel(
            max_workers=2,
            error_strategy="fail_fast",
            max_retries=1,
            retry_delay=10,
            non_retryable=(ValueError,),
        )
        with pytest.raises(ValueError):
            async with p:
                p.add(flaky, name="flaky")
                p.add(fatal, name="fatal")
                if queued_behind:
                    p.add(lambda: clock.sleep(5), name="slow")
        assert clock.monotonic() == 1
    waiting = p.results[0]
    assert (waiting.ok, waiting.status, waiting.error_type, waiting.attempts) == (
        False,
        ExecutionStatus.CANCELLED,
        "CancelledError",
        1,
    )
    assert waiting.error_message == (
        "Item 0 ('flaky') was cancelled while waiting to retry (after 1 failed attempt)."
    )
    if queued_behind:
        assert p.results[2].error_message == "Item 2 ('slow') was cancelled while running."


async def test_the_worker_is_released_during_the_backoff() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        log: list[tuple[str, float]] = []
        first = True
        delayed_seen: list[int] = []

        async def flaky() -> str:
            nonlocal first
            log.append(("flaky", clock.monotonic()))
            if first:
                first = False
                raise ConnectionError("try again")
            return "ok"

        async def other() -> str:
            log.append(("other", clock.monotonic()))
            delayed_seen.append(p.statistics()["delayed"])
            await clock.sleep(1)
            return "other"

        p = state.parallel(max_workers=1, max_retries=1, retry_delay=10, rng=random.Random(1))
        async with p:
            p.add(flaky)
            p.add(other)
    delay = 10 * random.Random(1).uniform(0.5, 1.0)
    assert log == [("flaky", 0.0), ("other", 0.0), ("flaky", pytest.approx(delay))]
    assert delayed_seen == [1]
    assert [r.ok for r in p.results] == [True, True]


async def test_a_due_retry_goes_before_items_that_have_not_started() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        order: list[str] = []
        failed_once = False

        async def flaky() -> None:
            nonlocal failed_once
            order.append("flaky")
            if not failed_once:
                failed_once = True
                raise ConnectionError("blip")

        async def step(name: str) -> None:
            order.append(name)
            await clock.sleep(1)

        async with state.parallel(max_workers=1, max_retries=1, retry_delay=0.2) as p:
            p.add(flaky)
            for name in "abcd":
                p.add(lambda name=name: step(name))
    assert order == ["flaky", "a", "flaky", "b", "c", "d"]


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"429, retry after {retry_after}s")
        self.retry_after = retry_after


async def test_retry_after_on_the_exception_is_honoured() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        calls = 0

        async def limited() -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RateLimited(30.0)
            return "ok"

        async with state.parallel(max_retries=2, retry_delay=0.1) as p:
            p.add(limited)
        assert clock.sleeps == [30.0]
        assert clock.monotonic() == 30.0
    assert p.results[0].ok and p.results[0].attempts == 2


async def test_retry_on_predicate_and_types_and_non_retryable() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)

        def failing(exc: Exception) -> Any:
            async def work() -> None:
                raise exc

            return work

        async with state.parallel(
            max_retries=2, retry_delay=0.1, retry_on=lambda e: "transient" in str(e)
        ) as p:
            p.add(failing(ValueError("transient glitch")), name="transient")
            p.add(failing(ValueError("permanent")), name="permanent")
        assert [r.attempts for r in p.results] == [3, 1]

        async with state.parallel(max_retries=2, retry_delay=0.1, retry_on=(ConnectionError,)) as p:
            p.add(failing(ConnectionError("x")), name="conn")
            p.add(failing(ValueError("x")), name="value")
        assert [r.attempts for r in p.results] == [3, 1]

        async with state.parallel(
            max_retries=2,
            retry_delay=0.1,
            retry_on=ConnectionError,
            non_retryable=(ConnectionRefusedError,),
        ) as p:
            p.add(failing(ConnectionResetError("x")), name="reset")
            p.add(failing(ConnectionRefusedError("x")), name="refused")
        assert [r.attempts for r in p.results] == [3, 1]


async def test_an_event_returning_ok_false_is_retried() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        events: list[Any] = []
        state.event_bus.subscribe(events.append)
        calls = 0

        async def search(data: Any, extra: Any, st: Any) -> str:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise TimeoutError("slow backend")
            return f"results for {data}"

        tool = Tool(name="search", handler=search)
        async with state.parallel(max_retries=3, retry_delay=1, name="q") as p:
            p.add(lambda: ExecutionEvent(actor=tool)("cats", {}, state), name="cats")

    [result] = p.results
    assert result.ok and result.result == "results for cats" and result.attempts == 3
    assert result.metadata["address"] == "parallel:q[0]/search"
    retries = retrying_events(events)
    assert [e.retry_attempt for e in retries] == [1, 2]
    assert all(e.address == "parallel:q[0]/search" for e in retries)
    assert all(e.actor.name == "search" and e.original_error == "slow backend" for e in retries)
    statuses = [
        e.execution_status.value
        for e in state.history.get_event_list()
        if e.address == "parallel:q[0]/search"
    ]
    assert statuses == [
        "started",
        "failed",
        "retrying",
        "started",
        "failed",
        "retrying",
        "started",
        "completed",
    ]


async def test_non_retryable_applies_to_the_handler_exception_of_an_event() -> None:
    state = ExecutionState()

    async def handler(data: Any, extra: Any, st: Any) -> None:
        raise KeyError("no such document")

    tool = Tool(name="load", handler=handler)
    async with state.parallel(max_retries=3, retry_delay=0, non_retryable=(KeyError,)) as p:
        p.add(lambda: ExecutionEvent(actor=tool)(1, {}, state))
    assert p.results[0].attempts == 1 and p.results[0].error_type == "KeyError"


# ----------------------------------------------------------------- circuit breaker


async def test_circuit_breaker_full_cycle_shared_by_name() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        calls: list[str] = []
        healthy = False

        def call(label: str, seconds: float = 0.0) -> Any:
            async def work() -> str:
                calls.append(label)
                await clock.sleep(seconds)
                if not healthy:
                    raise ConnectionError("search-api unavailable")
                return label

            return work

        def group(name: str, workers: int = 1) -> Any:
            return state.parallel(
                max_workers=workers,
                name=name,
                circuit_breaker="search-api",
                circuit_breaker_threshold=3,
                circuit_breaker_timeout=30,
            )

        # CLOSED -> OPEN after 3 consecutive failures; the rest is rejected unrun.
        async with group("first") as p1:
            for i in range(5):
                p1.add(call(f"first-{i}"))
        breaker = state.circuit_breakers.get("search-api")
        assert p1.circuit_breaker is breaker
        assert "search-api" in state.circuit_breakers
        assert calls == ["first-0", "first-1", "first-2"]
        assert breaker.state is CircuitState.OPEN and breaker.trip_count == 1
        rejected = p1.results[3]
        assert rejected.error_type == "CircuitOpenError"
        assert "Circuit breaker" in (rejected.error_message or "")
        assert "search-api" in (rejected.error_message or "")
        assert isinstance(rejected.exception, CircuitOpenError)

        # Another group sharing the breaker by name fails fast without running.
        async with group("second") as p2:
            p2.add(call("second-0"))
        assert calls == ["first-0", "first-1", "first-2"]
        assert p2.circuit_breaker is breaker
        assert breaker.statistics().rejected_count == 3

        # After the cooldown: half-open, a single probe among concurrent items.
        await clock.sleep(30)
        assert breaker.state is CircuitState.HALF_OPEN
        healthy = True
        async with group("probe", workers=3) as p3:
            for i in range(3):
                p3.add(call(f"probe-{i}", seconds=1.0))
        assert calls[3:] == ["probe-0"]
        assert [r.ok for r in p3.results] == [True, False, False]
        assert all(r.error_type == "CircuitOpenError" for r in p3.results[1:])
        assert breaker.state is CircuitState.CLOSED

        # Failures open it again; a failed probe re-opens it (a new trip).
        healthy = False
        async with group("again") as p4:
            for i in range(3):
                p4.add(call(f"again-{i}"))
        assert breaker.state is CircuitState.OPEN and breaker.trip_count == 2
        await clock.sleep(30)
        async with group("bad-probe", workers=2) as p5:
            p5.add(call("bad-probe-0", seconds=1.0))
            p5.add(call("bad-probe-1", seconds=1.0))
        assert calls[-1] == "bad-probe-0"
        assert breaker.state is CircuitState.OPEN and breaker.trip_count == 3
        assert [r.error_type for r in p5.results] == ["ConnectionError", "CircuitOpenError"]


async def test_ok_false_events_trip_the_breaker() -> None:
    state = ExecutionState()
    calls = 0

    async def handler(data: Any, extra: Any, st: Any) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    tool = Tool(name="api", handler=handler)
    async with state.parallel(max_workers=1, circuit_breaker_threshold=2, name="calls") as p:
        for i in range(4):
            p.add(ExecutionEvent(actor=tool)(i, {}, state))
    assert calls == 2
    assert p.circuit_breaker is not None and p.circuit_breaker.name == "parallel:calls"
    assert p.circuit_breaker.state is CircuitState.OPEN
    assert [r.error_type for r in p.results] == [
        "ConnectionError",
        "ConnectionError",
        "CircuitOpenError",
        "CircuitOpenError",
    ]
    assert "'parallel:calls'" in (p.results[2].error_message or "")


async def test_a_breaker_instance_can_be_passed_and_retries_wait_for_its_cooldown() -> None:
    async with FakeClock() as clock:
        breaker = CircuitBreaker("vector-db", failure_threshold=1, recovery_timeout=20, clock=clock)
        state = ExecutionState(clock=clock)
        calls = 0

        async def flaky() -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("down")
            return "up"

        async with state.parallel(
            max_workers=1,
            circuit_breaker=breaker,
            max_retries=3,
            retry_delay=1,
            rng=random.Random(0),
        ) as p:
            p.add(flaky)
        # Attempt 1 fails and opens the breaker; attempt 2 is rejected and its
        # CircuitOpenError.retry_after makes the next retry wait for the cooldown.
        assert p.results[0].ok and p.results[0].attempts == 3
        assert calls == 2
        assert clock.monotonic() >= 20
    assert breaker.state is CircuitState.CLOSED


async def test_cancelled_probe_frees_the_half_open_slot() -> None:
    async with FakeClock() as clock:
        breaker = CircuitBreaker("svc", failure_threshold=1, recovery_timeout=5, clock=clock)
        breaker.record_failure(breaker.admit())
        await clock.sleep(5)
        state = ExecutionState(clock=clock)
        with pytest.raises(TimeoutError):
            async with state.parallel(circuit_breaker=breaker, timeout=1) as p:
                p.add(clock.sleep(10))
        assert breaker.state is CircuitState.HALF_OPEN
        breaker.record_success(breaker.admit())  # the slot is free again
        assert breaker.state is CircuitState.CLOSED


async def test_permits_are_lent_through_several_levels_and_concurrent_groups() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        limiter = Limiter("shared", 2, clock=clock)
        leaves = 0

        async def leaf() -> None:
            nonlocal leaves
            assert limiter.in_use <= 2
            await clock.sleep(1)
            leaves += 1

        async def group_of_leaves(name: str) -> None:
            async with state.parallel(max_workers=2, limiter=limiter, name=name) as q:
                for _ in range(2):
                    q.add(leaf)

        async def two_groups_at_once() -> None:
            # Both nested groups borrow the same enclosing permit.
            await asyncio.gather(group_of_leaves("left"), group_of_leaves("right"))

        async def deeper() -> None:
            async with state.parallel(max_workers=2, limiter=limiter, name="middle") as q:
                q.add(two_groups_at_once)
                q.add(lambda: group_of_leaves("solo"))

        async with asyncio.timeout(5):
            async with state.parallel(max_workers=2, limiter=limiter, name="top") as p:
                p.add(deeper)
                p.add(two_groups_at_once)
    assert all(r.ok for r in p.results)
    assert leaves == 10
    stats = limiter.statistics()
    assert stats.in_use == 0 and stats.peak_in_use == 2


async def test_a_cancelled_item_does_not_take_its_lent_permit_back() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        limiter = Limiter("shared", 1, clock=clock)
        inner_running = asyncio.Event()

        async def inner_leaf() -> None:
            inner_running.set()
            await clock.sleep(100)

        async def outer_item() -> None:
            async with state.parallel(limiter=limiter, name="inner") as q:
                q.add(inner_leaf)

        async def run() -> None:
            async with state.parallel(limiter=limiter, name="outer") as p:
                p.add(outer_item)

        task = asyncio.create_task(run())
        await inner_running.wait()
        assert limiter.in_use == 1  # the leaf holds the permit its parent lent
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert limiter.statistics().in_use == 0
