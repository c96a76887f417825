"""Parallel groups: run independent work concurrently, with limits and resilience.

::

    async with state.parallel(max_workers=4, name="docs") as p:
        for doc in docs:
            p.add(lambda doc=doc: summarize(doc, state), name=doc.id)
        results = await p.gather()

Design:

* A pool of at most ``max_workers`` worker tasks pulls items in add order; factories are
  called only when a worker is free, so a group of 100 000 items holds at most
  ``max_workers`` running coroutines. The time an item waits for a worker is measured
  (telemetry's semaphore wait). A shared :class:`~rh_agents.core.limiter.Limiter` caps
  concurrency across groups on top of that.
* Each item runs under its own item frame, so its address (``.../parallel:docs[3]/...``)
  depends on its index, never on completion order, and group ids derive from the parent
  address, the group name and its ordinal: the same program gives the same ids on every
  run, which is what makes replay possible.
* Failures: FAIL_SLOW (default) records them as ``ok=False`` results; FAIL_FAST cancels
  the running items, never starts queued ones and re-raises the first error. An
  ExecutionEvent call returning ``ok=False`` is a failure like an exception. An error of
  the group's own machinery (a raising ``retry_on`` predicate, a failing limiter, a
  history that cannot be written) stops the group under either strategy.
* Retries back off exponentially with jitter (through the injectable clock) without
  holding a worker; circuit breakers reject calls without running them while open.
* Every exit path (success, FAIL_FAST, timeout, leaving ``stream()``, an exception in the
  ``async with`` body, external cancellation) cancels and awaits all work of the group,
  also when another task runs ``gather()``: the block owns the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import inspect
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from contextvars import ContextVar
from enum import Enum
from functools import lru_cache
from types import CoroutineType, FunctionType, MethodType, TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, PrivateAttr

from rh_agents.core._aio import cancel_and_wait, uninterrupted
from rh_agents.core._validate import is_finite_at_least, is_int_at_least
from rh_agents.core.actors import BaseActor
from rh_agents.core.circuit_breaker import CircuitBreaker, CircuitPermit
from rh_agents.core.context import Frame, current_frame, group_id_for
from rh_agents.core.errors import (
    CircuitOpenError,
    DuplicateNameError,
    EventFailedError,
    ExecutionFailure,
    InvalidArgumentError,
    InvalidWorkError,
    LifecycleError,
    RhAgentsError,
    StateError,
)
from rh_agents.core.events import (
    EventKind,
    ExecutionEvent,
    ExecutionResult,
    clone,
    make_result,
)
from rh_agents.core.executors import ItemExecutor, WorkItem, remote_traceback_of, run_item
from rh_agents.core.hooks import Outcome
from rh_agents.core.limiter import Limiter
from rh_agents.core.retry import RetryConfig
from rh_agents.core.types import ExecutionStatus

if TYPE_CHECKING:
    import random

    from rh_agents.core.execution import ExecutionState

__all__ = [
    "ErrorStrategy",
    "GroupStatus",
    "ParallelDisplayMode",
    "ParallelEventGroup",
    "ParallelExecutionManager",
    "ParallelGroupError",
    "ParallelGroupTracker",
    "ParallelTimeoutError",
]

logger = logging.getLogger("rh_agents.parallel")


class GroupStatus(str, Enum):
    """Lifecycle of a parallel group."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ErrorStrategy(str, Enum):
    """What a group does when an item fails."""

    FAIL_SLOW = "fail_slow"
    """Run every item; failures are ``ok=False`` results (the default)."""
    FAIL_FAST = "fail_fast"
    """Cancel the rest on the first failure and re-raise it."""


class ParallelDisplayMode(str, Enum):
    """How :class:`~rh_agents.bus_handlers.ParallelEventPrinter` shows groups."""

    REALTIME = "realtime"
    PROGRESS = "progress"


_NUMBERS = re.compile(r"\b0x[0-9a-f]+\b|\d+(?:\.\d+)?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.;](?:\s|$)")


def _first_sentence(message: str) -> str:
    text = message.strip().splitlines()[0] if message.strip() else ""
    end = _SENTENCE_END.search(text)
    if end is not None and end.start() > 0:
        text = text[: end.start()]
    return text


