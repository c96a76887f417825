"""Executors: which calls ship their handler, what travels with them (trace context,
deterministic keys), remote spans, and the process-pool executor (pickling, errors with
their types and tracebacks, dead worker processes, worker telemetry)."""

from __future__ import annotations

import asyncio
import functools
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from span_file import read_spans as read_span_file

from rh_agents import (
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    ParallelTimeoutError,
    RetryConfig,
    Tool,
)
from rh_agents.core.errors import InvalidArgumentError, InvalidWorkError, LifecycleError
from rh_agents.core.executors import (
    ItemExecutor,
    RemoteCall,
    RemoteExecutionError,
    RemoteExecutor,
    RemoteItem,
    RemoteTask,
    UnpicklableWorkError,
    WorkerLostError,
    WorkItem,
)
from rh_agents.executors import (
    ProcessPoolItemExecutor,
    RemoteExecutorBase,
    dumps_task,
    execute_remote,
    task_key,
    unpack_outcome,
)
from rh_agents.telemetry.remote import setup_worker_telemetry, use_worker_telemetry
from rh_agents.testing import FakeClock, TelemetryCapture

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

# ------------------------------------------------------------------ picklable work


async def square(x: int) -> int:
    return x * x


async def fail_value(message: str) -> None:
    raise ValueError(message)


