"""Where the items of a parallel group run: the executor interface of the core.

A parallel group keeps all of its semantics (limits, retries, circuit breakers,
deadlines, history, spans, metrics) in the coordinator and hands each attempt of an
item to an :class:`ItemExecutor`. The core defines that interface and runs items in the
event loop with :class:`AsyncioExecutor` (the default, right for I/O-bound work). The
executors that run items elsewhere implement it from above, in :mod:`rh_agents.executors`:

* :class:`rh_agents.executors.ProcessPoolItemExecutor`: worker processes of this machine,
  for CPU-bound work (what it ships must be picklable with the standard :mod:`pickle`).
* :class:`rh_agents.executors.DaskExecutor` (the ``dask`` extra): a Dask cluster, work
  shipped with cloudpickle.

Those are *remote* executors (:class:`RemoteExecutor`). They treat an item in one of two
ways:

* An item that **is an ExecutionEvent call** (``p.add(lambda: event(x, {}, state))``)
  runs in the coordinator: its address, history (STARTED, COMPLETED, ...), validation,
  cache, pre/postconditions, spans and metrics stay here, and only the actor's
  **handler** is shipped, as a :class:`RemoteCall` (see :func:`call_handler`), with
  ``execution_state=None`` (a remote handler must be a pure function of its input and
  context).
* Any other item is a **plain factory**: the factory itself is shipped (a
  :class:`RemoteItem`) and its coroutine runs in the worker.

Either way the work travels with the trace context of the current span
(:func:`rh_agents.core.hooks.trace_carrier`) and a deterministic key (the state id, the
address and the attempt).

The names that moved to :mod:`rh_agents.executors` (``ProcessPoolItemExecutor``,
``RemoteExecutorBase``, ``execute_remote``, ``setup_worker_telemetry``, ...) can still
be imported from here: the top-level package registers where they live
(:func:`serve_moved`), and this module looks them up on first use without importing
anything above the core.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rh_agents.core.context import Frame, current_frame
from rh_agents.core.errors import ExecutionFailure, InvalidWorkError, LifecycleError
from rh_agents.core.hooks import trace_carrier

if TYPE_CHECKING:
    from rh_agents.core.actors import BaseActor
    from rh_agents.core.execution import ExecutionState

__all__ = [
    "ASYNCIO_EXECUTOR",
    "AsyncioExecutor",
    "ItemExecutor",
    "RemoteCall",
    "RemoteCancelledError",
    "RemoteExecutionError",
    "RemoteExecutor",
    "RemoteItem",
    "UnpicklableWorkError",
    "WorkItem",
    "WorkerLostError",
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


# What the current task runs in a remote executor's worker ("the handler of 'x'"), set by
# the worker around shipped work; ExecutionEvent calls consult it (remote_call_error).
_shipped_work: ContextVar[tuple[str, str] | None] = ContextVar(
    "rh_agents_shipped_work", default=None
)


@contextlib.contextmanager
def running_shipped_work(what: str, where: str) -> Iterator[None]:
    """Mark the work run inside this block as shipped to a remote executor's worker.

    Args:
        what: the work, e.g. ``"the handler of 'summarize'"`` or ``"item 'doc-1'"``.
        where: the worker, e.g. ``"a process-pool worker (pid 123)"``.
    """
    token = _shipped_work.set((what, where))
    try:
        yield
    finally:
        _shipped_work.reset(token)


def remote_call_error(actor_name: str) -> LifecycleError | None:
    """The error of an ExecutionEvent call made by shipped work, or None elsewhere.

    Work shipped to a remote executor runs without the ExecutionState (a handler gets
    ``execution_state=None``): the run's history, bus, cache and telemetry live in the
    coordinator, which is where every invocation must be recorded.
    """
    shipped = _shipped_work.get()
    if shipped is None:
        return None
    what, where = shipped
    return LifecycleError(
        f"The ExecutionEvent call of actor '{actor_name}' runs on a remote executor, in "
        f"{what} on {where}: nested calls cannot run on a remote executor. Shipped work "
        "gets execution_state=None because the run's history, event bus, cache and "
        "telemetry live in the coordinating process, where every call must be recorded "
        "(and replayed on resume). Make the nested call in the coordinator: run the "
        "calling actor in a group without executor= (in the event loop), and ship only "
        "handlers that call nothing; or make each call an item of the group, "
        "p.add(lambda: ExecutionEvent(actor=a)(x, {}, state))."
    )


def remote_traceback_of(error: BaseException | None) -> str | None:
    """The worker's traceback of an exception that came back from a remote executor."""
    text = getattr(error, "remote_traceback", None)
    return text if isinstance(text, str) else None


_moved: dict[str, Callable[[], Any]] = {}


def serve_moved(name: str, load: Callable[[], Any]) -> None:
    """Keep ``name``, which moved above the core, importable from this module.

    ``load`` returns the object from its new home; it is called on first use. The
    top-level package registers the names that moved to :mod:`rh_agents.executors`.
    They are not in ``__all__``: they are documented where they live now.
    """
    _moved[name] = load


def __getattr__(name: str) -> Any:
    # Only names missing from this module get here: a moved one is loaded once and
    # kept, so later lookups are ordinary attribute reads.
    load = _moved.get(name)
    if load is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = load()
    globals()[name] = value
    return value
