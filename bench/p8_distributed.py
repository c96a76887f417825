"""P8: group items on other executors: a process pool and a Dask cluster of two workers.

CPU-bound items run in-process (the default asyncio executor, one core), through
``ProcessPoolItemExecutor(2)`` and through ``DaskExecutor`` on a LocalCluster of two
worker processes; then many trivial items measure what each remote path costs per item,
next to raw ``client.submit`` for Dask. Part of ``make bench`` (``python -m bench --only P8``);
also runs on its own: ``python -m bench.p8_distributed [--quick]``. Without
dask[distributed] installed its Dask rows are SKIP.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from typing import Any

from bench._common import (
    BenchResult,
    Config,
    Contender,
    installed,
    measured,
    median,
    paired_ratio,
    side_by_side,
    skipped,
    usable_cores,
)
from bench._cpu import calibrate_cpu, cpu_work
from rh_agents import ExecutionState
from rh_agents.executors import ProcessPoolItemExecutor

ID = "P8"
TITLE = "Process pool and Dask executors"
MEASURES = (
    "Speedup of a group of CPU-bound items (~50 ms of pure Python each) on "
    "ProcessPoolItemExecutor(2) and on DaskExecutor with a LocalCluster of 2 worker "
    "processes over the same group in-process; and the per-item cost of each remote path "
    "for trivial items, one at a time (round trip) and 16 at a time, next to raw "
    "client.submit."
)

WORKERS = 2
WORK_S = 0.050


async def cpu_item(iterations: int) -> int:
    """A CPU-bound group item (top-level, so both executors ship it by reference)."""
    return cpu_work(iterations)


async def noop_item(i: int) -> int:
    return i


def _noop(i: int) -> int:
    return i


async def _group(executor: Any, factories: list[Any], max_workers: int) -> list[Any]:
    state = ExecutionState(telemetry=False)
    async with state.parallel(max_workers=max_workers, executor=executor) as p:
        for factory in factories:
            p.add(factory)
        results = await p.gather()
    bad = [r for r in results if not r.ok]
    assert not bad, bad[0].error_message
    return [r.result for r in results]


def _timed(executor: Any, factories: list[Any], max_workers: int, expected: list[Any]) -> Contender:
    async def run_group() -> float:
        start = time.perf_counter()
        values = await _group(executor, factories, max_workers)
        took = time.perf_counter() - start
        assert values == expected
        return took

    return run_group


async def _measure(cfg: Config, result: BenchResult) -> None:
    items = cfg.pick(4, 8)
    trivial = cfg.pick(50, 200)
    rounds = cfg.n_rounds(2, 5)
    iterations = calibrate_cpu(WORK_S)
    cpu = [functools.partial(cpu_item, iterations + i) for i in range(items)]
    cpu_expected = [cpu_work(iterations + i) for i in range(items)]
    noops = [functools.partial(noop_item, i) for i in range(trivial)]
    contenders: dict[str, Contender] = {"in-process": _timed(None, cpu, WORKERS, cpu_expected)}
    overhead: dict[str, Contender] = {
        "asyncio x1": _timed(None, noops, 1, list(range(trivial))),
        "asyncio x16": _timed(None, noops, 16, list(range(trivial))),
    }
    pool = ProcessPoolItemExecutor(WORKERS)
    have_dask = installed("distributed")
    cluster: Any = None
    client: Any = None
    try:
        # Start every worker process (and its imports) before anything is timed.
        warm = [functools.partial(asyncio.sleep, 0.3) for _ in range(WORKERS)]
        await _group(pool, warm, WORKERS)
        contenders["process pool"] = _timed(pool, cpu, WORKERS, cpu_expected)
        overhead["process x1"] = _timed(pool, noops, 1, list(range(trivial)))
        overhead["process x16"] = _timed(pool, noops, 16, list(range(trivial)))
        if have_dask:
            from distributed import Client, LocalCluster

            from rh_agents.executors import DaskExecutor

            cluster = await LocalCluster(
                n_workers=WORKERS,
                threads_per_worker=1,
                processes=True,
                asynchronous=True,
                dashboard_address=None,
            )
            client = await Client(cluster, asynchronous=True)
            dask = DaskExecutor(client)
            await _group(dask, warm, WORKERS)
            contenders["dask"] = _timed(dask, cpu, WORKERS, cpu_expected)
            overhead["dask x1"] = _timed(dask, noops, 1, list(range(trivial)))
            overhead["dask x16"] = _timed(dask, noops, 16, list(range(trivial)))

            async def raw_submit() -> float:
                start = time.perf_counter()
                for i in range(trivial):
                    assert await client.submit(_noop, i, pure=False) == i
                return time.perf_counter() - start

            overhead["raw dask x1"] = raw_submit
        cpu_times = await side_by_side(contenders, rounds)
        overhead_times = await side_by_side(overhead, rounds)
    finally:
        if client is not None:
            await client.close()
        if cluster is not None:
            await cluster.close()
        await pool.aclose()

    cores = usable_cores()
    result.data = {
        "cores": cores,
        "items": items,
        "trivial_items": trivial,
        "iterations": iterations,
        "cpu_seconds": cpu_times,
        "overhead_seconds": overhead_times,
    }
    base = median(cpu_times["in-process"])
    for name, label in (
        ("process pool", "ProcessPoolItemExecutor(2)"),
        ("dask", "Dask, 2 workers"),
    ):
        case = f"{items} CPU-bound items: in-process / {label}"
        if name not in cpu_times:
            result.rows.append(skipped(case, "dask[distributed] not installed"))
            continue
        result.rows.append(
            measured(
                case,
                paired_ratio(cpu_times["in-process"], cpu_times[name]),
                "x",
                None,
                f"in-process {base * 1e3:.0f} ms, {name} {median(cpu_times[name]) * 1e3:.0f} "
                f"ms on {cores} cores (at most {min(cores, WORKERS)}x attainable)",
            )
        )

    def per_item(name: str, baseline: str) -> float:
        extra = [a - b for a, b in zip(overhead_times[name], overhead_times[baseline], strict=True)]
        return median(extra) / trivial * 1e6

    for path in ("process", "dask"):
        for width in ("x1", "x16"):
            case = f"{path} path per trivial item, {width[1:]} at a time (minus asyncio)"
            key = f"{path} {width}"
            if key not in overhead_times:
                result.rows.append(skipped(case, "dask[distributed] not installed"))
                continue
            result.rows.append(
                measured(
                    case,
                    per_item(key, f"asyncio {width}"),
                    "µs/item",
                    None,
                    f"{trivial} no-op items: {median(overhead_times[key]) * 1e3:.0f} ms vs "
                    f"{median(overhead_times[f'asyncio {width}']) * 1e3:.1f} ms in-process",
                )
            )
    if "raw dask x1" in overhead_times:
        raw = median(overhead_times["raw dask x1"]) / trivial * 1e6
        result.rows.append(
            measured(
                "dask path / raw client.submit, 1 at a time",
                paired_ratio(overhead_times["dask x1"], overhead_times["raw dask x1"]),
                "x",
                None,
                "the rh_agents group, history and item serialization on top of what Dask "
                "itself costs per round trip",
            )
        )
        result.rows.append(
            measured(
                "raw client.submit round trip per item (reference)",
                raw,
                "µs/item",
                None,
                "what Dask itself costs; the rh_agents path adds the group, history and "
                "serialization of the item and its outcome on top",
            )
        )
    else:
        for case in (
            "dask path / raw client.submit, 1 at a time",
            "raw client.submit round trip per item (reference)",
        ):
            result.rows.append(skipped(case, "dask[distributed] not installed"))
    result.notes.append(
        "Both remote executors keep the group in the coordinator and ship only the work. "
        "The process pool pays a pickle round trip through a pipe; Dask pays a scheduler "
        "round trip (client -> scheduler -> worker -> client), so it suits items that run "
        "for tens of milliseconds or more, not trivial ones."
    )


def run(cfg: Config) -> BenchResult:
    result = BenchResult(ID, TITLE, MEASURES)
    asyncio.run(_measure(cfg, result))
    return result


def _main(argv: list[str]) -> int:
    from bench._common import format_value

    result = run(Config(quick="--quick" in argv))
    width = max(len(row.case) for row in result.rows)
    print(f"{result.id} {result.title}")
    for row in result.rows:
        value = format_value(row.value, row.unit) if row.value is not None else row.status
        print(f"  {row.case:<{width}}  {value:>14}  {row.detail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
