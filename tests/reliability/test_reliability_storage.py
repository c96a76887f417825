"""Damaged, foreign and failing histories: a clear error (or a documented recovery), never
wrong results.

* A SQLite history truncated at any point, or with any single byte flipped, either
  resumes to the right results or raises a :class:`StateError` that says what to do.
* A history written by another program (another pipeline name, other inputs, another
  actor or kind of call at an address) raises :class:`SnapshotMismatchError` instead of
  replaying a result that does not belong to the call.
* Histories of older schemas raise :class:`SchemaVersionError`.
* A disk that fills up mid-run fails the run with a clear error; nothing that was
  recorded as completed is lost, and resuming on a healthy disk finishes the run without
  re-running it.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from journal_faults import FullDisk
from pydantic import BaseModel

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.errors import (
    SchemaVersionError,
    SnapshotMismatchError,
    StateCorruptedError,
    StateError,
    StateNotFoundError,
)
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.state_recovery import (
    SCHEMA_VERSION,
    ReplayMode,
    StateMetadata,
    StateSnapshot,
)
from rh_agents.core.types import ExecutionStatus
from rh_agents.state_backends import (
    FileSystemStateBackend,
    InMemoryStateBackend,
    SQLiteStateBackend,
)
from rh_agents.storage._codec import seal

STATE_ID = "run-1"
PIPELINE = "storage-pipeline"
ITEMS = 4
STEPS = 3


class Step(BaseModel):
    item: int
    step: int
    acc: int


class Value(BaseModel):
    value: int


def step_value(item: int, step: int, acc: int) -> int:
    return (acc * 131 + item * 17 + step * 7 + 3) % 1_000_003


def expected(seed: int = 5) -> list[int]:
    values = []
    for item in range(ITEMS):
        acc = seed
        for step in range(STEPS):
            acc = step_value(item, step, acc)
        values.append(acc)
    return values


def build(
    calls: Counter[str], *, step_type: type[Tool] | type[Agent] = Tool, crash: bool = False
) -> Agent:
    """An agent running a group of ITEMS chains of STEPS dependent tool calls; with
    ``crash`` it fails after the group (as if the process had died there)."""

    async def step(data: Step, extra: Any, state: ExecutionState) -> Value:
        calls[state.get_current_address()] += 1
        return Value(value=step_value(data.item, data.step, data.acc))

    step_actor = step_type(name="step", input_model=Step, output_model=Value, handler=step)

    async def chain(item: int, seed: int, state: ExecutionState) -> int:
        acc = seed
        for number in range(STEPS):
            result = await ExecutionEvent(actor=step_actor)(
                Step(item=item, step=number, acc=acc), {}, state
            )
            if not result.ok:
                raise RuntimeError(result.error_message)
            acc = result.result.value
        return acc

    async def pipeline(seed: int, extra: Any, state: ExecutionState) -> list[int]:
        async with state.parallel(max_workers=2, name="chains") as group:
            for item in range(ITEMS):
                group.add(lambda item=item: chain(item, seed, state))
            results = await group.gather()
        failed = [r for r in results if not r.ok]
        if failed:
            raise failed[0].exception or RuntimeError(failed[0].error_message)
        if crash:
            raise RuntimeError("the process died here")
        return [r.result for r in results]

    return Agent(name="pipeline", handler=pipeline)


async def run(state: ExecutionState, calls: Counter[str], seed: int = 5, **kw: Any) -> Any:
    result = await ExecutionEvent(actor=build(calls, **kw))(seed, {}, state)
    if not result.ok:
        raise result.exception or RuntimeError(result.error_message)
    return result.result


def fresh_history(path: Path, *, complete: bool = True) -> Counter[str]:
    """A history of the pipeline; with ``complete=False`` every step completed but the
    pipeline itself did not, so a resume runs it again and replays the steps."""
    calls: Counter[str] = Counter()
    with SQLiteStateBackend(path) as backend:
        state = ExecutionState(
            state_id=STATE_ID,
            state_backend=backend,
            metadata=StateMetadata(pipeline_name=PIPELINE),
        )
        if complete:
            assert asyncio.run(run(state, calls)) == expected()
        else:
            with pytest.raises(RuntimeError, match="died"):
                asyncio.run(run(state, calls, crash=True))
    return calls


def resume(path: Path, calls: Counter[str] | None = None, **kw: Any) -> Any:
    calls = calls if calls is not None else Counter()
    with SQLiteStateBackend(path) as backend:
        state = ExecutionState.load_from_state_id(STATE_ID, backend, pipeline_name=PIPELINE)
        return asyncio.run(run(state, calls, **kw))


def damaged_outcome(path: Path) -> str:
    """Open and resume a damaged history: 'error' (a clear StateError) or 'ok' (the
    right results); anything else fails the test."""
    try:
        values = resume(path)
    except (StateCorruptedError, StateNotFoundError, SchemaVersionError) as exc:
        message = str(exc)
        assert any(
            hint in message
            for hint in ("Restore", "delete", "start a", "Start a", "Point rh_agents")
        ), message
        return "error"
    assert values == expected(), "a damaged history gave wrong results"
    return "ok"


# ------------------------------------------------------------------ damaged files


def test_a_truncated_history_never_gives_wrong_results(tmp_path: Path) -> None:
    original = tmp_path / "history.db"
    fresh_history(original)
    size = original.stat().st_size
    rng = random.Random(7)
    cuts = sorted({0, 100, 4096, size - 1, *(rng.randrange(1, size) for _ in range(12))})
    outcomes: Counter[str] = Counter()
    for cut in cuts:
        copy = tmp_path / f"cut-{cut}.db"
        shutil.copy(original, copy)
        with copy.open("r+b") as handle:
            handle.truncate(cut)
        outcomes[damaged_outcome(copy)] += 1
    print(f"truncated at {len(cuts)} points: {dict(outcomes)}")
    assert outcomes["error"] >= len(cuts) - 1  # an empty file is a new, empty history


def test_a_flipped_byte_anywhere_never_gives_wrong_results(tmp_path: Path) -> None:
    original = tmp_path / "history.db"
    fresh_history(original)
    data = original.read_bytes()
    rng = random.Random(11)
    # bytes of stored records (where a flip could turn a result into another valid one)
    # and bytes anywhere in the file
    marker = data.find(b'"result":{"value":')
    assert marker > 0
    positions = [marker + 18 + k for k in range(3)]
    positions += [rng.randrange(len(data)) for _ in range(40)]
    outcomes: Counter[str] = Counter()
    for number, position in enumerate(positions):
        damaged = bytearray(data)
        damaged[position] ^= 1 << rng.randrange(8)
        copy = tmp_path / f"flip-{number}.db"
        copy.write_bytes(bytes(damaged))
        outcomes[damaged_outcome(copy)] += 1
    print(f"single-bit flips at {len(positions)} positions: {dict(outcomes)}")
    assert outcomes["error"] >= 3  # at least the flips inside results were caught


def test_a_digit_changed_in_a_stored_result_is_reported_not_replayed(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    fresh_history(path)
    conn = sqlite3.connect(path)
    position, text = conn.execute(
        'SELECT position, record FROM events WHERE record LIKE \'%"status":"completed"%\' '
        "AND record LIKE '%\"value\":%' LIMIT 1"
    ).fetchone()
    start = text.index('"value":') + len('"value":')
    digit = text[start]
    changed = text[:start] + ("1" if digit != "1" else "2") + text[start + 1 :]
    conn.execute("UPDATE events SET record = ? WHERE position = ?", (changed, position))
    conn.commit()
    conn.close()
    with pytest.raises(StateCorruptedError, match="fails its checksum") as info:
        resume(path)
    assert f"Event record {position} of state '{STATE_ID}'" in str(info.value)
    assert "restore it from a backup" in str(info.value)


def test_the_file_system_journal_is_checked_too(tmp_path: Path) -> None:
    backend = FileSystemStateBackend(tmp_path)
    backend.append_event("run-1", {"seq": 1, "result": 12345})
    journal = tmp_path / "journals" / "run-1.jsonl"
    journal.write_text(journal.read_text().replace("12345", "12845"))
    with pytest.raises(StateCorruptedError, match=r"record 1 of state 'run-1'.*checksum"):
        backend.load_events("run-1")
    # a record without its checksum is refused, never loaded unchecked
    journal.write_text('{"seq":1,"result":12845}\n')
    with pytest.raises(StateCorruptedError, match="has no checksum"):
        backend.load_events("run-1")


def test_a_snapshot_with_a_changed_byte_is_reported(tmp_path: Path) -> None:
    backend = FileSystemStateBackend(tmp_path)
    snapshot = StateSnapshot(state_id="run-1", execution_state={"storage": {"budget": 100}})
    backend.save_state(snapshot)
    path = tmp_path / "states" / "run-1.json"
    path.write_text(path.read_text().replace('"budget":100', '"budget":900'))
    with pytest.raises(StateCorruptedError, match=r"snapshot of state 'run-1'.*checksum"):
        backend.load_state("run-1")


# ------------------------------------------------------------------ another program


def test_another_pipeline_name_is_refused_before_anything_runs(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    fresh_history(path)
    with SQLiteStateBackend(path) as backend:
        with pytest.raises(SnapshotMismatchError) as info:
            ExecutionState.load_from_state_id(STATE_ID, backend, pipeline_name="billing")
    message = str(info.value)
    assert f"written by pipeline '{PIPELINE}'" in message
    assert "'billing'" in message and "start a fresh run" in message


@pytest.mark.parametrize("complete", [True, False], ids=["at-the-root", "inside-a-group"])
def test_other_inputs_are_refused_instead_of_replayed(tmp_path: Path, complete: bool) -> None:
    path = tmp_path / "history.db"
    fresh_history(path, complete=complete)
    calls: Counter[str] = Counter()
    with pytest.raises(SnapshotMismatchError) as info:
        resume(path, calls, seed=6)  # the same program, called with another input
    message = str(info.value)
    where = "'pipeline'" if complete else "'pipeline/parallel:chains["
    assert f"completed at {where}" in message and "different input" in message
    assert "Start a fresh run" in message
    assert not calls  # nothing ran on a history that is not this run's


def test_the_same_inputs_resume_normally(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    first = fresh_history(path, complete=False)
    calls: Counter[str] = Counter()
    assert resume(path, calls) == expected()
    assert not calls and len(first) == ITEMS * STEPS  # every step was replayed


def test_another_kind_of_call_at_an_address_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    fresh_history(path, complete=False)
    with pytest.raises(SnapshotMismatchError, match=r"has a tool_call at .* agent_call"):
        resume(path, step_type=Agent)


def test_another_actor_at_an_address_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    fresh_history(path, complete=False)
    with SQLiteStateBackend(path) as backend:
        records = backend.load_events(STATE_ID)
    forged = SQLiteStateBackend(tmp_path / "forged.db")
    for record in records:
        if record["address"].endswith("/step") and record["status"] == "completed":
            record = {**record, "actor": "delete_everything"}
        forged.append_event(STATE_ID, record)
    forged.save_state(StateSnapshot(state_id=STATE_ID))
    state = ExecutionState.load_from_state_id(STATE_ID, forged)
    with pytest.raises(SnapshotMismatchError, match="actor 'delete_everything' at"):
        asyncio.run(run(state, Counter()))
    forged.close()


def test_validation_mode_reports_changed_inputs_as_divergence(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    fresh_history(path)
    with SQLiteStateBackend(path) as backend:
        state = ExecutionState.load_from_state_id(
            STATE_ID, backend, replay_mode=ReplayMode.VALIDATION
        )
        values = asyncio.run(run(state, Counter(), seed=6))
    assert values == expected(6)
    changed = [d for d in state.divergences if d.get("input_changed")]
    assert changed and all(d["address"].startswith("pipeline") for d in changed)


def test_inputs_are_compared_by_value_not_by_form() -> None:
    """A dict input and the model it validates into fingerprint the same, in any key
    order, and sets do not depend on the process's hash seed."""
    from rh_agents.core.history import input_fingerprint

    assert input_fingerprint(Step(item=1, step=2, acc=3)) == input_fingerprint(
        {"acc": 3, "step": 2, "item": 1}
    )
    assert input_fingerprint({"tags": {"b", "a", "c"}}) == input_fingerprint(
        {"tags": {"c", "a", "b"}}
    )
    assert input_fingerprint({"x": 1}) != input_fingerprint({"x": 2})
    assert input_fingerprint(object()) is None  # no JSON form: not compared


