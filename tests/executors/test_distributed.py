"""Parallel groups on other executors behave exactly as on the default one.

The same cases (results and order, FAIL_SLOW, FAIL_FAST, retries, timeouts, circuit
breakers, ExecutionEvent calls with their history and metrics) run on the asyncio
executor, the process pool and Dask (an in-process LocalCluster) and must give the same
observations. Dask-specific tests cover remote spans, cancelled futures, deterministic
keys shared by two coordinators, clients given by address or running their own loop, and
(marked slow) a cluster of two worker processes: the same cases, traces stitched from the
workers' span files, and a worker killed mid-item.
"""

# ruff: noqa: E402  (the imports that need dask follow the check that it is installed)

from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ci_env import require_module

# Every test here needs the dask extra: without it the module is skipped (a failure in CI,
# which installs the extra).
dask = require_module("dask", extra="dask")
require_module("distributed", extra="dask")

from distributed import Client, KilledWorker, LocalCluster
from distributed.client import FutureCancelledError
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from span_file import read_spans

from rh_agents import (
    CircuitOpenError,
    ErrorStrategy,
    ExecutionEvent,
    ExecutionState,
    ParallelGroupError,
    ParallelTimeoutError,
    Tool,
)
from rh_agents.core.errors import InvalidArgumentError, LifecycleError
from rh_agents.core.executors import (
    RemoteCancelledError,
    RemoteExecutionError,
    RemoteItem,
    UnpicklableWorkError,
    WorkerLostError,
)
from rh_agents.executors import DaskExecutor, ProcessPoolItemExecutor
from rh_agents.executors.dask import _translate, worker_telemetry
from rh_agents.testing import FakeClock, TelemetryCapture, capture_telemetry

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

# ------------------------------------------------------------------ picklable work


async def square_after(i: int, delay: float) -> int:
    await asyncio.sleep(delay)
    return i * i


async def fail_after(message: str, delay: float) -> None:
    await asyncio.sleep(delay)
    raise ValueError(message)


def exists(path: str | Path) -> bool:
    return os.path.exists(path)


def touch(path: str | Path) -> None:
    Path(path).touch()


def bump(path: str) -> int:
    """Add one to the count in ``path``; the count before."""
    n = int(Path(path).read_text()) if exists(path) else 0
    Path(path).write_text(str(n + 1))
    return n


def kill_once(marker: str) -> None:
    """SIGKILL this process the first time (writing its pid to ``marker``)."""
    if not exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


