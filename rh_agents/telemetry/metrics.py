"""Prometheus metrics of rh_agents (see docs/telemetry.md for the reference).

All metrics live in one :class:`RhAgentsMetrics` per ``CollectorRegistry`` (created on
first use and shared, since a registry refuses duplicate names). Labels are low
cardinality only: operation, actor name, outcome, error type, model, token type, group
name, breaker name; never ids. A cap on distinct values per label folds extras into
``_other`` (logged once).
Label children are cached, so an update costs a dict lookup rather than ``.labels()``.
The group gauges (in flight, queued, max_workers) are not updated per item: a custom
collector sums the running groups of each name when the registry is scraped.
"""

from __future__ import annotations

import logging
import threading
import weakref
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from rh_agents.core.errors import InvalidArgumentError
from rh_agents.telemetry.semconv import Rh

__all__ = [
    "DEFAULT_MAX_LABEL_VALUES",
    "DURATION_BUCKETS",
    "GROUP_DURATION_BUCKETS",
    "OTHER",
    "WAIT_BUCKETS",
    "EventSeries",
    "LiveGroup",
    "RhAgentsMetrics",
    "metrics_for",
]

logger: logging.Logger = logging.getLogger("rh_agents.telemetry")

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

DEFAULT_MAX_LABEL_VALUES = 200
"""Distinct values per label before further ones are folded into ``_other``."""


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

    def __init__(
        self, registry: CollectorRegistry, max_label_values: int = DEFAULT_MAX_LABEL_VALUES
    ) -> None:
        self.registry = registry
        self.cap = _LabelCap(max_label_values)
        self._add_invocation_metrics(registry)
        self._add_group_and_breaker_metrics(registry)
        # In-flight, queued and max_workers are read from the running groups at scrape
        # time (see _ParallelCollector): a gauge set per group name would let concurrent
        # groups of the same name overwrite each other.
        self._live: dict[int, LiveGroup] = {}
        self._last_max_workers: dict[str, int] = {}
        self._live_lock = threading.Lock()
        registry.register(_ParallelCollector(self))
        self._children: dict[tuple[Any, ...], Any] = {}
        self._series: dict[tuple[str, str, str], EventSeries] = {}

    def _add_invocation_metrics(self, r: CollectorRegistry) -> None:
        self.events = Counter(
            Rh.EVENTS,
            "Finished invocations by operation, actor and outcome.",
            ["operation", "name", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            Rh.EVENT_ERRORS,
            "Failed invocations by exception type.",
            ["operation", "name", "error_type"],
            registry=r,
        )
        self.duration = Histogram(
            Rh.EVENT_DURATION,
            "Duration of invocations.",
            ["operation", "name", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            Rh.TOKENS,
            "Tokens used by model calls, by actor, model and token type (input, output).",
            ["name", "model", "token_type"],
            registry=r,
        )
        self.retries = Counter(
            Rh.RETRIES,
            "Retries scheduled after a failed attempt.",
            ["operation", "name"],
            registry=r,
        )

    def _add_group_and_breaker_metrics(self, r: CollectorRegistry) -> None:
        self.breaker_trips = Counter(
            Rh.BREAKER_TRIPS,
            "Transitions of a circuit breaker into open.",
            ["breaker"],
            registry=r,
        )
        self.breaker_rejections = Counter(
            Rh.BREAKER_REJECTIONS,
            "Calls rejected without running by an open circuit breaker.",
            ["breaker"],
            registry=r,
        )
        self.breaker_state = Gauge(
            Rh.BREAKER_STATE,
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["breaker"],
            registry=r,
        )
        self.semaphore_wait = Histogram(
            Rh.SEMAPHORE_WAIT,
            "Time a parallel-group item waited for a worker slot.",
            ["group"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.groups = Counter(
            Rh.GROUPS,
            "Finished parallel groups by status.",
            ["group", "status"],
            registry=r,
        )
        self.group_duration = Histogram(
            Rh.GROUP_DURATION,
            "Duration of parallel groups.",
            ["group", "status"],
            buckets=GROUP_DURATION_BUCKETS,
            registry=r,
        )

    def child(self, metric: Any, *values: str | None) -> Any:
        """The label child of ``metric`` for ``values`` (capped), cached.

        Values folded into ``_other`` are not cached under their own key, so names that
        are really ids cannot grow the cache without bound.
        """
        key = (id(metric), *values)
        found = self._children.get(key)
        if found is None:
            names = metric._labelnames
            capped = tuple(self.cap(n, v) for n, v in zip(names, values, strict=True))
            folded_key = (id(metric), *capped)
            found = self._children.get(folded_key)
            if found is None:
                found = metric.labels(*capped)
                self._children[folded_key] = found
            if OTHER not in capped or OTHER in values:
                self._children[key] = found
        return found

    def event_series(self, operation: str, name: str, outcome: str) -> EventSeries:
        """The events counter and duration histogram children of one label set."""
        key = (operation, name, outcome)
        found = self._series.get(key)
        if found is None:
            capped = self.cap("name", name)
            folded = (operation, capped, outcome)
            found = self._series.get(folded)
            if found is None:
                found = EventSeries(
                    self.child(self.events, operation, capped, outcome),
                    self.child(self.duration, operation, capped, outcome),
                )
                self._series[folded] = found
            if capped == name:
                self._series[key] = found
        return found

    # ------------------------------------------------------------ running groups

    def track_group(self, label: str, max_workers: int) -> LiveGroup:
        """Count a group that starts running under ``label`` until :meth:`untrack_group`.

        The returned record is what ``queue_changed`` updates (two attribute stores);
        the collector sums the records of each label when /metrics is scraped.
        """
        live = LiveGroup(self.cap("group", label), max_workers)
        with self._live_lock:
            self._live[id(live)] = live
            self._last_max_workers[live.label] = max_workers
        return live

    def untrack_group(self, live: LiveGroup) -> None:
        """The group ended: it no longer counts as running or queued."""
        with self._live_lock:
            self._live.pop(id(live), None)

    def parallel_samples(self) -> dict[str, tuple[int, int, int]]:
        """(in flight, queued, max_workers) per group label, as the collector exposes them.

        In flight and queued are summed over the running groups of a label (0 once none
        runs); max_workers is their total capacity, or that of the last group of the
        label when none runs.
        """
        with self._live_lock:
            running = list(self._live.values())
            samples = {label: (0, 0, mw) for label, mw in self._last_max_workers.items()}
        capacity: dict[str, int] = {}
        for live in running:
            in_flight, queued, _ = samples.get(live.label, (0, 0, 0))
            samples[live.label] = (in_flight + live.in_flight, queued + live.queued, 0)
            capacity[live.label] = capacity.get(live.label, 0) + live.max_workers
        for label, total in capacity.items():
            in_flight, queued, _ = samples[label]
            samples[label] = (in_flight, queued, total)
        return samples


class LiveGroup:
    """The running and waiting items of one running group, as last reported."""

    __slots__ = ("in_flight", "label", "max_workers", "queued")

    def __init__(self, label: str, max_workers: int) -> None:
        self.label = label
        self.max_workers = max_workers
        self.in_flight = 0
        self.queued = 0


class EventSeries:
    """The counter and histogram children of one (operation, name, outcome), with the
    trace id of the exemplar each currently holds.

    prometheus_client keeps only the latest exemplar of a counter and of each histogram
    bucket, and validates every exemplar it is given. An exemplar is therefore passed
    only when the trace differs from the one the counter (or the bucket) already points
    to: what a scrape shows is unchanged (each exemplar names the trace of the latest
    observation), but a group of 10 000 events in one trace sets it once instead of
    10 000 times.
    """

    __slots__ = ("bounds", "bucket_traces", "counter", "counter_trace", "histogram")

    def __init__(self, counter: Any, histogram: Any) -> None:
        self.counter = counter
        self.histogram = histogram
        self.bounds: list[float] = list(histogram._upper_bounds)
        self.counter_trace = 0
        self.bucket_traces = [0] * len(self.bounds)

    def record(self, duration: float, trace_id: int, exemplar: dict[str, str] | None) -> None:
        """Count one event and observe its duration, with the trace as exemplar."""
        if exemplar is None:
            self.counter.inc()
            self.histogram.observe(duration)
            return
        if self.counter_trace != trace_id:
            self.counter.inc(1, exemplar)
            self.counter_trace = trace_id
        else:
            self.counter.inc()
        bucket = bisect_left(self.bounds, duration)
        if bucket < len(self.bucket_traces) and self.bucket_traces[bucket] != trace_id:
            self.histogram.observe(duration, exemplar)
            self.bucket_traces[bucket] = trace_id
        else:
            self.histogram.observe(duration)


class _ParallelCollector(Collector):
    """Exposes in-flight, queued and max_workers of the running groups at scrape time."""

    def __init__(self, metrics: RhAgentsMetrics) -> None:
        self._metrics = weakref.ref(metrics)

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        metrics = self._metrics()
        return self._families(metrics.parallel_samples() if metrics is not None else {})

    @staticmethod
    def _families(samples: dict[str, tuple[int, int, int]]) -> list[Metric]:
        in_flight = GaugeMetricFamily(
            Rh.IN_FLIGHT,
            "Items of parallel groups running now (summed over groups of the same name).",
            labels=["group"],
        )
        queued = GaugeMetricFamily(
            Rh.QUEUED,
            "Items of parallel groups waiting for a worker (summed over groups of the same name).",
            labels=["group"],
        )
        max_workers = GaugeMetricFamily(
            Rh.MAX_WORKERS_GAUGE,
            "Configured max_workers of parallel groups (summed over running groups of the "
            "same name; the last one's when none runs).",
            labels=["group"],
        )
        for label, (running, waiting, capacity) in sorted(samples.items()):
            in_flight.add_metric([label], running)
            queued.add_metric([label], waiting)
            max_workers.add_metric([label], capacity)
        return [in_flight, queued, max_workers]


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, RhAgentsMetrics] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


def metrics_for(
    registry: CollectorRegistry | None = None, max_label_values: int | None = None
) -> RhAgentsMetrics:
    """The rh_agents metrics registered in ``registry`` (prometheus' default registry
    when None), registering them on first use.

    The label cap belongs to the registry (its metrics are shared by every
    :class:`~rh_agents.telemetry.Telemetry` using it). ``max_label_values`` None takes
    the registry's cap (:data:`DEFAULT_MAX_LABEL_VALUES` for a new one).

    Raises:
        InvalidArgumentError: ``max_label_values`` is not a positive integer, or differs
            from the cap the registry's rh_agents metrics were created with.
    """
    if max_label_values is not None and (
        isinstance(max_label_values, bool)
        or not isinstance(max_label_values, int)
        or max_label_values < 1
    ):
        raise InvalidArgumentError(
            f"max_label_values must be a positive integer, got {max_label_values!r}."
        )
    registry = registry if registry is not None else REGISTRY
    with _LOCK:
        found = _BY_REGISTRY.get(registry)
        if found is None:
            found = RhAgentsMetrics(
                registry,
                max_label_values if max_label_values is not None else DEFAULT_MAX_LABEL_VALUES,
            )
            _BY_REGISTRY[registry] = found
        elif max_label_values is not None and max_label_values != found.cap.max_values:
            raise InvalidArgumentError(
                f"This registry already holds the rh_agents metrics with "
                f"max_label_values={found.cap.max_values}, so max_label_values="
                f"{max_label_values} cannot apply: the cap is shared by every Telemetry "
                "using the registry. Pass the same value (or leave it out), or give this "
                "Telemetry its own CollectorRegistry."
            )
        return found
