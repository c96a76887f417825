"""Property-based tests (hypothesis) of parallel groups, cancellation and the history.

* Random groups (size, max_workers, error strategy, timeout, retries, breaker threshold)
  of items with random outcomes and durations on the FakeClock: results in add order,
  counts that add up, the concurrency limit, bounded attempts, FAIL_FAST starting
  nothing after the first failure, telemetry equal to the history, nothing left running
  or open, and a history that survives every backend unchanged.
* External cancellation at a random point of a run with nested groups sharing a
  limiter: no task, span or permit leaks, every start has an end, and a following group
  gets the limiter's full concurrency.
* Any history survives snapshot -> backend -> restore, and journal -> restore, unchanged.

Example counts are modest (the suite must stay fast). Each test counts what its examples
exercised (also reported with ``hypothesis.event``, see ``--hypothesis-show-statistics``)
and fails when too few examples were of the kind it is about, so no property can pass
vacuously.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.errors import StateNotFoundError
from rh_agents.core.events import EventKind, ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.history import HistorySet
from rh_agents.core.limiter import Limiter
from rh_agents.core.parallel import ErrorStrategy, ParallelExecutionManager, ParallelTimeoutError
from rh_agents.core.parallel.results import Results
from rh_agents.core.types import EventType, ExecutionStatus
from rh_agents.state_backends import (
    FileSystemStateBackend,
    InMemoryStateBackend,
    SQLiteStateBackend,
)
from rh_agents.testing import FakeClock, capture_telemetry

PROPERTY_SETTINGS = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
S = ExecutionStatus


class ItemInput(BaseModel):
    index: int


# ----------------------------------------------------------------------- helpers


def terminal_pairs(records: list[dict[str, Any]]) -> list[str]:
    """Invocations or groups whose STARTED has no terminal status (should be empty)."""
    open_: dict[tuple[str, str], int] = Counter()
    for record in records:
        if record["kind"] not in (EventKind.EVENT, EventKind.GROUP):
            continue
        key = (record["kind"], record["address"])
        if record["status"] == "started":
            open_[key] += 1
        elif record["status"] in ("completed", "failed", "cancelled"):
            open_[key] -= 1
    return [f"{kind} {address}" for (kind, address), n in open_.items() if n != 0]


def records_text(records: list[dict[str, Any]]) -> str:
    return json.dumps(records, sort_keys=True)


def assert_round_trips(state: ExecutionState, files: bool = False) -> None:
    """The state's history survives a snapshot through the backends (the file system one
    too with ``files``: it fsyncs, so it is slow), and its journal."""
    expected = records_text(state.history.to_records())
    snapshot = state.to_snapshot()
    with tempfile.TemporaryDirectory() as directory:
        backends: list[Any] = [InMemoryStateBackend(), SQLiteStateBackend(":memory:")]
        if files:
            backends.append(FileSystemStateBackend(Path(directory)))
        for backend in backends:
            backend.save_state(snapshot)
            loaded = backend.load_state(snapshot.state_id)
            assert loaded is not None
            restored = ExecutionState.from_snapshot(loaded)
            assert records_text(restored.history.to_records()) == expected, backend
            backend.close()
    journal = state.state_backend
    if journal is not None:
        restored = ExecutionState.load_from_state_id(state.state_id, journal)
        assert records_text(restored.history.to_records()) == expected


def no_other_tasks() -> None:
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert not others, f"tasks left running: {others}"


@contextmanager
def observe_final_failures(log: list[tuple[str, int]]) -> Iterator[None]:
    """Log each moment a group records an item's final failure."""
    original = Results.fail

    def spy(self: Results, item: Any, *args: Any, **kwargs: Any) -> bool:
        log.append(("failure-observed", item.index))
        return original(self, item, *args, **kwargs)

    with patch.object(Results, "fail", spy):
        yield


# ------------------------------------------------------------------ random groups

GROUP_KINDS = (
    "timed out",
    "fail-fast stopped",
    "retried",
    "breaker rejected",
    "failures reported",
    "all completed",
)


