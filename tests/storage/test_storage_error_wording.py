"""The wording of the storage errors a user meets (docs/errors.md, "Storage errors and
their messages"): each message names the file, the state or the record, says what is
wrong, and what to do. Other tests check the lease, deletion and link messages where
they happen (test_journal_contract, test_journal_integrity, test_filesystem_safety)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from rh_agents.core.actors import Tool
from rh_agents.core.errors import StateCorruptedError, StateLockedError, StateStorageError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.storage import JournalOpening
from rh_agents.storage import SQLiteStateBackend

STATE_ID = "run-1"
DAMAGED = (
    "The journal is damaged: restore it from a backup, or delete the state with "
    "delete_state() to discard it."
)


async def _echo(data: Any, extra: Any, state: ExecutionState) -> Any:
    return data


def recorded(path: Path) -> None:
    """A history of one completed call (records 1 and 2)."""
    with SQLiteStateBackend(path) as backend:
        state = ExecutionState(state_id=STATE_ID, state_backend=backend)
        assert asyncio.run(ExecutionEvent(actor=Tool(name="echo", handler=_echo))(7, {}, state)).ok


def tamper(path: Path, sql: str, *params: Any) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def load_error(path: Path) -> str:
    with SQLiteStateBackend(path) as backend, pytest.raises(StateCorruptedError) as info:
        ExecutionState.load_from_state_id(STATE_ID, backend)
    return str(info.value)


@pytest.fixture
def history(tmp_path: Path) -> Path:
    path = tmp_path / "history.db"
    recorded(path)
    return path


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        ('{"_crc":"zzzzzzzz","seq":1}', "has a damaged checksum"),
        ('{"seq":1,"_crc":"00000000"}', "has no checksum (every stored record carries one)"),
    ],
)
def test_a_record_with_a_damaged_or_no_checksum(history: Path, stored: str, problem: str) -> None:
    tamper(history, "UPDATE events SET record = ? WHERE position = 1", stored)
    assert load_error(history) == (
        f"Event record 1 of state '{STATE_ID}' in {history} {problem}. {DAMAGED}"
    )


def test_a_record_of_another_position_fails_its_checksum(history: Path) -> None:
    conn = sqlite3.connect(history)
    try:
        _first, second = (
            row[0] for row in conn.execute("SELECT record FROM events ORDER BY position").fetchall()
        )
        conn.execute("UPDATE events SET record = ? WHERE position = 1", (second,))
        conn.commit()
    finally:
        conn.close()
    assert load_error(history) == (
        f"Event record 1 of state '{STATE_ID}' in {history} fails its checksum: it was "
        "changed after it was written, or moved from another position or run (disk or "
        f"file damage). {DAMAGED}"
    )


def test_a_gap_in_the_positions(history: Path) -> None:
    tamper(history, "UPDATE events SET position = 5 WHERE position = 1")
    assert load_error(history) == (
        f"The journal of state '{STATE_ID}' in {history} is damaged: record 1 is missing "
        "(the next stored one is 2). Completed work may be missing from it, so it is not "
        "resumed. Restore it from a backup, or delete the state with delete_state() to "
        "discard it."
    )


def test_more_records_than_were_committed(history: Path) -> None:
    tamper(history, "UPDATE journals SET high_water = 1")
    assert load_error(history) == (
        f"The journal of state '{STATE_ID}' in {history} is damaged: it holds 2 records, "
        "but only 1 were committed. Completed work may be missing from it, so it is not "
        "resumed. Restore it from a backup, or delete the state with delete_state() to "
        "discard it."
    )


def test_a_write_to_a_history_opened_read_only(history: Path) -> None:
    with SQLiteStateBackend(history, read_only=True) as backend:
        assert len(backend.load_events(STATE_ID)) == 2  # reading needs no lease
        with pytest.raises(StateStorageError) as info:
            backend.delete_state(STATE_ID)
    assert str(info.value) == (
        f"The rh_agents history at {history} is read-only (opened read-only), so it could "
        "not delete a state. Its states can be loaded and inspected; to resume a run, copy "
        "the file (with its -wal file) to a writable place and open it there."
    )


def test_read_only_needs_a_history(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(StateStorageError) as info:
        SQLiteStateBackend(path, read_only=True)
    assert str(info.value) == (
        f"There is no rh_agents history at {path} to open read-only. Check the path."
    )


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database" * 200)
    with pytest.raises(StateCorruptedError) as info:
        SQLiteStateBackend(path)
    message = str(info.value)
    assert message.startswith(
        f"The rh_agents history at {path} is damaged or is not a SQLite database ("
    )
    assert message.endswith(
        "so it could not be opened. Restore the file from a backup, or delete it (and "
        "its -wal and -shm files) to start an empty history."
    )


async def test_a_second_writer_of_one_run_is_told_who_holds_it(tmp_path: Path) -> None:
    with SQLiteStateBackend(tmp_path / "history.db", lease_timeout=45) as backend:
        first = backend.open_run(JournalOpening(STATE_ID))
        first.append({"seq": 1, "address": "a", "status": "started"})
        await first.flush()
        second = backend.open_run(JournalOpening(STATE_ID, position=1))
        second.append({"seq": 2, "address": "b", "status": "started"})
        with pytest.raises(StateLockedError) as info:
            await second.flush()
        holder = first.holder
        assert info.value.holder == holder
        assert str(info.value) == (
            f"State '{STATE_ID}' is being recorded by another writer ({holder}); only one "
            "process, and one ExecutionState, may record a run at a time, so nothing was "
            "recorded and no call ran. Wait for it to finish or stop it, then resume. A "
            "holder that died is taken over automatically: at once on the same host, and "
            "after 45 s without a heartbeat from another host."
        )
        assert f"host {holder.host}, pid {holder.pid}, since " in str(info.value)
        second.close()
        first.close()
        await first.wait_closed()
