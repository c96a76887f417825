"""P1: the cost of the group machinery itself, on work that costs nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from bench import competitors as c
from bench._common import (
    BenchResult,
    Config,
    Contender,
    Target,
    measured,
    median,
    paired_ratio,
    side_by_side,
    skipped,
    timed_run,
)
from bench.workloads import trivial_factories
from rh_agents import ExecutionState

ID = "P1"
TITLE = "Group overhead"
MEASURES = (
    "Wall time to run N trivially-completing coroutine factories through state.parallel() "
    "(no telemetry) vs raw asyncio.Semaphore+gather, aiometer.run_all and an anyio task "
    "group with a CapacityLimiter, at the same max_workers."
)

VS_RAW = Target("<=", 1.0)
VS_LIBS = Target(">=", 5.0)
GC_SHARE = Target("<", 5.0, "%")


def _contenders(n: int, workers: int, gc_share: dict[str, list[float]]) -> dict[str, Contender]:
    factories = trivial_factories(n)

    async def rh() -> float:
        state = ExecutionState(telemetry=False)
        results, took, collected = await timed_run(lambda: c.rh_group(state, factories, workers))
        gc_share.setdefault("rh_agents", []).append(collected / took * 100.0)
        assert len(results) == n and results[-1].result == n - 1
        return took

    def timed(fn: Any, name: str) -> Contender:
        async def run() -> float:
            results, took, collected = await timed_run(lambda: fn(factories, workers))
            gc_share.setdefault(name, []).append(collected / took * 100.0)
            assert len(results) == n and results[-1] == n - 1
            return took

        return run

    found: dict[str, Contender] = {"rh_agents": rh, "raw": timed(c.raw_gather, "raw")}
    if c.HAVE_AIOMETER:
        found["aiometer"] = timed(c.aiometer_run_all, "aiometer")
    if c.HAVE_ANYIO:
        found["anyio"] = timed(c.anyio_limited, "anyio")
    return found


def run(cfg: Config) -> BenchResult:
    result = BenchResult(ID, TITLE, MEASURES)
    small = cfg.pick(2_000, 10_000)
    large = cfg.pick(10_000, 100_000)
    configs = [
        (small, 5, cfg.n_rounds(3, 5)),
        (small, 100, cfg.n_rounds(3, 5)),
        (large, 100, cfg.n_rounds(1, 2)),
    ]
    for n, workers, rounds in configs:
        gc_share: dict[str, list[float]] = {}
        times = asyncio.run(
            side_by_side(_contenders(n, workers, gc_share), rounds, warmup=1 if n == small else 0)
        )
        gc_share = {k: v[-rounds:] for k, v in gc_share.items()}  # without the warm-up
        label = f"{n:,} items, W={workers}"
        rh = times["rh_agents"]
        per_item = {name: median(t) / n * 1e6 for name, t in times.items()}
        result.data[label] = {
            "seconds": times,
            "us_per_item": per_item,
            "gc_percent": gc_share,
        }
        detail = " | ".join(f"{name} {us:.2f} µs/item" for name, us in per_item.items())
        result.rows.append(
            measured(
                f"{label}: rh_agents / raw Semaphore+gather",
                paired_ratio(rh, times["raw"]),
                "x",
                VS_RAW,
                detail,
            )
        )
        for name, title in (("aiometer", "aiometer.run_all"), ("anyio", "anyio TaskGroup")):
            case = f"{label}: {title} / rh_agents (rh_agents faster by)"
            if name in times:
                result.rows.append(measured(case, paired_ratio(times[name], rh), "x", VS_LIBS))
            else:
                result.rows.append(skipped(case, f"{name} not installed", VS_LIBS))
        if n == large:
            result.rows.append(
                measured(
                    f"{label}: rh_agents' time in the garbage collector",
                    median(gc_share["rh_agents"]),
                    "%",
                    GC_SHARE,
                    "gc.callbacks, same runs; the others': "
                    + ", ".join(
                        f"{name} {median(g):.1f} %"
                        for name, g in gc_share.items()
                        if name != "rh_agents"
                    ),
                )
            )
    result.notes.append(
        "Timed from opening the group (or creating the tasks) to having all results; the "
        "factories are built beforehand and shared by all contenders. rh_agents returns one "
        "ExecutionResult per item, the others the bare values."
    )
    return result