@dataclass
class Plan:
    size: int
    max_workers: int
    strategy: ErrorStrategy
    timeout: float | None
    max_retries: int
    breaker: int | None
    attempts: list[list[tuple[int, bool]]]  # per item, per attempt: (seconds, ok)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    size = draw(st.integers(0, 9))
    max_retries = draw(st.integers(0, 2))
    attempt = st.tuples(st.integers(0, 5), st.booleans())
    return Plan(
        size=size,
        max_workers=draw(st.integers(1, 4)),
        strategy=draw(st.sampled_from(list(ErrorStrategy))),
        timeout=draw(st.none() | st.integers(1, 25).map(float)),
        max_retries=max_retries,
        breaker=draw(st.none() | st.integers(1, 3)),
        attempts=draw(
            st.lists(
                st.lists(attempt, min_size=max_retries + 1, max_size=max_retries + 1),
                min_size=size,
                max_size=size,
            )
        ),
    )


@dataclass
class Observed:
    log: list[tuple[str, int]] = field(default_factory=list)
    attempts: Counter[int] = field(default_factory=Counter)
    running: int = 0
    peak: int = 0


async def run_plan(plan: Plan, seen: Observed) -> set[str]:
    with capture_telemetry() as cap:
        async with FakeClock() as clock:
            state = ExecutionState(clock=clock, state_backend=InMemoryStateBackend())

            async def work(data: ItemInput, extra: Any, st_: ExecutionState) -> int:
                index = data.index
                attempt = seen.attempts[index]
                seen.attempts[index] += 1
                seen.log.append(("start", index))
                seen.running += 1
                seen.peak = max(seen.peak, seen.running)
                try:
                    seconds, ok = plan.attempts[index][min(attempt, plan.max_retries)]
                    await clock.sleep(seconds)
                    if not ok:
                        raise ConnectionError(f"item {index} attempt {attempt + 1} failed")
                    return index * 10
                finally:
                    seen.running -= 1

            tool = Tool(name="work", input_model=ItemInput, handler=work)
            manager = state.parallel(
                max_workers=plan.max_workers,
                error_strategy=plan.strategy,
                timeout=plan.timeout,
                name="g",
                max_retries=plan.max_retries,
                retry_delay=1.0,
                circuit_breaker_threshold=plan.breaker,
                circuit_breaker_timeout=3.0,
            )
            error: BaseException | None = None
            with observe_final_failures(seen.log):
                try:
                    async with manager as group:
                        for index in range(plan.size):
                            group.add(
                                lambda index=index: ExecutionEvent(actor=tool)(
                                    ItemInput(index=index), {}, state
                                )
                            )
                        await group.gather()
                except Exception as exc:
                    error = exc
        no_other_tasks()
        cap.assert_no_open_spans()
        check_plan(plan, seen, manager, error, state, cap)
    assert_round_trips(state)
    return what_happened(manager, error)


def what_happened(group: ParallelExecutionManager, error: BaseException | None) -> set[str]:
    """The kinds of run an example exercised (so a property cannot pass vacuously)."""
    g = group.group
    kinds = set()
    if g.total == 0:
        kinds.add("empty")
    if g.timed_out:
        kinds.add("timed out")
    if group.error_strategy is ErrorStrategy.FAIL_FAST and g.failed and not g.timed_out:
        kinds.add("fail-fast stopped")
    if g.retries:
        kinds.add("retried")
    if any(r.error_type == "CircuitOpenError" for r in group.results):
        kinds.add("breaker rejected")
    if g.failed and error is None:
        kinds.add("failures reported")
    if g.total and g.completed == g.total:
        kinds.add("all completed")
    return kinds


