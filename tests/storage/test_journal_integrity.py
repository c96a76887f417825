"""Integrity you cannot switch off: a damaged SQLite history is refused, never half-loaded.

A run's records have consecutive positions and a high-water mark written in the same
transaction; each record's checksum covers its run and its position. So a row deleted
or moved to another run, a checksum key edited away, an index that hides rows and a
single flipped bit anywhere in the file either leave the history intact or make loading
raise ``StateCorruptedError`` (or another ``StateError``) that says what to do, and a
resume never re-runs a call that completed. A database file deleted or replaced under a
running state is reported at its next write.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.errors import StateCorruptedError, StateError, StateStorageError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.storage import SQLiteStateBackend

STATE_ID = "run-1"
ITEMS = 6


def value(item: int, step: int) -> int:
    return (item * 1009 + step * 31 + 7) % 10_007


EXPECTED = [value(item, 1) + value(item, 0) for item in range(ITEMS)]


def build(calls: Counter[str], *, crash: bool = False) -> Agent:
    """A group of ITEMS chains of two step calls; with ``crash`` the pipeline fails
    after the group, so a resume runs it again and replays every step."""

    async def step(data: list[int], extra: Any, state: ExecutionState) -> int:
        calls[state.get_current_address()] += 1
        return value(*data)

    tool = Tool(name="step", handler=step)

    async def chain(item: int, state: ExecutionState) -> int:
        first = await ExecutionEvent(actor=tool)([item, 0], {}, state)
        second = await ExecutionEvent(actor=tool)([item, 1], {}, state)
        return int(first.result) + int(second.result)

    async def pipeline(data: Any, extra: Any, state: ExecutionState) -> list[int]:
        async with state.parallel(max_workers=3, name="chains") as group:
            for item in range(ITEMS):
                group.add(lambda item=item: chain(item, state))
            results = await group.gather()
        if crash:
            raise RuntimeError("the process died here")
        return [int(r.result) for r in results]

    return Agent(name="pipeline", handler=pipeline)


def incomplete_history(path: Path) -> None:
    """Every step completed, the pipeline did not: a resume replays the steps."""
    with SQLiteStateBackend(path) as backend:
        state = ExecutionState(state_id=STATE_ID, state_backend=backend)
        result = asyncio.run(ExecutionEvent(actor=build(Counter(), crash=True))(None, {}, state))
        assert not result.ok


def resume(path: Path, calls: Counter[str]) -> list[int]:
    with SQLiteStateBackend(path) as backend:
        state = ExecutionState.load_from_state_id(STATE_ID, backend)
        result = asyncio.run(ExecutionEvent(actor=build(calls))(None, {}, state))
    assert result.ok, result.error_message
    return list(result.result)


def tamper(path: Path, sql: str, *params: Any) -> int:
    conn = sqlite3.connect(path)
    try:
        changed = conn.execute(sql, params).rowcount
        conn.commit()
    finally:
        conn.close()
    return changed


COMPLETED_STEP = (
    'record LIKE \'%"address":"pipeline/parallel:chains[2]/step#1"%\' '
    'AND record LIKE \'%"status":"completed"%\''
)


@pytest.fixture
def history(tmp_path: Path) -> Path:
    path = tmp_path / "history.db"
    incomplete_history(path)
    return path


def test_an_intact_history_resumes_without_running_a_completed_call(history: Path) -> None:
    calls: Counter[str] = Counter()
    assert resume(history, calls) == EXPECTED
    assert not calls


def test_a_deleted_completed_row_is_reported_not_run_again(history: Path) -> None:
    assert tamper(history, f"DELETE FROM events WHERE {COMPLETED_STEP}") == 1
    calls: Counter[str] = Counter()
    with pytest.raises(StateCorruptedError) as info:
        resume(history, calls)
    message = str(info.value)
    assert f"The journal of state '{STATE_ID}' in {history} is damaged: record " in message
    assert "is missing (the next stored one is" in message
    assert "Completed work may be missing from it, so it is not resumed." in message
    assert "Restore it from a backup, or delete the state with delete_state()" in message
    assert not calls


def test_a_deleted_last_row_is_a_missing_tail(history: Path) -> None:
    tamper(
        history,
        "DELETE FROM events WHERE state_id = ? AND position = "
        "(SELECT MAX(position) FROM events WHERE state_id = ?)",
        STATE_ID,
        STATE_ID,
    )
    with pytest.raises(StateCorruptedError, match=r"committed \(a missing tail\)"):
        resume(history, Counter())


def test_a_row_moved_to_another_run_is_reported_in_both(history: Path) -> None:
    assert tamper(history, f"UPDATE events SET state_id = 'run-2' WHERE {COMPLETED_STEP}") == 1
    with pytest.raises(StateCorruptedError, match="is missing"):
        resume(history, Counter())
    with SQLiteStateBackend(history) as backend:
        with pytest.raises(StateCorruptedError, match="record 1 is missing"):
            backend.load_events("run-2")


def test_an_edited_checksum_key_does_not_switch_the_check_off(history: Path) -> None:
    changed = tamper(
        history,
        "UPDATE events SET record = replace(replace(record, '\"_crc\"', '\"_crx\"'), "
        "'\"result\":', '\"result\":1') WHERE " + COMPLETED_STEP,
    )
    assert changed == 1
    calls: Counter[str] = Counter()
    with pytest.raises(StateCorruptedError) as info:
        resume(history, calls)
    assert "has no checksum (every stored record carries one)" in str(info.value)
    assert not calls


def test_a_high_water_mark_that_disagrees_with_the_rows_is_reported(history: Path) -> None:
    tamper(history, "UPDATE journals SET high_water = high_water + 3")
    with pytest.raises(StateCorruptedError, match=r"were committed \(a missing tail\)"):
        resume(history, Counter())
    tamper(history, "UPDATE journals SET high_water = high_water - 5")
    with pytest.raises(StateCorruptedError, match=r"holds \d+ records, but only \d+ were"):
        resume(history, Counter())


# ------------------------------------------------------------------- bit flips

FLIPS = 1000


def test_bit_flips_anywhere_are_refused_or_resume_without_running_completed_work(
    tmp_path: Path,
) -> None:
    """FLIPS single-bit flips at random positions of one prepared file (half of them
    in bytes that are not zero, where records, indexes and the high-water mark live):
    each copy either is refused with a StateError that says what to do, or resumes to
    the right results with no completed call run again."""
    original = tmp_path / "original.db"
    incomplete_history(original)
    data = original.read_bytes()
    assert not Path(f"{original}-wal").exists()  # everything is in the file
    used = [i for i, byte in enumerate(data) if byte]
    rng = random.Random(14)
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    copy = tmp_path / "flipped.db"
    for number in range(FLIPS):
        position = rng.choice(used) if number % 2 else rng.randrange(len(data))
        damaged = bytearray(data)
        damaged[position] ^= 1 << rng.randrange(8)
        for leftover in (copy, Path(f"{copy}-wal"), Path(f"{copy}-shm")):
            leftover.unlink(missing_ok=True)
        copy.write_bytes(bytes(damaged))
        calls: Counter[str] = Counter()
        try:
            results = resume(copy, calls)
        except StateError as exc:
            message = str(exc)
            assert any(
                hint in message for hint in ("Restore", "restore", "delete", "Point rh_agents")
            ), message
            outcomes["refused"] += 1
            reasons[type(exc).__name__] += 1
            continue
        assert results == EXPECTED, f"flip at byte {position} gave wrong results"
        assert not calls, f"flip at byte {position} re-ran {dict(calls)}"
        outcomes["resumed"] += 1
    print(f"{FLIPS} single-bit flips in a {len(data)}-byte history: {dict(outcomes)}")
    print(f"refused with: {dict(reasons)}")
    assert outcomes["refused"] + outcomes["resumed"] == FLIPS
    assert outcomes["refused"] >= FLIPS // 20  # flips in records and pages were caught


# ------------------------------------------------------- the file under a running state


async def test_a_database_deleted_mid_run_is_reported_at_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    backend = SQLiteStateBackend(path)
    deleted = asyncio.Event()

    async def handler(data: int, extra: Any, state: ExecutionState) -> int:
        if data == 2:
            for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                name.unlink(missing_ok=True)
            deleted.set()
        return data

    tool = Tool(name="t", handler=handler)
    state = ExecutionState(state_id=STATE_ID, state_backend=backend)

    async def pipeline(data: Any, extra: Any, state: ExecutionState) -> list[int]:
        return [int((await ExecutionEvent(actor=tool)(i, {}, state)).result) for i in range(4)]

    with pytest.raises(StateStorageError) as info:
        await ExecutionEvent(actor=Agent(name="pipeline", handler=pipeline))(None, {}, state)
    assert deleted.is_set()
    message = str(info.value)
    assert f"The rh_agents history at {path} was deleted after it was opened" in message
    assert "what it wrote since then is lost with the old file" in message
    assert "never delete or replace a history while a process uses it" in message
    backend.close()
    assert not path.exists()  # nothing recreated an empty history in its place


async def test_a_database_replaced_mid_run_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    other = tmp_path / "other.db"
    SQLiteStateBackend(other).close()
    backend = SQLiteStateBackend(path)

    async def handler(data: int, extra: Any, state: ExecutionState) -> int:
        shutil.copy(other, tmp_path / "swap.db")
        os.replace(tmp_path / "swap.db", path)
        return data

    state = ExecutionState(state_id=STATE_ID, state_backend=backend)
    with pytest.raises(StateStorageError, match="was replaced by another file after it was opened"):
        await ExecutionEvent(actor=Tool(name="t", handler=handler))(1, {}, state)
    backend.close()
