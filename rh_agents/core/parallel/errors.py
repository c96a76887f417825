"""The errors a parallel group raises (see the tree in :mod:`rh_agents.core.errors`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rh_agents.core.errors import ExecutionFailure, RhAgentsError

if TYPE_CHECKING:
    from rh_agents.core.events import ExecutionResult
    from rh_agents.core.parallel.models import ParallelEventGroup

__all__ = ["ParallelGroupError", "ParallelTimeoutError"]


class ParallelGroupError(RhAgentsError, ExceptionGroup[Exception]):
    """Raised by :meth:`ParallelExecutionManager.raise_for_failures`: every failure of a
    group, with the categorized summary as its message."""

    group: ParallelEventGroup | None
    """The group's final state (None when built by hand)."""

    def __new__(
        cls, message: str, exceptions: Sequence[Exception], group: ParallelEventGroup | None = None
    ) -> ParallelGroupError:
        self = super().__new__(cls, message, list(exceptions))
        self.group = group
        return self

    def derive(self, excs: Sequence[Exception]) -> ParallelGroupError:  # type: ignore[override]
        return ParallelGroupError(self.message, excs, self.group)


class ParallelTimeoutError(ExecutionFailure, TimeoutError):
    """A group's deadline passed; the completed work is on ``results``.

    Attributes:
        results: one result per item in add order; unfinished ones are ``ok=False``.
        group: the group's final state.
    """

    def __init__(
        self, message: str, results: list[ExecutionResult[Any]], group: ParallelEventGroup
    ) -> None:
        super().__init__(message)
        self.results = results
        self.group = group

    @property
    def completed_results(self) -> list[ExecutionResult[Any]]:
        """Only the results of items that completed."""
        return [r for r in self.results if r.ok]
