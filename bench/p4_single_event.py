"""P4: the fixed cost of a group around a single event."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench._common import (
    BenchResult,
    Config,
    Contender,
    Target,
    measured,
    median,
    paired_ratio,
    side_by_side,
)
from bench.workloads import SPIN
from rh_agents import ExecutionEvent, ExecutionState

ID = "P4"
TITLE = "Single-event group"
MEASURES = (
    "Wall time of one 1 ms ExecutionEvent (busy-wait, so the duration is exact) run alone "
    "vs inside a one-item state.parallel() group, no telemetry; overhead in %. Each "
    "measurement is a tight loop of calls on one state, the two loops alternate."
)

WORK_S = 0.001
LOOP = 20
UNDER_5 = Target("<", 5.0, "%")


def _contenders(cpu: dict[str, list[float]]) -> dict[str, Contender]:
    """The two loops; each also notes the CPU time of its thread per call in ``cpu``."""

    async def alone() -> float:
        state = ExecutionState(telemetry=False)
        cpu_start, start = time.thread_time(), time.perf_counter()
        for _ in range(LOOP):
            result: Any = await ExecutionEvent(actor=SPIN)(WORK_S, None, state)
        took = time.perf_counter() - start
        cpu.setdefault("alone", []).append((time.thread_time() - cpu_start) / LOOP)
        assert result.ok
        return took / LOOP

    async def grouped() -> float:
        state = ExecutionState(telemetry=False)
        cpu_start, start = time.thread_time(), time.perf_counter()
        for _ in range(LOOP):
            async with state.parallel(max_workers=1, name="single") as p:
                p.add(lambda: ExecutionEvent(actor=SPIN)(WORK_S, None, state))
                results = await p.gather()
        took = time.perf_counter() - start
        cpu.setdefault("group", []).append((time.thread_time() - cpu_start) / LOOP)
        assert results[0].ok
        return took / LOOP

    return {"alone": alone, "group": grouped}


def run(cfg: Config) -> BenchResult:
    result = BenchResult(ID, TITLE, MEASURES)
    rounds = cfg.n_rounds(10, 40)
    cpu: dict[str, list[float]] = {}
    times = asyncio.run(side_by_side(_contenders(cpu), rounds, warmup=5, collect=False))
    cpu = {key: values[-rounds:] for key, values in cpu.items()}  # without the warm-up
    alone, group = median(times["alone"]), median(times["group"])
    overhead = (paired_ratio(times["group"], times["alone"]) - 1.0) * 100.0
    result.data = {"rounds": rounds, "seconds": times, "cpu_seconds": cpu}
    result.rows.append(
        measured(
            "1 ms event: group / alone - 1",
            overhead,
            "%",
            UNDER_5,
            f"alone {alone * 1e6:.0f} µs, in a group {group * 1e6:.0f} µs "
            f"(+{(group - alone) * 1e6:.0f} µs); fastest runs: alone "
            f"{min(times['alone']) * 1e6:.0f} µs, in a group {min(times['group']) * 1e6:.0f} µs "
            f"(+{(min(times['group']) - min(times['alone'])) * 1e6:.0f} µs)",
        )
    )
    result.rows.append(measured("fixed cost of a one-item group", (group - alone) * 1e6, "µs"))
    # The same difference in CPU time of this thread: what the group itself computes,
    # without the time the other tenants of a loaded machine take from the process.
    cpu_cost = median([g - a for g, a in zip(cpu["group"], cpu["alone"], strict=True)])
    result.rows.append(
        measured(
            "fixed cost of a one-item group, CPU time / the 1 ms event",
            cpu_cost / WORK_S * 100.0,
            "%",
            None,
            f"{cpu_cost * 1e6:.0f} µs of CPU per group (median of the pairs' differences)",
        )
    )
    result.notes.append(
        f"{rounds} alternating pairs of tight loops ({LOOP} calls each, one fresh "
        "ExecutionState per loop, built outside the timed part); times are per call, the "
        "ratio the median of the pairs' ratios; no gc.collect() between runs."
    )
    return result
