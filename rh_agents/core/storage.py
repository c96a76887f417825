"""The storage interfaces of the execution core: what a backend must provide.

Three protocols describe the storage layer; the core depends on them alone, and the
backends in :mod:`rh_agents.storage` (SQLite, file system, in-memory) implement them
from above:

* :class:`StateBackend` keeps whole-state checkpoints (:class:`StateSnapshot`).
* :class:`EventJournal` keeps the event records of a run, appended one at a time as they
  happen, so a process killed at any moment loses no event whose ``append_event`` call
  returned. An :class:`~rh_agents.core.execution.ExecutionState` whose state backend is
  also a journal appends every status change to it.
* :class:`ArtifactBackend` keeps large blobs that snapshots refer to by reference.

Backends report failures with the storage errors of :mod:`rh_agents.core.errors`:
:class:`~rh_agents.core.errors.StateStorageError` (the medium failed),
:class:`~rh_agents.core.errors.StateCorruptedError` (damaged data),
:class:`~rh_agents.core.errors.SchemaVersionError` (another schema version) and
:class:`~rh_agents.core.errors.ArtifactNotFoundError`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from rh_agents.core.errors import StateNotFoundError
from rh_agents.core.state_recovery import StateSnapshot, StateStatus

__all__ = ["ArtifactBackend", "EventJournal", "StateBackend", "require_state"]


@runtime_checkable
class StateBackend(Protocol):
    """Stores whole-state checkpoints of runs, keyed by ``state_id``."""

    def save_state(self, snapshot: StateSnapshot) -> bool:
        """Store ``snapshot``, replacing any stored snapshot with the same id.

        Returns ``True`` once stored; failures raise instead of returning ``False``.
        """
        ...

    def load_state(self, state_id: str) -> StateSnapshot | None:
        """Return the stored snapshot, or ``None`` when there is none with that id."""
        ...

    def list_states(
        self, *, status: StateStatus | str | None = None, pipeline_name: str | None = None
    ) -> list[str]:
        """Ids of the stored snapshots, sorted, optionally filtered by status and pipeline."""
        ...

    def delete_state(self, state_id: str) -> bool:
        """Delete the snapshot and the journal of a run; ``False`` when neither existed."""
        ...

    def update_state(self, snapshot: StateSnapshot) -> bool:
        """Replace an existing snapshot; ``False`` (nothing stored) when none exists."""
        ...

    def exists(self, state_id: str) -> bool:
        """Whether a snapshot with this id is stored."""
        ...


@runtime_checkable
class EventJournal(Protocol):
    """An append-only log of event records per run.

    A record is a JSON-serializable ``dict``. When :meth:`append_event` returns, the
    record survives the death of the process. A journal may exist for a run that has no
    saved snapshot.
    """

    def append_event(self, state_id: str, record: dict[str, Any]) -> None:
        """Append one record to the journal of ``state_id``, durably."""
        ...

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        """All records of ``state_id`` in append order; ``[]`` for an unknown id."""
        ...

    def list_journals(self) -> list[str]:
        """Sorted ids of the runs that have at least one journal record."""
        ...

    def close(self) -> None:
        """Release files and connections. Closing twice is allowed."""
        ...


@runtime_checkable
class ArtifactBackend(Protocol):
    """Stores blobs (bytes, text or JSON values) that snapshots refer to by reference."""

    def save_artifact(self, artifact_id: str, data: Any) -> str:
        """Store ``data`` under ``artifact_id`` and return a reference to it."""
        ...

    def load_artifact(self, ref_or_id: str) -> Any:
        """Return the stored value, of the type it was saved with."""
        ...

    def delete_artifact(self, ref_or_id: str) -> bool:
        """Delete an artifact; ``False`` when it did not exist."""
        ...

    def exists(self, ref_or_id: str) -> bool:
        """Whether the artifact exists."""
        ...

    def list_artifacts(self) -> list[str]:
        """Sorted ids of the stored artifacts."""
        ...


def require_state(backend: StateBackend, state_id: str) -> StateSnapshot:
    """Load a snapshot that must exist.

    Raises:
        StateNotFoundError: no snapshot with this id is stored; the message lists the
            ids that are.

    Example:
        >>> from rh_agents.storage import InMemoryStateBackend
        >>> backend = InMemoryStateBackend()
        >>> _ = backend.save_state(StateSnapshot(state_id="run-1"))
        >>> require_state(backend, "run-1").state_id
        'run-1'
    """
    snapshot = backend.load_state(state_id)
    if snapshot is not None:
        return snapshot
    known = backend.list_states()
    if isinstance(backend, EventJournal):
        known = sorted(set(known) | set(backend.list_journals()))
    if not known:
        listing = "The backend holds no states at all"
    else:
        shown = ", ".join(repr(k) for k in known[:20])
        more = f" and {len(known) - 20} more" if len(known) > 20 else ""
        listing = f"Known state ids: {shown}{more}"
    raise StateNotFoundError(
        f"No saved state with id {state_id!r} exists in {backend!r}. {listing}. "
        "Check the id (and the storage path), or start a new run."
    )
