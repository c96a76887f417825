"""ExecutionState, EventBus and HistorySet: the run-time of an agent pipeline.

An :class:`ExecutionState` owns everything one run needs: its history, the event bus
that subscribers (printers, streamers, telemetry) listen on, the durable backend that
makes the run resumable, the result cache, the clock, circuit breakers and the
instrumentation. Invocation addresses come from the context-local path in
:mod:`rh_agents.core.context`, never from a stack shared on the state.

Example:
    >>> state = ExecutionState(state_backend=SQLiteStateBackend(".rh_agents/history.db"))
    ... # doctest: +SKIP
    >>> result = await ExecutionEvent(actor=agent)(question, {}, state)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import math
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from rh_agents.core._aio import cancel_and_wait
from rh_agents.core.cache import CacheBackend, InMemoryCacheBackend, ResultCache
from rh_agents.core.circuit_breaker import CircuitBreakerRegistry
from rh_agents.core.clock import SYSTEM_CLOCK, Clock
from rh_agents.core.context import Frame, current_frame
from rh_agents.core.errors import (
    InputValidationError,
    InvalidArgumentError,
    LifecycleError,
    ResultSerializationError,
    SnapshotMismatchError,
    StateCorruptedError,
    StateError,
    StateNotFoundError,
)
from rh_agents.core.events import EventKind, ExecutionEvent, freeze, is_snapshot, thaw
from rh_agents.core.history import HistorySet, event_to_record, input_fingerprint
from rh_agents.core.hooks import NOOP, Instrumentation, resolve_telemetry
from rh_agents.core.state_recovery import (
    ReplayMode,
    StateMetadata,
    StateSnapshot,
    StateStatus,
)
from rh_agents.core.types import ExecutionStatus

if TYPE_CHECKING:
    from rh_agents.core.actors import BaseActor
    from rh_agents.core.limiter import Limiter
    from rh_agents.core.parallel import ErrorStrategy, ParallelExecutionManager
    from rh_agents.state_backends import ArtifactBackend, EventJournal, StateBackend

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "DEFAULT_SUBSCRIBER_QUEUE_SIZE",
    "DEFAULT_SUBSCRIBER_TIMEOUT",
    "EventBus",
    "EventStream",
    "ExecutionState",
    "HistorySet",
]

logger = logging.getLogger("rh_agents.execution")

Subscriber = Callable[[Any], Any]


class _Subscriber:
    __slots__ = (
        "detached",
        "dropped",
        "errors",
        "fn",
        "inline_seconds",
        "is_async",
        "key",
        "queue",
        "task",
        "timeouts",
    )

    def __init__(self, key: Any, fn: Callable[[Any], Any]) -> None:
        self.key = key
        self.fn = fn
        target: Any = fn
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            target.__call__
        )
        self.errors = 0
        self.timeouts = 0
        self.dropped = 0
        self.inline_seconds = 0.0
        self.detached = False
        self.queue: deque[Any] = deque()
        self.task: asyncio.Task[None] | None = None


DEFAULT_SUBSCRIBER_TIMEOUT = 5.0
"""Seconds one async subscriber may hold up a run in total before it is detached."""

DEFAULT_SUBSCRIBER_QUEUE_SIZE = 10_000
"""Events buffered per detached subscriber before further events are dropped for it."""


class EventBus:
    """Publish/subscribe of execution events.

    Subscribers are sync or async callables, or objects with a ``print_event`` method
    (printers). Each published event is one immutable snapshot shared by all
    subscribers. A subscriber that raises is logged (with its traceback the first time)
    and isolated: it never fails the actor, never causes a re-run and never stops the
    other subscribers.

    A subscriber cannot hold a run hostage. An async subscriber is awaited inline, so it
    has seen an event before the run goes on, until it has held up publishing for
    ``subscriber_timeout`` seconds in total (a call that reaches that budget is cut
    off). It is then logged once and *detached*: from then on it receives the events in
    the background, in order, from a queue of at most ``subscriber_queue_size`` events
    drained by a task the bus owns (each delivery still cut off after
    ``subscriber_timeout``); when that queue is full, further events are dropped for that
    subscriber only and counted. So an async subscriber adds at most
    ``subscriber_timeout`` seconds to a run, however slow or stuck it is. Sync
    subscribers run inline on the event loop and cannot be interrupted: keep them fast.
    :meth:`aclose` stops the background deliveries cleanly.

    Args:
        subscriber_timeout: the budget in seconds per async subscriber (default 5);
            None awaits async subscribers without any bound.
        subscriber_queue_size: events buffered per detached subscriber (default 10 000).

    Example:
        >>> bus = EventBus()
        >>> seen = []
        >>> _ = bus.subscribe(seen.append)
    """

    def __init__(
        self,
        subscriber_timeout: float | None = DEFAULT_SUBSCRIBER_TIMEOUT,
        subscriber_queue_size: int = DEFAULT_SUBSCRIBER_QUEUE_SIZE,
    ) -> None:
        if subscriber_timeout is not None and (
            isinstance(subscriber_timeout, bool)
            or not isinstance(subscriber_timeout, int | float)
            or not math.isfinite(subscriber_timeout)
            or subscriber_timeout <= 0
        ):
            raise InvalidArgumentError(
                f"subscriber_timeout must be a positive number of seconds or None (no "
                f"bound), got {subscriber_timeout!r}. The default is "
                f"{DEFAULT_SUBSCRIBER_TIMEOUT:g}."
            )
        if (
            isinstance(subscriber_queue_size, bool)
            or not isinstance(subscriber_queue_size, int)
            or subscriber_queue_size < 1
        ):
            raise InvalidArgumentError(
                f"subscriber_queue_size must be a positive integer, got "
                f"{subscriber_queue_size!r}. The default is {DEFAULT_SUBSCRIBER_QUEUE_SIZE}."
            )
        self.subscriber_timeout = (
            float(subscriber_timeout) if subscriber_timeout is not None else None
        )
        self.subscriber_queue_size = subscriber_queue_size
        self._subscribers: tuple[_Subscriber, ...] = ()
        self._streams: list[EventStream] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.subscriber_errors = 0
        """Exceptions raised by subscribers, over all of them."""
        self.subscriber_timeouts = 0
        """Deliveries cut off (that event is lost for that subscriber): inline when the
        subscriber's budget ran out, or in the background after ``subscriber_timeout``."""
        self.dropped_events = 0
        """Events not delivered to a detached subscriber because its queue was full."""

    def subscribe(self, handler: Any) -> Any:
        """Add a subscriber; returns it, so this works as a decorator."""
        fn = handler if callable(handler) else getattr(handler, "print_event", None)
        if fn is None or not callable(fn):
            raise InvalidArgumentError(
                f"Cannot subscribe {handler!r}: pass a callable taking the event, or an "
                "object with a print_event(event) method."
            )
        self._subscribers = (*self._subscribers, _Subscriber(handler, fn))
        return handler

    def unsubscribe(self, handler: Any) -> None:
        """Remove a subscriber added with :meth:`subscribe` (no error if absent).

        Events already queued for a detached subscriber are still delivered.
        """
        self._subscribers = tuple(s for s in self._subscribers if s.key is not handler)

    @property
    def subscribers(self) -> list[Any]:
        """The current subscribers, in subscription order."""
        return [s.key for s in self._subscribers]

    def subscriber_stats(self) -> list[dict[str, Any]]:
        """Per subscriber: errors, timeouts, inline seconds, detached, queued, dropped."""
        return [
            {
                "subscriber": s.key,
                "errors": s.errors,
                "timeouts": s.timeouts,
                "inline_seconds": s.inline_seconds,
                "detached": s.detached,
                "queued": len(s.queue),
                "dropped": s.dropped,
            }
            for s in self._subscribers
        ]

    def _listening(self) -> bool:
        """Whether publishing can reach anyone (a subclass may publish elsewhere)."""
        return bool(self._subscribers or self._streams) or type(self) is not EventBus

    async def publish(self, event: Any) -> None:
        """Deliver ``event`` to every subscriber and every open stream."""
        for sub in self._subscribers:
            if sub.detached:
                self._enqueue(sub, event)
                continue
            try:
                if sub.is_async:
                    await self._inline(sub, sub.fn(event))
                else:
                    outcome = sub.fn(event)
                    if inspect.isawaitable(outcome):
                        await self._inline(sub, outcome)
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                self._report(sub)  # the subscriber's own cancellation is its error
            except Exception:
                self._report(sub)
        for stream in self._streams:
            stream._offer(event)

    async def _inline(self, sub: _Subscriber, awaitable: Awaitable[Any]) -> None:
        limit = self.subscriber_timeout
        if limit is None:
            await awaitable
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        scope = asyncio.timeout(max(0.0, limit - sub.inline_seconds))
        try:
            async with scope:
                await awaitable
        except TimeoutError:
            if not scope.expired():
                raise  # the subscriber's own TimeoutError: reported as an error
            sub.inline_seconds = limit
            self._timed_out(sub)
            self._detach(sub)
        else:
            sub.inline_seconds += loop.time() - started
            if sub.inline_seconds >= limit:
                self._detach(sub)

    def _timed_out(self, sub: _Subscriber) -> None:
        sub.timeouts += 1
        self.subscriber_timeouts += 1
        if sub.timeouts > 1:
            logger.debug("Event subscriber %r was cut off again", sub.key)

    def _detach(self, sub: _Subscriber) -> None:
        if not sub.detached:
            sub.detached = True
            logger.warning(
                "Event subscriber %r held up the run for %gs in total (subscriber_timeout); "
                "it now receives events in the background (at most %d queued, further "
                "events dropped for it) so it cannot stall the run.",
                sub.key,
                self.subscriber_timeout,
                self.subscriber_queue_size,
            )

    def _enqueue(self, sub: _Subscriber, event: Any) -> None:
        if len(sub.queue) >= self.subscriber_queue_size:
            sub.dropped += 1
            self.dropped_events += 1
            if sub.dropped == 1:
                logger.warning(
                    "Event subscriber %r is too slow: its queue of %d events is full, so "
                    "events are dropped for it (counted in EventBus.dropped_events).",
                    sub.key,
                    self.subscriber_queue_size,
                )
            return
        sub.queue.append(event)
        if sub.task is None or sub.task.done():
            task = asyncio.get_running_loop().create_task(
                self._drain(sub), name=f"rh_agents subscriber {sub.key!r:.40}"
            )
            sub.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self, sub: _Subscriber) -> None:
        limit = self.subscriber_timeout
        while sub.queue:
            event = sub.queue.popleft()
            try:
                async with asyncio.timeout(limit):
                    outcome = sub.fn(event)
                    if inspect.isawaitable(outcome):
                        await outcome
            except TimeoutError:
                self._timed_out(sub)
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                self._report(sub)
            except Exception:
                self._report(sub)

    def _report(self, sub: _Subscriber) -> None:
        sub.errors += 1
        self.subscriber_errors += 1
        if sub.errors == 1:
            logger.exception(
                "Event subscriber %r raised; it is isolated and the run continues "
                "(further errors from it are logged at debug level).",
                sub.key,
            )
        else:
            logger.debug("Event subscriber %r raised again", sub.key, exc_info=True)

    def _drainers(self) -> list[asyncio.Task[None]]:
        return [task for task in self._tasks if not task.done()]

    async def drain(self, within: float | None = None) -> bool:
        """Wait until detached subscribers have received their queued events.

        Returns False when ``within`` seconds passed first (nothing is cancelled).
        """
        tasks = self._drainers()
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=within)
        return not pending

    async def aclose(self, grace: float = 0.0) -> None:
        """End every stream and stop the background deliveries cleanly.

        Queued events of detached subscribers get ``grace`` seconds (default none) to
        be delivered; what is left is dropped, and the delivery tasks are cancelled and
        awaited, so none outlives this call.
        """
        self.close()
        if grace > 0:
            await self.drain(grace)
        for sub in self._subscribers:
            sub.queue.clear()
        await cancel_and_wait(self._drainers())
        for sub in self._subscribers:
            sub.queue.clear()  # a delivery cut short by the cancellation

    def stream(self, maxsize: int = 0) -> EventStream:
        """An async iterator over events published from now on.

        The stream is registered when this method is called (not on first iteration),
        so nothing published in between is missed. It ends after :meth:`close`, or when
        closed with ``aclose()`` / by leaving an ``async with`` block.

        Example:
            >>> async for event in bus.stream():  # doctest: +SKIP
            ...     print(event.address, event.execution_status)
        """
        stream = EventStream(self, maxsize)
        self._streams.append(stream)
        return stream

    def _drop(self, stream: EventStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def close(self) -> None:
        """End every open stream after the events already queued."""
        for stream in list(self._streams):
            stream._end()
            self._drop(stream)


_END = object()


def _being_cancelled() -> bool:
    """Whether the current task has been asked to stop (not a CancelledError of its own)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class EventStream:
    """Events of one :meth:`EventBus.stream` call, in publish order."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._closed = False
        self.dropped = 0
        """Events not delivered because the stream's queue (``maxsize``) was full."""

    def _offer(self, event: Any) -> None:
        # A full stream (a reader that fell behind) must never fail the publisher.
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1:
                logger.warning(
                    "An event stream is full (maxsize=%d); events are dropped for it "
                    "until its reader catches up.",
                    self._queue.maxsize,
                )

    def _end(self) -> None:
        try:
            self._queue.put_nowait(_END)
        except asyncio.QueueFull:
            self._closed = True  # the reader ends once it has drained the queue

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._closed = True
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stop receiving events."""
        self._closed = True
        self._bus._drop(self)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


DEFAULT_MAX_RESULT_BYTES = 16 * 1024 * 1024
"""The default largest JSON-encoded result a journal accepts (16 MiB)."""


class ExecutionState:
    """Everything one run of a pipeline needs, and what it has done so far.

    Args:
        state_id: identifies the run in backends (a UUID by default).
        event_bus: where status changes are published (a new bus by default).
        history: the timeline (a new one by default; restored states bring theirs).
        storage: free-form data of the run, saved in snapshots (JSON-able values).
        replay_mode: how a restored state treats invocations that already completed.
        state_backend: where snapshots go; when it is also an event journal (SQLite,
            in-memory, file system), every status change is appended as it happens, so
            a crash loses no completed event.
        artifact_backend: where large artifacts go.
        cache_backend: the result cache of cacheable actors (in-memory by default).
        telemetry: an ``rh_agents.telemetry.Telemetry`` (or any object with an
            ``instrumentation`` attribute). None (default): the telemetry of an
            active test capture, else the default one, which traces through the
            global OpenTelemetry providers (nothing until the application configures
            them) and counts into prometheus_client's registry. False: none.
        clock: the time source for backoff, cooldowns and deadlines.
        metadata: description of the run stored with its snapshots.
        circuit_breakers: a registry shared by states that call the same dependencies.
        max_result_bytes: the largest result, in bytes of its JSON form, that may go
            into the journal (default 16 MiB); a larger one fails its invocation with
            :class:`~rh_agents.core.errors.ResultSerializationError`. None for no limit.
        record_input_hashes: whether every invocation records a fingerprint of its
            input, which a resumed run compares before returning a recorded result
            (see docs/errors.md). None (default) and True record them; False turns them
            off (a resumed run then trusts the addresses alone).

    Example:
        >>> state = ExecutionState()
        >>> state.replay_mode
        <ReplayMode.NORMAL: 'normal'>
    """

    def __init__(
        self,
        *,
        state_id: str | None = None,
        event_bus: EventBus | None = None,
        history: HistorySet | None = None,
        storage: dict[str, Any] | None = None,
        replay_mode: ReplayMode | str = ReplayMode.NORMAL,
        state_backend: StateBackend | None = None,
        artifact_backend: ArtifactBackend | None = None,
        cache_backend: CacheBackend | None = None,
        telemetry: Any = None,
        clock: Clock | None = None,
        metadata: StateMetadata | None = None,
        circuit_breakers: CircuitBreakerRegistry | None = None,
        max_result_bytes: int | None = DEFAULT_MAX_RESULT_BYTES,
        record_input_hashes: bool | None = None,
    ) -> None:
        if max_result_bytes is not None and (
            isinstance(max_result_bytes, bool)
            or not isinstance(max_result_bytes, int)
            or max_result_bytes < 1
        ):
            raise InvalidArgumentError(
                f"max_result_bytes must be a positive integer (bytes) or None for no limit, "
                f"got {max_result_bytes!r}. The default is {DEFAULT_MAX_RESULT_BYTES} (16 MiB)."
            )
        if record_input_hashes is not None and not isinstance(record_input_hashes, bool):
            raise InvalidArgumentError(
                f"record_input_hashes must be True, False or None (automatic), got "
                f"{record_input_hashes!r}."
            )
        self.max_result_bytes = max_result_bytes
        self.record_input_hashes = record_input_hashes
        try:
            self.replay_mode = ReplayMode(replay_mode)
        except ValueError:
            modes = ", ".join(m.value for m in ReplayMode)
            raise InvalidArgumentError(
                f"Unknown replay_mode {replay_mode!r}; use one of: {modes}."
            ) from None
        self.state_id = state_id or str(uuid.uuid4())
        self.event_bus = event_bus if event_bus is not None else EventBus()
        self.history = history if history is not None else HistorySet()
        self.storage: dict[str, Any] = storage if storage is not None else {}
        self.state_backend = state_backend
        self.artifact_backend = artifact_backend
        self.artifact_refs: dict[str, str] = {}
        self.metadata = metadata or StateMetadata()
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.telemetry = telemetry = resolve_telemetry(telemetry)
        instrumentation = getattr(telemetry, "instrumentation", NOOP)
        bind = getattr(instrumentation, "for_state", None)  # per-state attributes
        self.instrumentation: Instrumentation = (
            bind(self.state_id) if bind is not None else instrumentation
        )
        self.result_cache: ResultCache | None = ResultCache(
            cache_backend if cache_backend is not None else InMemoryCacheBackend(self.clock)
        )
        self.circuit_breakers = (
            circuit_breakers if circuit_breakers is not None else CircuitBreakerRegistry()
        )
        self.divergences: list[dict[str, Any]] = []
        self._root = Frame.new_root()
        self._seq = len(self.history)
        self._replay_index: dict[str, ExecutionEvent[Any]] = {}
        # Completions by (parent address, actor key), and those already replayed.
        self._siblings: dict[tuple[str, str], list[ExecutionEvent[Any]]] = {}
        self._claimed: set[str] = set()
        self._journal: EventJournal | None = None
        if state_backend is not None and callable(getattr(state_backend, "append_event", None)):
            journal: EventJournal = state_backend  # type: ignore[assignment]
            self._journal = journal
            if not state_backend.exists(self.state_id):
                state_backend.save_state(self.to_snapshot())
            elif not len(self.history) and journal.load_events(self.state_id):
                # A fresh state under the id of a stored run would append a second history
                # to it, and a later resume would mix the two runs.
                raise LifecycleError(
                    f"{type(state_backend).__name__} already holds a history for state "
                    f"'{self.state_id}'. Resume it with ExecutionState.load_from_state_id("
                    f"{self.state_id!r}, backend), or start a new run with another "
                    "state_id (or none, for a fresh one)."
                )
            if len(self.history) and not journal.load_events(self.state_id):
                # A restored history entering a journal that does not hold it yet (a
                # snapshot moved to another backend, or saved without its journal): the
                # journal is what load_from_state_id reads, so it must start with it.
                for record in self.history.to_records():
                    journal.append_event(self.state_id, record)

    @property
    def backend(self) -> StateBackend | None:
        """The state backend (the same as :attr:`state_backend`)."""
        return self.state_backend

    # ----------------------------------------------------------------- addresses

    def _frame(self) -> Frame:
        frame = current_frame.get()
        if frame is not None and frame.root is self._root:
            return frame
        return self._root

    def push_context(self, name: str) -> None:
        """Add ``name`` to the current (context-local) path, e.g. to set a root prefix.

        Compatibility layer: the path belongs to the current task's context, so pushing
        in one task never changes the addresses of another.
        """
        if not name:
            raise InvalidArgumentError("push_context() needs a non-empty name.")
        current_frame.set(self._frame().pushed_child(name))

    def pop_context(self) -> str:
        """Remove the innermost name added with :meth:`push_context` and return it."""
        frame = self._frame()
        if not frame.pushed or frame.parent is None:
            raise LifecycleError(
                "pop_context() was called more often than push_context() (here, in "
                f"'{frame.address or '<root>'}'); pop only what this task pushed."
            )
        current_frame.set(frame.parent)
        return frame.segments[-1]

    @property
    def execution_stack(self) -> list[str]:
        """The segments of the current context-local path."""
        return self._frame().segments

    def get_current_address(self, event_type: Any = None) -> str:
        """The address of the innermost running invocation (or pushed context) here."""
        return self._frame().address

    # ------------------------------------------------------------------- history

    async def add_event(
        self, event: ExecutionEvent[Any], status: ExecutionStatus | None = None
    ) -> None:
        """Record a status change: journal, history, then the event bus.

        The history and the bus receive one immutable copy of ``event``. The journal
        comes first, so the in-memory history never holds an entry the journal refused.

        Raises:
            StateError: the journal could not store the entry (e.g. disk full); what was
                recorded before is intact, and the entry is not in the history either.
        """
        if status is not None and event.execution_status is not status:
            if is_snapshot(event):
                event = thaw(event)  # record a new status of a copy, never of the entry
            event.__dict__["execution_status"] = status
        snapshot = freeze(event)
        seq = self._seq + 1
        if self._journal is not None:
            self._append(snapshot, seq)
        self._seq = seq
        self.history.append(snapshot)
        bus = self.event_bus
        if not snapshot.skip_republish and bus._listening():
            await bus.publish(snapshot)

    def _append(self, snapshot: ExecutionEvent[Any], seq: int) -> None:
        journal = self._journal
        assert journal is not None
        started = perf_counter()
        try:
            journal.append_event(self.state_id, event_to_record(snapshot, seq))
        except StateError:
            raise
        except Exception as exc:
            raise StateError(
                f"Could not append '{snapshot.address}' ({snapshot.execution_status.value}) "
                f"to the history of state {self.state_id}: {type(exc).__name__}: {exc}. "
                "Everything recorded before is intact; fix the backend (e.g. free disk "
                "space) and resume the run."
            ) from exc
        tel = self.instrumentation
        if tel.enabled:
            tel.journal_written(journal, perf_counter() - started)

    async def publish_event(self, event: ExecutionEvent[Any]) -> None:
        """Publish a non-invocation event (group lifecycle, divergence) and record it."""
        await self.add_event(event)

    def _encode_result(self, actor: BaseActor, value: Any, event: ExecutionEvent[Any]) -> None:
        limit = self.max_result_bytes if self._journal is not None else None
        private = event.__pydantic_private__
        assert private is not None
        if value is None or isinstance(value, int | float | bool):
            private["_record_result"] = value
            private["_result_type"] = None
            return
        if isinstance(value, str):
            # JSON escapes a character into at most 6 bytes; measure only when it matters.
            if limit is not None and len(value) * 6 + 2 > limit:
                self._check_size(actor, value, len(json.dumps(value)), limit)
            private["_record_result"] = value
            private["_result_type"] = None
            return
        try:
            if isinstance(value, BaseModel):
                encoded = value.model_dump(mode="json")
                result_type: str | None = _model_path(type(value))
            else:
                if isinstance(value, Iterator | AsyncIterator) or inspect.isawaitable(value):
                    raise ResultSerializationError(
                        f"The result of actor '{actor.name}' is a {type(value).__name__}, "
                        "which storing in the history would consume (and a resumed run "
                        "could not replay); return a list (or another value) instead."
                    )
                encoded = to_jsonable_python(value)
                result_type = _container_type(value)
            if self._journal is not None:
                size = len(json.dumps(encoded))
                if limit is not None:
                    self._check_size(actor, value, size, limit)
        except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
            circular = "circular" in str(exc).lower() or isinstance(exc, RecursionError)
            hint = (
                "It refers to itself (a cycle); return a copy without the back-reference."
                if circular
                else "Return a pydantic model, primitives, lists or dicts."
            )
            raise ResultSerializationError(
                f"The result of actor '{actor.name}' is a {type(value).__name__} that "
                f"cannot be stored in the history ({type(exc).__name__}: {exc}), so the run "
                f"could not be resumed. {hint}"
            ) from exc
        private["_record_result"] = encoded
        private["_result_type"] = result_type

    @staticmethod
    def _check_size(actor: BaseActor, value: Any, size: int, limit: int) -> None:
        if size > limit:
            raise ResultSerializationError(
                f"The result of actor '{actor.name}' is {_mib(size)} when encoded for the "
                f"history, over max_result_bytes={limit} ({_mib(limit)}). Store large data "
                "in an artifact (ExecutionState(artifact_backend=...)) and return its "
                "reference, or raise ExecutionState(max_result_bytes=...)."
            )

    # -------------------------------------------------------------------- replay

    def _input_hash(self, data: Any) -> str | None:
        """The input fingerprint to record, or None when this state records none."""
        return input_fingerprint(data) if self.record_input_hashes is not False else None

    def _match_replay(
        self, actor: BaseActor, address: str, validate: Callable[[], Any]
    ) -> tuple[ExecutionEvent[Any] | None, str | None]:
        """The recorded completion this call replays (None: run it), and its fingerprint.

        A call replays the completion recorded at its own address when the input is the
        same. Calls of one actor under one parent take their ordinals when they start, so
        siblings started concurrently (``asyncio.gather`` of branches that await first)
        may get each other's addresses in another run: a call whose input differs from
        its own address's record replays the sibling completion (same parent, actor and
        tag) recorded with its input instead. Each completion is replayed at most once.
        ``validate`` returns the validated input (called only when fingerprints matter).

        Raises:
            SnapshotMismatchError: the stored run was recorded by a different program.
        """
        own = self._replay_index.get(address)
        if own is not None and own.address in self._claimed:
            own = None  # a sibling call replayed it already
        group = self._siblings.get(_sibling_key(address))
        if own is None and not group:
            return None, None
        where = f"'{address}'"
        fix = (
            "Start a fresh run (a new state_id), or resume this one with the program and "
            "inputs that wrote it."
        )
        if own is not None:
            if own.actor_name is not None and own.actor_name != actor.name:
                raise SnapshotMismatchError(
                    f"The stored history has actor '{own.actor_name}' at {where}, but this "
                    f"program calls actor '{actor.name}' there: the history was written by "
                    f"a different program, so its result cannot be replayed. {fix}"
                )
            if own.event_type is not None and own.event_type is not actor.event_type:
                raise SnapshotMismatchError(
                    f"The stored history has a {own.event_type.value} at {where}, but this "
                    f"program makes a {actor.event_type.value} there (actor '{actor.name}'): "
                    f"the history was written by a different program. {fix}"
                )
            if own.input_hash is None:
                self._claimed.add(own.address)
                return own, None
        try:
            data = validate()
        except InputValidationError as exc:
            if own is None:
                return None, None  # the call itself reports the invalid input
            raise SnapshotMismatchError(
                f"Actor '{actor.name}' completed at {where} in the stored history, but the "
                f"input it is called with now does not validate into its input_model: the "
                f"history was written by a different program. {fix}"
            ) from exc
        current = input_fingerprint(data)
        if own is not None and own.input_hash == current:
            self._claimed.add(own.address)
            return own, current
        for sibling in group or ():
            if sibling.input_hash == current and sibling.address not in self._claimed:
                self._claimed.add(sibling.address)
                return sibling, current
        if own is not None:
            raise SnapshotMismatchError(
                f"Actor '{actor.name}' completed at {where} in the stored history with a "
                f"different input (fingerprint {own.input_hash}, now {current}), and no "
                f"sibling call of it completed with this input, so its recorded result "
                f"would be wrong for this call. {fix}"
            )
        return None, current

    def _replay_source(self, address: str) -> ExecutionEvent[Any] | None:
        if not self._replay_index:
            return None
        return self._replay_index.get(address)

    def _index_for_replay(self) -> None:
        self._replay_index = {}
        self._siblings = {}
        self._claimed = set()
        for address in self.history.completed_addresses():
            event = self.history.get_completed_event(address)
            if event is None:
                continue
            self._replay_index[address] = event
            if event.input_hash is not None:
                self._siblings.setdefault(_sibling_key(address), []).append(event)

    @property
    def is_restored(self) -> bool:
        """Whether this state was restored from a snapshot or backend (replay active)."""
        return bool(self._replay_index)

    def _revalidate(self, actor: BaseActor, recorded: ExecutionEvent[Any]) -> Any:
        raw = recorded._record_result if recorded._record_result is not None else recorded.result
        model: type[BaseModel] | None = actor.output_model
        kind = recorded._result_type
        if model is None and kind and "[" not in kind and ":" in kind:
            model = _import_model(kind)
        if raw is None or (model is None and not kind):
            return raw
        try:
            if model is None:
                return _restore_container(kind or "", raw)
            return model.model_validate(raw)
        except ValidationError as exc:
            target = model.__name__ if model is not None else kind
            raise SnapshotMismatchError(
                f"The recorded result at '{recorded.address}' no longer validates into "
                f"{target} ({exc.error_count()} error(s)); the history was written "
                "by a different version of the program. Start a fresh run instead of "
                "resuming this one."
            ) from exc

    async def _check_divergence(
        self, event: ExecutionEvent[Any], recorded: ExecutionEvent[Any]
    ) -> None:
        expected = recorded._record_result
        failed = event.execution_status is not ExecutionStatus.COMPLETED
        actual = None if failed else event._record_result
        input_changed = (
            recorded.input_hash is not None
            and event.input_hash is not None
            and recorded.input_hash != event.input_hash
        )
        if not failed and expected == actual and not input_changed:
            return
        info = {
            "address": event.address,
            "expected": expected,
            "actual": actual,
            "expected_status": ExecutionStatus.COMPLETED.value,
            "actual_status": event.execution_status.value,
        }
        if input_changed:
            info["input_changed"] = True
        if failed:
            info["error"] = event.message
        self.divergences.append(info)
        logger.warning(
            "Replay divergence at %s: recorded %r, now %r (%s)",
            event.address,
            expected,
            actual,
            event.execution_status.value,
        )
        warning: ExecutionEvent[Any] = ExecutionEvent(
            kind=EventKind.DIVERGENCE,
            address=event.address,
            actor_name=event.actor_name,
            event_type=event.event_type,
            execution_status=ExecutionStatus.COMPLETED,
            message=f"Result at '{event.address}' differs from the recorded history.",
            metadata={"replay_divergence": info},
        )
        await self.add_event(warning)

    # ----------------------------------------------------------------- snapshots

    def to_snapshot(
        self, status: StateStatus | None = None, metadata: StateMetadata | None = None
    ) -> StateSnapshot:
        """The whole state as a :class:`StateSnapshot` (history, storage, metadata)."""
        return StateSnapshot(
            state_id=self.state_id,
            status=status or StateStatus.RUNNING,
            metadata=metadata or self.metadata,
            execution_state={
                "events": self.history.to_records(),
                "storage": to_jsonable_python(self.storage, fallback=repr),
            },
            artifact_refs=dict(self.artifact_refs),
        )

    @classmethod
    def from_snapshot(
        cls,
        snapshot: StateSnapshot,
        state_backend: StateBackend | None = None,
        artifact_backend: ArtifactBackend | None = None,
        event_bus: EventBus | None = None,
        replay_mode: ReplayMode | str = ReplayMode.NORMAL,
        pipeline_name: str | None = None,
        **options: Any,
    ) -> ExecutionState:
        """Restore a state; invocations that completed in it will be replayed.

        ``options`` are passed to the constructor (clock, telemetry, cache_backend, ...).

        Args:
            pipeline_name: the program that resumes; when the snapshot records another
                ``metadata.pipeline_name``, nothing is restored (a snapshot that records
                none adopts this one).

        Raises:
            SnapshotMismatchError: the snapshot belongs to another pipeline.
            StateCorruptedError: the snapshot's history cannot be read.
        """
        metadata = snapshot.metadata
        if pipeline_name is not None:
            recorded = metadata.pipeline_name
            if recorded is not None and recorded != pipeline_name:
                raise SnapshotMismatchError(
                    f"State '{snapshot.state_id}' was written by pipeline '{recorded}', not "
                    f"by '{pipeline_name}' which tries to resume it; replaying its results "
                    "would give wrong answers. Resume it with pipeline "
                    f"'{recorded}', or start a fresh run (a new state_id)."
                )
            if recorded is None:
                metadata = metadata.model_copy(update={"pipeline_name": pipeline_name})
        body = snapshot.execution_state
        events = body.get("events", [])
        storage = body.get("storage") or {}
        if not isinstance(events, list) or not isinstance(storage, dict):
            raise StateCorruptedError(
                f"The snapshot of state '{snapshot.state_id}' has no readable history (events "
                f"is a {type(events).__name__}, storage a {type(storage).__name__}); it was "
                "written by another program or is damaged. Start a fresh run."
            )
        state = cls(
            state_id=snapshot.state_id,
            event_bus=event_bus,
            history=HistorySet.from_records(events),
            storage=dict(storage),
            replay_mode=replay_mode,
            state_backend=state_backend,
            artifact_backend=artifact_backend,
            metadata=metadata,
            **options,
        )
        state.artifact_refs = dict(snapshot.artifact_refs)
        state._index_for_replay()
        return state

    def save_checkpoint(
        self, status: StateStatus | None = None, metadata: StateMetadata | None = None
    ) -> bool:
        """Save a snapshot to the state backend; returns True on success."""
        if self.state_backend is None:
            raise LifecycleError(
                "save_checkpoint() needs a state_backend; pass one to ExecutionState(...)."
            )
        return bool(self.state_backend.save_state(self.to_snapshot(status, metadata)))

    @classmethod
    def load_from_state_id(
        cls,
        state_id: str,
        state_backend: StateBackend,
        artifact_backend: ArtifactBackend | None = None,
        event_bus: EventBus | None = None,
        replay_mode: ReplayMode | str = ReplayMode.NORMAL,
        pipeline_name: str | None = None,
        **options: Any,
    ) -> ExecutionState:
        """Restore the state ``state_id`` from a backend, journal included.

        Raises:
            StateNotFoundError: the backend has no such state.
            SnapshotMismatchError: ``pipeline_name`` differs from the stored one.
            StateCorruptedError / SchemaVersionError: the stored history is damaged or
                was written by another schema version.
        """
        snapshot = state_backend.load_state(state_id)
        records: list[dict[str, Any]] = []
        load_events = getattr(state_backend, "load_events", None)
        if callable(load_events):
            records = list(load_events(state_id))
        if snapshot is None and not records:
            known = ", ".join(state_backend.list_states()[:10]) or "none"
            raise StateNotFoundError(
                f"No state '{state_id}' in {type(state_backend).__name__}; known states: "
                f"{known}. Start a fresh run, or pass the id of an existing state."
            )
        if snapshot is None:
            snapshot = StateSnapshot(state_id=state_id, execution_state={})
        if records:
            snapshot = snapshot.model_copy(
                update={"execution_state": {**snapshot.execution_state, "events": records}}
            )
        return cls.from_snapshot(
            snapshot,
            state_backend=state_backend,
            artifact_backend=artifact_backend,
            event_bus=event_bus,
            replay_mode=replay_mode,
            pipeline_name=pipeline_name,
            **options,
        )

    # ------------------------------------------------------------------ parallel

    def parallel(
        self,
        max_workers: int = 5,
        error_strategy: ErrorStrategy | str | None = None,
        timeout: float | None = None,
        name: str | None = None,
        max_retries: int = 0,
        retry_delay: float = 1.0,
        circuit_breaker_threshold: int | None = None,
        circuit_breaker_timeout: float = 60.0,
        limiter: Limiter | None = None,
        circuit_breaker: Any = None,
        **options: Any,
    ) -> ParallelExecutionManager:
        """Open a parallel group: ``async with state.parallel(...) as p``.

        See :class:`rh_agents.core.parallel.ParallelExecutionManager` for every option.
        """
        from rh_agents.core.parallel import ErrorStrategy, ParallelExecutionManager

        return ParallelExecutionManager(
            self,
            max_workers=max_workers,
            error_strategy=error_strategy or ErrorStrategy.FAIL_SLOW,
            timeout=timeout,
            name=name,
            max_retries=max_retries,
            retry_delay=retry_delay,
            circuit_breaker_threshold=circuit_breaker_threshold,
            circuit_breaker_timeout=circuit_breaker_timeout,
            limiter=limiter,
            circuit_breaker=circuit_breaker,
            **options,
        )

    def __repr__(self) -> str:
        return f"ExecutionState(state_id={self.state_id!r}, events={len(self.history)})"


def _model_path(cls: type[BaseModel]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


_CONTAINERS: dict[type, str] = {tuple: "tuple", set: "set", frozenset: "frozenset"}


def _container_type(value: Any) -> str | None:
    """How to give a result without output_model back its Python type on replay.

    JSON has lists and string-keyed objects only: a tuple or a set, or a list or dict of
    one pydantic model, would replay as lists and plain dicts. Only the outer container
    is recorded (e.g. ``"list[app.models:Doc]"``); inside it, values come back in their
    JSON form, so declare an output_model for anything deeper.
    """
    kind = _CONTAINERS.get(type(value))
    if isinstance(value, list | tuple) and value:
        first = type(value[0])
        if issubclass(first, BaseModel) and all(type(v) is first for v in value):
            return f"{kind or 'list'}[{_model_path(first)}]"
    elif isinstance(value, dict) and value:
        first = type(next(iter(value.values())))
        if (
            issubclass(first, BaseModel)
            and all(type(k) is str for k in value)
            and all(type(v) is first for v in value.values())
        ):
            return f"dict[{_model_path(first)}]"
    return kind


def _restore_container(kind: str, raw: Any) -> Any:
    """The inverse of :func:`_container_type` (raw is the recorded JSON form)."""
    outer, _, inner = kind.partition("[")
    model = _import_model(inner[:-1]) if inner else None
    if outer == "dict" and isinstance(raw, dict):
        return {k: model.model_validate(v) for k, v in raw.items()} if model else raw
    if not isinstance(raw, list):
        return raw
    items = [model.model_validate(v) for v in raw] if model else raw
    if outer == "tuple":
        return tuple(items)
    if outer == "set":
        return set(items)
    if outer == "frozenset":
        return frozenset(items)
    return items


def _sibling_key(address: str) -> tuple[str, str]:
    """(parent address, actor key) of an invocation: its address without the ordinal."""
    parent, _, segment = address.rpartition("/")
    return parent, segment.partition("#")[0]


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB" if size >= 1024 * 1024 else f"{size} bytes"


def _import_model(path: str) -> type[BaseModel] | None:
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) and issubclass(obj, BaseModel) else None
