"""Where the items of a parallel group run.

A parallel group keeps all of its semantics (limits, retries, circuit breakers,
deadlines, history, spans, metrics) in the coordinator and hands each attempt of an
item to an :class:`ItemExecutor`. Three executors come with rh_agents:

* :class:`AsyncioExecutor` (the default): awaits the item in the group's worker task.
  Right for I/O-bound work.
* :class:`ProcessPoolItemExecutor`: runs items in worker processes of this machine, for
  CPU-bound work. What it ships must be picklable with the standard :mod:`pickle`.
* :class:`rh_agents.distributed.DaskExecutor` (the ``dask`` extra): runs items on a Dask
  cluster, shipped with cloudpickle.

The last two are *remote* executors (:class:`RemoteExecutor`). They treat an item in one
of two ways:

* An item that **is an ExecutionEvent call** (``p.add(lambda: event(x, {}, state))``)
  runs in the coordinator: its address, history (STARTED, COMPLETED, ...), validation,
  cache, pre/postconditions, spans and metrics stay here, and only the actor's
  **handler** is shipped, as a :class:`RemoteCall`, with ``execution_state=None`` (a
  remote handler must be a pure function of its input and context).
* Any other item is a **plain factory**: the factory itself is shipped (a
  :class:`RemoteItem`) and its coroutine runs in the worker.

Either way the work travels with the W3C trace context of the current span and a
deterministic key (the state id, the address and the attempt). The worker opens a
``remote {name}`` span under that context through its own tracer provider (see
:func:`setup_worker_telemetry`); results and exceptions come back with their original
types, an exception with the remote traceback as ``remote_traceback`` and in its notes.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import pickle
import re
import threading
import traceback
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rh_agents.core.context import Frame, current_frame
from rh_agents.core.errors import (
    ExecutionFailure,
    InvalidArgumentError,
    InvalidWorkError,
    LifecycleError,
)

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

    from opentelemetry.trace import TracerProvider

    from rh_agents.core._process_pool import ProcessPool
    from rh_agents.core.actors import BaseActor
    from rh_agents.core.execution import ExecutionState
    from rh_agents.telemetry import TelemetryHandle

__all__ = [
    "ASYNCIO_EXECUTOR",
    "AsyncioExecutor",
    "ItemExecutor",
    "ProcessPoolItemExecutor",
    "RemoteCall",
    "RemoteCancelledError",
    "RemoteExecutionError",
    "RemoteExecutor",
    "RemoteExecutorBase",
    "RemoteItem",
    "UnpicklableWorkError",
    "WorkItem",
    "WorkerLostError",
    "execute_remote",
    "setup_worker_telemetry",
    "use_worker_telemetry",
]


@dataclass(slots=True)
class WorkItem:
    """One attempt of one item, as handed to an executor.

    Attributes:
        index: the item's position in its group.
        name: the item's name.
        group_id: the deterministic id of the group.
        attempt: 1 for the first attempt.
        factory: returns the awaitable to run (called once per attempt).
        key: the deterministic id of this attempt (state id, item address, attempt); the
            same on a resumed run.
        work: the factory given to ``p.add`` (None when a coroutine object was added);
            what a remote executor ships to run the item elsewhere.
    """

    index: int
    name: str
    group_id: str
    attempt: int
    factory: Callable[[], Awaitable[Any]]
    key: str = ""
    work: Callable[[], Awaitable[Any]] | None = None


@runtime_checkable
class ItemExecutor(Protocol):
    """Runs one attempt of a group item and returns its value (or raises)."""

    async def run(self, item: WorkItem) -> Any:
        """Run ``item`` to completion; cancellation of the caller must cancel the work."""
        ...


class AsyncioExecutor:
    """Runs items in the current event loop, inside the group's worker task."""

    async def run(self, item: WorkItem) -> Any:
        return await item.factory()


ASYNCIO_EXECUTOR = AsyncioExecutor()


# --------------------------------------------------------------------------- remote work


