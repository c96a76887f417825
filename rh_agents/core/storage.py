"""The storage interfaces of the execution core: what a backend must provide.

The core depends on these protocols alone; the backends in :mod:`rh_agents.storage`
(SQLite, file system, in-memory) implement them from above:

* :class:`StateBackend` keeps whole-state checkpoints (:class:`StateSnapshot`).
* :class:`EventJournal` keeps the event records of a run, in order, and reads them
  back. Its methods are synchronous: they serve inspection, tools and code that writes
  records directly.
* :class:`LeasedJournal` is the journal a run records into while it runs: the state
  opens its run with :meth:`LeasedJournal.open_run` and gets a :class:`RunJournal`, an
  asynchronous writer that holds the run's **lease** (one writer per run, across
  processes) and commits records **off the event loop**, many at a time. The embedded
  backends adapt their synchronous storage with a writer thread; a backend with an
  asyncio driver implements :class:`RunJournal` with a task instead. An in-process
  backend's run journal may also be an :class:`EntryJournal`, which keeps history
  entries as they are and builds their records only when they are read.
* :class:`ArtifactBackend` keeps large blobs that snapshots refer to by reference.

The rules every backend keeps (the contract tests in ``tests/storage/`` check them for
every backend):

* Records of a run have consecutive positions 1, 2, 3, ... and the backend stores the
  run's **high-water mark** (its last position) in the same transaction as the records.
  Reading a run whose positions have a gap, or whose rows stop short of the mark or go
  past it, raises :class:`~rh_agents.core.errors.StateCorruptedError`; so does a record
  without its checksum (persistent backends).
* When :meth:`RunJournal.flush` returns, every record appended before it survives the
  death of the process; a run hands a call's result back only after its COMPLETED
  record was flushed.
* A run is written by one :class:`RunJournal` at a time: opening it while another holds
  the lease raises :class:`~rh_agents.core.errors.StateLockedError` naming the holder. A
  holder that is provably dead (same host, process gone) is taken over at once; one on
  another host once its heartbeat is older than the backend's lease timeout.

Backends report failures with the storage errors of :mod:`rh_agents.core.errors`:
:class:`~rh_agents.core.errors.StateStorageError` (the medium failed, the file was
deleted or replaced, the history is read-only),
:class:`~rh_agents.core.errors.StateCorruptedError` (damaged data),
:class:`~rh_agents.core.errors.SchemaVersionError` (another schema version),
:class:`~rh_agents.core.errors.StateLockedError` (another writer) and
:class:`~rh_agents.core.errors.ArtifactNotFoundError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, runtime_checkable

from rh_agents.core._validate import has_methods
from rh_agents.core.errors import LifecycleError, StateLockedError, StateNotFoundError
from rh_agents.core.state_recovery import StateSnapshot, StateStatus

if TYPE_CHECKING:
    from rh_agents.core.events import ExecutionEvent

__all__ = [
    "ArtifactBackend",
    "EntryJournal",
    "EventJournal",
    "JournalOpening",
    "JournalStatistics",
    "LeaseHolder",
    "LeasedJournal",
    "RunJournal",
    "StateBackend",
    "history_exists",
    "journal_conflict",
    "lease_held",
    "lease_lost",
    "require_state",
]


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
    saved snapshot. :meth:`append_event` writes on the calling thread and takes no
    lease: runs record through :meth:`LeasedJournal.open_run` instead.
    """

    def append_event(self, state_id: str, record: dict[str, Any]) -> None:
        """Append one record to the journal of ``state_id``, durably, at the next
        position (a writer that holds the run's lease then finds the journal changed)."""
        ...

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        """All records of ``state_id`` in append order; ``[]`` for an unknown id.

        Raises:
            StateCorruptedError: a record is damaged or missing (a gap, a missing tail,
                rows past the high-water mark, a record without its checksum).
        """
        ...

    def list_journals(self) -> list[str]:
        """Sorted ids of the runs that have at least one journal record."""
        ...

    def close(self) -> None:
        """Release files and connections. Closing twice is allowed."""
        ...


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds the lease of a run: a process, and which of its journals.

    Attributes:
        host: the host name of the process.
        pid: its process id.
        since: when it took the lease (UTC).
        owner: a token unique to the :class:`RunJournal` holding it.
    """

    host: str
    pid: int
    since: datetime
    owner: str

    def __str__(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.since:%Y-%m-%d %H:%M:%S} UTC"


@dataclass(frozen=True)
class JournalOpening:
    """What the core hands a backend when a run starts recording.

    Attributes:
        state_id: the run.
        position: how many records of the run the state already holds (those it was
            restored with); the journal's high-water mark must be this number. 0 for
            a new run, whose journal must be empty.
        snapshot: stored as the run's first snapshot when the backend holds none yet
            (None: the backend held one when the state was created).
    """

    state_id: str
    position: int = 0
    snapshot: StateSnapshot | None = None


@dataclass(frozen=True)
class JournalStatistics:
    """What a :class:`RunJournal` has written so far.

    Attributes:
        records: records committed.
        commits: transactions (or fsync-free writes) that committed them; fewer than
            ``records`` when concurrent completions shared a commit.
        commit_seconds: time spent committing, in total.
        largest_commit: the most records one commit carried.
    """

    records: int = 0
    commits: int = 0
    commit_seconds: float = 0.0
    largest_commit: int = 0


class RunJournal(Protocol):
    """The journal of one run, open for writing under the run's lease.

    Nothing here blocks the event loop: :meth:`append` queues a record (in order, at the
    next position) and returns; the backend commits queued records in the background,
    as many as are waiting in one transaction (group commit). :meth:`flush` waits until
    every record appended so far is committed; the first flush also waits for the
    lease. Cancelling a flush cancels only the wait: the records are still committed.

    Example:
        >>> journal = backend.open_run(JournalOpening("run-1"))  # doctest: +SKIP
        >>> journal.append({"seq": 1, "address": "a", "status": "started"})  # doctest: +SKIP
        >>> await journal.flush()  # doctest: +SKIP
        >>> journal.close(); await journal.wait_closed()  # doctest: +SKIP
    """

    @property
    def holder(self) -> LeaseHolder:
        """This journal's identity as a lease holder."""
        ...

    def append(self, record: dict[str, Any]) -> None:
        """Queue ``record`` at the next position; never blocks.

        Raises:
            StateError: the journal failed earlier (the error it failed with), or it is
                closed.
        """
        ...

    async def flush(self) -> None:
        """Return once the lease is held and every appended record is committed.

        Raises:
            StateLockedError: another writer holds the run, or wrote to it since the
                state was loaded.
            StateStorageError: a write failed (disk full, I/O error, the file was
                deleted or replaced, the history is read-only).
            StateCorruptedError: the stored run is damaged.
            LifecycleError: a new run's id already has a history.
        """
        ...

    def close(self) -> None:
        """Commit what is queued, then release the lease, in the background."""
        ...

    async def wait_closed(self) -> None:
        """Return once :meth:`close` has finished; raises like :meth:`flush`."""
        ...

    def statistics(self) -> JournalStatistics:
        """What this journal has committed so far."""
        ...


