"""Tests of snapshots, state backends, event journals and the artifact backend."""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rh_agents.core.errors import (
    InvalidArgumentError,
    LifecycleError,
    ResultSerializationError,
    SchemaVersionError,
    StateCorruptedError,
    StateNotFoundError,
)
from rh_agents.core.state_recovery import (
    SCHEMA_VERSION,
    ReplayMode,
    StateMetadata,
    StateSnapshot,
    StateStatus,
)
from rh_agents.state_backends import (
    ArtifactBackend,
    ArtifactNotFoundError,
    EventJournal,
    FileSystemArtifactBackend,
    FileSystemStateBackend,
    InMemoryStateBackend,
    SQLiteStateBackend,
    StateBackend,
    StateStorageError,
    require_state,
)
from rh_agents.storage._codec import seal

# The backends the shared ``backend`` fixture (tests/conftest.py) yields in turn.
Backend = InMemoryStateBackend | SQLiteStateBackend | FileSystemStateBackend


def _snapshot(state_id: str = "run-1", **changes: Any) -> StateSnapshot:
    return StateSnapshot(
        state_id=state_id,
        execution_state={"events": [{"seq": 1, "status": "completed", "result": [1, "a"]}]},
        **changes,
    )


# --------------------------------------------------------------------------- snapshot model


def test_snapshot_defaults_are_current_version_running_and_utc() -> None:
    snap = StateSnapshot(state_id="run-1")
    assert snap.version == SCHEMA_VERSION
    assert snap.status is StateStatus.RUNNING
    assert snap.created_at.tzinfo is UTC
    assert snap.updated_at.tzinfo is UTC
    assert snap.metadata == StateMetadata()
    assert snap.execution_state == {} and snap.artifact_refs == {}


def test_snapshot_timestamps_are_normalized_to_utc() -> None:
    naive = datetime(2024, 5, 1, 12, 0)
    paris = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    snap = StateSnapshot(state_id="run-1", created_at=naive, updated_at=paris)
    assert snap.created_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert snap.updated_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert snap.updated_at.tzinfo is UTC


@pytest.mark.parametrize("found", [0, SCHEMA_VERSION + 1, 99])
def test_snapshot_of_another_schema_version_raises_schema_version_error(found: int) -> None:
    data = _snapshot().model_dump(mode="json")
    data["version"] = found
    with pytest.raises(SchemaVersionError) as info:
        StateSnapshot.model_validate(data)
    message = str(info.value)
    assert f"version {found}" in message
    assert f"reads only schema version {SCHEMA_VERSION}" in message
    assert "'run-1'" in message
    with pytest.raises(SchemaVersionError):
        StateSnapshot.model_validate_json(json.dumps(data))


def test_schema_version_errors_say_what_to_do_in_full() -> None:
    older = {**_snapshot().model_dump(mode="json"), "version": SCHEMA_VERSION - 1}
    with pytest.raises(SchemaVersionError) as info:
        StateSnapshot.model_validate(older)
    assert str(info.value) == (
        f"State 'run-1' was written with snapshot schema version {SCHEMA_VERSION - 1}, but "
        f"this release of rh_agents reads only schema version {SCHEMA_VERSION}. Resume it "
        "with the rh_agents release that wrote it, or start a new run; old histories are "
        "not migrated automatically."
    )
    with pytest.raises(SchemaVersionError) as info:  # no usable state id
        StateSnapshot.model_validate({"version": SCHEMA_VERSION + 1})
    assert str(info.value) == (
        f"This state was written with snapshot schema version {SCHEMA_VERSION + 1}, but "
        f"this release of rh_agents reads only schema version {SCHEMA_VERSION}. Upgrade "
        "rh_agents to a release that reads it."
    )


def test_newer_schema_version_is_reported_before_field_errors() -> None:
    # A future schema may have renamed fields; the version must be what is reported.
    with pytest.raises(SchemaVersionError, match="Upgrade rh_agents"):
        StateSnapshot.model_validate({"state_id": "x", "version": 7, "status": "brand-new"})


def test_enums_have_the_documented_values() -> None:
    assert [m.value for m in ReplayMode] == ["normal", "republish_all", "validation"]
    assert [m.value for m in StateStatus] == [
        "running",
        "paused",
        "completed",
        "failed",
        "cancelled",
    ]


