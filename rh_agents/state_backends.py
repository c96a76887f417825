"""Where runs are stored: snapshots, the append-only event journal and artifacts.

Three protocols describe the storage layer:

* :class:`StateBackend` keeps whole-state checkpoints (:class:`StateSnapshot`).
* :class:`EventJournal` keeps the event records of a run, appended one at a time as they
  happen, so a process killed at any moment loses no event whose ``append_event`` call
  returned.
* :class:`ArtifactBackend` keeps large blobs that snapshots refer to by reference.

Implementations:

* :class:`SQLiteStateBackend`, the embedded default: one SQLite file in WAL mode.
* :class:`FileSystemStateBackend`: JSON snapshot files plus a JSON-lines journal per run.
* :class:`InMemoryStateBackend`: for tests; nothing survives the process.
* :class:`FileSystemArtifactBackend`: one file per artifact.

Everything is stored as JSON, so a value loads back in its JSON form (tuples come back as
lists, non-string dict keys as strings). Every backend, the in-memory one included, goes
through JSON, so the backends are interchangeable.

Errors, for every backend:

* :class:`~rh_agents.core.errors.StateCorruptedError`: the stored data is damaged or is
  not an rh_agents history. Raised when a backend opens (SQLite: not a database,
  truncated, a foreign database) or when a damaged snapshot or record is read.
* :class:`~rh_agents.core.errors.SchemaVersionError`: the history or a snapshot was
  written by another schema version.
* :class:`StateStorageError`: the storage medium failed (disk full, I/O error,
  permission denied, database locked for longer than the timeout).
* :class:`~rh_agents.core.errors.ResultSerializationError`: a record or snapshot given to
  a backend is not JSON-serializable; nothing was written.
* :class:`~rh_agents.core.errors.InvalidArgumentError`: an id is empty or, for the file
  system backends, not a safe file name.
* :class:`~rh_agents.core.errors.LifecycleError`: a closed :class:`SQLiteStateBackend`
  was used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import tempfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from rh_agents.core.errors import (
    InvalidArgumentError,
    LifecycleError,
    ResultSerializationError,
    SchemaVersionError,
    StateCorruptedError,
    StateError,
    StateNotFoundError,
)
from rh_agents.core.state_recovery import StateSnapshot, StateStatus

__all__ = [
    "ArtifactBackend",
    "ArtifactNotFoundError",
    "EventJournal",
    "FileSystemArtifactBackend",
    "FileSystemStateBackend",
    "InMemoryStateBackend",
    "SQLiteStateBackend",
    "StateBackend",
    "StateStorageError",
    "require_state",
]

_log = logging.getLogger(__name__)


class StateStorageError(StateError):
    """The storage medium failed: disk full, I/O error, permission denied or a lock timeout.

    The original ``OSError`` or ``sqlite3.Error`` is chained as ``__cause__``. The stored
    data is not known to be damaged; retrying after fixing the cause may succeed.
    """


class ArtifactNotFoundError(StateNotFoundError):
    """No artifact with the requested id or reference exists."""


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class StateBackend(Protocol):
    """Stores whole-state checkpoints of runs, keyed by ``state_id``."""

    def save_state(self, snapshot: StateSnapshot) -> bool:
        """Store ``snapshot``, replacing any stored snapshot with the same id.

        Returns ``True`` once stored; failures raise instead of returning ``False``.
        """
        ...

    def load_state(self, state_id: str) -> StateSnapshot | None:
        """Return the stored snapshot, or ``None`` when there is none with that id."""
        ...

    def list_states(
        self, *, status: StateStatus | str | None = None, pipeline_name: str | None = None
    ) -> list[str]:
        """Ids of the stored snapshots, sorted, optionally filtered by status and pipeline."""
        ...

    def delete_state(self, state_id: str) -> bool:
        """Delete the snapshot and the journal of a run; ``False`` when neither existed."""
        ...

    def update_state(self, snapshot: StateSnapshot) -> bool:
        """Replace an existing snapshot; ``False`` (nothing stored) when none exists."""
        ...

    def exists(self, state_id: str) -> bool:
        """Whether a snapshot with this id is stored."""
        ...


@runtime_checkable
class EventJournal(Protocol):
    """An append-only log of event records per run.

    A record is a JSON-serializable ``dict``. When :meth:`append_event` returns, the
    record survives the death of the process. A journal may exist for a run that has no
    saved snapshot.
    """

    def append_event(self, state_id: str, record: dict[str, Any]) -> None:
        """Append one record to the journal of ``state_id``, durably."""
        ...

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        """All records of ``state_id`` in append order; ``[]`` for an unknown id."""
        ...

    def list_journals(self) -> list[str]:
        """Sorted ids of the runs that have at least one journal record."""
        ...

    def close(self) -> None:
        """Release files and connections. Closing twice is allowed."""
        ...


@runtime_checkable
class ArtifactBackend(Protocol):
    """Stores blobs (bytes, text or JSON values) that snapshots refer to by reference."""

    def save_artifact(self, artifact_id: str, data: Any) -> str:
        """Store ``data`` under ``artifact_id`` and return a reference to it."""
        ...

    def load_artifact(self, ref_or_id: str) -> Any:
        """Return the stored value, of the type it was saved with."""
        ...

    def delete_artifact(self, ref_or_id: str) -> bool:
        """Delete an artifact; ``False`` when it did not exist."""
        ...

    def exists(self, ref_or_id: str) -> bool:
        """Whether the artifact exists."""
        ...

    def list_artifacts(self) -> list[str]:
        """Sorted ids of the stored artifacts."""
        ...


def require_state(backend: StateBackend, state_id: str) -> StateSnapshot:
    """Load a snapshot that must exist.

    Raises:
        StateNotFoundError: no snapshot with this id is stored; the message lists the
            ids that are.

    Example:
        >>> backend = InMemoryStateBackend()
        >>> _ = backend.save_state(StateSnapshot(state_id="run-1"))
        >>> require_state(backend, "run-1").state_id
        'run-1'
    """
    snapshot = backend.load_state(state_id)
    if snapshot is not None:
        return snapshot
    known = backend.list_states()
    if isinstance(backend, EventJournal):
        known = sorted(set(known) | set(backend.list_journals()))
    if not known:
        listing = "The backend holds no states at all"
    else:
        shown = ", ".join(repr(k) for k in known[:20])
        more = f" and {len(known) - 20} more" if len(known) > 20 else ""
        listing = f"Known state ids: {shown}{more}"
    raise StateNotFoundError(
        f"No saved state with id {state_id!r} exists in {backend!r}. {listing}. "
        "Check the id (and the storage path), or start a new run."
    )


# --------------------------------------------------------------------------- helpers


def _check_id(value: object, what: str = "state_id") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(
            f"The {what} must be a non-empty string, got {value!r}. Pass the id of the run."
        )
    return value


def _check_snapshot(snapshot: object) -> StateSnapshot:
    if not isinstance(snapshot, StateSnapshot):
        raise InvalidArgumentError(
            f"Expected a StateSnapshot, got {type(snapshot).__name__}. Build one with "
            "StateSnapshot(state_id=..., execution_state=...)."
        )
    return snapshot


def _status_filter(status: StateStatus | str | None) -> StateStatus | None:
    if status is None:
        return None
    try:
        return StateStatus(status)
    except ValueError:
        allowed = ", ".join(s.value for s in StateStatus)
        raise InvalidArgumentError(
            f"Unknown state status {status!r}. Use one of: {allowed}."
        ) from None


_SEAL = '{"_crc":'
"""Stored JSON objects start with a CRC-32 of the object as written: ``{"_crc":N,...}``.

