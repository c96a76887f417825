"""Connections to a PostgreSQL history: the pool, transactions, the driver's errors (private).

Every connection is in autocommit mode with the history's schema as its only search path
and the backend's timeouts (connect, statement, lock); work runs in explicit
``BEGIN`` ... ``COMMIT`` blocks. A connection found dead when a transaction begins (the
server restarted, an idle connection was terminated) is replaced and the ``BEGIN``
tried once more: nothing of that transaction reached the server, so this is always
safe. A connection lost *inside* a transaction is an error
(:class:`~rh_agents.core.errors.StateStorageError`): the server rolls the transaction
back, so nothing of it is half-written, but whether a ``COMMIT`` in flight took effect
is unknown, and the journal's high-water mark tells at the next open.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from rh_agents.core.errors import (
    LifecycleError,
    StateCorruptedError,
    StateError,
    StateStorageError,
)
from rh_agents.storage._postgres_schema import migrate, search_path

__all__ = ["Connections", "Session"]

_log = logging.getLogger("rh_agents.state_backends")

Session = psycopg.Connection[Any]


def _where(dsn: str) -> str:
    """The server a DSN names, without its password, for messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "PostgreSQL (an unreadable DSN)"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    name = params.get("dbname") or params.get("user") or "postgres"
    return f"PostgreSQL database {name!r} at {host}:{port}"


class Connections:
    """The pool of one backend, and how its work meets the server."""

    def __init__(self, dsn: str, *, schema: str, pool_size: int, timeout: float) -> None:
        self.where = _where(dsn)
        self.schema = schema
        self._timeout = timeout
        millis = str(max(1, int(timeout * 1000)))
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(timeout)),
            "options": f"-c statement_timeout={millis} -c lock_timeout={millis}",
        }
        # One connection first: a refused connection or a wrong password is reported with
        # the server's reason at once (the pool would retry until its timeout), and the
        # tables are created on it.
        try:
            first: Session = psycopg.connect(dsn, **kwargs)
        except psycopg.Error as exc:
            raise StateStorageError(
                f"Could not connect to the {self.where} within {timeout:g} s "
                f"({str(exc).strip()}). Check that the server is running and reachable and "
                "that the DSN (host, port, user, password, database) is right."
            ) from exc
        try:
            with first:
                self._configure(first)
                migrate(first, schema, self.where)
        except psycopg.Error as exc:
            raise self.wrap(exc, "create the history's tables") from exc
        self._pool: ConnectionPool[Session] | None = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            configure=self._configure,
            timeout=timeout,
            open=False,
            name=f"rh_agents {schema}",
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
        except PoolTimeout as exc:
            self.close()
            raise StateStorageError(
                f"Could not connect to the {self.where} within {timeout:g} s ({exc}). Check "
                "that the server is running and reachable and that the DSN (host, port, "
                "user, password, database) is right."
            ) from exc

    def _configure(self, conn: Session) -> None:
        conn.execute(search_path(self.schema))

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=self._timeout)

    @property
    def closed(self) -> bool:
        return self._pool is None

    # -- connections

    def take(self, action: str) -> Session:
        """A connection of the pool, for the caller alone until it gives it back."""
        pool = self._pool
        if pool is None:
            raise LifecycleError(
                f"The PostgresStateBackend of {self.where} is closed, so it cannot {action}. "
                "Open a new PostgresStateBackend."
            )
        try:
            return pool.getconn()
        except PoolTimeout as exc:
            raise StateStorageError(
                f"Could not {action}: no connection to the {self.where} within "
                f"{self._timeout:g} s ({exc}). Check that the server is running and "
                "reachable, or raise pool_size if many threads use the backend at once."
            ) from exc

    def give_back(self, conn: Session) -> None:
        pool = self._pool
        if pool is None:
            conn.close()
        else:
            pool.putconn(conn)  # the pool discards a broken or closed connection

    @contextlib.contextmanager
    def transaction(
        self,
        action: str,
        get: Callable[[], Session],
        replace: Callable[[Session], None],
        *,
        isolation: str = "",
    ) -> Iterator[Session]:
        """``BEGIN`` ... ``COMMIT`` on the connection ``get`` returns, rolled back on any
        error; a connection found dead at ``BEGIN`` is handed to ``replace`` and the
        ``BEGIN`` tried once more on a new one."""
        begin = f"BEGIN {isolation}".strip()
        conn = get()
        try:
            conn.execute(begin)
        except psycopg.OperationalError as exc:
            if not conn.broken:
                raise self.wrap(exc, action) from exc
            _log.info("A connection to the %s was lost (%s); reconnecting.", self.where, exc)
            replace(conn)
            pool = self._pool
            if pool is not None:
                pool.check()  # the other idle connections died with it: replace them too
            conn = get()
            try:
                conn.execute(begin)
            except psycopg.Error as again:
                raise self.wrap(again, action) from again
        except psycopg.Error as exc:
            raise self.wrap(exc, action) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.broken:
                replace(conn)
            else:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, psycopg.Error):
                raise self.wrap(exc, action) from exc
            raise

    @contextlib.contextmanager
    def pooled(self, action: str, *, isolation: str = "") -> Iterator[Session]:
        """:meth:`transaction` on a connection of the pool, given back at the end."""
        taken: list[Session] = []

        def get() -> Session:
            taken.append(self.take(action))
            return taken[-1]

        def replace(conn: Session) -> None:
            taken.remove(conn)
            self.give_back(conn)

        try:
            with self.transaction(action, get, replace, isolation=isolation) as conn:
                yield conn
        finally:
            for conn in taken:
                self.give_back(conn)

    # -- errors

    def wrap(self, exc: psycopg.Error, action: str) -> StateError:
        """The storage error for a driver error while doing ``action``."""
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
            return StateCorruptedError(
                f"The rh_agents history in schema {self.schema!r} of the {self.where} is "
                f"damaged ({exc}), so it could not {action}. Restore the schema from a "
                "backup, or drop it to start an empty history."
            )
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return StateStorageError(
                f"Could not {action} in the rh_agents history of the {self.where}: the "
                f"statement took longer than the backend's timeout of {self._timeout:g} s "
                f"({exc}). Check the server's load and locks held by other sessions, or "
                "raise the timeout."
            )
        if isinstance(exc, psycopg.OperationalError):
            return StateStorageError(
                f"The connection to the {self.where} failed, so this process could not "
                f"{action} ({str(exc).strip()}). What was committed before is intact; the "
                "transaction in flight was rolled back by the server. Check the server, "
                "then resume the run."
            )
        return StateStorageError(
            f"Could not {action} in the rh_agents history of the {self.where} "
            f"({type(exc).__name__}: {str(exc).strip()}). Check the server and the "
            "permissions of the database user, then resume the run."
        )