# --------------------------------------------------------------------------- every backend


def test_backends_implement_the_protocols(backend: Backend) -> None:
    assert isinstance(backend, StateBackend)
    assert isinstance(backend, EventJournal)


def test_snapshot_round_trip(backend: Backend) -> None:
    snap = _snapshot(
        metadata=StateMetadata(tags=["a"], pipeline_name="triage", custom={"k": [1, None]}),
        artifact_refs={"report": "artifact:report"},
        status=StateStatus.PAUSED,
    )
    assert backend.load_state("run-1") is None
    assert not backend.exists("run-1")
    assert backend.save_state(snap) is True
    assert backend.exists("run-1")
    assert backend.load_state("run-1") == snap


def test_save_replaces_and_update_requires_an_existing_state(backend: Backend) -> None:
    assert backend.update_state(_snapshot("ghost")) is False
    assert backend.load_state("ghost") is None
    backend.save_state(_snapshot())
    done = _snapshot(status=StateStatus.COMPLETED)
    assert backend.update_state(done) is True
    loaded = backend.load_state("run-1")
    assert loaded is not None and loaded.status is StateStatus.COMPLETED
    failed = _snapshot(status=StateStatus.FAILED)
    assert backend.save_state(failed) is True
    loaded = backend.load_state("run-1")
    assert loaded is not None and loaded.status is StateStatus.FAILED


def test_list_states_is_sorted_and_filters(backend: Backend) -> None:
    backend.save_state(_snapshot("b", metadata=StateMetadata(pipeline_name="p1")))
    backend.save_state(
        _snapshot("a", status=StateStatus.COMPLETED, metadata=StateMetadata(pipeline_name="p2"))
    )
    backend.save_state(_snapshot("c", status=StateStatus.COMPLETED))
    backend.append_event("journal-only", {"seq": 1})
    assert backend.list_states() == ["a", "b", "c"]
    assert backend.list_states(status=StateStatus.COMPLETED) == ["a", "c"]
    assert backend.list_states(status="running") == ["b"]
    assert backend.list_states(pipeline_name="p2") == ["a"]
    assert backend.list_states(status="completed", pipeline_name="p1") == []
    assert backend.list_journals() == ["journal-only"]
    with pytest.raises(InvalidArgumentError, match="Unknown state status 'done'"):
        backend.list_states(status="done")


def test_delete_removes_snapshot_and_journal(backend: Backend) -> None:
    backend.save_state(_snapshot())
    backend.append_event("run-1", {"seq": 1})
    assert backend.delete_state("run-1") is True
    assert backend.load_state("run-1") is None
    assert backend.load_events("run-1") == []
    assert backend.delete_state("run-1") is False
    backend.append_event("only-events", {"seq": 1})
    assert backend.delete_state("only-events") is True


def test_journal_keeps_append_order_per_state(backend: Backend) -> None:
    for seq in range(20):
        backend.append_event("run-1", {"seq": seq})
        backend.append_event("run-2", {"seq": -seq})
    assert [r["seq"] for r in backend.load_events("run-1")] == list(range(20))
    assert [r["seq"] for r in backend.load_events("run-2")] == [-s for s in range(20)]
    assert backend.load_events("unknown") == []
    # A journal without any saved snapshot is allowed.
    assert backend.load_state("run-1") is None


def test_append_from_worker_threads_loses_nothing(backend: Backend) -> None:
    def work(worker: int) -> None:
        for seq in range(25):
            backend.append_event("run-1", {"worker": worker, "seq": seq})

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = backend.load_events("run-1")
    assert len(records) == 100
    for worker in range(4):
        assert [r["seq"] for r in records if r["worker"] == worker] == list(range(25))


def test_record_that_is_not_json_is_rejected_and_not_stored(backend: Backend) -> None:
    with pytest.raises(ResultSerializationError, match=r"'run-1'.*not JSON-serializable"):
        backend.append_event("run-1", {"result": object()})
    with pytest.raises(InvalidArgumentError, match="must be a dict"):
        backend.append_event("run-1", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="non-empty string"):
        backend.append_event("", {"seq": 1})
    assert backend.load_events("run-1") == []


