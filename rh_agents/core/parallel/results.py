"""What a group reports: one result per item, the group's events, its summaries.

:class:`Results` keeps the result slot of every item, filled as items end (stamped with
the item's index, name and attempts) and, for a stream, handed to the consumer in
completion order; items that never ended get a cancelled or timed-out result when the
group finishes. The group's lifecycle events and its error summaries are built here
too, so every way of collecting (gather, gather_dict, stream) reports the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from functools import lru_cache
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rh_agents.core._aio import cancel_and_wait
from rh_agents.core._pause import Interrupted
from rh_agents.core.actors import BaseActor
from rh_agents.core.errors import EventFailedError
from rh_agents.core.events import (
    EventKind,
    ExecutionEvent,
    ExecutionResult,
    clone,
    make_result,
    seal_snapshot,
    snapshot_fields,
)
from rh_agents.core.executors import remote_traceback_of
from rh_agents.core.parallel.errors import ParallelGroupError
from rh_agents.core.parallel.items import Item
from rh_agents.core.parallel.models import ErrorStrategy, ParallelEventGroup, bump, update
from rh_agents.core.types import ExecutionStatus

if TYPE_CHECKING:
    from rh_agents.core.execution import ExecutionState

__all__ = [
    "ResultStream",
    "Results",
    "failures_error",
    "group_event",
    "own",
    "placeholder_actor",
    "publish_group",
    "stop_runner",
    "timeout_message",
]


async def _not_run(input_data: Any, extra_context: Any, state: Any) -> None:
    return None  # pragma: no cover - never called


@lru_cache(maxsize=256)
def placeholder_actor(name: str) -> BaseActor:
    """The actor of a group's bookkeeping events (group lifecycle, item retries).

    It carries the group's or item's name so that a subscriber printing
    ``event.actor.name`` works, and it is never run. Those names are free text (an item
    may be called ``docs/a.txt``, a group ``a/b``), while an actor name must not contain
    address characters, so the actor is built without validation: the name check
    protects the addresses of invocations, and these events take no address from it.
    """
    return BaseActor.model_construct(
        name=name, description="parallel group bookkeeping", handler=_not_run
    )


def own(result: ExecutionResult[Any]) -> ExecutionResult[Any]:
    """``result``, or a copy of it if it is already some item's result.

    Results are stamped with the item's index, name and attempts in place: the core's
    own results (an ExecutionEvent call's) are fresh objects. One that already has an
    index belongs to another item (a memoized result returned twice, an item of a
    nested group): stamping it again would change that item's result too.
    """
    return result if result.__dict__["index"] is None else clone(result)


def timeout_message(label: str, timeout: float | None, group: ParallelEventGroup) -> str:
    """What a group that ran out of time says (the message of ParallelTimeoutError)."""
    return (
        f"Parallel group '{label}' timed out after {timeout}s. Completed "
        f"{group.completed}/{group.total} events. Consider increasing timeout or max_workers."
    )


class Results:
    """The result slot of every item of one run of a group.

    Args:
        group: the group's model, whose counts follow the slots.
        label: the group's name in messages.
        strategy: FAIL_FAST makes a failure stop the group.
        n: the number of items.
        queue: where a stream learns which item ended (the index; None at the end).
    """

    __slots__ = ("_group", "_label", "_queue", "_strategy", "failure", "pauses", "slots")

    def __init__(
        self,
        group: ParallelEventGroup,
        label: str,
        strategy: ErrorStrategy,
        n: int,
        queue: asyncio.Queue[int | None] | None = None,
    ) -> None:
        self._group = group
        self._label = label
        self._strategy = strategy
        self._queue = queue
        self.slots: list[ExecutionResult[Any] | None] = [None] * n
        self.failure: BaseException | None = None
        """The error that stopped the group (FAIL_FAST, or an error of its machinery)."""
        self.pauses: list[Interrupted] = []
        """The ``interrupt()`` pauses of items that wait for a human, in order."""

    def all_done(self) -> bool:
        """Whether every item has its result."""
        return all(slot is not None for slot in self.slots)

    def complete(self, item: Item, value: Any, elapsed: float) -> None:
        """Item ``item`` returned ``value`` (an ExecutionResult or any value)."""
        if isinstance(value, ExecutionResult):
            result = own(value)
            fields = result.__dict__  # no validation to run: the fields keep their types
            fields["index"] = item.index
            fields["name"] = item.name
            fields["attempts"] = item.attempts
        else:
            result = make_result(
                value,
                execution_time=elapsed,
                index=item.index,
                name=item.name,
                attempts=item.attempts,
                status=ExecutionStatus.COMPLETED,
            )
        self.slots[item.index] = result
        bump(self._group, "completed")
        if self._queue is not None:
            self._queue.put_nowait(item.index)

    def fail(
        self, item: Item, value: Any, error: BaseException, elapsed: float, fatal: bool = False
    ) -> bool:
        """Item ``item`` failed for good; returns whether the group must stop."""
        if isinstance(value, ExecutionResult):
            result = own(value)
            fields = result.__dict__
            fields["index"] = item.index
            fields["name"] = item.name
            fields["attempts"] = item.attempts
            fields["traceback"] = result.traceback or remote_traceback_of(error)
            message = value.error_message or str(error)
            error_type = value.error_type or type(error).__name__
        else:
            message = str(error) or type(error).__name__
            error_type = type(error).__name__
            result = make_result(
                ok=False,
                error_message=message,
                error_type=error_type,
                execution_time=elapsed,
                index=item.index,
                name=item.name,
                attempts=item.attempts,
                status=ExecutionStatus.FAILED,
                exception=error,
                traceback=remote_traceback_of(error),
            )
        self.slots[item.index] = result
        bump(self._group, "failed")
        self._group._record_failure(error_type, message)
        if self._strategy is ErrorStrategy.FAIL_FAST or fatal:
            if self.failure is None:
                self.failure = self._fail_fast_error(item, value, error, message)
            return True
        if self._queue is not None:
            self._queue.put_nowait(item.index)
        return False

    def pause(self, item: Item, pause: Interrupted, elapsed: float) -> None:
        """Item ``item`` waits for a human (``interrupt()``); the group goes on."""
        self.slots[item.index] = make_result(
            ok=False,
            error_message=str(pause),
            error_type="Interrupted",
            execution_time=elapsed,
            index=item.index,
            name=item.name,
            attempts=item.attempts,
            status=ExecutionStatus.AWAITING,
            exception=pause,
        )
        self.pauses.append(pause)
        if self._queue is not None:
            self._queue.put_nowait(item.index)

    def stop_with(self, error: BaseException) -> None:
        """The group stops for ``error`` (unless an earlier error stopped it already)."""
        if self.failure is None:
            self.failure = error

    def _fail_fast_error(
        self, item: Item, value: Any, error: BaseException, message: str
    ) -> BaseException:
        """What FAIL_FAST raises: the item's own exception, or an EventFailedError for an
        ExecutionEvent that returned ``ok=False``, which is also an instance of its
        handler's exception class (that exception is its ``__cause__``)."""
        where = f"Item {item.index} ('{item.name}') of parallel group '{self._label}'"
        if isinstance(value, ExecutionResult):
            return EventFailedError.caused_by(f"{where} failed: {message}", value, value.exception)
        if not isinstance(error, Exception):
            failure = EventFailedError(
                f"{where} raised {type(error).__name__} although the group was not "
                "cancelled; an item must not let a cancellation of its own escape."
            )
            failure.__cause__ = error
            return failure
        return error

    def finish(
        self,
        items: list[Item],
        timed_out: bool,
        timeout: float | None,
        backing_off: set[int],
    ) -> list[ExecutionResult[Any]]:
        """Give every item without a result a cancelled (or timed-out) one; returns all
        results in add order, and ends a stream."""
        for item in items:
            if self.slots[item.index] is None:
                self.slots[item.index] = _unfinished(item, timed_out, timeout, backing_off)
                bump(self._group, "cancelled")
        if self._queue is not None:
            self._queue.put_nowait(None)
        return [r for r in self.slots if r is not None]


def _unfinished(
    item: Item, timed_out: bool, timeout: float | None, backing_off: set[int]
) -> ExecutionResult[Any]:
    if timed_out:
        message = (
            f"Item {item.index} ('{item.name}') did not finish before the group's "
            f"{timeout}s timeout."
        )
        error_type = "TimeoutError"
    elif item.index in backing_off:
        message = (
            f"Item {item.index} ('{item.name}') was cancelled while waiting to retry "
            f"(after {item.attempts} failed attempt{'s' if item.attempts != 1 else ''})."
        )
        error_type = "CancelledError"
    elif item.started:
        message = f"Item {item.index} ('{item.name}') was cancelled while running."
        error_type = "CancelledError"
    else:
        message = f"Item {item.index} ('{item.name}') was cancelled before it started."
        error_type = "CancelledError"
    return make_result(
        ok=False,
        error_message=message,
        error_type=error_type,
        index=item.index,
        name=item.name,
        attempts=item.attempts,
        status=ExecutionStatus.CANCELLED,
    )


_GROUP_FIELDS_SET = frozenset(
    ExecutionEvent(kind=EventKind.GROUP, is_parallel=True).__pydantic_fields_set__
)
"""The fields a group lifecycle event sets explicitly, as ``ExecutionEvent(kind=GROUP,
is_parallel=True)`` does."""


def group_event(
    group: ParallelEventGroup, status: ExecutionStatus, timed_out: bool, timeout_text: str
) -> ExecutionEvent[Any]:
    """The group lifecycle event of ``status`` (``timeout_text``: the timeout message,
    used when the group timed out), as the immutable snapshot the history keeps."""
    g = group.__dict__
    name = g["name"]
    label = f"parallel:{name or 'group'}"
    message = group.error_summary() or None
    if timed_out and status is not ExecutionStatus.STARTED:
        message = f"{timeout_text} {message}" if message else timeout_text
    # Every field is the group's own, of the right type: no validation to pay for. The
    # snapshot is built directly (twice per group, so part of a small group's fixed
    # cost): the fields at their defaults, then the group's, stored one by one.
    values = snapshot_fields()
    values["kind"] = EventKind.GROUP
    values["is_parallel"] = True
    values["actor"] = placeholder_actor(label)
    values["actor_name"] = label
    values["address"] = g["address"]
    values["execution_status"] = status
    values["group_id"] = g["group_id"]
    values["execution_time"] = g["execution_time"]
    values["message"] = message
    values["timestamp"] = time.time()
    values["metadata"] = {
        "group_name": name,
        "total": g["total"],
        "completed": g["completed"],
        "failed": g["failed"],
        "cancelled": g["cancelled"],
        "retries": g["retries"],
        "max_workers": g["max_workers"],
        "error_strategy": g["error_strategy"]._value_,
        "timeout": g["timeout"],
        "timed_out": g["timed_out"] or timed_out,
        "status": g["status"]._value_,
    }
    return seal_snapshot(values, _GROUP_FIELDS_SET, None, None)


def publish_group(
    state: ExecutionState,
    group: ParallelEventGroup,
    status: ExecutionStatus,
    timed_out: bool,
    timeout_text: str,
) -> Awaitable[None]:
    """Record and publish the group's lifecycle event of ``status`` (await the result)."""
    update(group, timed_out=timed_out)
    return state.recorder.record(group_event(group, status, timed_out, timeout_text))


def failures_error(
    results: list[ExecutionResult[Any]], group: ParallelEventGroup, label: str
) -> ParallelGroupError | None:
    """Every failure of a finished group as one ParallelGroupError (None: no failure)."""
    failures = [r for r in results if not r.ok]
    if not failures:
        return None
    excs: list[Exception] = []
    for r in failures:
        if isinstance(r.exception, Exception):
            excs.append(r.exception)
        else:
            excs.append(EventFailedError(r.error_message or "failed", r))
    summary = group.error_summary() or f"{len(failures)} items did not complete"
    return ParallelGroupError(f"Parallel group '{label}': {summary}", excs, group)


async def stop_runner(runner: asyncio.Task[None]) -> None:
    """Cancel a group's runner task and wait for it; never leave its error unretrieved."""
    if not runner.done():
        await cancel_and_wait([runner])
    elif not runner.cancelled():
        runner.exception()


class ResultStream(AsyncGenerator[ExecutionResult[Any], None]):
    """What :meth:`ParallelExecutionManager.stream` returns: the group's generator,
    plus a prompt stop of the group's work when the caller drops it (``break``)."""

    __slots__ = ("_gen", "_released", "_started")

    def __init__(
        self,
        gen: AsyncGenerator[ExecutionResult[Any], None],
        started: list[asyncio.Task[None]],
        released: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._gen = gen
        # The runner, once this stream started the group (shared with the generator,
        # which must not reference the wrapper: that would keep it alive).
        self._started = started
        self._released = released

    def __aiter__(self) -> ResultStream:
        return self

    def __anext__(self) -> Coroutine[Any, Any, ExecutionResult[Any]]:
        return self._gen.__anext__()

    def asend(self, value: None) -> Coroutine[Any, Any, ExecutionResult[Any]]:
        return self._gen.asend(value)

    def athrow(
        self, typ: Any, val: Any = None, tb: TracebackType | None = None, /
    ) -> Coroutine[Any, Any, ExecutionResult[Any]]:
        if val is None and tb is None:
            return self._gen.athrow(typ)
        return self._gen.athrow(typ, val, tb)  # pragma: no cover - the legacy form

    def aclose(self) -> Coroutine[Any, Any, None]:
        return self._gen.aclose()

    def __del__(self) -> None:
        if self._started:
            # An exception here could only be reported as "unraisable"; the block's exit
            # stops the work anyway.
            with contextlib.suppress(Exception):
                self._released(self._started[0])
