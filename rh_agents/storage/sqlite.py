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
from urllib.parse import quote

from rh_agents.core.errors import (
    InvalidArgumentError,
    LifecycleError,
    SchemaVersionError,
    StateCorruptedError,
    StateError,
    StateStorageError,
)
from rh_agents.core.state_recovery import StateSnapshot, StateStatus
from rh_agents.core.storage import JournalOpening, RunJournal
from rh_agents.storage._codec import (
    check_id,
    check_snapshot,
    dump_record,
    parse_snapshot,
    status_filter,
)
from rh_agents.storage._sqlite_runs import (
    DRIVER_ERRORS,
    SQLiteRuns,
    high_water,
    snapshot_row,
    transaction,
)
from rh_agents.storage._writer import Writer

__all__ = ["SQLiteStateBackend"]

# The logger keeps the name of the module the backends came from (users configure it).
_log = logging.getLogger("rh_agents.state_backends")

_SQLITE_APP = "rh_agents.history"
_SQLITE_SCHEMA_VERSION = 2
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
CREATE TABLE journals (state_id TEXT PRIMARY KEY, high_water INTEGER NOT NULL);
CREATE TABLE events (
    state_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (state_id, position)
) WITHOUT ROWID;
CREATE TABLE leases (
    state_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    process_start TEXT,
    since TEXT NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE INDEX states_by_status ON states (status, pipeline_name);
"""
_COLUMNS = {
    "states": ["state_id", "snapshot", "status", "pipeline_name", "created_at", "updated_at"],
    "journals": ["state_id", "high_water"],
    "events": ["state_id", "position", "record"],
    "leases": ["state_id", "owner", "host", "pid", "process_start", "since", "heartbeat"],
}
_TABLES = frozenset(_COLUMNS)


def _is_corruption(exc: Exception) -> bool:
    if isinstance(exc, UnicodeDecodeError):
        return True
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return True
    # The statements are this module's: a table or column they do not find is damage.
    if "no such table" in str(exc) or "no such column" in str(exc):
        return True
    # A damaged text value that is not UTF-8 any more (raised by Python's sqlite3).
    return "Could not decode to UTF-8" in str(exc)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    return {str(row[0]) for row in rows}


def _create_schema(conn: sqlite3.Connection) -> None:
    for statement in _SQLITE_SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.executemany(
        f"INSERT INTO {_META_TABLE} (key, value) VALUES (?, ?)",
        [("app", _SQLITE_APP), ("schema_version", str(_SQLITE_SCHEMA_VERSION))],
    )
    conn.execute(f"PRAGMA application_id = {_SQLITE_APPLICATION_ID}")


def _check_version(path: str, raw_version: Any) -> None:
    try:
        version = int(str(raw_version))
    except ValueError:
        raise StateCorruptedError(
            f"The rh_agents history at {path} has an unreadable schema version "
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
            f"The rh_agents history at {path} uses storage schema version "
            f"{version}, but this release reads only version {_SQLITE_SCHEMA_VERSION}. "
            f"{advice}."
        )


class SQLiteStateBackend:
    """The embedded default :class:`StateBackend` and :class:`LeasedJournal`: one SQLite file.

    **Runs.** A run records through :meth:`open_run`: a writer thread of this backend
    commits its records on a connection of its own, many at a time, and holds the run's
    lease (a row of the ``leases`` table, renewed every third of ``lease_timeout``); the
    event loop never waits for the disk or another process's lock. Records have
    consecutive positions, and each commit moves the run's high-water mark in the same
    transaction.

    **Durability.** WAL mode with ``synchronous=NORMAL``: once a commit returned, a crash
    or ``SIGKILL`` of the process loses nothing of it; a power loss or OS crash may lose
    the last commits (never damaging the file). A run hands a call's result back only
    after its COMPLETED record was committed.

    **Integrity.** Reading a run checks every record's checksum (which covers its run and
    position), that positions have no gap and that they end at the high-water mark:
    otherwise :class:`~rh_agents.core.errors.StateCorruptedError`. A database file
    deleted or replaced under a running state is reported
    (:class:`~rh_agents.core.errors.StateStorageError`) at its next write.

    **Read-only.** ``read_only=True``, or a file this process may not write, opens the
    history for reading: states load and can be inspected (no lease is taken), and any
    write raises :class:`StateStorageError` saying so.

    Opening checks the file and raises :class:`StateCorruptedError` when it is not a
    SQLite database, is truncated or damaged, or is not an rh_agents history, and
    :class:`~rh_agents.core.errors.SchemaVersionError` when it was written with another
    storage schema version. A missing or empty file becomes a new history (not when
    read-only); its parent directories are created.

    Args:
        path: the database file, or ``":memory:"`` for a private in-memory database.
        timeout: seconds a write waits for another connection's lock before raising
            :class:`StateStorageError` (the writer thread waits, not the event loop).
        integrity_check: run SQLite's ``PRAGMA quick_check`` when opening, which finds
            damage anywhere in the file at a cost linear in its size. Turn it off only
            for very large histories opened often: the records of a run are checked
            when they are read in any case.
        read_only: open for reading only.
        lease_timeout: seconds without a heartbeat after which another process takes
            a run's lease over (a holder whose process is gone on this host is taken
            over at once).

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
        read_only: bool = False,
        lease_timeout: float = 30.0,
    ) -> None:
        if not lease_timeout > 0:
            raise InvalidArgumentError(
                f"lease_timeout must be a positive number of seconds, got {lease_timeout!r}."
            )
        self._path = os.fspath(path)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._uri: str | None = None  # how read connections open the file
        self._read_only = bool(read_only)
        self._identity: tuple[int, int] | None = None
        self._wal: tuple[int, int] | None = None
        self._in_memory = self._path == ":memory:"
        conn = self._open()
        try:
            self._prepare(conn, integrity_check)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        if not self._in_memory:
            self._identity = _identity(self._path)
        self._runs = SQLiteRuns(self, lease_timeout)
        self._writer = Writer(self._runs, self._path)

    @property
    def path(self) -> str:
        """The database file this backend stores into."""
        return self._path

    @property
    def read_only(self) -> bool:
        """Whether the history was opened for reading only."""
        return self._read_only

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

    def _open(self) -> sqlite3.Connection:
        if self._in_memory:
            return self._connect_to(self._path, uri=False)
        exists = os.path.exists(self._path)
        if not self._read_only and exists and not _writable(self._path):
            self._read_only = True
            _log.info("The rh_agents history at %s is not writable: opened read-only.", self._path)
        if self._read_only:
            if not exists:
                raise StateStorageError(
                    f"There is no rh_agents history at {self._path} to open read-only. "
                    "Check the path."
                )
            return self._open_read_only()
        try:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateStorageError(
                f"Could not create the directory for the rh_agents history at "
                f"{self._path} ({exc}). Check the path and its permissions."
            ) from exc
        return self._connect_to(self._path, uri=False)

    def _open_read_only(self) -> sqlite3.Connection:
        base = f"file:{quote(os.path.abspath(self._path))}?mode=ro"
        try:
            conn = self._connect_to(base, uri=True)
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            self._uri = base
            return conn
        except (StateError, *DRIVER_ERRORS):
            if os.path.exists(self._path + "-wal"):
                raise
        # A WAL history in a directory this process cannot write, with no -shm file:
        # nobody writes it (nothing to recover from the WAL), so it is read as immutable.
        self._uri = base + "&immutable=1"
        return self._connect_to(self._uri, uri=True)

    def _connect_to(self, target: str, *, uri: bool) -> sqlite3.Connection:
        try:
            return sqlite3.connect(
                target,
                timeout=self._timeout,
                check_same_thread=False,
                isolation_level=None,
                uri=uri,
            )
        except DRIVER_ERRORS as exc:
            raise self._wrap(exc, "open the history") from exc

    def _connect(self) -> sqlite3.Connection:
        """A new read-write connection to the file (the writer thread's own)."""
        conn = self._connect_to(self._path, uri=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _reader(self) -> sqlite3.Connection:
        target = self._uri or f"file:{quote(os.path.abspath(self._path))}?mode=ro"
        conn = self._connect_to(target, uri=True)
        # Records come as their stored UTF-8 bytes, which the checksum covers and the
        # JSON reader takes: no decoding into text and encoding back for each record.
        conn.text_factory = bytes
        return conn

    def _wrap(self, exc: Exception, action: str) -> StateError:
        """The storage error for a driver error while doing ``action``."""
        if _is_corruption(exc):
            return StateCorruptedError(
                f"The rh_agents history at {self._path} is damaged or is not a SQLite "
                f"database ({exc}), so it could not {action}. Restore the file from a "
                "backup, or delete it (and its -wal and -shm files) to start an empty history."
            )
        if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_READONLY"):
            return self._read_only_error(action, str(exc))
        return StateStorageError(
            f"Could not {action} in the rh_agents history at {self._path} ({exc}). Check "
            "that the disk is not full (free disk space), that the file is writable, and "
            "that no other process holds a long write lock; then resume the run."
        )

    def _read_only_error(self, action: str, why: str) -> StateStorageError:
        return StateStorageError(
            f"The rh_agents history at {self._path} is read-only ({why}), so it could not "
            f"{action}. Its states can be loaded and inspected; to resume a run, copy the "
            "file (with its -wal file) to a writable place and open it there."
        )

    def _check_writable(self, action: str) -> None:
        if self._read_only:
            raise self._read_only_error(action, "opened read-only")

    def _check_identity(self, action: str) -> None:
        """Refuse to write when the file was deleted or replaced since it was opened."""
        if self._in_memory:
            return
        now = _identity(self._path)
        if now != self._identity:
            what = "deleted" if now is None else "replaced by another file"
            raise StateStorageError(
                f"The rh_agents history at {self._path} was {what} after it was opened, so "
                f"this process could not {action}: what it wrote since then is lost with "
                "the old file. Restore the file, or start the run again; never delete or "
                "replace a history while a process uses it."
            )
        if self._wal is not None and _identity(self._path + "-wal") != self._wal:
            raise StateStorageError(
                f"The write-ahead log {self._path}-wal was deleted or replaced while this "
                f"process used the history, so it could not {action}: recent commits are "
                "lost with it. Restore it, or start the run again; copy or delete a "
                "history only with its -wal file, and only when no process uses it."
            )

    def _note_wal(self) -> None:
        """Remember the write-ahead log the first commit created (see check_identity)."""
        if self._wal is None and not self._in_memory:
            self._wal = _identity(self._path + "-wal")

    def _prepare(self, conn: sqlite3.Connection, integrity_check: bool) -> None:
        try:
            tables = _tables(conn)
            if not tables and not self._read_only:
                with transaction(conn):
                    tables = _tables(conn)  # another process may have won the race
                    if not tables:
                        _create_schema(conn)
                        tables = _tables(conn)
            self._verify(conn, tables)
            if integrity_check:
                problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
                if problems != ["ok"]:
                    raise StateCorruptedError(
                        f"The rh_agents history at {self._path} is damaged (SQLite integrity "
                        f"check: {'; '.join(map(str, problems[:3]))}). Restore the file "
                        "from a backup, or delete it to start an empty history."
                    )
            if not self._read_only:
                self._wal_mode(conn)
        except DRIVER_ERRORS as exc:
            raise self._wrap(exc, "be opened") from exc

    def _wal_mode(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() not in ("wal", "memory"):
            _log.warning(
                "The rh_agents history at %s could not switch to WAL mode (got %r); "
                "writes stay durable but concurrent readers may block.",
                self._path,
                mode,
            )
        conn.execute("PRAGMA synchronous=NORMAL")

    def _verify(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        not_ours = f"The SQLite database at {self._path} is not an rh_agents history"
        if _META_TABLE not in tables:
            if not tables:
                raise StateStorageError(
                    f"The file {self._path} holds no rh_agents history yet, and it was opened "
                    "read-only. Check the path."
                )
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
        _check_version(self._path, meta.get("schema_version"))
        missing = _TABLES - tables
        if missing:
            raise StateCorruptedError(
                f"The rh_agents history at {self._path} is missing the table(s) "
                f"{', '.join(sorted(missing))}. Restore the file from a backup, or delete "
                "it to start an empty history."
            )
        for table, expected in _COLUMNS.items():
            found = [str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")]
            if found != expected:
                raise StateCorruptedError(
                    f"The table {table} of the rh_agents history at {self._path} is damaged "
                    f"(its columns are {', '.join(found) or 'unreadable'}). Restore the file "
                    "from a backup, or delete it to start an empty history."
                )

    # -- connection handling

    @contextlib.contextmanager
    def _connection(self, action: str) -> Iterator[sqlite3.Connection]:
        """The backend's own connection (the synchronous methods' one), locked."""
        with self._lock:
            if self._conn is None:
                raise LifecycleError(
                    f"{self!r} is closed, so it cannot {action}. Open a new "
                    "SQLiteStateBackend on the same path."
                )
            try:
                yield self._conn
            except DRIVER_ERRORS as exc:
                raise self._wrap(exc, action) from exc

    @contextlib.contextmanager
    def _writing(self, action: str) -> Iterator[sqlite3.Connection]:
        self._check_writable(action)
        with self._connection(action) as conn:
            self._check_identity(action)
            yield conn

    def close(self) -> None:
        """Commit what runs queued, release their leases and close the connections.

        Waits up to the lock timeout for the writer thread. Closing twice is allowed.
        """
        if not self._writer.close(self._timeout + 5.0):
            _log.warning("The journal writer of %s did not stop in time.", self)
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- StateBackend

    def save_state(self, snapshot: StateSnapshot) -> bool:
        row = snapshot_row(check_snapshot(snapshot))
        with self._writing("save a snapshot") as conn:
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
        state_id, text, status, pipeline, created, updated = snapshot_row(check_snapshot(snapshot))
        with self._writing("update a snapshot") as conn:
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
        """Delete the snapshot, the journal and the lease of a run."""
        check_id(state_id)
        with self._writing("delete a state") as conn, transaction(conn):
            deleted = conn.execute("DELETE FROM states WHERE state_id = ?", (state_id,)).rowcount
            deleted += conn.execute("DELETE FROM events WHERE state_id = ?", (state_id,)).rowcount
            conn.execute("DELETE FROM journals WHERE state_id = ?", (state_id,))
            conn.execute("DELETE FROM leases WHERE state_id = ?", (state_id,))
        return deleted > 0

    def exists(self, state_id: str) -> bool:
        check_id(state_id)
        with self._connection("look up a state") as conn:
            row = conn.execute("SELECT 1 FROM states WHERE state_id = ?", (state_id,)).fetchone()
        return row is not None

    # -- EventJournal

    def append_event(self, state_id: str, record: dict[str, Any]) -> None:
        """Append one record at the next position, committed before this returns.

        Raises:
            StateStorageError: the write failed (disk full, I/O error, lock timeout, the
                file was deleted or replaced, read-only); the record was not stored.
            ResultSerializationError: the record is not JSON-serializable.
            LifecycleError: the backend is closed.
        """
        check_id(state_id)
        dump_record(state_id, 1, record)  # refuse what cannot be stored before writing
        with self._writing("append an event") as conn, transaction(conn):
            position = high_water(conn, state_id) + 1
            conn.execute(
                "INSERT INTO events (state_id, position, record) VALUES (?, ?, ?)",
                (state_id, position, dump_record(state_id, position, record)),
            )
            conn.execute(
                "INSERT INTO journals (state_id, high_water) VALUES (?, ?) ON CONFLICT "
                "(state_id) DO UPDATE SET high_water = excluded.high_water",
                (state_id, position),
            )
        self._note_wal()

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        """All records of ``state_id`` in append order.

        Raises:
            StateCorruptedError: a record is damaged, misplaced or missing; the message
                names the state and the position.
        """
        return list(self.iter_events(state_id))

    def iter_events(self, state_id: str) -> Iterator[dict[str, Any]]:
        """The records of ``state_id``, read lazily from one consistent view of the file
        and checked as they come (see :meth:`load_events`)."""
        check_id(state_id)
        if self._conn is None:
            raise LifecycleError(
                f"{self!r} is closed, so it cannot load events. Open a new "
                "SQLiteStateBackend on the same path."
            )
        self._writer.settle(state_id, self._timeout)  # read this process's own writes
        return self._runs.iter_events(state_id, None if self._in_memory else self._reader)

    def journal_length(self, state_id: str) -> int:
        check_id(state_id)
        self._writer.settle(state_id, self._timeout)
        with self._connection("read a journal's length") as conn:
            return high_water(conn, state_id)

    def list_journals(self) -> list[str]:
        with self._connection("list journals") as conn:
            rows = conn.execute(
                "SELECT state_id FROM journals WHERE high_water > 0 ORDER BY state_id"
            )
            return [str(row[0]) for row in rows.fetchall()]

    # -- LeasedJournal

    def open_run(self, opening: JournalOpening) -> RunJournal:
        """The journal a run records into, served by this backend's writer thread."""
        check_id(opening.state_id)
        if self._conn is None:
            raise LifecycleError(
                f"{self!r} is closed, so it cannot record a run. Open a new "
                "SQLiteStateBackend on the same path."
            )
        return self._writer.open_run(opening)


def _writable(path: str) -> bool:
    """Whether this process may write the file and create its -wal and -shm files."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.access(path, os.W_OK):
        return False
    return os.access(directory, os.W_OK) or (
        os.path.exists(path + "-wal") and os.access(path + "-wal", os.W_OK)
    )
