"""Telemetry set-ups for P2 and P7, and the hand-written "floor" P2 compares against."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rh_agents.telemetry import DURATION_BUCKETS, WAIT_BUCKETS, Telemetry
from rh_agents.telemetry._setup import MAX_EXPORT_BATCH, MAX_QUEUE_SIZE, SCHEDULE_DELAY_MS

DEFAULT = "default: no-op global provider + default registry"
TRACING_ONLY = "tracing only, no-op global provider (metrics=False)"
DEFAULT_METRICS_ONLY = "metrics only, default registry (tracing=False)"


class CountingExporter(SpanExporter):
    """Counts the spans exported and keeps none, as an OTLP exporter keeps none.

    The SDK's ``InMemorySpanExporter`` holds every span until the process ends: at
    100 000 events the collector's full collections then walk 100 000 spans the harness
    holds, a cost a run exporting to a collector never pays (P7's per-event cost grew
    with the group's size mostly for this reason).
    """

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)  # one thread exports: the processor's worker
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class SdkTracing:
    """An SDK TracerProvider with a BatchSpanProcessor sized like ``telemetry.setup()``
    does, exporting to a counter so the spans can be counted."""

    def __init__(self) -> None:
        self.exporter = CountingExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(
            BatchSpanProcessor(
                self.exporter,
                max_queue_size=MAX_QUEUE_SIZE,
                max_export_batch_size=min(MAX_EXPORT_BATCH, MAX_QUEUE_SIZE),
                schedule_delay_millis=SCHEDULE_DELAY_MS,
                export_timeout_millis=30_000,
            )
        )

    def flush(self) -> None:
        self.provider.force_flush(60_000)

    def exported(self) -> int:
        return self.exporter.count

    def close(self) -> None:
        self.provider.shutdown()


def full_telemetry() -> tuple[Telemetry, SdkTracing]:
    """Tracing through the SDK and metrics into a private registry."""
    sdk = SdkTracing()
    return Telemetry(sdk.provider, CollectorRegistry()), sdk


def variants() -> dict[str, Callable[[], tuple[Telemetry | bool | None, SdkTracing | None]]]:
    """The telemetry configurations P2 measures, by label (None: ``ExecutionState()``'s
    default telemetry; this process never sets a global OpenTelemetry provider, so its
    tracing follows the API's no-op proxy)."""
    return {
        "no telemetry": lambda: (False, None),
        DEFAULT: lambda: (None, None),
        TRACING_ONLY: lambda: (Telemetry(metrics=False), None),
        DEFAULT_METRICS_ONLY: lambda: (Telemetry(tracing=False), None),
        "tracing API no-op, no metrics": lambda: (
            Telemetry(trace.NoOpTracerProvider(), metrics=False),
            None,
        ),
        "tracing API no-op + metrics": lambda: (
            Telemetry(trace.NoOpTracerProvider(), CollectorRegistry()),
            None,
        ),
        "metrics only (tracing=False)": lambda: (
            Telemetry(registry=CollectorRegistry(), tracing=False),
            None,
        ),
        "full: SDK tracing + metrics": full_telemetry,
    }


class Floor:
    """The essential work per item, written by hand with raw asyncio (Semaphore + gather):
    one span with the attributes rh_agents puts on an event span, four prometheus_client
    updates (events counter, duration histogram, wait histogram, in-flight gauge) and one
    history append. Like rh_agents it also opens a span for the group."""

    def __init__(self, sdk: SdkTracing | None) -> None:
        self.tracer = sdk.provider.get_tracer("floor") if sdk is not None else None
        registry = CollectorRegistry()
        labels = ("execute_tool", "echo", "completed")
        self.events = Counter("floor_events", "", ["op", "name", "outcome"], registry=registry)
        self.duration = Histogram(
            "floor_duration_seconds",
            "",
            ["op", "name", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.wait = Histogram(
            "floor_wait_seconds", "", ["group"], buckets=WAIT_BUCKETS, registry=registry
        )
        self.in_flight = Gauge("floor_in_flight", "", ["group"], registry=registry)
        self.events_child = self.events.labels(*labels)
        self.duration_child = self.duration.labels(*labels)
        self.wait_child = self.wait.labels("floor")
        self.in_flight_child = self.in_flight.labels("floor")
        self.history: list[tuple[str, str, Any]] = []

    async def run(
        self, work: Sequence[Callable[[], Awaitable[Any]]], max_workers: int, telemetry: bool
    ) -> list[Any]:
        semaphore = asyncio.Semaphore(max_workers)
        history = self.history
        tracer = self.tracer if telemetry else None
        group_span = (
            tracer.start_span("parallel floor", kind=SpanKind.INTERNAL)
            if tracer is not None
            else None
        )
        ctx = trace.set_span_in_context(group_span) if group_span is not None else None
        running = 0
        queued_at = time.perf_counter()

        async def one(index: int, factory: Callable[[], Awaitable[Any]]) -> Any:
            nonlocal running
            async with semaphore:
                address = f"parallel:floor[{index}]/echo"
                if not telemetry:
                    value = await factory()
                    history.append((address, "completed", value))
                    return value
                started = time.perf_counter()
                wait = started - queued_at
                running += 1
                assert tracer is not None
                span = tracer.start_span(
                    "execute_tool echo",
                    context=ctx,
                    kind=SpanKind.INTERNAL,
                    attributes={
                        "gen_ai.operation.name": "execute_tool",
                        "gen_ai.tool.name": "echo",
                        "rh_agents.event.address": address,
                        "rh_agents.parallel.group_id": "g-floor",
                        "rh_agents.parallel.index": index,
                        "rh_agents.parallel.wait.duration": wait,
                    },
                )
                value = await factory()
                span.set_attribute("rh_agents.outcome", "completed")
                span.end()
                running -= 1
                self.events_child.inc()
                self.duration_child.observe(time.perf_counter() - started)
                self.wait_child.observe(wait)
                self.in_flight_child.set(running)
                history.append((address, "completed", value))
                return value

        results = await asyncio.gather(*[one(i, f) for i, f in enumerate(work)])
        if group_span is not None:
            group_span.end()
        return results