def _shorten(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _normalize(message: str) -> str:
    """The category key of an error message: its first sentence, numbers as ``N``."""
    return _shorten(_NUMBERS.sub("N", _first_sentence(message)))


class ParallelEventGroup(BaseModel):
    """The state and counts of one parallel group (``p.group``).

    Attributes:
        group_id: deterministic id (from the parent address, name and ordinal).
        name: the group's name (None for unnamed groups).
        address: the group's address in the invocation tree.
        total / completed / failed / cancelled: item counts.
        retries: retries scheduled so far.
        status: PENDING, RUNNING, then COMPLETED, FAILED or CANCELLED.
        start_time / end_time: wall-clock timestamps (``time.time()``), for display.
        execution_time: seconds the group ran, measured on the state's clock (so a
            :class:`~rh_agents.testing.FakeClock` gives virtual seconds); None until the
            group has ended.
        errors: "Type: message" of every failed item, in completion order. The error
            categories are derived from it, so a group restored from JSON
            (``model_validate_json(group.model_dump_json())``) summarizes the same way.
        timed_out: whether the group's deadline passed.
    """

    group_id: str = ""
    name: str | None = None
    address: str = ""
    total: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    retries: int = 0
    status: GroupStatus = GroupStatus.PENDING
    start_time: float | None = None
    end_time: float | None = None
    execution_time: float | None = None
    error_strategy: ErrorStrategy = ErrorStrategy.FAIL_SLOW
    max_workers: int = 5
    timeout: float | None = None
    timed_out: bool = False
    errors: list[str] = Field(default_factory=list)

    # (type, normalized message) of each entry of ``errors``, in the same order: a cache,
    # built from ``errors`` when a group is restored, and whenever the two disagree.
    _kinds: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: Any, /) -> None:
        if self.errors:
            self._kinds = [_kind_of(entry) for entry in self.errors]

    @property
    def success_rate(self) -> float:
        """Completed items as a fraction of all items (1.0 for an empty group)."""
        return self.completed / self.total if self.total else 1.0

    def _record_failure(self, error_type: str, message: str) -> None:
        detail = message if message and message != error_type else ""
        self.errors.append(f"{error_type}: {detail}" if detail else error_type)
        self._kinds.append((error_type, _normalize(detail)))

    def categorized_errors(self) -> list[tuple[str, str, int]]:
        """(error type, message, count), most frequent first.

        Messages that differ only in numbers (ids, ports, status codes) form one category,
        shown with its numbers as ``N`` ("refused on port N"); a category whose messages
        are all the same shows that message as it is ("HTTP 503 Service Unavailable").
        """
        if len(self._kinds) != len(self.errors):
            self._kinds = [_kind_of(entry) for entry in self.errors]
        counts = Counter(self._kinds)
        shown: dict[tuple[str, str], set[str]] = {}
        for kind, entry in zip(self._kinds, self.errors, strict=True):
            detail = entry.partition(": ")[2]
            shown.setdefault(kind, set()).add(_shorten(_first_sentence(detail)))
        return [
            (kind, next(iter(shown[kind, msg])) if len(shown[kind, msg]) == 1 else msg, n)
            for (kind, msg), n in counts.most_common()
        ]

    def error_summary(self) -> str:
        """E.g. "3 of 10 events failed with 2 error types: ConnectionError 'refused' (2),
        TimeoutError (1)"; an empty string when nothing failed."""
        if not self.failed:
            return ""
        kinds = self.categorized_errors()
        parts = [f"{t} '{m}' ({n})" if m else f"{t} ({n})" for t, m, n in kinds]
        plural = "type" if len(kinds) == 1 else "types"
        return (
            f"{self.failed} of {self.total} events failed with {len(kinds)} error "
            f"{plural}: " + ", ".join(parts)
        )


def _kind_of(entry: str) -> tuple[str, str]:
    """The category of an ``errors`` entry ("Type: message" or "Type")."""
    error_type, _, detail = entry.partition(": ")
    return error_type, _normalize(detail)


class ParallelGroupTracker(BaseModel):
    """What a printer knows about a group from the events it has seen."""

    group_id: str
    name: str | None = None
    total: int = 0
    started: int = 0
    completed: int = 0
    failed: int = 0
    retrying: int = 0
    cancelled: int = 0
    status: GroupStatus = GroupStatus.RUNNING
    start_time: float = Field(default_factory=time.monotonic)
    end_time: float | None = None
    errors: list[str] = Field(default_factory=list)
    parent_group_id: str | None = None

    @property
    def is_complete(self) -> bool:
        """Whether the group has ended (or every known item has finished)."""
        if self.status in (GroupStatus.COMPLETED, GroupStatus.FAILED, GroupStatus.CANCELLED):
            return True
        return self.total > 0 and self.completed + self.failed + self.cancelled >= self.total

    @property
    def completion_percentage(self) -> float:
        """Finished items as a percentage of the total (0-100)."""
        if self.total <= 0:
            return 100.0 if self.is_complete else 0.0
        done = self.completed + self.failed + self.cancelled
        return min(100.0, 100.0 * done / self.total)

    @property
    def in_flight(self) -> int:
        """Items started and not yet finished."""
        return max(0, self.started - self.completed - self.failed - self.cancelled)


class ParallelGroupError(RhAgentsError, ExceptionGroup[Exception]):
    """Raised by :meth:`ParallelExecutionManager.raise_for_failures`: every failure of a
    group, with the categorized summary as its message."""

    group: ParallelEventGroup | None
    """The group's final state (None when built by hand)."""

    def __new__(
        cls, message: str, exceptions: Sequence[Exception], group: ParallelEventGroup | None = None
    ) -> ParallelGroupError:
        self = super().__new__(cls, message, list(exceptions))
        self.group = group
        return self

    def derive(self, excs: Sequence[Exception]) -> ParallelGroupError:  # type: ignore[override]
        return ParallelGroupError(self.message, excs, self.group)


class ParallelTimeoutError(ExecutionFailure, TimeoutError):
    """A group's deadline passed; the completed work is on ``results``.

    Attributes:
        results: one result per item in add order; unfinished ones are ``ok=False``.
        group: the group's final state.
    """

    def __init__(
        self, message: str, results: list[ExecutionResult[Any]], group: ParallelEventGroup
    ) -> None:
        super().__init__(message)
        self.results = results
        self.group = group

    @property
    def completed_results(self) -> list[ExecutionResult[Any]]:
        """Only the results of items that completed."""
        return [r for r in self.results if r.ok]


class _Phase(Enum):
    NEW = "new"
    OPEN = "open"
    RUNNING = "running"
    DONE = "done"
    CLOSED = "closed"


class _Item:
    __slots__ = ("_name", "attempts", "coro", "factory", "index", "ready_at", "started")

    def __init__(
        self,
        index: int,
        name: str | None,
        factory: Callable[[], Awaitable[Any]] | None,
        coro: Awaitable[Any] | None,
    ) -> None:
        self.index = index
        self._name = name
        self.factory = factory
        self.coro = coro
        self.attempts = 0
        self.started = False
        self.ready_at = 0.0

    @property
    def name(self) -> str:
        """The item's name; unnamed items are ``item_<index>`` (see ``add``)."""
        name = self._name
        return f"item_{self.index}" if name is None else name

    def awaitable(self) -> Awaitable[Any]:
        if self.factory is None:
            coro, self.coro = self.coro, None
            if coro is None:
                raise InvalidWorkError(
                    f"Item {self.index} ('{self.name}') is a coroutine object and was already "
                    "awaited; pass a factory (e.g. `lambda: work(x)`) to run it again."
                )
            return coro
        try:
            work = self.factory()
        except TypeError as exc:
            tb = exc.__traceback__
            if tb is not None and tb.tb_next is None:
                # Raised by the call itself, not inside the factory: it needs arguments.
                # That fails the same way on every attempt, so it is a usage error.
                raise InvalidWorkError(
                    f"The factory of item {self.index} ('{self.name}') cannot be called "
                    f"without arguments ({exc}); p.add() calls it with none. Bind the "
                    "arguments first: p.add(lambda: work(x)) or functools.partial(work, x)."
                ) from exc
            raise
        if type(work) is not CoroutineType and not inspect.isawaitable(work):
            raise InvalidWorkError(
                f"The factory of item {self.index} ('{self.name}') returned "
                f"{type(work).__name__}, not an awaitable; pass a zero-argument callable "
                "returning a coroutine, e.g. `lambda: work(x)`."
            )
        return work

    def close(self) -> None:
        coro, self.coro = self.coro, None
        close = getattr(coro, "close", None)
        if close is not None:
            close()