A flipped byte in a record (disk or file damage that leaves valid JSON, e.g. one digit
of a result) would otherwise load as a different value; with the checksum it is
reported as :class:`StateCorruptedError`. Objects stored without one (by earlier
releases) load unchecked.
"""


def _seal(text: str) -> str:
    """Prefix the JSON object ``text`` with its checksum (same schema, one more key)."""
    crc = zlib.crc32(text.encode("utf-8", "surrogatepass"))
    body = text[1:]
    return f"{_SEAL}{crc:010d}{'' if body == '}' else ','}{body}"


def _unseal(text: str | bytes) -> tuple[str | bytes, bool]:
    """The JSON object as written, and whether its checksum matches (True if none)."""
    if isinstance(text, bytes):
        if not text.startswith(_SEAL.encode()):
            return text, True
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return text, False
    elif not text.startswith(_SEAL):
        return text, True
    digits, separator, body = text[8:18], text[18:19], text[19:]
    original = "{}" if separator == "}" else "{" + body
    if not digits.isdigit() or separator not in (",", "}"):
        return original, False
    return original, int(digits) == zlib.crc32(original.encode("utf-8", "surrogatepass"))


def _dump_snapshot(snapshot: StateSnapshot) -> str:
    try:
        # Not model_dump_json(): it writes infinite and NaN floats as null, so a result
        # of inf would come back as None. JSON readers here accept Infinity and NaN.
        data = snapshot.model_dump(mode="python")
        return _seal(json.dumps(data, default=to_jsonable_python, separators=(",", ":")))
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        raise ResultSerializationError(
            f"The snapshot of state {snapshot.state_id!r} cannot be written to the history "
            f"because it is not JSON-serializable ({exc}). Keep only JSON-serializable "
            "values (or pydantic models) in execution_state; nothing was written."
        ) from exc


def _parse_snapshot(state_id: str, text: str | bytes, where: str) -> StateSnapshot:
    text, intact = _unseal(text)
    if not intact:
        raise StateCorruptedError(
            f"The stored snapshot of state {state_id!r} in {where} fails its checksum: it "
            "was changed after it was written (disk or file damage). Restore it from a "
            "backup, or delete the state with delete_state() to discard it."
        )
    try:
        return StateSnapshot.model_validate_json(text)
    except ValidationError as exc:
        raise StateCorruptedError(
            f"The stored snapshot of state {state_id!r} in {where} is damaged and cannot "
            f"be read ({exc.error_count()} error(s); first: {exc.errors()[0]['msg']}). "
            "Restore it from a backup, or delete the state with delete_state() to discard it."
        ) from exc


def _dump_record(state_id: str, record: dict[str, Any]) -> str:
    if not isinstance(record, dict):
        raise InvalidArgumentError(
            f"An event record must be a dict, got {type(record).__name__} for state "
            f"{state_id!r}. Pass the record as a JSON-serializable dict."
        )
    try:
        return _seal(json.dumps(record, separators=(",", ":")))
    except (TypeError, ValueError) as exc:
        raise ResultSerializationError(
            f"An event record of state {state_id!r} cannot be written to the history because "
            f"it is not JSON-serializable ({exc}). Convert the value to JSON-serializable "
            "data before recording it; nothing was written."
        ) from exc


def _parse_record(state_id: str, text: object, position: str, where: str) -> dict[str, Any]:
    problem: str
    try:
        if not isinstance(text, str | bytes):
            raise TypeError(f"stored value has type {type(text).__name__}")
        text, intact = _unseal(text)
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        problem = f"is not valid JSON ({exc})"
    else:
        if not intact:
            problem = "fails its checksum: it was changed after it was written (disk damage)"
        elif isinstance(value, dict):
            return value
        else:
            problem = f"is a JSON {type(value).__name__}, not an object"
    raise StateCorruptedError(
        f"Event record {position} of state {state_id!r} in {where} {problem}. The journal "
        "is damaged: restore it from a backup, or delete the state with delete_state() "
        "to discard it."
    )


# --------------------------------------------------------------------------- in memory


class InMemoryStateBackend:
    """A :class:`StateBackend` and :class:`EventJournal` kept in process memory.

    Meant for tests and short-lived scripts: nothing survives the process. Data is
    stored as JSON text, so callers cannot mutate what was stored, and a value that the
    persistent backends would reject is rejected here too. Thread-safe. :meth:`close`
    does nothing, so the data stays readable after a run closed its journal.

    Example:
        >>> backend = InMemoryStateBackend()
        >>> backend.append_event("run-1", {"seq": 1, "status": "started"})
        >>> backend.load_events("run-1")
        [{'seq': 1, 'status': 'started'}]
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # state_id -> (snapshot JSON, status, pipeline_name)
        self._states: dict[str, tuple[str, StateStatus, str | None]] = {}
        self._events: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def save_state(self, snapshot: StateSnapshot) -> bool:
        snapshot = _check_snapshot(snapshot)
        text = _dump_snapshot(snapshot)
        with self._lock:
            self._states[snapshot.state_id] = (
                text,
                snapshot.status,
                snapshot.metadata.pipeline_name,
            )
        return True

    def update_state(self, snapshot: StateSnapshot) -> bool:
        snapshot = _check_snapshot(snapshot)
        text = _dump_snapshot(snapshot)
        with self._lock:
            if snapshot.state_id not in self._states:
                return False
            self._states[snapshot.state_id] = (
                text,
                snapshot.status,
                snapshot.metadata.pipeline_name,
            )
        return True

    def load_state(self, state_id: str) -> StateSnapshot | None:
        _check_id(state_id)
        with self._lock:
            stored = self._states.get(state_id)
        if stored is None:
            return None
        return _parse_snapshot(state_id, stored[0], "memory")

    def list_states(
        self, *, status: StateStatus | str | None = None, pipeline_name: str | None = None
    ) -> list[str]:
        wanted = _status_filter(status)
        with self._lock:
            items = list(self._states.items())
        return sorted(
            state_id
            for state_id, (_, st, pipeline) in items
            if (wanted is None or st == wanted)
            and (pipeline_name is None or pipeline == pipeline_name)
        )

    def delete_state(self, state_id: str) -> bool:
        _check_id(state_id)
        with self._lock:
            had_state = self._states.pop(state_id, None) is not None
            had_events = self._events.pop(state_id, None) is not None
        return had_state or had_events

    def exists(self, state_id: str) -> bool:
        _check_id(state_id)
        with self._lock:
            return state_id in self._states

    def append_event(self, state_id: str, record: dict[str, Any]) -> None:
        _check_id(state_id)
        text = _dump_record(state_id, record)
        with self._lock:
            self._events.setdefault(state_id, []).append(text)

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        _check_id(state_id)
        with self._lock:
            lines = list(self._events.get(state_id, ()))
        return [_parse_record(state_id, line, str(i), "memory") for i, line in enumerate(lines)]

    def list_journals(self) -> list[str]:
        with self._lock:
            return sorted(self._events)

    def close(self) -> None:
        """Do nothing: the data stays readable, because nothing needs releasing."""


