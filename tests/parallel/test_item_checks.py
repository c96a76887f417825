"""What ``p.add()`` accepts and refuses, word for word: factories, coroutine objects,
other awaitables, tasks, names, keys and priorities."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Generator
from typing import Any

import pytest

from rh_agents import ExecutionState
from rh_agents.core.context import current_frame
from rh_agents.core.errors import DuplicateNameError, InvalidArgumentError, InvalidWorkError


async def value(x: Any) -> Any:
    return x


class Ready:
    """An awaitable that is neither a coroutine nor a future (awaitable again and again)."""

    def __await__(self) -> Generator[Any, None, str]:
        yield from asyncio.sleep(0).__await__()
        return "ready"


async def test_a_factory_returning_another_kind_of_awaitable_is_run() -> None:
    state = ExecutionState(telemetry=False)
    awaitable = Ready()
    async with state.parallel(name="g") as p:
        p.add(lambda: Ready())
        p.add(lambda: asyncio.ensure_future(value("task")))
        p.add(awaitable)
        p.add(awaitable)  # not a coroutine object: it can be awaited again
    assert [r.result for r in p.results] == ["ready", "task", "ready", "ready"]


async def test_a_factory_that_returns_no_awaitable_fails_its_item_clearly() -> None:
    state = ExecutionState(telemetry=False)
    async with state.parallel(name="g") as p:
        p.add(lambda: 5, name="five")
    (result,) = p.results
    assert result.error_type == "InvalidWorkError"
    assert result.error_message == (
        "The factory of item 0 ('five') returned int, not an awaitable; pass a "
        "zero-argument callable returning a coroutine, e.g. `lambda: work(x)`."
    )


async def test_a_factory_that_needs_arguments_fails_its_item_clearly() -> None:
    state = ExecutionState(telemetry=False)
    async with state.parallel(name="g") as p:
        p.add(value)
    (result,) = p.results
    assert (result.error_message or "").startswith(
        "The factory of item 0 ('item_0') cannot be called without arguments ("
    )
    assert (result.error_message or "").endswith(
        "); p.add() calls it with none. Bind the arguments first: p.add(lambda: work(x)) "
        "or functools.partial(work, x)."
    )


async def test_refusals_when_adding() -> None:
    state = ExecutionState(telemetry=False)
    async with state.parallel(name="g", max_retries=1) as p:
        coro = value(1)
        with pytest.raises(InvalidWorkError) as caught:
            p.add(coro, name="once")
        assert str(caught.value) == (
            "Item 'once' is a coroutine object, which can run only once, but group 'g' "
            "retries failed items (max_retries=1). Pass a factory instead: "
            "p.add(lambda: work(x))."
        )
        assert coro.cr_frame is None  # closed: no "never awaited" warning later

        task = asyncio.ensure_future(value(2))
        with pytest.raises(InvalidWorkError) as caught:
            p.add(task)
        assert str(caught.value) == (
            "Item 'item_0' is an asyncio Task, which is already running outside the control "
            "of group 'g' (max_workers, timeout and cancellation cannot apply to it). Pass a "
            "factory that starts the work instead: p.add(lambda: work(x))."
        )
        await task

        bad = value(3)
        with pytest.raises(InvalidArgumentError, match="priority must be an integer"):
            p.add(bad, priority="high")  # type: ignore[arg-type]
        assert bad.cr_frame is None

        with pytest.raises(InvalidWorkError) as caught:
            p.add(42)
        assert str(caught.value) == (
            "p.add() takes a coroutine object or a zero-argument callable returning an "
            "awaitable, got int 42."
        )
        p.add(functools.partial(value, 0), name="kept")
        with pytest.raises(DuplicateNameError) as caught:
            p.add(functools.partial(value, 1), name="kept")
        assert str(caught.value) == (
            "Parallel group 'g' already has an item named 'kept'; item names must be "
            "unique: choose another name, or leave name= out for an automatic one."
        )


async def test_the_same_coroutine_object_twice_is_refused() -> None:
    state = ExecutionState(telemetry=False)
    coro = value(1)
    async with state.parallel(name="g") as p:
        p.add(coro)
        with pytest.raises(InvalidWorkError) as caught:
            p.add(coro, name="again")
        assert str(caught.value) == (
            "Item 'again' is the same coroutine object as item 0 of group 'g'; a coroutine "
            "object can run only once. Create one per item, or pass a factory: "
            "p.add(lambda: work(x))."
        )
    assert [r.result for r in p.results] == [1]


async def test_automatic_names_step_around_the_ones_taken() -> None:
    state = ExecutionState(telemetry=False)
    async with state.parallel(name="g") as p:
        p.add(lambda: value("a"), name="item_1")  # index 0 takes index 1's name
        p.add(lambda: value("b"), name="item_2#1")
        p.add(lambda: value("c"))  # index 2: item_2
        p.add(lambda: value("d"), name="item_3")
        p.add(lambda: value("e"))  # index 4: item_4
        p.add(lambda: value("f"), name="item_5")
        p.add(lambda: value("g"), name="item_5#1")
    names = [r.name for r in p.results]
    assert names == ["item_1", "item_2#1", "item_2", "item_3", "item_4", "item_5", "item_5#1"]
    assert [r.result for r in p.results] == ["a", "b", "c", "d", "e", "f", "g"]


async def test_automatic_names_get_a_growing_suffix() -> None:
    state = ExecutionState(telemetry=False)
    async with state.parallel(name="h") as q:
        q.add(lambda: value(0), name="item_2")
        q.add(lambda: value(1), name="item_2#1")
        q.add(lambda: value(2))  # index 2: item_2 and item_2#1 are taken
    assert [r.name for r in q.results] == ["item_2", "item_2#1", "item_2#2"]


async def where() -> str:
    frame = current_frame.get()
    assert frame is not None
    return frame.address


async def test_a_coroutine_object_added_while_running_gets_its_adders_address() -> None:
    state = ExecutionState(telemetry=False)
    async with state.parallel(name="g") as p:

        async def parent() -> str:
            p.add(where())  # a coroutine object, added by item 0 as it runs
            return await where()

        p.add(parent)
        p.add(where)
    assert [r.result for r in p.results] == ["parallel:g[0]", "parallel:g[1]", "parallel:g[0.0]"]