def check_plan(
    plan: Plan,
    seen: Observed,
    group: ParallelExecutionManager,
    error: BaseException | None,
    state: ExecutionState,
    cap: Any,
) -> None:
    results, g = group.results, group.group
    # results in add order, one per item
    assert [r.index for r in results] == list(range(plan.size))
    assert [r.name for r in results] == [f"item_{i}" for i in range(plan.size)]
    # the counts add up, and agree with the results
    assert g.total == plan.size
    assert g.completed + g.failed + g.cancelled == g.total
    assert sum(r.ok for r in results) == g.completed
    assert sum(r.status is S.CANCELLED for r in results) == g.cancelled
    # never more than max_workers running
    assert seen.peak <= plan.max_workers
    assert group.statistics()["peak_in_flight"] <= plan.max_workers
    # bounded attempts
    for index in range(plan.size):
        assert seen.attempts[index] <= plan.max_retries + 1
        assert results[index].attempts <= plan.max_retries + 1
    # how the group ended
    if plan.strategy is ErrorStrategy.FAIL_FAST and g.failed:
        assert error is not None
        first = next(n for n, entry in enumerate(seen.log) if entry[0] == "failure-observed")
        started_after = [entry for entry in seen.log[first:] if entry[0] == "start"]
        assert not started_after, f"FAIL_FAST started {started_after} after a failure"
    if g.timed_out:
        assert isinstance(error, ParallelTimeoutError) or (
            plan.strategy is ErrorStrategy.FAIL_FAST and error is not None
        )
    if plan.strategy is ErrorStrategy.FAIL_SLOW and not g.timed_out:
        assert error is None and g.cancelled == 0
    # the history: every start has an end; telemetry equals it
    records = state.history.to_records()
    assert not terminal_pairs(records)
    events = [r for r in records if r["kind"] == EventKind.EVENT and r["actor"] == "work"]
    statuses = Counter(r["status"] for r in events)
    assert statuses["started"] == sum(seen.attempts.values())
    for outcome in ("completed", "failed", "cancelled"):
        assert cap.metric_value("rh_agents_events_total", outcome=outcome) == statuses[outcome]
    assert len(cap.find("execute_tool work")) == statuses["started"]
    # retries of items rejected by the breaker are recorded under the item, not the actor
    retrying = sum(r["status"] == "retrying" for r in records if r["kind"] == EventKind.EVENT)
    assert retrying == cap.metric_value("rh_agents_retries_total") == g.retries
    group_spans = cap.find("parallel g")
    assert len(group_spans) == 1
    assert cap.metric_value("rh_agents_parallel_groups_total", status=g.status.value) == 1
    group_records = [r for r in records if r["kind"] == EventKind.GROUP]
    assert [r["status"] for r in group_records] == ["started", g.status.value]


TIMES_OUT = Plan(
    size=3,
    max_workers=1,
    strategy=ErrorStrategy.FAIL_SLOW,
    timeout=2.0,
    max_retries=0,
    breaker=None,
    attempts=[[(5, True)]] * 3,
)
TRIPS_THE_BREAKER = Plan(
    size=4,
    max_workers=1,
    strategy=ErrorStrategy.FAIL_SLOW,
    timeout=None,
    max_retries=0,
    breaker=1,
    attempts=[[(1, False)]] * 4,
)

# Two more breaker trips (two workers; retries counted against the breaker): the check
# below wants three examples of each kind, and random plans trip a breaker rarely.
TRIPS_THE_BREAKER_TWO_WORKERS = Plan(
    size=5,
    max_workers=2,
    strategy=ErrorStrategy.FAIL_SLOW,
    timeout=None,
    max_retries=0,
    breaker=1,
    attempts=[[(1, False)]] * 5,
)
TRIPS_THE_BREAKER_RETRYING = Plan(
    size=4,
    max_workers=1,
    strategy=ErrorStrategy.FAIL_SLOW,
    timeout=None,
    max_retries=1,
    breaker=2,
    attempts=[[(1, False), (1, False)]] * 4,
)


ALL_COMPLETE = Plan(
    size=5,
    max_workers=2,
    strategy=ErrorStrategy.FAIL_SLOW,
    timeout=None,
    max_retries=1,
    breaker=None,
    attempts=[[(1, True), (1, True)]] * 5,
)


def test_random_groups_keep_every_invariant() -> None:
    kinds = Counter[str]()

    @PROPERTY_SETTINGS
    @example(TIMES_OUT)
    @example(ALL_COMPLETE)
    @example(TRIPS_THE_BREAKER)
    @example(TRIPS_THE_BREAKER_TWO_WORKERS)
    @example(TRIPS_THE_BREAKER_RETRYING)
    @given(plans())
    def property_holds(plan: Plan) -> None:
        kinds["examples"] += 1
        for kind in sorted(asyncio.run(run_plan(plan, Observed()))):
            kinds[kind] += 1
            event(kind)

    property_holds()
    print(f"group examples: {dict(kinds)}")
    # The invariants were checked on every kind of run, not only on easy ones (how many
    # random examples time out or complete entirely varies a lot, hence the explicit
    # examples).
    assert kinds["examples"] >= 40, kinds
    for kind in GROUP_KINDS:
        least = 1 if kind in ("timed out", "all completed") else 3
        assert kinds[kind] >= least, f"only {kinds[kind]} examples {kind!r}: {dict(kinds)}"


# ------------------------------------------------------- cancellation at any point


