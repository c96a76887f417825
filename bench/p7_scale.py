"""P7: events per second as groups grow, telemetry on and off."""

from __future__ import annotations

import asyncio
import time

from bench import competitors as c
from bench._common import (
    BenchResult,
    Config,
    Contender,
    GcTimer,
    Target,
    measured,
    median,
    side_by_side,
)
from bench._telemetry import full_telemetry
from bench.workloads import ECHO, event_factories
from rh_agents import ExecutionState

ID = "P7"
TITLE = "Scale"
MEASURES = (
    "Throughput (events/s) of one group of N trivial ExecutionEvents at max_workers=100, "
    "telemetry off and on (SDK tracing + metrics, spans flushed and counted); per-event "
    "cost should stay flat as N grows."
)

WORKERS = 100
FLAT = Target("<=", 1.15)


def _contender(n: int, telemetry: bool, exported: list[int], gc_s: list[float]) -> Contender:
    async def run() -> float:
        tel, sdk = full_telemetry() if telemetry else (False, None)
        state = ExecutionState(telemetry=tel)
        factories = event_factories(ECHO, state, list(range(n)))
        with GcTimer() as collector:
            start = time.perf_counter()
            results = await c.rh_group(state, factories, WORKERS)
            if sdk is not None:
                sdk.flush()
            took = time.perf_counter() - start
        gc_s.append(collector.seconds)
        assert len(results) == n
        if sdk is not None:
            exported.append(sdk.exported())
            sdk.close()
        return took

    return run


def run(cfg: Config) -> BenchResult:
    result = BenchResult(ID, TITLE, MEASURES)
    sizes = cfg.pick(
        [(1_000, 3), (4_000, 2), (10_000, 1)],
        [(1_000, 7), (10_000, 3), (100_000, 2)],
    )
    per_event: dict[tuple[int, bool], float] = {}
    spans: dict[int, list[int]] = {}
    for n, rounds in sizes:
        exported: list[int] = []
        gc_s: dict[str, list[float]] = {"off": [], "on": []}
        contenders = {
            "off": _contender(n, False, [], gc_s["off"]),
            "on": _contender(n, True, exported, gc_s["on"]),
        }
        times = asyncio.run(
            side_by_side(contenders, cfg.rounds or rounds, warmup=1 if n <= 1_000 else 0)
        )
        spans[n] = exported[-len(times["on"]) :]
        gc_s = {key: values[-len(times[key]) :] for key, values in gc_s.items()}
        result.data[str(n)] = {"seconds": times, "gc_seconds": gc_s, "spans_exported": spans[n]}
        for key, on in (("off", False), ("on", True)):
            seconds = median(times[key])
            per_event[(n, on)] = seconds / n
            result.rows.append(
                measured(
                    f"{n:,} events, telemetry {key}",
                    n / seconds,
                    "ev/s",
                    None,
                    f"{seconds / n * 1e6:.1f} µs/event, of which {median(gc_s[key]) / n * 1e6:.1f}"
                    " µs in the garbage collector",
                )
            )
    small, large = sizes[0][0], sizes[-1][0]
    for key, on in (("off", False), ("on", True)):
        result.rows.append(
            measured(
                f"µs/event at {large:,} / at {small:,} events, telemetry {key}",
                per_event[(large, on)] / per_event[(small, on)],
                "x",
                FLAT,
            )
        )
    result.rows.append(
        measured(
            f"spans exported at {large:,} events (fewest of {len(spans[large])} runs)",
            float(min(spans[large])),
            "spans",
            Target("==", float(large + 1), "spans"),
        )
    )
    result.notes.append(
        "The timed part covers building the events, the group and force_flush(); every "
        "event stays in the state's history (two snapshots each), as in a real run. The "
        "garbage collector's share is measured with gc.callbacks in the same runs: its full "
        "collections traverse every object still alive, the growing history included."
    )
    return result