@dataclass(slots=True)
class RemoteCall:
    """The handler of one ExecutionEvent call, to run elsewhere.

    The worker awaits ``handler(input, extra_context, None)``: remote handlers get no
    ExecutionState.

    Attributes:
        handler: the actor's handler.
        input: the validated input.
        extra_context: the call's extra context.
        carrier: W3C trace context (``traceparent``) of the event's span.
        key: deterministic id: state id, event address, item attempt, handler attempt.
        name: the actor's name (the remote span is ``remote {name}``).
        address: the event's address.
    """

    handler: Callable[[Any, dict[str, Any], Any], Awaitable[Any]]
    input: Any
    extra_context: dict[str, Any]
    carrier: dict[str, str]
    key: str
    name: str = ""
    address: str = ""

    def start(self) -> Awaitable[Any]:
        """The handler's awaitable, with ``execution_state=None``."""
        return self.handler(self.input, self.extra_context, None)

    @property
    def kind(self) -> str:
        return "handler"


@dataclass(slots=True)
class RemoteItem:
    """A plain group item (its factory), to run elsewhere.

    Attributes:
        factory: the zero-argument factory given to ``p.add``.
        carrier: W3C trace context of the group's span.
        key: deterministic id: state id, item address, attempt.
        name: the item's name (the remote span is ``remote {name}``).
    """

    factory: Callable[[], Awaitable[Any]]
    carrier: dict[str, str]
    key: str
    name: str = ""

    def start(self) -> Awaitable[Any]:
        """The item's awaitable."""
        return self.factory()

    @property
    def kind(self) -> str:
        return "item"


RemoteTask = RemoteCall | RemoteItem


@runtime_checkable
class RemoteExecutor(ItemExecutor, Protocol):
    """An executor that can also run the handler of an ExecutionEvent call elsewhere.

    While an item of a group with such an executor runs, an ExecutionEvent called
    directly by the item (whose parent frame is the item frame) hands its handler to
    :meth:`run_handler` instead of awaiting it.
    """

    async def run_handler(self, call: RemoteCall) -> Any:
        """Run ``call.handler`` remotely and return its value (or raise its error)."""
        ...


class RemoteExecutionError(ExecutionFailure):
    """Work shipped to another process could not run or report back.

    Also stands in for a remote exception that cannot travel back (it cannot be
    pickled); ``remote_type`` then names the original class.

    Attributes:
        remote_type: the qualified name of the remote exception it replaces, if any.
        remote_traceback: the worker's traceback, when the error happened there.
    """

    def __init__(self, message: str, remote_type: str | None = None) -> None:
        super().__init__(message)
        self.remote_type = remote_type

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.remote_type), self.__dict__)


class WorkerLostError(RemoteExecutionError):
    """The worker running an item died (a Dask ``KilledWorker``, a dead pool process).

    Retried like any failure when the group has ``max_retries``.
    """


class RemoteCancelledError(RemoteExecutionError):
    """The cluster cancelled an item's remote work (not the group: e.g. a restart)."""


class UnpicklableWorkError(InvalidWorkError):
    """What an item ships (factory, handler, input, context) cannot be serialized."""


# The executor and item frame of the item the current task is running, set by the group
# around ``executor.run``; ``call_handler`` consults it.
@dataclass(slots=True, frozen=True)
class _RemoteSlot:
    executor: RemoteExecutor
    frame: Frame
    key: str


_remote_item: ContextVar[_RemoteSlot | None] = ContextVar("rh_agents_remote_item", default=None)


def item_key(state_id: str, address: str, attempt: int) -> str:
    """The deterministic id of one attempt of the item at ``address``."""
    return f"{state_id}/{address}@{attempt}"


