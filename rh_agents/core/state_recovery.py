"""The stored form of a workflow run: snapshots, their metadata and how to replay them.

A :class:`StateSnapshot` is a whole-state checkpoint of one run. The execution core
stores its history inside :attr:`StateSnapshot.execution_state` (opaque to this module)
and hands the snapshot to a :class:`~rh_agents.core.storage.StateBackend`. Between
checkpoints every event record is appended to an
:class:`~rh_agents.core.storage.EventJournal`, so nothing completed is lost when the
process dies.

Snapshots carry a schema :attr:`~StateSnapshot.version`. Validating a snapshot written
by another schema version raises :class:`~rh_agents.core.errors.SchemaVersionError`
before any other check, so an old or new history never half-loads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from rh_agents.core.errors import SchemaVersionError

__all__ = [
    "SCHEMA_VERSION",
    "ReplayMode",
    "StateMetadata",
    "StateSnapshot",
    "StateStatus",
]

SCHEMA_VERSION = 1
"""The snapshot schema version this release writes and reads."""


class ReplayMode(str, Enum):
    """How a resumed run treats invocations that already completed in the stored history.

    Attributes:
        NORMAL: completed invocations are not run again; their recorded results are
            returned as they are, and they are not published to the event bus again.
        REPUBLISH_ALL: like ``NORMAL``, but every replayed invocation is published to
            the event bus again, so subscribers (dashboards, loggers) see the whole run.
        VALIDATION: every invocation runs again, and any divergence from the recorded
            history (a different result or status) is reported.
    """

    NORMAL = "normal"
    REPUBLISH_ALL = "republish_all"
    VALIDATION = "validation"


class StateStatus(str, Enum):
    """The lifecycle status of a stored run."""

    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StateMetadata(BaseModel):
    """Descriptive data about a stored run, used for listing and filtering.

    Example:
        >>> StateMetadata(pipeline_name="triage", tags=["nightly"]).pipeline_name
        'triage'
    """

    tags: list[str] = Field(default_factory=list)
    description: str | None = None
    pipeline_name: str | None = None
    parent_state_id: str | None = None
    custom: dict[str, Any] = Field(default_factory=dict)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class StateSnapshot(BaseModel):
    """A whole-state checkpoint of one run.

    Timestamps are always timezone-aware UTC: a naive datetime is taken to be UTC, and
    an aware one is converted. ``execution_state`` belongs to the execution core and
    must be JSON-serializable, because every backend stores snapshots as JSON.

    Validation raises :class:`~rh_agents.core.errors.SchemaVersionError` when
    ``version`` is not :data:`SCHEMA_VERSION`, and a pydantic ``ValidationError`` for
    any other malformed field.

    Example:
        >>> snap = StateSnapshot(state_id="run-1", execution_state={"events": []})
        >>> StateSnapshot.model_validate_json(snap.model_dump_json()) == snap
        True
    """

    state_id: str = Field(min_length=1)
    created_at: datetime = Field(default_factory=_utc_now)
    updated_at: datetime = Field(default_factory=_utc_now)
    version: int = SCHEMA_VERSION
    status: StateStatus = StateStatus.RUNNING
    metadata: StateMetadata = Field(default_factory=StateMetadata)
    execution_state: dict[str, Any] = Field(default_factory=dict)
    artifact_refs: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _check_schema_version(cls, data: Any) -> Any:
        # Runs before field validation, so a history from another schema version is
        # reported as such instead of as a confusing list of field errors.
        if isinstance(data, dict):
            found = data.get("version", SCHEMA_VERSION)
            if isinstance(found, int) and not isinstance(found, bool):
                _require_schema_version(found, data.get("state_id"))
        return data

    @model_validator(mode="after")
    def _check_parsed_version(self) -> StateSnapshot:
        _require_schema_version(self.version, self.state_id)
        return self

    @field_validator("created_at", "updated_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _require_schema_version(found: int, state_id: Any) -> None:
    if found == SCHEMA_VERSION:
        return
    which = f"State {state_id!r}" if isinstance(state_id, str) else "This state"
    if found > SCHEMA_VERSION:
        advice = "Upgrade rh_agents to a release that reads it."
    else:
        advice = (
            "Resume it with the rh_agents release that wrote it, or start a new run; "
            "old histories are not migrated automatically."
        )
    raise SchemaVersionError(
        f"{which} was written with snapshot schema version {found}, but this release of "
        f"rh_agents reads only schema version {SCHEMA_VERSION}. {advice}"
    )
