"""Tests of cache keys, cache backends and the single-flight ResultCache."""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import outputs_under_hash_seeds
from journal_faults import Forwarding
from pydantic import BaseModel

from rh_agents.core.cache import (
    AsyncCacheBackend,
    CacheBackend,
    CacheEntry,
    InMemoryCacheBackend,
    ResultCache,
    SQLiteCacheBackend,
    UncacheableInputError,
    make_cache_key,
)
from rh_agents.core.errors import (
    InvalidArgumentError,
    LifecycleError,
    ResultSerializationError,
    SchemaVersionError,
    StateCorruptedError,
    StateError,
)


class ManualClock:
    """A clock that moves only when told: monotonic time for memory, wall time for SQLite."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --------------------------------------------------------------------------- keys


def sql(path: Path, *statements: str) -> list[Any]:
    """Run ``statements`` on the file from another connection, as another program would
    (committed); the rows of the last one."""
    conn = sqlite3.connect(path)
    try:
        rows: list[Any] = []
        for statement in statements:
            rows = conn.execute(statement).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


class Query(BaseModel):
    text: str
    tags: set[str]


@dataclass
class Point:
    x: int
    y: int


def test_key_ignores_dict_key_order_and_set_order() -> None:
    a = make_cache_key("search", "1", {"q": "cats", "opts": {"n": 3, "lang": "en"}})
    b = make_cache_key("search", "1", {"opts": {"lang": "en", "n": 3}, "q": "cats"})
    assert a == b
    assert make_cache_key("a", "1", {3, 1, 2}) == make_cache_key("a", "1", {2, 3, 1})
    assert len(a) == 64 and int(a, 16) >= 0


def test_key_is_stable_across_releases() -> None:
    # Persistent caches outlive processes: the key of a given input must never change.
    # sha256 of the canonical JSON '["search","1.0.0",{"n":3,"q":"cats"}]'.
    key = make_cache_key("search", "1.0.0", {"q": "cats", "n": 3})
    assert key == "02e608ff4b69486ca0f34b868076b80156fcf0a5bbc22fa736a33df05cd9defe"


def test_key_is_stable_across_processes_with_different_hash_seeds() -> None:
    script = (
        "from rh_agents.core.cache import make_cache_key\n"
        "print(make_cache_key('a', '1', {'tags': {'x', 'y', 'z', 'w'}, 'f': frozenset('abc')}))"
    )
    keys = outputs_under_hash_seeds(script, ("1", "2", "3"))
    assert len(keys) == 1


def test_key_changes_with_name_version_and_input() -> None:
    base = make_cache_key("search", "1", {"q": "cats"})
    assert make_cache_key("search", "2", {"q": "cats"}) != base
    assert make_cache_key("lookup", "1", {"q": "cats"}) != base
    assert make_cache_key("search", "1", {"q": "dogs"}) != base
    assert make_cache_key("search", "1", 1) != make_cache_key("search", "1", "1")


def test_key_of_models_and_dataclasses_is_their_json_form() -> None:
    model = Query(text="x", tags={"b", "a"})
    assert make_cache_key("a", "1", model) == make_cache_key(
        "a", "1", {"text": "x", "tags": ["a", "b"]}
    )
    assert make_cache_key("a", "1", Point(1, 2)) == make_cache_key("a", "1", {"y": 2, "x": 1})


def test_unserializable_input_raises_a_clear_error() -> None:
    with pytest.raises(UncacheableInputError, match=r"actor 'a'.*not JSON-serializable") as info:
        make_cache_key("a", "1", {"handle": object()})
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, InvalidArgumentError)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(UncacheableInputError):
        make_cache_key("a", "1", cyclic)
    with pytest.raises(InvalidArgumentError):
        make_cache_key("", "1", 1)
    with pytest.raises(InvalidArgumentError):
        make_cache_key("a", 1, 1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- backends


def test_in_memory_ttl_follows_the_clock() -> None:
    clock = ManualClock()
    cache = InMemoryCacheBackend(clock=clock)
    assert isinstance(cache, CacheBackend)
    cache.set("short", "v", ttl=10.0)
    cache.set("forever", "w", ttl=None)
    clock.advance(9.999)
    entry = cache.get("short")
    assert entry is not None and entry.value == "v"
    assert entry.stored_at == 1_000.0 and entry.expires_at == 1_010.0
    clock.advance(0.001)
    assert cache.get("short") is None
    clock.advance(1e9)
    forever = cache.get("forever")
    assert forever is not None and forever.expires_at is None


def test_in_memory_evicts_least_recently_used() -> None:
    cache = InMemoryCacheBackend(clock=ManualClock(), max_entries=2)
    cache.set("a", 1, ttl=None)
    cache.set("b", 2, ttl=None)
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.set("c", 3, ttl=None)
    assert cache.get("b") is None
    assert [cache.get(k) is not None for k in ("a", "c")] == [True, True]
    assert len(cache) == 2


def test_in_memory_stores_none_delete_and_clear() -> None:
    cache = InMemoryCacheBackend(clock=ManualClock())
    cache.set("none", None, ttl=None)
    entry = cache.get("none")
    assert entry is not None and entry.value is None
    assert cache.delete("none") is True and cache.delete("none") is False
    cache.set("x", 1, ttl=None)
    cache.clear()
    assert cache.get("x") is None


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), True, "10"])
def test_invalid_ttl_is_rejected(ttl: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="positive number of seconds"):
        InMemoryCacheBackend().set("k", 1, ttl=ttl)


def test_invalid_max_entries_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="max_entries"):
        InMemoryCacheBackend(max_entries=0)


def test_sqlite_cache_survives_reopening_and_uses_wall_clock(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "results.db"
    clock = ManualClock(now=1_700_000_000.0)
    with SQLiteCacheBackend(path, clock=clock) as cache:
        assert isinstance(cache, CacheBackend)
        cache.set("k", {"answer": [42, "x"]}, ttl=60.0)
        cache.set("model", Query(text="t", tags={"a"}), ttl=None)
    clock.advance(59.0)
    with SQLiteCacheBackend(path, clock=clock) as cache:
        entry = cache.get("k")
        assert entry is not None and entry.value == {"answer": [42, "x"]}
        assert entry.expires_at == 1_700_000_060.0
        model = cache.get("model")
        assert model is not None and model.value == {"text": "t", "tags": ["a"]}
        clock.advance(1.0)
        assert cache.get("k") is None
        assert cache.delete("model") is True
        assert cache.get("model") is None


def test_sqlite_cache_purge_and_clear(tmp_path: Path) -> None:
    clock = ManualClock()
    with SQLiteCacheBackend(tmp_path / "c.db", clock=clock) as cache:
        cache.set("a", 1, ttl=1.0)
        cache.set("b", 2, ttl=100.0)
        cache.set("c", 3, ttl=None)
        clock.advance(5.0)
        assert cache.purge_expired() == 1
        cache.clear()
        assert cache.get("b") is None and cache.get("c") is None


def test_sqlite_history_file_is_not_a_cache(tmp_path: Path) -> None:
    from rh_agents.state_backends import SQLiteStateBackend

    path = tmp_path / "history.db"
    SQLiteStateBackend(path).close()
    with pytest.raises(StateCorruptedError, match="not an rh_agents cache"):
        SQLiteCacheBackend(path)


def test_sqlite_cache_closed_raises_lifecycle_error(tmp_path: Path) -> None:
    cache = SQLiteCacheBackend(tmp_path / "c.db")
    cache.close()
    with pytest.raises(LifecycleError):
        cache.get("k")


# --------------------------------------------------------------------------- ResultCache


class Counter:
    """A compute function that counts its calls and can be held open by the test."""

    def __init__(self, value: Any = "result", store: bool = True) -> None:
        self.calls = 0
        self.value = value
        self.store = store
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.error: BaseException | None = None

    async def __call__(self) -> tuple[Any, bool]:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.value, self.store


async def test_hit_after_a_stored_computation() -> None:
    cache = ResultCache(InMemoryCacheBackend())
    compute = Counter()
    compute.release.set()
    assert await cache.get_or_compute("k", None, compute) == ("result", False)
    assert await cache.get_or_compute("k", None, compute) == ("result", True)
    assert compute.calls == 1


async def test_hundred_concurrent_callers_share_one_computation() -> None:
    cache = ResultCache(InMemoryCacheBackend())
    compute = Counter()
    tasks = [asyncio.create_task(cache.get_or_compute("k", 60.0, compute)) for _ in range(100)]
    await compute.started.wait()
    assert cache.in_flight == 1
    compute.release.set()
    results = await asyncio.gather(*tasks)
    assert compute.calls == 1
    assert all(value == "result" for value, _ in results)
    assert sorted(hit for _, hit in results) == [False] + [True] * 99
    assert cache.in_flight == 0


async def test_different_keys_compute_independently() -> None:
    cache = ResultCache(InMemoryCacheBackend())
    first, second = Counter("one"), Counter("two")
    first.release.set()
    second.release.set()
    results = await asyncio.gather(
        cache.get_or_compute("a", None, first), cache.get_or_compute("b", None, second)
    )
    assert list(results) == [("one", False), ("two", False)]


async def test_unstored_result_is_shared_but_not_cached() -> None:
    cache = ResultCache(InMemoryCacheBackend())
    compute = Counter(value={"ok": False}, store=False)
    tasks = [asyncio.create_task(cache.get_or_compute("k", None, compute)) for _ in range(5)]
    await compute.started.wait()
    compute.release.set()
    results = await asyncio.gather(*tasks)
    assert compute.calls == 1
    assert all(value == {"ok": False} for value, _ in results)
    assert cache.backend.get("k") is None
    assert await cache.get_or_compute("k", None, compute) == ({"ok": False}, False)
    assert compute.calls == 2


async def test_leader_failure_reaches_every_follower_and_nothing_is_cached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = ResultCache(InMemoryCacheBackend())
    compute = Counter()
    compute.error = RuntimeError("upstream is down")
    tasks = [asyncio.create_task(cache.get_or_compute("k", None, compute)) for _ in range(10)]
    await compute.started.wait()
    compute.release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert compute.calls == 1
    assert all(isinstance(o, RuntimeError) and str(o) == "upstream is down" for o in outcomes)
    assert cache.backend.get("k") is None
    assert cache.in_flight == 0

    compute.error = None
    assert await cache.get_or_compute("k", None, compute) == ("result", False)
    assert compute.calls == 2
    gc.collect()
    assert "never retrieved" not in caplog.text


async def test_failure_without_followers_leaves_no_unretrieved_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = ResultCache(InMemoryCacheBackend())
    compute = Counter()
    compute.error = ValueError("bad input")
    compute.release.set()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with pytest.raises(ValueError, match="bad input"):
            await cache.get_or_compute("k", None, compute)
        gc.collect()
        await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text


async def test_cancelled_leader_hands_over_to_a_follower() -> None:
    cache = ResultCache(InMemoryCacheBackend())
    compute = Counter()
    leader = asyncio.create_task(cache.get_or_compute("k", None, compute))
    await compute.started.wait()
    followers = [asyncio.create_task(cache.get_or_compute("k", None, compute)) for _ in range(5)]
    await asyncio.sleep(0)  # followers are now waiting on the leader
    compute.started.clear()
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    await asyncio.wait_for(compute.started.wait(), timeout=5)  # a follower took over
    assert compute.calls == 2
    compute.release.set()
    results = await asyncio.wait_for(asyncio.gather(*followers), timeout=5)
    assert all(value == "result" for value, _ in results)
    assert sorted(hit for _, hit in results) == [False] + [True] * 4
    assert not any(task.cancelled() for task in followers)
    assert cache.in_flight == 0
    assert await cache.get_or_compute("k", None, compute) == ("result", True)


async def test_cancelled_follower_does_not_disturb_the_leader() -> None:
    cache = ResultCache(InMemoryCacheBackend())
    compute = Counter()
    leader = asyncio.create_task(cache.get_or_compute("k", None, compute))
    await compute.started.wait()
    follower = asyncio.create_task(cache.get_or_compute("k", None, compute))
    other = asyncio.create_task(cache.get_or_compute("k", None, compute))
    await asyncio.sleep(0)
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower
    compute.release.set()
    assert await leader == ("result", False)
    assert await other == ("result", True)
    assert compute.calls == 1


async def test_a_failure_to_store_is_logged_and_the_value_returned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SQLiteCacheBackend(tmp_path / "c.db") as backend:
        cache = ResultCache(backend)
        compute = Counter(value=object())
        compute.release.set()
        with caplog.at_level(logging.WARNING, logger="rh_agents.core.cache"):
            value, hit = await cache.get_or_compute("k", None, compute)
        assert value is compute.value and hit is False
        assert "returned but not cached" in caplog.text
        assert backend.get("k") is None


async def test_result_cache_with_sqlite_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    compute = Counter(value={"n": 1})
    compute.release.set()
    with SQLiteCacheBackend(path) as backend:
        assert await ResultCache(backend).get_or_compute("k", 3600.0, compute) == (
            {"n": 1},
            False,
        )
    with SQLiteCacheBackend(path) as backend:
        assert await ResultCache(backend).get_or_compute("k", 3600.0, compute) == ({"n": 1}, True)
    assert compute.calls == 1


async def test_bad_ttl_fails_before_computing() -> None:
    cache = ResultCache(InMemoryCacheBackend())
    compute = Counter()
    with pytest.raises(InvalidArgumentError):
        await cache.get_or_compute("k", -5.0, compute)
    assert compute.calls == 0


class SlowRemoteBackend(InMemoryCacheBackend):
    """An :class:`AsyncCacheBackend` like a database server: a read sees the data as it
    was when the read began and returns a few loop iterations later; a write commits one
    iteration after it is sent."""

    def __init__(self, read_turns: int = 3) -> None:
        super().__init__()
        self.read_turns = read_turns
        self.reads = 0

    async def get_async(self, key: str) -> Any:
        self.reads += 1
        seen = self.get(key)
        for _ in range(self.read_turns):
            await asyncio.sleep(0)
        return seen

    async def set_async(self, key: str, value: Any, ttl: float | None) -> None:
        await asyncio.sleep(0)
        self.set(key, value, ttl)


async def test_a_read_that_began_before_the_store_committed_does_not_compute_again() -> None:
    # Found by CI on a loaded machine (the Postgres cache computed twice): a caller whose
    # remote read began while the leader's value was being stored got a miss back after
    # the leader had finished, found no computation in flight and computed again.
    backend = SlowRemoteBackend()
    assert isinstance(backend, AsyncCacheBackend)
    cache = ResultCache(backend)
    compute = Counter()
    compute.release.set()
    callers = []
    for _ in range(12):  # callers arriving one loop iteration apart, across the store
        callers.append(asyncio.create_task(cache.get_or_compute("k", None, compute)))
        await asyncio.sleep(0)
    outcomes = await asyncio.gather(*callers)
    assert compute.calls == 1
    assert sorted(hit for _, hit in outcomes) == [False] + [True] * 11
    assert cache.in_flight == 0


async def test_a_forwarding_wrapper_around_a_remote_backend_is_used_as_remote() -> None:
    # Found by CI on Python 3.12 and 3.13, whose isinstance() with a runtime-checkable
    # protocol does not see members forwarded by __getattr__: the wrapper was taken for a
    # plain backend there, and the remote backend read on the event loop.
    backend = SlowRemoteBackend()
    cache = ResultCache(Forwarding(backend))
    compute = Counter()
    compute.release.set()
    assert await cache.get_or_compute("k", None, compute) == ("result", False)
    assert await cache.get_or_compute("k", None, compute) == ("result", True)
    assert backend.reads == 2  # both lookups went through get_async


async def test_a_remote_read_error_reaches_the_callers_waiting_on_it() -> None:
    class Down(SlowRemoteBackend):
        async def get_async(self, key: str) -> Any:
            self.reads += 1
            await asyncio.sleep(0)
            raise OSError("the cache server is down")

    backend = Down()
    cache = ResultCache(backend)
    compute = Counter()
    compute.release.set()
    callers = [asyncio.create_task(cache.get_or_compute("k", None, compute)) for _ in range(5)]
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(o, OSError) for o in outcomes)
    assert compute.calls == 0
    assert backend.reads == 1  # one read for the callers coalesced on it, not one each
    assert cache.in_flight == 0


async def test_callers_waiting_on_a_remote_hit_get_the_stored_value() -> None:
    backend = SlowRemoteBackend()
    backend.set("k", {"stored": True}, None)
    cache = ResultCache(backend)
    compute = Counter()
    callers = [asyncio.create_task(cache.get_or_compute("k", None, compute)) for _ in range(5)]
    outcomes = await asyncio.gather(*callers)
    assert outcomes == [({"stored": True}, True)] * 5
    assert compute.calls == 0 and backend.reads == 1


async def test_a_remote_store_gets_the_value_and_its_ttl() -> None:
    class Recording(SlowRemoteBackend):
        def __init__(self) -> None:
            super().__init__()
            self.stored: list[tuple[str, Any, float | None]] = []

        async def set_async(self, key: str, value: Any, ttl: float | None) -> None:
            self.stored.append((key, value, ttl))
            await super().set_async(key, value, ttl)

    backend = Recording()
    compute = Counter(value=[1, 2])
    compute.release.set()
    assert await ResultCache(backend).get_or_compute("k", 30.0, compute) == ([1, 2], False)
    assert backend.stored == [("k", [1, 2], 30.0)]


async def test_followers_get_the_leaders_error_with_its_traceback() -> None:
    cache = ResultCache(InMemoryCacheBackend())
    compute = Counter()
    compute.error = RuntimeError("upstream is down")
    leader = asyncio.create_task(cache.get_or_compute("k", None, compute))
    await compute.started.wait()
    follower = asyncio.create_task(cache.get_or_compute("k", None, compute))
    await asyncio.sleep(0)
    compute.release.set()
    for task in (leader, follower):
        with pytest.raises(RuntimeError, match="upstream is down") as caught:
            await task
        frames = [entry.name for entry in caught.traceback]
        assert "__call__" in frames  # where it was raised: the compute function


async def test_a_failure_to_store_names_the_key_and_backend_with_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Full(InMemoryCacheBackend):
        def set(self, key: str, value: Any, ttl: float | None) -> None:
            raise OSError("disk full")

        def __repr__(self) -> str:
            return "<Full>"

    compute = Counter(value="v")
    compute.release.set()
    with caplog.at_level(logging.WARNING, logger="rh_agents.core.cache"):
        assert await ResultCache(Full()).get_or_compute("the-key", None, compute) == ("v", False)
    (record,) = caplog.records
    assert record.getMessage() == (
        "Could not store the computed result for cache key the-key in <Full>; the result is "
        "returned but not cached."
    )
    assert record.exc_info is not None and str(record.exc_info[1]) == "disk full"


def test_the_in_memory_backend_takes_one_entry_and_evicts_the_oldest() -> None:
    backend = InMemoryCacheBackend(max_entries=1)
    backend.set("a", 1, None)
    backend.set("b", 2, None)
    assert backend.get("a") is None and backend.get("b") is not None
    with pytest.raises(
        InvalidArgumentError, match=r"^max_entries must be a positive integer, got 0\.$"
    ):
        InMemoryCacheBackend(max_entries=0)
    assert InMemoryCacheBackend()._max_entries == 10_000  # the documented default


# --------------------------------------------------------------------------- SQLite wording


def _unwritable(tmp_path: Path) -> Path:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    return blocker / "cache.db"


def test_sqlite_cache_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "cache.db"
    with SQLiteCacheBackend(path) as cache:
        cache.set("k", 1, None)
    assert path.exists()
    assert repr(SQLiteCacheBackend(":memory:")) == "SQLiteCacheBackend(':memory:')"
    assert not (Path.cwd() / ":memory:").exists()


def test_sqlite_cache_that_cannot_be_opened_says_what_to_check(tmp_path: Path) -> None:
    path = _unwritable(tmp_path)
    with pytest.raises(StateError) as caught:
        SQLiteCacheBackend(path)
    message = str(caught.value)
    assert message.startswith(f"Could not open the cache at {path} ([Errno 17] File exists")
    assert message.endswith(
        "Check that the disk is not full and that the file is writable, then retry."
    )
    assert caught.value.__cause__ is not None


def test_sqlite_cache_on_a_damaged_file_says_to_delete_it(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x13" * 5000)
    with pytest.raises(StateCorruptedError) as caught:
        SQLiteCacheBackend(garbage)
    message = str(caught.value)
    assert message.startswith(
        f"The rh_agents cache at {garbage} is damaged or is not a SQLite database ("
    )
    assert message.endswith(
        "so rh_agents could not open the cache. Delete the file (and its -wal and -shm "
        "files); it only holds cached results and will be rebuilt."
    )


@pytest.mark.parametrize(
    "tables",
    [
        ["CREATE TABLE t (x)"],
        ["CREATE TABLE rh_agents_meta (key TEXT PRIMARY KEY, value TEXT)"],
        ["CREATE TABLE cache_entries (key TEXT)"],
        [
            "CREATE TABLE rh_agents_meta (key TEXT PRIMARY KEY, value TEXT)",
            "CREATE TABLE cache_entries (key TEXT)",
            "INSERT INTO rh_agents_meta VALUES ('app', 'something else')",
        ],
        [
            "CREATE TABLE rh_agents_meta (k TEXT)",
            "CREATE TABLE cache_entries (key TEXT)",
        ],
    ],
)
def test_a_database_that_is_not_an_rh_agents_cache_is_refused(
    tmp_path: Path, tables: list[str]
) -> None:
    path = tmp_path / "other.db"
    sql(path, *tables)
    with pytest.raises(StateCorruptedError) as caught:
        SQLiteCacheBackend(path)
    assert str(caught.value) == (
        f"The SQLite database at {path} is not an rh_agents cache. Point the cache at a new file."
    )


def test_another_schema_version_says_to_delete_the_file(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    SQLiteCacheBackend(path).close()
    sql(path, "UPDATE rh_agents_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError) as caught:
        SQLiteCacheBackend(path)
    assert str(caught.value) == (
        f"The rh_agents cache at {path} uses schema version '99', but this release reads "
        "only version 1. Delete the file; it only holds cached results."
    )


def test_sqlite_cache_is_in_wal_mode_and_usable_from_other_threads(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with SQLiteCacheBackend(path) as cache:
        cache.set("k", {"x": 1}, None)
        box: list[Any] = []
        thread = threading.Thread(target=lambda: box.append(cache.get("k")))
        thread.start()
        thread.join()
        assert box[0].value == {"x": 1}
    assert sql(path, "PRAGMA journal_mode") == [("wal",)]


def test_a_damaged_sqlite_entry_is_logged_with_its_key_and_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.db"
    with SQLiteCacheBackend(path, clock=ManualClock(now=50.0)) as cache:
        cache.set("k", [1], ttl=None)
        entry = cache.get("k")
        assert entry == CacheEntry(value=[1], stored_at=50.0, expires_at=None)
        assert type(entry.stored_at) is float
        sql(path, "UPDATE cache_entries SET value = '[1,'")
        with caplog.at_level(logging.WARNING, logger="rh_agents.core.cache"):
            assert cache.get("k") is None
        (record,) = caplog.records
        assert record.getMessage().startswith(f"Dropping the damaged cache entry k in {path} (")
        assert record.getMessage().endswith(
            "(Expecting value: line 1 column 4 (char 3)); it counts as a miss."
        )
        assert sql(path, "SELECT COUNT(*) FROM cache_entries") == [(0,)]


def test_sqlite_cache_values_are_compact_json(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with SQLiteCacheBackend(path) as cache:
        cache.set("k", {"a": [1, 2]}, None)
    assert sql(path, "SELECT value FROM cache_entries") == [('{"a":[1,2]}',)]


def test_a_value_the_sqlite_cache_cannot_store_says_what_to_do(tmp_path: Path) -> None:
    with SQLiteCacheBackend(tmp_path / "c.db") as cache:
        with pytest.raises(ResultSerializationError) as caught:
            cache.set("k", object(), ttl=None)
        assert cache.get("k") is None  # nothing was stored
    message = str(caught.value)
    assert message.startswith(
        "The value for cache key k cannot be stored because it is not JSON-serializable ("
    )
    assert message.endswith(
        "Return JSON-like data or a pydantic model, or use an InMemoryCacheBackend."
    )


@pytest.mark.parametrize(
    ("call", "action"),
    [
        (lambda c: c.get("k"), "read a cache entry"),
        (lambda c: c.set("k", 1, None), "write a cache entry"),
        (lambda c: c.delete("k"), "delete a cache entry"),
        (lambda c: c.clear(), "clear the cache"),
        (lambda c: c.purge_expired(), "purge expired entries"),
    ],
)
def test_every_operation_names_itself_when_it_fails(tmp_path: Path, call: Any, action: str) -> None:
    path = tmp_path / "c.db"
    cache = SQLiteCacheBackend(path)
    cache.close()
    with pytest.raises(LifecycleError) as closed:
        call(cache)
    assert str(closed.value) == (
        f"SQLiteCacheBackend({str(path)!r}) is closed, so it cannot {action}. Open a new "
        "SQLiteCacheBackend on the same path."
    )
    cache = SQLiteCacheBackend(path)
    sql(path, "DROP TABLE cache_entries")  # what another program might do to the file
    try:
        with pytest.raises(StateError) as failed:
            call(cache)
    finally:
        cache.close()
    assert str(failed.value).startswith(f"Could not {action} at {path} (no such table")
    cache.close()  # closing twice is allowed


def test_a_damaged_page_is_reported_as_damage_when_read(tmp_path: Path) -> None:
    # SQLITE_CORRUPT (not SQLITE_NOTADB): the file is a database with damaged pages.
    path = tmp_path / "c.db"
    with SQLiteCacheBackend(path) as cache:
        for index in range(300):
            cache.set(f"k{index}", "x" * 500, None)
    sql(path, "PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as file:
        file.seek(4096 * 3)
        file.write(b"\x07" * 4096 * 4)
    with SQLiteCacheBackend(path) as cache:
        with pytest.raises(StateCorruptedError) as caught:
            for index in range(300):
                cache.get(f"k{index}")
    assert str(caught.value) == (
        f"The rh_agents cache at {path} is damaged or is not a SQLite database (database "
        "disk image is malformed), so rh_agents could not read a cache entry. Delete the "
        "file (and its -wal and -shm files); it only holds cached results and will be "
        "rebuilt."
    )


def test_deleting_a_missing_sqlite_entry_says_so(tmp_path: Path) -> None:
    with SQLiteCacheBackend(tmp_path / "c.db") as cache:
        assert cache.delete("missing") is False
        cache.set("k", 1, None)
        assert cache.delete("k") is True
        assert cache.delete("k") is False