class TwoArgError(Exception):
    """Cannot be unpickled: pickle calls TwoArgError(message) with one argument."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


async def fail_unpicklable() -> None:
    raise TwoArgError(1, 2)


async def return_lock() -> Any:
    return threading.Lock()


def write_pid(path: str) -> None:
    """Write this process's pid to ``path`` atomically: a test that sees the file sees
    the whole pid (``write_text`` creates the file empty, then writes)."""
    partial = f"{path}.{os.getpid()}.partial"
    Path(partial).write_text(str(os.getpid()))
    os.replace(partial, path)


def kill_once(marker: str) -> None:
    """SIGKILL this process the first time (writing its pid to ``marker``)."""
    if not os.path.exists(marker):
        write_pid(marker)
        os.kill(os.getpid(), signal.SIGKILL)


async def die_once(marker: str) -> int:
    """Kill this process on the first attempt, return the pid after."""
    kill_once(marker)
    return os.getpid()


def block_process(started: str) -> None:
    """Write this process's pid to ``started``, then block the process for good (like
    CPU-bound or blocking code that no cancellation can interrupt)."""
    write_pid(started)
    while True:
        time.sleep(3600)


async def blocks_forever(started: str) -> None:
    block_process(started)


def mark(path: str) -> None:
    write_pid(path)


async def wait_for_release(started: str, release: str) -> int:
    """Write the pid to ``started``, wait until ``release`` exists, return the pid."""
    mark(started)
    assert await eventually(lambda: os.path.exists(release))
    return os.getpid()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def eventually(predicate: Any, seconds: float = 60.0) -> bool:
    """Poll ``predicate`` until it holds (a generous cap, so a bug fails instead of
    hanging the suite)."""
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return bool(predicate())


async def double(input_data: int, extra: dict[str, Any], state: Any) -> dict[str, Any]:
    return {"double": input_data * 2, "no_state": state is None, "pid": os.getpid()}


async def lookup_fails(input_data: Any, extra: dict[str, Any], state: Any) -> None:
    raise LookupError(f"nothing for {input_data}")


_flaky_calls: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _fresh_flaky_calls() -> None:
    # the counter lives in this module (remote work runs in this process): a test run
    # twice in one process (mutmut does) must see the first attempt fail again
    _flaky_calls.clear()


async def flaky_handler(input_data: str, extra: dict[str, Any], state: Any) -> str:
    _flaky_calls[input_data] = _flaky_calls.get(input_data, 0) + 1
    if _flaky_calls[input_data] == 1:
        raise ConnectionError("first attempt fails")
    return input_data


# ------------------------------------------------------------------ helpers


class Loopback(RemoteExecutorBase):
    """A remote executor that pickles the work and runs it in a thread of this process,
    through the same worker entry point as the real ones."""

    executor_name = "loopback"

    def __init__(self) -> None:
        self.tasks: list[RemoteTask] = []

    async def _ship(self, task: RemoteTask) -> Any:
        self.tasks.append(task)
        payload = dumps_task(task, pickle.dumps, "a loopback thread")
        data = await asyncio.to_thread(
            execute_remote, payload, dumps=pickle.dumps, executor="loopback", worker="here"
        )
        return unpack_outcome(data)


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolItemExecutor]:
    with ProcessPoolItemExecutor(2) as executor:
        yield executor


def read_spans(directory: Path) -> list[dict[str, Any]]:
    [path] = list(directory.glob("worker-*.jsonl"))
    return read_span_file(path)


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


# ------------------------------------------------------------------ the seam


def test_executors_satisfy_their_protocols() -> None:
    assert isinstance(Loopback(), RemoteExecutor)
    assert isinstance(ProcessPoolItemExecutor(1), RemoteExecutor)
    from rh_agents.core.executors import AsyncioExecutor

    assert isinstance(AsyncioExecutor(), ItemExecutor)
    assert not isinstance(AsyncioExecutor(), RemoteExecutor)


async def test_only_the_items_own_event_calls_ship_their_handler() -> None:
    state = ExecutionState(state_id="run-1")
    shipped: list[RemoteCall] = []

    class Recording:
        """Runs items here; runs shipped handlers here too, but with the state, so a
        handler can make nested calls (which must not be shipped)."""

        async def run(self, item: WorkItem) -> Any:
            return await item.factory()

        async def run_handler(self, call: RemoteCall) -> Any:
            shipped.append(call)
            return await call.handler(call.input, call.extra_context, state)

    async def inner_handler(x: int, extra: dict[str, Any], st: Any) -> int:
        return x + 1

    inner = Tool(name="inner", handler=inner_handler)

    async def outer_handler(x: int, extra: dict[str, Any], st: Any) -> int:
        nested = await ExecutionEvent(actor=inner)(x, {}, st)
        return int(nested.result) * 10

    outer = Tool(name="outer", handler=outer_handler)

    async def two_calls() -> list[int]:
        a = await ExecutionEvent(actor=inner)(1, {}, state)
        b = await ExecutionEvent(actor=inner)(2, {}, state)
        return [a.result, b.result]

    async with state.parallel(executor=Recording(), name="g") as p:
        p.add(lambda: ExecutionEvent(actor=outer)(4, {"k": "v"}, state), name="event")
        p.add(two_calls, name="plain")

    assert [r.result for r in p.results] == [50, [2, 3]]
    assert [(c.name, c.address, c.key) for c in shipped] == [
        ("outer", "parallel:g[0]/outer", "run-1/parallel:g[0]@1/1"),
        ("inner", "parallel:g[1]/inner", "run-1/parallel:g[1]@1/1"),
        ("inner", "parallel:g[1]/inner#1", "run-1/parallel:g[1]@1/1"),
    ]
    assert shipped[0].input == 4 and shipped[0].extra_context == {"k": "v"}
    # The nested call inside outer's handler ran locally, under outer's address.
    completed = [
        e.address
        for e in state.history.get_event_list()
        if e.execution_status is ExecutionStatus.COMPLETED
    ]
    assert "parallel:g[0]/outer/inner" in completed


async def test_calls_outside_a_remote_group_run_locally() -> None:
    state = ExecutionState()
    called: list[Any] = []

    async def handler(x: int, extra: dict[str, Any], st: Any) -> int:
        called.append(st)
        return x

    tool = Tool(name="t", handler=handler)
    await ExecutionEvent(actor=tool)(1, {}, state)
    async with state.parallel(name="local") as p:  # the default executor
        p.add(lambda: ExecutionEvent(actor=tool)(2, {}, state))
    assert called == [state, state]


async def test_keys_are_deterministic_per_state_address_and_attempt() -> None:
    keys: list[str] = []

    class Keys:
        async def run(self, item: WorkItem) -> Any:
            keys.append(item.key)
            return await item.factory()

    async def work() -> int:
        return 1

    for _ in range(2):
        state = ExecutionState(state_id="same")
        async with state.parallel(executor=Keys(), name="docs") as p:
            p.add(work)
            p.add(work)
    assert keys == ["same/parallel:docs[0]@1", "same/parallel:docs[1]@1"] * 2
    a = RemoteItem(work, {}, "same/parallel:docs[0]@1", "item_0")
    b = RemoteItem(work, {}, "same/parallel:docs[0]@2", "item_0")
    assert task_key(a) == task_key(RemoteItem(work, {}, a.key, "item_0"))
    assert task_key(a) != task_key(b)
    assert task_key(a).startswith("rh_agents-item_0-")
    assert task_key(a, "mine").startswith("mine-item_0-")


async def test_handlers_run_remotely_without_state_with_history_and_metrics_here(
    rh_telemetry: TelemetryCapture, worker_spans: InMemorySpanExporter
) -> None:
    state = ExecutionState()
    tool = Tool(name="double", handler=double)
    loop = Loopback()
    async with state.parallel(executor=loop, name="calc") as p:
        for i in range(3):
            p.add(lambda i=i: ExecutionEvent(actor=tool)(i, {}, state))
        p.add(functools.partial(square, 5), name="plain")

    assert [r.result["double"] for r in p.results[:3]] == [0, 2, 4]
    assert all(r.result["no_state"] for r in p.results[:3])
    assert p.results[3].result == 25
    assert [type(t).__name__ for t in loop.tasks].count("RemoteCall") == 3
    # history and metadata stay in the coordinator
    statuses = [
        (e.address, e.execution_status.value)
        for e in state.history.get_event_list()
        if e.kind == "event"
    ]
    for i in range(3):
        assert (f"parallel:calc[{i}]/double", "started") in statuses
        assert (f"parallel:calc[{i}]/double", "completed") in statuses
    assert p.results[1].metadata["address"] == "parallel:calc[1]/double"
    rh_telemetry.assert_metric(
        "rh_agents_events_total", 3, operation="execute_tool", name="double", outcome="completed"
    )

    # remote spans: children of the event spans, and of the group span for plain items
    remote = {s.name: s for s in worker_spans.get_finished_spans()}
    handler_spans = [s for s in worker_spans.get_finished_spans() if s.name == "remote double"]
    assert len(handler_spans) == 3
    events = {
        (s.attributes or {})["rh_agents.event.address"]: s
        for s in rh_telemetry.find("execute_tool double")
    }
    for span in handler_spans:
        address = (span.attributes or {})["rh_agents.event.address"]
        assert parent_id(span) == span_id(events[address])
        assert span.context is not None and span.context.trace_id == (
            events[address].context.trace_id  # type: ignore[union-attr]
        )
        assert (span.attributes or {})["rh_agents.remote.kind"] == "handler"
        assert (span.attributes or {})["rh_agents.outcome"] == "completed"
    group = rh_telemetry.one("parallel calc")
    assert parent_id(remote["remote plain"]) == span_id(group)
    assert (remote["remote plain"].attributes or {})["rh_agents.remote.executor"] == "loopback"
    rh_telemetry.assert_no_open_spans()


async def test_actor_retries_ship_each_attempt_under_its_attempt_span(
    rh_telemetry: TelemetryCapture, worker_spans: InMemorySpanExporter
) -> None:
    state = ExecutionState(state_id="s")
    tool = Tool(
        name="flaky",
        handler=flaky_handler,
        retry_config=RetryConfig(max_attempts=2, initial_delay=0.0, jitter=False),
    )
    loop = Loopback()
    async with state.parallel(executor=loop, name="r") as p:
        p.add(lambda: ExecutionEvent(actor=tool)("retried-attempts", {}, state))
    assert p.results[0].ok and p.results[0].result == "retried-attempts"
    assert [t.key for t in loop.tasks] == ["s/parallel:r[0]@1/1", "s/parallel:r[0]@1/2"]
    attempts = {s.name: s for s in rh_telemetry.find("attempt *")}
    remote = sorted(worker_spans.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert [parent_id(s) for s in remote] == [
        span_id(attempts["attempt 1"]),
        span_id(attempts["attempt 2"]),
    ]
    assert remote[0].status.status_code.name == "ERROR"


# ------------------------------------------------------------------ the process pool


async def test_process_pool_runs_items_and_handlers_in_other_processes(
    pool: ProcessPoolItemExecutor,
) -> None:
    state = ExecutionState()
    tool = Tool(name="double", handler=double)
    async with state.parallel(executor=pool, max_workers=4) as p:
        for i in range(4):
            p.add(functools.partial(square, i))
        p.add(lambda: ExecutionEvent(actor=tool)(21, {}, state), name="event")
    assert [r.result for r in p.results[:4]] == [0, 1, 4, 9]
    event = p.results[4].result
    assert event["double"] == 42 and event["no_state"] and event["pid"] != os.getpid()


async def test_process_pool_explains_what_cannot_be_pickled(
    pool: ProcessPoolItemExecutor,
) -> None:
    state = ExecutionState()
    offset = 1

    async def closure_handler(x: int, extra: dict[str, Any], st: Any) -> int:
        return x + offset

    tool = Tool(name="closure", handler=closure_handler)

    async def work() -> int:
        return 1

    async with state.parallel(executor=pool, max_retries=2, retry_delay=0) as p:
        p.add(lambda: square(offset), name="lambda")
        p.add(lambda: ExecutionEvent(actor=tool)(1, {}, state), name="handler")
    lam, handler = p.results
    assert isinstance(lam.exception, UnpicklableWorkError)
    assert isinstance(lam.exception, InvalidWorkError)  # a usage error: never retried
    assert lam.attempts == 1 and p.group.retries == 0
    assert "Item 'lambda' cannot be serialized" in (lam.error_message or "")
    assert "functools.partial" in (lam.error_message or "")
    assert handler.error_type == "UnpicklableWorkError" and handler.attempts == 1
    assert "handler of actor 'closure'" in (handler.error_message or "")
    assert "top-level `async def`" in (handler.error_message or "")

    async with state.parallel(executor=pool) as p:
        p.add(work(), name="coroutine")
    [coroutine] = p.results
    assert coroutine.error_type == "InvalidWorkError"
    assert "coroutine object, which cannot be shipped" in (coroutine.error_message or "")


async def test_remote_errors_keep_their_type_and_traceback(pool: ProcessPoolItemExecutor) -> None:
    state = ExecutionState()
    tool = Tool(name="lookup", handler=lookup_fails)
    async with state.parallel(executor=pool, name="errs") as p:
        p.add(functools.partial(fail_value, "bad value"), name="plain")
        p.add(lambda: ExecutionEvent(actor=tool)("x", {}, state), name="event")
        p.add(fail_unpicklable, name="unpicklable")
        p.add(return_lock, name="lock")
    plain, event, unpicklable, lock = p.results

    assert type(plain.exception) is ValueError and str(plain.exception) == "bad value"
    assert plain.traceback is not None and "in fail_value" in plain.traceback
    assert "executors/worker.py" not in plain.traceback  # the worker's own frames are left out
    assert plain.exception.remote_traceback == plain.traceback  # type: ignore[attr-defined]
    assert any("Remote traceback (worker pid " in n for n in plain.exception.__notes__)

    assert type(event.exception) is LookupError and event.error_type == "LookupError"
    assert event.traceback is not None and "in lookup_fails" in event.traceback
    failed = [
        e
        for e in state.history.get_event_list()
        if e.execution_status is ExecutionStatus.FAILED and e.kind == "event"
    ]
    assert [(e.address, e.error_type) for e in failed] == [
        ("parallel:errs[1]/lookup", "LookupError")
    ]

    assert isinstance(unpicklable.exception, RemoteExecutionError)
    assert unpicklable.exception.remote_type == f"{__name__}.TwoArgError"
    assert "TwoArgError: 1/2" in (unpicklable.error_message or "")
    assert "TwoArgError" in (unpicklable.traceback or "")

    assert isinstance(lock.exception, RemoteExecutionError)
    assert "cannot be pickled to send it back" in (lock.error_message or "")


async def test_a_dead_worker_process_fails_the_item_or_is_retried(tmp_path: Path) -> None:
    async with ProcessPoolItemExecutor(1) as executor:
        state = ExecutionState()
        async with state.parallel(executor=executor) as p:
            p.add(functools.partial(die_once, str(tmp_path / "a")))
        [lost] = p.results
        assert isinstance(lost.exception, WorkerLostError)
        assert "The worker process running 'item_0' died (exit code -9)" in (
            lost.error_message or ""
        )

        async with state.parallel(executor=executor, max_retries=1, retry_delay=0) as p:
            p.add(functools.partial(die_once, str(tmp_path / "b")))
        [retried] = p.results
        killed = int((tmp_path / "b").read_text())
        assert retried.ok and retried.attempts == 2 and p.group.retries == 1
        assert retried.result != killed


async def test_an_abandoned_item_does_not_keep_its_worker_busy(tmp_path: Path) -> None:
    """A timed-out item that would never finish: its process is terminated and replaced,
    so the next group's item runs at once on the pool's only worker."""
    started = tmp_path / "started"
    async with ProcessPoolItemExecutor(1) as executor:
        clock = FakeClock(autojump=False)
        state = ExecutionState(clock=clock)
        p = state.parallel(executor=executor, timeout=1.0, name="stuck")

        async def expire_once_running() -> None:
            assert await eventually(started.exists)
            clock.advance(1.0)

        expiry = asyncio.create_task(expire_once_running())
        with pytest.raises(ParallelTimeoutError):
            async with p:
                p.add(functools.partial(blocks_forever, str(started)))
        await expiry
        stuck = int(started.read_text())
        assert p.results[0].status is ExecutionStatus.CANCELLED

        # Without the replacement this group would wait for the blocked item forever.
        async with asyncio.timeout(60):
            async with ExecutionState().parallel(executor=executor, name="next") as after:
                after.add(functools.partial(square, 7))
        assert after.results[0].result == 49
        assert await eventually(lambda: not alive(stuck))


async def test_abandoning_an_item_leaves_the_other_workers_items_running(
    tmp_path: Path,
) -> None:
    blocked, kept, release = tmp_path / "blocked", tmp_path / "kept", tmp_path / "release"
    async with ProcessPoolItemExecutor(2) as executor:
        state = ExecutionState()
        waits = functools.partial(wait_for_release, str(kept), str(release))
        other = asyncio.create_task(_gather_one(state, executor, waits))
        assert await eventually(kept.exists)
        async with state.parallel(executor=executor, name="abandoned") as p:
            p.add(functools.partial(blocks_forever, str(blocked)))
            gather = asyncio.create_task(p.gather())
            assert await eventually(blocked.exists)
            gather.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gather
        assert p.group.status.value == "cancelled"
        assert await eventually(lambda: not alive(int(blocked.read_text())))
        release.touch()
        result = await other
    # the item on the other worker finished in the process it started in
    assert result.ok and result.result == int(kept.read_text())


async def my_pid() -> int:
    return os.getpid()


def failing_initializer() -> None:
    raise RuntimeError("the worker cannot start")


async def test_a_worker_that_died_while_idle_is_replaced_before_its_next_item() -> None:
    async with ProcessPoolItemExecutor(1) as executor:
        state = ExecutionState()
        async with state.parallel(executor=executor) as p:
            p.add(my_pid)
        first = p.results[0].result
        os.kill(first, signal.SIGKILL)
        assert await eventually(lambda: not alive(first))
        async with state.parallel(executor=executor) as p:
            p.add(my_pid)
        [again] = p.results
        assert again.ok and again.result != first  # not a WorkerLostError for this item


async def test_a_worker_whose_initializer_fails_fails_its_items_clearly() -> None:
    async with ProcessPoolItemExecutor(1, initializer=failing_initializer) as executor:
        state = ExecutionState()
        async with state.parallel(executor=executor, max_retries=1, retry_delay=0) as p:
            p.add(functools.partial(square, 2))
        [lost] = p.results
    assert isinstance(lost.exception, WorkerLostError) and lost.attempts == 2
    assert "died (exit code 1)" in (lost.error_message or "")


async def _gather_one(state: ExecutionState, executor: Any, factory: Any) -> Any:
    async with state.parallel(executor=executor, name="kept") as p:
        p.add(factory)
    return p.results[0]


async def test_process_pool_workers_export_remote_spans(
    tmp_path: Path, rh_telemetry: TelemetryCapture
) -> None:
    init = functools.partial(
        setup_worker_telemetry, trace_file=str(tmp_path / "worker-{pid}.jsonl")
    )
    executor = ProcessPoolItemExecutor(1, initializer=init)
    state = ExecutionState()
    tool = Tool(name="double", handler=double)
    async with state.parallel(executor=executor, name="spans") as p:
        p.add(lambda: ExecutionEvent(actor=tool)(1, {}, state), name="event")
        p.add(functools.partial(square, 3), name="plain")
    await executor.aclose()  # workers exit and flush their spans
    assert [r.ok for r in p.results] == [True, True]

    remote = {r["name"]: r for r in read_spans(tmp_path)}
    event = rh_telemetry.one("execute_tool double")
    group = rh_telemetry.one("parallel spans")
    assert remote["remote double"]["parent_span_id"] == format(span_id(event), "016x")
    assert remote["remote plain"]["parent_span_id"] == format(span_id(group), "016x")
    assert remote["remote plain"]["trace_id"] == format(group.context.trace_id, "032x")  # type: ignore[union-attr]
    assert remote["remote double"]["attributes"]["rh_agents.remote.executor"] == "process"


async def test_process_pool_arguments_and_lifecycle() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="max_workers"):
            ProcessPoolItemExecutor(bad)  # type: ignore[arg-type]
    executor = ProcessPoolItemExecutor()
    assert executor.max_workers == (os.cpu_count() or 1)
    assert repr(executor) == f"ProcessPoolItemExecutor(max_workers={executor.max_workers})"
    executor.shutdown()
    executor.shutdown()  # idempotent
    call = RemoteCall(double, 1, {}, {}, "k", "double")
    with pytest.raises(LifecycleError, match="shut down"):
        await executor.run_handler(call)


def test_worker_entry_reports_work_it_cannot_load() -> None:
    data = execute_remote(b"not a pickle", dumps=pickle.dumps, executor="t", worker="w1")
    with pytest.raises(RemoteExecutionError, match="could not load the work"):
        unpack_outcome(data)


def test_importing_rh_agents_needs_neither_dask_nor_opentelemetry() -> None:
    code = (
        "import sys, rh_agents, rh_agents.core.executors\n"
        "assert 'opentelemetry' not in sys.modules, 'otel'\n"
        "import rh_agents.executors\n"
        "assert 'opentelemetry' not in sys.modules, 'otel'\n"
        "import rh_agents.distributed\n"
        "bad = [m for m in ('dask', 'distributed', 'cloudpickle') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_outcomes_that_cannot_be_loaded_say_so() -> None:
    with pytest.raises(RemoteExecutionError, match="cannot be loaded here"):
        unpack_outcome(b"garbage")


async def leaves_a_task_running() -> str:
    asyncio.get_running_loop().create_task(asyncio.sleep(60))
    return "done"


async def test_tasks_left_running_by_remote_work_are_cancelled() -> None:
    loop = Loopback()
    state = ExecutionState()
    async with state.parallel(executor=loop) as p:
        p.add(leaves_a_task_running)
        p.add(leaves_a_task_running)
    assert [r.result for r in p.results] == ["done", "done"]


def test_setup_worker_telemetry_gives_each_process_its_file(tmp_path: Path) -> None:
    handle = setup_worker_telemetry(trace_file=tmp_path / "worker-{pid}.jsonl", service_name="w")
    try:
        payload = pickle.dumps(RemoteItem(functools.partial(square, 2), {}, "k", "sq"))
        assert (
            unpack_outcome(execute_remote(payload, dumps=pickle.dumps, executor="t", worker="w"))
            == 4
        )
    finally:
        use_worker_telemetry(None)
        handle.shutdown()
    [span] = read_spans(tmp_path)
    assert (tmp_path / f"worker-{os.getpid()}.jsonl").exists()
    assert span["name"] == "remote sq" and span["service_name"] == "w"
