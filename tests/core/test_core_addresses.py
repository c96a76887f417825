"""Addresses: unique, deterministic, context-local (never a stack shared between tasks)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any

import pytest

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.errors import InvalidArgumentError, LifecycleError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState


async def echo(data: Any, extra: Any, state: Any) -> Any:
    return data


def where_am_i() -> Tool:
    async def handler(data: Any, extra: Any, state: ExecutionState) -> str:
        return state.get_current_address()

    return Tool(name="where", handler=handler)


async def test_sequential_calls_of_one_actor_get_different_addresses() -> None:
    tool = Tool(name="search", handler=echo)
    state = ExecutionState()
    first = await ExecutionEvent(actor=tool)(1, {}, state)
    second = await ExecutionEvent(actor=tool)(2, {}, state)
    tagged = await ExecutionEvent(actor=tool, tag="web")(3, {}, state)
    assert [first.address, second.address, tagged.address] == ["search", "search#1", "search[web]"]
    assert state.history.get_event_result("search") == 1
    assert state.history.get_event_result("search#1") == 2


async def test_started_and_terminal_event_share_the_address() -> None:
    state = ExecutionState()
    received: list[Any] = []
    state.event_bus.subscribe(received.append)
    ok = Tool(name="ok", handler=echo)

    async def fail(data: Any, extra: Any, state: Any) -> Any:
        raise RuntimeError("no")

    bad = Tool(name="bad", handler=fail)
    for actor in (ok, bad, ok):
        await ExecutionEvent(actor=actor)(None, {}, state)
    assert [(e.address, e.execution_status.value) for e in received] == [
        ("ok", "started"),
        ("ok", "completed"),
        ("bad", "started"),
        ("bad", "failed"),
        ("ok#1", "started"),
        ("ok#1", "completed"),
    ]


async def test_nested_call_address_extends_its_parents() -> None:
    where = where_am_i()

    async def agent_handler(data: Any, extra: Any, state: ExecutionState) -> list[Any]:
        mine = state.get_current_address()
        inner = await ExecutionEvent(actor=where)(None, extra, state)
        again = await ExecutionEvent(actor=where)(None, extra, state)
        return [mine, inner.result, again.result, state.execution_stack]

    agent = Agent(name="planner", handler=agent_handler)
    state = ExecutionState()
    outer = await ExecutionEvent(actor=agent)(None, {}, state)
    second = await ExecutionEvent(actor=agent)(None, {}, state)
    assert outer.result == ["planner", "planner/where", "planner/where#1", ["planner"]]
    # ordinals are counted per parent: the second agent's tools start again at 0
    assert second.result == ["planner#1", "planner#1/where", "planner#1/where#1", ["planner#1"]]
    assert state.get_current_address() == ""  # nothing leaks out of the calls


async def test_two_states_keep_separate_paths() -> None:
    other = ExecutionState()
    tool = Tool(name="t", handler=echo)

    async def handler(data: Any, extra: Any, state: ExecutionState) -> str | None:
        result = await ExecutionEvent(actor=tool)(None, extra, other)
        return result.address

    state = ExecutionState()
    result = await ExecutionEvent(actor=Agent(name="a", handler=handler))(None, {}, state)
    assert result.result == "t"  # a top-level address in the other state, not "a/t"


# ------------------------------------------------------------------ concurrency

AGENTS = 40
TOOLS_PER_AGENT = 4  # 40 agents x (1 + 4) = 200 invocations


async def run_concurrent_pipeline(seed: int) -> tuple[ExecutionState, list[str], dict[str, Any]]:
    rng = random.Random(seed)
    completion_order: list[str] = []

    async def tool_handler(data: Any, extra: Any, state: ExecutionState) -> Any:
        for _ in range(rng.randint(0, 20)):
            await asyncio.sleep(0)
        address = state.get_current_address()
        completion_order.append(address)
        return {"work": data, "address": address}

    lookup = Tool(name="lookup", handler=tool_handler)
    fetch = Tool(name="fetch", handler=tool_handler)

    async def agent_handler(data: Any, extra: Any, state: ExecutionState) -> Any:
        for _ in range(rng.randint(0, 5)):
            await asyncio.sleep(0)
        # two sequential calls of one tool, then two concurrent calls of another
        a = await ExecutionEvent(actor=lookup)([data, 0], extra, state)
        b = await ExecutionEvent(actor=lookup)([data, 1], extra, state)
        c, d = await asyncio.gather(
            ExecutionEvent(actor=fetch)([data, 2], extra, state),
            ExecutionEvent(actor=fetch)([data, 3], extra, state),
        )
        completion_order.append(state.get_current_address())
        return [r.address for r in (a, b, c, d)]

    agent = Agent(name="agent", handler=agent_handler)
    state = ExecutionState()
    results = await asyncio.gather(
        *(ExecutionEvent(actor=agent)(i, {}, state) for i in range(AGENTS))
    )
    assert all(r.ok for r in results)
    work_by_address = {
        address: state.history.get_event_result(address)
        for address in state.history.completed_addresses()
    }
    return state, completion_order, work_by_address


async def test_concurrent_nested_calls_get_unique_deterministic_addresses() -> None:
    state, order_a, work_a = await run_concurrent_pipeline(seed=1)
    _, order_b, work_b = await run_concurrent_pipeline(seed=2)

    # the two runs really finished in different orders
    assert order_a != order_b
    assert sorted(order_a) == sorted(order_b)

    by_address: dict[str, list[str]] = defaultdict(list)
    for event in state.history.get_event_list():
        by_address[event.address].append(event.execution_status.value)
    assert len(by_address) == AGENTS * (1 + TOOLS_PER_AGENT) == 200
    # every address is used by exactly one invocation: one STARTED, one terminal status
    assert all(statuses == ["started", "completed"] for statuses in by_address.values())

    agents = {a for a in by_address if "/" not in a}
    assert agents == {"agent"} | {f"agent#{i}" for i in range(1, AGENTS)}
    for address in by_address:
        if "/" in address:
            parent, child = address.split("/")
            assert parent in agents
            assert child in {"lookup", "lookup#1", "fetch", "fetch#1"}
            # the handler saw the same address the history recorded
            assert work_a[address]["address"] == address

    # the same program gives the same addresses, each doing the same work
    assert set(work_a) == set(work_b)
    assert work_a == work_b
    for i in range(AGENTS):
        agent_address = "agent" if i == 0 else f"agent#{i}"
        assert work_a[f"{agent_address}/lookup"]["work"] == [i, 0]
        assert work_a[f"{agent_address}/fetch#1"]["work"] == [i, 3]


# ------------------------------------------------------------------ push / pop


async def test_push_context_sets_a_root_prefix_and_pop_restores() -> None:
    state = ExecutionState()
    where = where_am_i()
    state.push_context("tenant-7")
    state.push_context("session")
    assert state.execution_stack == ["tenant-7", "session"]
    assert state.get_current_address() == "tenant-7/session"
    inside = await ExecutionEvent(actor=where)(None, {}, state)
    assert inside.address == "tenant-7/session/where"
    assert inside.result == "tenant-7/session/where"

    assert state.pop_context() == "session"
    assert state.pop_context() == "tenant-7"
    assert state.execution_stack == []
    outside = await ExecutionEvent(actor=where)(None, {}, state)
    assert outside.address == "where"
    with pytest.raises(LifecycleError, match="pop_context"):
        state.pop_context()


async def test_pushing_a_name_again_never_reuses_an_address() -> None:
    state = ExecutionState()
    where = where_am_i()
    addresses = []
    for _ in range(2):
        state.push_context("phase")
        addresses.append((await ExecutionEvent(actor=where)(None, {}, state)).address)
        state.pop_context()
    assert addresses == ["phase/where", "phase/where#1"]


async def test_pop_inside_a_handler_cannot_pop_the_invocation_itself() -> None:
    where = where_am_i()

    async def handler(data: Any, extra: Any, state: ExecutionState) -> list[Any]:
        state.push_context("step")
        inner = await ExecutionEvent(actor=where)(None, extra, state)
        popped = state.pop_context()
        try:
            state.pop_context()
        except LifecycleError as exc:
            error = str(exc)
        after = await ExecutionEvent(actor=where)(None, extra, state)
        return [inner.address, popped, error, after.address]

    state = ExecutionState()
    result = await ExecutionEvent(actor=Agent(name="agent", handler=handler))(None, {}, state)
    assert result.ok, result.error_message
    inner, popped, error, after = result.result
    assert (inner, popped, after) == ("agent/step/where", "step", "agent/where")
    assert "more often than push_context" in error


async def test_push_in_one_task_does_not_change_another_tasks_addresses() -> None:
    state = ExecutionState()
    where = where_am_i()
    pushed = asyncio.Event()
    other_done = asyncio.Event()

    async def pusher() -> str | None:
        state.push_context("private")
        pushed.set()
        await other_done.wait()
        result = await ExecutionEvent(actor=where)(None, {}, state)
        return result.address

    task = asyncio.create_task(pusher())
    await pushed.wait()
    mine = await ExecutionEvent(actor=where)(None, {}, state)
    assert state.execution_stack == []
    other_done.set()
    assert await task == "private/where"
    assert mine.address == "where"


def test_push_context_needs_a_name() -> None:
    with pytest.raises(InvalidArgumentError, match="non-empty name"):
        ExecutionState().push_context("")


def test_pop_context_without_push_is_a_clear_error() -> None:
    with pytest.raises(LifecycleError, match=r"pop_context\(\) was called more often"):
        ExecutionState().pop_context()


def test_group_ids_are_pinned() -> None:
    # A group's id is derived from its address and stored in every history: resuming
    # a run matches groups by it, so its derivation is part of the stored format.
    from rh_agents.core.context import group_id_for

    assert group_id_for("pipeline/parallel:docs") == "g-fbe14e5c274f3eea"
    assert group_id_for("") == "g-e4a6a0577479b2b4"
    assert group_id_for("ü") == "g-55f19df5c1392f37"
