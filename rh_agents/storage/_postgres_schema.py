"""The tables of a PostgreSQL history, created on first use and migrated forward (private).

A history lives in one schema of a database (``rh_agents`` unless told otherwise). The
schema's ``schema_migrations`` table lists the migrations applied to it; opening a
backend applies the missing ones in order, in one transaction serialized by a
transaction-scoped advisory lock, so coordinators that start at the same time create the
tables once. A schema migrated by a newer release (a version this one does not know) is
refused with :class:`~rh_agents.core.errors.SchemaVersionError`; a schema that holds
tables but no ``schema_migrations`` is not an rh_agents history
(:class:`~rh_agents.core.errors.StateCorruptedError`).

Tables (version 1)::

    states          (state_id PRIMARY KEY, snapshot, status, pipeline_name, created_at,
                     updated_at)
    journals        (state_id PRIMARY KEY, high_water)         the last position of a run
    events          (state_id, position, record), PRIMARY KEY (state_id, position)
    leases          (state_id PRIMARY KEY, owner, host, pid, process_start, since,
                     heartbeat)                                 heartbeat: server time
    artifacts       (artifact_id PRIMARY KEY, kind, data)
    cache_entries   (key PRIMARY KEY, value, stored_at, expires_at)

This module imports psycopg only in the functions that talk to the server. Snapshots
and records are stored as the shared codec's checksummed JSON text, exactly as
the other backends store them. Every statement names its tables unqualified: a
connection's ``search_path`` is the history's schema alone (set when the pool opens it).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from rh_agents.core.errors import InvalidArgumentError, SchemaVersionError, StateCorruptedError
from rh_agents.core.state_recovery import StateSnapshot
from rh_agents.storage._codec import check_id, snapshot_row

if TYPE_CHECKING:
    from psycopg import sql

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "check_schema_name",
    "check_text_id",
    "migrate",
    "pipeline_key",
    "search_path",
    "state_row",
]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            "CREATE TABLE states (state_id TEXT PRIMARY KEY, snapshot TEXT NOT NULL, "
            "status TEXT NOT NULL, pipeline_name TEXT, created_at TEXT NOT NULL, "
            "updated_at TEXT NOT NULL)",
            "CREATE INDEX states_by_status ON states (status, pipeline_name)",
            "CREATE TABLE journals (state_id TEXT PRIMARY KEY, high_water BIGINT NOT NULL)",
            "CREATE TABLE events (state_id TEXT NOT NULL, position BIGINT NOT NULL, "
            "record TEXT NOT NULL, PRIMARY KEY (state_id, position))",
            "CREATE TABLE leases (state_id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
            "host TEXT NOT NULL, pid INTEGER NOT NULL, process_start TEXT, "
            "since TEXT NOT NULL, heartbeat DOUBLE PRECISION NOT NULL)",
            "CREATE TABLE artifacts (artifact_id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
            "data BYTEA NOT NULL)",
            "CREATE TABLE cache_entries (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
            "stored_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION)",
        ],
    ),
]
"""The forward migrations, in order: (version, statements). A new release appends one."""

SCHEMA_VERSION = MIGRATIONS[-1][0]
"""The version this release writes (and the newest it reads)."""


def check_schema_name(schema: object) -> str:
    """``schema`` if it is a plain SQL identifier (letters, digits, ``_``; 63 at most).

    Raises:
        InvalidArgumentError: it is not.
    """
    if not isinstance(schema, str) or not _NAME.fullmatch(schema):
        raise InvalidArgumentError(
            f"The PostgreSQL schema name must be an identifier of letters, digits and "
            f"underscores (not starting with a digit, at most 63 characters), got "
            f"{schema!r}."
        )
    return schema


def check_text_id(value: object, what: str = "state_id") -> str:
    """An id PostgreSQL can store as text: non-empty, no NUL character, valid Unicode.

    Raises:
        InvalidArgumentError: it is not.
    """
    text = check_id(value, what)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        valid = False
    else:
        valid = "\x00" not in text
    if not valid:
        raise InvalidArgumentError(
            f"The {what} {text!r} cannot be stored in PostgreSQL: it contains a NUL "
            "character or an unpaired surrogate. Use printable text."
        )
    return text


def pipeline_key(name: str | None) -> str | None:
    """A pipeline name as the ``states.pipeline_name`` column holds it: its JSON text
    (ASCII), so any name is stored (PostgreSQL text refuses NUL) and compared exactly."""
    return None if name is None else json.dumps(name)


def state_row(snapshot: StateSnapshot) -> tuple[str, str, str, str | None, str, str]:
    """The ``states`` row of a snapshot (see :func:`._codec.snapshot_row`)."""
    state_id, text, status, pipeline, created, updated = snapshot_row(snapshot)
    return check_text_id(state_id), text, status, pipeline_key(pipeline), created, updated


def search_path(schema: str) -> sql.Composed:
    """The statement that makes ``schema`` a connection's only schema."""
    from psycopg import sql

    return sql.SQL("SET search_path TO {}").format(sql.Identifier(schema))


def migrate(conn: Any, schema: str, where: str) -> int:
    """Create the history's schema and tables, or bring them to :data:`SCHEMA_VERSION`.

    ``conn`` is an autocommit connection whose search path is ``schema``. Returns the
    version the schema had before (0: new).

    Raises:
        SchemaVersionError: a newer release migrated the schema.
        StateCorruptedError: the schema holds tables of something else.
    """
    from psycopg import sql

    with conn.transaction():
        # Serializes coordinators opening the same history for the first time.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"rh_agents:{schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        tables = {
            str(row[0])
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            ).fetchall()
        }
        if tables and "schema_migrations" not in tables:
            shown = ", ".join(sorted(tables)[:10])
            raise StateCorruptedError(
                f"The PostgreSQL schema {schema!r} of {where} is not an rh_agents history "
                f"(it holds the tables {shown}). Pass another schema= to "
                "PostgresStateBackend, or one it created."
            )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        found = int(row[0]) if row is not None and row[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"The rh_agents history in schema {schema!r} of {where} uses storage schema "
                f"version {found}, but this release reads versions up to {SCHEMA_VERSION}. "
                "Upgrade rh_agents to a release that reads it."
            )
        for version, statements in MIGRATIONS:
            if version > found:
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
    return found
