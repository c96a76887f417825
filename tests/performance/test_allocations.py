"""What one group item and one event leave for the garbage collector, pinned.

The cyclic collector's cost grows with the number of container objects it tracks, and a
full collection walks every one still alive, so each tracked object kept per item is paid
again and again in a large group (docs/performance.md, P1 and P7). These tests count
them deterministically (``gc.get_objects()`` with the collector paused, after a warm-up),
never a time: a change that keeps one more object per item, or leaves a reference cycle
behind a finished group, fails here instead of showing up as noise in a benchmark.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from rh_agents import ExecutionEvent, ExecutionResult, ExecutionState, Tool
from rh_agents.telemetry import Telemetry

N = 1_000
TOLERANCE = 0.02  # per item: a few objects per run (the group's own) are not per item

Factory = Callable[[], Awaitable[Any]]


async def _value(i: int) -> int:
    return i


async def _echo(input_data: Any, extra_context: Any, state: Any) -> Any:
    return input_data


async def _boom(input_data: Any, extra_context: Any, state: Any) -> Any:
    raise ValueError(f"item {input_data} failed")


ECHO = Tool(name="echo", description="returns its input", handler=_echo)
BOOM = Tool(name="boom", description="always fails", handler=_boom)


class Census:
    """Tracked objects created by a measured block and still alive after it, and the
    objects the collector then finds in reference cycles (garbage only it can free)."""

    alive = 0
    cyclic = 0


@asynccontextmanager
async def census() -> AsyncIterator[Census]:
    counted = Census()
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        yield counted
        counted.alive = len(gc.get_objects()) - before
        counted.cyclic = gc.collect()
    finally:
        gc.enable()


async def _group(state: ExecutionState, factories: list[Factory], workers: int) -> list[Any]:
    async with state.parallel(max_workers=workers, name="census") as p:
        for factory in factories:
            p.add(factory)
        return await p.gather()


def _events(tool: Tool, state: ExecutionState, n: int) -> list[Factory]:
    return [functools.partial(ExecutionEvent(actor=tool), i, None, state) for i in range(n)]


def _telemetry() -> tuple[Telemetry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(provider, CollectorRegistry()), exporter


@pytest.mark.parametrize("workers", [1, 100])
async def test_a_group_item_keeps_two_tracked_objects_and_no_cycle(workers: int) -> None:
    # Per item: its ExecutionResult and the result's field dict (results built by the
    # core share one empty fields-set until a field is assigned). The
    # items themselves (and the group, its run and scheduler) are freed by reference
    # counting as soon as the group is left: no cycle holds them for the collector.
    state = ExecutionState(telemetry=False)
    await _group(state, [functools.partial(_value, i) for i in range(10)], workers)
    factories = [functools.partial(_value, i) for i in range(N)]
    async with census() as counted:
        results = await _group(state, factories, workers)
    assert [r.result for r in results] == list(range(N))
    assert counted.alive / N <= 2 + TOLERANCE
    assert counted.cyclic == 0


@pytest.mark.parametrize("workers", [1, 100])
async def test_an_event_in_a_group_keeps_six_tracked_objects_and_no_cycle(
    workers: int,
) -> None:
    # Per event: its two history snapshots (STARTED, COMPLETED: object and field dict
    # each) and its result (object and field dict).
    state = ExecutionState(telemetry=False)
    await _group(state, _events(ECHO, state, 10), workers)
    factories = _events(ECHO, state, N)
    async with census() as counted:
        results = await _group(state, factories, workers)
    assert [r.result for r in results] == list(range(N))
    assert len(state.history.get_event_list()) == 2 * (N + 10) + 4  # + two groups' events
    assert counted.alive / N <= 6 + TOLERANCE
    assert counted.cyclic == 0


async def test_an_event_called_alone_keeps_six_tracked_objects_and_no_cycle() -> None:
    state = ExecutionState(telemetry=False)
    calls = _events(ECHO, state, N + 10)
    for call in calls[:10]:
        await call()
    results: list[ExecutionResult[Any]] = []
    async with census() as counted:
        for call in calls[10:]:
            results.append(await call())
    assert [r.result for r in results] == list(range(10, N + 10))
    assert counted.alive / N <= 6 + TOLERANCE
    assert counted.cyclic == 0


async def test_failed_events_leave_no_cycle() -> None:
    # A failure keeps its exception (and traceback) on the result: still no cycle.
    state = ExecutionState(telemetry=False)
    await _group(state, _events(BOOM, state, 10), 4)
    factories = _events(BOOM, state, 200)
    async with census() as counted:
        results = await _group(state, factories, 4)
    assert [r.error_message for r in results[:2]] == ["item 0 failed", "item 1 failed"]
    assert not any(r.ok for r in results)
    assert counted.cyclic == 0


async def test_full_telemetry_leaves_no_cycle_per_event() -> None:
    # Spans, context tokens and metric updates of every event: exported spans are kept
    # by the exporter, nothing by a cycle.
    telemetry, exporter = _telemetry()
    state = ExecutionState(telemetry=telemetry)
    await _group(state, _events(ECHO, state, 10), 100)
    factories = _events(ECHO, state, 200)
    async with census() as counted:
        results = await _group(state, factories, 100)
    assert all(r.ok for r in results)
    assert len(exporter.get_finished_spans()) == (10 + 1) + (200 + 1)  # events and a span per group
    assert counted.cyclic == 0


async def test_assigning_to_a_result_leaves_the_other_results_alone() -> None:
    # The shared fields-set of core-built results is never written to: a result takes a
    # set of its own when one of its fields is assigned.
    state = ExecutionState(telemetry=False)
    results = await _group(state, [functools.partial(_value, i) for i in range(3)], 2)
    results[0].name = "renamed"
    results[1].metadata = {"k": 1}
    assert results[0].model_fields_set == {"name"}
    assert results[1].model_fields_set == {"metadata"}
    assert results[2].model_fields_set == set()
    assert results[2].model_dump(exclude_unset=True) == {}
    copied = results[2].model_copy(update={"ok": False})
    assert (copied.ok, copied.model_fields_set) == (False, {"ok"})
    assert results[2].model_fields_set == set() and results[2].ok
