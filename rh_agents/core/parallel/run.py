"""One run of a group: from the group-started event to the terminal one.

Every exit path (success, FAIL_FAST, timeout, leaving ``stream()``, an exception in the
``async with`` body, external cancellation) cancels and awaits all work of the group,
gives every unfinished item a result and records how the group ended, also when the
run itself is cancelled while it waits for its workers.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import TYPE_CHECKING, Any

from rh_agents.core._aio import cancel_and_wait, uninterrupted
from rh_agents.core._pause import Interrupted
from rh_agents.core.context import current_frame
from rh_agents.core.parallel.attempt import ItemAttempts
from rh_agents.core.parallel.errors import ParallelTimeoutError
from rh_agents.core.parallel.models import GroupStatistics, GroupStatus, label_of, update
from rh_agents.core.parallel.results import Results, group_event, publish_group, timeout_message
from rh_agents.core.parallel.scheduler import Scheduler
from rh_agents.core.types import ExecutionStatus

if TYPE_CHECKING:
    from rh_agents.core.context import Frame
    from rh_agents.core.parallel.group import ParallelExecutionManager
    from rh_agents.core.parallel.items import Item, ItemList
    from rh_agents.core.parallel.models import GroupSettings

__all__ = ["GroupRun"]

logger: logging.Logger = logging.getLogger("rh_agents.parallel")

_TERMINAL = {
    GroupStatus.COMPLETED: ExecutionStatus.COMPLETED,
    GroupStatus.FAILED: ExecutionStatus.FAILED,
    GroupStatus.CANCELLED: ExecutionStatus.CANCELLED,
}


class GroupRun:
    """Runs the items of a group once and records how the group ended.

    Args:
        manager: the group; told the results and the error when the run ends.
        items: the group's items.
        settings: how the items run.
        frame: the group's frame.
        queue: where a stream learns which item ended.
    """

    def __init__(
        self,
        manager: ParallelExecutionManager,
        items: ItemList,
        settings: GroupSettings,
        frame: Frame,
        queue: asyncio.Queue[int | None] | None,
        consumer_waits: asyncio.Event | None = None,
    ) -> None:
        state = manager.execution_state
        self._manager: ParallelExecutionManager | None = manager
        self._state = state
        self._tel = state.instrumentation
        self._clock = state.clock
        self._group = manager.group
        self._label = label_of(self._group)
        self._items = items
        self._settings = settings
        self._frame = frame
        self._span: Any = None
        self._started_at = 0.0
        self.scheduler: Scheduler = Scheduler(items.items, self._clock)
        self.results: Results = Results(
            self._group, self._label, settings.error_strategy, len(items), queue
        )
        self.attempts: ItemAttempts | None = None
        self.error: BaseException | None = None
        """What collecting raises: the deadline, or the failure that stopped the group."""
        self.accepting: bool = True
        """Whether ``p.add`` may still add items (until the last item has finished)."""
        self._consumer_waits = consumer_waits
        self._queue = queue
        self._body_adds = 0
        self._context: contextvars.Context | None = None  # the workers' context (execute)

    def statistics(self) -> GroupStatistics:
        """Running items, peak concurrency, queued and delayed items."""
        attempts = self.attempts
        return GroupStatistics(
            in_flight=attempts.in_flight if attempts is not None else 0,
            peak_in_flight=attempts.peak if attempts is not None else 0,
            queued=max(0, self.scheduler.queued()),
            delayed=len(self.scheduler.backing_off),
        )

    async def execute(self) -> None:
        """Run every item; raises the group's error (FAIL_FAST, timeout), if any."""
        state, tel, group, settings = self._state, self._tel, self._group, self._settings
        items = self._items.items
        n = len(items)
        update(group, total=n, status=GroupStatus.RUNNING, start_time=time.time())
        self._items.forget_coroutines()
        self._started_at = self._clock.monotonic()
        for item in items:
            item.ready_at = self._started_at
        self._span = tel.group_started(group, settings.error_strategy._value_)
        if settings.policy is not None and settings.policy.limiter is not None:
            tel.watch_limiter(settings.policy.limiter, self._span)
        scheduler = self.scheduler
        attempts = ItemAttempts(
            state, group, settings, self._frame, self._span, scheduler, self.results
        )
        self.attempts = attempts
        workers_needed = min(settings.max_workers, n)
        scheduler.inline = self._runs_inline(workers_needed)
        self._context = contextvars.copy_context()
        cancelled = False
        workers = scheduler.workers
        watchdog: asyncio.Task[None] | None = None
        errors: list[BaseException] = []
        try:
            await state.recorder.record(group_event(group, ExecutionStatus.STARTED, False, ""))
            if tel.enabled:
                tel.queue_changed(group, 0, n)
            self._start_workers(workers_needed)
            if settings.timeout is not None and n:
                watchdog = asyncio.create_task(
                    scheduler.watchdog(settings.timeout, self.results.all_done)
                )
            await self._work(attempts)
            while self._consumer_waits is not None and await self._more_from_consumer():
                self._start_workers(settings.max_workers)
                await self._work(attempts)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            self.accepting = False
            # Workers check `stopping` between items, so one whose item swallowed the
            # cancellation still ends instead of running the rest of the queue.
            scheduler.stopping = True
            interrupted = False
            try:
                if workers or watchdog is not None:
                    errors = await cancel_and_wait([*workers, watchdog])
            except asyncio.CancelledError:
                # Cancelled (again) while waiting for the workers: they are finished
                # all the same, and the group must still record how it ended.
                cancelled = interrupted = True
            self._items.close()
            finish = self._finish(cancelled, crashed=bool(errors))
            if state.event_bus.has_listeners():
                # Subscribers may suspend it: the final status must still be recorded.
                await uninterrupted(finish)
            else:
                await finish  # nothing in it can suspend, so nothing can interrupt it
            if interrupted:
                raise asyncio.CancelledError
        if errors:  # a worker died of a BaseException its error handling does not take
            raise errors[0]
        if self.error is not None:
            raise self.error

    async def _work(self, attempts: ItemAttempts) -> None:
        """Run the items waiting now, and those added meanwhile, until none is left."""
        scheduler = self.scheduler
        if scheduler.inline:
            # Items added meanwhile may have started worker tasks beside this one.
            await scheduler.work(attempts.run, self.crash)
        # Workers handle their own errors (see Scheduler.work); one that dies anyway
        # (KeyboardInterrupt, ...) ends the wait at once. Items added meanwhile may start
        # more workers: wait until none is left running.
        while running := [w for w in scheduler.workers if not w.done()]:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_EXCEPTION)
            if any(not w.cancelled() and w.exception() is not None for w in done):
                return

    def _start_workers(self, most: int) -> None:
        """Start a worker per waiting item, up to ``most`` (none when it runs inline)."""
        if not self.scheduler.inline:
            for _ in range(min(most, self.scheduler.queued())):
                self._start_worker()

    def _start_worker(self) -> None:
        assert self.attempts is not None
        work = self.scheduler.work(self.attempts.run, self.crash)
        # In the run's own context: a worker started by an item's p.add must not inherit
        # that item's frame.
        assert self._context is not None  # set when the run starts, before any worker
        self.scheduler.workers.append(asyncio.create_task(work, context=self._context.copy()))

    async def _more_from_consumer(self) -> bool:
        """For a stream: wait until its consumer has taken every result and asks for
        more; whether it added items meanwhile (they run before the group ends)."""
        waits, queue = self._consumer_waits, self._queue
        if waits is None or queue is None or self.scheduler.stopping:
            return False
        while True:
            await waits.wait()  # set by the consumer when it finds the queue empty
            if queue.empty():
                break
            await asyncio.sleep(0)  # results came since: let the consumer take them
        return self.scheduler.queued() > 0 and not self.scheduler.stopping

    def add(self, work: Any, name: str | None, priority: int) -> int:
        """Add an item while the group runs (see ``ParallelExecutionManager.add``)."""
        group, scheduler = self._group, self.scheduler
        parent = self._adding_item()
        if parent is not None:
            key = f"{parent.index if parent.key is None else parent.key}.{parent.adds}"
            parent.adds += 1
        else:
            key = f"+{self._body_adds}"
            self._body_adds += 1
        index = self._items.add(work, name, priority, key)
        item = self._items.items[index]
        item.ready_at = self._clock.monotonic()
        self.results.slots.append(None)
        update(group, total=len(self._items))
        scheduler.push(item)
        running = sum(1 for w in scheduler.workers if not w.done()) + scheduler.inline
        if running < self._settings.max_workers:
            self._start_worker()
        if self._tel.enabled and self.attempts is not None:
            self._tel.queue_changed(group, self.attempts.in_flight, scheduler.queued())
        return index

    def _adding_item(self) -> Item | None:
        """The item of this group whose attempt runs the calling code (directly or in a
        call nested in it, of this state or another), if any: the innermost item frame
        above the current frame, when it is one of this group's. An item of a group
        nested in one of ours adds for the body, as the body does."""
        frame = current_frame.get()
        while frame is not None:
            index = frame.parallel_index
            if index is not None:
                return self._items.items[index] if frame.parent is self._frame else None
            frame = frame.outer if frame.outer is not None else frame.parent
        return None

    def _runs_inline(self, workers_needed: int) -> bool:
        """Whether the single worker runs in this task.

        One worker and no deadline: run it in this task. A task of its own would only
        add event-loop round trips (most of a small group's fixed cost), and without a
        watchdog only this task's own canceller can stop it. Not in a task that has been
        cancelled before (a pending or swallowed request): there, a CancelledError could
        not be told apart from an item's own.
        """
        task = asyncio.current_task()
        return (
            workers_needed == 1
            and self._settings.timeout is None
            and task is not None
            and task.cancelling() == 0
        )

    def crash(self, item: Item | None, error: Exception) -> None:
        """Stop the group for an error raised outside an item's work.

        A ``retry_on`` predicate that raises, a limiter or breaker that fails, the
        history refusing the retry event: no item can succeed past that, so the group
        stops as under FAIL_FAST (whatever its strategy), ends FAILED, and collecting
        raises the error itself, with a note saying where it came from.
        """
        what = f"item {item.index} ('{item.name}')" if item is not None else "an item"
        error.add_note(
            f"Raised while parallel group '{self._label}' handled {what} outside the "
            "item's own work (e.g. by a retry_on predicate, a limiter, a circuit breaker "
            "or the history); the group stopped."
        )
        if item is not None and self.results.slots[item.index] is None:
            self.results.fail(item, None, error, 0.0, fatal=True)
        else:
            self.results.stop_with(error)
        self.scheduler.stop()

    async def _finish(self, cancelled: bool, crashed: bool = False) -> None:
        group, tel, scheduler = self._group, self._tel, self.scheduler
        results = self.results.finish(
            self._items.items, scheduler.timed_out, self._settings.timeout, scheduler.backing_off
        )
        failure = self.results.failure
        if cancelled:
            status = GroupStatus.CANCELLED
        elif scheduler.timed_out or failure is not None or group.failed or crashed:
            status = GroupStatus.FAILED
        else:
            status = GroupStatus.COMPLETED
        duration = self._clock.monotonic() - self._started_at
        update(group, status=status, end_time=time.time(), execution_time=duration)
        timed_out = scheduler.timed_out
        timeout = timeout_message(self._label, self._settings.timeout, group) if timed_out else ""
        if scheduler.timed_out and not cancelled:
            self.error = ParallelTimeoutError(timeout, list(results), group)
        elif failure is not None and not cancelled:
            self.error = failure
        elif self.results.pauses and not cancelled:
            # Items wait for a human: the group ended for the others; the enclosing
            # handler pauses in turn (see core.interrupts).
            self.error = Interrupted.merge(self.results.pauses)
        tel.group_finished(
            self._span,
            group,
            status._value_,
            group.cancelled,
            duration,
            scheduler.timed_out,
            error=self.error,
        )
        if tel.enabled:
            tel.queue_changed(group, 0, 0)
        # The manager keeps this run (statistics()); dropping the way back leaves no
        # cycle, so a finished group and its items are freed without the collector.
        manager, self._manager = self._manager, None
        assert manager is not None  # a run finishes once
        manager._ended(results, self.error)
        await publish_group(self._state, group, _TERMINAL[status], scheduler.timed_out, timeout)
        if group.failed and status is not GroupStatus.CANCELLED:
            logger.warning("Parallel group %s: %s", self._label, group.error_summary())