@dataclass
class Nested:
    sections: int
    items: int
    outer_workers: int
    inner_workers: int
    permits: int
    retries: int
    durations: list[int]
    flaky: list[bool]
    cancel_after: int  # cancel when this many events were published
    cancel_twice: bool


@st.composite
def nested_runs(draw: st.DrawFn) -> Nested:
    sections = draw(st.integers(1, 3))
    items = draw(st.integers(1, 4))
    count = sections * items
    return Nested(
        sections=sections,
        items=items,
        outer_workers=draw(st.integers(1, 3)),
        inner_workers=draw(st.integers(1, 3)),
        permits=draw(st.integers(1, 3)),
        retries=draw(st.integers(0, 1)),
        durations=draw(st.lists(st.integers(0, 3), min_size=count, max_size=count)),
        flaky=draw(st.lists(st.booleans(), min_size=count, max_size=count)),
        cancel_after=draw(st.integers(1, 60)),
        cancel_twice=draw(st.booleans()),
    )


async def run_and_cancel(plan: Nested) -> str:
    with capture_telemetry() as cap:
        async with FakeClock() as clock:
            state = ExecutionState(clock=clock, state_backend=InMemoryStateBackend())
            limiter = Limiter("shared", plan.permits, clock=clock)
            failed_once: set[int] = set()

            async def work(data: ItemInput, extra: Any, st_: ExecutionState) -> int:
                await clock.sleep(plan.durations[data.index])
                if plan.flaky[data.index] and data.index not in failed_once:
                    failed_once.add(data.index)
                    raise ConnectionError("flaky")
                return data.index

            tool = Tool(name="work", input_model=ItemInput, handler=work)

            async def section(number: int, extra: Any, st_: ExecutionState) -> list[int]:
                async with state.parallel(
                    max_workers=plan.inner_workers,
                    name="inner",
                    limiter=limiter,
                    max_retries=plan.retries,
                    retry_delay=1.0,
                ) as group:
                    for item in range(plan.items):
                        payload = ItemInput(index=number * plan.items + item)
                        group.add(lambda p=payload: ExecutionEvent(actor=tool)(p, {}, state))
                    return [r.result for r in await group.gather()]

            section_agent = Agent(name="section", handler=section)

            async def pipeline() -> None:
                async with state.parallel(
                    max_workers=plan.outer_workers, name="outer", limiter=limiter
                ) as group:
                    for number in range(plan.sections):
                        group.add(
                            lambda n=number: ExecutionEvent(actor=section_agent)(n, {}, state)
                        )
                    await group.gather()

            main = asyncio.create_task(pipeline())
            published = 0

            def canceller(event: Any) -> None:
                nonlocal published
                published += 1
                if published == plan.cancel_after or (
                    plan.cancel_twice and published == plan.cancel_after + 1
                ):
                    main.cancel()

            state.event_bus.subscribe(canceller)
            cancelled = False
            try:
                await main
            except asyncio.CancelledError:
                cancelled = True
            if published < plan.cancel_after:
                assert not cancelled

            # nothing holds a permit; a following group gets the full concurrency
            assert limiter.in_use == 0 and limiter.waiting == 0
            running = peak = 0

            async def probe() -> None:
                nonlocal running, peak
                running += 1
                peak = max(peak, running)
                await clock.sleep(1)
                running -= 1

            began = clock.monotonic()
            async with state.parallel(max_workers=10, limiter=limiter, name="after") as after:
                for _ in range(plan.permits * 2):
                    after.add(probe)
            assert peak == plan.permits
            assert math.isclose(clock.monotonic() - began, 2)  # retry jitter: not whole
        no_other_tasks()
        cap.assert_no_open_spans()
    records = state.history.to_records()
    assert not terminal_pairs(records), terminal_pairs(records)
    latest: dict[str, str] = {}
    for record in records:
        if record["kind"] == EventKind.GROUP:
            latest[record["address"]] = record["status"]
    mid_run = cancelled and latest.get("parallel:outer") == "cancelled"
    if cancelled:
        # a group that was running when the cancellation came says so
        assert all(status in ("completed", "failed", "cancelled") for status in latest.values())
    else:
        assert latest["parallel:outer"] == "completed"
        assert all(status in ("completed", "failed") for status in latest.values())
    assert_round_trips(state)
    return "cancelled mid-run" if mid_run else "cancelled" if cancelled else "ran to the end"


