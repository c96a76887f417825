"""Durable state under many processes, with real processes and SIGKILL (SQLite history).

The run (tests/storage/_journal_child.py) is a group of calls of one tool; its side file
says which calls ran in which process (``ran``) and which results a caller received
(``got``). Each test checks what a user relies on:

* two processes resuming one run at once: one is refused with ``StateLockedError``
  naming the holder, no call runs twice, the results equal an uninterrupted run;
* another process holding SQLite's write lock does not stall the event loop: an
  ``asyncio.timeout(1)`` around the run fires while the lock is still held, and the
  loop keeps ticking;
* SIGKILL inside a group commit: every result a caller received was committed, the
  commit in progress is lost as a whole, the resume re-runs only what was not committed;
* SIGKILL inside a lease takeover: the next process takes the lease over and finishes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.types import ExecutionStatus
from rh_agents.storage import SQLiteStateBackend

SCRIPT = Path(__file__).with_name("_journal_child.py")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


def child() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_journal_child", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHILD = child()
ITEMS = 40
EXPECTED = [CHILD.value_of(i) for i in range(ITEMS)]


class Side:
    """The side file: what ran where, what was handed back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        return self.path.read_text(encoding="utf-8").splitlines()

    def entries(self, kind: str) -> list[tuple[int, int]]:
        """(item, pid) of every ``ran`` or ``got`` line."""
        found = []
        for line in self.lines():
            parts = line.split()
            if parts[0] == kind:
                found.append((int(parts[1]), int(parts[2])))
        return found

    def wait_for(self, proc: subprocess.Popen[str], line: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.lines():
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the child exited with {proc.returncode} first: {out}\n{err}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"no {line!r} in {self.path} after {timeout} s: {self.lines()}")
            time.sleep(0.01)


def start(tmp_path: Path, *options: str) -> subprocess.Popen[str]:
    command = [sys.executable, str(SCRIPT), "--db", str(tmp_path / "history.db")]
    command += ["--side", str(tmp_path / "side.txt"), "--items", str(ITEMS), *options]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120.0) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert out.strip(), f"exit {proc.returncode}, no output; stderr:\n{err}"
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["returncode"] = proc.returncode
    return result


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def journal(tmp_path: Path) -> list[dict[str, Any]]:
    with SQLiteStateBackend(tmp_path / "history.db") as backend:
        return backend.load_events(CHILD.STATE_ID)


def completed_items(records: list[dict[str, Any]]) -> set[int]:
    return {
        int(r["address"].split("[")[1].split("]")[0])
        for r in records
        if r["status"] == "completed" and r["address"].endswith("/step")
    }


def interrupted_history(tmp_path: Path, side: Side, hang_at: int = 25) -> set[int]:
    """A run killed with its item ``hang_at`` in flight; the items it completed."""
    first = start(tmp_path, "--hang-at", str(hang_at), "--workers", "1")
    side.wait_for(first, f"ran {hang_at} {first.pid}")
    kill(first)
    done = completed_items(journal(tmp_path))
    assert done == set(range(hang_at))  # one worker: items in order
    return done


# ----------------------------------------------------------- two resumes at once


def race_two_resumes(
    start_resume: Callable[[], subprocess.Popen[str]], side: Side
) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
    """Start two resumes of one run and wait until one is refused: (loser, winner).

    Both load the same history; both then record. One takes the lease and its first
    handler waits at the gate (until its stdin closes); the other is refused before any
    of its calls runs.
    """
    a = start_resume()
    b = start_resume()
    side.wait_for(a, f"loaded {a.pid}")
    side.wait_for(b, f"loaded {b.pid}")
    deadline = time.monotonic() + 60
    while not any(line.startswith("refused") for line in side.lines()):
        assert time.monotonic() < deadline, side.lines()
        assert a.poll() is None and b.poll() is None, side.lines()
        time.sleep(0.01)
    return (a, b) if f"refused {a.pid}" in side.lines() else (b, a)


