"""The collector's first threshold, an application's choice, measured.

``python -m bench.gc_tuning [--events N] [--rounds R] [--threshold T]``

A large group keeps its history alive (two entries per event), so the cyclic garbage
collector's collections walk more objects as the run grows, and SDK spans waiting for
their export batch start extra full collections (docs/performance.md). rh_agents never
changes the collector's settings: they are process-wide, the application's to choose.
This measures what raising the first generation's threshold
(``gc.set_threshold(T)``, default 700) buys: one group of ``N`` trivial events at
W=100, with and without full telemetry (SDK tracing into an exporter that keeps no
span, Prometheus metrics into a private registry), the two settings alternating in one
process for ``R`` rounds; per-event wall time, the collector's time per event
(``gc.callbacks``) and the ratio tuned / default, medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics

from bench import competitors as c
from bench._common import timed_run
from bench._telemetry import full_telemetry
from bench.workloads import ECHO, event_factories
from rh_agents import ExecutionState

WORKERS = 100


async def _one(events: int, telemetry: bool) -> tuple[float, float]:
    """Seconds per event of one group, and the collector's seconds per event."""
    tel, sdk = full_telemetry() if telemetry else (False, None)
    state = ExecutionState(telemetry=tel)
    factories = event_factories(ECHO, state, list(range(events)))
    gc.collect()  # the previous group's garbage, not on this one's clock
    results, took, collected = await timed_run(
        lambda: c.rh_group(state, factories, WORKERS), sdk.flush if sdk else None
    )
    if sdk is not None:
        assert sdk.exported() == events + 1  # every span, the group's included
        sdk.close()
    assert len(results) == events and all(r.ok for r in results)
    return took / events, collected / events


async def _measure(
    events: int, rounds: int, threshold: int
) -> dict[tuple[bool, str], list[tuple[float, float]]]:
    default = gc.get_threshold()
    tuned = (threshold, default[1], default[2])
    runs: dict[tuple[bool, str], list[tuple[float, float]]] = {}
    try:
        for _ in range(rounds):
            for telemetry in (False, True):
                for name, setting in (("default", default), ("tuned", tuned)):
                    gc.set_threshold(*setting)
                    runs.setdefault((telemetry, name), []).append(await _one(events, telemetry))
    finally:
        gc.set_threshold(*default)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gc_tuning", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="events per group")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--threshold", type=int, default=10_000, help="the tuned threshold")
    args = parser.parse_args(argv)
    if args.events < 1 or args.rounds < 1 or args.threshold < 1:
        parser.error("--events, --rounds and --threshold must be at least 1")
    default = gc.get_threshold()
    runs = asyncio.run(_measure(args.events, args.rounds, args.threshold))
    print(
        f"{args.events:,} trivial events, W={WORKERS}, {args.rounds} round(s); collector "
        f"thresholds {default} vs ({args.threshold}, {default[1]}, {default[2]})"
    )
    for telemetry in (False, True):
        label = "full telemetry" if telemetry else "no telemetry  "
        base, tuned = runs[(telemetry, "default")], runs[(telemetry, "tuned")]
        ratio = statistics.median(t[0] / b[0] for t, b in zip(tuned, base, strict=True))
        print(
            f"{label}  default {statistics.median(b[0] for b in base) * 1e6:6.1f} µs/event "
            f"(collector {statistics.median(b[1] for b in base) * 1e6:4.1f})  "
            f"tuned {statistics.median(t[0] for t in tuned) * 1e6:6.1f} µs/event "
            f"(collector {statistics.median(t[1] for t in tuned) * 1e6:4.1f})  "
            f"tuned / default {ratio:.2f}x"
        )


if __name__ == "__main__":
    main()
