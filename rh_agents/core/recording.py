"""Recording a run: every status change to the journal, the history and the bus.

:class:`Recorder` is the one way a status change enters a run's record: the journal of
a resumable state backend first, then the history, then the event bus. It numbers the
journal's records, encodes each result once (the JSON form the journal and snapshots
share, with its type so a resumed run can give the same Python type back) and
fingerprints inputs.

The journal is written off the event loop (:class:`~rh_agents.core.storage.RunJournal`).
A call's COMPLETED or FAILED record is committed before the call returns (and before
the history and the bus see it), a RETRYING record before the retry's backoff; other
records (STARTED, CANCELLED) are queued and committed with the next commit (or after
at most a short linger), so many concurrent completions share one commit.
The run's lease is taken before its first record commits, so no handler runs before
it is held, and given back as soon as no call or group of the state is open: another
state (or process) may then resume the run. A replayed call (RECOVERED) is not written
again, and a VALIDATION replay writes nothing: it never changes the recorded run.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import UTC, datetime
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol, cast

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_jsonable_python

from rh_agents.core._validate import has_methods
from rh_agents.core.errors import ResultSerializationError, StateError
from rh_agents.core.events import ExecutionEvent, freeze, is_snapshot, thaw
from rh_agents.core.history import event_to_record, input_fingerprint, record_is_final
from rh_agents.core.state_recovery import ReplayMode, StateSnapshot
from rh_agents.core.storage import (
    EntryJournal,
    JournalOpening,
    JournalStatistics,
    LeaseHolder,
    RunJournal,
    history_exists,
    records_runs,
)
from rh_agents.core.types import ExecutionStatus

if TYPE_CHECKING:
    from rh_agents.core.actors import BaseActor
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.storage import EventJournal

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "Recorder",
    "container_type",
    "model_path",
]

DEFAULT_MAX_RESULT_BYTES = 16 * 1024 * 1024
"""The default largest JSON-encoded result a journal accepts (16 MiB)."""

_S = ExecutionStatus
_OWN_JSON = (int, float, bool)  # tuples: `a | b` builds a union object at every call
_CONSUMED = (Iterator, AsyncIterator)
_ENDS = frozenset({_S.COMPLETED, _S.FAILED, _S.CANCELLED, _S.INTERRUPTED, _S.AWAITING})
_AWAITED = frozenset({_S.COMPLETED, _S.FAILED, _S.AWAITING})
"""The records a caller waits for: a result is handed back only once it is durable."""
_FLUSHED = _AWAITED | {_S.RETRYING}
"""... and a retry waits for its RETRYING record before its backoff: a run killed while
it waits shows the retry in its journal (retries are rare, so this costs little)."""


class Recorder:
    """Records the status changes of one state, in order.

    Args:
        state: the state recorded (its ``history``, ``event_bus``, ``state_backend``,
            ``replay_mode``, ``max_result_bytes`` and ``record_input_hashes``). When its
            state backend is also an event journal, every status change but replays is
            written to it as it happens.

    Raises:
        LifecycleError: the journal already holds another run under this state id.
    """

    __slots__ = (
        "_closing",
        "_confirmed",
        "_entries",
        "_error",
        "_journal",
        "_position",
        "_scopes",
        "_snapshot_needed",
        "_source",
        "_state",
        "_statistics",
    )

    def __init__(self, state: ExecutionState) -> None:
        self._state = state
        self._position = len(state.history)
        self._journal: RunJournal | None = None
        self._entries: EntryJournal | None = None  # the journal, when it takes entries
        self._closing: RunJournal | None = None
        self._confirmed = False
        self._error: StateError | None = None
        self._scopes: dict[str, int] = {}
        self._statistics = JournalStatistics()
        self._source, self._snapshot_needed = _journal_source(state)

    @property
    def journal(self) -> EventJournal | None:
        """The backend status changes are written to (None: not resumable)."""
        if self._source is None:
            return None
        backend: EventJournal = self._state.state_backend  # type: ignore[assignment]
        return backend

    def statistics(self) -> JournalStatistics:
        """What the journals of this state committed so far (the open ones included)."""
        total = self._statistics
        for journal in (self._closing, self._journal):
            if journal is not None:
                total = _add(total, journal.statistics())
        return total

    async def record(
        self, event: ExecutionEvent[Any], status: ExecutionStatus | None = None
    ) -> None:
        """Record a status change: journal, history, then the event bus.

        The history and the bus receive one immutable copy of ``event``.

        Raises:
            StateError: the journal could not store the entry (disk full, another
                writer holds the run, the file was deleted, ...); what was committed
                before is intact. The history may end with entries the journal did not
                commit; the journal is what a resumed run reads.
        """
        if status is not None and event.execution_status is not status:
            if is_snapshot(event):
                event = thaw(event)  # record a new status of a copy, never of the entry
            event.__dict__["execution_status"] = status
        snapshot = freeze(event)
        state = self._state
        if self._source is not None and snapshot.execution_status is not _S.RECOVERED:
            if self._error is not None:
                raise self._error
            if self._journal is None:
                await self._open()
            tel = state.instrumentation
            started = perf_counter() if tel.enabled else 0.0
            waiting = self._append(snapshot)
            if waiting is not None:
                await self._wait(waiting, snapshot)
            if tel.enabled:
                # What the caller waited for this entry (queued, or committed when
                # a result is handed back only once it is durable).
                tel.journal_written(state.state_backend, perf_counter() - started)
        else:
            state.history.append(snapshot)
        bus = state.event_bus
        if not snapshot.skip_republish and bus.has_listeners():
            await bus.publish(snapshot)

    def _append(self, snapshot: ExecutionEvent[Any]) -> Awaitable[None] | None:
        """Queue ``snapshot`` in the journal (and the history); what the caller must
        wait for before going on (see the module docstring), if anything."""
        journal = self._journal
        assert journal is not None
        status = snapshot.execution_status
        position = self._position + 1
        try:
            entries = self._entries
            if entries is not None and record_is_final(snapshot):
                entries.append_entry(snapshot, position)  # its record is built if read
            else:
                journal.append(event_to_record(snapshot, position))
        except Exception as exc:
            raise self._fail(exc, snapshot)  # noqa: B904 - the cause is set when wrapped
        self._position = position
        # The history keeps the journal's order; the bus and the caller learn of a
        # COMPLETED or FAILED status only once it is committed.
        self._state.history.append(snapshot)
        if self._leaves(snapshot.address, status):
            # Nothing of this state is open any more: give the run's lease back.
            self._journal = None
            journal.close()
            if status in _AWAITED:
                return self._closed(journal)
            self._closing = journal  # a cancellation does not wait for the disk
        elif status in _FLUSHED or (not self._confirmed and status not in _ENDS):
            # The first wait also waits for the lease: no handler runs before it is held.
            return journal.flush() if self._confirmed else self._flushed(journal)
        return None

    async def _flushed(self, journal: RunJournal) -> None:
        await journal.flush()
        self._confirmed = True

    async def _closed(self, journal: RunJournal) -> None:
        try:
            await journal.wait_closed()
        finally:
            self._statistics = _add(self._statistics, journal.statistics())

    def _leaves(self, address: str, status: ExecutionStatus) -> bool:
        """Track the open calls and groups; whether this status closed the last one."""
        scopes = self._scopes
        if status is _S.STARTED:
            scopes[address] = scopes.get(address, 0) + 1
            return False
        if status not in _ENDS:
            return False
        open_here = scopes.get(address, 0)
        if open_here > 1:
            scopes[address] = open_here - 1
        elif open_here:
            del scopes[address]
        return not scopes

    async def _open(self) -> None:
        closing = self._closing
        if closing is not None:
            await self._wait(closing.wait_closed(), None)  # its records come first
            self._closing = None
            self._statistics = _add(self._statistics, closing.statistics())
        assert self._source is not None
        state = self._state
        opening = JournalOpening(
            state_id=state.state_id,
            position=self._position,
            snapshot=_first_snapshot(state) if self._snapshot_needed else None,
        )
        self._snapshot_needed = False
        journal = self._journal = self._source.open_run(opening)
        self._entries = cast("EntryJournal", journal) if hasattr(journal, "append_entry") else None
        self._confirmed = False

    async def _wait(self, waiting: Any, snapshot: ExecutionEvent[Any] | None) -> None:
        """Wait for the journal: the one place a call waits for storage (the latency a
        telemetry hook would observe)."""
        try:
            await waiting
        except Exception as exc:
            raise self._fail(exc, snapshot)  # noqa: B904 - the cause is set when wrapped

    def _fail(self, error: Exception, snapshot: ExecutionEvent[Any] | None) -> StateError:
        """The journal failed: the state records nothing more (its positions would no
        longer match the journal's). Returns the error to raise."""
        if not isinstance(error, StateError):
            what = (
                f"'{snapshot.address}' ({snapshot.execution_status.value})"
                if snapshot is not None
                else "a record"
            )
            wrapped = StateError(
                f"Could not append {what} to the history of state {self._state.state_id}: "
                f"{type(error).__name__}: {error}. Everything recorded before is intact; "
                "fix the backend (e.g. free disk space) and resume the run."
            )
            wrapped.__cause__ = error
            error = wrapped
        self._error = error
        journal, self._journal = self._journal, None
        if journal is not None:
            journal.close()
        return error

    def input_hash(self, data: Any) -> str | None:
        """The input fingerprint to record, or None when this state records none."""
        if self._state.record_input_hashes is False:
            return None
        return input_fingerprint(data)

    def encode_result(self, actor: BaseActor, value: Any, event: ExecutionEvent[Any]) -> None:
        """Encode ``value`` into ``event``'s record once, for the journal and snapshots.

        Raises:
            ResultSerializationError: the value cannot be stored in the history (not
                JSON-serializable, a generator, a cycle, over ``max_result_bytes``).
        """
        limit = self._state.max_result_bytes if self._source is not None else None
        private = event.__pydantic_private__
        assert private is not None
        if value is None or isinstance(value, _OWN_JSON):
            # A primitive is its own JSON form: the record takes it from the result.
            private["_record_result"] = None
            private["_result_type"] = None
            return
        if isinstance(value, str):
            # JSON escapes a character into at most 6 bytes; measure only when it matters.
            if limit is not None and len(value) * 6 + 2 > limit:
                _check_size(actor, len(json.dumps(value)), limit)
            private["_record_result"] = None
            private["_result_type"] = None
            return
        if isinstance(value, _CONSUMED) or inspect.isawaitable(value):
            raise ResultSerializationError(
                f"The result of actor '{actor.name}' is a {type(value).__name__}, "
                "which storing in the history would consume (and a resumed run "
                "could not replay); return a list (or another value) instead."
            )
        try:
            if isinstance(value, BaseModel):
                encoded = value.model_dump(mode="json")
                result_type: str | None = model_path(type(value))
            else:
                encoded = to_jsonable_python(value)
                result_type = container_type(value)
            size = len(json.dumps(encoded)) if limit is not None else 0
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
        if limit is not None:
            _check_size(actor, size, limit)  # outside: its error is not wrapped
        private["_record_result"] = encoded
        private["_result_type"] = result_type


def _check_size(actor: BaseActor, size: int, limit: int) -> None:
    if size > limit:
        raise ResultSerializationError(
            f"The result of actor '{actor.name}' is {_mib(size)} when encoded for the "
            f"history, over max_result_bytes={limit} ({_mib(limit)}). Store large data "
            "in an artifact (ExecutionState(artifact_backend=...)) and return its "
            "reference, or raise ExecutionState(max_result_bytes=...)."
        )


class _Source(Protocol):
    """What runs are recorded into: a :class:`LeasedJournal` (or the plain adapter)."""

    def open_run(self, opening: JournalOpening) -> RunJournal: ...


def _journal_source(state: ExecutionState) -> tuple[_Source | None, bool]:
    """Where the state's runs are recorded (None: nowhere), and whether the backend
    needs the state's first snapshot.

    Raises:
        LifecycleError: a new state takes the id of a run the journal holds.
    """
    backend = state.state_backend
    if backend is None or state.replay_mode is ReplayMode.VALIDATION:
        return None, False
    source: _Source
    leased = backend if records_runs(backend) else None
    if leased is not None:
        source = leased
        length = leased.journal_length
    elif has_methods(backend, "append_event"):
        source = _PlainJournal(backend)
        length = source.journal_length
    else:
        return None, False
    state_id = state.state_id
    snapshot_needed = not backend.exists(state_id)
    stored = length(state_id)
    if not len(state.history):
        if stored:
            # A fresh state under the id of a stored run would append a second history
            # to it, and a later resume would mix the two runs.
            raise history_exists(backend, state_id)
    elif not stored:
        # A restored history entering a backend that does not hold it yet (a snapshot
        # moved to another backend, or saved without its journal): the journal, which
        # load_from_state_id reads, starts with it. Written here, once, synchronously.
        if snapshot_needed:
            backend.save_state(_first_snapshot(state))
            snapshot_needed = False
        for record in state.history.to_records():
            backend.append_event(state_id, record)  # type: ignore[attr-defined]
    return source, snapshot_needed


def _first_snapshot(state: ExecutionState) -> StateSnapshot:
    """The snapshot a backend gets when a run starts: the run's metadata and storage
    (its history is the journal)."""
    return StateSnapshot(
        state_id=state.state_id,
        metadata=state.metadata,
        execution_state={
            "events": [],
            "storage": to_jsonable_python(state.storage, fallback=repr),
        },
        artifact_refs=dict(state.artifact_refs),
    )


def _add(a: JournalStatistics, b: JournalStatistics) -> JournalStatistics:
    return JournalStatistics(
        records=a.records + b.records,
        commits=a.commits + b.commits,
        commit_seconds=a.commit_seconds + b.commit_seconds,
        largest_commit=max(a.largest_commit, b.largest_commit),
    )


class _PlainJournal:
    """A backend that only has the synchronous :class:`EventJournal` methods, used as a
    :class:`LeasedJournal`: each record is written on the event loop as it is appended,
    and there is no lease. Backends implement ``open_run`` to do better."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def journal_length(self, state_id: str) -> int:
        backend = self._backend
        return len(backend.load_events(state_id)) if backend.exists(state_id) else 0

    def open_run(self, opening: JournalOpening) -> RunJournal:
        return _PlainRun(self._backend, opening)


class _PlainRun:
    """The :class:`RunJournal` of a :class:`_PlainJournal`."""

    def __init__(self, backend: Any, opening: JournalOpening) -> None:
        self._backend = backend
        self._opening: JournalOpening | None = opening
        self._state_id = opening.state_id
        self._records = 0
        self.holder = LeaseHolder(host="", pid=0, since=datetime.now(UTC), owner="")

    def append(self, record: dict[str, Any]) -> None:
        opening, backend, state_id = self._opening, self._backend, self._state_id
        try:
            if opening is not None:
                if opening.snapshot is not None:
                    backend.save_state(opening.snapshot)
                self._opening = None
            backend.append_event(state_id, record)
        finally:
            self._records += 1

    async def flush(self) -> None:
        """Nothing to wait for: every record was written when appended."""

    def close(self) -> None:
        """Nothing to release."""

    async def wait_closed(self) -> None:
        """Nothing to wait for."""

    def statistics(self) -> JournalStatistics:
        return JournalStatistics(records=self._records, commits=self._records)


def model_path(cls: type[BaseModel]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


_CONTAINERS: dict[type, str] = {tuple: "tuple", set: "set", frozenset: "frozenset"}


def container_type(value: Any) -> str | None:
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
            return f"{kind or 'list'}[{model_path(first)}]"
    elif isinstance(value, dict) and value:
        first = type(next(iter(value.values())))
        if (
            issubclass(first, BaseModel)
            and all(type(k) is str for k in value)
            and all(type(v) is first for v in value.values())
        ):
            return f"dict[{model_path(first)}]"
    return kind


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB" if size >= 1024 * 1024 else f"{size} bytes"
