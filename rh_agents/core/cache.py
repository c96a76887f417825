"""The result cache of cacheable actors.

A cacheable actor's result is stored under a key made from everything that can change
the answer: the actor's name, its version, the input and the call's ``extra_context``
(:func:`make_cache_key`), or what the actor's ``cache_key`` says identifies the answer
(:func:`call_cache_key`). :class:`ResultCache` looks the key up in
a :class:`CacheBackend` and, on a miss, runs the computation once even when many callers
ask for the same key at the same time (single flight).

Backends:

* :class:`InMemoryCacheBackend`: per process, least-recently-used eviction, TTL measured
  on an injectable monotonic :class:`~rh_agents.core.clock.Clock`.
* :class:`SQLiteCacheBackend`: survives restarts; values stored as JSON and TTL measured
  on wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeGuard, runtime_checkable

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_jsonable_python

from rh_agents.core._validate import has_methods, is_finite_at_least, is_int_at_least
from rh_agents.core.clock import SYSTEM_CLOCK, Clock
from rh_agents.core.errors import (
    InvalidArgumentError,
    LifecycleError,
    ResultSerializationError,
    SchemaVersionError,
    StateCorruptedError,
    StateError,
)

__all__ = [
    "SYSTEM_WALL_CLOCK",
    "AsyncCacheBackend",
    "CacheBackend",
    "CacheEntry",
    "InMemoryCacheBackend",
    "ResultCache",
    "SQLiteCacheBackend",
    "SystemWallClock",
    "UncacheableInputError",
    "WallClock",
    "call_cache_key",
    "make_cache_key",
]

_log = logging.getLogger(__name__)


class UncacheableInputError(InvalidArgumentError, TypeError):
    """An actor input cannot be turned into a cache key because it is not serializable.

    It is both a ``ValueError`` (as an :class:`InvalidArgumentError`) and a ``TypeError``.
    """


# --------------------------------------------------------------------------- keys


def _canonical_json(value: Any) -> str:
    jsonable = to_jsonable_python(value, bytes_mode="base64")
    return json.dumps(jsonable, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _normalize(value: Any) -> Any:
    """Make ``value`` order-independent where Python's order is arbitrary (sets)."""
    if isinstance(value, BaseModel):
        return _normalize(value.model_dump(mode="python"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _normalize(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: _normalize(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_normalize(item) for item in value]
    if isinstance(value, set | frozenset):
        # Set iteration order depends on hashing (random for str across processes).
        return sorted((_normalize(item) for item in value), key=_canonical_json)
    return value


_UNSERIALIZABLE = (PydanticSerializationError, TypeError, ValueError, RecursionError)


def _jsonable(value: Any) -> Any:
    return to_jsonable_python(_normalize(value), bytes_mode="base64")


def make_cache_key(
    actor_name: str,
    version: str,
    input_data: Any,
    extra_context: Mapping[str, Any] | None = None,
) -> str:
    """The cache key of one actor call: a SHA-256 hex digest.

    The digest covers canonical JSON (sorted keys, no whitespace) of the actor's name,
    its version, its input and (when given) the call's ``extra_context``: everything
    that can change the answer. Equal values give equal keys in every process: dict key
    order and set order do not matter. Values are compared by their JSON form (as
    produced by ``pydantic_core.to_jsonable_python``, bytes as URL-safe base64): a tuple and a
    list with the same items, or a model and the dict of its fields, share a key.
    Bump ``version`` whenever the actor's behaviour changes, to stop reusing old results.

    Raises:
        UncacheableInputError: ``input_data`` or a value of ``extra_context`` has no
            stable JSON form (an object such as a client or a lock, or a cycle); the
            message names the key of ``extra_context`` that has none.
        InvalidArgumentError: ``actor_name`` is empty or either name is not a string.

    Example:
        >>> make_cache_key("search", "1", {"q": "x", "n": 3}) == make_cache_key(
        ...     "search", "1", {"n": 3, "q": "x"}
        ... )
        True
        >>> make_cache_key("llm", "1", "hi", {"persona": "pirate"}) == make_cache_key(
        ...     "llm", "1", "hi", {"persona": "lawyer"}
        ... )
        False
    """
    if not isinstance(actor_name, str) or not actor_name:
        raise InvalidArgumentError(
            f"The actor name of a cache key must be a non-empty string, got {actor_name!r}."
        )
    if not isinstance(version, str):
        raise InvalidArgumentError(
            f"The actor version of a cache key must be a string, got {version!r}. "
            "Pass it as text, for example '1' or '2024-06-01'."
        )
    try:
        parts = [actor_name, version, _jsonable(input_data)]
    except _UNSERIALIZABLE as exc:
        raise UncacheableInputError(
            f"The input of actor {actor_name!r} cannot be used as a cache key because it is "
            f"not JSON-serializable ({exc}). Make the input a pydantic model or plain "
            "JSON-like data, or mark the actor as not cacheable."
        ) from exc
    if extra_context is not None:
        parts.append(_extra_part(actor_name, extra_context))
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _extra_part(actor_name: str, extra_context: Mapping[str, Any]) -> Any:
    """The JSON form of ``extra_context`` in a cache key, or an error naming its bad key."""
    try:
        return _jsonable(dict(extra_context))
    except _UNSERIALIZABLE as exc:
        failure: BaseException = exc
    for key, value in extra_context.items():
        try:
            _jsonable(value)
        except _UNSERIALIZABLE as exc:
            where = f"the value under {key!r} ({type(value).__name__}) has no stable JSON form"
            failure = exc
            break
    else:  # every value has one: a key has none (an object used as a key)
        where = "its keys have no stable JSON form"
    raise UncacheableInputError(
        f"The extra_context of actor {actor_name!r} cannot be part of its cache key: {where} "
        f"({failure}). A cacheable actor's key covers the extra_context of the call, because "
        "it can change the answer. Give the actor a cache_key=lambda input_data, "
        "extra_context: ... that returns what identifies the answer (for example "
        "(input_data, extra_context['persona'])), or make it cacheable=False."
    ) from failure


def call_cache_key(
    actor_name: str,
    version: str,
    input_data: Any,
    extra_context: Mapping[str, Any],
    cache_key: Callable[[Any, Any], Any] | None = None,
) -> str:
    """The cache key of one call of a cacheable actor, as the core computes it.

    Without ``cache_key``: :func:`make_cache_key` of the input and the extra_context.
    With it (the actor's ``cache_key``): :func:`make_cache_key` of what
    ``cache_key(input_data, extra_context)`` returns, which says what identifies the
    answer (the actor's name and version are still part of the key).

    Raises:
        UncacheableInputError: the key cannot be made (see :func:`make_cache_key`), or
            ``cache_key`` returned something without a stable JSON form.
    """
    if cache_key is None:
        return make_cache_key(actor_name, version, input_data, extra_context)
    value = cache_key(input_data, extra_context)
    try:
        return make_cache_key(actor_name, version, value)
    except UncacheableInputError as exc:
        raise UncacheableInputError(
            f"The cache_key of actor {actor_name!r} returned a {type(value).__name__}, which "
            f"has no stable JSON form ({exc.__cause__}). Return JSON-like data that "
            "identifies the answer: strings, numbers, lists, dicts or pydantic models."
        ) from exc.__cause__


# --------------------------------------------------------------------------- backends


@dataclasses.dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached value.

    ``stored_at`` and ``expires_at`` are in the time base of the backend that returned
    the entry (monotonic seconds for :class:`InMemoryCacheBackend`, Unix time for
    :class:`SQLiteCacheBackend`); ``expires_at`` is ``None`` for an entry without TTL.
    """

    value: Any
    stored_at: float
    expires_at: float | None = None


@runtime_checkable
class CacheBackend(Protocol):
    """Storage for :class:`ResultCache`. Methods are synchronous and must be cheap."""

    def get(self, key: str) -> CacheEntry | None:
        """The entry stored under ``key``; ``None`` when missing or expired."""
        ...

    def set(self, key: str, value: Any, ttl: float | None) -> None:
        """Store ``value``, expiring after ``ttl`` seconds (``None``: never)."""
        ...

    def delete(self, key: str) -> bool:
        """Remove an entry; ``False`` when there was none."""
        ...

    def clear(self) -> None:
        """Remove every entry."""
        ...


@runtime_checkable
class AsyncCacheBackend(CacheBackend, Protocol):
    """A :class:`CacheBackend` whose storage is remote (a database server): it also has
    awaitable forms of :meth:`get` and :meth:`set`, which :class:`ResultCache` uses so
    the event loop never waits for the network."""

    async def get_async(self, key: str) -> CacheEntry | None:
        """:meth:`get`, off the event loop."""
        ...

    async def set_async(self, key: str, value: Any, ttl: float | None) -> None:
        """:meth:`set`, off the event loop."""
        ...


@runtime_checkable
class WallClock(Protocol):
    """A source of wall-clock time (seconds since the Unix epoch)."""

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        ...


def _is_remote(backend: CacheBackend) -> TypeGuard[AsyncCacheBackend]:
    """Whether ``backend`` has :class:`AsyncCacheBackend`'s awaitable methods (see
    ``rh_agents.core._validate.has_methods`` for why not ``isinstance``)."""
    return has_methods(backend, "get_async", "set_async")


class SystemWallClock:
    """The real wall clock: ``time.time``."""

    def time(self) -> float:
        return time.time()


SYSTEM_WALL_CLOCK = SystemWallClock()


def _expires_at(now: float, ttl: float | None) -> float | None:
    if ttl is None:
        return None
    if not is_finite_at_least(ttl, 0, strict=True) and not (
        isinstance(ttl, float) and ttl == float("inf")
    ):
        raise InvalidArgumentError(
            f"A cache TTL must be a positive number of seconds or None (never expires), "
            f"got {ttl!r}."
        )
    return now + ttl


class InMemoryCacheBackend:
    """A per-process :class:`CacheBackend` with LRU eviction and TTL.

    TTL is measured on ``clock.monotonic()``, so wall-clock changes do not affect it
    and tests can drive it with a fake clock. When more than ``max_entries`` entries are
    stored, the least recently used (read or written) is evicted. Values are stored as
    given, not copied: do not mutate a cached value. Thread-safe.

    Example:
        >>> cache = InMemoryCacheBackend(max_entries=100)
        >>> cache.set("k", {"answer": 42}, ttl=60.0)
        >>> cache.get("k").value
        {'answer': 42}
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK, max_entries: int = 10_000) -> None:
        if not is_int_at_least(max_entries, 1):
            raise InvalidArgumentError(
                f"max_entries must be a positive integer, got {max_entries!r}."
            )
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """The number of stored entries, expired ones not yet removed included."""
        with self._lock:
            return len(self._entries)

    def get(self, key: str) -> CacheEntry | None:
        now = self._clock.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires_at is not None and now >= entry.expires_at:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry

    def set(self, key: str, value: Any, ttl: float | None) -> None:
        now = self._clock.monotonic()
        entry = CacheEntry(value=value, stored_at=now, expires_at=_expires_at(now, ttl))
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._entries.pop(key, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_CACHE_APP = "rh_agents.cache"
_CACHE_SCHEMA_VERSION = 1
_CACHE_META = "rh_agents_meta"


class SQLiteCacheBackend:
    """A :class:`CacheBackend` in a SQLite file, so cached results survive restarts.

    Values are stored as JSON (converted with ``pydantic_core.to_jsonable_python``), so
    :meth:`get` returns the JSON form of what was stored: a pydantic model comes back as
    a dict and must be validated again by the caller. A value that cannot be converted
    raises :class:`~rh_agents.core.errors.ResultSerializationError`.

    TTL is measured on wall-clock time (``clock.time()``), because monotonic clocks
    restart with the process; moving the system clock changes when entries expire.
    Expired entries are removed when read, or all at once by :meth:`purge_expired`. A
    damaged entry is logged, removed and treated as a miss.

    Opening raises :class:`~rh_agents.core.errors.StateCorruptedError` for a file that is
    not an rh_agents cache (or is damaged) and
    :class:`~rh_agents.core.errors.SchemaVersionError` for another schema version; I/O
    failures raise :class:`~rh_agents.core.errors.StateError`. Thread-safe.

    Example:
        >>> with SQLiteCacheBackend(":memory:") as cache:
        ...     cache.set("k", [1, 2], ttl=None)
        ...     cache.get("k").value
        [1, 2]
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: WallClock = SYSTEM_WALL_CLOCK,
        timeout: float = 30.0,
    ) -> None:
        self._path = os.fspath(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path, timeout=timeout, check_same_thread=False, isolation_level=None
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._wrap(exc, "open the cache") from exc
        try:
            self._prepare(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self._wrap(exc, "open the cache") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._path!r})"

    def __enter__(self) -> SQLiteCacheBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connection. Closing twice is allowed."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _wrap(self, exc: Exception, action: str) -> StateError:
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return StateCorruptedError(
                f"The rh_agents cache at {self._path} is damaged or is not a SQLite database "
                f"({exc}), so rh_agents could not {action}. Delete the file (and its -wal "
                "and -shm files); it only holds cached results and will be rebuilt."
            )
        return StateError(
            f"Could not {action} at {self._path} ({exc}). Check that the disk is not full "
            "and that the file is writable, then retry."
        )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        not_ours = (
            f"The SQLite database at {self._path} is not an rh_agents cache. Point the "
            "cache at a new file."
        )
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {
                str(row[0])
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            }
            if not tables:
                conn.execute(f"CREATE TABLE {_CACHE_META} (key TEXT PRIMARY KEY, value TEXT)")
                conn.execute(
                    "CREATE TABLE cache_entries (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                    "stored_at REAL NOT NULL, expires_at REAL)"
                )
                conn.executemany(
                    f"INSERT INTO {_CACHE_META} (key, value) VALUES (?, ?)",
                    [("app", _CACHE_APP), ("schema_version", str(_CACHE_SCHEMA_VERSION))],
                )
                tables = {_CACHE_META, "cache_entries"}
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        if _CACHE_META not in tables or "cache_entries" not in tables:
            raise StateCorruptedError(not_ours)
        try:
            meta = dict(conn.execute(f"SELECT key, value FROM {_CACHE_META}").fetchall())
        except sqlite3.OperationalError as exc:
            raise StateCorruptedError(not_ours) from exc
        if meta.get("app") != _CACHE_APP:
            raise StateCorruptedError(not_ours)
        if str(meta.get("schema_version")) != str(_CACHE_SCHEMA_VERSION):
            raise SchemaVersionError(
                f"The rh_agents cache at {self._path} uses schema version "
                f"{meta.get('schema_version')!r}, but this release reads only version "
                f"{_CACHE_SCHEMA_VERSION}. Delete the file; it only holds cached results."
            )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")

    @contextlib.contextmanager
    def _connection(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise LifecycleError(
                    f"{self!r} is closed, so it cannot {action}. Open a new "
                    "SQLiteCacheBackend on the same path."
                )
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise self._wrap(exc, action) from exc

    def get(self, key: str) -> CacheEntry | None:
        now = self._clock.time()
        with self._connection("read a cache entry") as conn:
            row = conn.execute(
                "SELECT value, stored_at, expires_at FROM cache_entries WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            text, stored_at, expires_at = row
            if expires_at is not None and now >= expires_at:
                conn.execute("DELETE FROM cache_entries WHERE key = ?", (key,))
                return None
            try:
                value = json.loads(text)
            except (TypeError, ValueError) as exc:
                _log.warning(
                    "Dropping the damaged cache entry %s in %s (%s); it counts as a miss.",
                    key,
                    self._path,
                    exc,
                )
                conn.execute("DELETE FROM cache_entries WHERE key = ?", (key,))
                return None
        return CacheEntry(value=value, stored_at=float(stored_at), expires_at=expires_at)

    def set(self, key: str, value: Any, ttl: float | None) -> None:
        now = self._clock.time()
        expires_at = _expires_at(now, ttl)
        try:
            text = json.dumps(to_jsonable_python(value), separators=(",", ":"))
        except (PydanticSerializationError, TypeError, ValueError) as exc:
            raise ResultSerializationError(
                f"The value for cache key {key} cannot be stored because it is not "
                f"JSON-serializable ({exc}). Return JSON-like data or a pydantic model, or "
                "use an InMemoryCacheBackend."
            ) from exc
        with self._connection("write a cache entry") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO cache_entries (key, value, stored_at, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (key, text, now, expires_at),
            )

    def delete(self, key: str) -> bool:
        with self._connection("delete a cache entry") as conn:
            return conn.execute("DELETE FROM cache_entries WHERE key = ?", (key,)).rowcount > 0

    def clear(self) -> None:
        with self._connection("clear the cache") as conn:
            conn.execute("DELETE FROM cache_entries")

    def purge_expired(self) -> int:
        """Delete every expired entry and return how many were deleted."""
        now = self._clock.time()
        with self._connection("purge expired entries") as conn:
            return conn.execute(
                "DELETE FROM cache_entries WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (now,),
            ).rowcount


# --------------------------------------------------------------------------- single flight


@dataclasses.dataclass(frozen=True, slots=True)
class _Outcome:
    """How a leader's computation ended, shared with the callers waiting on it."""

    value: Any = None
    error: BaseException | None = None
    traceback: TracebackType | None = None
    handed_over: bool = False


_HANDED_OVER = _Outcome(handed_over=True)


class ResultCache:
    """Looks results up in a :class:`CacheBackend` and computes each missing one once.

    :meth:`get_or_compute` is single-flight: while one caller (the leader) computes a
    key, other callers of the same key wait for it instead of computing too, and are
    *coalesced*: they receive the leader's value with ``hit=True``, or the leader's
    exception. If the leader is cancelled, the waiting callers are not: one of them
    takes over and computes. Only values the computation marks with ``store=True`` are
    cached; every waiting caller still receives the leader's outcome.

    Use one ``ResultCache`` from one event loop. Backend reads run on the loop
    (backends are expected to be fast), except for an :class:`AsyncCacheBackend`, whose
    awaitable methods are used (concurrent callers of one key share one remote read); a
    read error propagates to every caller of that read, while a failure to store a
    computed value is logged and the value is still returned.

    Example:
        >>> async def compute() -> tuple[str, bool]:
        ...     return "result", True
        >>> cache = ResultCache(InMemoryCacheBackend())
        >>> asyncio.run(cache.get_or_compute("key", 60.0, compute))
        ('result', False)
    """

    def __init__(self, backend: CacheBackend) -> None:
        self._backend = backend
        # A remote backend is read and written with its awaitable methods.
        self._remote: AsyncCacheBackend | None = backend if _is_remote(backend) else None
        self._in_flight: dict[str, asyncio.Future[_Outcome]] = {}

    @property
    def backend(self) -> CacheBackend:
        """The backend entries are stored in."""
        return self._backend

    @property
    def in_flight(self) -> int:
        """How many keys are being computed right now."""
        return len(self._in_flight)

    async def get_or_compute(
        self,
        key: str,
        ttl: float | None,
        compute: Callable[[], Awaitable[tuple[Any, bool]]],
    ) -> tuple[Any, bool]:
        """Return ``(value, hit)`` for ``key``, computing the value on a miss.

        Args:
            key: the cache key, normally from :func:`make_cache_key`.
            ttl: seconds a stored value stays valid, or ``None`` for no expiry.
            compute: called (by at most one caller per key at a time) on a miss; returns
                ``(value, store)``, and the value is cached only when ``store`` is true
                (pass ``False`` for a failed result).

        Returns:
            ``(value, False)`` for the caller that computed it, ``(value, True)`` for a
            cache hit or a caller coalesced onto another caller's computation.

        Raises:
            InvalidArgumentError: ``ttl`` is not ``None`` or a positive number.
            Exception: whatever ``compute`` raised, in the leader and in every caller
                coalesced onto it.
        """
        _expires_at(0.0, ttl)  # reject a bad TTL before computing anything
        backend, remote = self._backend, self._remote
        # A remote read takes loop iterations and may return what the store held when it
        # began, so it is made by the leader, under its flight: a caller whose read began
        # before another caller's value was stored would otherwise compute it again.
        while True:
            if remote is None:
                entry = backend.get(key)
                if entry is not None:
                    return entry.value, True
            flight = self._in_flight.get(key)
            if flight is None:
                return await self._lead(key, ttl, compute)
            # shield: cancelling this waiter must not cancel the shared future.
            outcome = await asyncio.shield(flight)
            if outcome.handed_over:
                continue  # the leader was cancelled; the first waiter to get here leads
            if outcome.error is not None:
                raise outcome.error.with_traceback(outcome.traceback)
            return outcome.value, True

    async def _lead(
        self,
        key: str,
        ttl: float | None,
        compute: Callable[[], Awaitable[tuple[Any, bool]]],
    ) -> tuple[Any, bool]:
        flight: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = flight
        # Stays _HANDED_OVER on cancellation (or any BaseException), so a waiter takes over.
        # The future only ever gets a result, never an exception, so an outcome nobody
        # waits for cannot produce "Future exception was never retrieved".
        outcome = _HANDED_OVER
        try:
            try:
                remote = self._remote
                if remote is not None:
                    entry = await remote.get_async(key)
                    if entry is not None:
                        outcome = _Outcome(value=entry.value)
                        return entry.value, True
                value, store = await compute()
            except Exception as exc:
                outcome = _Outcome(error=exc, traceback=exc.__traceback__)
                raise
            if store:
                await self._store(key, value, ttl)
            outcome = _Outcome(value=value)
            return value, False
        finally:
            if self._in_flight.get(key) is flight:
                del self._in_flight[key]
            flight.set_result(outcome)

    async def _store(self, key: str, value: Any, ttl: float | None) -> None:
        remote = self._remote
        try:
            if remote is not None:
                await remote.set_async(key, value, ttl)
            else:
                self._backend.set(key, value, ttl)
        except Exception:
            _log.warning(
                "Could not store the computed result for cache key %s in %r; the result is "
                "returned but not cached.",
                key,
                self._backend,
                exc_info=True,
            )