_PINNED_FINGERPRINTS = [
    (None, "2fFvbvmlvBqcCiyY"),
    (True, "0JE4Y0QTZKYfyt4Y"),
    (0, "FM6_ZfIwDth3N9X8"),
    (-7, "KQTyKAiJMtWea8GA"),
    (2**70, "X8pzHBflG0Kk0oV6"),
    (0.1, "Am9q_-mjyFoSGUIj"),
    (1e300, "s1iY9NvHWbLO8bTB"),
    (math.inf, "f1wu5aPd507hovS3"),
    (-math.inf, "-f9rNzt-_YUSLN3Z"),
    (math.nan, "LYWr0N3cSFDsvi6V"),
    ("", "sZhtkPv4VHivsBjj"),
    ("hello", "9FrBs4mKEzhfDIaF"),
    ('héllo ✓ \n"q"', "_vRfhszOpBu7JyFS"),
    ([1, "a", None], "8vD7T2ufO5-BdnHG"),
    ((1, 2), "EyxyMeMzjelrJGsv"),
    ({"b": 1, "a": [1.5, {"z": None, "y": False}]}, "bkCzK9q5PH8A-Buy"),
    ({"tags": {"b", "a"}}, "hxWy8IE-TzyqQfrD"),
    ({1: "int key"}, "tYM_eECGgoPhrsmM"),
    ({"k": ("t", 1)}, "1rxGJsKRZCezLDR8"),
]


