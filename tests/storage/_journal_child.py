"""A run in a real process, for tests/storage/test_journal_processes.py.

An agent runs a parallel group of ``--items`` calls of the ``step`` tool against a SQLite
history. Every execution of the step handler appends ``ran <i> <pid>`` to the side file;
every result handed back to the group item appends ``got <i> <pid>``, so the test sees
which calls ran in which process and which results a caller received.

Usage::

    python _journal_child.py --db H.db --side S.txt --state-id ID [--resume]
        [--items N] [--workers W] [--hang-at K] [--gate]
        [--pause-commit N] [--pause-takeover]
    python _journal_child.py --db H.db --side S.txt --hold-lock RELEASE_FILE

With ``--dsn DSN --schema NAME`` instead of ``--db``, the history is a
:class:`PostgresStateBackend` (``--pause-commit`` works there too: the writer stops
after the rows were inserted, before ``COMMIT``).

``--hang-at K`` blocks the handler of item K forever (the process keeps the run's lease);
``--gate`` makes every handler wait until a line arrives on stdin; ``--pause-commit N`` stops
the writer thread inside its N-th commit of records, after the rows were inserted and
before COMMIT (``paused commit`` in the side file); ``--pause-takeover`` stops it inside
the transaction that takes the run's lease over (``paused takeover``). The test kills
the process with SIGKILL there. ``--hold-lock`` holds SQLite's write lock (``BEGIN
IMMEDIATE``) until RELEASE_FILE exists (``holding`` in the side file).

Prints ``{"results": [...]}`` when the run completes, ``{"refused": message, "holder_pid":
pid}`` with exit code 3 when the run's lease is held by another process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.errors import StateLockedError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.storage import PostgresStateBackend, SQLiteStateBackend, _sqlite_runs

STATE_ID = "run-1"


def value_of(index: int) -> int:
    return (index * 7919 + 13) % 1_000_003


def append_line(path: str, line: str) -> None:
    # Blocking on purpose: the line must reach the OS before the run goes on.
    with open(path, "a", encoding="utf-8") as side:
        side.write(line + "\n")


def build(args: argparse.Namespace, gate: asyncio.Event | None) -> Agent:
    async def step(index: int, extra: Any, state: ExecutionState) -> int:
        append_line(args.side, f"ran {index} {os.getpid()}")
        if gate is not None:
            await gate.wait()
        if index == args.hang_at:
            await asyncio.Event().wait()  # killed here
        return value_of(index)

    tool = Tool(name="step", handler=step)

    async def pipeline(items: int, extra: Any, state: ExecutionState) -> list[int]:
        async def item(index: int) -> int:
            result = await ExecutionEvent(actor=tool)(index, {}, state)
            if not result.ok:
                raise RuntimeError(result.error_message)
            append_line(args.side, f"got {index} {os.getpid()}")
            return int(result.result)

        async with state.parallel(max_workers=args.workers, name="steps") as group:
            for index in range(items):
                group.add(lambda index=index: item(index))
            results = await group.gather()
        return [int(r.result) for r in results]

    return Agent(name="pipeline", handler=pipeline)


def install_pauses(args: argparse.Namespace) -> None:
    """Stop the writer thread inside a transaction (see the module docstring)."""
    original = _sqlite_runs.transaction
    opening = threading.local()
    commits = {"n": 0}

    @contextlib.contextmanager
    def pausing(conn: sqlite3.Connection) -> Iterator[None]:
        with original(conn):
            yield
            if args.pause_takeover and getattr(opening, "active", False):
                append_line(args.side, "paused takeover")
                time.sleep(3600)
            if args.pause_commit and getattr(opening, "commit", False):
                commits["n"] += 1
                if commits["n"] == args.pause_commit:
                    append_line(args.side, "paused commit")
                    time.sleep(3600)

    runs = _sqlite_runs.SQLiteRuns
    open_run, commit = runs.open_run, runs.commit

    def traced_open(self: Any, *a: Any) -> None:
        opening.active = True
        try:
            open_run(self, *a)
        finally:
            opening.active = False

    def traced_commit(self: Any, *a: Any) -> None:
        opening.commit = True
        try:
            commit(self, *a)
        finally:
            opening.commit = False

    _sqlite_runs.transaction = pausing  # type: ignore[assignment]
    runs.open_run = traced_open  # type: ignore[method-assign]
    runs.commit = traced_commit  # type: ignore[method-assign]
    if args.dsn and args.pause_commit:
        from rh_agents.storage import _postgres_runs

        pg_runs = _postgres_runs.PostgresRuns
        pg_transaction = pg_runs._transaction

        @contextlib.contextmanager
        def pg_pausing(self: Any, action: str) -> Iterator[Any]:
            with pg_transaction(self, action) as conn:
                yield conn
                if action == "append events":
                    commits["n"] += 1
                    if commits["n"] == args.pause_commit:
                        append_line(args.side, "paused commit")
                        time.sleep(3600)

        pg_runs._transaction = pg_pausing  # type: ignore[method-assign]


def open_history(args: argparse.Namespace) -> Any:
    if args.dsn:
        return PostgresStateBackend(args.dsn, schema=args.schema)
    return SQLiteStateBackend(args.db)


def hold_lock(args: argparse.Namespace) -> int:
    conn = sqlite3.connect(args.db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    append_line(args.side, "holding")
    release = Path(args.hold_lock)
    while not release.exists():  # a condition polled, not a timing
        time.sleep(0.01)
    conn.execute("ROLLBACK")
    conn.close()
    append_line(args.side, "released")
    return 0


async def run(args: argparse.Namespace) -> int:
    install_pauses(args)
    backend = open_history(args)
    try:
        if args.resume:
            state = ExecutionState.load_from_state_id(STATE_ID, backend)
        else:
            state = ExecutionState(state_id=STATE_ID, state_backend=backend)
        append_line(args.side, f"loaded {os.getpid()}")
        gate = None
        if args.gate:
            gate = asyncio.Event()
            # the test writes a line to stdin (or closes it) to open the gate
            opener = asyncio.create_task(asyncio.to_thread(sys.stdin.readline))
            opener.add_done_callback(lambda _: gate.set())
        try:
            result = await ExecutionEvent(actor=build(args, gate))(args.items, {}, state)
        except StateLockedError as exc:
            append_line(args.side, f"refused {os.getpid()}")
            holder = getattr(exc.holder, "pid", None)
            print(json.dumps({"refused": str(exc), "holder_pid": holder}))
            return 3
        if not result.ok:
            print(json.dumps({"failed": result.error_message}))
            return 1
        print(json.dumps({"results": result.result}))
        return 0
    finally:
        backend.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db")
    parser.add_argument("--dsn")
    parser.add_argument("--schema", default="rh_agents")
    parser.add_argument("--side", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--hang-at", type=int)
    parser.add_argument("--gate", action="store_true")
    parser.add_argument("--pause-commit", type=int)
    parser.add_argument("--pause-takeover", action="store_true")
    parser.add_argument("--hold-lock")
    args = parser.parse_args(argv)
    if args.hold_lock:
        return hold_lock(args)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
