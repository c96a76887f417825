"""The runs of a SQLite history: leases, group commits and checked reads (private).

:class:`SQLiteRuns` is the :class:`~rh_agents.storage._writer.JournalStore` of
:class:`~rh_agents.storage.sqlite.SQLiteStateBackend`: what its writer thread does, on a
connection of its own (so the backend's synchronous methods, on the caller's thread,
never wait behind a commit that waits for another process's lock), and the checked,
streaming read of a run's records.

Tables (schema version 2)::

    journals (state_id PRIMARY KEY, high_water)       the last position of each run
    events   (state_id, position, record) WITHOUT ROWID, PRIMARY KEY (state_id, position)
    leases   (state_id PRIMARY KEY, owner, host, pid, process_start, since, heartbeat)

A commit checks the lease and moves the high-water mark in the same transaction as it
inserts the records, so the rows of a run are always exactly positions 1 .. high_water.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rh_agents.core.errors import StateError
from rh_agents.core.storage import (
    JournalOpening,
    LeaseHolder,
    history_exists,
    journal_conflict,
    lease_lost,
)
from rh_agents.storage._codec import checked_records, snapshot_row
from rh_agents.storage._lease import check_takeover, holder_from_row, self_start

if TYPE_CHECKING:
    from rh_agents.storage.sqlite import SQLiteStateBackend

DRIVER_ERRORS = (sqlite3.Error, UnicodeDecodeError)
"""What the driver raises: its own errors, and text of a damaged file that is not UTF-8."""

__all__ = [
    "DRIVER_ERRORS",
    "SQLiteRuns",
    "high_water",
    "snapshot_row",
    "transaction",
]

_UPSERT_LEASE = (
    "INSERT INTO leases (state_id, owner, host, pid, process_start, since, heartbeat) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (state_id) DO UPDATE SET owner = excluded.owner, "
    "host = excluded.host, pid = excluded.pid, process_start = excluded.process_start, "
    "since = excluded.since, heartbeat = excluded.heartbeat"
)
_INSERT_STATE = (
    "INSERT OR IGNORE INTO states (state_id, snapshot, status, pipeline_name, created_at, "
    "updated_at) VALUES (?, ?, ?, ?, ?, ?)"
)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


_SELECT_RECORDS = (
    # as bytes: the checksum is computed over them, and JSON is read from them
    "SELECT position, CAST(record AS BLOB) FROM events WHERE state_id = ? ORDER BY position"
)
_ROWS_PER_INSERT = 500
"""Rows per INSERT (three parameters each, far below SQLite's limit of 32766)."""


def high_water(conn: sqlite3.Connection, state_id: str) -> int:
    row = conn.execute("SELECT high_water FROM journals WHERE state_id = ?", (state_id,)).fetchone()
    return int(row[0]) if row is not None else 0


class SQLiteRuns:
    """The writer-thread side of a SQLite history (see the module docstring)."""

    def __init__(self, backend: SQLiteStateBackend, lease_timeout: float) -> None:
        self._backend = backend
        self._lease_timeout = lease_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # the writer connection, for ":memory:" the main one

    @property
    def lease_timeout(self) -> float | None:
        return self._lease_timeout

    @contextlib.contextmanager
    def _connection(self, action: str) -> Iterator[sqlite3.Connection]:
        backend = self._backend
        if backend._in_memory:
            with backend._connection(action) as conn:
                yield conn
            return
        with self._lock:
            try:
                backend._check_writable(action)
                if self._conn is None:
                    backend._check_identity(action)  # never connect to (create) another file
                    self._conn = backend._connect()
                yield self._conn
            except DRIVER_ERRORS as exc:
                raise backend._wrap(exc, action) from exc

    # -- JournalStore

    def open_run(self, opening: JournalOpening, holder: LeaseHolder) -> None:
        state_id = opening.state_id
        with self._connection("open the run for recording") as conn, transaction(conn):
            self._take_lease(conn, state_id, holder)
            stored = high_water(conn, state_id)
            if opening.position == 0 and stored:
                raise history_exists(self._backend, state_id)
            if stored != opening.position:
                raise journal_conflict(state_id, stored, opening.position)
            conn.execute(
                "INSERT OR IGNORE INTO journals (state_id, high_water) VALUES (?, ?)",
                (state_id, stored),
            )
            if opening.snapshot is not None:
                conn.execute(_INSERT_STATE, snapshot_row(opening.snapshot))

    def _take_lease(self, conn: sqlite3.Connection, state_id: str, holder: LeaseHolder) -> None:
        row = conn.execute(
            "SELECT owner, host, pid, process_start, since, heartbeat FROM leases "
            "WHERE state_id = ?",
            (state_id,),
        ).fetchone()
        now = time.time()
        if row is not None and row[0] != holder.owner:
            check_takeover(state_id, row, now - float(row[5]), self._lease_timeout)
        conn.execute(
            _UPSERT_LEASE,
            (
                state_id,
                holder.owner,
                holder.host,
                holder.pid,
                self_start(),
                holder.since.isoformat(),
                now,
            ),
        )

    def commit(self, state_id: str, holder: LeaseHolder, first: int, texts: list[str]) -> None:
        """The records and the new high-water mark in one transaction, if ``holder``
        still holds the lease and nobody else appended.

        Few statements, whatever the number of records: each releases the GIL, which
        the thread takes back from a busy event loop only between two of the loop's
        iterations (one multi-row INSERT per few hundred records, not one per record).
        """
        last = first + len(texts) - 1
        with self._connection("append events") as conn, transaction(conn):
            if not conn.execute(
                "UPDATE journals SET high_water = ? WHERE state_id = ? AND high_water = ? "
                "AND EXISTS (SELECT 1 FROM leases WHERE state_id = ? AND owner = ?)",
                (last, state_id, first - 1, state_id, holder.owner),
            ).rowcount:
                owner = conn.execute(
                    "SELECT owner FROM leases WHERE state_id = ?", (state_id,)
                ).fetchone()
                if owner is None or owner[0] != holder.owner:
                    raise self._lost(conn, state_id)
                raise journal_conflict(state_id, high_water(conn, state_id), first - 1)
            for start in range(0, len(texts), _ROWS_PER_INSERT):
                chunk = texts[start : start + _ROWS_PER_INSERT]
                params: list[Any] = []
                for position, text in enumerate(chunk, start=first + start):
                    params += (state_id, position, text)
                values = ", ".join(["(?, ?, ?)"] * len(chunk))
                conn.execute(
                    f"INSERT INTO events (state_id, position, record) VALUES {values}", params
                )
            # a file deleted or replaced under the run: what it wrote is lost with it
            self._backend._check_identity("append events")
        self._backend._note_wal()

    def _lost(self, conn: sqlite3.Connection, state_id: str) -> StateError:
        row = conn.execute(
            "SELECT owner, host, pid, process_start, since, heartbeat FROM leases "
            "WHERE state_id = ?",
            (state_id,),
        ).fetchone()
        if row is None:
            return lease_lost(
                state_id, LeaseHolder(host="(none)", pid=0, since=datetime.now(UTC), owner="")
            )
        return lease_lost(state_id, holder_from_row(row))

    def heartbeat(self, held: list[tuple[str, LeaseHolder]]) -> dict[str, StateError]:
        lost: dict[str, StateError] = {}
        with self._connection("renew the run leases") as conn, transaction(conn):
            now = time.time()
            for state_id, holder in held:
                if not conn.execute(
                    "UPDATE leases SET heartbeat = ? WHERE state_id = ? AND owner = ?",
                    (now, state_id, holder.owner),
                ).rowcount:
                    lost[state_id] = self._lost(conn, state_id)
        return lost

    def release(self, state_id: str, holder: LeaseHolder) -> None:
        with self._connection("release the run lease") as conn:
            conn.execute(
                "DELETE FROM leases WHERE state_id = ? AND owner = ?", (state_id, holder.owner)
            )

    def writer_stopped(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- reading

    def iter_events(
        self, state_id: str, reader: Callable[[], sqlite3.Connection] | None
    ) -> Iterator[dict[str, Any]]:
        """The records of ``state_id``, checked as they are read (see the module doc).

        ``reader`` opens a private read connection (None: use the backend's own, for
        ``:memory:``, reading everything at once).
        """
        backend = self._backend
        where = backend.path
        if reader is None:
            with backend._connection("load events") as conn:
                mark = high_water(conn, state_id)
                rows: Iterator[tuple[Any, Any]] = iter(
                    conn.execute(
                        _SELECT_RECORDS,
                        (state_id,),
                    ).fetchall()
                )
            yield from checked_records(state_id, where, mark, rows)
            return
        try:
            conn = reader()
        except DRIVER_ERRORS as exc:
            raise backend._wrap(exc, "load events") from exc
        try:
            conn.execute("BEGIN")  # one consistent view of the mark and the rows
            mark = high_water(conn, state_id)
            cursor = conn.execute(
                _SELECT_RECORDS,
                (state_id,),
            )
            yield from checked_records(state_id, where, mark, cursor)
        except DRIVER_ERRORS as exc:
            raise backend._wrap(exc, "load events") from exc
        finally:
            conn.close()
