"""The work the benchmarks run: trivial coroutines, and echoing, sleeping and spinning
actors (the CPU-bound function of P6 is in :mod:`bench._cpu`)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rh_agents import ExecutionEvent, ExecutionState, Tool


async def trivial(i: int) -> int:
    """A coroutine that completes at its first step."""
    return i


def trivial_factories(n: int) -> list[Callable[[], Awaitable[int]]]:
    """``n`` zero-argument factories of :func:`trivial` (what ``p.add`` takes)."""
    return [functools.partial(trivial, i) for i in range(n)]


async def _echo(input_data: Any, extra_context: Any, state: Any) -> Any:
    return input_data


async def _sleep(input_data: Any, extra_context: Any, state: Any) -> Any:
    await asyncio.sleep(input_data)
    return None


def spin(seconds: float) -> None:
    """Busy-wait ``seconds``: a precise duration, unlike a sleep's timer granularity."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _spin(input_data: Any, extra_context: Any, state: Any) -> Any:
    spin(input_data)
    return None


ECHO = Tool(name="echo", description="returns its input", handler=_echo)
SLEEP = Tool(name="sleep", description="sleeps input_data seconds", handler=_sleep)
SPIN = Tool(name="spin", description="busy-waits input_data seconds", handler=_spin)


def event_factories(
    tool: Tool, state: ExecutionState, inputs: list[Any]
) -> list[Callable[[], Awaitable[Any]]]:
    """One factory per input; each builds an ExecutionEvent and calls it when run, as an
    application adding events to a group does (the event's construction is counted)."""

    def factory(value: Any) -> Callable[[], Awaitable[Any]]:
        return lambda: ExecutionEvent(actor=tool)(value, None, state)

    return [factory(value) for value in inputs]
