"""The health of what ``setup()`` runs: event-loop lag, and spans lost on their way out.

:class:`LoopLagMonitor` is a daemon thread that, every ``interval`` seconds, schedules a
callback on each event loop a state of the telemetry runs on
(``call_soon_threadsafe``) and observes how long the loop took to run it: tens of
microseconds when the loop is free, the rest of a blocking step when a handler holds
it. At most one probe per loop is pending, so a blocked loop is measured once, by the
probe that waited for it, however long it blocks.

:class:`CountingSpanProcessor` is the SDK's ``BatchSpanProcessor`` that counts the
spans it drops (its queue full, or stopped) and, through :class:`CountingExporter`
around its exporter, the spans exported and those whose export failed, into
:class:`~rh_agents.telemetry.metrics.SpanExportMetrics`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from rh_agents.telemetry.metrics import SpanExportMetrics

__all__ = [
    "QUEUE_FULL",
    "SHUTDOWN",
    "CountingExporter",
    "CountingSpanProcessor",
    "LoopLagMonitor",
]

logger = logging.getLogger("rh_agents.telemetry")

QUEUE_FULL = "queue_full"
"""``reason`` of spans dropped because the processor's queue was full."""
SHUTDOWN = "shutdown"
"""``reason`` of spans that ended after the processor stopped, or that it still held
when its exporter was stopped for not finishing in time."""


class LoopLagMonitor:
    """Measures the scheduling lag of the event loops it is shown, from its own thread.

    Args:
        histogram: where each probe's lag (seconds) is observed.
        interval: seconds between probes of a loop.

    Example:
        >>> monitor = LoopLagMonitor(histogram, interval=0.5)  # doctest: +SKIP
        >>> monitor.start(); monitor.watch(asyncio.get_running_loop())  # doctest: +SKIP
        >>> monitor.stop()  # doctest: +SKIP
    """

    def __init__(self, histogram: Any, interval: float) -> None:
        self.histogram = histogram
        self.interval = interval
        self._loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._pending: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Probe ``loop`` from now on (until it is closed or garbage)."""
        with self._lock:
            self._loops.add(loop)

    def start(self) -> None:
        """Start the monitor thread."""
        self._thread = threading.Thread(target=self._run, name="rh_agents-loop-lag", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the monitor thread (waits at most ``timeout`` seconds for it)."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.probe()

    def probe(self) -> None:
        """Schedule one probe on every watched loop that runs and has none pending."""
        with self._lock:
            loops = [
                loop
                for loop in self._loops
                if loop not in self._pending and loop.is_running() and not loop.is_closed()
            ]
            for loop in loops:
                self._pending.add(loop)
        for loop in loops:
            try:
                loop.call_soon_threadsafe(self._arrived, loop, time.perf_counter())
            except RuntimeError:  # closed meanwhile
                with self._lock:
                    self._pending.discard(loop)
                    self._loops.discard(loop)

    def _arrived(self, loop: asyncio.AbstractEventLoop, sent: float) -> None:
        lag = time.perf_counter() - sent
        with self._lock:
            self._pending.discard(loop)
        try:
            self.histogram.observe(lag)
        except Exception:  # pragma: no cover - a broken registry must not break the loop
            logger.exception("Recording the event-loop lag failed")


class CountingExporter(SpanExporter):
    """Wraps a span exporter: counts the spans it exported and those it failed to, and
    tells its processor when spans leave the queue."""

    def __init__(self, exporter: SpanExporter, processor: CountingSpanProcessor) -> None:
        self.exporter = exporter
        self._processor = processor

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        count = len(spans)
        self._processor.dequeued(count)
        metrics = self._processor.metrics
        try:
            result = self.exporter.export(spans)
        except BaseException:
            metrics.failed.labels(self._processor.label).inc(count)
            raise
        if result is SpanExportResult.SUCCESS:
            metrics.exported.labels(self._processor.label).inc(count)
        else:
            metrics.failed.labels(self._processor.label).inc(count)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class CountingSpanProcessor(BatchSpanProcessor):
    """A ``BatchSpanProcessor`` that counts what it drops, exports and fails to export.

    It keeps its own count of the spans it holds (accepted, not yet handed to the
    exporter) and refuses spans beyond ``max_queue_size`` itself, so every span the
    queue cannot take is counted (``queue_full``), as is every span arriving after
    :meth:`shutdown` and every span still held when :meth:`abandon` gives up on a
    stuck exporter (``shutdown``).

    Args:
        exporter: the exporter (wrapped in a :class:`CountingExporter`).
        metrics: the counters.
        max_queue_size, schedule_delay_millis, max_export_batch_size,
        export_timeout_millis: as for ``BatchSpanProcessor``.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        metrics: SpanExportMetrics,
        *,
        max_queue_size: int,
        schedule_delay_millis: float,
        max_export_batch_size: int,
        export_timeout_millis: float,
    ) -> None:
        self.metrics = metrics
        self.label = type(exporter).__name__
        self._held = 0
        self._limit = max_queue_size
        self._stopped = False
        self._lock = threading.Lock()
        self._dropped_full = metrics.dropped.labels(self.label, QUEUE_FULL)
        self._dropped_stopped = metrics.dropped.labels(self.label, SHUTDOWN)
        metrics.exported.labels(self.label)
        metrics.failed.labels(self.label)
        super().__init__(
            CountingExporter(exporter, self),
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay_millis,
            max_export_batch_size=max_export_batch_size,
            export_timeout_millis=export_timeout_millis,
        )

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return
        with self._lock:
            if self._stopped:
                self._dropped_stopped.inc()
                return
            if self._held >= self._limit:
                self._dropped_full.inc()
                return
            self._held += 1
        super().on_end(span)

    def dequeued(self, count: int) -> None:
        """``count`` spans left the queue for the exporter."""
        with self._lock:
            self._held = max(0, self._held - count)

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
        super().shutdown()  # type: ignore[no-untyped-call]

    def abandon(self) -> int:
        """The exporter is being stopped before it took every span: count what the
        queue still holds as dropped, and return how many."""
        with self._lock:
            self._stopped = True
            held, self._held = self._held, 0
        if held:
            self._dropped_stopped.inc(held)
        return held
