"""P9: what durable state costs: the journal per event, resuming a long history, and the
memory a live history holds."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench import competitors as c
from bench._common import BenchResult, Config, Target, measured, median, paired_ratio, side_by_side
from bench.workloads import ECHO, event_factories
from rh_agents import ExecutionState
from rh_agents.state_backends import InMemoryStateBackend, SQLiteStateBackend

ID = "P9"
TITLE = "Durable state"
MEASURES = (
    "Wall time per trivial ExecutionEvent of a group (W=100) with no journal, the "
    "in-memory journal and a SQLite file journal (ratios in the same rounds); wall time and "
    "peak RSS of ExecutionState.load_from_state_id on a SQLite history in a fresh process; "
    "memory a live history keeps per ExecutionEvent with a SQLite journal (tracemalloc)."
)

WORKERS = 100
SQLITE_VS_MEMORY = Target("<=", 1.3)
MEMORY_VS_NONE = Target("<=", 1.2)
RESUME_SECONDS = Target("<=", 1.5, "s")
RESUME_RSS = Target("<=", 300.0, "MB")
LIVE_BYTES = Target("<=", 1024.0, "B/event")


async def timed_group(backend: Any, n: int) -> tuple[float, ExecutionState]:
    """Seconds a group of ``n`` trivial events takes on ``backend``, and its state."""
    state = ExecutionState(telemetry=False, state_backend=backend)
    factories = event_factories(ECHO, state, list(range(n)))
    start = time.perf_counter()
    results = await c.rh_group(state, factories, WORKERS)
    took = time.perf_counter() - start
    assert all(r.ok for r in results)
    return took, state


def journal_contenders(n: int, folder: Path) -> dict[str, Any]:
    """No journal, the in-memory journal and a SQLite file journal (also used by P10)."""
    counter = iter(range(1_000_000))

    async def timed(backend: Any) -> float:
        return (await timed_group(backend, n))[0]

    async def none() -> float:
        return await timed(None)

    async def memory() -> float:
        return await timed(InMemoryStateBackend())

    async def sqlite() -> float:
        backend = SQLiteStateBackend(folder / f"journal-{next(counter)}.db")
        try:
            return await timed(backend)
        finally:
            backend.close()

    return {"no journal": none, "in-memory journal": memory, "SQLite file journal": sqlite}


def _journal_rows(cfg: Config, result: BenchResult, folder: Path) -> None:
    n = cfg.pick(2_000, 10_000)
    rounds = cfg.n_rounds(3, 7)
    times = asyncio.run(side_by_side(journal_contenders(n, folder), rounds, warmup=1))
    none, memory, sqlite = (
        times["no journal"],
        times["in-memory journal"],
        times["SQLite file journal"],
    )
    result.data["journal"] = {"events": n, "rounds": rounds, "seconds": times}
    per = {name: median(t) / n * 1e6 for name, t in times.items()}
    detail = ", ".join(f"{name} {us:.1f} µs/event" for name, us in per.items())
    result.rows.append(
        measured(
            f"{n:,} events, W={WORKERS}: SQLite file journal / in-memory journal",
            paired_ratio(sqlite, memory),
            "x",
            SQLITE_VS_MEMORY,
            detail,
        )
    )
    result.rows.append(
        measured(
            f"{n:,} events, W={WORKERS}: in-memory journal / no journal",
            paired_ratio(memory, none),
            "x",
            MEMORY_VS_NONE,
            detail,
        )
    )
    for name, us in per.items():
        result.rows.append(measured(f"per event, {name}", us, "µs/event"))


async def _record_history(path: Path, calls: int) -> str:
    backend = SQLiteStateBackend(path)
    try:
        state = ExecutionState(telemetry=False, state_backend=backend)
        await c.rh_group(state, event_factories(ECHO, state, list(range(calls))), WORKERS)
        return state.state_id
    finally:
        backend.close()


_RESUME = """
import json, resource, sys, time
from rh_agents import ExecutionState
from rh_agents.state_backends import SQLiteStateBackend
backend = SQLiteStateBackend(sys.argv[1])
ExecutionState()  # one-time imports (the default telemetry) are not the resume's cost
start, cpu = time.perf_counter(), time.process_time()
state = ExecutionState.load_from_state_id(sys.argv[2], backend)
took, cpu = time.perf_counter() - start, time.process_time() - cpu
entries = len(state.history)
backend.close()
try:  # this process's own peak: ru_maxrss would keep the parent's across fork and exec
    with open("/proc/self/status") as status:
        peak = next(int(x.split()[1]) for x in status if x.startswith("VmHWM:")) / 1024
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": took, "cpu_seconds": cpu, "entries": entries, "peak_mb": peak}))
"""


def _resume_once(path: Path, state_id: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _RESUME, str(path), state_id],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    found: dict[str, float] = json.loads(out.stdout)
    return found


def _resume_rows(cfg: Config, result: BenchResult, folder: Path) -> None:
    calls = cfg.pick(5_000, 50_000)  # two records per call: STARTED and COMPLETED
    path = folder / "history.db"
    state_id = asyncio.run(_record_history(path, calls))
    runs = [_resume_once(path, state_id) for _ in range(cfg.n_rounds(2, 3))]
    entries = int(runs[0]["entries"])
    seconds = median([r["seconds"] for r in runs])
    cpu = median([r["cpu_seconds"] for r in runs])
    peak = median([r["peak_mb"] for r in runs])
    result.data["resume"] = {"calls": calls, "runs": runs, "file_bytes": path.stat().st_size}
    size = f"{entries:,}-entry SQLite history"
    result.rows.append(
        measured(
            f"resume of a {size}: load_from_state_id",
            seconds,
            "s",
            RESUME_SECONDS,
            f"{seconds / entries * 1e6:.1f} µs/entry; CPU time {cpu:.2f} s (a busy machine "
            f"inflates the wall time); file {path.stat().st_size / 1e6:.1f} MB",
        )
    )
    result.rows.append(
        measured(
            f"resume of a {size}: peak RSS of the process",
            peak,
            "MB",
            RESUME_RSS,
            "peak resident set (VmHWM) of a fresh interpreter that imports rh_agents and "
            "loads the history",
        )
    )


async def _live_history(path: Path, n: int) -> tuple[float, float]:
    backend = SQLiteStateBackend(path)
    try:
        state = ExecutionState(telemetry=False, state_backend=backend)
        factories = event_factories(ECHO, state, list(range(n)))
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        results = await c.rh_group(state, factories, WORKERS)
        del results, factories
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - base
        return kept / n, kept / len(state.history)
    finally:
        backend.close()


def _live_rows(cfg: Config, result: BenchResult, folder: Path) -> None:
    n = cfg.pick(2_000, 10_000)
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        per_event, per_entry = asyncio.run(_live_history(folder / "live.db", n))
    finally:
        if not was_tracing:
            tracemalloc.stop()
    result.data["live"] = {"events": n, "per_event": per_event, "per_entry": per_entry}
    result.rows.append(
        measured(
            f"{n:,} ExecutionEvents with a SQLite journal: live history per event",
            per_event,
            "B/event",
            LIVE_BYTES,
            f"{per_entry:,.0f} B per history entry (STARTED and COMPLETED per event)",
        )
    )


def run(cfg: Config) -> BenchResult:
    result = BenchResult(ID, TITLE, MEASURES)
    with tempfile.TemporaryDirectory(prefix="rh-bench-p9-") as tmp:
        folder = Path(tmp)
        _journal_rows(cfg, result, folder)
        _resume_rows(cfg, result, folder)
        _live_rows(cfg, result, folder)
    result.notes.append(
        "Journal: every contender runs one group of trivial echo events per round on a fresh "
        "state (and a fresh SQLite file), in a shuffled order; the SQLite file is in the "
        "system's temporary folder (synchronous=NORMAL in WAL mode: durable against a "
        "process crash, see docs/storage.md). Resume: a fresh interpreter per run, the "
        "history recorded once by a group of echo events; the peak RSS includes the "
        "interpreter and its imports; the imports a first ExecutionState() does (the default "
        "telemetry) happen before the timed part. Live history: traced memory kept after the run, "
        "results dropped."
    )
    return result
