"""Profiles of the benchmarks that miss a target: where the time (or memory) goes.

``python -m bench.profiling P2`` profiles one scenario; the runner calls
:func:`profile_miss` for every benchmark that missed a target (full mode). Time is
attributed by pyinstrument (sampling, little distortion) when installed and by cProfile
(deterministic, with call counts, but inflating small Python functions) always; the
event loop's idle wait (``epoll.poll``) is left out of the totals. Memory (P5) is
attributed by tracemalloc to the lines that allocated what the run keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import tempfile
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench import competitors as c
from bench._common import Config, GcTimer, Stopwatch, installed
from bench._telemetry import full_telemetry
from bench.workloads import ECHO, SLEEP, event_factories, trivial_factories
from rh_agents import ExecutionEvent, ExecutionState

Scenario = Callable[[Config], Coroutine[Any, Any, None]]

IDLE = ("epoll.poll", "{method 'poll' of 'select.epoll' objects}")


async def _p1(cfg: Config) -> None:
    await c.rh_group(
        ExecutionState(telemetry=False), trivial_factories(cfg.pick(5_000, 20_000)), 100
    )


async def _events_full_telemetry(n: int) -> None:
    telemetry, sdk = full_telemetry()
    state = ExecutionState(telemetry=telemetry)
    await c.rh_group(state, event_factories(ECHO, state, list(range(n))), 100)
    sdk.flush()
    sdk.close()


async def _p2(cfg: Config) -> None:
    await _events_full_telemetry(cfg.pick(2_000, 10_000))


async def _p3(cfg: Config) -> None:
    state = ExecutionState(telemetry=False)
    await c.rh_group(state, event_factories(SLEEP, state, [0.01] * 1_000), 50)


async def _p4(cfg: Config) -> None:
    state = ExecutionState(telemetry=False)
    for _ in range(cfg.pick(500, 2_000)):
        async with state.parallel(max_workers=1, name="single") as p:
            p.add(lambda state=state: ExecutionEvent(actor=ECHO)(None, None, state))
            await p.gather()


async def _p7(cfg: Config) -> None:
    await _events_full_telemetry(cfg.pick(5_000, 50_000))


async def _p9(cfg: Config) -> None:
    from rh_agents.state_backends import SQLiteStateBackend

    with tempfile.TemporaryDirectory(prefix="rh-profile-p9-") as tmp:
        backend = SQLiteStateBackend(Path(tmp) / "history.db")
        try:
            state = ExecutionState(telemetry=False, state_backend=backend)
            await c.rh_group(state, event_factories(ECHO, state, list(range(10_000))), 100)
            ExecutionState.load_from_state_id(state.state_id, backend)
        finally:
            backend.close()


SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "P1": ("rh_agents group of trivial factories, W=100, no telemetry", _p1),
    "P2": ("rh_agents group of trivial ExecutionEvents, W=100, full telemetry", _p2),
    "P3": ("rh_agents group of 1,000 ExecutionEvents sleeping 10 ms, W=50", _p3),
    "P4": ("one-item groups around a trivial ExecutionEvent, one after another", _p4),
    "P7": ("rh_agents group of many trivial ExecutionEvents, W=100, full telemetry", _p7),
    "P9": ("10,000 trivial ExecutionEvents with a SQLite journal, then their resume", _p9),
}


# ----------------------------------------------------------------------- areas


def area(path: str, function: str = "") -> str:
    """The package (or rh_agents module) a frame belongs to."""
    path = path.replace("\\", "/")
    if "/rh_agents/" in path:
        module = path.rsplit("/rh_agents/", 1)[1].removesuffix(".py").replace("/", ".")
        return f"rh_agents.{module}"
    for package in ("pydantic_core", "pydantic", "opentelemetry", "prometheus_client"):
        if f"/{package}/" in path or package in function:
            return "pydantic" if package.startswith("pydantic") else package
    if "/asyncio/" in path or "asyncio" in function or "_asyncio" in function:
        return "asyncio"
    if "/bench/" in path:
        return "bench (the workload)"
    if "contextvars" in function or "ContextVar" in function:
        return "contextvars"
    if path in ("~", "<built-in>", ""):
        return "builtins"
    return Path(path).stem if "/python3" in path else path


def _table(shares: dict[str, float], total: float, limit: int) -> list[str]:
    top = sorted(shares.items(), key=lambda kv: kv[1], reverse=True)[:limit]
    return [f"  {100 * value / total:5.1f} %  {name}" for name, value in top if value > 0]


# ----------------------------------------------------------------------- pyinstrument


def _pyinstrument(scenario: Scenario, cfg: Config, out: Path | None, key: str) -> list[str]:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    asyncio.run(scenario(cfg))
    profiler.stop()
    session = profiler.last_session
    if out is not None:
        (out / f"{key}.pyinstrument.txt").write_text(
            profiler.output_text(unicode=False, color=False, show_all=False)
        )
    own: dict[str, float] = defaultdict(float)
    by_area: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)
    stack: list[Any] = [session.root_frame()] if session is not None else []
    while stack:
        frame = stack.pop()
        stack.extend(frame.children)
        if frame.is_synthetic or frame.function in IDLE:
            continue
        name = f"{Path(frame.file_path or '?').name}:{frame.line_no} {frame.function}"
        own[name] += frame.total_self_time
        by_area[area(frame.file_path or "", frame.function)] += frame.total_self_time
        if "/rh_agents/" in (frame.file_path or ""):
            inclusive[name] += frame.time
    total = sum(own.values()) or 1.0
    return [
        f"pyinstrument (sampling every 0.5 ms): {total:.2f} s on CPU, idle wait excluded",
        "own time by package/module:",
        *_table(by_area, total, 10),
        "functions with the most own time:",
        *_table(own, total, 12),
        "rh_agents functions by inclusive time:",
        *_table(inclusive, total, 10),
    ]


# ----------------------------------------------------------------------- cProfile


def _cprofile(scenario: Scenario, cfg: Config, out: Path | None, key: str) -> list[str]:
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(scenario(cfg))
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    if out is not None:
        stats.sort_stats("tottime").print_stats(40)
        (out / f"{key}.cprofile.txt").write_text(stream.getvalue())
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    own: dict[str, float] = {}
    calls: dict[str, int] = {}
    by_area: dict[str, float] = defaultdict(float)
    for (path, line, function), (_cc, ncalls, tottime, _ct, _callers) in raw.items():
        if function in IDLE:
            continue
        name = f"{Path(path).name}:{line} {function}" if path != "~" else function
        own[name] = tottime
        calls[name] = ncalls
        by_area[area(path, function)] += tottime
    total = sum(own.values()) or 1.0
    top = sorted(own.items(), key=lambda kv: kv[1], reverse=True)[:12]
    return [
        f"cProfile: {total:.2f} s of own time, idle wait excluded (inflates small functions)",
        "own time by package/module:",
        *_table(by_area, total, 10),
        "functions with the most own time (calls):",
        *[f"  {100 * t / total:5.1f} %  {name} ({calls[name]:,})" for name, t in top],
    ]


# ----------------------------------------------------------------------- memory


def _memory(cfg: Config, out: Path | None) -> str:
    n = cfg.pick(5_000, 20_000)
    factories = trivial_factories(n)
    state = ExecutionState(telemetry=False)
    started = tracemalloc.is_tracing()
    if not started:
        tracemalloc.start(1)
    try:
        gc.collect()
        before = tracemalloc.take_snapshot()
        results = asyncio.run(c.rh_group(state, factories, 100))
        after = tracemalloc.take_snapshot()
    finally:
        if not started:
            tracemalloc.stop()
    diff = after.compare_to(before, "lineno")
    total = sum(d.size_diff for d in diff if d.size_diff > 0) or 1
    lines = [
        f"tracemalloc: memory kept after a {n:,}-item group of factories with its "
        f"{len(results):,} results held, {total / n:,.0f} B/item, by allocating line:",
    ]
    for d in diff[:10]:
        frame = d.traceback[0]
        lines.append(
            f"  {100 * d.size_diff / total:5.1f} %  {d.size_diff / n:7,.0f} B/item  "
            f"{Path(frame.filename).name}:{frame.lineno}"
        )
    text = "\n".join(lines)
    if out is not None:
        (out / "P5.tracemalloc.txt").write_text(text + "\n")
    return text


# ----------------------------------------------------------------------- entry points


def profile_miss(key: str, cfg: Config, out: Path | None = None) -> str:
    """A profile of benchmark ``key``'s rh_agents side, as text (files go to ``out``)."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if key == "P5":
        return _memory(cfg, out)
    if key not in SCENARIOS:
        return (
            f"{key} is not profiled: its wall time is spent in the work itself (sleeps or "
            "other processes), not in rh_agents code."
        )
    title, scenario = SCENARIOS[key]
    asyncio.run(scenario(cfg))  # warm up (imports, pydantic schema caches)
    gc.collect()
    with GcTimer() as collector, Stopwatch() as watch:
        asyncio.run(scenario(cfg))
    lines = [
        f"scenario: {title}",
        f"garbage collector: {100 * collector.seconds / watch.seconds:.0f} % of an unprofiled "
        f"run ({collector.collections} collections per generation); the profiles below run "
        "with the collector off, so its pauses are not charged to whichever function "
        "happened to allocate",
    ]
    gc.collect()
    gc.disable()
    try:
        if installed("pyinstrument"):
            lines += _pyinstrument(scenario, cfg, out, key)
        lines += _cprofile(scenario, cfg, out, key)
    finally:
        gc.enable()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profiling", description="Profile benchmark scenarios."
    )
    parser.add_argument("ids", nargs="*", default=["P1", "P2", "P4", "P5"])
    parser.add_argument("--quick", action="store_true", help="smaller scenarios")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "profiles",
        help="where the full profiles are written",
    )
    args = parser.parse_args(argv)
    for key in args.ids:
        print(f"== {key.upper()}")
        print(profile_miss(key.upper(), Config(quick=args.quick), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
