"""Enumerations shared by the whole execution core.

Both enums are ``str`` enums with lower-case values, so they serialize as plain strings
in snapshots, span attributes and metric labels.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["EventType", "ExecutionStatus"]


class EventType(str, Enum):
    """The kind of actor an :class:`~rh_agents.core.events.ExecutionEvent` runs."""

    AGENT_CALL = "agent_call"
    TOOL_CALL = "tool_call"
    LLM_CALL = "llm_call"


class ExecutionStatus(str, Enum):
    """One status change of an invocation, as recorded in the history.

    ``STARTED`` is followed by exactly one terminal status (``COMPLETED``, ``FAILED`` or
    ``CANCELLED``); ``RECOVERED`` marks an invocation whose recorded result was replayed
    from a restored history instead of running; ``RETRYING`` marks a failed attempt that
    will be tried again.
    """

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    RECOVERED = "recovered"
    RETRYING = "retrying"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    AWAITING = "awaiting"
    HUMAN_INTERVENTION = "human_intervention"
    CANCELLING = "cancelling"

    @property
    def is_terminal(self) -> bool:
        """Whether this status ends an invocation."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.RECOVERED,
        ExecutionStatus.CANCELLED,
        ExecutionStatus.INTERRUPTED,
    }
)
