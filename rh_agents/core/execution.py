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
import uuid
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from rh_agents.core.cache import CacheBackend, InMemoryCacheBackend, ResultCache
from rh_agents.core.circuit_breaker import CircuitBreakerRegistry
from rh_agents.core.clock import SYSTEM_CLOCK, Clock
from rh_agents.core.context import Frame, current_frame
from rh_agents.core.errors import (
    InvalidArgumentError,
    LifecycleError,
    ResultSerializationError,
    SnapshotMismatchError,
    StateError,
    StateNotFoundError,
)
from rh_agents.core.events import EventKind, ExecutionEvent
from rh_agents.core.history import HistorySet, event_to_record
from rh_agents.core.hooks import NOOP, Instrumentation, ambient_telemetry
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

__all__ = ["EventBus", "EventStream", "ExecutionState", "HistorySet"]

logger = logging.getLogger("rh_agents.execution")

Subscriber = Callable[[Any], Any]


class _Subscriber:
    __slots__ = ("errors", "fn", "is_async", "key")

    def __init__(self, key: Any, fn: Callable[[Any], Any]) -> None:
        self.key = key
        self.fn = fn
        target: Any = fn
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            target.__call__
        )
        self.errors = 0


class EventBus:
    """Publish/subscribe of execution events.

    Subscribers are sync or async callables, or objects with a ``print_event`` method
    (printers). Each published event is one immutable snapshot shared by all
    subscribers. A subscriber that raises is logged (with its traceback the first time)
    and isolated: it never fails the actor, never causes a re-run and never stops the
    other subscribers.

    Example:
        >>> bus = EventBus()
        >>> seen = []
        >>> _ = bus.subscribe(seen.append)
    """

    def __init__(self) -> None:
        self._subscribers: tuple[_Subscriber, ...] = ()
        self._streams: list[EventStream] = []
        self.subscriber_errors = 0

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
        """Remove a subscriber added with :meth:`subscribe` (no error if absent)."""
        self._subscribers = tuple(s for s in self._subscribers if s.key is not handler)

    @property
    def subscribers(self) -> list[Any]:
        """The current subscribers, in subscription order."""
        return [s.key for s in self._subscribers]

    async def publish(self, event: Any) -> None:
        """Deliver ``event`` to every subscriber and every open stream."""
        for sub in self._subscribers:
            try:
                if sub.is_async:
                    await sub.fn(event)
                else:
                    outcome = sub.fn(event)
                    if inspect.isawaitable(outcome):
                        await outcome
            except Exception:
                self._report(sub)
        for stream in self._streams:
            stream._offer(event)

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
            ``instrumentation`` attribute); nothing is recorded without one.
        clock: the time source for backoff, cooldowns and deadlines.
        metadata: description of the run stored with its snapshots.
        circuit_breakers: a registry shared by states that call the same dependencies.

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
    ) -> None:
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
        if telemetry is None:
            telemetry = ambient_telemetry.get()
        self.telemetry = telemetry
        self.instrumentation: Instrumentation = (
            getattr(telemetry, "instrumentation", NOOP) if telemetry is not None else NOOP
        )
        self.result_cache: ResultCache | None = ResultCache(
            cache_backend if cache_backend is not None else InMemoryCacheBackend(self.clock)
        )
        self.circuit_breakers = circuit_breakers or CircuitBreakerRegistry()
        self.divergences: list[dict[str, Any]] = []
        self._root = Frame.new_root()
        self._seq = len(self.history)
        self._replay_index: dict[str, ExecutionEvent[Any]] = {}
        self._journal: EventJournal | None = None
        if state_backend is not None and callable(getattr(state_backend, "append_event", None)):
            journal: EventJournal = state_backend  # type: ignore[assignment]
            self._journal = journal
            if not state_backend.exists(self.state_id):
                state_backend.save_state(self.to_snapshot())
            if len(self.history) and not journal.load_events(self.state_id):
                # A restored history entering a journal that does not hold it yet (a
                # snapshot moved to another backend, or saved without its journal): the
                # journal is what load_from_state_id reads, so it must start with it.
                for record in self.history.to_records():
                    journal.append_event(self.state_id, record)

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
        """Record a status change: history, journal, then the event bus.

        The history and the bus receive one immutable copy of ``event``.

        Raises:
            StateError: the journal could not store the entry (e.g. disk full); what was
                recorded before is intact.
        """
        if status is not None:
            event.execution_status = status
        snapshot = event.model_copy(update={"metadata": dict(event.metadata)})
        self._seq += 1
        self.history.append(snapshot)
        if self._journal is not None:
            self._append(snapshot)
        if not snapshot.skip_republish:
            await self.event_bus.publish(snapshot)

    def _append(self, snapshot: ExecutionEvent[Any]) -> None:
        assert self._journal is not None
        try:
            self._journal.append_event(self.state_id, event_to_record(snapshot, self._seq))
        except StateError:
            raise
        except Exception as exc:
            raise StateError(
                f"Could not append '{snapshot.address}' ({snapshot.execution_status.value}) "
                f"to the history of state {self.state_id}: {type(exc).__name__}: {exc}. "
                "Everything recorded before is intact; fix the backend (e.g. free disk "
                "space) and resume the run."
            ) from exc

    async def publish_event(self, event: ExecutionEvent[Any]) -> None:
        """Publish a non-invocation event (group lifecycle, divergence) and record it."""
        await self.add_event(event)

    def _encode_result(self, actor: BaseActor, value: Any, event: ExecutionEvent[Any]) -> None:
        if value is None or isinstance(value, str | int | float | bool):
            event._record_result = value
            event._result_type = None
            return
        try:
            if isinstance(value, BaseModel):
                encoded = value.model_dump(mode="json")
                cls = type(value)
                event._result_type = f"{cls.__module__}:{cls.__qualname__}"
            else:
                encoded = to_jsonable_python(value)
                event._result_type = None
            if self._journal is not None:
                json.dumps(encoded)
        except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
            raise ResultSerializationError(
                f"The result of actor '{actor.name}' is a {type(value).__name__} that "
                f"cannot be stored in the history ({exc}), so the run could not be resumed. "
                "Return a pydantic model, primitives, lists or dicts."
            ) from exc
        event._record_result = encoded

    # -------------------------------------------------------------------- replay

    def _replay_source(self, address: str) -> ExecutionEvent[Any] | None:
        if not self._replay_index:
            return None
        return self._replay_index.get(address)

    def _index_for_replay(self) -> None:
        self._replay_index = {}
        for address in self.history.completed_addresses():
            event = self.history.get_completed_event(address)
            if event is not None:
                self._replay_index[address] = event

    @property
    def is_restored(self) -> bool:
        """Whether this state was restored from a snapshot or backend (replay active)."""
        return bool(self._replay_index)

    def _revalidate(self, actor: BaseActor, recorded: ExecutionEvent[Any]) -> Any:
        raw = recorded._record_result if recorded._record_result is not None else recorded.result
        model: type[BaseModel] | None = actor.output_model
        if model is None and recorded._result_type:
            model = _import_model(recorded._result_type)
        if model is None or raw is None:
            return raw
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            raise SnapshotMismatchError(
                f"The recorded result at '{recorded.address}' no longer validates into "
                f"{model.__name__} ({exc.error_count()} error(s)); the history was written "
                "by a different version of the program. Start a fresh run instead of "
                "resuming this one."
            ) from exc

    async def _check_divergence(
        self, event: ExecutionEvent[Any], recorded: ExecutionEvent[Any]
    ) -> None:
        expected = recorded._record_result
        failed = event.execution_status is not ExecutionStatus.COMPLETED
        actual = None if failed else event._record_result
        if not failed and expected == actual:
            return
        info = {
            "address": event.address,
            "expected": expected,
            "actual": actual,
            "expected_status": ExecutionStatus.COMPLETED.value,
            "actual_status": event.execution_status.value,
        }
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
        **options: Any,
    ) -> ExecutionState:
        """Restore a state; invocations that completed in it will be replayed.

        ``options`` are passed to the constructor (clock, telemetry, cache_backend, ...).
        """
        body = snapshot.execution_state
        state = cls(
            state_id=snapshot.state_id,
            event_bus=event_bus,
            history=HistorySet.from_records(body.get("events", [])),
            storage=dict(body.get("storage") or {}),
            replay_mode=replay_mode,
            state_backend=state_backend,
            artifact_backend=artifact_backend,
            metadata=snapshot.metadata,
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
        **options: Any,
    ) -> ExecutionState:
        """Restore the state ``state_id`` from a backend, journal included.

        Raises:
            StateNotFoundError: the backend has no such state.
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


def _import_model(path: str) -> type[BaseModel] | None:
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) and issubclass(obj, BaseModel) else None
