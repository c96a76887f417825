"""Where runs are stored (compatibility module).

The storage protocols live in :mod:`rh_agents.core.storage`, the backends in the
:mod:`rh_agents.storage` package; every name this module has always exported is
re-exported from there, so ``from rh_agents.state_backends import SQLiteStateBackend``
keeps working.
"""

from __future__ import annotations

from rh_agents.storage import (
    ArtifactBackend,
    ArtifactNotFoundError,
    EventJournal,
    FileSystemArtifactBackend,
    FileSystemStateBackend,
    InMemoryStateBackend,
    PostgresArtifactBackend,
    PostgresCacheBackend,
    PostgresStateBackend,
    SQLiteStateBackend,
    StateBackend,
    StateStorageError,
    require_state,
)

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
