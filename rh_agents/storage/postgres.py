"""The PostgreSQL backend: one history for coordinators on many machines.

Needs the ``postgres`` extra (``pip install "rh_agents[postgres]"``: psycopg 3 and
psycopg_pool); importing this module does not import psycopg, constructing a backend does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from rh_agents.core.cache import CacheEntry, WallClock
from rh_agents.core.cache import _expires_at as expires_at
from rh_agents.core.errors import (
    ArtifactNotFoundError,
    InvalidArgumentError,
    LifecycleError,
    ResultSerializationError,
    StateCorruptedError,
)
from rh_agents.core.state_recovery import StateSnapshot, StateStatus
from rh_agents.core.storage import JournalOpening, RunJournal
from rh_agents.storage import _postgres_schema as _schema
from rh_agents.storage._codec import (
    check_snapshot,
    dump_record,
    parse_snapshot,
    status_filter,
)
from rh_agents.storage._writer import Writer
from rh_agents.storage.filesystem import FileSystemArtifactBackend

if TYPE_CHECKING:
    from rh_agents.storage._postgres_conn import Connections
    from rh_agents.storage._postgres_runs import PostgresRuns

__all__ = ["PostgresArtifactBackend", "PostgresCacheBackend", "PostgresStateBackend"]

_log = logging.getLogger("rh_agents.state_backends")

_UPSERT_STATE = (
    "INSERT INTO states (state_id, snapshot, status, pipeline_name, created_at, updated_at) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (state_id) DO UPDATE SET "
    "snapshot = excluded.snapshot, status = excluded.status, "
    "pipeline_name = excluded.pipeline_name, created_at = excluded.created_at, "
    "updated_at = excluded.updated_at"
)


def _driver() -> None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"PostgresStateBackend needs psycopg 3 and psycopg_pool ({exc}). Install them "
            'with: pip install "rh_agents[postgres]"'
        ) from exc


class PostgresStateBackend:
    """A :class:`StateBackend` and :class:`LeasedJournal` in a PostgreSQL database.

    Coordinators on many machines share one history: any of them can resume a run that
    another started, once the other's lease expired. Everything the SQLite backend
    guarantees holds here, with the server as the medium.

    **Runs.** A run records through :meth:`open_run`: a writer thread of this backend
    commits its records on a pooled connection, every record the run's calls queued
    meanwhile in one transaction (group commit); a call's result is handed back only
    after its COMPLETED record was committed. The event loop never waits for the server.

    **The lease.** One writer per run, across machines: a row of the ``leases`` table
    naming the holder (host, pid, since), whose heartbeat (the server's clock) is renewed
    by every commit and every third of ``lease_timeout``. Opening a run another writer
    holds raises :class:`~rh_agents.core.errors.StateLockedError` naming it; a holder
    whose process is gone on this host is taken over at once, one on another host once
    its heartbeat is older than ``lease_timeout``.

    **Integrity.** Records are the shared codec's checksummed JSON at consecutive
    positions, and each commit moves the run's high-water mark in the same transaction;
    reading a run checks all of it (:class:`~rh_agents.core.errors.StateCorruptedError`
    otherwise). A connection lost or a server restarted mid-commit rolls that commit
    back: the run stops with :class:`~rh_agents.core.errors.StateStorageError`, and a
    resume re-runs only the calls that were in flight.

    **Schema.** The tables live in the schema ``schema`` (an SQL identifier), created on
    first use; a version table records the migrations applied, and a newer release's
    schema raises :class:`~rh_agents.core.errors.SchemaVersionError`. Every statement is
    parameterized.

    **Time bounds.** Connecting, waiting for a pooled connection, and every statement
    (lock waits included) give up after ``timeout`` seconds with a
    :class:`StateStorageError`: a server that is down stops a run with a clear error,
    never a hang.

    Args:
        dsn: a libpq connection string or URL, e.g. ``"postgresql://user@db/agents"``.
        pool_size: the most connections this backend opens (at least 2: one for the
            writer thread, one for reads).
        schema: the schema holding the history's tables.
        timeout: seconds for connecting and for any one statement.
        lease_timeout: seconds without a heartbeat after which another coordinator
            takes a run's lease over.

    Raises:
        StateStorageError: the server cannot be reached within ``timeout``.
        SchemaVersionError: a newer release migrated the schema.
        StateCorruptedError: the schema holds tables that are not an rh_agents history.
        InvalidArgumentError: a bad schema name, pool size or timeout.
        ImportError: the ``postgres`` extra is not installed.

    Example:
        >>> backend = PostgresStateBackend("postgresql://localhost/agents")  # doctest: +SKIP
        >>> state = ExecutionState(state_backend=backend)  # doctest: +SKIP
        >>> backend.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 4,
        schema: str = "rh_agents",
        timeout: float = 10.0,
        lease_timeout: float = 30.0,
    ) -> None:
        _driver()
        from rh_agents.storage._postgres_conn import Connections
        from rh_agents.storage._postgres_runs import PostgresRuns

        _schema.check_schema_name(schema)
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 2:
            raise InvalidArgumentError(
                f"pool_size must be an integer of at least 2 (one connection for the "
                f"writer thread, one for reads), got {pool_size!r}."
            )
        for name, value in (("timeout", timeout), ("lease_timeout", lease_timeout)):
            if not isinstance(value, int | float) or not value > 0:
                raise InvalidArgumentError(
                    f"{name} must be a positive number of seconds, got {value!r}."
                )
        self._schema = schema
        self._db: Connections = Connections(
            dsn, schema=schema, pool_size=pool_size, timeout=float(timeout)
        )
        self._runs: PostgresRuns = PostgresRuns(self, self._db, float(lease_timeout))
        self._writer = Writer(self._runs, f"{self._db.where}, schema {schema}")
        self._timeout = float(timeout)

    @property
    def schema(self) -> str:
        """The schema holding the history's tables."""
        return self._schema

    @property
    def location(self) -> str:
        """Where the history is, for messages: the database and schema (no password)."""
        return f"{self._db.where}, schema {self._schema}"

    @property
    def artifacts(self) -> PostgresArtifactBackend:
        """An :class:`ArtifactBackend` in the same database and schema (shares the pool)."""
        return PostgresArtifactBackend(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._db.where}, schema={self._schema!r})"

    def __enter__(self) -> PostgresStateBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Commit what runs queued, release their leases and close the pool.

        Waits up to the timeout for the writer thread. Closing twice is allowed.
        """
        if not self._writer.close(self._timeout + 5.0):
            _log.warning("The journal writer of %s did not stop in time.", self)
        self._db.close()

    def _open(self, action: str) -> None:
        if self._db.closed:
            raise LifecycleError(
                f"{self!r} is closed, so it cannot {action}. Open a new PostgresStateBackend."
            )

    # -- StateBackend

    def save_state(self, snapshot: StateSnapshot) -> bool:
        row = _schema.state_row(check_snapshot(snapshot))
        with self._db.pooled("save a snapshot") as conn:
            conn.execute(_UPSERT_STATE, row)
        return True

    def update_state(self, snapshot: StateSnapshot) -> bool:
        state_id, text, status, pipeline, created, updated = _schema.state_row(
            check_snapshot(snapshot)
        )
        with self._db.pooled("update a snapshot") as conn:
            cursor = conn.execute(
                "UPDATE states SET snapshot = %s, status = %s, pipeline_name = %s, "
                "created_at = %s, updated_at = %s WHERE state_id = %s",
                (text, status, pipeline, created, updated, state_id),
            )
            return cursor.rowcount > 0

    def load_state(self, state_id: str) -> StateSnapshot | None:
        _schema.check_text_id(state_id)
        with self._db.pooled("load a snapshot") as conn:
            row = conn.execute(
                "SELECT snapshot FROM states WHERE state_id = %s", (state_id,)
            ).fetchone()
        if row is None:
            return None
        return parse_snapshot(state_id, row[0], self._db.where)

    def list_states(
        self, *, status: StateStatus | str | None = None, pipeline_name: str | None = None
    ) -> list[str]:
        wanted = status_filter(status)
        with self._db.pooled("list states") as conn:
            rows = conn.execute(
                "SELECT state_id FROM states WHERE (%s::text IS NULL OR status = %s) "
                'AND (%s::text IS NULL OR pipeline_name = %s) ORDER BY state_id COLLATE "C"',
                (
                    None if wanted is None else wanted.value,
                    None if wanted is None else wanted.value,
                    _schema.pipeline_key(pipeline_name),
                    _schema.pipeline_key(pipeline_name),
                ),
            ).fetchall()
        return [str(row[0]) for row in rows]

    def delete_state(self, state_id: str) -> bool:
        """Delete the snapshot, the journal and the lease of a run."""
        _schema.check_text_id(state_id)
        with self._db.pooled("delete a state") as conn:
            deleted = conn.execute("DELETE FROM states WHERE state_id = %s", (state_id,)).rowcount
            deleted += conn.execute("DELETE FROM events WHERE state_id = %s", (state_id,)).rowcount
            conn.execute("DELETE FROM journals WHERE state_id = %s", (state_id,))
            conn.execute("DELETE FROM leases WHERE state_id = %s", (state_id,))
        return deleted > 0

    def exists(self, state_id: str) -> bool:
        _schema.check_text_id(state_id)
        with self._db.pooled("look up a state") as conn:
            row = conn.execute("SELECT 1 FROM states WHERE state_id = %s", (state_id,)).fetchone()
        return row is not None

    # -- EventJournal

    def append_event(self, state_id: str, record: dict[str, Any]) -> None:
        """Append one record at the next position, committed before this returns.

        Raises:
            StateStorageError: the write failed; the record was not stored.
            ResultSerializationError: the record is not JSON-serializable.
            LifecycleError: the backend is closed.
        """
        _schema.check_text_id(state_id)
        dump_record(state_id, 1, record)  # refuse what cannot be stored before writing
        with self._db.pooled("append an event") as conn:
            conn.execute(
                "INSERT INTO journals (state_id, high_water) VALUES (%s, 0) "
                "ON CONFLICT (state_id) DO NOTHING",
                (state_id,),
            )
            row = conn.execute(
                "UPDATE journals SET high_water = high_water + 1 WHERE state_id = %s "
                "RETURNING high_water",
                (state_id,),
            ).fetchone()
            position = int(row[0]) if row is not None else 1
            conn.execute(
                "INSERT INTO events (state_id, position, record) VALUES (%s, %s, %s)",
                (state_id, position, dump_record(state_id, position, record)),
            )

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        """All records of ``state_id`` in append order.

        Raises:
            StateCorruptedError: a record is damaged, misplaced or missing; the message
                names the state and the position.
        """
        return list(self.iter_events(state_id))

    def iter_events(self, state_id: str) -> Iterator[dict[str, Any]]:
        """The records of ``state_id``, read in batches from one consistent snapshot of
        the database and checked as they come (see :meth:`load_events`)."""
        _schema.check_text_id(state_id)
        self._open("load events")
        self._writer.settle(state_id, self._timeout)  # read this process's own writes
        return self._runs.iter_events(state_id)

    def journal_length(self, state_id: str) -> int:
        _schema.check_text_id(state_id)
        self._writer.settle(state_id, self._timeout)
        with self._db.pooled("read a journal's length") as conn:
            row = conn.execute(
                "SELECT high_water FROM journals WHERE state_id = %s", (state_id,)
            ).fetchone()
        return int(row[0]) if row is not None else 0

    def list_journals(self) -> list[str]:
        with self._db.pooled("list journals") as conn:
            rows = conn.execute(
                'SELECT state_id FROM journals WHERE high_water > 0 ORDER BY state_id COLLATE "C"'
            ).fetchall()
        return [str(row[0]) for row in rows]

    # -- LeasedJournal

    def open_run(self, opening: JournalOpening) -> RunJournal:
        """The journal a run records into, served by this backend's writer thread."""
        _schema.check_text_id(opening.state_id)
        self._open("record a run")
        return self._writer.open_run(opening)


