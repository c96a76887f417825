"""The in-memory backend: for tests and short-lived scripts."""

from __future__ import annotations

import copy
import json
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from rh_agents.core.errors import LifecycleError, StateError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.history import event_to_record
from rh_agents.core.state_recovery import StateSnapshot, StateStatus
from rh_agents.core.storage import (
    JournalOpening,
    JournalStatistics,
    LeaseHolder,
    RunJournal,
    history_exists,
    journal_conflict,
    lease_held,
)
from rh_agents.storage._codec import (
    check_id,
    check_snapshot,
    dump_record,
    dump_snapshot,
    parse_snapshot,
    status_filter,
    unseal,
)
from rh_agents.storage._lease import new_holder

__all__ = ["InMemoryStateBackend"]

_Stored = dict[str, Any] | tuple[ExecutionEvent[Any], int]
"""What a journal keeps per position: a record, or a history entry and its position
(whose record is built when it is read)."""


class InMemoryStateBackend:
    """A :class:`StateBackend` and :class:`LeasedJournal` kept in process memory.

    Meant for tests and short-lived scripts: nothing survives the process. Snapshots
    are stored as JSON text, and records appended with :meth:`append_event` are checked
    to be JSON-serializable, so what the persistent backends would reject is rejected
    here too. A run's records are not encoded: the journal keeps the run's immutable
    history entries themselves and builds their records when they are read (an
    :class:`~rh_agents.core.storage.EntryJournal`). What :meth:`load_events` returns
    are copies: callers cannot change what was stored. A run's lease is held by its
    journal object until it is closed (or garbage-collected). Thread-safe.
    :meth:`close` does nothing, so the data stays readable after a run closed its
    journal.

    Example:
        >>> backend = InMemoryStateBackend()
        >>> backend.append_event("run-1", {"seq": 1, "status": "started"})
        >>> backend.load_events("run-1")
        [{'seq': 1, 'status': 'started'}]
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # state_id -> (snapshot JSON, status, pipeline_name)
        self._states: dict[str, tuple[str, StateStatus, str | None]] = {}
        self._events: dict[str, list[_Stored]] = {}
        self._leases: dict[str, weakref.ReferenceType[_MemoryRun]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def save_state(self, snapshot: StateSnapshot) -> bool:
        snapshot = check_snapshot(snapshot)
        text = dump_snapshot(snapshot)
        with self._lock:
            self._states[snapshot.state_id] = (
                text,
                snapshot.status,
                snapshot.metadata.pipeline_name,
            )
        return True

    def update_state(self, snapshot: StateSnapshot) -> bool:
        snapshot = check_snapshot(snapshot)
        text = dump_snapshot(snapshot)
        with self._lock:
            if snapshot.state_id not in self._states:
                return False
            self._states[snapshot.state_id] = (
                text,
                snapshot.status,
                snapshot.metadata.pipeline_name,
            )
        return True

    def load_state(self, state_id: str) -> StateSnapshot | None:
        check_id(state_id)
        with self._lock:
            stored = self._states.get(state_id)
        if stored is None:
            return None
        return parse_snapshot(state_id, stored[0], "memory")

    def list_states(
        self, *, status: StateStatus | str | None = None, pipeline_name: str | None = None
    ) -> list[str]:
        wanted = status_filter(status)
        with self._lock:
            items = list(self._states.items())
        return sorted(
            state_id
            for state_id, (_, st, pipeline) in items
            if (wanted is None or st == wanted)
            and (pipeline_name is None or pipeline == pipeline_name)
        )

    def delete_state(self, state_id: str) -> bool:
        check_id(state_id)
        with self._lock:
            had_state = self._states.pop(state_id, None) is not None
            had_events = self._events.pop(state_id, None) is not None
            self._leases.pop(state_id, None)
        return had_state or had_events

    def exists(self, state_id: str) -> bool:
        check_id(state_id)
        with self._lock:
            return state_id in self._states

    # -- EventJournal

    def append_event(self, state_id: str, record: dict[str, Any]) -> None:
        check_id(state_id)
        # Checked and copied through its stored form, as a persistent backend would.
        stored = json.loads(unseal(dump_record(state_id, 1, record), state_id, 1)[0])
        with self._lock:
            self._events.setdefault(state_id, []).append(stored)

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        return list(self.iter_events(state_id))

    def iter_events(self, state_id: str) -> Iterator[dict[str, Any]]:
        """Copies of the records of ``state_id``, in order."""
        check_id(state_id)
        with self._lock:
            records = list(self._events.get(state_id, ()))
        return (_copy(record) for record in records)

    def journal_length(self, state_id: str) -> int:
        check_id(state_id)
        with self._lock:
            return len(self._events.get(state_id, ()))

    def list_journals(self) -> list[str]:
        with self._lock:
            return sorted(state_id for state_id, records in self._events.items() if records)

    # -- LeasedJournal

    def open_run(self, opening: JournalOpening) -> RunJournal:
        """A journal that appends in place (there is no disk to wait for)."""
        check_id(opening.state_id)
        return _MemoryRun(self, opening)

    def _take_lease(self, run: _MemoryRun, opening: JournalOpening) -> None:
        state_id = opening.state_id
        with self._lock:
            ref = self._leases.get(state_id)
            current = ref() if ref is not None else None
            if current is not None and current is not run and not current.closed:
                raise lease_held(
                    state_id,
                    current.holder,
                    "The lease is released when that state's run ends (or the state is "
                    "garbage-collected).",
                )
            records = self._events.setdefault(state_id, [])
            stored = len(records)
            if opening.position == 0 and stored:
                raise history_exists(self, state_id)
            if stored != opening.position:
                raise journal_conflict(state_id, stored, opening.position)
            self._leases[state_id] = weakref.ref(run)
        if opening.snapshot is not None and not self.exists(state_id):
            self.save_state(opening.snapshot)

    def _append_run(
        self,
        run: _MemoryRun,
        state_id: str,
        record: _Stored,
    ) -> None:
        with self._lock:
            ref = self._leases.get(state_id)
            if ref is None or ref() is not run:
                raise LifecycleError(
                    f"The run journal of state '{state_id}' no longer holds its lease (the "
                    "state was deleted); nothing more is recorded."
                )
            self._events[state_id].append(record)

    def _release(self, run: _MemoryRun, state_id: str) -> None:
        with self._lock:
            ref = self._leases.get(state_id)
            if ref is not None and ref() is run:
                del self._leases[state_id]

    def close(self) -> None:
        """Do nothing: the data stays readable, because nothing needs releasing."""


def _copy(stored: _Stored) -> dict[str, Any]:
    """A record the caller owns, of a stored record or history entry."""
    # a record built from an entry shares the entry's encoded result: copied too
    record = event_to_record(*stored) if isinstance(stored, tuple) else stored
    return copy.deepcopy(record)


class _MemoryRun:
    """The :class:`EntryJournal` of :class:`InMemoryStateBackend`: appends in place."""

    def __init__(self, backend: InMemoryStateBackend, opening: JournalOpening) -> None:
        self._backend = backend
        self._opening: JournalOpening | None = opening
        self._state_id = opening.state_id
        self.holder: LeaseHolder = new_holder()
        self.closed = False
        self._error: StateError | None = None
        self._records = 0

    def append(self, record: dict[str, Any]) -> None:
        self._store(record)

    def append_entry(self, entry: ExecutionEvent[Any], position: int) -> None:
        self._store((entry, position))

    def _store(self, record: _Stored) -> None:
        if self._error is not None:
            raise self._error
        if self.closed:
            raise LifecycleError(f"The journal of state '{self._state_id}' is closed.")
        try:
            opening = self._opening
            if opening is not None:
                self._backend._take_lease(self, opening)
                self._opening = None
            self._backend._append_run(self, self._state_id, record)
        except StateError as exc:
            self._error = exc
            raise
        self._records += 1

    async def flush(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._backend._release(self, self._state_id)

    async def wait_closed(self) -> None:
        if self._error is not None:
            raise self._error

    def statistics(self) -> JournalStatistics:
        return JournalStatistics(
            records=self._records,
            commits=self._records,
            commit_seconds=0.0,
            largest_commit=1 if self._records else 0,
        )
