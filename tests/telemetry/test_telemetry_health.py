"""The health of what setup() runs: spans dropped or lost on export are counted, the
event-loop lag monitor starts with setup() and stops with shutdown()."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry, Histogram

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.telemetry import setup
from rh_agents.telemetry._health import CountingSpanProcessor, LoopLagMonitor
from rh_agents.telemetry.metrics import SpanExportMetrics


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class Gate(SpanExporter):
    """An exporter whose exports wait until released; says when one has started."""

    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.result = result
        self.entered = threading.Event()
        self.release = threading.Event()
        self.received = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(30)
        self.received += len(spans)
        return self.result


class Raising(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise ConnectionError("collector unreachable")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def processor_for(
    exporter: SpanExporter, registry: CollectorRegistry, queue: int, batch: int
) -> tuple[CountingSpanProcessor, TracerProvider]:
    processor = CountingSpanProcessor(
        exporter,
        SpanExportMetrics(registry),
        max_queue_size=queue,
        schedule_delay_millis=60_000,
        max_export_batch_size=batch,
        export_timeout_millis=1000,
    )
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return processor, provider


def end_spans(provider: TracerProvider, count: int) -> None:
    tracer = provider.get_tracer("test")
    for i in range(count):
        tracer.start_span(f"span {i}").end()


def test_spans_beyond_a_full_queue_are_counted_as_dropped(registry: CollectorRegistry) -> None:
    gate = Gate()
    processor, provider = processor_for(gate, registry, queue=2, batch=2)
    labels = {"exporter": "Gate"}
    try:
        end_spans(provider, 2)  # a full batch wakes the export thread ...
        assert gate.entered.wait(10)  # ... which holds these two in the exporter
        end_spans(provider, 3)  # the queue takes two, the third is dropped
        assert sample(registry, "rh_agents_spans_dropped_total", reason="queue_full", **labels) == 1
    finally:
        gate.release.set()
        processor.shutdown()
    assert gate.received == 4
    assert sample(registry, "rh_agents_spans_exported_total", **labels) == 4
    assert sample(registry, "rh_agents_spans_export_failed_total", **labels) == 0
    end_spans(provider, 1)  # after shutdown
    assert sample(registry, "rh_agents_spans_dropped_total", reason="shutdown", **labels) == 1


@pytest.mark.parametrize(
    ("exporter", "label"),
    [(Gate(SpanExportResult.FAILURE), "Gate"), (Raising(), "Raising")],
    ids=["failure", "raises"],
)
def test_failed_exports_count_their_spans(
    registry: CollectorRegistry, exporter: SpanExporter, label: str
) -> None:
    if isinstance(exporter, Gate):
        exporter.release.set()
    processor, provider = processor_for(exporter, registry, queue=100, batch=100)
    end_spans(provider, 3)
    processor.shutdown()  # exports what it holds
    assert sample(registry, "rh_agents_spans_export_failed_total", exporter=label) == 3
    assert sample(registry, "rh_agents_spans_exported_total", exporter=label) == 0


def test_spans_held_when_a_stuck_exporter_is_stopped_are_counted_as_dropped() -> None:
    gate = Gate()
    registry = CollectorRegistry()
    handle = setup(
        exporters=[gate],
        registry=registry,
        export_timeout=0.2,
        max_queue_size=10,
        max_export_batch_size=2,
        loop_lag_interval=None,
    )
    try:
        end_spans(handle.tracer_provider, 2)
        assert gate.entered.wait(10)  # stuck on the first two
        end_spans(handle.tracer_provider, 5)
        handle.shutdown(timeout=0.2)
        assert (
            sample(registry, "rh_agents_spans_dropped_total", exporter="Gate", reason="shutdown")
            == 5
        )
        # every counter of the exporter is exposed from the start (0 until it counts)
        assert (
            registry.get_sample_value(
                "rh_agents_spans_dropped_total", {"exporter": "Gate", "reason": "queue_full"}
            )
            == 0
        )
    finally:
        gate.release.set()


# --------------------------------------------------------------- event-loop lag


def lag_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("lag_seconds", "test", registry=registry, buckets=(0.01, 0.1, 1.0))


async def test_a_probe_measures_how_long_the_loop_was_held(registry: CollectorRegistry) -> None:
    monitor = LoopLagMonitor(lag_histogram(registry), interval=60)
    monitor.watch(asyncio.get_running_loop())
    monitor.probe()
    monitor.probe()  # one probe pending per loop: this one is not sent
    time.sleep(0.05)  # noqa: ASYNC251 - a handler holding the loop, on purpose
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sample(registry, "lag_seconds_count") == 1
    assert sample(registry, "lag_seconds_sum") >= 0.05
    monitor.probe()  # answered: the next probe goes out
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sample(registry, "lag_seconds_count") == 2


def test_closed_loops_are_not_probed(registry: CollectorRegistry) -> None:
    loop = asyncio.new_event_loop()
    monitor = LoopLagMonitor(lag_histogram(registry), interval=60)
    monitor.watch(loop)
    loop.close()
    monitor.probe()
    assert sample(registry, "lag_seconds_count") == 0


@pytest.fixture
def handle(registry: CollectorRegistry) -> Iterator[Any]:
    handle = setup(registry=registry, exporters=[Gate()], loop_lag_interval=0.01)
    try:
        yield handle
    finally:
        handle.shutdown(timeout=0.1)


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rh_agents-loop-lag"]


def test_setup_starts_the_lag_monitor_and_shutdown_stops_it(registry: CollectorRegistry) -> None:
    before = monitor_threads()
    handle = setup(registry=registry, exporters=[Gate()], loop_lag_interval=0.01)
    try:
        started = [t for t in monitor_threads() if t not in before]
        assert len(started) == 1
    finally:
        handle._processors[0][1].release.set()
        handle.shutdown(timeout=0.5)
    assert not started[0].is_alive()
    none = setup(registry=CollectorRegistry(), exporters=[], loop_lag_interval=None)
    try:
        assert monitor_threads() == [t for t in before if t.is_alive()]
    finally:
        none.shutdown()


def test_states_of_the_handle_show_their_loop_to_the_monitor(
    handle: Any, registry: CollectorRegistry
) -> None:
    async def work(data: Any, extra: Any, state: ExecutionState) -> int:
        return int(data)

    async def run() -> None:
        state = ExecutionState(telemetry=handle.telemetry)
        await ExecutionEvent(actor=Tool(name="t", handler=work))(1, {}, state)
        deadline = time.monotonic() + 10
        # The monitor thread probes every 10 ms: wait for its first answer.
        while sample(registry, "rh_agents_event_loop_lag_seconds_count") == 0:
            assert time.monotonic() < deadline, "no probe reached the loop"
            await asyncio.sleep(0.01)

    handle._processors[0][1].release.set()
    asyncio.run(run())
    assert sample(registry, "rh_agents_event_loop_lag_seconds_count") >= 1
