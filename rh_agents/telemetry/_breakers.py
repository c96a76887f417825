"""The circuit breakers parallel groups use, as metrics and span events.

Each breaker is watched once (whichever state's instrumentation sees it first): its
counters are exposed at 0 at once, so ``increase()`` sees its first opening; every
transition counts (``rh_agents_circuit_breaker_transitions_total{to_state}``), an open
period is timed (``rh_agents_circuit_breaker_open_seconds_total``, read at scrape time),
the state gauge follows it, and a ``circuit_breaker.state_change`` event goes on the
current span; every rejection counts.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from rh_agents.core.circuit_breaker import CircuitState
from rh_agents.telemetry.semconv import Rh

if TYPE_CHECKING:
    from rh_agents.core.circuit_breaker import CircuitBreaker
    from rh_agents.telemetry.metrics import RhAgentsMetrics

__all__ = ["BreakerWatch"]


class BreakerWatch:
    """Records the state, transitions, time open and rejections of circuit breakers."""

    def __init__(self, metrics: RhAgentsMetrics | None, fault: Callable[[str], None]) -> None:
        self._metrics = metrics
        self._fault = fault
        self._breakers: weakref.WeakSet[Any] = weakref.WeakSet()

    def watch(self, breaker: Any) -> None:
        try:
            if breaker in self._breakers:
                return
            self._breakers.add(breaker)
            m = self._metrics
            if m is not None:
                m.watch_breaker(breaker.name)
                m.child(m.breaker_state, breaker.name).set(breaker.state.gauge_value)
            breaker.add_listener(self._on_transition)
            breaker.add_reject_listener(self._on_reject)
        except Exception:
            self._fault("watch_breaker")

    def _on_transition(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        try:
            m = self._metrics
            if m is not None:
                m.child(m.breaker_state, breaker.name).set(new.gauge_value)
                m.child(m.breaker_transitions, breaker.name, new.value).inc()
                if new is CircuitState.OPEN:
                    m.child(m.breaker_trips, breaker.name).inc()
                    m.breaker_opened(breaker, breaker.name, breaker.recovery_timeout)
                elif old is CircuitState.OPEN:
                    m.breaker_left_open(breaker)
            span = trace.get_current_span()
            if span.is_recording():
                span.add_event(
                    Rh.EVENT_STATE_CHANGE,
                    {
                        Rh.BREAKER_NAME: breaker.name,
                        Rh.BREAKER_FROM: old.value,
                        Rh.BREAKER_TO: new.value,
                    },
                )
        except Exception:
            self._fault("breaker_transition")

    def _on_reject(self, breaker: CircuitBreaker) -> None:
        try:
            m = self._metrics
            if m is not None:
                m.child(m.breaker_rejections, breaker.name).inc()
        except Exception:
            self._fault("breaker_reject")
