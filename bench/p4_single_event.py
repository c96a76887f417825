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
    "vs inside a one-item state.parallel() group, no telemetry; overhead in %."
)

WORK_S = 0.001
UNDER_5 = Target("<", 5.0, "%")


def _contenders() -> dict[str, Contender]:
    async def alone() -> float:
        state = ExecutionState(telemetry=False)
        start = time.perf_counter()
        result: Any = await ExecutionEvent(actor=SPIN)(WORK_S, None, state)
        took = time.perf_counter() - start
        assert result.ok
        return took

    async def grouped() -> float:
        state = ExecutionState(telemetry=False)
        start = time.perf_counter()
        async with state.parallel(max_workers=1, name="single") as p:
            p.add(lambda: ExecutionEvent(actor=SPIN)(WORK_S, None, state))
            results = await p.gather()
        took = time.perf_counter() - start
        assert results[0].ok
        return took

    return {"alone": alone, "group": grouped}


def run(cfg: Config) -> BenchResult:
    result = BenchResult(ID, TITLE, MEASURES)
    rounds = cfg.n_rounds(100, 400)
    times = asyncio.run(side_by_side(_contenders(), rounds, warmup=5, collect=False))
    alone, group = median(times["alone"]), median(times["group"])
    overhead = (paired_ratio(times["group"], times["alone"]) - 1.0) * 100.0
    result.data = {"rounds": rounds, "seconds": times}
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
    result.notes.append(
        f"{rounds} alternating pairs, each on a fresh ExecutionState (built outside the "
        "timed part); no gc.collect() between runs."
    )
    return result
