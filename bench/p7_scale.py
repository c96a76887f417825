"""P7: events per second as groups grow, telemetry on and off."""

from __future__ import annotations

import asyncio
import gc

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
    timed_run,
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


def _contender(
    n: int, repeat: int, telemetry: bool, exported: list[int], gc_s: list[float]
) -> Contender:
    """``repeat`` groups of ``n`` events, each on a fresh state; returns seconds per group."""

    async def one() -> tuple[float, float]:
        tel, sdk = full_telemetry() if telemetry else (False, None)
        state = ExecutionState(telemetry=tel)
        factories = event_factories(ECHO, state, list(range(n)))
        results, took, collected = await timed_run(
            lambda: c.rh_group(state, factories, WORKERS), sdk.flush if sdk else None
        )
        assert len(results) == n
        if sdk is not None:
            exported.append(sdk.exported())
            sdk.close()
        return took, collected

    async def run() -> float:
        took = collected = 0.0
        for index in range(repeat):
            if index:
                gc.collect()  # the previous group's garbage, not on this one's clock
            group_s, gc_group_s = await one()
            took += group_s
            collected += gc_group_s
        gc_s.append(collected / repeat)
        return took / repeat

    return run


def run(cfg: Config) -> BenchResult:
    result = BenchResult(ID, TITLE, MEASURES)
    sizes = cfg.pick([1_000, 4_000, 10_000], [1_000, 10_000, 100_000])
    large = sizes[-1]
    rounds = cfg.n_rounds(2, 3)
    exported: dict[int, list[int]] = {n: [] for n in sizes}
    gc_s: dict[str, list[float]] = {}
    contenders: dict[str, Contender] = {}
    for n in sizes:
        # Smaller groups run several times per measurement (as many events as the largest
        # tenth), so a round's figures are not one short, noisy run.
        repeat = max(1, large // n // 10)
        for key, on in (("off", False), ("on", True)):
            label = f"{n} {key}"
            gc_s[label] = []
            contenders[label] = _contender(n, repeat, on, exported[n], gc_s[label])
    # Every size in every round, in a shuffled order: the flatness ratio compares sizes
    # measured under the same machine conditions, not minutes apart.
    times = asyncio.run(side_by_side(contenders, rounds, warmup=0))
    small = sizes[0]
    for n in sizes:
        result.data[str(n)] = {
            "seconds": {key: times[f"{n} {key}"] for key in ("off", "on")},
            "gc_seconds": {key: gc_s[f"{n} {key}"] for key in ("off", "on")},
            "spans_exported": exported[n],
        }
        for key in ("off", "on"):
            seconds = median(times[f"{n} {key}"])
            result.rows.append(
                measured(
                    f"{n:,} events, telemetry {key}",
                    n / seconds,
                    "ev/s",
                    None,
                    f"{seconds / n * 1e6:.1f} µs/event, of which "
                    f"{median(gc_s[f'{n} {key}']) / n * 1e6:.1f} µs in the garbage collector",
                )
            )
    for key in ("off", "on"):
        share = median(gc_s[f"{large} {key}"]) / median(times[f"{large} {key}"]) * 100
        result.rows.append(
            measured(
                f"µs/event at {large:,} / at {small:,} events, telemetry {key}",
                paired_ratio(times[f"{large} {key}"], times[f"{small} {key}"]) * small / large,
                "x",
                FLAT,
                "median over rounds of the round's ratio; the collector's share at "
                f"{large:,}: {share:.0f} %",
            )
        )
    spans = exported[large]
    result.rows.append(
        measured(
            f"spans exported at {large:,} events (fewest of {len(spans)} runs)",
            float(min(spans)),
            "spans",
            Target("==", float(large + 1), "spans"),
        )
    )
    result.notes.append(
        "The timed part covers building the events, the group and force_flush(); every "
        "event stays in the state's history (two snapshots each), as in a real run. All "
        "sizes run in every round, in a shuffled order; groups smaller than a tenth of the "
        "largest run several times per measurement. The garbage collector's share is "
        "measured with gc.callbacks in the same runs: its full collections traverse every "
        "object still alive, the growing history included."
    )
    return result
