"""The live bars are redrawn only in the event loop's thread (issue 15, item 12).

A redraw from rich's refresh thread could interleave with a line the printer prints
above the bars: rich moved the cursor up by the bars' old height while the new height
was being drawn, and a loaded machine was left with a stale bar line among the printed
ones (what made ``test_the_demo_on_a_real_terminal`` fail once). The test waits for a
number of redraws (a condition), never for a time.
"""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

import pytest
from rich.live import Live

from rh_agents import ExecutionState
from rh_agents.core.bus import EventBus
from rh_agents.printing import ParallelEventPrinter


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_bars_are_redrawn_in_the_loops_thread_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    redraws: list[int] = []
    enough = asyncio.Event()
    loop = asyncio.get_running_loop()
    real_refresh = Live.refresh

    def refresh(self: Live) -> None:
        redraws.append(threading.get_ident())
        if len(redraws) >= 5:
            loop.call_soon_threadsafe(enough.set)
        real_refresh(self)

    monkeypatch.setattr(Live, "refresh", refresh)
    printer = ParallelEventPrinter("progress", stream=FakeTTY(), refresh_per_second=200)
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus)

    async def waits_for_redraws() -> Any:
        await enough.wait()  # the bars are up meanwhile, with nothing changing
        return "done"

    async with state.parallel(name="docs") as p:
        p.add(waits_for_redraws)
    printer.close()

    assert p.results[0].result == "done"
    assert len(redraws) >= 5
    assert set(redraws) == {threading.get_ident()}, "a redraw ran in another thread"