def test_two_concurrent_resumes_one_is_refused_and_nothing_runs_twice(tmp_path: Path) -> None:
    side = Side(tmp_path / "side.txt")
    done = interrupted_history(tmp_path, side)
    loser, winner = race_two_resumes(lambda: start(tmp_path, "--resume", "--gate"), side)
    refused = finish(loser)
    assert refused["returncode"] == 3, refused
    message = refused["refused"]
    assert "State 'run-1' is being recorded by another writer" in message
    assert f"host {socket.gethostname()}, pid {winner.pid}, since " in message
    assert "nothing was recorded and no call ran" in message
    assert refused["holder_pid"] == winner.pid
    assert not [item for item, pid in side.entries("ran") if pid == loser.pid]

    outcome = finish(winner)  # closing its stdin opens the gate
    assert outcome["results"] == EXPECTED  # equal to an uninterrupted run
    ran = Counter(item for item, _ in side.entries("ran"))
    assert all(ran[item] == 1 for item in done)  # nothing completed ran again
    in_flight = 25
    assert ran[in_flight] == 2 and all(n == 1 for item, n in ran.items() if item != in_flight)
    assert set(ran) == set(range(ITEMS))

    # the refused process resumes now and replays everything
    again = finish(start(tmp_path, "--resume"))
    assert again["results"] == EXPECTED
    assert Counter(item for item, _ in side.entries("ran")) == ran


# ------------------------------------------ a storage lock held by another process


async def test_a_lock_held_by_another_process_does_not_stall_the_loop(tmp_path: Path) -> None:
    side = Side(tmp_path / "side.txt")
    db = tmp_path / "history.db"
    SQLiteStateBackend(db).close()  # the file exists, WAL mode
    release = tmp_path / "release"
    holder = start(tmp_path, "--hold-lock", str(release))
    side.wait_for(holder, "holding")

    ran: list[int] = []

    async def handler(data: int, extra: Any, state: ExecutionState) -> int:
        ran.append(data)
        return data

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    backend = SQLiteStateBackend(db)
    state = ExecutionState(state_id="blocked", state_backend=backend)
    ticking = asyncio.create_task(ticker())
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                await ExecutionEvent(actor=Tool(name="t", handler=handler))(1, {}, state)
        # It fired while the other process still held the lock (it holds it until told).
        assert holder.poll() is None and "released" not in side.lines()
        assert ticks >= 10  # the loop kept running the other tasks all along
    finally:
        ticking.cancel()
        release.touch()
    assert holder.wait(timeout=60) == 0
    assert ran == []  # the lease was never confirmed: the handler did not run
    await asyncio.to_thread(backend.close)  # the writer commits what the run queued
    statuses = [r["status"] for r in journal_of(db, "blocked")]
    assert statuses == ["started", "cancelled"]  # written in the background, in order


def journal_of(db: Path, state_id: str) -> list[dict[str, Any]]:
    with SQLiteStateBackend(db) as backend:
        return backend.load_events(state_id)


# ------------------------------------------------------------------ SIGKILL


def test_sigkill_inside_a_group_commit_loses_no_result_handed_back(tmp_path: Path) -> None:
    side = Side(tmp_path / "side.txt")
    first = start(tmp_path, "--workers", "16", "--pause-commit", "3")
    side.wait_for(first, "paused commit")
    kill(first)
    got = {item for item, _ in side.entries("got")}
    records = journal(tmp_path)
    committed = completed_items(records)
    # every result a caller received was committed before it was handed back, and the
    # commit that was cut off is lost as a whole (positions stay consecutive)
    assert got <= committed
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    ran_first = Counter(item for item, _ in side.entries("ran"))
    assert set(ran_first) - committed  # some calls had run without their commit

    outcome = finish(start(tmp_path, "--resume", "--workers", "16"))
    assert outcome["results"] == EXPECTED
    ran = Counter(item for item, _ in side.entries("ran"))
    assert set(ran) == set(range(ITEMS))
    assert all(ran[item] == 1 for item in committed)  # committed: never run again
    assert all(ran[item] <= 2 for item in ran)


def test_sigkill_inside_a_lease_takeover_leaves_the_run_resumable(tmp_path: Path) -> None:
    side = Side(tmp_path / "side.txt")
    done = interrupted_history(tmp_path, side)  # its holder died holding the lease
    second = start(tmp_path, "--resume", "--pause-takeover")
    side.wait_for(second, "paused takeover")
    kill(second)
    assert [item for item, pid in side.entries("ran") if pid == second.pid] == []

    third = finish(start(tmp_path, "--resume"))
    assert third["results"] == EXPECTED
    ran = Counter(item for item, _ in side.entries("ran"))
    assert all(ran[item] == 1 for item in done)
    assert set(ran) == set(range(ITEMS))
    records = journal(tmp_path)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    with SQLiteStateBackend(tmp_path / "history.db") as backend:
        final = ExecutionState.load_from_state_id(CHILD.STATE_ID, backend)
    assert final.history["pipeline"].execution_status is ExecutionStatus.COMPLETED
