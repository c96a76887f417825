"""ExecutionState: the run-time of an agent pipeline.

An :class:`ExecutionState` owns everything one run needs: its history, the event bus
that subscribers (printers, streamers, telemetry) listen on, the durable backend that
makes the run resumable, the result cache, the clock, circuit breakers and the
instrumentation. Invocation addresses come from the context-local path in
:mod:`rh_agents.core.context`, never from a stack shared on the state.

The state delegates to named collaborators, each the room for one concern:
:attr:`ExecutionState.recorder` (:mod:`rh_agents.core.recording`: journal, history and
bus, in that order; result encoding), :attr:`ExecutionState.replayer`
(:mod:`rh_agents.core.replay`: what a restored run returns instead of running) and
:attr:`ExecutionState.event_bus` (:mod:`rh_agents.core.bus`). ``EventBus``,
``EventStream`` and ``HistorySet`` are importable from here as well.

Example:
    >>> state = ExecutionState(state_backend=SQLiteStateBackend(".rh_agents/history.db"))
    ... # doctest: +SKIP
    >>> result = await ExecutionEvent(actor=agent)(question, {}, state)  # doctest: +SKIP
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from rh_agents.core.bus import (
    DEFAULT_SUBSCRIBER_QUEUE_SIZE,
    DEFAULT_SUBSCRIBER_TIMEOUT,
    EventBus,
    EventStream,
)
from rh_agents.core.cache import CacheBackend, InMemoryCacheBackend, ResultCache
from rh_agents.core.circuit_breaker import CircuitBreakerRegistry
from rh_agents.core.clock import SYSTEM_CLOCK, Clock
from rh_agents.core.context import Frame, current_frame
from rh_agents.core.errors import InvalidArgumentError, LifecycleError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.history import HistorySet
from rh_agents.core.hooks import NOOP, Instrumentation, resolve_telemetry
from rh_agents.core.interrupts import PendingInterrupt, pending_in, resolve_answers
from rh_agents.core.parallel import ErrorStrategy, ParallelExecutionManager
from rh_agents.core.recording import DEFAULT_MAX_RESULT_BYTES, Recorder
from rh_agents.core.replay import (
    RecordedProgram,
    Replayer,
    load_state_history,
    restored_history,
    restored_metadata,
)
from rh_agents.core.state_recovery import (
    ReplayMode,
    StateMetadata,
    StateSnapshot,
    StateStatus,
)
from rh_agents.core.types import ExecutionStatus

if TYPE_CHECKING:
    from rh_agents.core.limiter import Limiter
    from rh_agents.core.storage import ArtifactBackend, StateBackend

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "DEFAULT_SUBSCRIBER_QUEUE_SIZE",
    "DEFAULT_SUBSCRIBER_TIMEOUT",
    "EventBus",
    "EventStream",
    "ExecutionState",
    "HistorySet",
]


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
        result_types: pydantic models that results of actors without an
            ``output_model`` may be; a restored run gives such a recorded result back as
            the model its record names only when it is one of these (or
            ``LLM_Result``/``Tool_Result``), never importing what a record names, and
            otherwise as the stored JSON value.
        check_program: whether a restored state refuses calls the program that
            recorded it would not have made: a top-level actor it never called, an actor
            of another version (:class:`~rh_agents.core.errors.SnapshotMismatchError`).

    Attributes:
        recorder: records every status change (:class:`~rh_agents.core.recording.Recorder`).
        replayer: what a restored run replays (:class:`~rh_agents.core.replay.Replayer`).
        divergences: what a VALIDATION replay found different from the recorded history.

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
        result_types: Iterable[type[BaseModel]] = (),
        check_program: bool = True,
    ) -> None:
        self.max_result_bytes: int | None = _check_max_result_bytes(max_result_bytes)
        self.record_input_hashes: bool | None = _check_record_input_hashes(record_input_hashes)
        self.replay_mode: ReplayMode = _replay_mode(replay_mode)
        self.state_id: str = state_id or str(uuid.uuid4())
        self.event_bus: EventBus = event_bus if event_bus is not None else EventBus()
        self.history: HistorySet = history if history is not None else HistorySet()
        self.storage: dict[str, Any] = storage if storage is not None else {}
        self.state_backend = state_backend
        self.artifact_backend = artifact_backend
        self.artifact_refs: dict[str, str] = {}
        self.metadata: StateMetadata = metadata or StateMetadata()
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.telemetry: Any = resolve_telemetry(telemetry)
        instrumentation = getattr(self.telemetry, "instrumentation", NOOP)
        bind = getattr(instrumentation, "for_state", None)  # per-state attributes
        self.instrumentation: Instrumentation = (
            bind(self.state_id) if bind is not None else instrumentation
        )
        self.result_cache: ResultCache | None = ResultCache(
            cache_backend if cache_backend is not None else InMemoryCacheBackend(self.clock)
        )
        self.circuit_breakers: CircuitBreakerRegistry = (
            circuit_breakers if circuit_breakers is not None else CircuitBreakerRegistry()
        )
        self.divergences: list[dict[str, Any]] = []
        self.check_program: bool = bool(check_program)
        self._root = Frame.new_root()
        self._interrupt_answers: dict[str, Any] = {}
        self.replayer: Replayer = Replayer(self, result_types)
        self.recorder: Recorder = Recorder(self)  # last: it may save the first snapshot

    @property
    def backend(self) -> StateBackend | None:
        """The state backend (the same as :attr:`state_backend`)."""
        return self.state_backend

    # ----------------------------------------------------------------- addresses

    def current_frame(self) -> Frame:
        """The frame of the innermost running invocation (or pushed context) of this
        state in the current task; the root frame outside of any."""
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
        current_frame.set(self.current_frame().pushed_child(name))

    def pop_context(self) -> str:
        """Remove the innermost name added with :meth:`push_context` and return it."""
        frame = self.current_frame()
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
        return self.current_frame().segments

    def get_current_address(self, event_type: Any = None) -> str:
        """The address of the innermost running invocation (or pushed context) here."""
        return self.current_frame().address

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
        await self.recorder.record(event, status)

    async def publish_event(self, event: ExecutionEvent[Any]) -> None:
        """Publish a non-invocation event (group lifecycle, divergence) and record it."""
        await self.recorder.record(event)

    @property
    def is_restored(self) -> bool:
        """Whether this state was restored from a snapshot or backend (replay active)."""
        return self.replayer.active

    # ---------------------------------------------------------------- interrupts

    @property
    def pending_interrupts(self) -> list[PendingInterrupt]:
        """The ``interrupt()`` calls that wait for an answer (from the history, so also
        in a state loaded in another process), each with its ``address`` and ``payload``.

        Example:
            >>> [p.payload for p in state.pending_interrupts]  # doctest: +SKIP
            [{'question': 'Publish this draft?'}]
        """
        return pending_in(self.history)

    def resume_with(self, answer: Any) -> None:
        """Answer the pending interrupts; then make the same top-level call again.

        Everything that completed replays, each ``interrupt()`` returns its answer and
        the run goes on.

        Args:
            answer: the answer of the only pending interrupt, or a dict mapping the
                ``address`` of each one to answer (several pending).

        Raises:
            LifecycleError: no interrupt is pending.
            InvalidArgumentError: several are pending and ``answer`` does not map them.

        Example:
            >>> state = ExecutionState.load_from_state_id(run_id, backend)  # doctest: +SKIP
            >>> state.resume_with("approved")  # doctest: +SKIP
            >>> result = await ExecutionEvent(actor=publisher)(draft, {}, state)  # doctest: +SKIP
        """
        self._interrupt_answers.update(resolve_answers(self.pending_interrupts, answer))
        # The same call again from the start: addresses count afresh, and what the
        # history holds as completed replays, in this process as in a loaded state.
        self._root = Frame.new_root()
        self.replayer.reload(self.history)

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
        history, storage, program = restored_history(snapshot)
        return cls._restored(
            snapshot,
            history,
            storage,
            program,
            pipeline_name,
            state_backend=state_backend,
            artifact_backend=artifact_backend,
            event_bus=event_bus,
            replay_mode=replay_mode,
            **options,
        )

    @classmethod
    def _restored(
        cls,
        snapshot: StateSnapshot,
        history: HistorySet,
        storage: dict[str, Any],
        program: RecordedProgram,
        pipeline_name: str | None,
        **options: Any,
    ) -> ExecutionState:
        metadata = restored_metadata(snapshot, pipeline_name)
        state = cls(
            state_id=snapshot.state_id,
            history=history,
            storage=storage,
            metadata=metadata,
            **options,
        )
        state.artifact_refs = dict(snapshot.artifact_refs)
        state.replayer.load(state.history, program)
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
        snapshot, history, program = load_state_history(state_id, state_backend)
        # load_state_history refused a snapshot whose storage is not a dict.
        storage = snapshot.execution_state.get("storage") or {}
        return cls._restored(
            snapshot,
            history,
            dict(storage),
            program,
            pipeline_name,
            state_backend=state_backend,
            artifact_backend=artifact_backend,
            event_bus=event_bus,
            replay_mode=replay_mode,
            **options,
        )

    # ------------------------------------------------------------------ parallel

    def parallel(
        self,
        max_workers: int | None = 5,
        error_strategy: ErrorStrategy | str | None = None,
        timeout: float | None = None,
        name: str | None = None,
        max_retries: int = 0,
        retry_delay: float = 1.0,
        circuit_breaker_threshold: int | None = None,
        circuit_breaker_timeout: float | None = None,
        limiter: Limiter | None = None,
        circuit_breaker: Any = None,
        **options: Any,
    ) -> ParallelExecutionManager:
        """Open a parallel group: ``async with state.parallel(...) as p``.

        See :class:`rh_agents.core.parallel.ParallelExecutionManager` for every option.
        """
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


def _check_max_result_bytes(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgumentError(
            f"max_result_bytes must be a positive integer (bytes) or None for no limit, "
            f"got {value!r}. The default is {DEFAULT_MAX_RESULT_BYTES} (16 MiB)."
        )
    return value


def _check_record_input_hashes(value: bool | None) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise InvalidArgumentError(
            f"record_input_hashes must be True, False or None (automatic), got {value!r}."
        )
    return value


def _replay_mode(value: ReplayMode | str) -> ReplayMode:
    try:
        return ReplayMode(value)
    except ValueError:
        modes = ", ".join(m.value for m in ReplayMode)
        raise InvalidArgumentError(f"Unknown replay_mode {value!r}; use one of: {modes}.") from None