def test_snapshot_that_is_not_json_is_rejected_and_not_stored(backend: Backend) -> None:
    bad = StateSnapshot(state_id="run-1", execution_state={"x": object()})
    with pytest.raises(ResultSerializationError, match="'run-1'"):
        backend.save_state(bad)
    assert not backend.exists("run-1")


def test_stored_data_cannot_be_mutated_through_caller_objects(backend: Backend) -> None:
    record: dict[str, Any] = {"seq": 1, "result": {"items": [1]}}
    backend.append_event("run-1", record)
    record["result"]["items"].append(2)
    loaded = backend.load_events("run-1")
    loaded[0]["seq"] = 99
    assert backend.load_events("run-1") == [{"seq": 1, "result": {"items": [1]}}]

    snap = _snapshot()
    backend.save_state(snap)
    snap.execution_state["events"].clear()
    first = backend.load_state("run-1")
    assert first is not None
    first.execution_state.clear()
    assert backend.load_state("run-1") == _snapshot(
        created_at=first.created_at, updated_at=first.updated_at
    )


def test_require_state_raises_not_found_listing_known_ids(backend: Backend) -> None:
    backend.save_state(_snapshot("alpha"))
    backend.append_event("beta", {"seq": 1})
    assert require_state(backend, "alpha").state_id == "alpha"
    with pytest.raises(StateNotFoundError) as info:
        require_state(backend, "gamma")
    assert isinstance(info.value, KeyError)
    assert "'gamma'" in str(info.value)
    assert "'alpha', 'beta'" in str(info.value)


# --------------------------------------------------------------------------- hypothesis

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# "_crc" is reserved for the checksum (refused: tests/storage/test_codec.py)
_record_keys = st.text(max_size=8).filter(lambda key: key != "_crc")
_records = st.lists(st.dictionaries(_record_keys, _json_values, max_size=5), max_size=8)
_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True)
_datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), None]),
)
_snapshots = st.builds(
    StateSnapshot,
    state_id=_ids,
    created_at=_datetimes,
    updated_at=_datetimes,
    status=st.sampled_from(StateStatus),
    metadata=st.builds(
        StateMetadata,
        tags=st.lists(st.text(max_size=10), max_size=3),
        description=st.none() | st.text(max_size=30),
        pipeline_name=st.none() | st.text(max_size=10),
        parent_state_id=st.none() | _ids,
        custom=st.dictionaries(st.text(max_size=8), _json_values, max_size=3),
    ),
    execution_state=st.dictionaries(st.text(max_size=8), _json_values, max_size=4),
    artifact_refs=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
)

_counter = itertools.count()

_HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@_HYPOTHESIS
@given(records=_records)
def test_any_json_records_survive_append_and_load(backend: Backend, records: Any) -> None:
    state_id = f"run-{next(_counter)}"
    for record in records:
        backend.append_event(state_id, record)
    assert backend.load_events(state_id) == records


@_HYPOTHESIS
@given(snapshot=_snapshots)
def test_any_snapshot_survives_save_and_load(backend: Backend, snapshot: StateSnapshot) -> None:
    backend.save_state(snapshot)
    loaded = backend.load_state(snapshot.state_id)
    assert loaded == snapshot
    assert loaded.model_dump() == snapshot.model_dump()


# --------------------------------------------------------------------------- SQLite


def _history_with_data(path: Path, events: int = 200) -> None:
    with SQLiteStateBackend(path) as backend:
        backend.save_state(_snapshot())
        for seq in range(events):
            backend.append_event("run-1", {"seq": seq, "payload": "x" * 200})


def _open_and_read(path: Path) -> None:
    with SQLiteStateBackend(path) as backend:
        backend.load_state("run-1")
        backend.load_events("run-1")


def test_sqlite_creates_parent_directories_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "history.db"
    with SQLiteStateBackend(path) as backend:
        backend.append_event("run-1", {"seq": 1})
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            meta = dict(conn.execute("SELECT key, value FROM rh_agents_meta").fetchall())
        finally:
            conn.close()
    assert meta == {"app": "rh_agents.history", "schema_version": "2"}


