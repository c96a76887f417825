"""Prometheus metrics of rh_agents (see docs/telemetry.md for the reference).

All metrics live in one :class:`RhAgentsMetrics` per ``CollectorRegistry`` (created on
first use and shared, since a registry refuses duplicate names). Labels are low
cardinality only: operation, actor name, outcome, error type, group name, breaker name;
never ids. A cap on distinct values per label folds extras into ``_other`` (logged once).
Label children are cached, so an update costs a dict lookup rather than ``.labels()``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "DURATION_BUCKETS",
    "GROUP_DURATION_BUCKETS",
    "OTHER",
    "WAIT_BUCKETS",
    "RhAgentsMetrics",
    "metrics_for",
]

logger = logging.getLogger("rh_agents.telemetry")

DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
"""Event durations: a cached tool call (~1 ms) up to a five-minute LLM call."""

WAIT_BUCKETS = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""Waits for a worker slot: sub-millisecond when there is capacity, minutes when not."""

GROUP_DURATION_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Whole parallel groups: from a fast fan-out to an hour-long batch."""

OTHER = "_other"


class _LabelCap:
    """Limits the distinct values of each label name; extras become ``_other``."""

    def __init__(self, max_values: int) -> None:
        self.max_values = max_values
        self._seen: dict[str, set[str]] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, label: str, value: str | None) -> str:
        text = value if value else "unnamed"
        seen = self._seen.get(label)
        if seen is not None and text in seen:
            return text
        with self._lock:
            seen = self._seen.setdefault(label, set())
            if text in seen:
                return text
            if len(seen) < self.max_values:
                seen.add(text)
                return text
            if label not in self._warned:
                self._warned.add(label)
                logger.warning(
                    "Metric label '%s' reached %d distinct values; further values are "
                    "recorded as '%s'. Use names, not ids, as actor and group names.",
                    label,
                    self.max_values,
                    OTHER,
                )
        return OTHER


class RhAgentsMetrics:
    """The metric objects in one registry, with cached label children."""

    def __init__(self, registry: CollectorRegistry, max_label_values: int = 200) -> None:
        self.registry = registry
        self.cap = _LabelCap(max_label_values)
        r = registry
        self.events = Counter(
            "rh_agents_events",
            "Finished invocations by operation, actor and outcome.",
            ["operation", "name", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "rh_agents_event_errors",
            "Failed invocations by exception type.",
            ["operation", "name", "error_type"],
            registry=r,
        )
        self.duration = Histogram(
            "rh_agents_event_duration_seconds",
            "Duration of invocations.",
            ["operation", "name", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "rh_agents_retries",
            "Retries scheduled after a failed attempt.",
            ["operation", "name"],
            registry=r,
        )
        self.breaker_trips = Counter(
            "rh_agents_circuit_breaker_trips",
            "Transitions of a circuit breaker into open.",
            ["breaker"],
            registry=r,
        )
        self.breaker_rejections = Counter(
            "rh_agents_circuit_breaker_rejections",
            "Calls rejected without running by an open circuit breaker.",
            ["breaker"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "rh_agents_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["breaker"],
            registry=r,
        )
        self.semaphore_wait = Histogram(
            "rh_agents_semaphore_wait_seconds",
            "Time a parallel-group item waited for a worker slot.",
            ["group"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.groups = Counter(
            "rh_agents_parallel_groups",
            "Finished parallel groups by status.",
            ["group", "status"],
            registry=r,
        )
        self.group_duration = Histogram(
            "rh_agents_parallel_group_duration_seconds",
            "Duration of parallel groups.",
            ["group", "status"],
            buckets=GROUP_DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "rh_agents_parallel_in_flight",
            "Items of parallel groups running now.",
            ["group"],
            registry=r,
        )
        self.queued = Gauge(
            "rh_agents_parallel_queued",
            "Items of parallel groups waiting for a worker.",
            ["group"],
            registry=r,
        )
        self.max_workers = Gauge(
            "rh_agents_parallel_max_workers",
            "Configured max_workers of parallel groups.",
            ["group"],
            registry=r,
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *values: str | None) -> Any:
        """The label child of ``metric`` for ``values`` (capped), cached."""
        key = (id(metric), *values)
        found = self._children.get(key)
        if found is None:
            names = metric._labelnames
            capped = [self.cap(n, v) for n, v in zip(names, values, strict=True)]
            found = metric.labels(*capped)
            self._children[key] = found
        return found


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, RhAgentsMetrics] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


def metrics_for(
    registry: CollectorRegistry | None = None, max_label_values: int = 200
) -> RhAgentsMetrics:
    """The rh_agents metrics registered in ``registry`` (prometheus' default registry
    when None), registering them on first use."""
    registry = registry if registry is not None else REGISTRY
    with _LOCK:
        found = _BY_REGISTRY.get(registry)
        if found is None:
            found = RhAgentsMetrics(registry, max_label_values)
            _BY_REGISTRY[registry] = found
        return found