async def run_item(
    executor: ItemExecutor, item: WorkItem, frame: Frame, state: ExecutionState
) -> Any:
    """Run one attempt through ``executor``; used by the group's worker.

    Fills ``item.key`` and, for a :class:`RemoteExecutor`, marks ``frame`` as the item
    frame whose ExecutionEvent calls ship their handlers.
    """
    item.key = item_key(state.state_id, frame.address, item.attempt)
    run_handler = getattr(executor, "run_handler", None)
    if run_handler is None:
        return await executor.run(item)
    token = _remote_item.set(_RemoteSlot(executor, frame, item.key))  # type: ignore[arg-type]
    try:
        return await executor.run(item)
    finally:
        _remote_item.reset(token)


def call_handler(
    actor: BaseActor,
    address: str,
    data: Any,
    extra: dict[str, Any],
    state: ExecutionState,
    attempt: int,
) -> Awaitable[Any]:
    """The awaitable of one handler call: local, or through the item's remote executor
    when this invocation is the item's own ExecutionEvent call."""
    slot = _remote_item.get()
    if slot is not None:
        frame = current_frame.get()
        if frame is not None and frame.parent is slot.frame:
            return slot.executor.run_handler(
                RemoteCall(
                    handler=actor.handler,
                    input=data,
                    extra_context=extra,
                    carrier=trace_carrier(),
                    key=f"{slot.key}/{attempt}",
                    name=actor.name,
                    address=address,
                )
            )
    return actor.handler(data, extra, state)


def trace_carrier() -> dict[str, str]:
    """The W3C trace context (``traceparent``) of the current span, for a worker."""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


_EVENT_CALL_CODE: Any = None


def _is_event_call(work: Any) -> bool:
    global _EVENT_CALL_CODE
    if _EVENT_CALL_CODE is None:
        from rh_agents.core.events import ExecutionEvent

        _EVENT_CALL_CODE = ExecutionEvent.__call__.__code__
    return getattr(work, "cr_code", None) is _EVENT_CALL_CODE


def _close(work: Any) -> None:
    close = getattr(work, "close", None)
    if inspect.iscoroutine(work) and close is not None:
        close()


_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.]+")


def task_key(task: RemoteTask, prefix: str = "rh_agents") -> str:
    """A compact key for a remote task: ``{prefix}-{name}-{hash of task.key}``."""
    name = _KEY_CHARS.sub("_", task.name or task.kind)[:48].strip("_") or task.kind
    digest = hashlib.blake2b(task.key.encode(), digest_size=12).hexdigest()
    return f"{prefix}-{name}-{digest}"


class RemoteExecutorBase:
    """Shared logic of remote executors; a subclass implements :meth:`_ship`.

    ``run(item)`` calls the item's factory once in the coordinator to see what it is:
    an ExecutionEvent call is awaited here (its handler is shipped through
    :meth:`run_handler`); anything else is closed and the factory itself is shipped.
    Factories must therefore be cheap and free of side effects (``lambda: fn(x)``).
    """

    executor_name = "remote"

    async def run(self, item: WorkItem) -> Any:
        work = item.factory()
        if _is_event_call(work):
            return await work
        _close(work)
        if item.work is None:
            raise InvalidWorkError(
                f"Item {item.index} ('{item.name}') is a coroutine object, which cannot be "
                f"shipped to a {self.executor_name} worker; add a picklable factory "
                "instead, e.g. p.add(functools.partial(work, x))."
            )
        key = item.key or f"{item.group_id}[{item.index}]@{item.attempt}"
        return await self._ship(RemoteItem(item.work, trace_carrier(), key, item.name))

    async def run_handler(self, call: RemoteCall) -> Any:
        return await self._ship(call)

    async def _ship(self, task: RemoteTask) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


