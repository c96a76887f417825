"""The SQLite backend, the embedded default: one database file in WAL mode."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from rh_agents.core.errors import (
    LifecycleError,
    SchemaVersionError,
    StateCorruptedError,
    StateError,
    StateStorageError,
)
from rh_agents.core.state_recovery import StateSnapshot, StateStatus
from rh_agents.storage._codec import (
    check_id,
    check_snapshot,
    dump_record,
    dump_snapshot,
    parse_record,
    parse_snapshot,
    status_filter,
)

__all__ = ["SQLiteStateBackend"]

# The logger keeps the name of the module the backends came from (users configure it).
_log = logging.getLogger("rh_agents.state_backends")

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
        snapshot = check_snapshot(snapshot)
        row = self._row(snapshot, dump_snapshot(snapshot))
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
        snapshot = check_snapshot(snapshot)
        state_id, text, status, pipeline, created, updated = self._row(
            snapshot, dump_snapshot(snapshot)
        )
        with self._connection("update a snapshot") as conn:
            cursor = conn.execute(
                "UPDATE states SET snapshot = ?, status = ?, pipeline_name = ?, "
                "created_at = ?, updated_at = ? WHERE state_id = ?",
                (text, status, pipeline, created, updated, state_id),
            )
            return cursor.rowcount > 0

    def load_state(self, state_id: str) -> StateSnapshot | None:
        check_id(state_id)
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
        return parse_snapshot(state_id, text, self._path)

    def list_states(
        self, *, status: StateStatus | str | None = None, pipeline_name: str | None = None
    ) -> list[str]:
        wanted = status_filter(status)
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
        check_id(state_id)
        with self._connection("delete a state") as conn, self._transaction(conn):
            deleted = conn.execute("DELETE FROM states WHERE state_id = ?", (state_id,)).rowcount
            deleted += conn.execute("DELETE FROM events WHERE state_id = ?", (state_id,)).rowcount
        return deleted > 0

    def exists(self, state_id: str) -> bool:
        check_id(state_id)
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
        check_id(state_id)
        text = dump_record(state_id, record)
        with self._connection("append an event") as conn:
            conn.execute("INSERT INTO events (state_id, record) VALUES (?, ?)", (state_id, text))

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        """All records of ``state_id`` in append order.

        Raises:
            StateCorruptedError: a record is not a readable JSON object; the message
                names the state and the record's position.
        """
        check_id(state_id)
        with self._connection("load events") as conn:
            rows = conn.execute(
                "SELECT seq, record FROM events WHERE state_id = ? ORDER BY seq", (state_id,)
            ).fetchall()
        return [
            parse_record(state_id, record, f"{index} (row seq {seq})", self._path)
            for index, (seq, record) in enumerate(rows)
        ]

    def list_journals(self) -> list[str]:
        with self._connection("list journals") as conn:
            rows = conn.execute("SELECT DISTINCT state_id FROM events ORDER BY state_id")
            return [str(row[0]) for row in rows.fetchall()]
