"""Capture the spans and metrics of rh_agents runs in your own tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from rh_agents.core.hooks import ambient_telemetry
from rh_agents.telemetry import Telemetry

__all__ = ["TelemetryCapture", "capture_telemetry"]


class _OpenSpans(SpanProcessor):
    """Tracks spans started and not yet ended."""

    def __init__(self) -> None:
        self.open: dict[int, str] = {}

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.context is not None:
            self.open[span.context.span_id] = span.name

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None:
            self.open.pop(span.context.span_id, None)


class TelemetryCapture:
    """Spans (in memory) and metrics (a private registry) of the runs under a capture.

    Example:
        >>> with capture_telemetry() as cap:  # doctest: +SKIP
        ...     asyncio.run(pipeline(ExecutionState()))
        >>> cap.metric_value("rh_agents_retries_total", name="search")  # doctest: +SKIP
        2.0
        >>> print(cap.span_tree())  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.exporter: InMemorySpanExporter = InMemorySpanExporter()
        # Spans are exported synchronously to memory: nothing to flush at exit, and no
        # exit hook holding on to every capture of a test session.
        self.tracer_provider: TracerProvider = TracerProvider(shutdown_on_exit=False)
        self._open = _OpenSpans()
        self.tracer_provider.add_span_processor(self._open)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.registry: CollectorRegistry = CollectorRegistry()
        self.metric_reader: InMemoryMetricReader = InMemoryMetricReader()
        self.meter_provider: MeterProvider = MeterProvider(
            metric_readers=[self.metric_reader], shutdown_on_exit=False
        )
        self.telemetry: Telemetry = Telemetry(
            self.tracer_provider, self.registry, meter_provider=self.meter_provider
        )

    # ------------------------------------------------------------------- spans

    @property
    def spans(self) -> list[ReadableSpan]:
        """Finished spans, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def find(self, name: str | None = None, **attributes: Any) -> list[ReadableSpan]:
        """Spans with this name (exact, or a prefix ending in ``*``) and attributes.

        Attribute keys use ``__`` for dots: ``rh_agents__outcome="failed"``.
        """
        found = []
        for span in self.spans:
            if name is not None:
                if name.endswith("*"):
                    if not span.name.startswith(name[:-1]):
                        continue
                elif span.name != name:
                    continue
            attrs = span.attributes or {}
            if all(attrs.get(k.replace("__", ".")) == v for k, v in attributes.items()):
                found.append(span)
        return found

    def one(self, name: str | None = None, **attributes: Any) -> ReadableSpan:
        """The single span matching; fails with the span tree when there is not one."""
        found = self.find(name, **attributes)
        if len(found) != 1:
            raise AssertionError(
                f"Expected exactly one span named {name!r} with {attributes}, found "
                f"{len(found)}. Spans:\n{self.span_tree()}"
            )
        return found[0]

    def parent_of(self, span: ReadableSpan) -> ReadableSpan | None:
        """The parent span among the captured ones."""
        if span.parent is None:
            return None
        for candidate in self.spans:
            if candidate.context is not None and candidate.context.span_id == span.parent.span_id:
                return candidate
        return None

    def children(self, span: ReadableSpan) -> list[ReadableSpan]:
        """Captured spans whose parent is ``span``, by start time."""
        assert span.context is not None
        sid = span.context.span_id
        kids = [s for s in self.spans if s.parent is not None and s.parent.span_id == sid]
        return sorted(kids, key=lambda s: s.start_time or 0)

    def roots(self) -> list[ReadableSpan]:
        """Spans whose parent was not captured."""
        ids = {s.context.span_id for s in self.spans if s.context is not None}
        roots = [s for s in self.spans if s.parent is None or s.parent.span_id not in ids]
        return sorted(roots, key=lambda s: s.start_time or 0)

    def span_tree(self, attributes: tuple[str, ...] = ("rh_agents.outcome",)) -> str:
        """An indented tree of span names (with selected attributes), for reading and
        for snapshot assertions."""
        lines: list[str] = []

        def walk(span: ReadableSpan, depth: int) -> None:
            attrs = span.attributes or {}
            extra = " ".join(
                f"{a.rsplit('.', 1)[-1]}={attrs[a]!r}" for a in attributes if a in attrs
            )
            status = " ERROR" if span.status.status_code.name == "ERROR" else ""
            lines.append("  " * depth + span.name + (f" [{extra}]" if extra else "") + status)
            for child in self.children(span):
                walk(child, depth + 1)

        for root in self.roots():
            walk(root, 0)
        return "\n".join(lines)

    def open_spans(self) -> list[str]:
        """Names of spans started and not ended (empty after a clean run)."""
        return sorted(self._open.open.values())

    def assert_no_open_spans(self) -> None:
        """Fail, naming them, if any span was left open."""
        if self._open.open:
            raise AssertionError(f"Spans left open: {self.open_spans()}")

    # ----------------------------------------------------------------- metrics

    def metric_value(self, name: str, /, **labels: str) -> float:
        """The value of sample ``name`` (e.g. ``rh_agents_events_total``) summed over the
        samples matching ``labels``; 0.0 when none matches."""
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name != name:
                    continue
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def histogram_count(self, name: str, /, **labels: str) -> float:
        """Observations of histogram ``name`` (without suffix) matching ``labels``."""
        return self.metric_value(f"{name}_count", **labels)

    def histogram_sum(self, name: str, /, **labels: str) -> float:
        """Sum of the observations of histogram ``name`` matching ``labels``."""
        return self.metric_value(f"{name}_sum", **labels)

    def samples(self, name: str, /) -> list[tuple[dict[str, str], float]]:
        """Every (labels, value) of sample ``name``, for clear assertion messages."""
        return [
            (dict(s.labels), s.value)
            for m in self.registry.collect()
            for s in m.samples
            if s.name == name
        ]

    def otel_points(self, name: str, /) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of OpenTelemetry metric ``name`` (the GenAI metrics,
        e.g. ``gen_ai.client.token.usage``), read now from the capture's meter provider.

        Example:
            >>> [(a["gen_ai.token.type"], p.sum) for a, p in cap.otel_points(
            ...     "gen_ai.client.token.usage")]  # doctest: +SKIP
            [('input', 120), ('output', 30)]
        """
        data = self.metric_reader.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(
                            (dict(point.attributes or {}), point)
                            for point in metric.data.data_points
                        )
        return found

    def assert_metric(self, name: str, expected: float, /, **labels: str) -> None:
        """Assert a metric value, showing every sample of that name when it differs."""
        value = self.metric_value(name, **labels)
        if value != expected:
            raise AssertionError(
                f"{name}{labels} is {value}, expected {expected}. Samples: {self.samples(name)}"
            )


@contextmanager
def capture_telemetry() -> Iterator[TelemetryCapture]:
    """Capture spans and metrics of every ExecutionState created inside the block
    (unless it was given its own telemetry)."""
    capture = TelemetryCapture()
    token = ambient_telemetry.set(capture.telemetry)
    try:
        yield capture
    finally:
        ambient_telemetry.reset(token)
        capture.tracer_provider.shutdown()
        capture.meter_provider.shutdown()
