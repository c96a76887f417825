"""P10: the journal on PostgreSQL, per event, beside SQLite and in-memory.

The server is the one ``RH_AGENTS_BENCH_POSTGRES`` names (a DSN), or else a private
cluster started for the run the way the tests start theirs (``tests/postgres_server.py``:
``initdb`` + ``pg_ctl`` on a free loopback port, ``fsync`` off, commits synchronous).
Without psycopg or PostgreSQL's binaries the rows are SKIP.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import p9_storage
from bench._common import BenchResult, Config, measured, median, paired_ratio, side_by_side, skipped
from bench.p9_storage import journal_contenders, timed_group

ID = "P10"
TITLE = "Durable state on PostgreSQL"
MEASURES = (
    "Wall time per trivial ExecutionEvent of a group (W=100) with the in-memory journal, a "
    "SQLite file journal and a PostgreSQL journal (group commit over a loopback "
    "connection), ratios in the same rounds; records per PostgreSQL commit."
)

WORKERS = p9_storage.WORKERS
TESTS = Path(__file__).resolve().parents[1] / "tests"


@contextmanager
def _server() -> Iterator[str | None]:
    """A DSN: RH_AGENTS_BENCH_POSTGRES, a private cluster, or None (not installed)."""
    dsn = os.environ.get("RH_AGENTS_BENCH_POSTGRES")
    if dsn:
        yield dsn
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        yield None
        return
    sys.path.insert(0, str(TESTS))
    try:
        from postgres_server import PostgresCluster, find_bin_dir
    finally:
        sys.path.remove(str(TESTS))
    bin_dir = find_bin_dir()
    if bin_dir is None:
        yield None
        return
    with PostgresCluster(bin_dir).start() as cluster:
        yield cluster.dsn()


def _contenders(n: int, folder: Path, dsn: str, commits: list[tuple[int, int]]) -> Any:
    embedded = journal_contenders(n, folder)

    async def postgres() -> float:
        from rh_agents.state_backends import PostgresStateBackend

        backend = PostgresStateBackend(dsn, schema=f"bench_{uuid.uuid4().hex[:12]}")
        try:
            took, state = await timed_group(backend, n)
            if state.recorder is not None:
                stats = state.recorder.statistics()
                commits.append((stats.records, stats.commits))
            return took
        finally:
            await asyncio.to_thread(backend.close)

    return {
        "in-memory journal": embedded["in-memory journal"],
        "SQLite file journal": embedded["SQLite file journal"],
        "PostgreSQL journal": postgres,
    }


def run(cfg: Config) -> BenchResult:
    result = BenchResult(ID, TITLE, MEASURES)
    n = cfg.pick(2_000, 10_000)
    case = f"{n:,} events, W={WORKERS}: PostgreSQL journal / SQLite file journal"
    with _server() as dsn, tempfile.TemporaryDirectory(prefix="rh-bench-p10-") as tmp:
        if dsn is None:
            reason = "psycopg (the postgres extra) or PostgreSQL's initdb not installed"
            result.rows.append(skipped(case, reason))
            return result
        rounds = cfg.n_rounds(3, 5)
        commits: list[tuple[int, int]] = []
        times = asyncio.run(side_by_side(_contenders(n, Path(tmp), dsn, commits), rounds, warmup=1))
    memory, sqlite, postgres = (
        times["in-memory journal"],
        times["SQLite file journal"],
        times["PostgreSQL journal"],
    )
    per = {name: median(t) / n * 1e6 for name, t in times.items()}
    detail = ", ".join(f"{name} {us:.1f} µs/event" for name, us in per.items())
    result.data["journal"] = {"events": n, "rounds": rounds, "seconds": times}
    result.rows.append(measured(case, paired_ratio(postgres, sqlite), "x", None, detail))
    result.rows.append(
        measured(
            f"{n:,} events, W={WORKERS}: PostgreSQL journal / in-memory journal",
            paired_ratio(postgres, memory),
            "x",
            None,
            detail,
        )
    )
    for name, us in per.items():
        result.rows.append(measured(f"per event, {name}", us, "µs/event"))
    records = sum(r for r, _ in commits)
    transactions = sum(t for _, t in commits)
    if transactions:
        result.rows.append(
            measured(
                "records per PostgreSQL commit (group commit)", records / transactions, "records"
            )
        )
    result.notes.append(
        "Every contender runs one group of trivial echo events per round on a fresh state "
        "(a fresh SQLite file, a fresh PostgreSQL schema), in a shuffled order. The server "
        "runs on this machine (loopback TCP, fsync off, synchronous commits), so a commit "
        "costs a round trip without a disk flush: a remote server adds its network latency "
        "per commit, shared by every completion that arrived meanwhile."
    )
    return result
