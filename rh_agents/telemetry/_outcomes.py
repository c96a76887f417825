"""Final outcomes: what the callers of invocations got, and root workflows.

``rh_agents_events_total`` counts every invocation, also each attempt of a parallel-group
item that its group retries. :class:`FinalOutcomes` counts what the caller got instead
(``rh_agents_final_outcomes_total``, ``rh_agents_final_errors_total``): an invocation that
is a group item's own work waits for its group's verdict (held in the item's ``pending``
list, dropped when the group retries the item, counted when the group has decided), any
other one counts when it ends. Root invocations (not run inside another invocation) also
count as workflows (``rh_agents_workflows_total``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rh_agents.telemetry.semconv import Op

if TYPE_CHECKING:
    from rh_agents.telemetry.metrics import EventSeries, RhAgentsMetrics

__all__ = ["FinalOutcomes", "Pending"]

Pending = list[tuple[Any, str, str, str, str | None, bool]]
"""(final-outcomes counter child, operation, name, outcome, error type, root) of the
invocations a group item ran, waiting for the group's verdict."""


class FinalOutcomes:
    """Counts final outcomes and workflows into one registry's metrics."""

    def __init__(self, metrics: RhAgentsMetrics) -> None:
        self._m = metrics

    def invocation(
        self,
        series: EventSeries,
        operation: str,
        name: str,
        outcome: str,
        error_type: str | None,
        root: bool,
        pending: Pending | None,
    ) -> None:
        """An invocation ended; ``pending`` is its group item's list when it is one's
        own work (then its group decides)."""
        final = (series.final, operation, name, outcome, error_type, root)
        if pending is not None:
            pending.append(final)
        else:
            self._count(*final)

    def item(self, pending: Pending, group: str, outcome: str, error_type: str | None) -> None:
        """A group item's outcome is final: count the invocations it ran, or, when it
        reached no actor (a plain coroutine, a call an open breaker rejected), the item
        itself under ``operation="parallel_item"`` and its group's name, as its retries
        are counted."""
        if not pending:
            m = self._m
            counter = m.child(m.final_outcomes, Op.PARALLEL_ITEM, group, outcome)
            pending = [(counter, Op.PARALLEL_ITEM, group, outcome, error_type, False)]
        for final in pending:
            self._count(*final)

    def _count(
        self,
        counter: Any,
        operation: str,
        name: str,
        outcome: str,
        error_type: str | None,
        root: bool,
    ) -> None:
        m = self._m
        counter.inc()
        if error_type is not None:
            m.child(m.final_errors, operation, name, error_type).inc()
        if root:
            m.child(m.workflows, name, outcome).inc()
