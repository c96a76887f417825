"""Instructions per call of the hot paths, counted by valgrind (deterministic).

``python -m bench.instructions [CASE ...] [--calls N]``

Wall-clock ratios on a shared 2-core VM move by 20-50 % between runs; the number of
machine instructions a path executes does not (the same total twice, whatever else the
machine does; the hash seed is fixed, since string hashes move counts by about 1 %).
Each case runs twice under ``valgrind --tool=callgrind``, once with a few calls (to pay
the imports and first-call set-up) and once with ``N`` more; the difference over ``N``
is what one call costs. The garbage collector is off in both, so the figure is the
path's own work. Compare two revisions with the same command in two checkouts
(``PYTHONPATH=<checkout> python -m bench.instructions``).

Without valgrind (Debian's package), ``--dry-run`` runs each case once, unmeasured.

Cases:
    event     one trivial ExecutionEvent, alone
    group1    the same event in a one-item ``state.parallel()`` group (P4's shape)
    empty     an empty group: the group's own skeleton
    item      one item of a 100-worker group of plain coroutines (P1's shape)
    nojournal one trivial event in a 100-worker group of one state, no journal (P9's shape)
    memory    the same with an in-memory journal
    sqlite    the same with a SQLite file journal (its writer thread included)
    sqlite-nowait, sqlite-noencode, sqlite-neither
              ablations of ``sqlite``, not rh_agents' behaviour: a call does not wait
              for its commit (``flush()`` returns at once), records are neither built
              nor encoded (a constant text is stored), or both: what each piece of
              the SQLite journal costs
    plain     one trivial event in a 100-worker group, no telemetry (P2's shape)
    metered   the same with metrics only
    traced    the same with SDK tracing too (P2's "full"; the exporter thread included)
    floor     P2's floor: the same work written by hand (one span, four metrics, history)
    bare      P2's floor without telemetry (a task and a history append)
    resume    one entry of a SQLite history read by ``load_from_state_id``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.p9_storage import _record_history
from bench.workloads import SPIN
from rh_agents import ExecutionEvent, ExecutionState

CASES = (
    "event",
    "group1",
    "empty",
    "item",
    "nojournal",
    "memory",
    "sqlite",
    "sqlite-nowait",
    "sqlite-noencode",
    "sqlite-neither",
    "plain",
    "metered",
    "traced",
    "floor",
    "bare",
    "resume",
)
_WARM = 20  # calls both runs make: imports, first-call caches, the first states


async def _event(state: ExecutionState) -> None:
    await ExecutionEvent(actor=SPIN)(0.0, None, state)


async def _group1(state: ExecutionState) -> None:
    async with state.parallel(max_workers=1, name="single") as p:
        p.add(lambda: ExecutionEvent(actor=SPIN)(0.0, None, state))
        await p.gather()


async def _empty(state: ExecutionState) -> None:
    async with state.parallel(max_workers=1, name="single"):
        pass


async def _calls(case: str, n: int) -> None:
    call = {"event": _event, "group1": _group1, "empty": _empty}[case]
    state = ExecutionState(telemetry=False)
    for i in range(n):
        if i % 20 == 0:  # like P4: a fresh state now and then, histories stay short
            state = ExecutionState(telemetry=False)
        await call(state)


async def _items(n: int) -> None:
    async def work(i: int) -> int:
        return i

    state = ExecutionState(telemetry=False)
    async with state.parallel(max_workers=100) as p:
        for i in range(n):
            p.add(lambda i=i: work(i))
        results = await p.gather()
    assert len(results) == n


@contextlib.contextmanager
def _ablated(case: str) -> Iterator[None]:
    """``sqlite-*``: the SQLite journal with one piece taken out (restored after)."""
    from rh_agents.core import recording
    from rh_agents.storage import _writer

    flush, dump, build = (
        _writer.ThreadedJournal.flush,
        _writer.dump_record,
        recording.event_to_record,
    )
    constant: dict[str, Any] = {}

    async def no_wait(self: Any) -> None:
        return None

    def no_encoding(state_id: str, position: int, record: dict[str, Any]) -> str:
        return '{"_crc":"00000000"}'

    if case in ("sqlite-nowait", "sqlite-neither"):
        _writer.ThreadedJournal.flush = no_wait  # type: ignore[method-assign]
    if case in ("sqlite-noencode", "sqlite-neither"):
        recording.event_to_record = lambda event, seq: constant
        _writer.dump_record = no_encoding
    try:
        yield
    finally:
        _writer.ThreadedJournal.flush = flush  # type: ignore[method-assign]
        _writer.dump_record, recording.event_to_record = dump, build


async def _journaled(case: str, n: int, folder: Path) -> None:
    from rh_agents.state_backends import InMemoryStateBackend, SQLiteStateBackend

    backend: Any = None
    if case == "memory":
        backend = InMemoryStateBackend()
    elif case.startswith("sqlite"):
        backend = SQLiteStateBackend(folder / f"journal-{case}-{n}.db")
    state = ExecutionState(telemetry=False, state_backend=backend)
    async with state.parallel(max_workers=100) as p:
        for _ in range(n):
            p.add(lambda: ExecutionEvent(actor=SPIN)(0.0, None, state))
        results = await p.gather()
    assert all(result.ok for result in results)
    if backend is not None:
        backend.close()


async def _telemetry(case: str, n: int) -> None:
    from prometheus_client import CollectorRegistry

    from bench._telemetry import Floor, SdkTracing, full_telemetry
    from bench.competitors import rh_group
    from bench.workloads import ECHO, event_factories, trivial_factories
    from rh_agents.telemetry import Telemetry

    telemetry: Telemetry | bool
    sdk = None
    if case in ("floor", "bare"):
        sdk = SdkTracing() if case == "floor" else None
        values = await Floor(sdk).run(trivial_factories(n), 100, case == "floor")
    else:
        if case == "traced":
            telemetry, sdk = full_telemetry()
        elif case == "metered":
            telemetry = Telemetry(registry=CollectorRegistry(), tracing=False)
        else:
            telemetry = False
        state = ExecutionState(telemetry=telemetry)
        values = await rh_group(state, event_factories(ECHO, state, list(range(n))), 100)
    assert len(values) == n
    if sdk is not None:
        sdk.flush()  # every span exported, as P2 times it
        sdk.close()


def _resume(path: Path, state_id: str) -> None:
    from rh_agents.state_backends import SQLiteStateBackend

    backend = SQLiteStateBackend(path)
    try:
        ExecutionState.load_from_state_id(state_id, backend)
    finally:
        backend.close()


def run_case(case: str, n: int, folder: Path) -> None:
    """Make ``n`` calls of ``case`` (for ``resume``: read an ``n``-entry history written
    beforehand into ``folder``)."""
    gc.disable()
    if case == "item":
        asyncio.run(_items(n))
    elif case in ("nojournal", "memory") or case.startswith("sqlite"):
        with _ablated(case):  # nothing taken out but for the sqlite-* cases
            asyncio.run(_journaled(case, n, folder))
    elif case in ("plain", "metered", "traced", "floor", "bare"):
        asyncio.run(_telemetry(case, n))
    elif case == "resume":
        path = folder / f"history-{n}.db"
        _resume(path, (folder / f"history-{n}.id").read_text())
    else:
        asyncio.run(_calls(case, n))


def _prepare(case: str, sizes: tuple[int, ...], folder: Path) -> None:
    if case != "resume":
        return
    for n in sizes:
        path = folder / f"history-{n}.db"
        if not path.exists():  # two entries (STARTED, COMPLETED) per call
            state_id = asyncio.run(_record_history(path, n // 2))
            (folder / f"history-{n}.id").write_text(state_id)


def _count(case: str, n: int, folder: Path) -> int:
    out = folder / "callgrind.out"
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.instructions",
            "--child",
            case,
            str(n),
            str(folder),
        ],
        capture_output=True,
        text=True,
        check=True,
        # One hash seed: string hashes decide dict and set probing, which moved the
        # counts by about 1 % between runs.
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    out.unlink(missing_ok=True)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"valgrind printed no instruction count:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("cases", nargs="*", help=f"of {', '.join(CASES)} (default: all)")
    parser.add_argument("--calls", type=int, default=1000, help="measured calls (default 1000)")
    parser.add_argument("--dry-run", action="store_true", help="run each case once, unmeasured")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case, n, folder = args.child
        run_case(case, int(n), Path(folder))
        return 0
    cases = args.cases or list(CASES)
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    with tempfile.TemporaryDirectory(prefix="rh-instructions-") as tmp:
        folder = Path(tmp)
        for case in cases:
            base, more = _WARM, _WARM + args.calls
            _prepare(case, (base, more), folder)
            if args.dry_run:
                run_case(case, base, folder)
                print(f"{case:8s} ran ({base} calls, not measured)")
                continue
            if shutil.which("valgrind") is None:
                print("valgrind is not installed (Debian package 'valgrind'); use --dry-run")
                return 2
            per_call = (_count(case, more, folder) - _count(case, base, folder)) / args.calls
            print(f"{case:8s} {per_call / 1000:10.1f} k instructions per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
