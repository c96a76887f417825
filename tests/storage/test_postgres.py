"""The PostgreSQL backend against a real server (the private cluster of tests/conftest.py).

The contract every backend keeps runs here too (``backend`` in conftest.py lists
Postgres); these are the things only a database server brings: a schema created on first
use and migrated forward, leases between coordinators on different hosts judged by the
server's clock, many groups writing at once, a connection cut inside a commit, the server
restarted under a running run, and a server that is not there.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from ci_env import require_module
from postgres_server import PostgresCluster

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.cache import AsyncCacheBackend, ResultCache
from rh_agents.core.errors import (
    ArtifactNotFoundError,
    InvalidArgumentError,
    ResultSerializationError,
    SchemaVersionError,
    StateCorruptedError,
    StateLockedError,
    StateStorageError,
)
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.state_recovery import StateMetadata, StateSnapshot
from rh_agents.core.types import ExecutionStatus
from rh_agents.state_backends import PostgresCacheBackend, PostgresStateBackend

psycopg = require_module("psycopg", "postgres")

S = ExecutionStatus


@pytest.fixture
def schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cluster(postgres_cluster: PostgresCluster) -> PostgresCluster:
    return postgres_cluster


def sql(cluster: PostgresCluster, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with cluster.admin() as conn:
        cursor = conn.execute(statement, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


class Program:
    """A pipeline of ``items`` tool calls in a group; counts handler calls; item ``hold``
    waits for ``release``."""

    def __init__(self, items: int = 4, hold: int | None = None) -> None:
        self.calls: Counter[int] = Counter()
        self.held = asyncio.Event()
        self.release = asyncio.Event()

        async def step(data: int, extra: Any, state: ExecutionState) -> int:
            self.calls[data] += 1
            if data == hold:
                self.held.set()
                await self.release.wait()
            return data * 2

        tool = Tool(name="step", handler=step)

        async def pipeline(data: Any, extra: Any, state: ExecutionState) -> list[int]:
            async with state.parallel(max_workers=items, name="steps") as group:
                for index in range(items):
                    group.add(ExecutionEvent(actor=tool)(index, {}, state))
                return [int(r.result) for r in await group.gather()]

        self.agent = Agent(name="pipeline", handler=pipeline)

    async def run(self, state: ExecutionState) -> list[int]:
        result = await ExecutionEvent(actor=self.agent)(None, {}, state)
        if not result.ok:
            raise result.exception or RuntimeError(result.error_message)
        return list(result.result)


def completed(records: list[dict[str, Any]]) -> set[str]:
    return {r["address"] for r in records if r["status"] == "completed"}


def others_completed(state: ExecutionState, count: int = 3) -> asyncio.Event:
    """Set once ``count`` step calls have published COMPLETED. A COMPLETED record is
    committed before it is published, and so is everything queued before it: waiting
    for this (after the held item started) leaves no record of the others in flight,
    so what the journal holds then is what a test may compare with later. (Read
    earlier, the journal misses the records still on their way: found by CI on 3.12
    and 3.13, where those committed right after the read.)"""
    done = asyncio.Event()
    finished: list[str] = []

    def seen(event: ExecutionEvent[Any]) -> None:
        if event.actor_name == "step" and event.execution_status is ExecutionStatus.COMPLETED:
            finished.append(event.address)
            if len(finished) == count:
                done.set()

    state.event_bus.subscribe(seen)
    return done


# ------------------------------------------------------------------- the schema


def test_the_schema_is_created_on_first_use_with_its_version(
    cluster: PostgresCluster, schema: str
) -> None:
    with PostgresStateBackend(cluster.dsn(), schema=schema) as backend:
        backend.append_event("run-1", {"seq": 1})
    tables = sql(
        cluster,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
        "ORDER BY table_name",
        schema,
    )
    assert [t[0] for t in tables] == [
        "artifacts",
        "cache_entries",
        "events",
        "journals",
        "leases",
        "schema_migrations",
        "states",
    ]
    assert sql(cluster, f"SELECT version FROM {schema}.schema_migrations") == [(1,)]
    # opening again migrates nothing and keeps the history
    with PostgresStateBackend(cluster.dsn(), schema=schema) as again:
        assert again.load_events("run-1") == [{"seq": 1}]
    assert sql(cluster, f"SELECT count(*) FROM {schema}.schema_migrations") == [(1,)]


def test_coordinators_opening_a_new_history_at_once_create_it_once(
    cluster: PostgresCluster, schema: str
) -> None:
    opened: list[PostgresStateBackend] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_one() -> None:
        start.wait()
        try:
            opened.append(PostgresStateBackend(cluster.dsn(), schema=schema))
        except BaseException as exc:  # pragma: no cover - the failure reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for backend in opened:
        backend.close()
    assert errors == [] and len(opened) == 6
    assert sql(cluster, f"SELECT version FROM {schema}.schema_migrations") == [(1,)]


def test_a_schema_of_a_newer_release_is_refused(cluster: PostgresCluster, schema: str) -> None:
    PostgresStateBackend(cluster.dsn(), schema=schema).close()
    sql(cluster, f"INSERT INTO {schema}.schema_migrations (version) VALUES (7)")
    with pytest.raises(SchemaVersionError) as info:
        PostgresStateBackend(cluster.dsn(), schema=schema)
    assert f"The rh_agents history in schema '{schema}' of PostgreSQL database 'postgres'" in str(
        info.value
    )
    assert "uses storage schema version 7, but this release reads versions up to 1" in str(
        info.value
    )
    assert "Upgrade rh_agents" in str(info.value)


def test_a_schema_holding_other_tables_is_not_a_history(
    cluster: PostgresCluster, schema: str
) -> None:
    sql(cluster, f"CREATE SCHEMA {schema}")
    sql(cluster, f"CREATE TABLE {schema}.invoices (id int)")
    with pytest.raises(StateCorruptedError) as info:
        PostgresStateBackend(cluster.dsn(), schema=schema)
    assert f"The PostgreSQL schema '{schema}' of PostgreSQL database 'postgres' at 127.0.0.1:" in (
        str(info.value)
    )
    assert "is not an rh_agents history (it holds the tables invoices)" in str(info.value)
    assert sql(cluster, f"SELECT count(*) FROM {schema}.invoices") == [(0,)]  # untouched


@pytest.mark.parametrize(
    "name", ["rh agents", "x; DROP TABLE y", '"quoted"', "1abc", "", "a" * 64, "naïve"]
)
def test_a_schema_name_must_be_an_identifier(cluster: PostgresCluster, name: str) -> None:
    with pytest.raises(InvalidArgumentError, match="must be an identifier of letters, digits"):
        PostgresStateBackend(cluster.dsn(), schema=name)


def test_a_schema_name_keeps_its_case(cluster: PostgresCluster) -> None:
    name = f"Mixed_{uuid.uuid4().hex[:8]}"
    with PostgresStateBackend(cluster.dsn(), schema=name) as backend:
        backend.append_event("run-1", {"seq": 1})
    assert sql(
        cluster, "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", name
    ) == [(1,)]


# --------------------------------------------------------------- a missing server


def test_a_server_that_is_not_there_is_a_clear_error_in_bounded_time() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    with pytest.raises(StateStorageError) as info:
        PostgresStateBackend(f"postgresql://someone:secret@127.0.0.1:{port}/agents", timeout=1)
    message = str(info.value)
    assert (
        f"Could not connect to the PostgreSQL database 'agents' at 127.0.0.1:{port} within 1 s"
        in (message)
    )
    assert "Check that the server is running and reachable" in message
    assert "secret" not in message


def test_the_server_s_reason_is_in_the_error(cluster: PostgresCluster) -> None:
    dsn = cluster.dsn("no_such_database")
    with pytest.raises(StateStorageError) as info:
        PostgresStateBackend(dsn, timeout=5)
    message = str(info.value)
    assert "Could not connect to the PostgreSQL database 'no_such_database' at 127.0.0.1:" in (
        message
    )
    assert 'database "no_such_database" does not exist' in message


@pytest.mark.parametrize(
    ("option", "value", "wording"),
    [
        ("pool_size", 1, "pool_size must be an integer of at least 2"),
        ("timeout", 0, "timeout must be a positive number of seconds"),
        ("lease_timeout", -1, "lease_timeout must be a positive number of seconds"),
    ],
)
def test_bad_options_are_refused(option: str, value: Any, wording: str) -> None:
    with pytest.raises(InvalidArgumentError, match=wording):
        PostgresStateBackend("postgresql://127.0.0.1:1/x", **{option: value})


# ------------------------------------------------------- leases between hosts


def plant_lease(cluster: PostgresCluster, schema: str, host: str, pid: int, silent: float) -> None:
    sql(
        cluster,
        f"INSERT INTO {schema}.leases (state_id, owner, host, pid, process_start, since, "
        "heartbeat) VALUES ('run-1', 'other', %s, %s, NULL, '2030-01-02T03:04:05+00:00', "
        "extract(epoch from clock_timestamp()) - %s)",
        host,
        pid,
        silent,
    )


def recorded_run(cluster: PostgresCluster, schema: str) -> None:
    with PostgresStateBackend(cluster.dsn(), schema=schema) as backend:
        state = ExecutionState(state_id="run-1", state_backend=backend)
        assert asyncio.run(Program().run(state)) == [0, 2, 4, 6]


def test_a_live_coordinator_on_another_host_keeps_its_lease(
    cluster: PostgresCluster, schema: str
) -> None:
    recorded_run(cluster, schema)
    plant_lease(cluster, schema, "coordinator-b", 4242, silent=1)
    program = Program()
    with PostgresStateBackend(cluster.dsn(), schema=schema, lease_timeout=30) as backend:
        state = ExecutionState.load_from_state_id("run-1", backend)
        with pytest.raises(StateLockedError) as info:
            asyncio.run(ExecutionEvent(actor=program.agent, tag="more")(None, {}, state))
    message = str(info.value)
    assert "State 'run-1' is being recorded by another writer" in message
    assert "(host coordinator-b, pid 4242, since 2030-01-02 03:04:05 UTC)" in message
    assert "after 30 s without a heartbeat from another host" in message
    assert info.value.holder.host == "coordinator-b"
    assert program.calls == Counter()


def test_a_silent_coordinator_on_another_host_is_taken_over_by_the_server_clock(
    cluster: PostgresCluster, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorded_run(cluster, schema)
    plant_lease(cluster, schema, "coordinator-b", 4242, silent=600)
    program = Program()
    with caplog.at_level(logging.WARNING, logger="rh_agents.state_backends"):
        with PostgresStateBackend(cluster.dsn(), schema=schema, lease_timeout=30) as backend:
            state = ExecutionState.load_from_state_id("run-1", backend)
            more = asyncio.run(ExecutionEvent(actor=program.agent, tag="more")(None, {}, state))
    assert more.ok and more.result == [0, 2, 4, 6]
    assert program.calls == Counter({0: 1, 1: 1, 2: 1, 3: 1})  # new calls, recorded
    assert "Taking over the lease of state 'run-1' from host coordinator-b, pid 4242" in (
        caplog.text
    )
    assert "no heartbeat for 600 s" in caplog.text
    assert sql(cluster, f"SELECT count(*) FROM {schema}.leases") == [(0,)]  # given back


async def test_a_writer_that_lost_its_lease_commits_nothing_more(
    cluster: PostgresCluster, schema: str
) -> None:
    backend = PostgresStateBackend(cluster.dsn(), schema=schema)
    program = Program(hold=1)
    state = ExecutionState(state_id="run-1", state_backend=backend)
    others_done = others_completed(state)
    running = asyncio.create_task(program.run(state))
    await program.held.wait()
    await others_done.wait()
    before = await asyncio.to_thread(backend.journal_length, "run-1")
    assert before == 9  # pipeline, group and 4 items STARTED, 3 items COMPLETED
    # another coordinator took the lease over (its heartbeat had expired)
    await asyncio.to_thread(
        sql,
        cluster,
        f"UPDATE {schema}.leases SET owner = 'b', host = 'coordinator-b', pid = 7 "
        "WHERE state_id = 'run-1'",
    )
    program.release.set()
    with pytest.raises(StateLockedError) as info:
        await running
    assert (
        "This run lost the lease of state 'run-1' to another writer (host coordinator-b, pid 7"
        in (str(info.value))
    )
    assert await asyncio.to_thread(backend.journal_length, "run-1") == before
    await asyncio.to_thread(backend.close)


# --------------------------------------------------------- many groups at once


async def test_fifty_groups_write_to_one_database_at_once(
    cluster: PostgresCluster, schema: str
) -> None:
    # two coordinators (backends, each with its pool and writer), 25 runs each
    coordinators = [PostgresStateBackend(cluster.dsn(), schema=schema) for _ in range(2)]
    items = 20

    async def one(index: int) -> tuple[list[int], ExecutionState]:
        backend = coordinators[index % 2]
        state = ExecutionState(state_id=f"run-{index:02d}", state_backend=backend)
        program = Program(items=items)
        return await program.run(state), state

    try:
        outcomes = await asyncio.gather(*(one(i) for i in range(50)))
    finally:
        for backend in coordinators:
            await asyncio.to_thread(backend.close)
    assert all(result == [2 * i for i in range(items)] for result, _ in outcomes)
    commits = sum(state.recorder.statistics().commits for _, state in outcomes)
    records = sum(state.recorder.statistics().records for _, state in outcomes)
    assert records == 50 * (4 + 2 * items)
    assert commits < records / 2  # completions shared transactions
    with PostgresStateBackend(cluster.dsn(), schema=schema) as backend:
        assert backend.list_journals() == [f"run-{i:02d}" for i in range(50)]
        for i in range(50):
            events = backend.load_events(f"run-{i:02d}")
            assert [r["seq"] for r in events] == list(range(1, 4 + 2 * items + 1))
            assert len(completed(events)) == items + 2
    assert sql(cluster, f"SELECT count(*) FROM {schema}.leases") == [(0,)]


# ----------------------------------------------- connections cut, server restarted


def until_the_writer_waits_on_a_lock_sync(cluster: PostgresCluster) -> int:
    """The server pid of the writer's connection once it waits for the journal row lock
    inside its commit (a condition polled, not a timing)."""
    with cluster.admin() as conn:
        while True:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'UPDATE journals%%'"
            ).fetchone()
            if row is not None:
                return int(row[0])
            time.sleep(0.01)


async def until_the_writer_waits_on_a_lock(cluster: PostgresCluster) -> int:
    return await asyncio.to_thread(until_the_writer_waits_on_a_lock_sync, cluster)


async def test_a_connection_cut_inside_a_commit_stops_the_run_and_half_writes_nothing(
    cluster: PostgresCluster, schema: str
) -> None:
    backend = PostgresStateBackend(cluster.dsn(), schema=schema)
    program = Program(hold=2)
    state = ExecutionState(state_id="run-1", state_backend=backend)
    others_done = others_completed(state)
    running = asyncio.create_task(program.run(state))
    await program.held.wait()
    await others_done.wait()
    before = await asyncio.to_thread(backend.load_events, "run-1")

    # Another session locks the run's journal row: the writer's next commit stops inside
    # its transaction (lease renewed, high-water mark waiting); its connection is cut there.
    blocker = await asyncio.to_thread(cluster.admin)
    await asyncio.to_thread(blocker.execute, "BEGIN")
    await asyncio.to_thread(
        blocker.execute, f"SELECT 1 FROM {schema}.journals WHERE state_id = 'run-1' FOR UPDATE"
    )
    program.release.set()
    pid = await until_the_writer_waits_on_a_lock(cluster)
    await asyncio.to_thread(sql, cluster, "SELECT pg_terminate_backend(%s)", pid)
    with pytest.raises(StateStorageError) as info:
        await running
    await asyncio.to_thread(blocker.execute, "ROLLBACK")
    await asyncio.to_thread(blocker.close)
    message = str(info.value)
    assert "The connection to the PostgreSQL database 'postgres' at 127.0.0.1:" in message
    assert "failed, so this process could not append events" in message
    assert "terminating connection due to administrator command" in message
    assert "the transaction in flight was rolled back by the server" in message
    await asyncio.to_thread(backend.close)

    with PostgresStateBackend(cluster.dsn(), schema=schema) as fresh:
        after = fresh.load_events("run-1")  # consistent: checked against the mark
        assert after == before  # the cut commit left nothing
        resumed = ExecutionState.load_from_state_id("run-1", fresh)
        again = Program()
        assert await again.run(resumed) == [0, 2, 4, 6]
    assert again.calls == Counter({2: 1})  # only the call in flight ran again


async def test_a_server_restart_between_commits_does_not_stop_the_run(
    cluster: PostgresCluster, schema: str
) -> None:
    backend = PostgresStateBackend(cluster.dsn(), schema=schema)
    program = Program(hold=3)
    state = ExecutionState(state_id="run-1", state_backend=backend)
    others_done = others_completed(state)
    running = asyncio.create_task(program.run(state))
    await program.held.wait()
    await others_done.wait()  # items 0-2 committed
    await asyncio.to_thread(cluster.restart)  # every connection is cut
    program.release.set()
    assert await running == [0, 2, 4, 6]  # the writer reconnected at its next BEGIN
    assert program.calls == Counter({0: 1, 1: 1, 2: 1, 3: 1})
    events = await asyncio.to_thread(backend.load_events, "run-1")
    assert [r["seq"] for r in events] == list(range(1, 13))
    await asyncio.to_thread(backend.close)


async def test_a_server_restarted_inside_a_commit_stops_the_run_and_it_resumes(
    cluster: PostgresCluster, schema: str
) -> None:
    backend = PostgresStateBackend(cluster.dsn(), schema=schema)
    program = Program(hold=1)
    state = ExecutionState(state_id="run-1", state_backend=backend)
    others_done = others_completed(state)
    running = asyncio.create_task(program.run(state))
    await program.held.wait()
    await others_done.wait()  # items 0, 2 and 3 committed: the resume does not rerun them
    blocker = await asyncio.to_thread(cluster.admin)
    await asyncio.to_thread(blocker.execute, "BEGIN")
    await asyncio.to_thread(
        blocker.execute, f"SELECT 1 FROM {schema}.journals WHERE state_id = 'run-1' FOR UPDATE"
    )
    program.release.set()
    await until_the_writer_waits_on_a_lock(cluster)
    await asyncio.to_thread(cluster.restart)
    with pytest.raises(StateStorageError, match="The connection to the PostgreSQL database"):
        await running
    with pytest.raises(psycopg.OperationalError):
        blocker.execute("ROLLBACK")  # cut by the restart too
    blocker.close()
    await asyncio.to_thread(backend.close)

    with PostgresStateBackend(cluster.dsn(), schema=schema) as fresh:
        resumed = ExecutionState.load_from_state_id("run-1", fresh)
        again = Program()
        assert await again.run(resumed) == [0, 2, 4, 6]
        history = fresh.load_events("run-1")
    assert again.calls == Counter({1: 1})
    assert [r["seq"] for r in history] == list(range(1, len(history) + 1))
    final = [r for r in history if r["address"] == "pipeline"]
    assert final[-1]["status"] == S.COMPLETED.value


# --------------------------------------------------------------------- artifacts


def test_artifacts_keep_their_kind(cluster: PostgresCluster, schema: str) -> None:
    with PostgresStateBackend(cluster.dsn(), schema=schema) as backend:
        artifacts = backend.artifacts
        assert artifacts.save_artifact("blob", b"\x00\xff") == "artifact:blob"
        artifacts.save_artifact("text", "héllo")
        artifacts.save_artifact("data", {"a": [1, 2.5, None]})
        assert artifacts.load_artifact("artifact:blob") == b"\x00\xff"
        assert artifacts.load_artifact("text") == "héllo"
        assert artifacts.load_artifact("data") == {"a": [1, 2.5, None]}
        artifacts.save_artifact("text", b"now bytes")
        assert artifacts.load_artifact("text") == b"now bytes"
        assert artifacts.list_artifacts() == ["blob", "data", "text"]
        assert artifacts.exists("artifact:data") and not artifacts.exists("nothing")
        assert artifacts.delete_artifact("data") and not artifacts.delete_artifact("data")
        with pytest.raises(ArtifactNotFoundError, match="No artifact with id 'data' exists"):
            artifacts.load_artifact("data")
        with pytest.raises(
            InvalidArgumentError, match=r"The artifact id '\.\./x' cannot be used as a file name"
        ):
            artifacts.save_artifact("../x", "x")
        with pytest.raises(InvalidArgumentError, match="neither bytes, str nor JSON"):
            artifacts.save_artifact("obj", object())


# ------------------------------------------------------------ the result cache


class FakeWallClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


async def test_the_result_cache_is_shared_by_coordinators_and_computes_once(
    cluster: PostgresCluster, schema: str
) -> None:
    first = PostgresStateBackend(cluster.dsn(), schema=schema)
    second = PostgresStateBackend(cluster.dsn(), schema=schema)
    computed = 0
    gate, started = asyncio.Event(), asyncio.Event()

    async def compute() -> tuple[Any, bool]:
        nonlocal computed
        computed += 1
        started.set()
        await gate.wait()
        return {"answer": 42}, True

    cache = ResultCache(PostgresCacheBackend(first))
    assert isinstance(cache.backend, AsyncCacheBackend)
    callers = [asyncio.create_task(cache.get_or_compute("k", None, compute)) for _ in range(20)]
    await started.wait()  # the leader computes; the others wait for it or find it stored
    gate.set()
    outcomes = await asyncio.gather(*callers)
    assert computed == 1  # single flight
    assert sorted(hit for _, hit in outcomes) == [False] + [True] * 19
    assert all(value == {"answer": 42} for value, _ in outcomes)

    # another coordinator finds it stored
    other = ResultCache(PostgresCacheBackend(second))
    assert await other.get_or_compute("k", None, compute) == ({"answer": 42}, True)
    assert computed == 1
    for backend in (first, second):
        await asyncio.to_thread(backend.close)


def test_cache_entries_expire_and_damage_counts_as_a_miss(
    cluster: PostgresCluster, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeWallClock()
    with PostgresStateBackend(cluster.dsn(), schema=schema) as backend:
        cache = PostgresCacheBackend(backend, clock=clock)
        cache.set("short", [1, 2], ttl=10)
        cache.set("forever", "x", ttl=None)
        entry = cache.get("short")
        assert entry is not None and entry.value == [1, 2]
        assert (entry.stored_at, entry.expires_at) == (clock.now, clock.now + 10)
        clock.now += 10
        assert cache.get("short") is None
        assert cache.get("forever") is not None and cache.purge_expired() == 0
        cache.set("short", 1, ttl=5)
        clock.now += 6
        assert cache.purge_expired() == 1
        # the server's clock, when no clock is given
        served = PostgresCacheBackend(backend)
        served.set("live", True, ttl=3600)
        live = served.get("live")
        assert live is not None and live.value is True and live.expires_at is not None
        assert live.expires_at - live.stored_at == pytest.approx(3600)
        sql(cluster, f"UPDATE {schema}.cache_entries SET value = '{{oops' WHERE key = 'live'")
        with caplog.at_level(logging.WARNING, logger="rh_agents.state_backends"):
            assert served.get("live") is None
        assert "Dropping the damaged cache entry live" in caplog.text
        with pytest.raises(ResultSerializationError, match="is not JSON-serializable"):
            served.set("bad", object(), ttl=None)
        assert served.delete("forever") and not served.delete("forever")
        served.clear()
        assert served.get("bad") is None and cache.get("forever") is None


def test_text_postgres_refuses_is_stored_or_refused_clearly(
    cluster: PostgresCluster, schema: str
) -> None:
    with PostgresStateBackend(cluster.dsn(), schema=schema) as backend:
        # a pipeline name with a NUL character is stored and filtered on exactly
        odd = StateSnapshot(state_id="run-1", metadata=StateMetadata(pipeline_name="a\x00b"))
        backend.save_state(odd)
        backend.save_state(
            StateSnapshot(state_id="run-2", metadata=StateMetadata(pipeline_name="a"))
        )
        assert backend.list_states(pipeline_name="a\x00b") == ["run-1"]
        assert backend.list_states(pipeline_name="a") == ["run-2"]
        assert backend.load_state("run-1") == odd
        backend.append_event("run-1", {"text": "nul \x00 and \ud800"})
        assert backend.load_events("run-1") == [{"text": "nul \x00 and \ud800"}]
        for bad in ("a\x00b", "\ud800"):
            with pytest.raises(InvalidArgumentError, match="cannot be stored in PostgreSQL"):
                backend.append_event(bad, {"seq": 1})


def test_psycopg_is_imported_only_when_a_backend_is_built() -> None:
    script = (
        "import sys\n"
        "from rh_agents.state_backends import PostgresStateBackend\n"
        "assert 'psycopg' not in sys.modules and 'psycopg_pool' not in sys.modules\n"
        "sys.modules['psycopg_pool'] = None  # as without the postgres extra\n"
        "try:\n"
        "    PostgresStateBackend('postgresql://127.0.0.1:1/x')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "PostgresStateBackend needs psycopg 3 and psycopg_pool" in done.stdout
    assert 'pip install "rh_agents[postgres]"' in done.stdout