def dumps_task(task: RemoteTask, dumps: Callable[[Any], bytes], where: str) -> bytes:
    """Serialize ``task`` for a worker, with an error that says what to change."""
    try:
        return dumps(task)
    except Exception as exc:
        if isinstance(task, RemoteCall):
            what = (
                f"The handler of actor '{task.name}' (with its input and extra_context)"
                " cannot be serialized"
            )
            fix = (
                "Define the handler as a top-level `async def` (not a lambda, closure or "
                "method of a local class) and pass picklable input and extra_context."
            )
        else:
            what = f"Item '{task.name}' cannot be serialized"
            fix = (
                "Add a picklable factory, e.g. functools.partial(top_level_async_fn, arg); "
                "an item that needs the ExecutionState must be an ExecutionEvent call "
                "itself (p.add(lambda: event(x, {}, state))), whose handler alone is shipped."
            )
        raise UnpicklableWorkError(
            f"{what} to run it on {where}: {type(exc).__name__}: {exc}. {fix}"
        ) from exc


# --------------------------------------------------------------------------- the worker side


@dataclass(slots=True)
class _Outcome:
    ok: bool
    value: Any = None
    error: BaseException | None = None
    traceback: str | None = None
    worker: str = ""


_worker_provider: TracerProvider | None = None


def use_worker_telemetry(tracer_provider: TracerProvider | None) -> None:
    """Set the tracer provider that ``remote ...`` spans use in this (worker) process.

    None goes back to the default: OpenTelemetry's global provider.
    """
    global _worker_provider
    _worker_provider = tracer_provider


def setup_worker_telemetry(**setup_kwargs: Any) -> TelemetryHandle:
    """Configure OpenTelemetry in a worker process for its ``remote ...`` spans.

    Calls :func:`rh_agents.telemetry.setup` with ``setup_kwargs`` (a ``{pid}`` in
    ``trace_file`` becomes the process id, so each worker writes its own file) and makes
    the result the provider of remote spans. Use it as a process pool's initializer
    (``functools.partial(setup_worker_telemetry, trace_file="spans-{pid}.jsonl")``); on
    Dask, :func:`rh_agents.distributed.worker_telemetry` calls it in each worker.
    """
    from rh_agents.telemetry import setup

    trace_file = setup_kwargs.get("trace_file")
    if trace_file is not None:
        setup_kwargs["trace_file"] = os.fspath(trace_file).replace("{pid}", str(os.getpid()))
    handle = setup(**setup_kwargs)
    use_worker_telemetry(handle.tracer_provider)
    return handle


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


_thread_loops = threading.local()


def _run_to_completion(awaitable: Awaitable[Any]) -> Any:
    """Run ``awaitable`` in this thread's own event loop, like ``asyncio.run`` (tasks
    it leaves running are cancelled) but reusing the loop from one item to the next."""
    loop: asyncio.AbstractEventLoop | None = getattr(_thread_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _thread_loops.loop = loop
        weakref.finalize(threading.current_thread(), loop.close)
    task = loop.create_task(_await(awaitable))
    try:
        value = loop.run_until_complete(task)
    except (SystemExit, KeyboardInterrupt):
        # The process is exiting (a terminated pool worker): no "exception was never
        # retrieved" noise for the task the exit interrupted, and nothing more to run.
        if task.done() and not task.cancelled():
            task.exception()
        raise
    except BaseException:
        _cancel_leftovers(loop)
        raise
    _cancel_leftovers(loop)
    return value


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in leftover:
        t.cancel()
    if leftover:
        loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))