def test_cancellation_at_any_point_leaks_nothing() -> None:
    outcomes = Counter[str]()

    @PROPERTY_SETTINGS
    @given(nested_runs())
    def property_holds(plan: Nested) -> None:
        outcome = asyncio.run(run_and_cancel(plan))
        outcomes[outcome] += 1
        event(outcome)

    property_holds()
    total = sum(outcomes.values())
    print(f"cancellation examples: {dict(outcomes)}")
    # Most examples must really cancel a run in the middle of its groups: a property
    # whose cancellations all came too late would check nothing about cancellation.
    assert total >= 40, outcomes
    assert outcomes["cancelled mid-run"] >= total // 4, outcomes
    assert outcomes["ran to the end"] >= 1, outcomes


# ------------------------------------------------------------- history round trip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
names = st.text(
    st.characters(blacklist_characters="/#[]", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
)


@st.composite
def recorded_events(draw: st.DrawFn) -> ExecutionEvent[Any]:
    segments = draw(st.lists(names, min_size=1, max_size=3))
    return ExecutionEvent(
        kind=draw(st.sampled_from([EventKind.EVENT, EventKind.GROUP, EventKind.DIVERGENCE])),
        address="/".join(segments),
        actor_name=segments[-1],
        event_type=draw(st.none() | st.sampled_from(list(EventType))),
        execution_status=draw(st.sampled_from(list(ExecutionStatus))),
        tag=draw(st.text(max_size=6)),
        timestamp=draw(st.floats(0, 2e9)),
        execution_time=draw(st.none() | st.floats(0, 1e6)),
        message=draw(st.none() | st.text(max_size=30)),
        error_type=draw(st.none() | names),
        result=draw(json_values),
        from_cache=draw(st.booleans()),
        is_replayed=draw(st.booleans()),
        group_id=draw(st.none() | names),
        parallel_index=draw(st.none() | st.integers(0, 10_000)),
        is_parallel=draw(st.booleans()),
        retry_attempt=draw(st.integers(0, 5)),
        retry_delay=draw(st.none() | st.floats(0, 100)),
        metadata=draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)),
        input_hash=draw(st.none() | st.text("0123456789abcdef", min_size=24, max_size=24)),
    )


def test_any_history_survives_snapshot_backend_and_restore() -> None:
    shapes = Counter[str]()

    @PROPERTY_SETTINGS
    @given(
        st.lists(recorded_events(), max_size=12), st.dictionaries(names, json_values, max_size=3)
    )
    def property_holds(events: list[ExecutionEvent[Any]], storage: dict[str, Any]) -> None:
        shapes["examples"] += 1
        shapes.update({e.kind for e in events})
        shapes["with results"] += any(e.result is not None for e in events)
        shapes["with storage"] += bool(storage)
        round_trip(events, storage, files=shapes["examples"] % 10 == 1)

    property_holds()
    print(f"history examples: {dict(shapes)}")
    # Non-trivial histories were round-tripped: every kind of entry, results, storage.
    assert shapes["examples"] >= 40, shapes
    kinds = (EventKind.EVENT, EventKind.GROUP, EventKind.DIVERGENCE)
    for shape in (*kinds, "with results", "with storage"):
        assert shapes[shape] >= shapes["examples"] // 8, (shape, dict(shapes))


def round_trip(events: list[ExecutionEvent[Any]], storage: dict[str, Any], files: bool) -> None:
    history = HistorySet(events)
    state = ExecutionState(history=history, storage=storage)
    assert_round_trips(state, files=files)
    # through a journal too: a state entering a backend writes its restored history
    backend = SQLiteStateBackend(":memory:")
    journaled = ExecutionState(state_id=state.state_id, history=history, state_backend=backend)
    if not events:  # nothing recorded: a run is stored from its first record on
        with pytest.raises(StateNotFoundError):
            ExecutionState.load_from_state_id(state.state_id, backend)
        backend.close()
        return
    assert_round_trips(journaled)
    restored = ExecutionState.load_from_state_id(state.state_id, backend)
    assert records_text(restored.history.to_records()) == records_text(history.to_records())
    # what replay uses is the same after the round trip
    assert restored.history.completed_addresses() == history.completed_addresses()
    memory = InMemoryStateBackend()
    memory.save_state(state.to_snapshot())
    loaded = memory.load_state(state.state_id)
    assert loaded is not None
    assert records_text([ExecutionState.from_snapshot(loaded).storage]) == records_text([storage])
    backend.close()
