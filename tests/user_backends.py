"""Minimal state backends of the kind users write: checkpoints only, or checkpoints and
the plain (synchronous, lease-less) event-journal methods."""

from __future__ import annotations

from typing import Any

from rh_agents.core.state_recovery import StateSnapshot, StateStatus


class SnapshotOnlyBackend:
    """A user's StateBackend that keeps checkpoints only (no journal)."""

    def __init__(self) -> None:
        self.snapshots: dict[str, StateSnapshot] = {}

    def save_state(self, snapshot: StateSnapshot) -> bool:
        self.snapshots[snapshot.state_id] = snapshot
        return True

    def load_state(self, state_id: str) -> StateSnapshot | None:
        return self.snapshots.get(state_id)

    def list_states(
        self, *, status: StateStatus | str | None = None, pipeline_name: str | None = None
    ) -> list[str]:
        return sorted(self.snapshots)

    def delete_state(self, state_id: str) -> bool:
        return self.snapshots.pop(state_id, None) is not None

    def update_state(self, snapshot: StateSnapshot) -> bool:
        return self.save_state(snapshot) if snapshot.state_id in self.snapshots else False

    def exists(self, state_id: str) -> bool:
        return state_id in self.snapshots


class PlainJournalBackend(SnapshotOnlyBackend):
    """A user's backend with the EventJournal methods (load_events, no iter_events)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, list[dict[str, Any]]] = {}

    def append_event(self, state_id: str, record: dict[str, Any]) -> None:
        self.records.setdefault(state_id, []).append(dict(record))

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.records.get(state_id, [])]

    def list_journals(self) -> list[str]:
        return sorted(self.records)

    def close(self) -> None:
        """Nothing to release."""
