"""SQLite run leases across hosts and processes, and read-only histories.

The lease of a run is a row of the ``leases`` table: its holder's host, pid and start
time, and a heartbeat the writer thread renews. A holder that is provably dead (same
host, process gone) is taken over at once; one on another host once its heartbeat is
older than ``lease_timeout``; a live one never. A history opened read-only (on purpose,
or because the file is not writable) loads and can be inspected without any lease, and
says clearly that it cannot record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from rh_agents.core.actors import Tool
from rh_agents.core.errors import StateLockedError, StateStorageError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.types import ExecutionStatus
from rh_agents.storage import SQLiteStateBackend

ROOT = Path(__file__).resolve().parents[2]


async def echo(data: Any, extra: Any, state: ExecutionState) -> Any:
    return data


TOOL = Tool(name="echo", handler=echo)


def history(path: Path) -> None:
    with SQLiteStateBackend(path) as backend:
        state = ExecutionState(state_id="run-1", state_backend=backend)
        asyncio.run(ExecutionEvent(actor=TOOL)(1, {}, state))


def plant_lease(path: Path, host: str, pid: int, heartbeat: float) -> None:
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO leases (state_id, owner, host, pid, process_start, since, heartbeat) "
        "VALUES ('run-1', 'someone-else', ?, ?, NULL, '2030-01-02T03:04:05+00:00', ?)",
        (host, pid, heartbeat),
    )
    conn.commit()
    conn.close()


def leases(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT host, pid FROM leases").fetchall()
    finally:
        conn.close()


def test_a_live_holder_on_another_host_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    history(path)
    plant_lease(path, "elsewhere", 4242, time.time())
    with SQLiteStateBackend(path, lease_timeout=30) as backend:
        state = ExecutionState.load_from_state_id("run-1", backend)
        with pytest.raises(StateLockedError) as info:
            asyncio.run(ExecutionEvent(actor=TOOL, tag="more")(2, {}, state))
    message = str(info.value)
    assert "(host elsewhere, pid 4242, since 2030-01-02 03:04:05 UTC)" in message
    assert "after 30 s without a heartbeat from another host" in message
    assert info.value.holder.host == "elsewhere" and info.value.holder.pid == 4242


def test_a_silent_holder_on_another_host_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.db"
    history(path)
    plant_lease(path, "elsewhere", 4242, time.time() - 600)
    with caplog.at_level(logging.WARNING, logger="rh_agents.state_backends"):
        with SQLiteStateBackend(path, lease_timeout=30) as backend:
            state = ExecutionState.load_from_state_id("run-1", backend)
            result = asyncio.run(ExecutionEvent(actor=TOOL, tag="more")(2, {}, state))
    assert result.ok
    assert "Taking over the lease of state 'run-1' from host elsewhere, pid 4242" in caplog.text
    assert "no heartbeat for 600 s" in caplog.text
    assert leases(path) == []  # released when the run ended


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    history(path)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    import socket

    plant_lease(path, socket.gethostname(), int(gone.stdout), time.time())  # fresh heartbeat
    with SQLiteStateBackend(path, lease_timeout=3600) as backend:
        state = ExecutionState.load_from_state_id("run-1", backend)
        assert asyncio.run(ExecutionEvent(actor=TOOL, tag="more")(2, {}, state)).ok


async def test_the_writer_renews_the_lease_while_the_run_waits(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    backend = SQLiteStateBackend(path, lease_timeout=0.6)
    release = asyncio.Event()

    async def wait(data: Any, extra: Any, state: ExecutionState) -> int:
        await release.wait()
        return 1

    state = ExecutionState(state_id="run-1", state_backend=backend)
    waiting = Tool(name="wait", handler=wait)
    running = asyncio.create_task(ExecutionEvent(actor=waiting)(None, {}, state))

    def heartbeat() -> float | None:
        conn = sqlite3.connect(path)
        try:
            row = conn.execute("SELECT heartbeat FROM leases").fetchone()
        finally:
            conn.close()
        return None if row is None else float(row[0])

    def renewed() -> None:
        """Until the heartbeat moved on, with no record written meanwhile."""
        deadline = time.monotonic() + 60
        first = None
        while first is None or heartbeat() == first:
            assert time.monotonic() < deadline, "the lease was never renewed"
            first = first if first is not None else heartbeat()
            time.sleep(0.02)

    await asyncio.to_thread(renewed)
    # a renewed lease is not taken over, however long the run waits
    other = SQLiteStateBackend(path, lease_timeout=0.6)
    again = ExecutionState.load_from_state_id("run-1", other)
    with pytest.raises(StateLockedError):
        await ExecutionEvent(actor=TOOL)(3, {}, again)
    release.set()
    assert (await running).ok
    await asyncio.to_thread(other.close)
    await asyncio.to_thread(backend.close)


async def test_a_writer_that_lost_its_lease_stops_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    backend = SQLiteStateBackend(path)
    taken = asyncio.Event()

    async def taken_over(data: Any, extra: Any, state: ExecutionState) -> int:
        conn = sqlite3.connect(path)
        conn.execute(
            "UPDATE leases SET owner = 'thief', host = 'elsewhere', pid = 7, "
            "since = '2030-01-02T03:04:05+00:00'"
        )
        conn.commit()
        conn.close()
        taken.set()
        return 1

    state = ExecutionState(state_id="run-1", state_backend=backend)
    with pytest.raises(StateLockedError) as info:
        await ExecutionEvent(actor=Tool(name="t", handler=taken_over))(None, {}, state)
    assert taken.is_set()
    message = str(info.value)
    assert "This run lost the lease of state 'run-1' to another writer" in message
    assert "(host elsewhere, pid 7, since 2030-01-02 03:04:05 UTC)" in message
    await asyncio.to_thread(backend.close)


# ------------------------------------------------------------------ read-only


def test_a_history_opened_read_only_is_inspected_without_a_lease(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    history(path)
    with SQLiteStateBackend(path, read_only=True) as backend:
        assert backend.read_only
        state = ExecutionState.load_from_state_id("run-1", backend)
        assert state.history["echo"].execution_status is ExecutionStatus.COMPLETED
        replayed = asyncio.run(ExecutionEvent(actor=TOOL)(1, {}, state))
        assert replayed.status is ExecutionStatus.RECOVERED  # replaying writes nothing
        with pytest.raises(StateStorageError) as info:
            asyncio.run(ExecutionEvent(actor=TOOL, tag="new")(2, {}, state))
        with pytest.raises(StateStorageError, match="is read-only"):
            backend.save_state(state.to_snapshot())
    message = str(info.value)
    assert f"The rh_agents history at {path} is read-only (opened read-only)" in message
    assert "Its states can be loaded and inspected; to resume a run, copy the file" in message
    assert leases(path) == []


def test_read_only_needs_an_existing_history(tmp_path: Path) -> None:
    with pytest.raises(StateStorageError, match=r"There is no rh_agents history at .* to open"):
        SQLiteStateBackend(tmp_path / "missing.db", read_only=True)
    assert not (tmp_path / "missing.db").exists()


_READER = """
import asyncio, json, sys
from rh_agents.core.actors import Tool
from rh_agents.core.errors import StateError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.storage import SQLiteStateBackend
async def echo(data, extra, state): return data
backend = SQLiteStateBackend(sys.argv[1])
state = ExecutionState.load_from_state_id("run-1", backend)
out = {"read_only": backend.read_only, "entries": len(state.history)}
try:
    asyncio.run(ExecutionEvent(actor=Tool(name="echo", handler=echo), tag="new")(2, {}, state))
