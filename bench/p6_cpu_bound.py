"""P6: CPU-bound work: sequential vs a group running it in a process pool."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
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
    usable_cores,
)
from bench._cpu import calibrate_cpu, cpu_work
from bench.process_executor import ProcessCall, ProcessPoolItemExecutor
from rh_agents import ExecutionState

ID = "P6"
TITLE = "CPU-bound work"
MEASURES = (
    "Speedup of a group running 5 CPU-bound items (~50 ms of pure Python each) through a "
    "process-pool ItemExecutor (defined in bench/) over running them one after another; "
    "raw run_in_executor+gather on the same pool and the same group on the default asyncio "
    "executor alongside."
)

ITEMS = 5
WORK_S = 0.050


def run(cfg: Config) -> BenchResult:
    result = BenchResult(ID, TITLE, MEASURES)
    cores = usable_cores()
    workers = min(cores, ITEMS)
    iterations = calibrate_cpu(WORK_S)
    calls = [ProcessCall(cpu_work, (iterations + i,)) for i in range(ITEMS)]
    expected = [cpu_work(iterations + i) for i in range(ITEMS)]
    # spawn, not fork: P2 leaves span-exporter threads behind, and forking a process with
    # threads can deadlock the child.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        list(pool.map(cpu_work, [1] * workers))  # start every worker process now
        executor = ProcessPoolItemExecutor(pool)

        async def sequential() -> float:
            start = time.perf_counter()
            values = [call.fn(*call.args) for call in calls]
            took = time.perf_counter() - start
            assert values == expected
            return took

        def grouped(item_executor: Any) -> Contender:
            async def run_group() -> float:
                state = ExecutionState(telemetry=False)
                start = time.perf_counter()
                async with state.parallel(max_workers=workers, executor=item_executor) as p:
                    for call in calls:
                        p.add(call)
                    results = await p.gather()
                took = time.perf_counter() - start
                assert [r.result for r in results] == expected
                return took

            return run_group

        async def raw_pool() -> float:
            loop = asyncio.get_running_loop()
            start = time.perf_counter()
            values = await asyncio.gather(
                *[loop.run_in_executor(pool, call.fn, *call.args) for call in calls]
            )
            took = time.perf_counter() - start
            assert list(values) == expected
            return took

        contenders = {
            "sequential": sequential,
            "process pool": grouped(executor),
            "raw pool": raw_pool,
            "asyncio": grouped(None),
        }
        times = asyncio.run(side_by_side(contenders, cfg.n_rounds(3, 7)))
    speedup = paired_ratio(times["sequential"], times["process pool"])
    attainable = ITEMS / math.ceil(ITEMS / workers)  # indivisible items on `workers` cores
    # 0.9 of what the machine allows: 5 equal items on 2 cores run in 3 waves (5/3 = 1.67x).
    target = 0.9 * attainable
    result.data = {
        "cores": cores,
        "pool_workers": workers,
        "iterations": iterations,
        "seconds": times,
        "attainable_speedup": attainable,
    }
    seq = median(times["sequential"])
    result.rows.append(
        measured(
            f"{ITEMS} items on {cores} cores: sequential / process-pool group",
            speedup,
            "x",
            Target(">=", round(target, 2)),
            f"sequential {seq * 1e3:.0f} ms, process pool "
            f"{median(times['process pool']) * 1e3:.0f} ms; at most "
            f"{attainable:.2f}x is attainable here ({ITEMS} equal items in "
            f"{math.ceil(ITEMS / workers)} waves of {workers})",
        )
    )
    raw_speedup = paired_ratio(times["sequential"], times["raw pool"])
    result.rows.append(
        measured(
            "rh_agents process-pool group / raw run_in_executor+gather (speedup kept)",
            speedup / raw_speedup,
            "x",
            Target(">=", 0.9),
            f"the same calls through the same pool without rh_agents: {raw_speedup:.2f}x "
            f"over sequential ({median(times['raw pool']) * 1e3:.0f} ms); this is what the "
            "machine attains",
        )
    )
    result.rows.append(
        measured(
            "sequential / asyncio group (no process pool)",
            paired_ratio(times["sequential"], times["asyncio"]),
            "x",
            None,
            "async alone gives no speedup: the items hold the event loop",
        )
    )
    if cores < ITEMS:
        result.notes.append(
            f"With {cores} cores, {ITEMS} equal items need {math.ceil(ITEMS / workers)} "
            f"waves, so the speedup cannot exceed {attainable:.2f}x; the target "
            f"0.9 x min(cores, {ITEMS}) = {target:.2f}x assumes divisible work. The second "
            "row judges rh_agents against the same pool driven by raw asyncio, measured in "
            "the same rounds, i.e. against what this machine attains (a shared VM's two "
            "cores rarely give a full 2x)."
        )
    return result
