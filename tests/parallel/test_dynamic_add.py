"""Adding work to a running group: from inside an item, from the body while streaming."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rh_agents import ExecutionEvent, ExecutionState, Tool
from rh_agents.core.errors import LifecycleError
from rh_agents.testing import FakeClock, TelemetryCapture


def _echo_tool() -> Tool[Any, Any]:
    async def echo(data: Any, extra: Any, state: Any) -> Any:
        return data

    return Tool(name="echo", handler=echo)


async def test_an_item_fans_out_and_the_group_waits_for_what_it_added(
    rh_telemetry: TelemetryCapture,
) -> None:
    state = ExecutionState()
    echo = _echo_tool()

    async with state.parallel(max_workers=2, name="crawl") as p:

        async def page(url: str, links: list[str]) -> str:
            await ExecutionEvent(actor=echo)(url, {}, state)
            for link in links:
                p.add(lambda link=link: page(link, []), name=link)
            return url

        p.add(lambda: page("/", ["/a", "/b", "/c"]), name="/")
        results = await p.gather()
    assert [(r.name, r.result, r.index) for r in results] == [
        ("/", "/", 0),
        ("/a", "/a", 1),
        ("/b", "/b", 2),
        ("/c", "/c", 3),
    ]
    assert p.group.total == 4 and p.group.completed == 4
    addresses = [
        e.address for e in state.history.get_event_list() if e.execution_status.value == "completed"
    ]
    assert sorted(a for a in addresses if a.endswith("/echo")) == [
        "parallel:crawl[0.0]/echo",
        "parallel:crawl[0.1]/echo",
        "parallel:crawl[0.2]/echo",
        "parallel:crawl[0]/echo",
    ]
    assert rh_telemetry.span_tree() == (
        "parallel crawl [outcome='completed']\n"
        + "\n".join(["  execute_tool echo [outcome='completed']"] * 4)
    )
    group = rh_telemetry.one("parallel crawl")
    assert (group.attributes or {})["rh_agents.parallel.size"] == 4
    assert (group.attributes or {})["rh_agents.parallel.completed"] == 4
    rh_telemetry.assert_metric("rh_agents_parallel_groups_total", 1, group="crawl")
    rh_telemetry.assert_metric(
        "rh_agents_events_total", 4, name="echo", operation="execute_tool", outcome="completed"
    )


async def test_addresses_of_added_items_do_not_depend_on_completion_order() -> None:
    async def run(delays: dict[str, float]) -> dict[str, str]:
        async with FakeClock() as clock:
            state = ExecutionState(clock=clock)
            echo = _echo_tool()
            async with state.parallel(max_workers=4, name="g") as p:

                async def child(name: str) -> Any:
                    await clock.sleep(delays[name])
                    return await ExecutionEvent(actor=echo)(name, {}, state)

                async def parent(name: str) -> str:
                    await clock.sleep(delays[name])
                    for n in (1, 2):
                        p.add(lambda c=f"{name}.{n}": child(c), name=f"{name}.{n}")
                    return name

                p.add(lambda: parent("x"), name="x")
                p.add(lambda: parent("y"), name="y")
                results = await p.gather()
        return {r.name: r.address for r in results if r.name.count(".")}

    fast_x = await run({"x": 1.0, "y": 2.0, "x.1": 1, "x.2": 1, "y.1": 1, "y.2": 1})
    fast_y = await run({"x": 2.0, "y": 1.0, "x.1": 3, "x.2": 1, "y.1": 1, "y.2": 2})
    assert (
        fast_x
        == fast_y
        == {
            "x.1": "parallel:g[0.0]/echo",
            "x.2": "parallel:g[0.1]/echo",
            "y.1": "parallel:g[1.0]/echo",
            "y.2": "parallel:g[1.1]/echo",
        }
    )


async def test_the_body_adds_while_consuming_the_stream_and_results_keep_add_order() -> None:
    state = ExecutionState()

    async def square(n: int) -> int:
        await asyncio.sleep(0)
        return n * n

    seen: list[int] = []
    async with state.parallel(max_workers=3, name="levels") as p:
        for n in (1, 2):
            p.add(lambda n=n: square(n))
        async for result in p.stream():
            seen.append(result.result)
            if result.result < 50:  # each result below 50 asks for the next square
                p.add(lambda r=result.result: square(r + 1))
    assert sorted(seen) == [1, 4, 4, 25, 25, 676, 676]
    results = p.results
    assert [r.index for r in results] == list(range(7))
    assert p.group.total == 7 and p.group.completed == 7


async def test_the_workers_stay_bounded_when_items_fan_out() -> None:
    state = ExecutionState()
    running = 0
    peak = 0

    async with state.parallel(max_workers=3, name="tree") as p:

        async def node(depth: int) -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0)
            if depth < 3:
                for _ in range(3):
                    p.add(lambda: node(depth + 1))
            running -= 1
            return depth

        p.add(lambda: node(0))
        results = await p.gather()
    assert len(results) == 1 + 3 + 9 + 27
    assert all(r.ok for r in results)
    assert peak <= 3 and p.statistics().peak_in_flight == 3


async def test_adding_after_the_last_item_finished_is_a_lifecycle_error() -> None:
    state = ExecutionState()
    async with state.parallel(name="done") as p:
        p.add(lambda: asyncio.sleep(0))
        await p.gather()
        with pytest.raises(LifecycleError, match=r"its last item has finished"):
            p.add(lambda: asyncio.sleep(0))


async def test_a_single_inline_item_that_fans_out_runs_its_children_concurrently() -> None:
    state = ExecutionState()
    started = 0
    all_in = asyncio.Event()

    async def child() -> None:
        nonlocal started
        started += 1
        if started == 3:
            all_in.set()
        await all_in.wait()  # needs the three children running at once

    async with state.parallel(max_workers=4, name="fan") as p:

        async def root() -> None:
            for _ in range(3):
                p.add(child)

        p.add(root)
        results = await p.gather()
    assert [r.ok for r in results] == [True] * 4


async def test_a_failfast_group_refuses_adds_once_it_stopped() -> None:
    state = ExecutionState()
    refused: list[str] = []

    async with state.parallel(name="ff", error_strategy="fail_fast") as p:

        async def boom() -> None:
            raise ValueError("boom")

        async def slow() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                try:
                    p.add(lambda: asyncio.sleep(0))
                except LifecycleError as exc:
                    refused.append(str(exc))

        p.add(slow)
        p.add(boom)
        with pytest.raises(ValueError, match="boom"):
            await p.gather()
    assert refused and "open a new group" in refused[0]


async def test_added_items_count_in_the_printers_progress() -> None:
    import io

    from rh_agents.bus_handlers import ParallelEventPrinter

    out = io.StringIO()
    printer = ParallelEventPrinter(stream=out)
    state = ExecutionState()
    state.event_bus.subscribe(printer)
    echo = _echo_tool()
    async with state.parallel(max_workers=2, name="crawl") as p:

        async def page(url: str, links: int) -> Any:
            for n in range(links):
                p.add(lambda n=n: page(f"{url}{n}", 0), name=f"{url}{n}")
            return await ExecutionEvent(actor=echo, tag=url.strip("/") or "root")(url, {}, state)

        p.add(lambda: page("/", 3), name="/")
        await p.gather()
    printer.close()
    text = out.getvalue()
    assert "4/4 completed" in text, text


async def test_the_adding_item_is_the_innermost_running_item_of_that_group() -> None:
    """An add made by a call nested in an item (of the item's state or another) counts
    for that item (its index keys the new item); one made by an item of another group
    (nested inside) counts for the body ("+N"). Keys are part of the addresses a resume
    replays by."""
    state = ExecutionState()
    added: dict[str, int] = {}

    echo = _echo_tool()

    async def noop() -> Any:  # its call's address ends with the new item's key
        return await ExecutionEvent(actor=echo)("added", {}, state)

    def tool(name: str, act: Any) -> Tool[Any, Any]:
        async def handler(data: Any, extra: Any, state: Any) -> Any:
            act()
            return data

        return Tool(name=name, handler=handler)

    async with state.parallel(max_workers=2, name="outer") as outer:

        def add(name: str) -> None:
            added[name] = outer.add(noop, name=name)

        async def with_nested_call() -> str:
            return str(
                await ExecutionEvent(actor=tool("deep", lambda: add("from call")))(1, {}, state)
            )

        async def with_nested_group() -> str:
            async with state.parallel(max_workers=1, name="inner") as inner:
                inner.add(
                    lambda: ExecutionEvent(actor=tool("x", lambda: add("from inner")))(2, {}, state)
                )
                await inner.gather()
            add("from item after inner")
            return "nested"

        async def with_call_in_another_state() -> str:
            other = ExecutionState()  # a sub-state: its calls have addresses of their own
            return str(
                await ExecutionEvent(actor=tool("sub", lambda: add("from sub-state")))(3, {}, other)
            )

        outer.add(with_nested_call, name="call")
        outer.add(with_nested_group, name="group")
        outer.add(with_call_in_another_state, name="sub-state")
        add("from body")
        results = await outer.gather()
    addresses = {r.name: r.address for r in results}
    assert {name: addresses[name] for name in added} == {
        "from call": "parallel:outer[0.0]/echo",
        "from inner": "parallel:outer[+0]/echo",
        "from item after inner": "parallel:outer[1.0]/echo",
        "from sub-state": "parallel:outer[2.0]/echo",
        "from body": "parallel:outer[3]/echo",  # before the run: an ordinary item
    }