def _format_remote(exc: BaseException) -> str:
    """The traceback of ``exc`` from the shipped code down (the worker's own frames
    that ran it are left out)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code is not _await.__code__:
        tb = tb.tb_next
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    else:
        tb = exc.__traceback__
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _portable_error(exc: BaseException, dumps: Callable[[Any], bytes]) -> BaseException:
    """``exc`` if it survives pickling, else a RemoteExecutionError naming it."""
    try:
        pickle.loads(dumps(exc))
        return exc
    except Exception:
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        return RemoteExecutionError(
            f"{type(exc).__name__}: {exc} (the remote {kind} could not be pickled, so it "
            "is reported as a RemoteExecutionError)",
            remote_type=kind,
        )


def execute_remote(
    payload: bytes, *, dumps: Callable[[Any], bytes], executor: str, worker: str
) -> bytes:
    """Run a serialized :class:`RemoteCall` or :class:`RemoteItem` in this process.

    The entry point of workers: opens a ``remote {name}`` span under the shipped trace
    context, runs the coroutine to completion in this thread's event loop and returns the
    serialized outcome (value, or exception and traceback). Never raises for a failure
    of the work itself.
    """
    try:
        task: RemoteTask = pickle.loads(payload)
    except Exception as exc:
        error = RemoteExecutionError(
            f"The worker ({worker}) could not load the work shipped to it: "
            f"{type(exc).__name__}: {exc}. Its code must be importable on the worker "
            "(install the same packages there).",
            remote_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        )
        return dumps(_Outcome(False, error=error, traceback=traceback.format_exc(), worker=worker))
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    from rh_agents import __version__

    provider = _worker_provider if _worker_provider is not None else trace.get_tracer_provider()
    tracer = provider.get_tracer("rh_agents.remote", __version__)
    parent = propagate.extract(task.carrier)
    with tracer.start_as_current_span(
        f"remote {task.name or task.kind}",
        context=parent,
        kind=SpanKind.INTERNAL,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        if span.is_recording():
            attrs: dict[str, Any] = {
                "rh_agents.remote.executor": executor,
                "rh_agents.remote.worker": worker,
                "rh_agents.remote.kind": task.kind,
                "rh_agents.remote.key": task.key,
                "process.pid": os.getpid(),
            }
            if isinstance(task, RemoteCall) and task.address:
                attrs["rh_agents.event.address"] = task.address
            span.set_attributes(attrs)
        try:
            value = _run_to_completion(task.start())
        except (Exception, asyncio.CancelledError) as exc:
            text = _format_remote(exc)
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
                span.set_attribute("error.type", type(exc).__name__)
                span.set_attribute("rh_agents.outcome", "failed")
            portable = _portable_error(exc, dumps)
            return dumps(_Outcome(False, error=portable, traceback=text, worker=worker))
        try:
            data = dumps(_Outcome(True, value=value, worker=worker))
        except Exception as exc:
            message = (
                f"The result of '{task.name}' ({type(value).__name__}) cannot be pickled to "
                f"send it back from the worker: {type(exc).__name__}: {exc}. Return "
                "picklable values (plain data, pydantic models of importable classes)."
            )
            if span.is_recording():
                span.set_status(Status(StatusCode.ERROR, message[:500]))
                span.set_attribute("rh_agents.outcome", "failed")
            failure = RemoteExecutionError(message)
            return dumps(
                _Outcome(False, error=failure, traceback=traceback.format_exc(), worker=worker)
            )
        if span.is_recording():
            span.set_attribute("rh_agents.outcome", "completed")
        return data


def unpack_outcome(data: bytes) -> Any:
    """The value of a serialized outcome, or raise its exception with the remote
    traceback attached (``remote_traceback`` and a note)."""
    try:
        outcome: _Outcome = pickle.loads(data)
    except Exception as exc:
        raise RemoteExecutionError(
            f"The outcome sent back by the worker cannot be loaded here: "
            f"{type(exc).__name__}: {exc}. Its classes must be importable in the coordinator."
        ) from exc
    if outcome.ok:
        return outcome.value
    error = outcome.error
    assert error is not None
    if outcome.traceback:
        try:
            error.remote_traceback = outcome.traceback  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - exceptions with __slots__ only
            pass
        error.add_note(f"Remote traceback (worker {outcome.worker}):\n{outcome.traceback}")
    raise error


# --------------------------------------------------------------------------- process pool


def _process_entry(payload: bytes) -> bytes:
    return execute_remote(
        payload, dumps=pickle.dumps, executor="process", worker=f"pid {os.getpid()}"
    )


class ProcessPoolItemExecutor(RemoteExecutorBase):
    """Runs group items in worker processes of this machine, for CPU-bound work.

    What is shipped must be picklable with the standard :mod:`pickle`: for a plain item
    its factory (``functools.partial(top_level_async_fn, arg)``, not a lambda), for an
    ExecutionEvent call the actor's handler (a top-level ``async def``), input and
    extra_context. Each shipped coroutine runs to completion in the worker's event loop
    (tasks it leaves running are cancelled, as with ``asyncio.run``).

    Each worker process runs one item at a time; processes start on first use and stop
    in :meth:`shutdown` (or ``with`` / ``async with``).

    **Cancelling an item** (FAIL_FAST, a group timeout, leaving a stream, cancelling the
    gather) drops it if it is still queued. If it is already running, its worker process
    is terminated (SIGTERM, so it exits through its exit handlers and flushes its spans;
    SIGKILL if it has not exited two seconds later) and a fresh worker takes its place
    at once: the abandoned item never delays the next one, and the items of the other
    workers keep running. Side effects the item had already made stay made.

    A worker process that dies (killed, out of memory, crashed) fails the item it was
    running with :class:`WorkerLostError` (retried under the group's ``max_retries``); a
    new process takes over its next item.

    Args:
        max_workers: worker processes (default: the number of CPUs).
        mp_context: multiprocessing start method or context; "spawn" by default, which
            is safe with the threads telemetry and other libraries start.
        initializer: run in each worker process when it starts, e.g.
            ``functools.partial(setup_worker_telemetry, trace_file="w-{pid}.jsonl")``.
        initargs: the arguments of ``initializer``.

    Example::

        async with ProcessPoolItemExecutor(4) as pool:
            async with state.parallel(max_workers=4, executor=pool) as p:
                for doc in docs:
                    p.add(functools.partial(score, doc))
    """

    executor_name = "process"

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        mp_context: str | BaseContext | None = "spawn",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise InvalidArgumentError(
                f"max_workers must be a positive integer or None (one per CPU), got "
                f"{max_workers!r}."
            )
        self.max_workers = max_workers or os.cpu_count() or 1
        self._mp_context = mp_context
        self._initializer = initializer
        self._initargs = initargs
        self._pool: ProcessPool | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"ProcessPoolItemExecutor(max_workers={self.max_workers})"

    def _get_pool(self) -> ProcessPool:
        with self._lock:
            if self._closed:
                raise LifecycleError(
                    "This ProcessPoolItemExecutor was shut down; create a new one."
                )
            if self._pool is None:
                import multiprocessing

                from rh_agents.core._process_pool import ProcessPool

                context = self._mp_context
                if context is None or isinstance(context, str):
                    context = multiprocessing.get_context(context)
                self._pool = ProcessPool(
                    self.max_workers,
                    context,
                    _process_entry,
                    initializer=self._initializer,
                    initargs=self._initargs,
                )
            return self._pool

    async def _ship(self, task: RemoteTask) -> Any:
        from rh_agents.core._process_pool import WorkerDied

        payload = dumps_task(task, pickle.dumps, "a worker process")
        pool = self._get_pool()
        job = pool.submit(payload)
        try:
            data = await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            pool.abandon(job)
            raise
        except WorkerDied as exc:
            code = f" (exit code {exc.exitcode})" if exc.exitcode is not None else ""
            raise WorkerLostError(
                f"The worker process running '{task.name}' died{code}: killed, out of "
                "memory, or crashed. A new process takes its place; the group retries "
                "the item if it has max_retries."
            ) from None
        return unpack_outcome(data)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = True) -> None:
        """Stop the worker processes (idempotent); items not started are cancelled.

        With ``wait``, returns once every process has exited (after the item it is
        running, if any).
        """
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    async def aclose(self) -> None:
        """:meth:`shutdown` without blocking the event loop."""
        await asyncio.to_thread(self.shutdown)

    def __enter__(self) -> ProcessPoolItemExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    async def __aenter__(self) -> ProcessPoolItemExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def remote_traceback_of(error: BaseException | None) -> str | None:
    """The worker's traceback of an exception that came back from a remote executor."""
    text = getattr(error, "remote_traceback", None)
    return text if isinstance(text, str) else None
