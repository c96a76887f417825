"""Parallel basics: run independent tool calls concurrently and collect their results.

    python examples/parallel_basic.py

A research agent fetches six pages with at most three requests in flight, then
summarizes them in a second group keyed by name. It shows:

* ``p.add(...)`` with coroutine objects and with factories (``lambda: ...``), which are
  started only when a worker is free;
* ``gather()`` (results in add order, whatever the completion order) and
  ``gather_dict()`` (results by item name);
* the deterministic addresses and group ids that make a run resumable;
* the group's counts and timing (``p.group``) and lifecycle events on the bus.

No network is used: the "fetch" tool sleeps a few milliseconds. The run takes ~0.2 s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel

from rh_agents import Agent, ExecutionEvent, ExecutionState, Tool
from rh_agents.core.events import EventKind


class Url(BaseModel):
    url: str


class Page(BaseModel):
    url: str
    words: int


LATENCY = {"a": 0.06, "b": 0.02, "c": 0.05, "d": 0.01, "e": 0.04, "f": 0.03}
finished: list[str] = []


async def fetch_page(data: Url, extra: dict[str, Any], state: ExecutionState) -> Page:
    key = data.url.rsplit("/", 1)[-1]
    await asyncio.sleep(LATENCY[key])  # a real tool would do an HTTP request here
    finished.append(key)
    return Page(url=data.url, words=100 * (ord(key) - ord("a") + 1))


async def summarize(data: Page, extra: dict[str, Any], state: ExecutionState) -> str:
    await asyncio.sleep(0.01)
    return f"{data.url} has {data.words} words"


fetch_tool = Tool(name="fetch_page", input_model=Url, output_model=Page, handler=fetch_page)
summarize_tool = Tool(name="summarize", input_model=Page, handler=summarize)


async def research(data: Url, extra: dict[str, Any], state: ExecutionState) -> dict[str, str]:
    """An agent whose work is two parallel groups, one after the other."""
    urls = [f"{data.url}/{key}" for key in LATENCY]

    # Group 1: coroutine objects, collected in add order.
    started = time.perf_counter()
    async with state.parallel(max_workers=3, name="fetch") as p:
        for url in urls:
            p.add(ExecutionEvent(actor=fetch_tool)(Url(url=url), extra, state))
        pages = await p.gather()
    elapsed = time.perf_counter() - started
    sequential = sum(LATENCY.values())
    print(f"fetched {len(pages)} pages in {elapsed:.2f}s (one by one: ~{sequential:.2f}s)")
    print(f"completion order: {' '.join(finished)}; gather() returns add order:")
    for result in pages:
        print(f"  [{result.index}] {result.metadata['address']:<40} {result.result.words} words")

    # Group 2: factories (started only when a worker is free), collected by name.
    async with state.parallel(max_workers=2, name="summaries") as p:
        for result in pages:
            page = result.result
            name = page.url.rsplit("/", 1)[-1]
            p.add(lambda page=page: ExecutionEvent(actor=summarize_tool)(page, extra, state), name)
        by_name = await p.gather_dict()
    print(
        f"group '{p.group.name}': {p.group.completed}/{p.group.total} completed, "
        f"status {p.group.status.value}, id {p.group.group_id}"
    )
    return {name: r.result for name, r in by_name.items()}


researcher = Agent(name="researcher", input_model=Url, handler=research)


async def main() -> None:
    state = ExecutionState()
    groups: list[str] = []

    def on_event(event: Any) -> None:
        if event.kind == EventKind.GROUP:
            meta = event.metadata
            groups.append(
                f"  {event.execution_status.value:<9} {event.address:<30} "
                f"completed={meta['completed']} failed={meta['failed']} total={meta['total']}"
            )

    state.event_bus.subscribe(on_event)

    result = await ExecutionEvent(actor=researcher)(Url(url="https://example.org"), {}, state)
    print("summaries by name:")
    for name, summary in result.result.items():
        print(f"  {name}: {summary}")

    print("group lifecycle events:")
    print("\n".join(groups))

    # Same program, same addresses: this is what lets a crashed run resume.
    completed = sorted(
        e.address
        for e in state.history.get_event_list()
        if e.kind == EventKind.EVENT and e.execution_status.value == "completed"
    )
    print(f"{len(completed)} completed invocations, e.g.:")
    for address in completed[:2] + completed[-2:]:
        print(f"  {address}")


if __name__ == "__main__":
    asyncio.run(main())
