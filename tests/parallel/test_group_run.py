"""A group while it runs: its status and time, the addresses of items added meanwhile,
the context its workers see, and errors raised outside an item's own work.

Everything that takes time waits on a FakeClock; no test measures real time.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any

import pytest

from rh_agents import ExecutionEvent, ExecutionState, Tool
from rh_agents.core.parallel.models import GroupStatus
from rh_agents.core.types import ExecutionStatus
from rh_agents.testing import FakeClock

request_id: ContextVar[str] = ContextVar("request_id", default="none")


async def where(data: Any, extra: Any, st: Any) -> Any:
    return data


WHERE = Tool(name="where", handler=where)


def addresses(state: ExecutionState) -> list[str]:
    return [
        str(e.address)
        for e in state.history.events
        if e.actor_name == "where" and e.execution_status is ExecutionStatus.COMPLETED
    ]


async def test_a_running_group_says_so_and_measures_its_time_on_the_states_clock() -> None:
    seen: list[GroupStatus] = []
    async with FakeClock() as clock:
        await clock.sleep(10.0)  # the group starts well after the clock's zero
        state = ExecutionState(clock=clock)
        async with state.parallel(name="timed") as p:

            async def work() -> None:
                seen.append(p.group.status)
                await clock.sleep(3.0)

            p.add(work)
    assert seen == [GroupStatus.RUNNING]
    assert p.group.status is GroupStatus.COMPLETED
    assert p.group.execution_time == 3.0


async def test_items_the_body_adds_while_streaming_are_numbered_in_add_order() -> None:
    state = ExecutionState(telemetry=False)
    async with state.parallel(name="g", max_workers=1) as p:
        p.add(lambda: ExecutionEvent(actor=WHERE)("first", {}, state))
        added = 0
        async for _ in p.stream():
            if added < 3:
                p.add(lambda n=added: ExecutionEvent(actor=WHERE)(n, {}, state))
                added += 1
    assert addresses(state) == [
        "parallel:g[0]/where",
        "parallel:g[+0]/where",
        "parallel:g[+1]/where",
        "parallel:g[+2]/where",
    ]


async def test_an_item_added_by_an_added_item_is_keyed_by_its_parents_key() -> None:
    state = ExecutionState(telemetry=False)
    async with state.parallel(name="g") as p:

        async def grandchild() -> Any:
            return await ExecutionEvent(actor=WHERE)("grandchild", {}, state)

        async def child() -> Any:
            p.add(grandchild)
            return await ExecutionEvent(actor=WHERE)("child", {}, state)

        async def parent() -> Any:
            p.add(child)
            return await ExecutionEvent(actor=WHERE)("parent", {}, state)

        p.add(parent)
    assert sorted(addresses(state)) == [
        "parallel:g[0.0.0]/where",  # the first added by item [0.0]
        "parallel:g[0.0]/where",
        "parallel:g[0]/where",
    ]


async def test_a_worker_started_for_an_added_item_runs_in_the_groups_context() -> None:
    # Workers run in copies of the context the group started in, whoever starts them
    # (here an item whose own context changed). Items a worker runs one after another
    # share its copy, and a group run inline shares the caller's (docs/parallel.md).
    state = ExecutionState(telemetry=False)
    seen: dict[str, str] = {}
    request_id.set("request-7")
    async with state.parallel(name="g", max_workers=3) as p:
        done = asyncio.Event()

        async def added() -> None:
            seen["added"] = request_id.get()
            done.set()

        async def adder() -> None:
            seen["adder"] = request_id.get()
            request_id.set("changed by the adder")
            p.add(added)  # both workers stay busy: a third one starts for it
            await done.wait()

        p.add(adder)
        p.add(lambda: done.wait())
    assert seen == {"adder": "request-7", "added": "request-7"}


async def test_an_error_outside_an_items_work_stops_the_group_and_says_where() -> None:
    state = ExecutionState(telemetry=False)

    def broken_predicate(error: BaseException) -> bool:
        raise RuntimeError("the predicate is broken")

    async def fails() -> None:
        raise ConnectionError("reset")

    with pytest.raises(RuntimeError, match="the predicate is broken") as info:
        async with state.parallel(
            name="g", max_retries=2, retry_delay=0.0, retry_on=broken_predicate
        ) as p:
            p.add(fails, name="x")
    assert info.value.__notes__ == [
        "Raised while parallel group 'g' handled item 0 ('x') outside the item's own work "
        "(e.g. by a retry_on predicate, a limiter, a circuit breaker or the history); the "
        "group stopped."
    ]
    [result] = p.results
    assert (result.ok, result.execution_time) == (False, 0.0)
    assert p.group.status is GroupStatus.FAILED


async def test_an_item_added_while_another_task_starts_collecting_is_taken() -> None:
    state = ExecutionState(telemetry=False)
    order: list[str] = []

    def work(name: str) -> Any:
        async def run() -> str:
            order.append(name)
            return name

        return run

    async with state.parallel(name="g", max_workers=1) as p:
        p.add(work("a"), name="a")
        collecting = asyncio.create_task(p.gather())  # another task collects
        await asyncio.sleep(0)  # it started collecting; the group has not run yet
        p.add(work("b"), name="b", priority=5)
        results = await collecting
    assert [(r.name, r.result) for r in results] == [("a", "a"), ("b", "b")]
    assert order == ["b", "a"]  # its priority counted


async def test_lifecycle_errors_say_what_to_do() -> None:
    from rh_agents.core.errors import LifecycleError

    state = ExecutionState(telemetry=False)

    async def value() -> int:
        return 1

    early = state.parallel(name="g")
    with pytest.raises(LifecycleError) as info:
        early.add(value)
    assert str(info.value) == "add() must be called inside `async with state.parallel(...) as p:`."
    async with state.parallel(name="g") as p:
        p.add(value)
    with pytest.raises(LifecycleError) as info:
        async with p:
            pass
    assert str(info.value) == (
        "A parallel group can be entered only once; open a new one with state.parallel(...)."
    )
    with pytest.raises(LifecycleError) as info:
        p.add(value)
    assert str(info.value) == (
        "Cannot add to parallel group 'g' after its results were collected (its last item "
        "has finished, or it was stopped); open a new group for more work."
    )
    async with state.parallel(name="s") as q:
        q.add(value)
        async for _ in q.stream():
            with pytest.raises(LifecycleError) as info:
                await q.gather()
    assert str(info.value) == (
        "gather() cannot run while the group is already running (a stream() is consuming "
        "it); use one way of collecting results per group."
    )


async def test_a_group_whose_body_raised_records_its_items_as_never_started() -> None:
    from rh_agents.core.events import EventKind

    state = ExecutionState(telemetry=False)

    async def value() -> int:
        return 1

    with pytest.raises(ValueError, match="the body failed"):
        async with state.parallel(name="abandoned", timeout=30.0) as p:
            p.add(value, name="a")
            p.add(value, name="b")
            raise ValueError("the body failed")
    assert [(r.name, r.status, r.error_message) for r in p.results] == [
        ("a", ExecutionStatus.CANCELLED, "Item 0 ('a') was cancelled before it started."),
        ("b", ExecutionStatus.CANCELLED, "Item 1 ('b') was cancelled before it started."),
    ]
    group = p.group
    assert (group.status, group.total, group.execution_time) == (GroupStatus.CANCELLED, 2, 0.0)
    assert group.start_time is not None and group.start_time == group.end_time
    [entry] = [e for e in state.history.events if e.kind is EventKind.GROUP]
    assert entry.execution_status is ExecutionStatus.CANCELLED
    assert entry.message is None  # not a timeout
    assert entry.metadata["timed_out"] is False
