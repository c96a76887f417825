"""ParallelExecutionManager: the ``async with state.parallel(...) as p`` block.

The group object users hold: it checks its arguments, takes items (``p.add``), and
owns the block: entering gives the group its address and id, collecting (``gather``,
``gather_dict``, ``stream``) starts one :class:`~rh_agents.core.parallel.run.GroupRun`,
and leaving the block, by any path, ends all work of the group. Whoever collects, the
block owns the group: ``gather()`` from another task runs in a task the block's exit can
cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from enum import Enum
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rh_agents.core._aio import uninterrupted
from rh_agents.core._validate import ExceptionClasses
from rh_agents.core.circuit_breaker import CircuitBreaker
from rh_agents.core.context import Frame, group_id_for
from rh_agents.core.errors import LifecycleError
from rh_agents.core.executors import ItemExecutor
from rh_agents.core.limiter import Limiter
from rh_agents.core.parallel import config
from rh_agents.core.parallel.items import ItemList, close_rejected
from rh_agents.core.parallel.lending import Hold, lend, reclaim
from rh_agents.core.parallel.models import (
    ErrorStrategy,
    GroupSettings,
    GroupStatistics,
    GroupStatus,
    ParallelEventGroup,
    label_of,
    new_group,
    update,
)
from rh_agents.core.parallel.results import (
    Results,
    ResultStream,
    failures_error,
    publish_group,
    stop_runner,
)
from rh_agents.core.parallel.run import GroupRun
from rh_agents.core.policy import Policy
from rh_agents.core.result import ExecutionResult
from rh_agents.core.types import ExecutionStatus

if TYPE_CHECKING:
    import random

    from rh_agents.core.execution import ExecutionState

__all__ = ["ParallelExecutionManager"]


class _Phase(Enum):
    NEW = "new"
    OPEN = "open"
    RUNNING = "running"
    DONE = "done"
    CLOSED = "closed"


class ParallelExecutionManager:
    """Runs the items of one parallel group; created by :meth:`ExecutionState.parallel`.

    Args:
        execution_state: the state the group's events are recorded in.
        max_workers: at most this many items run at once (>= 1); None for as many as
            the group has items, at most
            :data:`~rh_agents.core.parallel.DEFAULT_MAX_WORKERS` (32).
        error_strategy: FAIL_SLOW (default) or FAIL_FAST (also as strings).
        timeout: deadline in seconds for the whole group, counted from the start of
            execution; None for no deadline.
        name: shown in printers, spans and metrics; part of the group id. Not empty or
            blank, and without ``#``, ``[`` or ``]`` (they structure addresses); a ``/``
            becomes ``_`` in the address.
        max_retries: retries per item after the first attempt (items must be factories).
        retry_delay: first backoff delay in seconds (exponential, with jitter).
        circuit_breaker_threshold: consecutive failures that open the group's own
            breaker; None (default) for no breaker unless ``circuit_breaker`` is given.
        circuit_breaker_timeout: seconds an open breaker waits before a probe (None:
            60 for a new breaker; a breaker shared by name keeps its own).
        limiter: a shared :class:`~rh_agents.core.limiter.Limiter` capping concurrency
            across groups: the object itself, passed to every group that shares it.
        circuit_breaker: a :class:`~rh_agents.core.circuit_breaker.CircuitBreaker` or
            the name of one in ``execution_state.circuit_breakers`` (shared by name; the
            threshold and timeout given must agree with the shared breaker's, or be
            left out).
        retry_on: exception classes (a class, or a tuple, list or set of them), or a
            predicate ``fn(exc) -> bool``, deciding what is retried.
        non_retryable: exception classes never retried (a class, or a tuple, list or
            set of them).
        executor: where items run: an executor object such as
            :class:`rh_agents.executors.ProcessPoolItemExecutor` (None: in the event
            loop, like :class:`~rh_agents.core.executors.AsyncioExecutor`).
        rng: random source for retry jitter (seed it for reproducible delays).
        policy: the guards of every attempt of every item, as one
            :class:`~rh_agents.core.policy.Policy` (retry, breaker, limiter, and a
            per-attempt ``timeout``). ``max_retries``, ``retry_delay``, ``retry_on``,
            ``non_retryable``, ``circuit_breaker*`` and ``limiter`` are shortcuts that
            build one; give either the policy or shortcuts, not both.
        item_timeout: seconds each attempt of each item may take (the policy's
            ``timeout``): a slow item fails with
            :class:`~rh_agents.core.errors.AttemptTimeoutError`, the others go on, and a
            retry gets a fresh deadline. ``timeout`` bounds the whole group instead.

    Attributes:
        policy: the group's policy (given, or built from the shortcuts); None when the
            group has no guard.

    Example:
        >>> async with state.parallel(max_workers=3, name="docs") as p:  # doctest: +SKIP
        ...     p.add(lambda: process(doc1), name="doc1")
        ...     results = await p.gather()
    """

    def __init__(
        self,
        execution_state: ExecutionState,
        max_workers: int | None = 5,
        error_strategy: ErrorStrategy | str = ErrorStrategy.FAIL_SLOW,
        timeout: float | None = None,
        name: str | None = None,
        max_retries: int = 0,
        retry_delay: float = 1.0,
        circuit_breaker_threshold: int | None = None,
        circuit_breaker_timeout: float | None = None,
        limiter: Limiter | None = None,
        circuit_breaker: CircuitBreaker | str | None = None,
        retry_on: ExceptionClasses | Callable[[BaseException], bool] | None = None,
        non_retryable: ExceptionClasses = (),
        executor: ItemExecutor | None = None,
        rng: random.Random | None = None,
        policy: Policy | None = None,
        item_timeout: float | None = None,
    ) -> None:
        workers = config.check_max_workers(max_workers)
        strategy = config.error_strategy(error_strategy)
        self.timeout: float | None = config.check_timeout(timeout)
        config.check_group_name(name)
        shortcuts = {
            "max_retries": max_retries,
            "retry_delay": retry_delay,
            "retry_on": retry_on,
            "non_retryable": non_retryable,
            "circuit_breaker": circuit_breaker,
            "circuit_breaker_threshold": circuit_breaker_threshold,
            "circuit_breaker_timeout": circuit_breaker_timeout,
            "limiter": limiter,
            "item_timeout": item_timeout,
        }
        config.check_executor(executor)
        self.policy: Policy | None = config.group_policy(
            policy, shortcuts, name, execution_state.circuit_breakers, execution_state.clock
        )
        self.execution_state = execution_state
        self.max_workers: int | None = workers
        self.error_strategy = strategy
        guards = self.policy
        self.max_retries: int = guards.max_attempts - 1 if guards is not None else 0
        self.limiter: Limiter | None = guards.limiter if guards is not None else None
        self.circuit_breaker: CircuitBreaker | None = guards.breaker if guards is not None else None
        self.executor = executor
        self._rng = rng
        self.group: ParallelEventGroup = new_group(
            name, config.DEFAULT_MAX_WORKERS if workers is None else workers, strategy, self.timeout
        )
        if self.circuit_breaker is not None:
            execution_state.instrumentation.watch_breaker(self.circuit_breaker)
        self.results: list[ExecutionResult[Any]] = []
        self._items = ItemList(self.group, self.max_retries)
        self._phase = _Phase.NEW
        self._frame: Frame | None = None
        self._run_now: GroupRun | None = None  # the run, once collecting started it
        self._error: BaseException | None = None
        self._queue: asyncio.Queue[int | None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._lent: list[Hold] = []
        self._streams: list[AsyncGenerator[ExecutionResult[Any], None]] = []
        self._owner: asyncio.Task[Any] | None = None  # the task that entered the block

    # ---------------------------------------------------------------- lifecycle

    if not TYPE_CHECKING:  # type checkers keep flagging a plain `with` as an error

        def __enter__(self) -> None:
            raise LifecycleError(
                "A parallel group is an async context manager: use `async with "
                "state.parallel(...) as p:` inside an `async def` (a plain `with` cannot "
                "run the group's items)."
            )

        def __exit__(self, *exc_info: object) -> None:
            return None  # pragma: no cover - __enter__ always raises

    async def __aenter__(self) -> ParallelExecutionManager:
        if self._phase is not _Phase.NEW:
            raise LifecycleError(
                "A parallel group can be entered only once; open a new one with "
                "state.parallel(...)."
            )
        parent = self.execution_state.current_frame()
        label = (self.group.name or "group").replace("/", "_")
        self._frame = parent.child(f"parallel:{label}")
        update(self.group, address=self._frame.address, group_id=group_id_for(self._frame.address))
        self._owner = asyncio.current_task()
        self._phase = _Phase.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            if self._phase is _Phase.OPEN:
                if exc_type is None:
                    await self.gather()
                else:
                    await self._abandon()
            else:
                # A stream left early (break) or the body raised while streaming, or
                # another task still runs gather(): close the stream here rather than
                # leave it to the garbage collector, and cancel the group's runner task,
                # so all work is cancelled and awaited before the block exits.
                for stream in self._streams:
                    with contextlib.suppress(RuntimeError):  # being iterated by another task
                        await stream.aclose()
                if self._runner is not None:
                    await stop_runner(self._runner)
                if self.group.status is GroupStatus.PENDING:
                    # The runner was cancelled before its first step: nothing ran.
                    await self._abandon()
        finally:
            self._phase = _Phase.CLOSED
            if self._lent:
                await self._reclaim()
        return False

    async def _abandon(self) -> None:
        """End a group that never started: every item cancelled before it started."""
        items = self._items
        self.group.total = len(items)
        items.close()
        unstarted = Results(self.group, self._label, self.error_strategy, len(items))
        self.results = unstarted.finish(items.items, False, self.timeout, set())
        items.forget_coroutines()
        self.group.status = GroupStatus.CANCELLED
        self.group.start_time = self.group.end_time = time.time()
        self.group.execution_time = 0.0
        await uninterrupted(
            publish_group(self.execution_state, self.group, ExecutionStatus.CANCELLED, False, "")
        )

    def _ended(self, results: list[ExecutionResult[Any]], error: BaseException | None) -> None:
        """The run ended with ``results`` (``error``: what collecting raises)."""
        self.results = results
        if error is not None:
            self._error = error
        self._phase = _Phase.DONE

    # --------------------------------------------------------------------- adding

    def add(self, work: Any, name: str | None = None, *, priority: int = 0) -> int:
        """Add one item; returns its index.

        Args:
            work: a coroutine object, or a zero-argument callable returning an awaitable
                (a factory; started only when a worker is free, and needed for retries).
            name: unique name of the item (default ``item_<index>``), used by
                :meth:`gather_dict`, printers and results.
            priority: among the items waiting for a worker, a higher priority starts
                first; equal priorities start in add order (the default 0 for all: add
                order). Results, indexes and addresses stay in add order.

        Items can also be added while the group runs, from inside an item or from the
        ``async with`` body (e.g. while consuming :meth:`stream`), until its last item
        has finished: they count in the group's total and appear in :meth:`gather` and
        :meth:`stream` like the others, in add order. Their addresses do not depend on
        timing: ``[3.0]`` is the first item added by item 3, ``[+0]`` the first added by
        the body, so a resumed run that adds the same items replays them.

        Raises:
            LifecycleError: outside ``async with``, or after the group's last item has
                finished (or the group stopped: FAIL_FAST, timeout, cancellation).
            InvalidWorkError: ``work`` is not awaitable; a coroutine object in a group
                with retries; the same coroutine object as an earlier item; or an
                ``asyncio.Task`` / ``Future``, which already runs outside the group's
                control (pass a factory that creates the work instead).
            DuplicateNameError: ``name`` is already used in this group.
        """
        if self._phase is _Phase.OPEN:
            return self._items.add(work, name, priority)
        run = self._run_now
        if self._phase is _Phase.RUNNING:
            if run is None:  # collecting started, the run not yet: it takes this item
                return self._items.add(work, name, priority)
            if run.accepting and not run.scheduler.stopping:
                return run.add(work, name, priority)
        close_rejected(work)
        if self._phase is _Phase.NEW:
            raise LifecycleError(
                "add() must be called inside `async with state.parallel(...) as p:`."
            )
        raise LifecycleError(
            f"Cannot add to parallel group '{self._label}' after its results were "
            "collected (its last item has finished, or it was stopped); open a new group "
            "for more work."
        )

    @property
    def _label(self) -> str:
        return label_of(self.group)

    # ------------------------------------------------------------------ collecting

    def _check_collectable(self, method: str) -> None:
        if self._phase is _Phase.NEW:
            raise LifecycleError(
                f"{method}() must be called inside `async with state.parallel(...) as p:`."
            )
        if self._phase is _Phase.RUNNING:
            raise LifecycleError(
                f"{method}() cannot run while the group is already running (a stream() "
                "is consuming it); use one way of collecting results per group."
            )

    async def gather(self) -> list[ExecutionResult[Any]]:
        """Run every item and return their results in add order.

        Returns:
            One :class:`ExecutionResult` per item; failed items have ``ok=False``.
            Calling it again returns the same results.

        Called from another task than the one running the ``async with`` block (e.g.
        ``asyncio.create_task(p.gather())``), the group still ends with the block: the
        block's exit cancels whatever has not finished and waits for it, and this call
        then returns the results, the unfinished ones cancelled.

        Raises:
            ParallelTimeoutError: the group's timeout passed (partial results attached).
            Exception: under FAIL_FAST, the first failure (its own type); also an error
                of the group's own machinery (a ``retry_on`` predicate that raised, a
                failing limiter, a history that cannot be written), which stops the group.
        """
        self._check_collectable("gather")
        if self._phase is _Phase.OPEN:
            self._phase = _Phase.RUNNING
            self._lend()
            try:
                if asyncio.current_task() is self._owner:
                    await self._run()
                else:
                    await self._run_for_other_task()
            finally:
                if self._lent:
                    await self._reclaim()
        if self._error is not None:
            raise self._error
        return list(self.results)

    async def _run_for_other_task(self) -> None:
        """Run the group in a task of its own, which the block's exit can cancel.

        Cancelling the calling task would cancel whatever else that task does; the
        runner task holds only the group's work.
        """
        runner = asyncio.create_task(self._run())
        self._runner = runner
        try:
            await asyncio.wait([runner])
        except asyncio.CancelledError:
            await stop_runner(runner)
            raise
        if not runner.cancelled():
            runner.result()  # raises the group's error (FAIL_FAST, timeout), if any
        elif self.group.status is GroupStatus.PENDING:
            await self._abandon()  # cancelled by the block's exit before it could start

    async def gather_dict(self) -> dict[str, ExecutionResult[Any]]:
        """Like :meth:`gather`, keyed by item name."""
        results = await self.gather()
        return {item.name: result for item, result in zip(self._items.items, results, strict=True)}

    def stream(self) -> AsyncGenerator[ExecutionResult[Any], None]:
        """Yield results as items finish (completion order, failures included).

        Leaving the loop early (``break``, an exception in the loop) cancels the
        remaining work at once: no further item starts, running ones are cancelled, and
        the block's exit waits for them. That happens when the loop drops the stream;
        a stream kept in a variable is stopped by ``aclose()`` (e.g. through
        ``contextlib.aclosing``) or by the block's exit. With a timeout, results that
        completed are yielded before the :class:`ParallelTimeoutError` is raised. A
        stream consumed by another task ends when the group is cancelled under it.

        Raises:
            LifecycleError: (on first iteration) outside ``async with``, or when the
                group's results are already being or have been collected.
        """
        started: list[asyncio.Task[None]] = []
        stream = self._stream(started)
        # The group keeps the generator itself, so that leaving the loop early does not
        # hand its cleanup to the garbage collector (asyncio would run it in a task of
        # its own, after the block may have exited): the block's exit closes it. The
        # caller gets a thin wrapper whose release stops the work synchronously.
        self._streams.append(stream)
        return ResultStream(stream, started, self._stream_released)

    def _stream_released(self, runner: asyncio.Task[None]) -> None:
        """The caller let go of the stream that started ``runner``: stop its work, now.

        Runs from ``ResultStream.__del__``, so it only does what needs no awaiting: no new
        item starts, and the running ones (and the runner) are cancelled. Awaiting them
        is left to the block's exit (or to ``aclose()``).
        """
        if runner.done():
            return  # the stream was consumed to its end, or closed
        try:
            if runner.get_loop() is not asyncio.get_running_loop():
                return
        except RuntimeError:  # released outside the loop (garbage collected at shutdown)
            return
        if self._run_now is not None:
            self._run_now.scheduler.stop()
        runner.cancel()

    async def _stream(
        self, started: list[asyncio.Task[None]]
    ) -> AsyncGenerator[ExecutionResult[Any], None]:
        self._check_collectable("stream")
        if self._phase is not _Phase.OPEN:
            raise LifecycleError(
                f"stream() can be used once per group, before the results were collected; "
                f"group '{self._label}' has already run. Use p.results."
            )
        self._phase = _Phase.RUNNING
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        self._queue = queue
        waits = asyncio.Event()  # the consumer found the queue empty: it may add more
        self._lend()
        runner = asyncio.create_task(self._run(waits))
        self._runner = runner
        started.append(runner)
        try:
            while True:
                if queue.empty():
                    waits.set()
                index = await queue.get()
                waits.clear()
                if index is None:
                    break
                assert self._run_now is not None
                slot = self._run_now.results.slots[index]
                assert slot is not None
                yield slot
            await asyncio.wait([runner])
            if runner.cancelled():
                # The group was cancelled by its owner (its block exited) while another
                # task consumed this stream: the stream just ends; p.results tells why.
                return
            runner.result()  # raises the group's error (FAIL_FAST, timeout), if any
        finally:
            await stop_runner(runner)
            await self._reclaim()

    def _lend(self) -> None:
        """Lend the enclosing items' permits of this group's limiter (see lending)."""
        if self.limiter is not None:
            self._lent.extend(lend(self.limiter))

    async def _reclaim(self) -> None:
        """Take back the permits lent by :meth:`_lend` (not while being cancelled)."""
        if not self._lent:
            return
        lent, self._lent = self._lent, []
        await reclaim(lent)

    def raise_for_failures(self) -> None:
        """Raise :class:`ParallelGroupError` if any item failed (FAIL_SLOW inspection)."""
        error = failures_error(self.results, self.group, self._label)
        if error is not None:
            raise error

    def statistics(self) -> GroupStatistics:
        """Live counts: running items, peak concurrency, queued and delayed items.

        Returns:
            A frozen :class:`~rh_agents.core.parallel.models.GroupStatistics`, also
            readable as a mapping (``p.statistics()["in_flight"]``). The group's guards
            count in ``p.policy.statistics()``.
        """
        run = self._run_now
        if run is not None:
            return run.statistics()
        return GroupStatistics(0, 0, len(self._items), 0)

    # -------------------------------------------------------------------- running

    async def _run(self, consumer_waits: asyncio.Event | None = None) -> None:
        assert self._frame is not None
        workers = self.max_workers
        if workers is None:
            # As many workers as items, up to the default cap; the span, the metrics and
            # the printers show the number of workers the group really gets.
            workers = config.DEFAULT_MAX_WORKERS
            update(self.group, max_workers=max(1, min(len(self._items), workers)))
        settings = GroupSettings(
            max_workers=workers,
            error_strategy=self.error_strategy,
            timeout=self.timeout,
            policy=None if self.policy is None or self.policy.is_empty else self.policy,
            rng=self._rng,
            executor=self.executor,
        )
        run = GroupRun(self, self._items, settings, self._frame, self._queue, consumer_waits)
        self._run_now = run
        await run.execute()