class EntryJournal(RunJournal, Protocol):
    """A :class:`RunJournal` that also takes history entries as they are.

    For backends in the recording process: instead of building every record when it is
    appended, the core hands over the entry (an immutable snapshot) and its position,
    and the backend builds the record (:func:`~rh_agents.core.history.event_to_record`)
    when someone reads it, which a run that is never read back never pays for. The
    core does so only for entries whose record cannot change any more
    (:func:`~rh_agents.core.history.record_is_final`); the others come through
    :meth:`RunJournal.append`, as records.
    """

    def append_entry(self, entry: ExecutionEvent[Any], position: int) -> None:
        """Queue the record of ``entry`` at the next position, ``position``; never
        blocks. Raises like :meth:`RunJournal.append`."""
        ...


@runtime_checkable
class LeasedJournal(EventJournal, Protocol):
    """An :class:`EventJournal` that runs record into under a lease, off the event loop."""

    def open_run(self, opening: JournalOpening) -> RunJournal:
        """A writer for ``opening.state_id``; returns at once (no I/O on the caller's
        thread): the lease is taken, and the position checked, before the first
        record commits."""
        ...

    def iter_events(self, state_id: str) -> Iterator[dict[str, Any]]:
        """The records of ``state_id`` in order, read lazily from one consistent view.

        Raises (while iterating):
            StateCorruptedError: as :meth:`EventJournal.load_events`.
        """
        ...

    def journal_length(self, state_id: str) -> int:
        """The run's high-water mark: how many records its journal holds (0: none)."""
        ...


def keeps_journal(backend: object) -> TypeGuard[EventJournal]:
    """Whether ``backend`` offers :class:`EventJournal`'s methods (see
    ``rh_agents.core._validate.has_methods`` for why not ``isinstance``)."""
    return has_methods(backend, "append_event", "load_events", "list_journals")


def records_runs(backend: object) -> TypeGuard[LeasedJournal]:
    """Whether runs record into ``backend`` through :meth:`LeasedJournal.open_run`."""
    return keeps_journal(backend) and has_methods(
        backend, "open_run", "iter_events", "journal_length"
    )


# ---------------------------------------------------------------- the lease errors
# Every backend words them the same way.


def lease_held(state_id: str, holder: LeaseHolder, takeover: str) -> StateLockedError:
    """The error for opening a run whose lease ``holder`` holds; ``takeover`` says when
    a dead holder's lease is taken over."""
    return StateLockedError(
        f"State '{state_id}' is being recorded by another writer ({holder}); only one "
        "process, and one ExecutionState, may record a run at a time, so nothing was "
        f"recorded and no call ran. Wait for it to finish or stop it, then resume. "
        f"{takeover}",
        state_id=state_id,
        holder=holder,
    )


def lease_lost(state_id: str, holder: LeaseHolder) -> StateLockedError:
    """The error for a writer whose lease was taken over by ``holder``."""
    return StateLockedError(
        f"This run lost the lease of state '{state_id}' to another writer ({holder}): its "
        "heartbeat was older than the lease timeout, so the lease was taken over. Records "
        "queued since were not written. Let the other writer finish, or stop it, then "
        "resume; raise the backend's lease timeout if this process stalls for long.",
        state_id=state_id,
        holder=holder,
    )


def history_exists(backend: object, state_id: str) -> LifecycleError:
    """The error for a new run whose id already has a history in ``backend``."""
    return LifecycleError(
        f"{type(backend).__name__} already holds a history for state '{state_id}'. Resume it "
        f"with ExecutionState.load_from_state_id({state_id!r}, backend), or start a new run "
        "with another state_id (or none, for a fresh one)."
    )


def journal_conflict(state_id: str, stored: int, expected: int) -> StateLockedError:
    """The error for a journal that holds ``stored`` records where the state holds
    ``expected``: another writer appended after the state was loaded."""
    return StateLockedError(
        f"The journal of state '{state_id}' holds {stored} record(s), but this state was "
        f"loaded with {expected}: another writer recorded into the run after it was "
        "loaded (or it was restored from an older snapshot). Nothing was recorded; load "
        f"it again with ExecutionState.load_from_state_id('{state_id}', backend).",
        state_id=state_id,
    )


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
    if keeps_journal(backend):
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