# --------------------------------------------------------------------------- artifacts

_ARTIFACT_REF_PREFIX = "artifact:"
_KINDS = {".bin": "bytes", ".txt": "text", ".json": "json"}
"""The kind column of each stored form of the file-system artifacts (same encoding)."""


class PostgresArtifactBackend:
    """An :class:`ArtifactBackend` in the database of a :class:`PostgresStateBackend`.

    Stores like :class:`~rh_agents.storage.FileSystemArtifactBackend`: ``bytes`` as they
    are, ``str`` as UTF-8, any other JSON-serializable value as JSON, and returns the
    kind it was saved with. References are ``"artifact:<id>"``; ids are 1 to 200
    characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or digit, so every
    artifact can move to the file-system backend. Obtain it as ``backend.artifacts``.

    Example:
        >>> artifacts = backend.artifacts  # doctest: +SKIP
        >>> ref = artifacts.save_artifact("report", "hello")  # doctest: +SKIP
        >>> artifacts.load_artifact(ref)  # doctest: +SKIP
        'hello'
    """

    def __init__(self, backend: PostgresStateBackend) -> None:
        self._db = backend._db

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._db.where}, schema={self._db.schema!r})"

    _id = staticmethod(FileSystemArtifactBackend._artifact_id)

    def save_artifact(self, artifact_id: str, data: Any) -> str:
        """Store ``data`` and return its reference ``"artifact:<id>"``.

        Raises:
            InvalidArgumentError: a bad id, or ``data`` is neither bytes, str nor
                JSON-serializable.
            StateStorageError: the write failed.
        """
        artifact_id = self._id(artifact_id)
        suffix, payload = FileSystemArtifactBackend._encode(artifact_id, data)
        with self._db.pooled("save the artifact") as conn:
            conn.execute(
                "INSERT INTO artifacts (artifact_id, kind, data) VALUES (%s, %s, %s) "
                "ON CONFLICT (artifact_id) DO UPDATE SET kind = excluded.kind, "
                "data = excluded.data",
                (artifact_id, _KINDS[suffix], payload),
            )
        return _ARTIFACT_REF_PREFIX + artifact_id

    def load_artifact(self, ref_or_id: str) -> Any:
        """Return the stored value as ``bytes``, ``str`` or a JSON value.

        Raises:
            ArtifactNotFoundError: no such artifact (a ``KeyError``).
            StateCorruptedError: the stored text or JSON cannot be decoded.
        """
        artifact_id = self._id(ref_or_id)
        with self._db.pooled("load the artifact") as conn:
            row = conn.execute(
                "SELECT kind, data FROM artifacts WHERE artifact_id = %s", (artifact_id,)
            ).fetchone()
        if row is None:
            raise ArtifactNotFoundError(
                f"No artifact with id {artifact_id!r} exists in the {self._db.where} (schema "
                f"{self._db.schema!r}). Check the reference, or save the artifact first."
            )
        kind, payload = str(row[0]), bytes(row[1])
        try:
            if kind == "bytes":
                return payload
            if kind == "text":
                return payload.decode("utf-8")
            if kind == "json":
                return json.loads(payload)
        except ValueError as exc:
            raise StateCorruptedError(
                f"The artifact {artifact_id!r} in the {self._db.where} is damaged and cannot "
                f"be decoded ({exc}). Save the artifact again."
            ) from exc
        raise StateCorruptedError(
            f"The artifact {artifact_id!r} in the {self._db.where} has an unknown kind "
            f"{kind!r}. Save the artifact again."
        )

    def delete_artifact(self, ref_or_id: str) -> bool:
        artifact_id = self._id(ref_or_id)
        with self._db.pooled("delete the artifact") as conn:
            return (
                conn.execute(
                    "DELETE FROM artifacts WHERE artifact_id = %s", (artifact_id,)
                ).rowcount
                > 0
            )

    def exists(self, ref_or_id: str) -> bool:
        artifact_id = self._id(ref_or_id)
        with self._db.pooled("look up the artifact") as conn:
            row = conn.execute(
                "SELECT 1 FROM artifacts WHERE artifact_id = %s", (artifact_id,)
            ).fetchone()
        return row is not None

    def list_artifacts(self) -> list[str]:
        with self._db.pooled("list artifacts") as conn:
            rows = conn.execute(
                'SELECT artifact_id FROM artifacts ORDER BY artifact_id COLLATE "C"'
            ).fetchall()
        return [str(row[0]) for row in rows]