def test_sqlite_history_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    _history_with_data(path, events=3)
    with SQLiteStateBackend(path) as backend:
        assert backend.load_state("run-1") is not None
        assert [r["seq"] for r in backend.load_events("run-1")] == [0, 1, 2]


def test_sqlite_second_instance_sees_appended_events(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with SQLiteStateBackend(path) as writer, SQLiteStateBackend(path) as reader:
        assert reader.load_events("run-1") == []
        writer.append_event("run-1", {"seq": 1})
        assert reader.load_events("run-1") == [{"seq": 1}]
        reader.append_event("run-1", {"seq": 2})
        assert [r["seq"] for r in writer.load_events("run-1")] == [1, 2]


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.9])
def test_sqlite_truncated_file_is_reported_as_corrupted(tmp_path: Path, fraction: float) -> None:
    path = tmp_path / "history.db"
    _history_with_data(path)
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(int(size * fraction))
    with pytest.raises(StateCorruptedError) as info:
        _open_and_read(path)
    assert str(path) in str(info.value)
    assert "delete it" in str(info.value)


def test_sqlite_random_bytes_are_reported_as_corrupted(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(StateCorruptedError, match="not a SQLite database") as info:
        SQLiteStateBackend(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == bytes(range(256)) * 64  # left untouched


def test_sqlite_foreign_database_is_not_an_rh_agents_history(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StateCorruptedError, match="not an rh_agents history") as info:
        SQLiteStateBackend(path)
    assert "customers" in str(info.value)
    conn = sqlite3.connect(path)
    try:  # the foreign database was not modified (no WAL switch, no tables added)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    finally:
        conn.close()
    assert names == ["customers"]


def test_sqlite_database_with_foreign_marker_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE rh_agents_meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO rh_agents_meta VALUES ('app', 'rh_agents.cache')")
    conn.commit()
    conn.close()
    with pytest.raises(StateCorruptedError, match=r"not an rh_agents history.*'rh_agents\.cache'"):
        SQLiteStateBackend(path)


@pytest.mark.parametrize(("version", "advice"), [(0, "release that wrote it"), (99, "Upgrade")])
def test_sqlite_other_schema_version_raises(tmp_path: Path, version: int, advice: str) -> None:
    path = tmp_path / "history.db"
    _history_with_data(path, events=1)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE rh_agents_meta SET value = ? WHERE key = 'schema_version'", (version,))
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError) as info:
        SQLiteStateBackend(path)
    assert f"storage schema version {version}" in str(info.value)
    assert advice in str(info.value)


def _tamper(path: Path, sql: str, *params: Any) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def test_sqlite_corrupt_event_row_names_state_and_position(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    _history_with_data(path, events=3)
    _tamper(path, "UPDATE events SET record = '{\"seq\": 1, ' WHERE position = 2")
    with SQLiteStateBackend(path) as backend:
        with pytest.raises(StateCorruptedError) as info:
            backend.load_events("run-1")
        assert "Event record 2 of state 'run-1'" in str(info.value)
        assert "has no checksum" in str(info.value)
        assert "'run-1'" in str(info.value)
        assert str(path) in str(info.value)
        # Other states and the snapshot stay readable.
        assert backend.load_state("run-1") is not None


def test_sqlite_event_row_that_is_not_text_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    _history_with_data(path, events=1)
    _tamper(path, "UPDATE events SET record = x'00ff'")  # a blob, not text
    with SQLiteStateBackend(path) as backend, pytest.raises(StateCorruptedError) as info:
        backend.load_events("run-1")
    assert "Event record 1 of state 'run-1'" in str(info.value)
    assert "has no checksum" in str(info.value)


def test_sqlite_corrupt_snapshot_row_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    _history_with_data(path, events=0)
    _tamper(path, "UPDATE states SET snapshot = '{\"state_id\": '")
    with SQLiteStateBackend(path) as backend:
        with pytest.raises(StateCorruptedError, match="snapshot of state 'run-1'"):
            backend.load_state("run-1")


def test_sqlite_snapshot_row_of_newer_version_raises_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    _history_with_data(path, events=0)
    data = _snapshot().model_dump(mode="json") | {"version": SCHEMA_VERSION + 1}
    _tamper(path, "UPDATE states SET snapshot = ?", seal(json.dumps(data), "run-1"))
    with SQLiteStateBackend(path) as backend, pytest.raises(SchemaVersionError):
        backend.load_state("run-1")


def test_sqlite_empty_file_becomes_a_new_history(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.touch()
    with SQLiteStateBackend(path) as backend:
        backend.append_event("run-1", {"seq": 1})
        assert backend.load_events("run-1") == [{"seq": 1}]


def test_sqlite_write_failure_raises_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with SQLiteStateBackend(path, timeout=0.05) as backend:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StateStorageError, match="append an event") as info:
                backend.append_event("run-1", {"seq": 1})
            assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        backend.append_event("run-1", {"seq": 2})
        assert backend.load_events("run-1") == [{"seq": 2}]


def test_sqlite_closed_backend_raises_lifecycle_error(tmp_path: Path) -> None:
    backend = SQLiteStateBackend(tmp_path / "history.db")
    backend.close()
    backend.close()  # closing twice is fine
    with pytest.raises(LifecycleError, match="is closed"):
        backend.append_event("run-1", {"seq": 1})


_CHILD = """
import sys
from rh_agents.state_backends import FileSystemStateBackend, SQLiteStateBackend
kind, path = sys.argv[1], sys.argv[2]
backend = SQLiteStateBackend(path) if kind == "sqlite" else FileSystemStateBackend(path)
seq = 0
while True:
    backend.append_event("run-1", {"seq": seq, "payload": "x" * 100})
    print(seq, flush=True)
    seq += 1
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("kind", ["sqlite", "filesystem"])
def test_sigkill_loses_no_acknowledged_event(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("history.db" if kind == "sqlite" else "history")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, kind, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert child.stdout is not None
    acknowledged = -1
    try:
        for line in child.stdout:
            acknowledged = int(line)
            if acknowledged >= 200:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert acknowledged >= 200
    if kind == "sqlite":
        with SQLiteStateBackend(path) as history:
            records = history.load_events("run-1")
    else:
        records = FileSystemStateBackend(path).load_events("run-1")
    seqs = [r["seq"] for r in records]
    assert seqs[: acknowledged + 1] == list(range(acknowledged + 1))
    assert seqs == list(range(len(seqs)))


# --------------------------------------------------------------------------- file system


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def test_filesystem_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    backend = FileSystemStateBackend(tmp_path)
    for status in StateStatus:
        backend.save_state(_snapshot(status=status))
    backend.append_event("run-1", {"seq": 1})
    assert _files(tmp_path) == [
        "journals/run-1.hwm",
        "journals/run-1.jsonl",
        "rh_agents_history.json",
        "states/run-1.json",
    ]


def test_filesystem_failed_write_keeps_the_old_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FileSystemStateBackend(tmp_path)
    backend.save_state(_snapshot())

    def broken_replace(src: str, dst: str, **dir_fds: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StateStorageError, match="No space left on device"):
        backend.save_state(_snapshot(status=StateStatus.FAILED))
    monkeypatch.undo()
    loaded = backend.load_state("run-1")
    assert loaded is not None and loaded.status is StateStatus.RUNNING
    assert _files(tmp_path / "states") == ["run-1.json"]


def test_filesystem_append_failure_raises_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FileSystemStateBackend(tmp_path)

    def full(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StateStorageError, match="append an event") as info:
        backend.append_event("run-1", {"seq": 1})
    assert isinstance(info.value.__cause__, OSError)


def test_filesystem_torn_last_line_is_ignored_then_repaired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FileSystemStateBackend(tmp_path)
    backend.append_event("run-1", {"seq": 1})
    journal = tmp_path / "journals" / "run-1.jsonl"
    with journal.open("ab") as handle:
        handle.write(b'{"seq": 2, "resu')  # a crash in the middle of a write
    with caplog.at_level(logging.WARNING, logger="rh_agents.state_backends"):
        assert backend.load_events("run-1") == [{"seq": 1}]
    assert "unterminated last line" in caplog.text
    backend.append_event("run-1", {"seq": 3})
    assert backend.load_events("run-1") == [{"seq": 1}, {"seq": 3}]


def test_filesystem_corrupt_line_in_the_middle_raises(tmp_path: Path) -> None:
    backend = FileSystemStateBackend(tmp_path)
    journal = tmp_path / "journals" / "run-1.jsonl"
    for seq in (1, 2, 3):
        backend.append_event("run-1", {"seq": seq})
    lines = journal.read_bytes().split(b"\n")
    lines[1] = b'{"seq": '
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(StateCorruptedError, match="Event record 2 of state 'run-1'") as info:
        backend.load_events("run-1")
    assert f"{journal} (line 2)" in str(info.value)


def test_filesystem_damaged_snapshot_file_raises(tmp_path: Path) -> None:
    backend = FileSystemStateBackend(tmp_path)
    (tmp_path / "states" / "run-1.json").write_text('{"state_id": "run-1", "status": 3')
    with pytest.raises(StateCorruptedError, match="snapshot of state 'run-1'"):
        backend.load_state("run-1")


@pytest.mark.parametrize("bad_id", ["../x", "a/b", ".hidden", "x" * 201, "a\\b", "name\n"])
def test_filesystem_rejects_ids_that_are_not_safe_file_names(tmp_path: Path, bad_id: str) -> None:
    backend = FileSystemStateBackend(tmp_path / "history")
    with pytest.raises(InvalidArgumentError, match="cannot be used as a file name"):
        backend.save_state(_snapshot(bad_id))
    with pytest.raises(InvalidArgumentError):
        backend.append_event(bad_id, {"seq": 1})
    assert not (tmp_path / "x").exists()


def test_filesystem_marker_of_another_version_or_app(tmp_path: Path) -> None:
    FileSystemStateBackend(tmp_path)
    marker = tmp_path / "rh_agents_history.json"
    marker.write_text(json.dumps({"app": "rh_agents.history", "schema_version": 42}))
    with pytest.raises(SchemaVersionError, match="storage schema version 42"):
        FileSystemStateBackend(tmp_path)
    marker.write_text("garbage")
    with pytest.raises(StateCorruptedError, match="not a usable rh_agents history"):
        FileSystemStateBackend(tmp_path)


def test_filesystem_second_instance_sees_appended_events(tmp_path: Path) -> None:
    first, second = FileSystemStateBackend(tmp_path), FileSystemStateBackend(tmp_path)
    first.append_event("run-1", {"seq": 1})
    second.append_event("run-1", {"seq": 2})
    assert first.load_events("run-1") == [{"seq": 1}, {"seq": 2}]


# --------------------------------------------------------------------------- artifacts


@pytest.fixture
def artifacts(tmp_path: Path) -> FileSystemArtifactBackend:
    return FileSystemArtifactBackend(tmp_path / "artifacts")


@pytest.mark.parametrize(
    "value",
    [b"\x00\xffbinary", "text with \u00e9 and \u4e2d", {"a": [1, 2.5, None, True]}, [1, "x"], 7],
)
def test_artifact_round_trip_keeps_the_type(
    artifacts: FileSystemArtifactBackend, value: Any
) -> None:
    assert isinstance(artifacts, ArtifactBackend)
    ref = artifacts.save_artifact("item-1", value)
    assert ref == "artifact:item-1"
    for handle in (ref, "item-1"):
        loaded = artifacts.load_artifact(handle)
        assert loaded == value and type(loaded) is type(value)
        assert artifacts.exists(handle)


def test_artifact_bytes_and_text_are_stored_as_they_are(
    artifacts: FileSystemArtifactBackend,
) -> None:
    artifacts.save_artifact("raw", b"\x01\x02")
    artifacts.save_artifact("note", "h\u00e9llo")
    assert (artifacts.base_path / "raw.bin").read_bytes() == b"\x01\x02"
    assert (artifacts.base_path / "note.txt").read_bytes() == "h\u00e9llo".encode()


def test_artifact_saved_again_with_another_kind(artifacts: FileSystemArtifactBackend) -> None:
    artifacts.save_artifact("item", b"bytes")
    artifacts.save_artifact("item", {"now": "json"})
    assert artifacts.load_artifact("item") == {"now": "json"}
    assert _files(artifacts.base_path) == ["item.json"]


def test_artifact_list_delete_and_missing(artifacts: FileSystemArtifactBackend) -> None:
    artifacts.save_artifact("b.v1", "x")
    artifacts.save_artifact("a", b"y")
    assert artifacts.list_artifacts() == ["a", "b.v1"]
    assert artifacts.delete_artifact("artifact:a") is True
    assert artifacts.delete_artifact("a") is False
    assert not artifacts.exists("a")
    with pytest.raises(ArtifactNotFoundError, match="'a'") as info:
        artifacts.load_artifact("a")
    assert isinstance(info.value, KeyError)
    assert artifacts.list_artifacts() == ["b.v1"]


@pytest.mark.parametrize("bad_id", ["../x", "artifact:../x", "/etc/passwd", "a/../../b", ""])
def test_artifact_path_traversal_is_rejected(
    artifacts: FileSystemArtifactBackend, bad_id: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgumentError):
        artifacts.save_artifact(bad_id, "x")
    with pytest.raises(InvalidArgumentError):
        artifacts.load_artifact(bad_id)
    assert _files(tmp_path) == []


def test_artifact_that_is_not_serializable_is_rejected(
    artifacts: FileSystemArtifactBackend,
) -> None:
    with pytest.raises(InvalidArgumentError, match="neither bytes, str nor JSON"):
        artifacts.save_artifact("thing", object())
    assert artifacts.list_artifacts() == []


def test_damaged_json_artifact_raises_corrupted(artifacts: FileSystemArtifactBackend) -> None:
    artifacts.save_artifact("data", {"a": 1})
    (artifacts.base_path / "data.json").write_text("{broken")
    with pytest.raises(StateCorruptedError, match=r"data\.json"):
        artifacts.load_artifact("data")


def test_every_backend_refuses_a_record_with_the_checksum_key(backend: Backend) -> None:
    with pytest.raises(InvalidArgumentError, match="reserves for its checksum"):
        backend.append_event("run-crc", {"_crc": "00000000"})
    assert backend.load_events("run-crc") == []


_APPENDER = """
import sys
from rh_agents.state_backends import FileSystemStateBackend, SQLiteStateBackend
kind, path, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
backend = SQLiteStateBackend(path) if kind == "sqlite" else FileSystemStateBackend(path)
for i in range(total):
    backend.append_event("run", {"i": i, "pad": "x" * 200})
backend.close()
"""


@pytest.mark.parametrize("kind", ["sqlite", "filesystem"])
def test_reading_a_journal_while_another_process_appends_sees_a_consistent_prefix(
    tmp_path: Path, kind: str
) -> None:
    # Found as a flaky contract test: the file-system reader read the lines, then the
    # mark, and a commit in between looked like a missing tail (StateCorruptedError).
    path = tmp_path / ("h.db" if kind == "sqlite" else "h")
    backend: Any = SQLiteStateBackend(path) if kind == "sqlite" else FileSystemStateBackend(path)
    total = 1500
    writer = subprocess.Popen([sys.executable, "-c", _APPENDER, kind, str(path), str(total)])
    reads = []
    try:
        while writer.poll() is None:
            records = backend.load_events("run")
            reads.append(len(records))
            assert [r["i"] for r in records] == list(range(len(records)))
    finally:
        writer.wait()
    assert writer.returncode == 0
    assert len(backend.load_events("run")) == total
    assert len(set(reads)) > 3  # read while the journal grew
    backend.close()


def test_filesystem_a_commit_between_reading_lines_and_mark_is_not_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The interleaving the process test above can only hit by chance, made certain: a
    # commit lands while a reader reads the journal (lines and mark).
    backend = FileSystemStateBackend(tmp_path / "h")
    backend.append_event("run", {"i": 0})
    directory = backend._runs._dir
    read = directory.read
    landed: list[str] = []

    def read_then_commit(name: str) -> bytes | None:
        data = read(name)
        if not landed:
            landed.append(name)
            backend.append_event("run", {"i": 1})  # lines, then mark, in between
        return data

    monkeypatch.setattr(directory, "read", read_then_commit)
    records = backend.load_events("run")
    assert landed  # the commit did land inside the read
    assert [r["i"] for r in records] in ([0], [0, 1])
    monkeypatch.undo()
    assert [r["i"] for r in backend.load_events("run")] == [0, 1]
    backend.close()
