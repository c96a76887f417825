"""P5: memory per item, measured with tracemalloc."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

from bench import competitors as c
from bench._common import BenchResult, Config, Target, measured, median
from bench.workloads import ECHO, event_factories, trivial_factories
from rh_agents import ExecutionState

ID = "P5"
TITLE = "Memory per item"
MEASURES = (
    "Peak traced memory (tracemalloc) per item while a group of N factories runs, results "
    "kept, vs raw Semaphore+gather; and memory kept per ExecutionEvent by the history at "
    "growing N (O(n) check)."
)

WORKERS = 100
VS_RAW = Target("<=", 1.0)
FLAT = Target("<=", 1.1)

Prepared = Callable[[], Awaitable[Any]]


async def _measure(prepare: Callable[[], Prepared]) -> dict[str, int]:
    """Peak and retained bytes of one run; ``prepare`` builds its inputs before the
    baseline, so only what the run allocates is counted."""
    run = prepare()
    gc.collect()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    kept = await run()
    peak = tracemalloc.get_traced_memory()[1]
    gc.collect()  # what is left of the run besides its results is garbage, e.g. task cycles
    current = tracemalloc.get_traced_memory()[0]
    del kept
    gc.collect()
    without_results = tracemalloc.get_traced_memory()[0]
    return {
        "peak": peak - base,
        "retained": current - base,
        "retained_without_results": without_results - base,
    }


def _rh_factories(n: int) -> Prepared:
    factories = trivial_factories(n)
    state = ExecutionState(telemetry=False)

    async def run() -> Any:
        return await c.rh_group(state, factories, WORKERS)

    return run


def _raw_factories(n: int) -> Prepared:
    factories = trivial_factories(n)

    async def run() -> Any:
        return await c.raw_gather(factories, WORKERS)

    return run


def _rh_events(n: int, keep: list[ExecutionState]) -> Prepared:
    state = ExecutionState(telemetry=False)
    keep.append(state)  # the history must outlive the run to be counted as retained
    factories = event_factories(ECHO, state, list(range(n)))

    async def run() -> Any:
        return await c.rh_group(state, factories, WORKERS)

    return run


async def _series(make: Callable[[], Prepared], rounds: int) -> dict[str, float]:
    runs = [await _measure(make) for _ in range(rounds)]
    return {key: median([r[key] for r in runs]) for key in runs[0]}


def run(cfg: Config) -> BenchResult:
    result = BenchResult(ID, TITLE, MEASURES)
    sizes = [(cfg.pick(2_000, 10_000), cfg.n_rounds(2, 3)), (cfg.pick(20_000, 100_000), 1)]
    history_sizes = cfg.pick([500, 5_000], [1_000, 10_000, 100_000])
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        for n, rounds in sizes:
            rh = asyncio.run(_series(lambda n=n: _rh_factories(n), rounds))  # type: ignore[misc]
            raw = asyncio.run(_series(lambda n=n: _raw_factories(n), rounds))  # type: ignore[misc]
            result.data[f"factories {n}"] = {"rh_agents": rh, "raw": raw}
            result.rows.append(
                measured(
                    f"{n:,} factories, W={WORKERS}: peak per item, rh_agents / raw",
                    rh["peak"] / raw["peak"],
                    "x",
                    VS_RAW,
                    f"rh_agents {rh['peak'] / n:,.0f} B/item (results kept "
                    f"{rh['retained'] / n:,.0f} B/item); raw {raw['peak'] / n:,.0f} B/item "
                    f"(results kept {raw['retained'] / n:,.0f} B/item)",
                )
            )
        per_event: dict[int, float] = {}
        for n in history_sizes:
            keep: list[ExecutionState] = []
            found = asyncio.run(_series(lambda n=n, keep=keep: _rh_events(n, keep), 1))  # type: ignore[misc]
            keep.clear()
            per_event[n] = found["retained_without_results"] / n
            result.data[f"events {n}"] = found
            result.rows.append(
                measured(
                    f"{n:,} ExecutionEvents: history kept per event",
                    per_event[n],
                    "B/event",
                    None,
                    f"peak {found['peak'] / n:,.0f} B/event; with results kept "
                    f"{found['retained'] / n:,.0f} B/event",
                )
            )
        small, large = min(per_event), max(per_event)
        result.rows.append(
            measured(
                f"history per event at {large:,} / at {small:,} events (O(n): flat)",
                per_event[large] / per_event[small],
                "x",
                FLAT,
            )
        )
    finally:
        if not was_tracing:
            tracemalloc.stop()
    result.notes.append(
        "Peak is the highest traced memory during the run above the baseline taken after "
        "building the inputs (factories, state); results are held until the peak is read. "
        "One run per size at the largest sizes, the median of several otherwise. The history "
        "holds two snapshots per event (STARTED and COMPLETED) plus the group's two events."
    )
    return result
