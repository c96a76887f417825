"""Watch parallel groups with ParallelEventPrinter, in both display modes.

    python examples/parallel_with_printer.py            # on a terminal: live bars
    python examples/parallel_with_printer.py | cat      # piped: plain lines, no colour

Part 1 (REALTIME) prints every event as it arrives, labelled with its group and position
(``[Translate 2/4]``), including a retried failure. Part 2 (PROGRESS) runs a group of
documents with a nested group inside one item (named after that item: ``doc-5 ›
Reviews``) and a permanent failure: on a terminal each running group gets a live progress
bar; elsewhere a plain line is printed at each 25% step. Each group ends with a summary
line and its categorized errors. The whole run takes about a second.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from pydantic import BaseModel

from rh_agents import Agent, EventBus, ExecutionEvent, ExecutionState, Tool
from rh_agents.core.parallel import ParallelDisplayMode
from rh_agents.printing import ParallelEventPrinter


class Text(BaseModel):
    text: str


_flaky_calls: dict[str, int] = {}


async def translate(data: Text, extra: dict[str, Any], state: ExecutionState) -> str:
    await asyncio.sleep(random.uniform(0.02, 0.06))
    _flaky_calls[data.text] = _flaky_calls.get(data.text, 0) + 1
    if data.text == "bonjour" and _flaky_calls[data.text] == 1:
        raise ConnectionError("translation service busy")
    return data.text[::-1]


async def summarize(data: Text, extra: dict[str, Any], state: ExecutionState) -> str:
    await asyncio.sleep(random.uniform(0.03, 0.09))
    if data.text == "doc-13":
        raise ValueError(f"{data.text} is not valid UTF-8")
    return f"summary of {data.text}"


translate_tool = Tool(name="translate", input_model=Text, handler=translate)
summarize_tool = Tool(name="summarize", input_model=Text, handler=summarize)


async def review(data: Text, extra: dict[str, Any], state: ExecutionState) -> list[str]:
    """An agent whose work is itself a parallel group (shown as a nested bar)."""
    async with state.parallel(max_workers=2, name="Reviews") as p:
        for page in range(4):
            p.add(ExecutionEvent(actor=summarize_tool)(Text(text=f"page-{page}"), {}, state))
        results = await p.gather()
    return [r.result for r in results if r.ok]


review_agent = Agent(name="reviewer", input_model=Text, handler=review)


def new_state(printer: ParallelEventPrinter) -> ExecutionState:
    bus = EventBus()
    bus.subscribe(printer)
    return ExecutionState(event_bus=bus)


async def realtime_demo() -> None:
    print("== REALTIME: every event as it arrives ==")
    printer = ParallelEventPrinter(ParallelDisplayMode.REALTIME, show_timestamp=False)
    state = new_state(printer)
    async with state.parallel(
        max_workers=2, name="Translate", max_retries=1, retry_delay=0.05
    ) as p:
        for word in ("hello", "bonjour", "hola", "ciao"):
            p.add(
                lambda word=word: ExecutionEvent(actor=translate_tool)(Text(text=word), {}, state)
            )
        await p.gather()
    printer.print_summary()


async def progress_demo() -> None:
    print("\n== PROGRESS: one bar per running group ==")
    with ParallelEventPrinter("progress", show_timestamp=False) as printer:
        state = new_state(printer)
        async with state.parallel(max_workers=4, name="Processing Docs") as p:
            for i in range(16):
                doc = Text(text=f"doc-{i}")
                if i == 5:
                    # tagged, so its nested group is shown as "doc-5 › Reviews"
                    p.add(
                        lambda doc=doc: ExecutionEvent(actor=review_agent, tag=doc.text)(
                            doc, {}, state
                        )
                    )
                else:
                    p.add(lambda doc=doc: ExecutionEvent(actor=summarize_tool)(doc, {}, state))
            results = await p.gather()
        printer.print_summary()
    ok = sum(r.ok for r in results)
    print(f"{ok} of {len(results)} documents summarized")


async def main() -> None:
    random.seed(7)
    await realtime_demo()
    await progress_demo()


if __name__ == "__main__":
    asyncio.run(main())