@pytest.mark.parametrize(("value", "fingerprint"), _PINNED_FINGERPRINTS)
def test_fingerprints_stay_what_earlier_versions_recorded(value: Any, fingerprint: str) -> None:
    """Journals written by earlier versions hold these: a resumed run compares its inputs
    with them, so a faster encoder must produce the very same text."""
    from rh_agents.core.history import input_fingerprint

    assert input_fingerprint(value) == fingerprint


def test_a_cyclic_input_has_no_fingerprint() -> None:
    from rh_agents.core.history import input_fingerprint

    loop: list[Any] = []
    loop.append(loop)
    mapping: dict[str, Any] = {}
    mapping["self"] = mapping
    assert input_fingerprint(loop) is None
    assert input_fingerprint(mapping) is None
    assert input_fingerprint([1, 2]) is not None  # the shared encoder is still usable


# ------------------------------------------------------------------ older schemas


def test_a_history_of_an_older_storage_schema_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    fresh_history(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE rh_agents_meta SET value = '0' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match=r"storage schema version 0.*release that wrote"):
        resume(path)


def test_a_snapshot_of_an_older_schema_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with SQLiteStateBackend(path) as backend:
        old = StateSnapshot(state_id=STATE_ID).model_dump(mode="json") | {
            "version": SCHEMA_VERSION - 1
        }
        conn = sqlite3.connect(path)
        conn.execute(
            "INSERT INTO states VALUES (?, ?, 'running', NULL, '', '')",
            (STATE_ID, seal(json.dumps(old), STATE_ID)),
        )
        conn.commit()
        conn.close()
        with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION - 1}"):
            ExecutionState.load_from_state_id(STATE_ID, backend)