# --------------------------------------------------------------------------- SQLite

_SQLITE_APP = "rh_agents.history"
_SQLITE_SCHEMA_VERSION = 1
_SQLITE_APPLICATION_ID = 0x52484147  # "RHAG", visible to `file(1)` and sqlite tools.
_META_TABLE = "rh_agents_meta"

_SQLITE_SCHEMA = f"""
CREATE TABLE {_META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE states (
    state_id TEXT PRIMARY KEY,
    snapshot TEXT NOT NULL,
    status TEXT NOT NULL,
    pipeline_name TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    state_id TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX events_by_state ON events (state_id, seq);
CREATE INDEX states_by_status ON states (status, pipeline_name);
"""


def _is_corruption(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return True
    # A damaged text value that is not UTF-8 any more (raised by Python's sqlite3).
    return "Could not decode to UTF-8" in str(exc)


class SQLiteStateBackend:
    """The embedded default :class:`StateBackend` and :class:`EventJournal`: one SQLite file.

    Durability: the database runs in WAL mode with ``synchronous=NORMAL``. Every
    :meth:`append_event` is one row committed on its own before the call returns, so a
    crash or ``SIGKILL`` of the process loses nothing that was acknowledged. A power loss
    or OS crash may lose the last few transactions, but never damages the file.

    Concurrency: one instance may be used from the event-loop thread and from worker
    threads (calls are serialized by a lock). Several processes, or several instances,
    may open the same file; each sees what the others committed.

    Opening checks the file and raises :class:`~rh_agents.core.errors.StateCorruptedError`
    when it is not a SQLite database, is truncated or damaged, or is a SQLite database
    that is not an rh_agents history, and
    :class:`~rh_agents.core.errors.SchemaVersionError` when the history was written by
    another storage schema version. A missing or empty file becomes a new history; its
    parent directories are created.

    Args:
        path: the database file, or ``":memory:"`` for a private in-memory database.
        timeout: seconds to wait for another connection's write lock before raising
            :class:`StateStorageError`.
        integrity_check: run SQLite's ``PRAGMA quick_check`` when opening, which finds
            damage anywhere in the file at a cost linear in its size. Turn it off only
            for very large histories opened often.

    Example:
        >>> with SQLiteStateBackend(":memory:") as backend:
        ...     backend.append_event("run-1", {"seq": 1})
        ...     backend.load_events("run-1")
        [{'seq': 1}]
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 30.0,
        integrity_check: bool = True,
    ) -> None:
        self._path = os.fspath(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if self._path != ":memory:":
            try:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StateStorageError(
                    f"Could not create the directory for the rh_agents history at "
                    f"{self._path} ({exc}). Check the path and its permissions."
                ) from exc
        try:
            conn = sqlite3.connect(
                self._path, timeout=timeout, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise self._wrap(exc, "open the history") from exc
        try:
            self._prepare(conn, integrity_check)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @property
    def path(self) -> str:
        """The database file this backend stores into."""
        return self._path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._path!r})"

    def __enter__(self) -> SQLiteStateBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- opening

    def _wrap(self, exc: sqlite3.Error, action: str) -> StateError:
        if _is_corruption(exc):
            return StateCorruptedError(
                f"The rh_agents history at {self._path} is damaged or is not a SQLite "
                f"database ({exc}), so it could not {action}. Restore the file from a "
                "backup, or delete it (and its -wal and -shm files) to start an empty history."
            )
        return StateStorageError(
            f"Could not {action} in the rh_agents history at {self._path} ({exc}). Check "
            "that the disk is not full, that the file is writable, and that no other "
            "process holds a long write lock, then retry."
        )

    def _prepare(self, conn: sqlite3.Connection, integrity_check: bool) -> None:
        try:
            tables = self._tables(conn)
            if not tables:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    tables = self._tables(conn)  # another process may have won the race
                    if not tables:
                        self._create_schema(conn)
                        tables = self._tables(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            self._verify(conn, tables)
            if integrity_check:
                problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
                if problems != ["ok"]:
                    raise StateCorruptedError(
                        f"The rh_agents history at {self._path} is damaged (SQLite integrity "
                        f"check: {'; '.join(map(str, problems[:3]))}). Restore the file "
                        "from a backup, or delete it to start an empty history."
                    )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() not in ("wal", "memory"):
                _log.warning(
                    "The rh_agents history at %s could not switch to WAL mode (got %r); "
                    "writes stay durable but concurrent readers may block.",
                    self._path,
                    mode,
                )
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise self._wrap(exc, "be opened") from exc

    @staticmethod
    def _tables(conn: sqlite3.Connection) -> set[str]:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        return {str(row[0]) for row in rows}

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        for statement in _SQLITE_SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.executemany(
            f"INSERT INTO {_META_TABLE} (key, value) VALUES (?, ?)",
            [("app", _SQLITE_APP), ("schema_version", str(_SQLITE_SCHEMA_VERSION))],
        )
        conn.execute(f"PRAGMA application_id = {_SQLITE_APPLICATION_ID}")

    def _verify(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        not_ours = f"The SQLite database at {self._path} is not an rh_agents history"
        if _META_TABLE not in tables:
            shown = ", ".join(sorted(tables)[:10])
            raise StateCorruptedError(
                f"{not_ours} (it holds the tables {shown}). Point rh_agents at a new file, "
                "or at a history it created."
            )
        try:
            rows = conn.execute(f"SELECT key, value FROM {_META_TABLE}").fetchall()
        except sqlite3.OperationalError as exc:  # a table of that name, but not ours
            raise StateCorruptedError(
                f"{not_ours} (its {_META_TABLE} table is unreadable: {exc}). Point rh_agents "
                "at a new file, or at a history it created."
            ) from exc
        meta = {str(k): v for k, v in rows}
        app = meta.get("app")
        if app != _SQLITE_APP:
            what = f"it is marked {app!r}" if app is not None else "it has no rh_agents marker"
            raise StateCorruptedError(
                f"{not_ours} ({what}). Point rh_agents at a new file, or at a history it created."
            )
        raw_version = meta.get("schema_version")
        try:
            version = int(str(raw_version))
        except ValueError:
            raise StateCorruptedError(
                f"The rh_agents history at {self._path} has an unreadable schema version "
                f"{raw_version!r}. Restore the file from a backup, or delete it to start "
                "an empty history."
            ) from None
        if version != _SQLITE_SCHEMA_VERSION:
            advice = (
                "Upgrade rh_agents to a release that reads it"
                if version > _SQLITE_SCHEMA_VERSION
                else "Open it with the rh_agents release that wrote it, or start a new history"
            )
            raise SchemaVersionError(
                f"The rh_agents history at {self._path} uses storage schema version "
                f"{version}, but this release reads only version {_SQLITE_SCHEMA_VERSION}. "
                f"{advice}."
            )
        missing = {"states", "events"} - tables
        if missing:
            raise StateCorruptedError(
                f"The rh_agents history at {self._path} is missing the table(s) "
                f"{', '.join(sorted(missing))}. Restore the file from a backup, or delete "
                "it to start an empty history."
            )

    # -- connection handling

    @contextlib.contextmanager
    def _connection(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise LifecycleError(
                    f"{self!r} is closed, so it cannot {action}. Open a new "
                    "SQLiteStateBackend on the same path."
                )
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise self._wrap(exc, action) from exc

    @staticmethod
    @contextlib.contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close the database connection. Closing twice is allowed."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- StateBackend

    def _row(
        self, snapshot: StateSnapshot, text: str
    ) -> tuple[str, str, str, str | None, str, str]:
        return (
            snapshot.state_id,
            text,
            snapshot.status.value,
            snapshot.metadata.pipeline_name,
            snapshot.created_at.isoformat(),
            snapshot.updated_at.isoformat(),
        )

    def save_state(self, snapshot: StateSnapshot) -> bool:
        snapshot = _check_snapshot(snapshot)
        row = self._row(snapshot, _dump_snapshot(snapshot))
        with self._connection("save a snapshot") as conn:
            conn.execute(
                "INSERT INTO states (state_id, snapshot, status, pipeline_name, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (state_id) DO UPDATE SET "
                "snapshot = excluded.snapshot, status = excluded.status, "
                "pipeline_name = excluded.pipeline_name, created_at = excluded.created_at, "
                "updated_at = excluded.updated_at",
                row,
            )
        return True

    def update_state(self, snapshot: StateSnapshot) -> bool:
        snapshot = _check_snapshot(snapshot)
        state_id, text, status, pipeline, created, updated = self._row(
            snapshot, _dump_snapshot(snapshot)
        )
        with self._connection("update a snapshot") as conn:
            cursor = conn.execute(
                "UPDATE states SET snapshot = ?, status = ?, pipeline_name = ?, "
                "created_at = ?, updated_at = ? WHERE state_id = ?",
                (text, status, pipeline, created, updated, state_id),
            )
            return cursor.rowcount > 0

    def load_state(self, state_id: str) -> StateSnapshot | None:
        _check_id(state_id)
        with self._connection("load a snapshot") as conn:
            row = conn.execute(
                "SELECT snapshot FROM states WHERE state_id = ?", (state_id,)
            ).fetchone()
        if row is None:
            return None
        text = row[0]
        if not isinstance(text, str | bytes):
            raise StateCorruptedError(
                f"The stored snapshot of state {state_id!r} in {self._path} is not text. "
                "Restore the file from a backup, or delete the state with delete_state()."
            )
        return _parse_snapshot(state_id, text, self._path)

    def list_states(
        self, *, status: StateStatus | str | None = None, pipeline_name: str | None = None
    ) -> list[str]:
        wanted = _status_filter(status)
        sql = "SELECT state_id FROM states WHERE 1 = 1"
        params: list[str] = []
        if wanted is not None:
            sql += " AND status = ?"
            params.append(wanted.value)
        if pipeline_name is not None:
            sql += " AND pipeline_name = ?"
            params.append(pipeline_name)
        with self._connection("list states") as conn:
            rows = conn.execute(sql + " ORDER BY state_id", params).fetchall()
        return [str(row[0]) for row in rows]

    def delete_state(self, state_id: str) -> bool:
        _check_id(state_id)
        with self._connection("delete a state") as conn, self._transaction(conn):
            deleted = conn.execute("DELETE FROM states WHERE state_id = ?", (state_id,)).rowcount
            deleted += conn.execute("DELETE FROM events WHERE state_id = ?", (state_id,)).rowcount
        return deleted > 0

    def exists(self, state_id: str) -> bool:
        _check_id(state_id)
        with self._connection("look up a state") as conn:
            row = conn.execute("SELECT 1 FROM states WHERE state_id = ?", (state_id,)).fetchone()
        return row is not None

    # -- EventJournal

    def append_event(self, state_id: str, record: dict[str, Any]) -> None:
        """Append one record, committed before this returns.

        Raises:
            StateStorageError: the write failed (disk full, I/O error, lock timeout);
                the record was not stored.
            ResultSerializationError: the record is not JSON-serializable.
            LifecycleError: the backend is closed.
        """
        _check_id(state_id)
        text = _dump_record(state_id, record)
        with self._connection("append an event") as conn:
            conn.execute("INSERT INTO events (state_id, record) VALUES (?, ?)", (state_id, text))

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        """All records of ``state_id`` in append order.

        Raises:
            StateCorruptedError: a record is not a readable JSON object; the message
                names the state and the record's position.
        """
        _check_id(state_id)
        with self._connection("load events") as conn:
            rows = conn.execute(
                "SELECT seq, record FROM events WHERE state_id = ? ORDER BY seq", (state_id,)
            ).fetchall()
        return [
            _parse_record(state_id, record, f"{index} (row seq {seq})", self._path)
            for index, (seq, record) in enumerate(rows)
        ]

    def list_journals(self) -> list[str]:
        with self._connection("list journals") as conn:
            rows = conn.execute("SELECT DISTINCT state_id FROM events ORDER BY state_id")
            return [str(row[0]) for row in rows.fetchall()]


# --------------------------------------------------------------------------- file system

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def _safe_file_id(value: object, what: str) -> str:
    value = _check_id(value, what)
    if not _SAFE_ID.fullmatch(value):
        raise InvalidArgumentError(
            f"The {what} {value!r} cannot be used as a file name. Use 1 to 200 characters "
            "from A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit "
            "(no path separators, no leading dot)."
        )
    return value


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new content, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _storage_error(action: str, path: Path | str, exc: OSError) -> StateStorageError:
    return StateStorageError(
        f"Could not {action} at {path} ({exc}). Check that the disk is not full and that "
        "the directory is writable, then retry."
    )


_FS_MARKER = "rh_agents_history.json"
_FS_APP = "rh_agents.history"
_FS_SCHEMA_VERSION = 1


class FileSystemStateBackend:
    """A :class:`StateBackend` and :class:`EventJournal` made of plain files.

    Layout under ``base_path``::

        rh_agents_history.json     marker: application and storage schema version
        states/<state_id>.json     one snapshot per run, replaced atomically
        journals/<state_id>.jsonl  one JSON record per line, appended

    Snapshots are written to a temporary file in the same directory, flushed, fsynced
    and renamed over the old file, so a crash leaves the old or the new snapshot. Each
    journal record is written with a single ``write`` on a file opened in append mode:
    once :meth:`append_event` returns, the record survives a crash of the process (not
    necessarily a power loss, like :class:`SQLiteStateBackend`). A record cut short by a
    crash (the unterminated last line) was never acknowledged: it is ignored with a
    logged warning when loading and removed before the next append. Any other damage
    raises :class:`~rh_agents.core.errors.StateCorruptedError`.

    State ids are file names: 1 to 200 characters from ``A-Z a-z 0-9 . _ -``, starting
    with a letter or digit. Other ids raise
    :class:`~rh_agents.core.errors.InvalidArgumentError`. One process at a time should
    append to a given run's journal.

    Example:
        >>> import tempfile
        >>> backend = FileSystemStateBackend(tempfile.mkdtemp())
        >>> backend.append_event("run-1", {"seq": 1})
        >>> backend.load_events("run-1")
        [{'seq': 1}]
    """

    def __init__(self, base_path: str | os.PathLike[str]) -> None:
        self._base = Path(base_path)
        self._states_dir = self._base / "states"
        self._journals_dir = self._base / "journals"
        self._lock = threading.Lock()
        try:
            self._states_dir.mkdir(parents=True, exist_ok=True)
            self._journals_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error("create the history directories", self._base, exc) from exc
        self._check_marker()

    @property
    def base_path(self) -> Path:
        """The directory this backend stores into."""
        return self._base

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._base)!r})"

    def _check_marker(self) -> None:
        marker = self._base / _FS_MARKER
        try:
            raw = marker.read_bytes()
        except FileNotFoundError:
            content = {"app": _FS_APP, "schema_version": _FS_SCHEMA_VERSION}
            try:
                _atomic_write(marker, json.dumps(content).encode())
            except OSError as exc:
                raise _storage_error("write the history marker", marker, exc) from exc
            return
        except OSError as exc:
            raise _storage_error("read the history marker", marker, exc) from exc
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or meta.get("app") != _FS_APP:
            raise StateCorruptedError(
                f"The marker file {marker} is damaged or does not belong to rh_agents, so "
                f"{self._base} is not a usable rh_agents history. Restore the marker from a "
                "backup, or point rh_agents at another directory."
            )
        version = meta.get("schema_version")
        if version != _FS_SCHEMA_VERSION:
            raise SchemaVersionError(
                f"The rh_agents history in {self._base} uses storage schema version "
                f"{version!r}, but this release reads only version {_FS_SCHEMA_VERSION}. "
                "Use the rh_agents release that wrote it, or another directory."
            )

    def _state_file(self, state_id: str) -> Path:
        return self._states_dir / f"{_safe_file_id(state_id, 'state_id')}.json"

    def _journal_file(self, state_id: str) -> Path:
        return self._journals_dir / f"{_safe_file_id(state_id, 'state_id')}.jsonl"

    # -- StateBackend

    def save_state(self, snapshot: StateSnapshot) -> bool:
        snapshot = _check_snapshot(snapshot)
        path = self._state_file(snapshot.state_id)
        data = _dump_snapshot(snapshot).encode("utf-8")
        try:
            _atomic_write(path, data)
        except OSError as exc:
            raise _storage_error("save the snapshot", path, exc) from exc
        return True

    def update_state(self, snapshot: StateSnapshot) -> bool:
        snapshot = _check_snapshot(snapshot)
        if not self._state_file(snapshot.state_id).exists():
            return False
        return self.save_state(snapshot)

    def load_state(self, state_id: str) -> StateSnapshot | None:
        path = self._state_file(state_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _storage_error("read the snapshot", path, exc) from exc
        return _parse_snapshot(state_id, data, str(path))

    def list_states(
        self, *, status: StateStatus | str | None = None, pipeline_name: str | None = None
    ) -> list[str]:
        wanted = _status_filter(status)
        ids = self._ids_in(self._states_dir, ".json")
        if wanted is None and pipeline_name is None:
            return ids
        selected = []
        for state_id in ids:
            snapshot = self.load_state(state_id)
            if snapshot is None:  # deleted meanwhile
                continue
            if wanted is not None and snapshot.status != wanted:
                continue
            if pipeline_name is not None and snapshot.metadata.pipeline_name != pipeline_name:
                continue
            selected.append(state_id)
        return selected

    @staticmethod
    def _ids_in(directory: Path, suffix: str) -> list[str]:
        try:
            names = os.listdir(directory)
        except OSError as exc:
            raise _storage_error("list the directory", directory, exc) from exc
        return sorted(
            name[: -len(suffix)]
            for name in names
            if name.endswith(suffix) and _SAFE_ID.fullmatch(name[: -len(suffix)])
        )

    def delete_state(self, state_id: str) -> bool:
        deleted = False
        for path in (self._state_file(state_id), self._journal_file(state_id)):
            try:
                path.unlink()
                deleted = True
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _storage_error("delete", path, exc) from exc
        return deleted

    def exists(self, state_id: str) -> bool:
        return self._state_file(state_id).is_file()

    # -- EventJournal

    def append_event(self, state_id: str, record: dict[str, Any]) -> None:
        """Append one record as one line, written before this returns.

        Raises:
            StateStorageError: the write failed (disk full, I/O error); the record is
                not acknowledged.
            ResultSerializationError: the record is not JSON-serializable.
        """
        path = self._journal_file(state_id)
        line = (_dump_record(state_id, record) + "\n").encode("ascii")
        with self._lock:
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    self._drop_torn_tail(fd, path)
                    view = memoryview(line)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                finally:
                    os.close(fd)
            except OSError as exc:
                raise _storage_error("append an event", path, exc) from exc

    @staticmethod
    def _drop_torn_tail(fd: int, path: Path) -> None:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        data = os.pread(fd, size, 0)
        keep = data.rfind(b"\n") + 1
        _log.warning(
            "Removing an unterminated last line (%d bytes) from the journal %s: a crash "
            "cut it short before it was acknowledged.",
            size - keep,
            path,
        )
        os.ftruncate(fd, keep)

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        """All records of ``state_id`` in append order.

        Raises:
            StateCorruptedError: a complete line is not a JSON object; the message names
                the state, the file and the line number.
        """
        path = self._journal_file(state_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _storage_error("read the journal", path, exc) from exc
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        if tail:
            _log.warning(
                "Ignoring an unterminated last line (%d bytes) in the journal %s: a crash cut "
                "it short before it was acknowledged.",
                len(tail),
                path,
            )
        return [
            _parse_record(state_id, line, f"on line {number}", str(path))
            for number, line in enumerate(lines, start=1)
        ]

    def list_journals(self) -> list[str]:
        return self._ids_in(self._journals_dir, ".jsonl")

    def close(self) -> None:
        """Do nothing: no file stays open between calls."""


# --------------------------------------------------------------------------- artifacts

_ARTIFACT_REF_PREFIX = "artifact:"
_ARTIFACT_SUFFIXES = (".bin", ".txt", ".json")


class FileSystemArtifactBackend:
    """An :class:`ArtifactBackend` storing one file per artifact.

    ``bytes`` (and ``bytearray``/``memoryview``) are stored as they are in
    ``<id>.bin``, ``str`` as UTF-8 in ``<id>.txt``, and any other JSON-serializable value
    as JSON in ``<id>.json``; the suffix records the kind, so :meth:`load_artifact`
    returns ``bytes``, ``str`` or the JSON value. Writes are atomic. The returned
    reference is ``"artifact:<id>"``; every method accepts the reference or the bare id.

    Artifact ids are file names: 1 to 200 characters from ``A-Z a-z 0-9 . _ -``,
    starting with a letter or digit, so a path such as ``"../x"`` raises
    :class:`~rh_agents.core.errors.InvalidArgumentError`.

    Example:
        >>> import tempfile
        >>> artifacts = FileSystemArtifactBackend(tempfile.mkdtemp())
        >>> ref = artifacts.save_artifact("report", "hello")
        >>> ref, artifacts.load_artifact(ref)
        ('artifact:report', 'hello')
    """

    def __init__(self, base_path: str | os.PathLike[str]) -> None:
        self._base = Path(base_path)
        try:
            self._base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error("create the artifact directory", self._base, exc) from exc

    @property
    def base_path(self) -> Path:
        """The directory this backend stores into."""
        return self._base

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._base)!r})"

    @staticmethod
    def _artifact_id(ref_or_id: str) -> str:
        value = ref_or_id
        if isinstance(value, str) and value.startswith(_ARTIFACT_REF_PREFIX):
            value = value[len(_ARTIFACT_REF_PREFIX) :]
        return _safe_file_id(value, "artifact id")

    def _files(self, artifact_id: str) -> list[Path]:
        """The stored files of an artifact, newest first (normally zero or one)."""
        found: list[tuple[int, Path]] = []
        for suffix in _ARTIFACT_SUFFIXES:
            path = self._base / f"{artifact_id}{suffix}"
            try:
                found.append((path.stat().st_mtime_ns, path))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _storage_error("look up the artifact", path, exc) from exc
        return [path for _, path in sorted(found, key=lambda item: item[0], reverse=True)]

    def save_artifact(self, artifact_id: str, data: Any) -> str:
        """Store ``data`` and return its reference ``"artifact:<id>"``.

        Raises:
            InvalidArgumentError: the id is not a safe file name, or ``data`` is neither
                bytes, str nor JSON-serializable.
            StateStorageError: the write failed.
        """
        artifact_id = self._artifact_id(artifact_id)
        suffix, payload = self._encode(artifact_id, data)
        path = self._base / f"{artifact_id}{suffix}"
        try:
            _atomic_write(path, payload)
            # A save with another kind replaces the old file; if a crash leaves both,
            # load_artifact picks the newest.
            for other in _ARTIFACT_SUFFIXES:
                if other != suffix:
                    with contextlib.suppress(FileNotFoundError):
                        (self._base / f"{artifact_id}{other}").unlink()
        except OSError as exc:
            raise _storage_error("save the artifact", path, exc) from exc
        return _ARTIFACT_REF_PREFIX + artifact_id

    @staticmethod
    def _encode(artifact_id: str, data: Any) -> tuple[str, bytes]:
        if isinstance(data, bytes | bytearray | memoryview):
            return ".bin", bytes(data)
        if isinstance(data, str):
            try:
                return ".txt", data.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidArgumentError(
                    f"Artifact {artifact_id!r} is a string that cannot be encoded as UTF-8 "
                    f"({exc}). Store it as bytes instead."
                ) from exc
        try:
            return ".json", json.dumps(data).encode("ascii")
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(
                f"Artifact {artifact_id!r} of type {type(data).__name__} cannot be stored: it "
                f"is neither bytes, str nor JSON-serializable ({exc}). Convert it first, "
                "for example with model_dump(mode='json') for a pydantic model."
            ) from exc

    def load_artifact(self, ref_or_id: str) -> Any:
        """Return the stored value as ``bytes``, ``str`` or a JSON value.

        Raises:
            ArtifactNotFoundError: no such artifact (a ``KeyError``).
            StateCorruptedError: the stored text or JSON cannot be decoded.
        """
        artifact_id = self._artifact_id(ref_or_id)
        files = self._files(artifact_id)
        if not files:
            raise ArtifactNotFoundError(
                f"No artifact with id {artifact_id!r} exists in {self._base}. Check the "
                "reference, or save the artifact first."
            )
        path = files[0]
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            return self.load_artifact(artifact_id)  # replaced meanwhile
        except OSError as exc:
            raise _storage_error("read the artifact", path, exc) from exc
        try:
            if path.suffix == ".bin":
                return payload
            if path.suffix == ".txt":
                return payload.decode("utf-8")
            return json.loads(payload)
        except ValueError as exc:
            raise StateCorruptedError(
                f"The artifact file {path} is damaged and cannot be decoded ({exc}). "
                "Restore it from a backup, or save the artifact again."
            ) from exc

    def delete_artifact(self, ref_or_id: str) -> bool:
        artifact_id = self._artifact_id(ref_or_id)
        deleted = False
        for path in self._files(artifact_id):
            try:
                path.unlink()
                deleted = True
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _storage_error("delete the artifact", path, exc) from exc
        return deleted

    def exists(self, ref_or_id: str) -> bool:
        return bool(self._files(self._artifact_id(ref_or_id)))

    def list_artifacts(self) -> list[str]:
        try:
            names = os.listdir(self._base)
        except OSError as exc:
            raise _storage_error("list artifacts", self._base, exc) from exc
        ids = set()
        for name in names:
            stem, dot, suffix = name.rpartition(".")
            if dot and f".{suffix}" in _ARTIFACT_SUFFIXES and _SAFE_ID.fullmatch(stem):
                ids.add(stem)
        return sorted(ids)
