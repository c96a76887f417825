"""Coordinators as real processes sharing one PostgreSQL history, killed with SIGKILL.

The same run as tests/storage/test_journal_processes.py (``_journal_child.py`` with
``--dsn``): a group of calls whose side file says which calls ran in which process and
which results a caller received.

* SIGKILL inside a group commit: every result a caller received was committed, the
  commit in progress is lost as a whole (the server rolls it back), the resume re-runs
  only what was not committed;
* two coordinators resuming one run at once: one is refused with ``StateLockedError``
  naming the other, no completed call runs twice, the results equal an uninterrupted run.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from postgres_server import PostgresCluster
from test_journal_processes import (
    CHILD,
    EXPECTED,
    ITEMS,
    ROOT,
    SCRIPT,
    Side,
    completed_items,
    finish,
    kill,
    race_two_resumes,
)

from rh_agents.state_backends import PostgresStateBackend

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


class History:
    """One schema of the private cluster, and coordinator processes recording into it."""

    def __init__(self, cluster: PostgresCluster, tmp_path: Path) -> None:
        self.dsn = cluster.dsn()
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        self.tmp_path = tmp_path
        self.side = Side(tmp_path / "side.txt")

    def start(self, *options: str) -> subprocess.Popen[str]:
        command = [sys.executable, str(SCRIPT), "--dsn", self.dsn, "--schema", self.schema]
        command += ["--side", str(self.side.path), "--items", str(ITEMS), *options]
        return subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def journal(self) -> list[dict[str, Any]]:
        with PostgresStateBackend(self.dsn, schema=self.schema) as backend:
            return backend.load_events(CHILD.STATE_ID)

    def ran(self) -> Counter[int]:
        return Counter(item for item, _ in self.side.entries("ran"))


@pytest.fixture
def history(postgres_cluster: PostgresCluster, tmp_path: Path) -> History:
    return History(postgres_cluster, tmp_path)


def test_sigkill_inside_a_group_commit_then_resume_reruns_only_calls_in_flight(
    history: History,
) -> None:
    first = history.start("--workers", "16", "--pause-commit", "3")
    history.side.wait_for(first, "paused commit")
    kill(first)  # its connection dies inside the transaction: the server rolls it back
    got = {item for item, _ in history.side.entries("got")}
    records = history.journal()
    committed = completed_items(records)
    assert got <= committed  # every result handed back was committed first
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert set(history.ran()) - committed  # some calls had run without their commit

    # the dead holder's lease (same host, process gone) is taken over at once
    outcome = finish(history.start("--resume", "--workers", "16"))
    assert outcome["results"] == EXPECTED
    ran = history.ran()
    assert set(ran) == set(range(ITEMS))
    assert all(ran[item] == 1 for item in committed)  # committed: never run again
    assert all(ran[item] <= 2 for item in ran)


def test_two_coordinators_resuming_one_run_one_is_refused(history: History) -> None:
    side = history.side
    first = history.start("--hang-at", "25", "--workers", "1")
    side.wait_for(first, f"ran 25 {first.pid}")
    kill(first)
    done = completed_items(history.journal())
    assert done == set(range(25))

    loser, winner = race_two_resumes(lambda: history.start("--resume", "--gate"), side)
    refused = finish(loser)
    assert refused["returncode"] == 3, refused
    message = refused["refused"]
    assert "State 'run-1' is being recorded by another writer" in message
    assert f"pid {winner.pid}, since " in message
    assert "nothing was recorded and no call ran" in message
    assert refused["holder_pid"] == winner.pid
    assert not [item for item, pid in side.entries("ran") if pid == loser.pid]

    outcome = finish(winner)  # closing its stdin opens the gate
    assert outcome["results"] == EXPECTED
    ran = history.ran()
    assert all(ran[item] == 1 for item in done)
    assert ran[25] == 2 and all(n == 1 for item, n in ran.items() if item != 25)
    assert set(ran) == set(range(ITEMS))
