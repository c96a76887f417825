"""Where runs are stored: the storage backends.

The execution core defines what a backend is (:mod:`rh_agents.core.storage`): a
:class:`StateBackend` keeps whole-state checkpoints, an :class:`EventJournal` keeps the
event records of a run as they happen, an :class:`ArtifactBackend` keeps large blobs.
This package implements them:

* :class:`SQLiteStateBackend` (:mod:`.sqlite`), the embedded default: one SQLite file in
  WAL mode, state backend and journal.
* :class:`FileSystemStateBackend` (:mod:`.filesystem`): JSON snapshot files plus a
  JSON-lines journal per run.
* :class:`PostgresStateBackend` (:mod:`.postgres`, the ``postgres`` extra): a PostgreSQL
  database that coordinators on many machines share; :class:`PostgresArtifactBackend` and
  :class:`PostgresCacheBackend` keep artifacts and cached results in it too.
* :class:`InMemoryStateBackend` (:mod:`.memory`): for tests; nothing survives the process.
* :class:`FileSystemArtifactBackend` (:mod:`.filesystem`): one file per artifact.

Everything is stored as JSON through the shared codec (:mod:`._codec`: checksummed
snapshots and records, id checks), so a value loads back in its JSON form (tuples come
back as lists, non-string dict keys as strings) and the backends are interchangeable.

Errors, for every backend:

* :class:`~rh_agents.core.errors.StateCorruptedError`: the stored data is damaged or is
  not an rh_agents history. Raised when a backend opens (SQLite: not a database,
  truncated, a foreign database) or when a damaged snapshot or record is read.
* :class:`~rh_agents.core.errors.SchemaVersionError`: the history or a snapshot was
  written by another schema version.
* :class:`~rh_agents.core.errors.StateStorageError`: the storage medium failed (disk
  full, I/O error, permission denied, database locked for longer than the timeout).
* :class:`~rh_agents.core.errors.ResultSerializationError`: a record or snapshot given to
  a backend is not JSON-serializable; nothing was written.
* :class:`~rh_agents.core.errors.InvalidArgumentError`: an id is empty or, for the file
  system backends, not a safe file name.
* :class:`~rh_agents.core.errors.LifecycleError`: a closed :class:`SQLiteStateBackend`
  was used.

Adding a backend: write one module here with a class that implements
:class:`StateBackend` and :class:`EventJournal` (and/or :class:`ArtifactBackend`), store
the text of :func:`._codec.dump_snapshot` / :func:`._codec.dump_record` as it is and read
it back through :func:`._codec.parse_snapshot` / :func:`._codec.parse_record`, translate
the driver's errors into the errors above, and export it here. The tests of the
storage contract (``tests/storage/``, and the replay tests) run against every backend
that ``BACKEND_KINDS`` in ``tests/conftest.py`` lists.

Example:
    >>> from rh_agents.storage import InMemoryStateBackend
    >>> backend = InMemoryStateBackend()
    >>> backend.append_event("run-1", {"seq": 1})
    >>> backend.load_events("run-1")
    [{'seq': 1}]
"""

from __future__ import annotations

from rh_agents.core.errors import ArtifactNotFoundError, StateStorageError
from rh_agents.core.storage import ArtifactBackend, EventJournal, StateBackend, require_state
from rh_agents.storage.filesystem import FileSystemArtifactBackend, FileSystemStateBackend
from rh_agents.storage.memory import InMemoryStateBackend
from rh_agents.storage.postgres import (
    PostgresArtifactBackend,
    PostgresCacheBackend,
    PostgresStateBackend,
)
from rh_agents.storage.sqlite import SQLiteStateBackend

__all__ = [
    "ArtifactBackend",
    "ArtifactNotFoundError",
    "EventJournal",
    "FileSystemArtifactBackend",
    "FileSystemStateBackend",
    "InMemoryStateBackend",
    "PostgresArtifactBackend",
    "PostgresCacheBackend",
    "PostgresStateBackend",
    "SQLiteStateBackend",
    "StateBackend",
    "StateStorageError",
    "require_state",
]