async def eventually(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def wait_for_file(path: str, cap: float = 10.0) -> str:
    """Block until ``path`` exists (tests create it when done, so remote work that
    cannot be interrupted ends promptly)."""
    if not await eventually(lambda: exists(path), cap):
        raise TimeoutError(f"{path} was never created")
    return "released"


async def flaky(counter: str, failures: int) -> int:
    """Fails ``failures`` times (counted in a file, shared across processes)."""
    n = bump(counter)
    if n < failures:
        raise ConnectionError(f"attempt {n + 1} refused")
    return n + 1


async def count_and_wait(counter: str, release: str) -> str:
    bump(counter)
    return await wait_for_file(release)


async def die_once(marker: str) -> int:
    kill_once(marker)
    return os.getpid()


async def add_extra(input_data: int, extra: dict[str, Any], state: Any) -> dict[str, Any]:
    return {"value": input_data * 2 + extra.get("add", 0), "no_state": state is None}


async def lookup_fails(input_data: Any, extra: dict[str, Any], state: Any) -> None:
    raise LookupError(f"nothing for {input_data}")


async def whoami(input_data: Any, extra: dict[str, Any], state: Any) -> int:
    return os.getpid()


def pid_of_worker() -> int:
    return os.getpid()


# ------------------------------------------------------------------ the cases

Executor = Any
Case = Callable[[Executor, Path], Awaitable[dict[str, Any]]]


async def case_order(executor: Executor, tmp: Path) -> dict[str, Any]:
    state = ExecutionState()
    delays = [0.08, 0.0, 0.05, 0.02, 0.0, 0.03]
    async with state.parallel(executor=executor, max_workers=3, name="order") as p:
        for i, delay in enumerate(delays):
            p.add(functools.partial(square_after, i, delay), name=f"n{i}")
        by_name = await p.gather_dict()
    return {
        "results": [r.result for r in p.results],
        "names": list(by_name),
        "indexes": [r.index for r in p.results],
        "attempts": [r.attempts for r in p.results],
        "status": p.group.status.value,
        "completed": p.group.completed,
    }


EXPECTED_ORDER = {
    "results": [0, 1, 4, 9, 16, 25],
    "names": ["n0", "n1", "n2", "n3", "n4", "n5"],
    "indexes": [0, 1, 2, 3, 4, 5],
    "attempts": [1] * 6,
    "status": "completed",
    "completed": 6,
}


async def case_fail_slow(executor: Executor, tmp: Path) -> dict[str, Any]:
    state = ExecutionState()
    async with state.parallel(executor=executor, max_workers=2, name="slow") as p:
        p.add(functools.partial(square_after, 1, 0.0))
        p.add(functools.partial(fail_after, "bad 1", 0.0))
        p.add(functools.partial(square_after, 2, 0.01))
        p.add(functools.partial(fail_after, "bad 2", 0.02))
    with pytest.raises(ParallelGroupError) as caught:
        p.raise_for_failures()
    return {
        "ok": [r.ok for r in p.results],
        "results": [r.result for r in p.results],
        "error_types": [r.error_type for r in p.results],
        "exception_types": [type(r.exception).__name__ for r in p.results],
        "messages": [r.error_message for r in p.results],
        "failed": p.group.failed,
        "status": p.group.status.value,
        "summary": p.group.error_summary(),
        "group_error": [type(e).__name__ for e in caught.value.exceptions],
    }


EXPECTED_FAIL_SLOW = {
    "ok": [True, False, True, False],
    "results": [1, None, 4, None],
    "error_types": [None, "ValueError", None, "ValueError"],
    "exception_types": ["NoneType", "ValueError", "NoneType", "ValueError"],
    "messages": [None, "bad 1", None, "bad 2"],
    "failed": 2,
    "status": "failed",
    "summary": "2 of 4 events failed with 1 error type: ValueError 'bad N' (2)",
    "group_error": ["ValueError", "ValueError"],
}


async def case_fail_fast(executor: Executor, tmp: Path) -> dict[str, Any]:
    state = ExecutionState()
    release = str(tmp / "release-fail-fast")
    try:
        p = state.parallel(executor=executor, max_workers=3, error_strategy=ErrorStrategy.FAIL_FAST)
        with pytest.raises(ValueError) as caught:
            async with p:
                p.add(functools.partial(fail_after, "boom", 0.05), name="failing")
                p.add(functools.partial(wait_for_file, release), name="blocked")
                p.add(functools.partial(wait_for_file, release), name="blocked2")
    finally:
        touch(release)
    return {
        "raised": (type(caught.value).__name__, str(caught.value)),
        "statuses": [r.status.value if r.status else None for r in p.results],
        "error_types": [r.error_type for r in p.results],
        "group": (p.group.status.value, p.group.failed, p.group.cancelled),
    }


EXPECTED_FAIL_FAST = {
    "raised": ("ValueError", "boom"),
    "statuses": ["failed", "cancelled", "cancelled"],
    "error_types": ["ValueError", "CancelledError", "CancelledError"],
    "group": ("failed", 1, 2),
}


async def case_retries(executor: Executor, tmp: Path) -> dict[str, Any]:
    state = ExecutionState()
    async with state.parallel(
        executor=executor, max_retries=2, retry_delay=0.01, name="retries"
    ) as p:
        p.add(functools.partial(flaky, str(tmp / "flaky-counter"), 2), name="flaky")
        p.add(functools.partial(fail_after, "always", 0.0), name="always")
    return {
        "ok": [r.ok for r in p.results],
        "results": [r.result for r in p.results],
        "attempts": [r.attempts for r in p.results],
        "retries": p.group.retries,
        "error_types": [r.error_type for r in p.results],
    }


EXPECTED_RETRIES = {
    "ok": [True, False],
    "results": [3, None],
    "attempts": [3, 3],
    "retries": 4,
    "error_types": [None, "ValueError"],
}


async def case_timeout(executor: Executor, tmp: Path) -> dict[str, Any]:
    """The group's deadline runs on a clock that moves only once the fast item has
    completed, so the outcome does not depend on how fast a remote round trip is."""
    clock = FakeClock(autojump=False)
    state = ExecutionState(clock=clock)
    release = str(tmp / "release-timeout")
    p = state.parallel(executor=executor, timeout=0.5, name="deadline")

    async def expire_after_the_fast_item() -> None:
        assert await eventually(lambda: p.group.completed == 1, 60.0)
        clock.advance(0.5)

    expiry = asyncio.create_task(expire_after_the_fast_item())
    try:
        with pytest.raises(ParallelTimeoutError) as caught:
            async with p:
                p.add(functools.partial(square_after, 3, 0.0), name="fast")
                p.add(functools.partial(wait_for_file, release, 120.0), name="stuck")
    finally:
        touch(release)
        await expiry
    error = caught.value
    return {
        "completed": [r.result for r in error.completed_results],
        "statuses": [r.status.value if r.status else None for r in error.results],
        "error_types": [r.error_type for r in error.results],
        "timed_out": p.group.timed_out,
        "status": p.group.status.value,
    }


EXPECTED_TIMEOUT = {
    "completed": [9],
    "statuses": ["completed", "cancelled"],
    "error_types": [None, "TimeoutError"],
    "timed_out": True,
    "status": "failed",
}


async def case_breaker(executor: Executor, tmp: Path) -> dict[str, Any]:
    state = ExecutionState()
    async with state.parallel(
        executor=executor, max_workers=1, circuit_breaker_threshold=2, name="breaker"
    ) as p:
        for i in range(4):
            p.add(functools.partial(fail_after, f"down {i}", 0.0))
    return {
        "error_types": [r.error_type for r in p.results],
        "rejected_is_circuit_open": isinstance(p.results[3].exception, CircuitOpenError),
    }


EXPECTED_BREAKER = {
    "error_types": ["ValueError", "ValueError", "CircuitOpenError", "CircuitOpenError"],
    "rejected_is_circuit_open": True,
}


async def case_events(executor: Executor, tmp: Path) -> dict[str, Any]:
    with capture_telemetry() as cap:
        state = ExecutionState()
        tool = Tool(name="add", handler=add_extra)
        broken = Tool(name="lookup", handler=lookup_fails)
        async with state.parallel(executor=executor, max_workers=2, name="events") as p:
            for i in range(3):
                p.add(lambda i=i: ExecutionEvent(actor=tool)(i, {"add": 1}, state))
            p.add(lambda: ExecutionEvent(actor=broken)("q", {}, state), name="broken")
        history = [
            (e.address, e.execution_status.value)
            for e in state.history.get_event_list()
            if e.kind == "event"
        ]
        metrics = {
            "completed": cap.metric_value(
                "rh_agents_events_total", name="add", outcome="completed"
            ),
            "failed": cap.metric_value("rh_agents_events_total", name="lookup", outcome="failed"),
            "errors": cap.metric_value("rh_agents_event_errors_total", error_type="LookupError"),
            "durations": cap.histogram_count("rh_agents_event_duration_seconds"),
            "waits": cap.histogram_count("rh_agents_semaphore_wait_seconds"),
            "groups": cap.metric_value("rh_agents_parallel_groups_total", status="failed"),
        }
        cap.assert_no_open_spans()
    values = [r.result["value"] if r.ok else None for r in p.results]
    return {
        "values": values,
        "ok": [r.ok for r in p.results],
        "addresses": [r.metadata.get("address") for r in p.results],
        "error": (p.results[3].error_type, p.results[3].error_message),
        "exception": type(p.results[3].exception).__name__,
        "history": sorted(history),
        "metrics": metrics,
    }


EXPECTED_EVENTS = {
    "values": [1, 3, 5, None],
    "ok": [True, True, True, False],
    "addresses": [
        "parallel:events[0]/add",
        "parallel:events[1]/add",
        "parallel:events[2]/add",
        "parallel:events[3]/lookup",
    ],
    "error": ("LookupError", "nothing for q"),
    "exception": "LookupError",
    "history": sorted(
        [(f"parallel:events[{i}]/add", s) for i in range(3) for s in ("started", "completed")]
        + [("parallel:events[3]/lookup", "started"), ("parallel:events[3]/lookup", "failed")]
    ),
    "metrics": {
        "completed": 3.0,
        "failed": 1.0,
        "errors": 1.0,
        "durations": 4.0,
        "waits": 4.0,
        "groups": 1.0,
    },
}

CASES: dict[str, tuple[Case, dict[str, Any]]] = {
    "order": (case_order, EXPECTED_ORDER),
    "fail_slow": (case_fail_slow, EXPECTED_FAIL_SLOW),
    "fail_fast": (case_fail_fast, EXPECTED_FAIL_FAST),
    "retries": (case_retries, EXPECTED_RETRIES),
    "timeout": (case_timeout, EXPECTED_TIMEOUT),
    "breaker": (case_breaker, EXPECTED_BREAKER),
    "events": (case_events, EXPECTED_EVENTS),
}

# ------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Set up first, torn down last: every task the test (and its cluster) started is
    finished when it is over."""
    yield
    for _ in range(50):
        leftover = [
            t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()
        ]
        if not leftover:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"tasks left running: {leftover}")


@pytest.fixture(scope="module")
def process_pool() -> Iterator[ProcessPoolItemExecutor]:
    with ProcessPoolItemExecutor(2) as executor:
        # Start both worker processes and import this module in them before the cases.
        async def warm_up() -> None:
            async with ExecutionState().parallel(executor=executor, max_workers=2) as p:
                for _ in range(2):
                    p.add(functools.partial(square_after, 0, 0.3))
            assert [r.result for r in p.results] == [0, 0]

        asyncio.run(warm_up())
        yield executor


@pytest.fixture
async def cluster() -> AsyncIterator[LocalCluster]:
    async with LocalCluster(
        processes=False,
        asynchronous=True,
        n_workers=1,
        threads_per_worker=8,
        dashboard_address=None,
    ) as local:
        yield local


@pytest.fixture
async def client(cluster: LocalCluster) -> AsyncIterator[Client]:
    async with Client(cluster, asynchronous=True) as c:
        yield c


@pytest.fixture(params=["asyncio", "process", "dask"])
def executor(request: pytest.FixtureRequest) -> Executor:
    if request.param == "asyncio":
        return None
    if request.param == "process":
        return request.getfixturevalue("process_pool")
    return DaskExecutor(request.getfixturevalue("client"))


def scheduler_tasks(cluster: LocalCluster) -> dict[Any, Any]:
    """The tasks the (in-process) scheduler knows."""
    scheduler: Any = cluster.scheduler
    return dict(scheduler.tasks)


async def settled(cluster: LocalCluster) -> bool:
    """Whether the scheduler forgot every task (within two seconds)."""
    for _ in range(100):
        if not scheduler_tasks(cluster):
            return True
        await asyncio.sleep(0.02)
    return False


# ------------------------------------------------------------------ the same on every executor


@pytest.mark.parametrize("case", list(CASES))
async def test_groups_behave_the_same_on_every_executor(
    case: str, executor: Executor, tmp_path: Path
) -> None:
    run, expected = CASES[case]
    assert await run(executor, tmp_path) == expected


# ------------------------------------------------------------------ Dask specifics


async def test_dask_handlers_get_no_state_and_remote_spans_join_the_trace(
    client: Client, worker_spans: InMemorySpanExporter, rh_telemetry: TelemetryCapture
) -> None:
    state = ExecutionState()
    tool = Tool(name="add", handler=add_extra)
    async with state.parallel(executor=DaskExecutor(client), name="traced") as p:
        p.add(lambda: ExecutionEvent(actor=tool)(1, {}, state), name="event")
        p.add(functools.partial(square_after, 2, 0.0), name="plain")
    assert p.results[0].result == {"value": 2, "no_state": True}
    assert p.results[1].result == 4

    remote = {s.name: s for s in worker_spans.get_finished_spans()}
    event = rh_telemetry.one("execute_tool add")
    group = rh_telemetry.one("parallel traced")
    assert event.context is not None and group.context is not None
    handler_span, item_span = remote["remote add"], remote["remote plain"]
    assert handler_span.parent is not None and handler_span.parent.span_id == event.context.span_id
    assert item_span.parent is not None and item_span.parent.span_id == group.context.span_id
    assert handler_span.context is not None
    assert handler_span.context.trace_id == event.context.trace_id
    attrs = handler_span.attributes or {}
    assert attrs["rh_agents.remote.executor"] == "dask"
    assert attrs["rh_agents.remote.worker"].startswith("inproc://")
    assert attrs["rh_agents.event.address"] == "parallel:traced[0]/add"
    assert str(attrs["rh_agents.remote.key"]).startswith(f"{state.state_id}/parallel:traced[0]@1")


async def test_dask_ships_closures_but_explains_what_cannot_be_pickled(client: Client) -> None:
    state = ExecutionState()
    offset = 3
    lock = threading.Lock()
    async with state.parallel(executor=DaskExecutor(client)) as p:
        p.add(lambda: square_after(offset, 0.0), name="closure")
        p.add(functools.partial(square_after, lock, 0.0), name="lock")  # type: ignore[arg-type]
    closure, unpicklable = p.results
    assert closure.result == 9
    assert isinstance(unpicklable.exception, UnpicklableWorkError)
    assert "to run it on a Dask worker" in (unpicklable.error_message or "")


async def test_dask_errors_keep_their_type_and_traceback(client: Client) -> None:
    state = ExecutionState()
    async with state.parallel(executor=DaskExecutor(client)) as p:
        p.add(functools.partial(fail_after, "remote failure", 0.0), name="f")
    [failed] = p.results
    assert type(failed.exception) is ValueError
    assert failed.traceback is not None and "in fail_after" in failed.traceback
    assert any("Remote traceback (worker inproc://" in n for n in failed.exception.__notes__)


async def test_fail_fast_and_timeouts_cancel_the_dask_futures(
    cluster: LocalCluster, client: Client, tmp_path: Path
) -> None:
    executor = DaskExecutor(client)
    assert await case_fail_fast(executor, tmp_path) == EXPECTED_FAIL_FAST
    assert not client.futures and await settled(cluster)
    assert await case_timeout(executor, tmp_path) == EXPECTED_TIMEOUT
    assert not client.futures and await settled(cluster)

    release = tmp_path / "release-cancel"
    state = ExecutionState()
    try:
        async with state.parallel(executor=executor) as p:
            p.add(functools.partial(wait_for_file, str(release)))
            task = asyncio.create_task(p.gather())
            assert await eventually(lambda: bool(scheduler_tasks(cluster)))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        release.touch()
    assert p.group.status.value == "cancelled"
    assert not client.futures and await settled(cluster)


async def test_two_coordinators_share_the_task_of_one_deterministic_key(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A resumed run (same state id) whose item is still on the cluster gets the
    existing task instead of running the item again."""
    counter, release = tmp_path / "runs", tmp_path / "release"
    scheduler: Any = cluster.scheduler

    async def run(client: Client) -> Any:
        state = ExecutionState(state_id="resumed-run")
        async with state.parallel(executor=DaskExecutor(client), name="g") as p:
            p.add(functools.partial(count_and_wait, str(counter), str(release)))
        return p.results[0].result

    def wanted_by_both() -> bool:
        return any(len(ts.who_wants) == 2 for ts in scheduler.tasks.values())

    async with (
        Client(cluster, asynchronous=True) as first,
        Client(cluster, asynchronous=True) as second,
    ):
        try:
            original = asyncio.create_task(run(first))
            assert await eventually(lambda: exists(counter))
            resumed = asyncio.create_task(run(second))
            assert await eventually(wanted_by_both)
        finally:
            touch(release)
        assert await original == await resumed == "released"
    assert counter.read_text() == "1"


async def test_an_executor_built_from_an_address_owns_its_client(cluster: LocalCluster) -> None:
    async with DaskExecutor(cluster.scheduler_address) as executor:
        state = ExecutionState()
        async with state.parallel(executor=executor) as p:
            p.add(functools.partial(square_after, 4, 0.0))
        assert p.results[0].result == 16
        client = executor.client
        assert client is not None and client.status == "running"
    assert client.status == "closed" and executor.client is None
    assert repr(executor) == f"DaskExecutor({cluster.scheduler_address!r})"
    assert "scheduler_address" not in repr(DaskExecutor(cluster))  # a cluster object works too

    async with state.parallel(executor=executor) as p:
        p.add(functools.partial(square_after, 4, 0.0))
    assert isinstance(p.results[0].exception, LifecycleError)


async def test_a_synchronous_client_with_its_own_loop_works(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    sync_client = await asyncio.to_thread(Client, cluster.scheduler_address)
    try:
        executor = DaskExecutor(sync_client)
        assert await case_order(executor, tmp_path) == EXPECTED_ORDER
        assert await case_timeout(executor, tmp_path) == EXPECTED_TIMEOUT
        assert await settled(cluster)
    finally:
        await asyncio.to_thread(sync_client.close)


def test_dask_executor_arguments() -> None:
    with pytest.raises(InvalidArgumentError, match=r"distributed\.Client or a scheduler"):
        DaskExecutor(42)
    with pytest.raises(InvalidArgumentError, match="key_prefix"):
        DaskExecutor("tcp://127.0.0.1:1", key_prefix="")


def test_dask_failures_map_to_clear_exceptions() -> None:
    task = RemoteItem(functools.partial(square_after, 1, 0.0), {}, "k", "item_7")
    lost = _translate(KilledWorker("k", SimpleNamespace(address="tcp://w:1"), 0), task)  # type: ignore[arg-type]
    assert type(lost) is WorkerLostError and "'item_7'" in str(lost)
    cancelled = _translate(FutureCancelledError("k", reason="restart"), task)
    assert type(cancelled) is RemoteCancelledError
    other = _translate(OSError("connection refused"), task)
    assert type(other) is RemoteExecutionError and "scheduler is reachable" in str(other)


# ------------------------------------------------------------------ two worker processes


@pytest.mark.slow
async def test_two_worker_processes_match_the_local_executor_and_stitch_traces(
    tmp_path: Path,
) -> None:
    spans_dir = tmp_path / "spans"
    async with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=4,
            processes=True,
            asynchronous=True,
            dashboard_address=None,
        ) as local,
        Client(local, asynchronous=True) as client,
    ):
        await client.register_plugin(
            worker_telemetry(trace_file=str(spans_dir / "worker-{pid}.jsonl"))
        )
        worker_pids = set((await client.run(pid_of_worker)).values())
        assert len(worker_pids) == 2 and os.getpid() not in worker_pids
        executor = DaskExecutor(client)
        for name, (run, expected) in CASES.items():
            (tmp_path / name).mkdir()
            assert await run(executor, tmp_path / name) == expected, name

        with capture_telemetry() as cap:
            state = ExecutionState()
            tool = Tool(name="whoami", handler=whoami)
            async with state.parallel(executor=executor, max_workers=8, name="fleet") as p:
                for i in range(8):
                    p.add(lambda: ExecutionEvent(actor=tool)(None, {}, state), name=f"e{i}")
                p.add(functools.partial(square_after, 5, 0.0), name="plain")
            events = {
                (s.attributes or {})["rh_agents.event.address"]: s
                for s in cap.find("execute_tool whoami")
            }
            group = cap.one("parallel fleet")
        assert {r.result for r in p.results[:8]} <= worker_pids
    # the cluster is closed: the plugin's teardown flushed every worker's file
    files = sorted(spans_dir.glob("worker-*.jsonl"))
    assert {int(f.stem.split("-")[1]) for f in files} <= worker_pids
    remote = read_spans(*files)
    fleet = [s for s in remote if s["name"] == "remote whoami"]
    assert len(fleet) == 8
    assert group.context is not None
    for span in fleet:
        event = events[span["attributes"]["rh_agents.event.address"]]
        assert event.context is not None
        assert span["parent_span_id"] == format(event.context.span_id, "016x")
        assert span["trace_id"] == format(event.context.trace_id, "032x")
        assert span["attributes"]["process.pid"] in worker_pids
    [plain] = [s for s in remote if s["name"] == "remote plain"]
    assert plain["parent_span_id"] == format(group.context.span_id, "016x")


