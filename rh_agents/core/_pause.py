"""The signal of a paused run, below the runner (see :mod:`rh_agents.core.interrupts`)."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rh_agents.core.execution import ExecutionState

__all__ = ["Interrupted", "PendingInterrupt", "current_state"]


current_state: ContextVar[ExecutionState | None] = ContextVar(
    "rh_agents_current_state", default=None
)
"""The state of the invocation running the current code (set by the runner)."""


@dataclass(frozen=True)
class PendingInterrupt:
    """An ``interrupt()`` that waits for its answer.

    Attributes:
        address: where it is in the run (the key of ``resume_with({address: answer})``).
        payload: what ``interrupt(payload)`` was given (as stored: its JSON form).
    """

    address: str
    payload: Any


class Interrupted(BaseException):
    """The run paused at one or more ``interrupt()`` calls; not an error.

    A ``BaseException``, like ``asyncio.CancelledError``, so that handlers' ``except
    Exception`` and the retry policies let it through. The top-level call turns it into
    an ``ok=False`` result with status AWAITING; it reaches your code only from
    ``p.gather()`` / ``p.stream()`` of a group opened outside any handler.

    Attributes:
        interrupts: what waits, in the order the interrupts were reached.
    """

    def __init__(self, interrupts: tuple[PendingInterrupt, ...]) -> None:
        where = ", ".join(f"'{pending.address}'" for pending in interrupts)
        super().__init__(
            f"The run is waiting for {len(interrupts)} answer(s) at {where}; give them "
            "with state.resume_with(...) and make the same call again to go on."
        )
        self.interrupts: tuple[PendingInterrupt, ...] = interrupts

    @classmethod
    def merge(cls, pauses: list[Interrupted]) -> Interrupted:
        """One pause for several (the items of a group that wait)."""
        if len(pauses) == 1:
            return pauses[0]
        return cls(tuple(pending for pause in pauses for pending in pause.interrupts))