class _Hold:
    """A limiter permit held by one running item.

    While the item waits for a nested group that uses the same limiter, the permit is
    lent to that group (released, then taken back when the nested group ends): an item
    waiting for its children does not use the resource itself, and keeping the permit
    would deadlock as soon as every permit is held by a waiting parent.
    """

    __slots__ = ("held", "lent", "limiter")

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.held = True
        self.lent = 0


_FACTORY_TYPES = (FunctionType, MethodType, functools.partial)
"""Callable types that are never awaitable themselves (the common factories)."""

_holds: ContextVar[tuple[_Hold, ...]] = ContextVar("rh_agents_limiter_holds", default=())
"""The limiter permits held by the items enclosing the current code, outermost first."""


async def _stop_runner(runner: asyncio.Task[None]) -> None:
    """Cancel a stream's runner task and wait for it; never leave its error unretrieved."""
    if not runner.done():
        await cancel_and_wait([runner])
    elif not runner.cancelled():
        runner.exception()


async def _not_run(input_data: Any, extra_context: Any, state: Any) -> None:
    return None  # pragma: no cover - never called


@lru_cache(maxsize=256)
def _placeholder_actor(name: str) -> BaseActor:
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


def _own(result: ExecutionResult[Any]) -> ExecutionResult[Any]:
    """``result``, or a copy of it if it is already some item's result.

    Results are stamped with the item's index, name and attempts in place: the core's
    own results (an ExecutionEvent call's) are fresh objects. One that already has an
    index belongs to another item (a memoized result returned twice, an item of a
    nested group): stamping it again would change that item's result too.
    """
    return result if result.__dict__["index"] is None else clone(result)


_GROUP_EVENT: ExecutionEvent[Any] = ExecutionEvent(kind=EventKind.GROUP, is_parallel=True)
"""The template of group lifecycle events (see ``_group_event``)."""


def _bump(group: ParallelEventGroup, count: str) -> None:
    """``group.<count> += 1`` without pydantic's assignment machinery (once per item)."""
    group.__dict__[count] += 1


def _update(group: ParallelEventGroup, **fields: Any) -> None:
    """Set fields of the group's own model (values of the right types, no validation)."""
    group.__dict__.update(fields)


_GROUP_NAME_RESERVED = "#[]"
"""Characters a group name must not contain: its address would be another one's."""


def _check_group_name(name: object) -> None:
    """Reject group names that cannot be told apart from other addresses.

    ``/`` is allowed: it is replaced by ``_`` in the address, and the per-parent ordinal
    keeps a group ``a/b`` and a group ``a_b`` apart (``parallel:a_b``,
    ``parallel:a_b#1``). ``#`` and ``[ ]`` are not: ``x#1`` would take the address of the
    second group named ``x``, and ``y[0]`` that of item 0 of group ``y``.
    """
    if name is None:
        return
    if not isinstance(name, str):
        raise InvalidArgumentError(f"name must be a string or None, got {name!r}.")
    if not name.strip():
        raise InvalidArgumentError(
            f"A parallel group's name must not be empty or blank, got {name!r}; give it a "
            "name such as 'docs', or leave name= out for an unnamed group."
        )
    bad = sorted(set(name) & set(_GROUP_NAME_RESERVED))
    if bad:
        raise InvalidArgumentError(
            f"Parallel group name {name!r} contains {''.join(bad)!r}; '#', '[' and ']' "
            "structure addresses (a group named 'x#1' would get the address of the second "
            "group named 'x', and 'y[0]' that of item 0 of group 'y'). Use letters, "
            "digits, spaces, '-', '_', '.' or '/'."
        )


def _bad_limiter_message(limiter: object) -> str:
    if isinstance(limiter, str):
        return (
            f"limiter must be a Limiter object, got the string {limiter!r}; limiters are "
            "shared by passing the same object, not by name. Create it once, e.g. "
            f"`shared = Limiter({limiter!r}, max_concurrency=8)`, and pass `limiter=shared` "
            "to every group that calls the resource."
        )
    return (
        f"limiter must be a rh_agents Limiter or None, got {type(limiter).__name__}; "
        "create one with Limiter(name, max_concurrency=...)."
    )


class _Stream(AsyncGenerator[ExecutionResult[Any], None]):
    """What :meth:`ParallelExecutionManager.stream` returns: the group's generator,
    plus a prompt stop of the group's work when the caller drops it (``break``)."""

    __slots__ = ("_gen", "_group", "_started")

    def __init__(
        self,
        group: ParallelExecutionManager,
        gen: AsyncGenerator[ExecutionResult[Any], None],
        started: list[asyncio.Task[None]],
    ) -> None:
        self._group = group
        self._gen = gen
        # The runner, once this stream started the group (shared with the generator,
        # which must not reference the wrapper: that would keep it alive).
        self._started = started

    def __aiter__(self) -> _Stream:
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
                self._group._stream_released(self._started[0])


def _check_positive_int(name: str, value: Any, hint: str) -> int:
    if not is_int_at_least(value, 1):
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}. {hint}")
    return int(value)