@pytest.mark.parametrize(
    "record",
    [
        {"seq": 1, "kind": "event", "address": "pipeline", "status": "done"},
        {"seq": 1, "kind": "event", "status": "completed"},
        {"seq": 1, "kind": "event", "address": "pipeline", "status": "completed", "metadata": 3},
    ],
    ids=["unknown-status", "no-address", "bad-metadata"],
)
def test_records_of_an_older_format_are_a_clear_error(record: dict[str, Any]) -> None:
    backend = InMemoryStateBackend()
    backend.append_event(STATE_ID, record)
    with pytest.raises(StateCorruptedError, match="History record 0 cannot be read"):
        ExecutionState.load_from_state_id(STATE_ID, backend)


def test_a_snapshot_whose_history_is_not_a_list_is_a_clear_error() -> None:
    snapshot = StateSnapshot(state_id=STATE_ID, execution_state={"events": {"a": 1}})
    with pytest.raises(StateCorruptedError, match="no readable history"):
        ExecutionState.from_snapshot(snapshot)


# ------------------------------------------------------------------ a full disk


@pytest.mark.parametrize("room", [0, 1, 3, 12, 20, 27])
def test_a_full_disk_fails_the_run_clearly_and_loses_no_completed_work(
    tmp_path: Path, room: int
) -> None:
    path = tmp_path / "history.db"
    calls: Counter[str] = Counter()
    backend = FullDisk(SQLiteStateBackend(path), room)
    state = ExecutionState(
        state_id=STATE_ID, state_backend=backend, metadata=StateMetadata(pipeline_name=PIPELINE)
    )
    with pytest.raises(StateError) as info:
        asyncio.run(run(state, calls))
    message = str(info.value)
    assert "No space left on device" in message
    assert "free disk space" in message and "resume the run" in message
    backend.close()

    # every completion the run saw is in the journal, and the memory never got ahead
    with SQLiteStateBackend(path) as reader:
        records = reader.load_events(STATE_ID)
    journaled = [(r["address"], r["status"]) for r in records]
    in_memory = [(e.address, e.execution_status.value) for e in state.history.get_event_list()]
    assert in_memory == journaled
    completed = {a for a, status in journaled if status == "completed"}

    # on a healthy disk the run resumes to the right results without re-running them
    again: Counter[str] = Counter()
    if not records:  # nothing was recorded: there is no run to resume, only to start
        with pytest.raises(StateNotFoundError):
            resume(path, again)
        fresh_history(path)
        return
    assert resume(path, again) == expected()
    assert not set(again) & completed
    assert set(again) | completed >= set(calls)


