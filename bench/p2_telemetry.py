"""P2: what full telemetry costs per event, against a hand-written floor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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
    timed_run,
)
from bench._telemetry import (
    DEFAULT,
    DEFAULT_METRICS_ONLY,
    TRACING_ONLY,
    Floor,
    SdkTracing,
    variants,
)
from bench.workloads import ECHO, event_factories, trivial_factories
from rh_agents import ExecutionState

ID = "P2"
TITLE = "Full telemetry per event"
MEASURES = (
    "Wall time per trivial ExecutionEvent in a group with SDK tracing (batch processor, "
    "an exporter that counts spans and keeps none) and Prometheus metrics on, vs a "
    "raw-asyncio floor doing only the essential work (one span, four metric updates, one "
    "history append); spans flushed and counted."
)

VS_FLOOR = Target("<=", 1.3)
GC_SHARE = Target("<", 5.0, "%")
NOOP_TRACING = Target("<=", 1.05)
WORKERS = 100


def _rh(
    label: str,
    make: Callable[..., tuple[Any, Any]],
    n: int,
    exported: dict[str, list[int]],
    gc_share: dict[str, list[float]],
) -> Contender:
    async def run() -> float:
        telemetry, sdk = make()
        state = ExecutionState() if telemetry is None else ExecutionState(telemetry=telemetry)
        factories = event_factories(ECHO, state, list(range(n)))
        results, took, collected = await timed_run(
            lambda: c.rh_group(state, factories, WORKERS), sdk.flush if sdk else None
        )
        gc_share.setdefault(label, []).append(collected / took * 100.0)
        assert len(results) == n and all(r.ok for r in results)
        if sdk is not None:
            exported.setdefault(label, []).append(sdk.exported())
            sdk.close()
        return took

    return run


def _floor(
    label: str,
    n: int,
    telemetry: bool,
    exported: dict[str, list[int]],
    gc_share: dict[str, list[float]],
) -> Contender:
    async def run() -> float:
        sdk = SdkTracing() if telemetry else None
        floor = Floor(sdk)
        factories = trivial_factories(n)
        results, took, collected = await timed_run(
            lambda: floor.run(factories, WORKERS, telemetry), sdk.flush if sdk else None
        )
        gc_share.setdefault(label, []).append(collected / took * 100.0)
        assert len(results) == n and len(floor.history) == n
        if sdk is not None:
            exported.setdefault(label, []).append(sdk.exported())
            sdk.close()
        return took

    return run


FULL = "full: SDK tracing + metrics"
FLOOR = "floor: raw asyncio, span + 4 metrics + history"
BARE = "floor: raw asyncio, history append only"


def run(cfg: Config) -> BenchResult:
    result = BenchResult(ID, TITLE, MEASURES)
    n = cfg.pick(2_000, 10_000)
    rounds = cfg.n_rounds(3, 5)
    exported: dict[str, list[int]] = {}
    gc_share: dict[str, list[float]] = {}
    contenders: dict[str, Contender] = {
        f"rh_agents, {label}": _rh(f"rh_agents, {label}", make, n, exported, gc_share)
        for label, make in variants().items()
    }
    contenders[FLOOR] = _floor(FLOOR, n, True, exported, gc_share)
    contenders[BARE] = _floor(BARE, n, False, exported, gc_share)
    times = asyncio.run(side_by_side(contenders, rounds))
    exported = {k: v[-rounds:] for k, v in exported.items()}  # drop the warm-up's counts
    gc_share = {k: v[-rounds:] for k, v in gc_share.items()}
    per_event = {name: median(t) / n * 1e6 for name, t in times.items()}
    result.data = {"n": n, "max_workers": WORKERS, "seconds": times, "us_per_event": per_event}
    result.data["spans_exported"] = exported
    result.data["gc_percent"] = gc_share
    full = times[f"rh_agents, {FULL}"]
    result.rows.append(
        measured(
            f"{n:,} events, W={WORKERS}: rh_agents full telemetry / floor",
            paired_ratio(full, times[FLOOR]),
            "x",
            VS_FLOOR,
            f"rh_agents {per_event[f'rh_agents, {FULL}']:.1f} µs/event, "
            f"floor {per_event[FLOOR]:.1f} µs/event",
        )
    )
    for label, target in ((f"rh_agents, {FULL}", GC_SHARE), (FLOOR, None)):
        result.rows.append(
            measured(
                f"{label.split(',')[0].split(':')[0]}: time in the garbage collector",
                median(gc_share[label]),
                "%",
                target,
                "gc.callbacks, same runs; rounds " + ", ".join(f"{g:.1f}" for g in gc_share[label]),
            )
        )
    expected = n + 1  # the events' spans and the group's
    for label in (f"rh_agents, {FULL}", FLOOR):
        counts = exported.get(label, [0])
        result.rows.append(
            measured(
                f"spans exported by {label.split(',')[0].split(':')[0]} (fewest of "
                f"{len(counts)} runs)",
                float(min(counts)),
                "spans",
                Target("==", float(expected), "spans"),
                f"expected {expected:,} = {n:,} events + 1 group",
            )
        )
    # Tracing through the global provider while the application has set none (the API's
    # no-op proxy): what every ExecutionState() pays by default. Against the same
    # metrics without tracing it is tracing's own cost; against telemetry=False, the
    # whole default (the Prometheus metrics are the part that costs).
    default = times[f"rh_agents, {DEFAULT}"]
    result.rows.append(
        measured(
            f"{n:,} events: default telemetry / metrics only (tracing's cost, no-op provider)",
            paired_ratio(default, times[f"rh_agents, {DEFAULT_METRICS_ONLY}"]),
            "x",
            NOOP_TRACING,
            "ExecutionState() (API's no-op global provider) vs Telemetry(tracing=False), "
            "both counting into the default registry",
        )
    )
    result.rows.append(
        measured(
            f"{n:,} events: tracing only, no-op provider / telemetry=False",
            paired_ratio(times[f"rh_agents, {TRACING_ONLY}"], times["rh_agents, no telemetry"]),
            "x",
            None,
            "Telemetry(metrics=False): the hooks run, nothing is recorded",
        )
    )
    result.rows.append(
        measured(
            f"{n:,} events: default telemetry / telemetry=False",
            paired_ratio(default, times["rh_agents, no telemetry"]),
            "x",
            None,
            "the default's Prometheus metrics (default registry), no spans",
        )
    )
    none = per_event["rh_agents, no telemetry"]
    for label in variants():
        us = per_event[f"rh_agents, {label}"]
        extra = "" if label == "no telemetry" else f"; {us - none:+.1f} µs over no telemetry"
        result.rows.append(
            measured(f"rh_agents per event, {label}", us, "µs/event", None, extra[2:])
        )
    for label in (FLOOR, BARE):
        result.rows.append(measured(f"per event, {label}", per_event[label], "µs/event"))
    result.notes.append(
        "Each run builds its own TracerProvider/registry outside the timed part; the timed "
        "part covers building the events, running the group and force_flush() of the span "
        "processor. Per-event figures are medians of the run's time divided by N."
    )
    return result
