"""The runs of a PostgreSQL history: leases, group commits and checked reads (private).

:class:`PostgresRuns` is the :class:`~rh_agents.storage._writer.JournalStore` of
:class:`~rh_agents.storage.postgres.PostgresStateBackend`: what its writer thread does,
on a pooled connection it keeps while runs record. The event loop never waits for the
server: the thread commits every record the runs queued meanwhile in one transaction.

The lease is a row of ``leases`` with a heartbeat in the **server's** clock, so
coordinators on machines whose clocks disagree still agree on when it expired. Opening a
run takes a transaction-scoped advisory lock on the run first, so two coordinators
opening it at once are served one after the other: the second finds the first's lease.
A commit renews the heartbeat of its own lease row and moves the high-water mark from
the expected value, in the same transaction as it inserts the records; a writer whose
lease was taken over, or whose journal another writer extended, commits nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
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
from rh_agents.storage._codec import checked_records
from rh_agents.storage._lease import check_takeover, holder_from_row, self_start
from rh_agents.storage._postgres_conn import Connections, Session
from rh_agents.storage._postgres_schema import state_row

if TYPE_CHECKING:
    from rh_agents.storage.postgres import PostgresStateBackend

__all__ = ["PostgresRuns", "high_water"]

_NOW = "extract(epoch from clock_timestamp())"
_READ_BATCH = 2000


def high_water(conn: Session, state_id: str, *, lock: bool = False) -> int:
    row = conn.execute(
        "SELECT high_water FROM journals WHERE state_id = %s" + (" FOR UPDATE" if lock else ""),
        (state_id,),
    ).fetchone()
    return int(row[0]) if row is not None else 0


class PostgresRuns:
    """The writer-thread side of a PostgreSQL history (see the module docstring)."""

    def __init__(
        self, backend: PostgresStateBackend, connections: Connections, lease_timeout: float
    ) -> None:
        self._backend = backend
        self._db = connections
        self._lease_timeout = lease_timeout
        self._conn: Session | None = None
        self._lock = threading.Lock()

    @property
    def lease_timeout(self) -> float | None:
        return self._lease_timeout

    def _get(self) -> Session:
        if self._conn is None:
            self._conn = self._db.take("record a run")
        return self._conn

    def _replace(self, conn: Session) -> None:
        if self._conn is conn:
            self._conn = None
        self._db.give_back(conn)

    def _transaction(self, action: str) -> Any:
        return self._db.transaction(action, self._get, self._replace)

    # -- JournalStore

    def open_run(self, opening: JournalOpening, holder: LeaseHolder) -> None:
        state_id = opening.state_id
        with self._lock, self._transaction("open the run for recording") as conn:
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"rh_agents:{self._db.schema}:{state_id}",),
            )
            self._take_lease(conn, state_id, holder)
            conn.execute(
                "INSERT INTO journals (state_id, high_water) VALUES (%s, 0) "
                "ON CONFLICT (state_id) DO NOTHING",
                (state_id,),
            )
            stored = high_water(conn, state_id, lock=True)
            if opening.position == 0 and stored:
                raise history_exists(self._backend, state_id)
            if stored != opening.position:
                raise journal_conflict(state_id, stored, opening.position)
            if opening.snapshot is not None:
                conn.execute(
                    "INSERT INTO states (state_id, snapshot, status, pipeline_name, "
                    "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (state_id) DO NOTHING",
                    state_row(opening.snapshot),
                )

    def _take_lease(self, conn: Session, state_id: str, holder: LeaseHolder) -> None:
        row = conn.execute(
            f"SELECT owner, host, pid, process_start, since, {_NOW} - heartbeat FROM leases "
            "WHERE state_id = %s FOR UPDATE",
            (state_id,),
        ).fetchone()
        if row is not None and row[0] != holder.owner:
            check_takeover(state_id, row, float(row[5]), self._lease_timeout)
        conn.execute(
            "INSERT INTO leases (state_id, owner, host, pid, process_start, since, heartbeat) "
            f"VALUES (%s, %s, %s, %s, %s, %s, {_NOW}) ON CONFLICT (state_id) DO UPDATE SET "
            "owner = excluded.owner, host = excluded.host, pid = excluded.pid, "
            "process_start = excluded.process_start, since = excluded.since, "
            "heartbeat = excluded.heartbeat",
            (
                state_id,
                holder.owner,
                holder.host,
                holder.pid,
                self_start(),
                holder.since.isoformat(),
            ),
        )

    def commit(self, state_id: str, holder: LeaseHolder, first: int, texts: list[str]) -> None:
        rows = [(state_id, first + i, text) for i, text in enumerate(texts)]
        last = first + len(texts) - 1
        with self._lock, self._transaction("append events") as conn:
            if (
                conn.execute(
                    f"UPDATE leases SET heartbeat = {_NOW} WHERE state_id = %s AND owner = %s",
                    (state_id, holder.owner),
                ).rowcount
                != 1
            ):
                raise self._lost(conn, state_id)
            if (
                conn.execute(
                    "UPDATE journals SET high_water = %s WHERE state_id = %s AND high_water = %s",
                    (last, state_id, first - 1),
                ).rowcount
                != 1
            ):
                raise journal_conflict(state_id, high_water(conn, state_id), first - 1)
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO events (state_id, position, record) VALUES (%s, %s, %s)", rows
                )

    def _lost(self, conn: Session, state_id: str) -> StateError:
        row = conn.execute(
            "SELECT owner, host, pid, process_start, since FROM leases WHERE state_id = %s",
            (state_id,),
        ).fetchone()
        if row is None:
            return lease_lost(
                state_id, LeaseHolder(host="(none)", pid=0, since=datetime.now(UTC), owner="")
            )
        return lease_lost(state_id, holder_from_row(row))

    def heartbeat(self, held: list[tuple[str, LeaseHolder]]) -> dict[str, StateError]:
        lost: dict[str, StateError] = {}
        with self._lock, self._transaction("renew the run leases") as conn:
            for state_id, holder in held:
                if (
                    conn.execute(
                        f"UPDATE leases SET heartbeat = {_NOW} WHERE state_id = %s AND owner = %s",
                        (state_id, holder.owner),
                    ).rowcount
                    != 1
                ):
                    lost[state_id] = self._lost(conn, state_id)
        return lost

    def release(self, state_id: str, holder: LeaseHolder) -> None:
        with self._lock, self._transaction("release the run lease") as conn:
            conn.execute(
                "DELETE FROM leases WHERE state_id = %s AND owner = %s", (state_id, holder.owner)
            )

    def writer_stopped(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            self._db.give_back(conn)

    # -- reading

    def iter_events(self, state_id: str) -> Iterator[dict[str, Any]]:
        """The records of ``state_id``, read in batches from one snapshot of the database
        (a repeatable-read transaction) and checked as they come."""
        db = self._db
        with db.pooled(
            "load events", isolation="ISOLATION LEVEL REPEATABLE READ READ ONLY"
        ) as conn:
            mark = high_water(conn, state_id)
            yield from checked_records(state_id, db.where, mark, _rows(conn, state_id))


def _rows(conn: Session, state_id: str) -> Iterator[tuple[Any, Any]]:
    after = 0
    while True:
        batch = conn.execute(
            "SELECT position, record FROM events WHERE state_id = %s AND position > %s "
            "ORDER BY position LIMIT %s",
            (state_id, after, _READ_BATCH),
        ).fetchall()
        yield from batch
        if len(batch) < _READ_BATCH:
            return
        after = int(batch[-1][0])
