"""Adaptive limiters as a metric and on spans.

Each :class:`~rh_agents.core.adaptive_limiter.AdaptiveLimiter` is watched once
(whichever state's instrumentation sees it first): the gauge
``rh_agents_limiter_limit{limiter}`` follows its limit, and every change of the limit
is a ``limiter.limit_change`` event on the current span (the group's span while one of
its items runs, the actor's otherwise). A group's span also gets the limit it started
with, the lowest one while it ran and the one it ended with (see ``_otel``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from rh_agents.core.adaptive_limiter import AdaptiveLimiter
from rh_agents.telemetry.semconv import Rh

if TYPE_CHECKING:
    from rh_agents.telemetry.metrics import RhAgentsMetrics

__all__ = ["LimiterWatch"]


class LimiterWatch:
    """Records the limit of adaptive limiters, and the lowest one each group saw."""

    def __init__(self, metrics: RhAgentsMetrics | None, fault: Callable[[str], None]) -> None:
        self._metrics = metrics
        self._fault = fault
        self._limiters: weakref.WeakSet[Any] = weakref.WeakSet()
        # The handles of the running groups that use each limiter (by the limiter's id);
        # a handle keeps the lowest limit its group saw in ``limiter_lowest``.
        self._groups: dict[int, set[Any]] = {}

    def watch(self, limiter: Any, group: Any = None) -> None:
        """Watch ``limiter`` (if adaptive); ``group``: the handle of a group using it."""
        if not isinstance(limiter, AdaptiveLimiter):
            return
        try:
            if limiter not in self._limiters:
                self._limiters.add(limiter)
                m = self._metrics
                if m is not None:
                    m.child(m.limiter_limit, limiter.name).set(limiter.limit)
                limiter.add_listener(self._on_change)
            if group is not None:
                group.limiter = limiter
                group.limiter_lowest = limiter.limit
                self._groups.setdefault(id(limiter), set()).add(group)
                span = group.span
                if span is not None and span.is_recording():
                    span.set_attribute(Rh.LIMITER_NAME, limiter.name)
                    span.set_attribute(Rh.LIMITER_LIMIT_INITIAL, limiter.limit)
        except Exception:
            self._fault("watch_limiter")

    def group_ended(self, group: Any) -> None:
        """``group`` (a group handle with a ``limiter``) ended: its span gets the limit
        now and the lowest one it saw; later changes no longer concern it."""
        limiter = group.limiter
        groups = self._groups.get(id(limiter))
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._groups[id(limiter)]
        span = group.span
        if span is not None and span.is_recording():
            span.set_attribute(Rh.LIMITER_LIMIT, limiter.limit)
            span.set_attribute(Rh.LIMITER_LIMIT_MIN, group.limiter_lowest)

    def _on_change(self, limiter: AdaptiveLimiter, old: int, new: int) -> None:
        try:
            m = self._metrics
            if m is not None:
                m.child(m.limiter_limit, limiter.name).set(new)
            for group in self._groups.get(id(limiter), ()):
                group.limiter_lowest = min(group.limiter_lowest, new)
            span = trace.get_current_span()
            if span.is_recording():
                span.add_event(
                    Rh.EVENT_LIMIT_CHANGE,
                    {Rh.LIMITER_NAME: limiter.name, Rh.LIMITER_FROM: old, Rh.LIMITER_LIMIT: new},
                )
        except Exception:
            self._fault("limiter_change")