class ParallelExecutionManager:
    """Runs the items of one parallel group; created by :meth:`ExecutionState.parallel`.

    Args:
        execution_state: the state the group's events are recorded in.
        max_workers: at most this many items run at once (>= 1).
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
        circuit_breaker_timeout: seconds an open breaker waits before a probe.
        limiter: a shared :class:`~rh_agents.core.limiter.Limiter` capping concurrency
            across groups: the object itself, passed to every group that shares it.
        circuit_breaker: a :class:`~rh_agents.core.circuit_breaker.CircuitBreaker` or
            the name of one in ``execution_state.circuit_breakers`` (shared by name).
        retry_on: exception classes, or a predicate, deciding what is retried.
        non_retryable: exception classes never retried.
        executor: where items run (:class:`~rh_agents.core.executors.AsyncioExecutor`
            by default).
        rng: random source for retry jitter (seed it for reproducible delays).

    Example:
        >>> async with state.parallel(max_workers=3, name="docs") as p:  # doctest: +SKIP
        ...     p.add(lambda: process(doc1), name="doc1")
        ...     results = await p.gather()
    """

    def __init__(
        self,
        execution_state: ExecutionState,
        max_workers: int = 5,
        error_strategy: ErrorStrategy | str = ErrorStrategy.FAIL_SLOW,
        timeout: float | None = None,
        name: str | None = None,
        max_retries: int = 0,
        retry_delay: float = 1.0,
        circuit_breaker_threshold: int | None = None,
        circuit_breaker_timeout: float = 60.0,
        limiter: Limiter | None = None,
        circuit_breaker: CircuitBreaker | str | None = None,
        retry_on: Any = None,
        non_retryable: Sequence[type[BaseException]] = (),
        executor: ItemExecutor | None = None,
        rng: random.Random | None = None,
    ) -> None:
        _check_positive_int("max_workers", max_workers, "Use 1 to run the items one at a time.")
        try:
            strategy = ErrorStrategy(error_strategy)
        except ValueError:
            raise InvalidArgumentError(
                f"Unknown error_strategy {error_strategy!r}; use ErrorStrategy.FAIL_SLOW "
                "or ErrorStrategy.FAIL_FAST."
            ) from None
        if timeout is not None and not is_finite_at_least(timeout, 0, strict=True):
            raise InvalidArgumentError(
                f"timeout must be a positive number of seconds or None, got {timeout!r}."
            )
        _check_group_name(name)
        if limiter is not None and not isinstance(limiter, Limiter):
            raise InvalidArgumentError(_bad_limiter_message(limiter))
        if not is_int_at_least(max_retries, 0):
            raise InvalidArgumentError(
                f"max_retries must be an integer >= 0 (retries after the first attempt), "
                f"got {max_retries!r}. Use 0 for no retries."
            )
        self._retry: RetryConfig | None = None
        if max_retries or retry_delay != 1.0 or retry_on is not None or non_retryable:
            # Built even without retries, so a bad retry_delay or retry_on is reported at
            # once (the defaults need no check).
            retry = RetryConfig.for_group(max_retries, retry_delay, retry_on, non_retryable)
            self._retry = retry if max_retries else None
        self.execution_state = execution_state
        self.max_workers = max_workers
        self.error_strategy = strategy
        self.timeout = float(timeout) if timeout is not None else None
        self.max_retries = max_retries
        self.limiter = limiter
        self.executor = executor
        self._rng = rng
        self._clock = execution_state.clock
        self.circuit_breaker = self._resolve_breaker(
            circuit_breaker, circuit_breaker_threshold, circuit_breaker_timeout, name
        )
        self.group = ParallelEventGroup(
            name=name, max_workers=max_workers, error_strategy=strategy, timeout=self.timeout
        )
        if self.circuit_breaker is not None:
            execution_state.instrumentation.watch_breaker(self.circuit_breaker)
        self.results: list[ExecutionResult[Any]] = []
        self._items: list[_Item] = []
        self._names: set[str] = set()  # explicit names (all names once _all_named)
        self._all_named = False
        self._phase = _Phase.NEW
        self._frame: Frame | None = None
        self._slots: list[ExecutionResult[Any] | None] = []
        self._cursor = 0
        self._delayed: list[tuple[float, int, _Item]] = []
        self._workers: list[asyncio.Task[None]] = []
        self._stop = False
        self._failure: BaseException | None = None
        self._error: BaseException | None = None
        self._timed_out = False
        self._in_flight = 0
        self._peak = 0
        self._queue: asyncio.Queue[int | None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._span: Any = None
        self._started_at = 0.0
        self._lent: list[_Hold] = []
        self._streams: list[AsyncGenerator[ExecutionResult[Any], None]] = []
        self._owner: asyncio.Task[Any] | None = None  # the task that entered the block
        self._coros: dict[Any, int] = {}  # coroutine object -> index, while adding
        self._backing_off: set[int] = set()  # items waiting out a retry backoff
        self._inline = False  # the single worker runs in the group's own task

    def _resolve_breaker(
        self,
        breaker: CircuitBreaker | str | None,
        threshold: int | None,
        cooldown: float,
        name: str | None,
    ) -> CircuitBreaker | None:
        registry = self.execution_state.circuit_breakers
        if isinstance(breaker, CircuitBreaker):
            return breaker
        if isinstance(breaker, str):
            return registry.get(
                breaker,
                failure_threshold=threshold or 5,
                recovery_timeout=cooldown,
                clock=self._clock,
            )
        if breaker is not None:
            raise InvalidArgumentError(
                f"circuit_breaker must be a CircuitBreaker, a breaker name or None, got "
                f"{type(breaker).__name__}."
            )
        if threshold is None:
            return None
        _check_positive_int("circuit_breaker_threshold", threshold, "Or pass None for none.")
        return CircuitBreaker(
            f"parallel:{name or 'group'}",
            failure_threshold=threshold,
            recovery_timeout=cooldown,
            clock=self._clock,
        )

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> ParallelExecutionManager:
        if self._phase is not _Phase.NEW:
            raise LifecycleError(
                "A parallel group can be entered only once; open a new one with "
                "state.parallel(...)."
            )
        parent = self.execution_state._frame()
        label = (self.group.name or "group").replace("/", "_")
        self._frame = parent.child(f"parallel:{label}")
        _update(self.group, address=self._frame.address, group_id=group_id_for(self._frame.address))
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
                    await _stop_runner(self._runner)
                if self.group.status is GroupStatus.PENDING:
                    # The runner was cancelled before its first step: nothing ran.
                    await self._abandon()
        finally:
            self._phase = _Phase.CLOSED
            await self._reclaim()
        return False

    async def _abandon(self) -> None:
        """End a group that never started: every item cancelled before it started."""
        n = len(self._items)
        self.group.total = n
        for item in self._items:
            item.close()
        self._slots = [None] * n
        self._finish_slots()
        self._coros.clear()
        self.results = [r for r in self._slots if r is not None]
        self.group.status = GroupStatus.CANCELLED
        self.group.start_time = self.group.end_time = time.time()
        self.group.execution_time = 0.0
        await uninterrupted(self._publish_group(ExecutionStatus.CANCELLED))

    # --------------------------------------------------------------------- adding

    def add(self, work: Any, name: str | None = None) -> int:
        """Add one item; returns its index.

        Args:
            work: a coroutine object, or a zero-argument callable returning an awaitable
                (a factory; started only when a worker is free, and needed for retries).
            name: unique name of the item (default ``item_<index>``), used by
                :meth:`gather_dict`, printers and results.

        Raises:
            LifecycleError: outside ``async with``, or after execution started.
            InvalidWorkError: ``work`` is not awaitable; a coroutine object in a group
                with retries; the same coroutine object as an earlier item; or an
                ``asyncio.Task`` / ``Future``, which already runs outside the group's
                control (pass a factory that creates the work instead).
            DuplicateNameError: ``name`` is already used in this group.
        """
        if self._phase is not _Phase.OPEN:
            self._close_rejected(work)
            if self._phase is _Phase.NEW:
                raise LifecycleError(
                    "add() must be called inside `async with state.parallel(...) as p:`."
                )
            raise LifecycleError(
                f"Cannot add to parallel group '{self._label}' after its results were "
                "collected or while it runs; open a new group for more work."
            )
        index = len(self._items)
        if name is not None:
            if not isinstance(name, str) or not name:
                self._close_rejected(work)
                raise InvalidArgumentError(
                    f"An item name must be a non-empty string, got {name!r}."
                )
            if not self._all_named and name.startswith("item_"):
                self._name_all()  # it may be an automatic name: check against all of them
            if name in self._names:
                self._close_rejected(work)
                raise DuplicateNameError(
                    f"Parallel group '{self._label}' already has an item named '{name}'; "
                    "item names must be unique: choose another name, or leave name= out "
                    "for an automatic one."
                )
        elif self._all_named:
            name = f"item_{index}"
            suffix = 1
            while name in self._names:  # a caller already chose this name for another item
                name = f"item_{index}#{suffix}"
                suffix += 1
        # Most items are functions or partials; the awaitable check is for the others.
        kind = type(work)
        if kind is CoroutineType or (kind not in _FACTORY_TYPES and inspect.isawaitable(work)):
            if kind is not CoroutineType and isinstance(work, asyncio.Future):
                # A Task already runs: the group could neither limit, time out nor cancel
                # it, and it would outlive the block. Not ours to cancel either.
                raise InvalidWorkError(
                    f"Item '{name or f'item_{index}'}' is an asyncio {type(work).__name__}, "
                    f"which is already running outside the control of group '{self._label}' "
                    "(max_workers, timeout and cancellation cannot apply to it). Pass a "
                    "factory that starts the work instead: p.add(lambda: work(x))."
                )
            if self._retry is not None:
                self._close_rejected(work)
                raise InvalidWorkError(
                    f"Item '{name or f'item_{index}'}' is a coroutine object, which can run "
                    f"only once, but group '{self._label}' retries failed items (max_retries="
                    f"{self.max_retries}). Pass a factory instead: p.add(lambda: work(x))."
                )
            # Only coroutine objects: another awaitable may well be awaitable again.
            first = self._coros.setdefault(work, index) if kind is CoroutineType else index
            if first != index:
                raise InvalidWorkError(
                    f"Item '{name or f'item_{index}'}' is the same coroutine object as item "
                    f"{first} of group '{self._label}'; a coroutine object can run only "
                    "once. Create one per item, or pass a factory: p.add(lambda: work(x))."
                )
            item = _Item(index, name, None, work)
        elif callable(work):
            item = _Item(index, name, work, None)
        else:
            raise InvalidWorkError(
                f"p.add() takes a coroutine object or a zero-argument callable returning "
                f"an awaitable, got {type(work).__name__} {work!r:.60}."
            )
        if name is not None:
            self._names.add(name)
        self._items.append(item)
        return index

    def _name_all(self) -> None:
        """Give every unnamed item its automatic name now, and name new ones at once.

        Automatic names (``item_<index>``) are derived on demand, so a group of unnamed
        items keeps no name per item; an explicit name of that form is the only one
        that can clash with them, and from then on every name is recorded when added.
        """
        self._all_named = True
        for item in self._items:
            if item._name is None:
                item._name = item.name
                self._names.add(item._name)

    @staticmethod
    def _close_rejected(work: Any) -> None:
        if inspect.iscoroutine(work):
            work.close()

    @property
    def _label(self) -> str:
        return self.group.name or self.group.group_id or "unnamed"

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
            await _stop_runner(runner)
            raise
        if not runner.cancelled():
            runner.result()  # raises the group's error (FAIL_FAST, timeout), if any
        elif self.group.status is GroupStatus.PENDING:
            await self._abandon()  # cancelled by the block's exit before it could start

    async def gather_dict(self) -> dict[str, ExecutionResult[Any]]:
        """Like :meth:`gather`, keyed by item name."""
        results = await self.gather()
        return {item.name: result for item, result in zip(self._items, results, strict=True)}

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
        return _Stream(self, stream, started)

    def _stream_released(self, runner: asyncio.Task[None]) -> None:
        """The caller let go of the stream that started ``runner``: stop its work, now.

        Runs from ``_Stream.__del__``, so it only does what needs no awaiting: no new
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
        self._stop = True
        for worker in self._workers:
            worker.cancel()
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
        self._lend()
        runner = asyncio.create_task(self._run())
        self._runner = runner
        started.append(runner)
        try:
            while True:
                index = await queue.get()
                if index is None:
                    break
                slot = self._slots[index]
                assert slot is not None
                yield slot
            await asyncio.wait([runner])
            if runner.cancelled():
                # The group was cancelled by its owner (its block exited) while another
                # task consumed this stream: the stream just ends; p.results tells why.
                return
            runner.result()  # raises the group's error (FAIL_FAST, timeout), if any
        finally:
            await _stop_runner(runner)
            await self._reclaim()

    def _lend(self) -> None:
        """Lend the enclosing items' permits of this group's limiter (see _Hold)."""
        limiter = self.limiter
        if limiter is None:
            return
        for hold in _holds.get():
            if hold.limiter is limiter and (hold.held or hold.lent):
                if hold.held:
                    hold.held = False
                    limiter.release()
                hold.lent += 1
                self._lent.append(hold)

    async def _reclaim(self) -> None:
        """Take back the permits lent by :meth:`_lend` (not while being cancelled)."""
        if not self._lent:
            return
        lent, self._lent = self._lent, []
        task = asyncio.current_task()
        cancelling = task is not None and task.cancelling() > 0
        for hold in lent:
            hold.lent -= 1
            if hold.lent == 0 and not hold.held and not cancelling:
                await hold.limiter.acquire()
                hold.held = True

    def raise_for_failures(self) -> None:
        """Raise :class:`ParallelGroupError` if any item failed (FAIL_SLOW inspection)."""
        failures = [r for r in self.results if not r.ok]
        if not failures:
            return
        excs: list[Exception] = []
        for r in failures:
            if isinstance(r.exception, Exception):
                excs.append(r.exception)
            else:
                excs.append(EventFailedError(r.error_message or "failed", r))
        summary = self.group.error_summary() or f"{len(failures)} items did not complete"
        raise ParallelGroupError(f"Parallel group '{self._label}': {summary}", excs, self.group)

    def statistics(self) -> dict[str, int]:
        """Live counts: running items, peak concurrency, queued and delayed items."""
        return {
            "in_flight": self._in_flight,
            "peak_in_flight": self._peak,
            "queued": max(0, len(self._items) - self._cursor),
            "delayed": len(self._delayed),
        }

    # -------------------------------------------------------------------- running

    async def _run(self) -> None:
        state = self.execution_state
        tel = state.instrumentation
        items = self._items
        n = len(items)
        group = self.group
        _update(group, total=n, status=GroupStatus.RUNNING, start_time=time.time())
        self._coros.clear()
        self._slots = [None] * n
        self._started_at = self._clock.monotonic()
        for item in items:
            item.ready_at = self._started_at
        self._span = tel.group_started(group, self.error_strategy.value)
        # One worker and no deadline: run it in this task. A task of its own would only
        # add event-loop round trips (most of a small group's fixed cost), and without a
        # watchdog only this task's own canceller can stop it. Not in a task that has
        # been cancelled before (a pending or swallowed request): there, a CancelledError
        # could not be told apart from an item's own.
        task = asyncio.current_task()
        inline = (
            min(self.max_workers, n) == 1
            and self.timeout is None
            and task is not None
            and task.cancelling() == 0
        )
        self._inline = inline
        cancelled = False
        workers: list[asyncio.Task[None]] = []
        watchdog: asyncio.Task[None] | None = None
        errors: list[BaseException] = []
        try:
            await state.publish_event(self._group_event(ExecutionStatus.STARTED))
            if tel.enabled:
                tel.queue_changed(group, 0, n)
            if inline:
                await self._worker()
                workers = []
            else:
                workers = [
                    asyncio.create_task(self._worker()) for _ in range(min(self.max_workers, n))
                ]
            self._workers = workers
            if self.timeout is not None and n:
                watchdog = asyncio.create_task(self._watchdog(self.timeout))
            if workers:
                # Workers handle their own errors (see _worker); one that dies anyway
                # (KeyboardInterrupt, ...) ends the wait at once.
                await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            # Workers check _stop between items, so one whose item swallowed the
            # cancellation still ends instead of running the rest of the queue.
            self._stop = True
            interrupted = False
            try:
                if workers or watchdog is not None:
                    errors = await cancel_and_wait([*workers, watchdog])
            except asyncio.CancelledError:
                # Cancelled (again) while waiting for the workers: they are finished
                # all the same, and the group must still record how it ended.
                cancelled = interrupted = True
            for item in items:
                item.close()
            finish = self._finish(cancelled, tel, crashed=bool(errors))
            if state.event_bus._listening():
                # Subscribers may suspend it: the final status must still be recorded.
                await uninterrupted(finish)
            else:
                await finish  # nothing in it can suspend, so nothing can interrupt it
            if interrupted:
                raise asyncio.CancelledError
        if errors:  # a worker died of a BaseException its error handling does not take
            raise errors[0]
        if self._error is not None:
            raise self._error

    async def _finish(self, cancelled: bool, tel: Any, crashed: bool = False) -> None:
        group = self.group
        self._finish_slots()
        self.results = [r for r in self._slots if r is not None]
        if cancelled:
            status = GroupStatus.CANCELLED
        elif self._timed_out or self._failure is not None or group.failed or crashed:
            status = GroupStatus.FAILED
        else:
            status = GroupStatus.COMPLETED
        _update(group, status=status, end_time=time.time())
        duration = self._clock.monotonic() - self._started_at
        _update(group, execution_time=duration)
        if self._timed_out and not cancelled:
            self._error = ParallelTimeoutError(self._timeout_message(), list(self.results), group)
        elif self._failure is not None and not cancelled:
            self._error = self._failure
        if self._queue is not None:
            self._queue.put_nowait(None)
        tel.group_finished(
            self._span,
            group,
            status.value,
            group.cancelled,
            duration,
            self._timed_out,
            error=self._error,
        )
        if tel.enabled:
            tel.queue_changed(group, 0, 0)
        terminal = {
            GroupStatus.COMPLETED: ExecutionStatus.COMPLETED,
            GroupStatus.FAILED: ExecutionStatus.FAILED,
            GroupStatus.CANCELLED: ExecutionStatus.CANCELLED,
        }[status]
        self._phase = _Phase.DONE
        await self._publish_group(terminal)
        if group.failed and status is not GroupStatus.CANCELLED:
            logger.warning("Parallel group %s: %s", self._label, group.error_summary())

    def _timeout_message(self) -> str:
        g = self.group
        return (
            f"Parallel group '{self._label}' timed out after {self.timeout}s. Completed "
            f"{g.completed}/{g.total} events. Consider increasing timeout or max_workers."
        )

    def _finish_slots(self) -> None:
        group = self.group
        for item in self._items:
            if self._slots[item.index] is not None:
                continue
            if self._timed_out:
                message = (
                    f"Item {item.index} ('{item.name}') did not finish before the group's "
                    f"{self.timeout}s timeout."
                )
                error_type = "TimeoutError"
            elif item.index in self._backing_off:
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
            self._slots[item.index] = make_result(
                ok=False,
                error_message=message,
                error_type=error_type,
                index=item.index,
                name=item.name,
                attempts=item.attempts,
                status=ExecutionStatus.CANCELLED,
            )
            _bump(group, "cancelled")

    async def _watchdog(self, seconds: float) -> None:
        await self._clock.sleep(seconds)
        if all(slot is not None for slot in self._slots):
            return  # everything finished at the deadline itself: not a timeout
        self._timed_out = True
        self._stop = True
        for worker in self._workers:
            worker.cancel()

    def _next(self) -> _Item | None:
        # A retry whose backoff has passed goes before items that have not started yet,
        # so a long queue does not postpone it indefinitely.
        if self._delayed and self._delayed[0][0] <= self._clock.monotonic():
            return heapq.heappop(self._delayed)[2]
        if self._cursor < len(self._items):
            item = self._items[self._cursor]
            self._cursor += 1
            return item
        if self._delayed:
            return heapq.heappop(self._delayed)[2]
        return None

    async def _worker(self) -> None:
        clock = self._clock
        item: _Item | None = None
        inline = self._inline
        task = asyncio.current_task() if inline else None
        try:
            while not self._stop:
                if inline and task is not None and task.cancelling():
                    # An item swallowed the cancellation of the task running the group
                    # inline: stop here rather than run the rest of the queue.
                    raise asyncio.CancelledError
                item = self._next()
                if item is None:
                    return
                if item.attempts:  # a retry, ready after its backoff (first attempts are)
                    delay = item.ready_at - clock.monotonic()
                    if delay > 0:
                        await clock.sleep(delay)
                        if self._stop:  # pragma: no cover - stopping cancels the sleep first
                            return
                await self._attempt(item)
        except Exception as exc:
            # Not the item's work (its errors are results): the group's own machinery
            # failed around it. Going on would hide the error and run the rest anyway.
            self._crash(item, exc)

    def _crash(self, item: _Item | None, error: Exception) -> None:
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
        if item is not None and self._slots[item.index] is None:
            self._fail(item, None, error, 0.0, fatal=True)
            return
        if self._failure is None:
            self._failure = error
        self._stop = True
        me = asyncio.current_task()
        for worker in self._workers:
            if worker is not me:
                worker.cancel()

    async def _attempt(self, item: _Item) -> None:
        state = self.execution_state
        tel = state.instrumentation
        traced = tel.enabled
        clock = self._clock
        group = self.group
        limiter = self.limiter
        hold: _Hold | None = None
        if limiter is not None:
            await limiter.acquire()
            hold = _Hold(limiter)
        permit: CircuitPermit | None = None
        value: Any = None
        error: BaseException | None = None
        attempts = item.attempts
        if attempts:
            self._backing_off.discard(item.index)
        item.attempts = attempts + 1
        item.started = True
        assert self._frame is not None
        item_frame = self._frame.item(item.index, group.group_id)
        token = current_frame.set(item_frame)
        holds_token = _holds.set((*_holds.get(), hold)) if hold is not None else None
        self._in_flight += 1
        if self._in_flight > self._peak:
            self._peak = self._in_flight
        handle = None
        # The outer finally gives back what was taken above whatever raises, including
        # the clock and telemetry: a permit or an in-flight count must never leak.
        try:
            started = clock.monotonic()
            if traced:
                tel.queue_changed(group, self._in_flight, len(self._items) - self._cursor)
                # The wait for a worker slot (and the limiter): from ready to running.
                handle = tel.item_started(
                    self._span, group, item.index, started - item.ready_at, attempt=item.attempts
                )
            try:
                if self.circuit_breaker is not None:
                    permit = self.circuit_breaker.admit()
                if self.executor is None:
                    value = await item.awaitable()
                else:
                    work = WorkItem(
                        item.index,
                        item.name,
                        group.group_id,
                        item.attempts,
                        item.awaitable,
                        work=item.factory,
                    )
                    value = await run_item(self.executor, work, item_frame, state)
                if isinstance(value, ExecutionResult) and not value.ok:
                    error = value.exception or EventFailedError(
                        value.error_message or "The event failed.", value
                    )
            except asyncio.CancelledError as exc:
                if permit is not None and self.circuit_breaker is not None:
                    self.circuit_breaker.release(permit)
                    permit = None
                task = asyncio.current_task()
                if task is None or task.cancelling() or self._stop:
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
            if holds_token is not None:
                _holds.reset(holds_token)
            self._in_flight -= 1
            if hold is not None and hold.held:
                hold.held = False
                hold.limiter.release()
            if traced:
                tel.queue_changed(group, self._in_flight, len(self._items) - self._cursor)
        elapsed = clock.monotonic() - started
        if permit is not None and self.circuit_breaker is not None:
            if error is None:
                self.circuit_breaker.record_success(permit)
            else:
                self.circuit_breaker.record_failure(permit)
        if error is None:
            if traced:
                tel.item_finished(handle, group, Outcome.COMPLETED, None)
            self._complete(item, value, elapsed)
            return
        retry = self._retry
        # An error of the history itself (disk full, another program's history) is not
        # the item's failure: retrying or going on cannot help, so it stops the group.
        fatal = isinstance(error, StateError)
        if (
            retry is not None
            and not fatal
            and not self._stop
            and retry.should_retry(error)
            and item.attempts < retry.max_attempts
        ):
            delay = retry.calculate_delay(item.attempts, error, self._rng)
            if traced:
                tel.item_finished(handle, group, Outcome.FAILED, error, final=False)
            await self._schedule_retry(item, value, error, delay)
            return
        outcome = Outcome.REJECTED if isinstance(error, CircuitOpenError) else Outcome.FAILED
        if traced:
            tel.item_finished(handle, group, outcome, error)
        self._fail(item, value, error, elapsed, fatal)

    def _complete(self, item: _Item, value: Any, elapsed: float) -> None:
        if isinstance(value, ExecutionResult):
            result = _own(value)
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
        self._slots[item.index] = result
        _bump(self.group, "completed")
        if self._queue is not None:
            self._queue.put_nowait(item.index)

    def _fail(
        self, item: _Item, value: Any, error: BaseException, elapsed: float, fatal: bool = False
    ) -> None:
        if isinstance(value, ExecutionResult):
            result = _own(value)
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
        self._slots[item.index] = result
        _bump(self.group, "failed")
        self.group._record_failure(error_type, message)
        if self.error_strategy is ErrorStrategy.FAIL_FAST or fatal:
            if self._failure is None:
                self._failure = self._fail_fast_error(item, value, error, message)
            self._stop = True
            me = asyncio.current_task()
            for worker in self._workers:
                if worker is not me:
                    worker.cancel()
        elif self._queue is not None:
            self._queue.put_nowait(item.index)

    def _fail_fast_error(
        self, item: _Item, value: Any, error: BaseException, message: str
    ) -> BaseException:
        """What FAIL_FAST raises: the item's own exception, or EventFailedError for an
        ExecutionEvent that returned ``ok=False`` (its handler's exception as cause)."""
        where = f"Item {item.index} ('{item.name}') of parallel group '{self._label}'"
        if isinstance(value, ExecutionResult):
            failure = EventFailedError(f"{where} failed: {message}", value)
            failure.__cause__ = value.exception
            return failure
        if not isinstance(error, Exception):
            failure = EventFailedError(
                f"{where} raised {type(error).__name__} although the group was not "
                "cancelled; an item must not let a cancellation of its own escape."
            )
            failure.__cause__ = error
            return failure
        return error

    async def _schedule_retry(
        self, item: _Item, value: Any, error: BaseException, delay: float
    ) -> None:
        self.group.retries += 1
        item.ready_at = self._clock.monotonic() + delay
        heapq.heappush(self._delayed, (item.ready_at, item.index, item))
        self._backing_off.add(item.index)
        message = (
            value.error_message
            if isinstance(value, ExecutionResult) and value.error_message
            else (str(error) or type(error).__name__)
        )
        address = value.address if isinstance(value, ExecutionResult) else None
        actor = None
        if isinstance(value, ExecutionResult):
            actor = value.metadata.get("actor")
        assert self._frame is not None
        label = actor or item.name
        operation = value.metadata.get("event_type") if isinstance(value, ExecutionResult) else None
        # Metric labels must stay low-cardinality: an item that never reached an actor
        # (a plain coroutine, a breaker rejection) is counted under its group's name.
        self.execution_state.instrumentation.item_retrying(
            self.group,
            actor or self.group.name or "unnamed",
            operation,
            item.attempts,
            delay,
            error,
            index=item.index,
        )
        event: ExecutionEvent[Any] = ExecutionEvent(
            actor=_placeholder_actor(label),
            actor_name=label,
            address=address or f"{self._frame.address}[{item.index}]",
            execution_status=ExecutionStatus.RETRYING,
            group_id=self.group.group_id,
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
        await self.execution_state.publish_event(event)

    def _group_event(self, status: ExecutionStatus) -> ExecutionEvent[Any]:
        g = self.group
        label = g.name or "group"
        message = g.error_summary() or None
        if self._timed_out and status is not ExecutionStatus.STARTED:
            timeout = self._timeout_message()
            message = f"{timeout} {message}" if message else timeout
        # Every field is the group's own, of the right type: no validation to pay for.
        return clone(
            _GROUP_EVENT,
            actor=_placeholder_actor(f"parallel:{label}"),
            actor_name=f"parallel:{label}",
            address=g.address,
            execution_status=status,
            group_id=g.group_id,
            execution_time=g.execution_time,
            message=message,
            timestamp=time.time(),
            metadata={
                "group_name": g.name,
                "total": g.total,
                "completed": g.completed,
                "failed": g.failed,
                "cancelled": g.cancelled,
                "retries": g.retries,
                "max_workers": g.max_workers,
                "error_strategy": g.error_strategy.value,
                "timeout": g.timeout,
                "timed_out": g.timed_out or self._timed_out,
                "status": g.status.value,
            },
        )

    async def _publish_group(self, status: ExecutionStatus) -> None:
        _update(self.group, timed_out=self._timed_out)
        await self.execution_state.publish_event(self._group_event(status))
