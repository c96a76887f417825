"""One attempt of one item: the group's policy, the executor, and what happens after.

An attempt runs the item's work under the item's frame (in this task, or through the
group's executor), guarded by the group's :class:`~rh_agents.core.policy.Policy` if it
has one (the guarded attempt of :mod:`rh_agents.core._guarded`, as for an actor: the
limiter's permit, the breaker's admission, the timeout), and then either records the
result, schedules a retry after the backoff the retry guard chose, or records the
failure, which stops a FAIL_FAST group. A group without a policy runs the work directly.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from rh_agents.core._guarded import give_back, hold_permit, retry_delay, run_attempt
from rh_agents.core._pause import Interrupted
from rh_agents.core.context import Frame, current_frame
from rh_agents.core.errors import CircuitOpenError, EventFailedError, StateError
from rh_agents.core.events import ExecutionEvent, ExecutionResult
from rh_agents.core.executors import WorkItem, run_item
from rh_agents.core.hooks import Outcome
from rh_agents.core.parallel.models import label_of
from rh_agents.core.parallel.results import Results, placeholder_actor
from rh_agents.core.types import ExecutionStatus

if TYPE_CHECKING:
    from contextvars import Token

    from rh_agents.core._guarded import Hold
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.parallel.items import Item
    from rh_agents.core.parallel.models import GroupSettings, ParallelEventGroup
    from rh_agents.core.parallel.scheduler import Scheduler

__all__ = ["ItemAttempts"]


class ItemAttempts:
    """Runs the attempts of a group's items, one :meth:`run` per attempt.

    Args:
        state: the state the group records into.
        group: the group's model.
        settings: the group's policy and executor.
        frame: the group's frame (each item runs under an item frame of it).
        span: the group's telemetry handle.
        scheduler: where retries are scheduled and a stop is requested.
        results: where results and failures go.

    Attributes:
        in_flight: items running now.
        peak: the most items that ran at once.
    """

    __slots__ = (
        "_clock",
        "_executor",
        "_frame",
        "_group",
        "_limiter",
        "_policy",
        "_results",
        "_rng",
        "_scheduler",
        "_span",
        "_state",
        "_tel",
        "in_flight",
        "peak",
    )

    def __init__(
        self,
        state: ExecutionState,
        group: ParallelEventGroup,
        settings: GroupSettings,
        frame: Frame,
        span: Any,
        scheduler: Scheduler,
        results: Results,
    ) -> None:
        self._state = state
        self._tel = state.instrumentation
        self._clock = state.clock
        self._group = group
        policy = settings.policy
        self._policy = policy
        self._limiter = policy.limiter if policy is not None else None
        self._executor = settings.executor
        self._rng = settings.rng
        self._frame = frame
        self._span = span
        self._scheduler = scheduler
        self._results = results
        self.in_flight: int = 0
        self.peak: int = 0

    async def run(self, item: Item) -> None:
        """Run one attempt of ``item`` and record how it ended.

        Raises:
            asyncio.CancelledError: the group (or the task running it) was cancelled.
        """
        tel = self._tel
        traced = tel.enabled  # once per attempt: telemetry may be switched on meanwhile
        clock = self._clock
        group = self._group
        held: tuple[Hold, Token[tuple[Hold, ...]]] | None = None
        if self._limiter is not None:
            held = await hold_permit(self._limiter)
        value: Any = None
        error: BaseException | None = None
        if item.attempts:
            self._scheduler.resumed(item)
        item.attempts += 1
        item.started = True
        item_frame = self._frame.item(item.index, group.group_id, item.key)
        token = current_frame.set(item_frame)
        self.in_flight += 1
        if self.in_flight > self.peak:
            self.peak = self.in_flight
        handle = None
        # The outer finally gives back what was taken above whatever raises, including
        # the clock and telemetry: a permit or an in-flight count must never leak.
        try:
            started = clock.monotonic()
            if traced:
                tel.queue_changed(group, self.in_flight, self._scheduler.queued())
                # The wait for a worker slot (and the limiter): from ready to running.
                handle = tel.item_started(
                    self._span, group, item.index, started - item.ready_at, attempt=item.attempts
                )
            try:
                if self._policy is None and self._executor is None:
                    value = await item.awaitable()  # the fast path: no guard, no executor
                    error = _failure_of(value)
                else:
                    value, error = await self._attempt(item, item_frame, started)
            except Interrupted as pause:
                value, error = pause, None  # recorded by _paused
            except asyncio.CancelledError as exc:
                if self._group_cancelled():
                    if traced:
                        tel.item_finished(handle, group, Outcome.CANCELLED, None)
                    raise
                # Nobody cancelled the group: the item itself raised CancelledError (e.g.
                # from a task of its own). That is the item's failure, not the group's end.
                error = exc
            except Exception as exc:
                error = exc
        finally:
            current_frame.reset(token)
            self.in_flight -= 1
            if held is not None:
                give_back(*held)
            if traced:
                tel.queue_changed(group, self.in_flight, self._scheduler.queued())
        elapsed = clock.monotonic() - started
        if self._paused(item, value, elapsed, handle, traced):
            return
        if error is None:
            if traced:
                tel.item_finished(handle, group, Outcome.COMPLETED, None)
            self._results.complete(item, value, elapsed)
            return
        await self._failed(item, value, error, elapsed, handle, traced)

    def _paused(self, item: Item, value: Any, elapsed: float, handle: Any, traced: bool) -> bool:
        """Whether the attempt ended paused at ``interrupt()`` (then recorded as such)."""
        pause = value.exception if isinstance(value, ExecutionResult) else value
        if isinstance(pause, Interrupted):
            # The item waits for a human (it raised the pause, or returned the result of
            # a call that paused); the others go on (see core.interrupts).
            if traced:
                self._tel.item_finished(handle, self._group, Outcome.AWAITING, None)
            self._results.pause(item, pause, elapsed)
            return True
        return False

    async def _attempt(
        self, item: Item, item_frame: Frame, started: float
    ) -> tuple[Any, BaseException | None]:
        """The attempt's work under the group's policy, or through its executor: its
        value and its failure."""
        policy = self._policy
        if policy is None:
            value = await self._start(item, item_frame)
            return value, _failure_of(value)
        if item.attempts == 1:
            item.first_started = started
        return await run_attempt(
            policy,
            functools.partial(self._start, item, item_frame),
            self._clock,
            f"item {item.index} ('{item.name}') of parallel group '{label_of(self._group)}'",
            item.attempts,
            _failure_of,
        )

    def _start(self, item: Item, item_frame: Frame) -> Awaitable[Any]:
        """The attempt's work: the item's awaitable, or its run through the executor."""
        if self._executor is None:
            return item.awaitable()
        return run_item(self._executor, self._work(item), item_frame, self._state)

    def _work(self, item: Item) -> WorkItem:
        """What the executor gets for this attempt."""
        return WorkItem(
            item.index,
            item.name,
            self._group.group_id,
            item.attempts,
            item.awaitable,
            work=item.factory,
        )

    def _group_cancelled(self) -> bool:
        """Whether a CancelledError is the group's end (not the item's own failure)."""
        task = asyncio.current_task()
        return task is None or task.cancelling() > 0 or self._scheduler.stopping

    async def _failed(
        self,
        item: Item,
        value: Any,
        error: BaseException,
        elapsed: float,
        handle: Any,
        traced: bool,
    ) -> None:
        """The attempt failed: retry it after a backoff, or record the failure."""
        policy = self._policy
        # An error of the history itself (disk full, another program's history) is not
        # the item's failure: retrying or going on cannot help, so it stops the group.
        fatal = isinstance(error, StateError)
        delay = (
            retry_delay(
                policy,
                item.attempts,
                error,
                item.first_started,
                self._clock.monotonic(),
                self._rng,
            )
            if policy is not None
            and policy.retry is not None
            and not fatal
            and not self._scheduler.stopping
            else None
        )
        if delay is not None:
            if traced:
                self._tel.item_finished(handle, self._group, Outcome.FAILED, error, final=False)
            await self._schedule_retry(item, value, error, delay)
            return
        outcome = Outcome.REJECTED if isinstance(error, CircuitOpenError) else Outcome.FAILED
        if traced:
            self._tel.item_finished(handle, self._group, outcome, error)
        if self._results.fail(item, value, error, elapsed, fatal):
            self._scheduler.stop()

    async def _schedule_retry(
        self, item: Item, value: Any, error: BaseException, delay: float
    ) -> None:
        group = self._group
        group.retries += 1
        self._scheduler.retry_later(item, delay)
        result = value if isinstance(value, ExecutionResult) else None
        message = (
            result.error_message
            if result is not None and result.error_message
            else (str(error) or type(error).__name__)
        )
        actor = result.metadata.get("actor") if result is not None else None
        operation = result.metadata.get("event_type") if result is not None else None
        label = actor or item.name
        # Metric labels must stay low-cardinality: an item that never reached an actor
        # (a plain coroutine, a breaker rejection) is counted under its group's name.
        self._tel.item_retrying(
            group,
            actor or group.name or "unnamed",
            operation,
            item.attempts,
            delay,
            error,
            index=item.index,
        )
        address = result.address if result is not None else None
        event: ExecutionEvent[Any] = ExecutionEvent(
            actor=placeholder_actor(label),
            actor_name=label,
            address=address
            or f"{self._frame.address}[{item.index if item.key is None else item.key}]",
            execution_status=ExecutionStatus.RETRYING,
            group_id=group.group_id,
            parallel_index=item.index,
            is_parallel=True,
            retry_attempt=item.attempts,
            is_retry=True,
            retry_delay=delay,
            original_error=message,
            error_type=type(error).__name__,
            message=f"Attempt {item.attempts} failed; retrying in {delay:.2f}s: {message}",
            metadata={"item": item.name},
        )
        await self._state.publish_event(event)


def _failure_of(value: Any) -> BaseException | None:
    """The failure an item's value stands for: an ``ok=False`` ExecutionResult's."""
    if isinstance(value, ExecutionResult) and not value.ok:
        if isinstance(value.exception, Interrupted):
            return None  # waiting for a human is no failure (and is not retried)
        return value.exception or EventFailedError(
            value.error_message or "The event failed.", value
        )
    return None