@pytest.mark.slow
async def test_a_worker_killed_mid_item_is_retried_on_another(tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    # The scheduler gives up on a task at once when its worker dies, so the group's own
    # retry (not Dask's transparent rescheduling) runs it again.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        async with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                asynchronous=True,
                dashboard_address=None,
            ) as local,
            Client(local, asynchronous=True) as client,
        ):
            state = ExecutionState()
            executor = DaskExecutor(client)
            async with state.parallel(executor=executor, max_retries=1, retry_delay=0) as p:
                p.add(functools.partial(die_once, str(marker)), name="victim")
                p.add(functools.partial(square_after, 6, 0.0), name="bystander")
            victim, bystander = p.results
            assert victim.ok, victim.error_message
            assert victim.attempts == 2 and p.group.retries == 1
            assert victim.result != int(marker.read_text())
            assert bystander.result == 36

            marker2 = tmp_path / "killed-again"
            async with state.parallel(executor=executor) as p:
                p.add(functools.partial(die_once, str(marker2)), name="no-retries")
            [lost] = p.results
            assert isinstance(lost.exception, WorkerLostError)
            assert "died" in (lost.error_message or "")


def test_worker_telemetry_plugin_and_preload_configure_and_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rh_agents.executors.dask as dist

    plugin = worker_telemetry(trace_file=str(tmp_path / "plugin-{pid}.jsonl"))
    assert type(plugin).__name__ == "WorkerTelemetry" and plugin.name == "rh_agents-telemetry"
    plugin.setup(None)
    assert plugin.handle is not None
    plugin.teardown(None)
    plugin.teardown(None)  # idempotent
    assert (tmp_path / f"plugin-{os.getpid()}.jsonl").exists()

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    dist.dask_setup(None)
    assert dist._preloaded is not None
    dist.dask_teardown(None)
    dist.dask_teardown(None)
    assert (tmp_path / ".rh_agents" / f"spans-worker-{os.getpid()}.jsonl").exists()
