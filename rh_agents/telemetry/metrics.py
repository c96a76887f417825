"""Prometheus metrics of rh_agents (see docs/telemetry.md for the reference).

All metrics live in one :class:`RhAgentsMetrics` per ``CollectorRegistry`` (created on
first use and shared, since a registry refuses duplicate names). Labels are low
cardinality only: operation, actor name, outcome, error type, model, token type, group
name, breaker name; never ids. A cap on distinct values per label folds extras into
``_other`` (logged once).
Label children are cached, so an update costs a dict lookup rather than ``.labels()``.
The group gauges (in flight, queued, max_workers) are not updated per item: a custom
collector sums the running groups of each name when the registry is scraped, and
another adds the time circuit breakers have spent open so far.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from rh_agents.core.errors import InvalidArgumentError
from rh_agents.telemetry.semconv import Rh

__all__ = [
    "DEFAULT_MAX_LABEL_VALUES",
    "DURATION_BUCKETS",
    "GROUP_DURATION_BUCKETS",
    "LAG_BUCKETS",
    "OTHER",
    "WAIT_BUCKETS",
    "EventSeries",
    "LiveGroup",
    "RhAgentsMetrics",
    "SpanExportMetrics",
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

LAG_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Event-loop lag: tens of microseconds when the loop is idle, seconds when a handler
blocks it."""

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
        self.cap: _LabelCap = _LabelCap(max_label_values)
        self._add_invocation_metrics(registry)
        self._add_outcome_metrics(registry)
        self._add_group_and_breaker_metrics(registry)
        # In-flight, queued and max_workers are read from the running groups at scrape
        # time (see _ParallelCollector): a gauge set per group name would let concurrent
        # groups of the same name overwrite each other.
        self._live: dict[int, LiveGroup] = {}
        self._last_max_workers: dict[str, int] = {}
        self._live_lock = threading.Lock()
        registry.register(_ParallelCollector(self))
        # Time spent open: completed periods per breaker label, plus the breakers open
        # now (by id), read when /metrics is scraped (see _BreakerCollector).
        self.now: Callable[[], float] = time.monotonic
        self._open_total: dict[str, float] = {}
        self._open_now: dict[int, tuple[str, float, float]] = {}
        self._open_lock = threading.Lock()
        registry.register(_BreakerCollector(self))
        self._children: dict[tuple[Any, ...], Any] = {}
        self._series: dict[tuple[str, str, str], EventSeries] = {}
        self._lazy_lock = threading.Lock()
        self._loop_lag: Histogram | None = None
        self._span_export: SpanExportMetrics | None = None

    def _add_invocation_metrics(self, r: CollectorRegistry) -> None:
        self.events: Counter = Counter(
            Rh.EVENTS,
            "Finished invocations by operation, actor and outcome.",
            ["operation", "name", "outcome"],
            registry=r,
        )
        self.errors: Counter = Counter(
            Rh.EVENT_ERRORS,
            "Failed invocations by exception type.",
            ["operation", "name", "error_type"],
            registry=r,
        )
        self.duration: Histogram = Histogram(
            Rh.EVENT_DURATION,
            "Duration of invocations.",
            ["operation", "name", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.tokens: Counter = Counter(
            Rh.TOKENS,
            "Tokens used by model calls, by actor, model and token type (input, output).",
            ["name", "model", "token_type"],
            registry=r,
        )
        self.retries: Counter = Counter(
            Rh.RETRIES,
            "Retries scheduled after a failed attempt.",
            ["operation", "name"],
            registry=r,
        )

    def _add_outcome_metrics(self, r: CollectorRegistry) -> None:
        self.final_outcomes: Counter = Counter(
            Rh.FINAL_OUTCOMES,
            "Invocations by the outcome their caller got: a group item's attempts that "
            "the group retried are left out, its last attempt counts.",
            ["operation", "name", "outcome"],
            registry=r,
        )
        self.final_errors: Counter = Counter(
            Rh.FINAL_ERRORS,
            "Invocations whose caller got a failure (failed or rejected), by exception type.",
            ["operation", "name", "error_type"],
            registry=r,
        )
        self.workflows: Counter = Counter(
            Rh.WORKFLOWS,
            "Root invocations (not run inside another invocation) by final outcome.",
            ["name", "outcome"],
            registry=r,
        )
        self.model_duration: Histogram = Histogram(
            Rh.MODEL_DURATION,
            "Duration of model calls by actor and model (the responding model when reported).",
            ["name", "model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.journal_write: Histogram = Histogram(
            Rh.JOURNAL_WRITE,
            "Time to append one entry to a state's event journal, by backend type.",
            ["backend"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )

    def _add_group_and_breaker_metrics(self, r: CollectorRegistry) -> None:
        self.breaker_trips: Counter = Counter(
            Rh.BREAKER_TRIPS,
            "Transitions of a circuit breaker into open.",
            ["breaker"],
            registry=r,
        )
        self.breaker_rejections: Counter = Counter(
            Rh.BREAKER_REJECTIONS,
            "Calls rejected without running by an open circuit breaker.",
            ["breaker"],
            registry=r,
        )
        self.breaker_state: Gauge = Gauge(
            Rh.BREAKER_STATE,
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["breaker"],
            registry=r,
        )
        self.breaker_transitions: Counter = Counter(
            Rh.BREAKER_TRANSITIONS,
            "Circuit breaker state changes, by the state entered (closed, half_open, open).",
            ["breaker", "to_state"],
            registry=r,
        )
        self.semaphore_wait: Histogram = Histogram(
            Rh.SEMAPHORE_WAIT,
            "Time a parallel-group item waited for a worker slot.",
            ["group"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.groups: Counter = Counter(
            Rh.GROUPS,
            "Finished parallel groups by status.",
            ["group", "status"],
            registry=r,
        )
        self.group_duration: Histogram = Histogram(
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
        """The events counter, duration histogram and final-outcomes counter children of
        one label set."""
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
                    self.child(self.final_outcomes, operation, capped, outcome),
                )
                self._series[folded] = found
            if capped == name:
                self._series[key] = found
        return found

    # ---------------------------------------------------------------- breakers

    def watch_breaker(self, label: str) -> None:
        """Expose the counters of breaker ``label`` at 0, so that ``increase()`` sees its
        first transition (a series born at 1 has no earlier sample to compare with)."""
        for state in ("closed", "half_open", "open"):
            self.child(self.breaker_transitions, label, state)
        self.child(self.breaker_trips, label)
        self.child(self.breaker_rejections, label)
        with self._open_lock:
            self._open_total.setdefault(self.cap("breaker", label), 0.0)

    def breaker_opened(self, breaker: object, label: str, cooldown: float) -> None:
        """``breaker`` opened: it stays open for at most ``cooldown`` seconds."""
        now = self.now()
        with self._open_lock:
            self._close_period(id(breaker), now)
            self._open_now[id(breaker)] = (self.cap("breaker", label), now, cooldown)

    def breaker_left_open(self, breaker: object) -> None:
        """``breaker`` is no longer open: its open period is complete."""
        now = self.now()
        with self._open_lock:
            self._close_period(id(breaker), now)

    def _close_period(self, key: int, now: float) -> None:
        period = self._open_now.pop(key, None)
        if period is not None:
            label, since, cooldown = period
            self._open_total[label] = self._open_total.get(label, 0.0) + min(now - since, cooldown)

    def open_seconds(self) -> dict[str, float]:
        """Seconds each breaker label has spent open, the current open periods included.

        An open breaker leaves the state lazily (at the first call after its cooldown),
        so a period counts real time up to the cooldown, never more; periods that
        reached it are complete and folded into the totals (a breaker dropped while
        open leaves nothing behind).
        """
        now = self.now()
        with self._open_lock:
            for key, (_, since, cooldown) in list(self._open_now.items()):
                if now - since >= cooldown:
                    self._close_period(key, now)
            totals = dict(self._open_total)
            for label, since, _ in self._open_now.values():
                totals[label] = totals.get(label, 0.0) + (now - since)
        return totals

    # ------------------------------------------------- set up by setup() only

    def loop_lag(self) -> Histogram:
        """The event-loop lag histogram (registered on first use: only an application
        that runs the lag monitor of ``setup()`` exposes it)."""
        with self._lazy_lock:
            if self._loop_lag is None:
                self._loop_lag = Histogram(
                    Rh.EVENT_LOOP_LAG,
                    "Delay between scheduling a callback on a running event loop and "
                    "running it (probed periodically from a monitor thread).",
                    buckets=LAG_BUCKETS,
                    registry=self.registry,
                )
            return self._loop_lag

    def span_export(self) -> SpanExportMetrics:
        """The span export counters (registered on first use, by ``setup()``)."""
        with self._lazy_lock:
            if self._span_export is None:
                self._span_export = SpanExportMetrics(self.registry)
            return self._span_export

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
        self.label: str = label
        self.max_workers: int = max_workers
        self.in_flight: int = 0
        self.queued: int = 0


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

    __slots__ = ("bounds", "bucket_traces", "counter", "counter_trace", "final", "histogram")

    def __init__(self, counter: Any, histogram: Any, final: Any) -> None:
        self.counter: Any = counter
        self.histogram: Any = histogram
        self.final: Any = final  # the final-outcomes child of the same labels
        self.bounds: list[float] = list(histogram._upper_bounds)
        self.counter_trace: int = 0
        self.bucket_traces: list[int] = [0] * len(self.bounds)

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


class _BreakerCollector(Collector):
    """Exposes the seconds circuit breakers spent open, the current periods included."""

    def __init__(self, metrics: RhAgentsMetrics) -> None:
        self._metrics = weakref.ref(metrics)

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        metrics = self._metrics()
        return self._families(metrics.open_seconds() if metrics is not None else {})

    @staticmethod
    def _families(totals: dict[str, float]) -> list[Metric]:
        family = CounterMetricFamily(
            Rh.BREAKER_OPEN_SECONDS,
            "Seconds circuit breakers spent open (rejecting calls), real time, each open "
            "period up to the breaker's cooldown.",
            labels=["breaker"],
        )
        for label, seconds in sorted(totals.items()):
            family.add_metric([label], seconds)
        return [family]


class SpanExportMetrics:
    """Counters of the spans the span processors of ``setup()`` handled, by exporter.

    Attributes:
        exported: spans an exporter accepted.
        failed: spans in exports that failed or raised.
        dropped: spans never handed to an exporter (``reason``: ``queue_full`` when the
            processor's queue was full, ``shutdown`` when it had stopped or was stopped
            while still holding them).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.exported: Counter = Counter(
            Rh.SPANS_EXPORTED,
            "Spans an exporter accepted, by exporter type.",
            ["exporter"],
            registry=registry,
        )
        self.failed: Counter = Counter(
            Rh.SPANS_EXPORT_FAILED,
            "Spans in exports that failed or raised, by exporter type.",
            ["exporter"],
            registry=registry,
        )
        self.dropped: Counter = Counter(
            Rh.SPANS_DROPPED,
            "Spans dropped before reaching an exporter, by exporter type and reason "
            "(queue_full, shutdown).",
            ["exporter", "reason"],
            registry=registry,
        )


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
