"""The in-memory backend: for tests and short-lived scripts."""

from __future__ import annotations

import threading
from typing import Any

from rh_agents.core.state_recovery import StateSnapshot, StateStatus
from rh_agents.storage._codec import (
    check_id,
    check_snapshot,
    dump_record,
    dump_snapshot,
    parse_record,
    parse_snapshot,
    status_filter,
)

__all__ = ["InMemoryStateBackend"]


class InMemoryStateBackend:
    """A :class:`StateBackend` and :class:`EventJournal` kept in process memory.

    Meant for tests and short-lived scripts: nothing survives the process. Data is
    stored as JSON text, so callers cannot mutate what was stored, and a value that the
    persistent backends would reject is rejected here too. Thread-safe. :meth:`close`
    does nothing, so the data stays readable after a run closed its journal.

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
        self._events: dict[str, list[str]] = {}

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
        return had_state or had_events

    def exists(self, state_id: str) -> bool:
        check_id(state_id)
        with self._lock:
            return state_id in self._states

    def append_event(self, state_id: str, record: dict[str, Any]) -> None:
        check_id(state_id)
        text = dump_record(state_id, record)
        with self._lock:
            self._events.setdefault(state_id, []).append(text)

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        check_id(state_id)
        with self._lock:
            lines = list(self._events.get(state_id, ()))
        return [parse_record(state_id, line, str(i), "memory") for i, line in enumerate(lines)]

    def list_journals(self) -> list[str]:
        with self._lock:
            return sorted(self._events)

    def close(self) -> None:
        """Do nothing: the data stays readable, because nothing needs releasing."""