except StateError as exc:
    out["error"] = str(exc)
print(json.dumps(out))
"""


def _unprivileged() -> tuple[list[str], dict[str, str], Any] | None:
    """How to run Python as a user that cannot write root's files (None: not possible)."""
    if os.geteuid() != 0:
        return [sys.executable], dict(os.environ), None
    python = "/usr/bin/python3.11"  # readable by everybody, unlike a root-owned venv
    if not os.path.exists(python) or sys.version_info[:2] != (3, 11):
        return None
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), *site]), "PATH": "/usr/bin:/bin"}

    def drop() -> None:
        os.setgid(65534)
        os.setuid(65534)

    return [python], env, drop


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_a_history_in_a_read_only_place_loads_and_says_it_cannot_record(tmp_path: Path) -> None:
    how = _unprivileged()
    if how is None:
        pytest.skip("no way to run as an unprivileged user here")
    command, env, drop = how
    # pytest's own temporary directories are private to their owner: use one the
    # unprivileged user can reach, and make it and the file read-only
    place = Path(tempfile.mkdtemp(prefix="rh_agents_ro_"))
    path = place / "history.db"
    history(path)
    os.chmod(path, 0o444)
    os.chmod(place, 0o555)
    try:
        proc = subprocess.run(
            [*command, "-c", _READER, str(path)],
            env=env,
            preexec_fn=drop,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd="/",
        )
    finally:
        os.chmod(place, 0o755)
        shutil.rmtree(place)
    if "ModuleNotFoundError" in proc.stderr or "Permission denied" in proc.stderr:
        pytest.skip(f"the unprivileged interpreter cannot import rh_agents: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["read_only"] is True and out["entries"] == 2
    assert f"The rh_agents history at {path} is read-only" in out["error"]
    assert "copy the file (with its -wal file) to a writable place" in out["error"]