# --------------------------------------------------------------------------- the cache

_NOW = "extract(epoch from clock_timestamp())"


class PostgresCacheBackend:
    """A persistent :class:`~rh_agents.core.cache.CacheBackend` in the database of a
    :class:`PostgresStateBackend`, shared by every coordinator that uses it.

    Stores like :class:`~rh_agents.core.cache.SQLiteCacheBackend`: values as JSON (a
    pydantic model comes back as a dict), a damaged entry is logged, removed and counts
    as a miss. TTL is measured on the **server's** clock (so coordinators whose clocks
    disagree agree on expiry), or on ``clock`` when one is given (tests). It is an
    :class:`~rh_agents.core.cache.AsyncCacheBackend`: the
    :class:`~rh_agents.core.cache.ResultCache` of a state reads and writes it off the
    event loop. Single flight (one computation per key while others wait) holds within
    one process; coordinators on other machines may compute the same key at the same
    time, and the last one stored wins.

    Args:
        backend: the state backend whose database, schema and pool it uses.
        clock: a wall clock for TTLs instead of the server's (None: the server's).

    Example:
        >>> cache = PostgresCacheBackend(backend)  # doctest: +SKIP
        >>> state = ExecutionState(state_backend=backend, cache_backend=cache)  # doctest: +SKIP
    """

    def __init__(self, backend: PostgresStateBackend, *, clock: WallClock | None = None) -> None:
        self._db = backend._db
        self._clock = clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._db.where}, schema={self._db.schema!r})"

    def _now(self) -> tuple[str, tuple[Any, ...]]:
        """The SQL for "now" and its parameters (the server's clock, or ``clock``)."""
        if self._clock is None:
            return _NOW, ()
        return "%s", (self._clock.time(),)

    def get(self, key: str) -> CacheEntry | None:
        now, params = self._now()
        with self._db.pooled("read a cache entry") as conn:
            row = conn.execute(
                f"SELECT value, stored_at, expires_at, {now} FROM cache_entries WHERE key = %s",
                (*params, key),
            ).fetchone()
            if row is None:
                return None
            text, stored_at, expires_at, at = row
            if expires_at is not None and float(at) >= float(expires_at):
                conn.execute("DELETE FROM cache_entries WHERE key = %s", (key,))
                return None
            try:
                value = json.loads(text)
            except (TypeError, ValueError) as exc:
                _log.warning(
                    "Dropping the damaged cache entry %s in %s (%s); it counts as a miss.",
                    key,
                    self._db.where,
                    exc,
                )
                conn.execute("DELETE FROM cache_entries WHERE key = %s", (key,))
                return None
        return CacheEntry(
            value=value,
            stored_at=float(stored_at),
            expires_at=None if expires_at is None else float(expires_at),
        )

    def set(self, key: str, value: Any, ttl: float | None) -> None:
        expires_in = None if ttl is None else expires_at(0.0, ttl)
        try:
            text = json.dumps(to_jsonable_python(value), separators=(",", ":"))
        except (PydanticSerializationError, TypeError, ValueError) as exc:
            raise ResultSerializationError(
                f"The value for cache key {key} cannot be stored because it is not "
                f"JSON-serializable ({exc}). Return JSON-like data or a pydantic model, or "
                "use an InMemoryCacheBackend."
            ) from exc
        now, params = self._now()
        with self._db.pooled("write a cache entry") as conn:
            conn.execute(
                "INSERT INTO cache_entries (key, value, stored_at, expires_at) "
                f"VALUES (%s, %s, {now}, {now} + %s) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value, stored_at = excluded.stored_at, "
                "expires_at = excluded.expires_at",
                (key, text, *params, *params, expires_in),
            )

    async def get_async(self, key: str) -> CacheEntry | None:
        return await asyncio.to_thread(self.get, key)

    async def set_async(self, key: str, value: Any, ttl: float | None) -> None:
        await asyncio.to_thread(self.set, key, value, ttl)

    def delete(self, key: str) -> bool:
        with self._db.pooled("delete a cache entry") as conn:
            return conn.execute("DELETE FROM cache_entries WHERE key = %s", (key,)).rowcount > 0

    def clear(self) -> None:
        with self._db.pooled("clear the cache") as conn:
            conn.execute("DELETE FROM cache_entries")

    def purge_expired(self) -> int:
        """Delete every expired entry and return how many were deleted."""
        now, params = self._now()
        with self._db.pooled("purge expired entries") as conn:
            return conn.execute(
                f"DELETE FROM cache_entries WHERE expires_at IS NOT NULL AND expires_at <= {now}",
                params,
            ).rowcount
