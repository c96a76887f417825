"""Addresses, group ids, nesting and lifecycle events of parallel groups."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from rh_agents import (
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    GroupStatus,
    Tool,
)
from rh_agents.core.events import EventKind
from rh_agents.core.parallel import ParallelEventGroup
from rh_agents.testing.clock import FakeClock

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def invocations(state: ExecutionState) -> list[ExecutionEvent[Any]]:
    return [e for e in state.history.get_event_list() if e.kind == EventKind.EVENT]


def group_events(state: ExecutionState) -> list[ExecutionEvent[Any]]:
    return [e for e in state.history.get_event_list() if e.kind == EventKind.GROUP]


async def test_seed_state_integration() -> None:
    state = ExecutionState()

    async def dummy_actor(input_data: Any, context: Any, state: Any) -> str:
        return f"Processed {input_data}"

    actor = Tool(name="dummy", handler=dummy_actor)
    event1 = ExecutionEvent(actor=actor)
    event2 = ExecutionEvent(actor=actor)
    async with state.parallel(max_workers=2) as p:
        p.add(event1("one", {}, state))
        p.add(event2("two", {}, state))
        results = await p.gather()

    assert [r.result for r in results] == ["Processed one", "Processed two"]
    assert len(state.history.get_event_list()) >= 2
    # The event objects reflect what happened to them.
    assert event1.is_parallel and event1.parallel_index == 0
    assert event2.address == "parallel:group[1]/dummy"
    assert event2.execution_status is ExecutionStatus.COMPLETED


async def test_child_events_carry_group_metadata_and_indexed_addresses() -> None:
    state = ExecutionState()

    async def summarize(doc: Any, extra: Any, st: Any) -> str:
        return f"summary of {doc}"

    tool = Tool(name="summarize", handler=summarize)
    async with state.parallel(name="docs") as p:
        for doc in ("a", "b", "c"):
            p.add(ExecutionEvent(actor=tool)(doc, {}, state), name=doc)

    gid = p.group.group_id
    assert gid.startswith("g-")
    assert p.group.address == "parallel:docs"
    events = invocations(state)
    assert len(events) == 6  # started + completed per item
    for e in events:
        assert e.is_parallel and e.group_id == gid
        assert e.address == f"parallel:docs[{e.parallel_index}]/summarize"
    assert sorted({e.address for e in events}) == [
        "parallel:docs[0]/summarize",
        "parallel:docs[1]/summarize",
        "parallel:docs[2]/summarize",
    ]


async def test_calls_inside_one_item_get_their_own_ordinals() -> None:
    state = ExecutionState()

    async def step(data: Any, extra: Any, st: Any) -> Any:
        return data

    tool = Tool(name="step", handler=step)

    async def two_steps(i: int) -> int:
        await ExecutionEvent(actor=tool)(i, {}, state)
        await ExecutionEvent(actor=tool)(i, {}, state)
        return i

    async with state.parallel(name="pipeline") as p:
        p.add(two_steps(0))
        p.add(two_steps(1))
    addresses = sorted({e.address for e in invocations(state)})
    assert addresses == [
        "parallel:pipeline[0]/step",
        "parallel:pipeline[0]/step#1",
        "parallel:pipeline[1]/step",
        "parallel:pipeline[1]/step#1",
    ]


async def run_program(seed: int) -> tuple[list[tuple[str, str | None, int | None]], list[int]]:
    """The same program, with random item durations: returns its addresses and the
    order in which its items completed."""
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        rng = random.Random(seed)
        completed: list[int] = []

        async def fetch(i: Any, extra: Any, st: Any) -> int:
            await clock.sleep(rng.uniform(0.1, 5.0))
            completed.append(i)
            return int(i)

        tool = Tool(name="fetch", handler=fetch)
        async with state.parallel(max_workers=4, name="crawl") as p:
            for i in range(12):
                p.add(ExecutionEvent(actor=tool)(i, {}, state))
        async with state.parallel(max_workers=4, name="crawl") as p2:
            p2.add(ExecutionEvent(actor=tool)(99, {}, state))
    seen = sorted({(e.address, e.group_id, e.parallel_index) for e in invocations(state)})
    return seen, completed


async def test_addresses_and_group_ids_do_not_depend_on_completion_order() -> None:
    first, order1 = await run_program(seed=1)
    second, order2 = await run_program(seed=2)
    assert order1 != order2  # the runs really finished in different orders
    assert first == second
    assert len(first) == 13
    addresses = {address for address, _, _ in first}
    assert "parallel:crawl#1[0]/fetch" in addresses  # a second group of the same name
    assert {f"parallel:crawl[{i}]/fetch" for i in range(12)} < addresses
    assert len({gid for _, gid, _ in first}) == 2


async def test_group_ids_are_deterministic_and_distinct_per_group() -> None:
    async def ids() -> list[str]:
        state = ExecutionState()
        found: list[str] = []
        for _ in range(2):
            async with state.parallel(name="same") as p:
                pass
            found.append(p.group.group_id)
        async with state.parallel() as p:
            pass
        found.append(p.group.group_id)
        state.push_context("agent")
        async with state.parallel(name="same") as p:
            pass
        found.append(p.group.group_id)
        return found

    run1 = await ids()
    run2 = await ids()
    assert run1 == run2
    assert len(set(run1)) == 4


async def test_nested_groups() -> None:
    state = ExecutionState()

    async def leaf(data: Any, extra: Any, st: Any) -> str:
        return f"leaf {data}"

    tool = Tool(name="leaf", handler=leaf)
    inner_groups: dict[int, Any] = {}

    async def outer_item(i: int) -> list[str]:
        async with state.parallel(max_workers=2, name="inner") as q:
            for j in range(2):
                q.add(ExecutionEvent(actor=tool)(f"{i}.{j}", {}, state))
        inner_groups[i] = q.group
        return [r.result for r in q.results]

    async with state.parallel(max_workers=3, name="outer") as p:
        for i in range(3):
            p.add(outer_item(i))

    assert [r.result for r in p.results] == [
        ["leaf 0.0", "leaf 0.1"],
        ["leaf 1.0", "leaf 1.1"],
        ["leaf 2.0", "leaf 2.1"],
    ]
    assert p.group.total == 3 and p.group.completed == 3
    ids = {g.group_id for g in inner_groups.values()}
    assert len(ids) == 3 and p.group.group_id not in ids
    for i, g in inner_groups.items():
        assert g.address == f"parallel:outer[{i}]/parallel:inner"
        assert (g.total, g.completed) == (2, 2)
    leaves = [e for e in invocations(state) if e.execution_status is ExecutionStatus.COMPLETED]
    assert sorted(e.address for e in leaves) == [
        f"parallel:outer[{i}]/parallel:inner[{j}]/leaf" for i in range(3) for j in range(2)
    ]
    for e in leaves:
        i = int(e.address.split("[")[1][0])
        assert e.group_id == inner_groups[i].group_id
    # Group lifecycle events of all four groups, each started before it completed.
    starts = [e.group_id for e in group_events(state) if e.execution_status.value == "started"]
    ends = [e.group_id for e in group_events(state) if e.execution_status.value == "completed"]
    assert len(starts) == len(set(starts)) == 4
    assert sorted(starts) == sorted(ends)
    assert starts[0] == p.group.group_id and ends[-1] == p.group.group_id


async def test_group_lifecycle_events_carry_counts() -> None:
    state = ExecutionState()
    seen: list[ExecutionEvent[Any]] = []
    state.event_bus.subscribe(seen.append)

    async def work(i: int) -> int:
        if i == 1:
            raise ValueError("odd")
        return i

    async with state.parallel(max_workers=2, name="counted") as p:
        for i in range(3):
            p.add(work(i))

    groups = [e for e in seen if e.kind == EventKind.GROUP]
    assert [e.execution_status for e in groups] == [ExecutionStatus.STARTED, ExecutionStatus.FAILED]
    started, ended = groups
    for e in groups:
        assert e.actor is not None and e.actor.name == "parallel:counted"
        assert e.group_id == p.group.group_id and e.is_parallel
        assert e.address == "parallel:counted"
        assert e.metadata["group_name"] == "counted"
        assert e.metadata["max_workers"] == 2
        assert e.metadata["error_strategy"] == "fail_slow"
    assert started.metadata["total"] == 3 and started.metadata["completed"] == 0
    assert ended.metadata["completed"] == 2 and ended.metadata["failed"] == 1
    assert ended.metadata["cancelled"] == 0 and ended.metadata["status"] == "failed"
    assert ended.message == "1 of 3 events failed with 1 error type: ValueError 'odd' (1)"
    assert ended.execution_time is not None


async def test_completed_and_cancelled_group_events() -> None:
    state = ExecutionState()
    statuses: list[str] = []
    state.event_bus.subscribe(
        lambda e: statuses.append(e.execution_status.value) if e.kind == EventKind.GROUP else None
    )

    async def ok() -> int:
        return 1

    async with state.parallel() as p:
        p.add(ok)
    assert statuses == ["started", "completed"]
    assert p.group.status is GroupStatus.COMPLETED

    statuses.clear()
    try:
        async with state.parallel() as p2:
            p2.add(ok)
            raise KeyError("body failed")
    except KeyError:
        pass
    assert statuses == ["cancelled"]
    assert p2.group.status is GroupStatus.CANCELLED


async def test_a_plain_subscriber_handles_group_and_retry_events() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        lines: list[str] = []

        def printer(event: Any) -> None:
            lines.append(f"{event.actor.name} {event.execution_status.value} {event.address}")

        state.event_bus.subscribe(printer)
        failed = False

        async def flaky() -> int:
            nonlocal failed
            if not failed:
                failed = True
                raise ConnectionError("x")
            return 1

        async with state.parallel(name="g", max_retries=1, retry_delay=1) as p:
            p.add(flaky, name="flaky")
    assert state.event_bus.subscriber_errors == 0
    assert lines == [
        "parallel:g started parallel:g",
        "flaky retrying parallel:g[0]",
        "parallel:g completed parallel:g",
    ]


async def test_group_events_are_recorded_in_history_without_shadowing_invocations() -> None:
    state = ExecutionState()
    async with state.parallel(name="docs") as p:
        pass
    assert [e.kind for e in state.history.get_event_list()] == ["group", "group"]
    assert "parallel:docs" not in state.history  # lookups by address see invocations only
    assert p.group.start_time is not None and p.group.end_time is not None


async def test_execution_time_is_measured_on_the_state_clock() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(name="slow") as p:
            p.add(clock.sleep(100))
            p.add(clock.sleep(40))
    assert p.group.execution_time == 100.0
    assert p.results[0].execution_time == 100.0
    # start/end stay wall-clock timestamps, for display.
    assert p.group.start_time is not None and p.group.end_time is not None
    assert 0 <= p.group.end_time - p.group.start_time < 100
    assert [e.execution_time for e in group_events(state)] == [None, 100.0]


async def test_a_group_that_never_ran_took_no_time() -> None:
    state = ExecutionState()
    with pytest.raises(KeyError):
        async with state.parallel() as p:
            p.add(lambda: asyncio.sleep(0))
            raise KeyError("body")
    assert p.group.execution_time == 0.0
    assert [e.execution_time for e in group_events(state)] == [0.0]


async def test_a_group_survives_a_json_round_trip_with_its_error_summary() -> None:
    state = ExecutionState()

    async def refused(port: int) -> None:
        raise ConnectionError(f"refused on port {port}")

    async def silent() -> None:
        raise TimeoutError()

    async with state.parallel(name="g") as p:
        p.add(refused(80))
        p.add(refused(8080))
        p.add(silent())
        p.add(asyncio.sleep(0))
    live = p.group
    restored = ParallelEventGroup.model_validate_json(live.model_dump_json())

    assert restored == live
    assert restored.execution_time == live.execution_time
    assert (
        restored.categorized_errors()
        == live.categorized_errors()
        == [
            ("ConnectionError", "refused on port N", 2),
            ("TimeoutError", "", 1),
        ]
    )
    assert (
        restored.error_summary()
        == live.error_summary()
        == (
            "3 of 4 events failed with 2 error types: ConnectionError 'refused on port N' (2), "
            "TimeoutError (1)"
        )
    )
    # Entries added to a restored group are categorized as well.
    restored._record_failure("ValueError", "bad")
    assert restored.categorized_errors()[-1] == ("ValueError", "bad", 1)