async def test_a_history_error_stops_a_fail_slow_group_instead_of_retrying() -> None:
    """A full disk is not an item failure that a retry or the next item could fix."""
    from rh_agents.testing import FakeClock

    calls: Counter[str] = Counter()

    async def step(data: Any, extra: Any, state: ExecutionState) -> int:
        calls[state.get_current_address()] += 1
        return 1

    tool = Tool(name="step", handler=step)
    backend = FullDisk(InMemoryStateBackend(), room=4)
    async with FakeClock() as clock:
        state = ExecutionState(state_backend=backend, clock=clock)
        with pytest.raises(StateError, match="No space left on device"):
            async with state.parallel(max_workers=1, max_retries=3, name="g") as group:
                for _ in range(6):
                    group.add(lambda: ExecutionEvent(actor=tool)(None, {}, state))
                await group.gather()  # results ignored: the error must still surface
    assert clock.monotonic() == 0  # no retry backoff was waited for
    # appends: group start, item 0 start + completion, item 1 start; item 1's completion
    # failed, and neither item 1 (max_retries=3) nor any later item ran again
    assert calls == {"parallel:g[0]/step": 1, "parallel:g[1]/step": 1}


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_non_finite_results_survive_a_snapshot(tmp_path: Path, value: float) -> None:
    """Snapshots once wrote inf and NaN as null: a replayed result came back as None."""

    async def handler(data: Any, extra: Any, state: ExecutionState) -> dict[str, float]:
        return {"score": value}

    tool = Tool(name="score", handler=handler)
    state = ExecutionState(state_id=STATE_ID)
    asyncio.run(ExecutionEvent(actor=tool)(None, {}, state))
    backend = FileSystemStateBackend(tmp_path)
    backend.save_state(state.to_snapshot())
    loaded = backend.load_state(STATE_ID)
    assert loaded is not None
    restored = ExecutionState.from_snapshot(loaded)
    replayed = asyncio.run(ExecutionEvent(actor=tool)(None, {}, restored))
    assert replayed.status is ExecutionStatus.RECOVERED
    score = replayed.result["score"]
    assert score == value or (math.isnan(value) and math.isnan(score))
