"""``setup()``: configure the OpenTelemetry SDK and a /metrics endpoint for an application.

This is the one place that starts exporters and servers, and only when an application
calls it (never on import). Libraries built on rh_agents should accept a
:class:`~rh_agents.telemetry.Telemetry` instead.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from prometheus_client import CollectorRegistry

from rh_agents.core.errors import InvalidArgumentError
from rh_agents.telemetry._exporters import JsonLinesSpanExporter
from rh_agents.telemetry._telemetry import Telemetry

__all__ = [
    "DEFAULT_TRACE_FILE",
    "MAX_EXPORT_BATCH",
    "MAX_QUEUE_SIZE",
    "MetricsPortInUseError",
    "TelemetryHandle",
    "setup",
]

logger = logging.getLogger("rh_agents.telemetry")

DEFAULT_TRACE_FILE = Path(".rh_agents") / "spans.jsonl"
MAX_QUEUE_SIZE = 65_536
"""Spans the batch processor can hold; the SDK's default (2048) drops most child spans of a
large group while the event loop keeps the export thread waiting."""
MAX_EXPORT_BATCH = 4_096
SCHEDULE_DELAY_MS = 200
_GRACE = 1.0
"""Seconds given to stopping an exporter that did not finish in time."""

_T = TypeVar("_T")


class MetricsPortInUseError(InvalidArgumentError, OSError):
    """The /metrics port asked for is taken by another process."""


class TelemetryHandle:
    """What :func:`setup` configured; ``shutdown()`` flushes and stops all of it.

    ``shutdown()`` and ``force_flush()`` are bounded: an exporter that hangs or never
    answers costs at most their ``timeout`` (then its spans are dropped, with a
    warning), never a stuck process. ``shutdown()`` also runs at interpreter exit if
    the application did not call it.

    Attributes:
        telemetry: pass it to ``ExecutionState(telemetry=...)``.
        tracer_provider: the SDK provider.
        registry: the Prometheus registry served on /metrics.
        trace_file: where spans are written locally (None when only OTLP is used).
        otlp_endpoint: the OTLP/HTTP traces endpoint (None when not exporting).
        metrics_url: the /metrics URL (None when no port was given).
    """

    def __init__(
        self,
        telemetry: Telemetry,
        tracer_provider: TracerProvider,
        registry: CollectorRegistry | None,
        trace_file: Path | None,
        otlp_endpoint: str | None,
        server: Any,
        export_timeout: float,
        processors: Sequence[tuple[SpanProcessor, SpanExporter]] = (),
    ) -> None:
        self.telemetry = telemetry
        self.tracer_provider = tracer_provider
        self.registry = registry
        self.trace_file = trace_file
        self.otlp_endpoint = otlp_endpoint
        self._server = server
        self._export_timeout = export_timeout
        self._processors = list(processors)
        self.metrics_url: str | None = None
        if server is not None:
            host, port = server.server_address[:2]
            self.metrics_url = f"http://{host}:{port}/metrics"
        self._closed = False
        self._lock = threading.Lock()
        atexit.register(self._shutdown_at_exit)

    @property
    def metrics_port(self) -> int | None:
        """The port /metrics is served on (useful with ``metrics_port=0``)."""
        return int(self._server.server_address[1]) if self._server is not None else None

    def describe(self) -> str:
        """One line per destination, for printing at the end of a run."""
        lines = []
        if self.otlp_endpoint:
            lines.append(f"traces  -> OTLP {self.otlp_endpoint}")
        if self.trace_file:
            lines.append(
                f"traces  -> {self.trace_file} (read it: rh-agents trace show {self.trace_file})"
            )
        if self.metrics_url:
            lines.append(f"metrics -> {self.metrics_url}")
        return "\n".join(lines)

    def force_flush(self, timeout: float | None = None) -> bool:
        """Export every finished span now, waiting at most ``timeout`` seconds (default
        ``export_timeout``).

        Returns:
            True when every span processor finished; False when the time ran out (the
            flush goes on in the background) or a processor reported a failure.
        """
        seconds = self._budget(timeout)
        done, result = _bounded(
            lambda: self.tracer_provider.force_flush(int(seconds * 1000)),
            seconds,
            "rh_agents-telemetry-flush",
        )
        return done and bool(result)

    def shutdown(self, timeout: float | None = None) -> None:
        """Export the spans still queued, stop the exporters and the /metrics server.

        Waits at most ``timeout`` seconds (default ``export_timeout``) for the exporters,
        plus at most a second to stop what did not finish (an exporter still busy then,
        down, hanging or never answering, is shut down, which interrupts it; its
        remaining spans are dropped with a warning) and about half a second to stop
        /metrics. Idempotent; never raises.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self._shutdown_at_exit)
        seconds = self._budget(timeout)
        try:
            self._stop_processors(seconds)
        except Exception:  # pragma: no cover - defensive: shutdown never raises
            logger.exception("Stopping the span exporters failed")
        if self._server is not None:
            try:
                self._server.shutdown()
                self._server.server_close()
            except Exception:  # pragma: no cover
                logger.exception("Stopping the /metrics server failed")

    def _budget(self, timeout: float | None) -> float:
        seconds = self._export_timeout if timeout is None else timeout
        return max(0.0, float(seconds))

    def _stop_processors(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        # One thread per processor: each exports what it still holds (the SDK's worker
        # does so when stopping), so a hanging exporter does not hold the others back.
        stopping = [
            (exporter, _start(processor.shutdown, "rh_agents-telemetry-shutdown"))
            for processor, exporter in self._processors
        ]
        stuck = [exporter for exporter, done in stopping if not _wait_until(done, deadline)]
        # After the deadline, one short grace period for the rest, however many are stuck.
        grace = max(deadline, time.monotonic()) + _GRACE
        if stuck:
            names = ", ".join(sorted({type(e).__name__ for e in stuck}))
            logger.warning(
                "Span exporter(s) %s did not finish within %.1f s (down, hanging or not "
                "answering); stopping them and dropping the spans they still hold.",
                names,
                seconds,
            )
            # The SDK would join its worker for 30 s before telling the exporter; telling
            # it now interrupts a hanging export (and the OTLP exporter's retries).
            interrupting = [
                _start(exporter.shutdown, "rh_agents-telemetry-exporter-shutdown")
                for exporter in stuck
            ]
            for done in interrupting:
                _wait_until(done, grace)
        # Processors the application added to the provider (ours return at once now).
        if not _wait_until(
            _start(self.tracer_provider.shutdown, "rh_agents-telemetry-shutdown"), grace
        ):
            logger.warning(
                "The tracer provider did not shut down in time: a span processor added "
                "to it is still busy; its spans may be lost."
            )

    def _shutdown_at_exit(self) -> None:
        self.shutdown()

    def __enter__(self) -> TelemetryHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _start(target: Callable[[], object], name: str) -> threading.Event:
    """Run ``target`` in a daemon thread (errors logged); the event is set when done."""
    done = threading.Event()

    def run() -> None:
        try:
            target()
        except Exception:
            logger.exception("%s failed", name)
        finally:
            done.set()

    try:
        threading.Thread(target=run, name=name, daemon=True).start()
    except RuntimeError:
        # Some Python 3.12 releases refuse new threads at interpreter exit: run it here
        # (unbounded then, as the SDK's own exit hook would be).
        run()
    return done


def _wait_until(done: threading.Event, deadline: float) -> bool:
    return done.wait(max(0.0, deadline - time.monotonic()))


def _bounded(target: Callable[[], _T], seconds: float, name: str) -> tuple[bool, _T | None]:
    """Run ``target`` in a daemon thread for at most ``seconds``: (finished, result).

    On time-out the thread is left to finish in the background; being a daemon, it
    never keeps the process alive.
    """
    result: list[_T] = []

    def run() -> None:
        result.append(target())

    finished = _start(run, name).wait(seconds)
    return finished, (result[0] if result else None)


def _traces_endpoint(explicit: str | None) -> str | None:
    if explicit:
        return (
            explicit
            if explicit.rstrip("/").endswith("/v1/traces")
            else (explicit.rstrip("/") + "/v1/traces")
        )
    specific = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if specific:
        return specific
    generic = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if generic:
        return generic.rstrip("/") + "/v1/traces"
    return None


def setup(
    service_name: str | None = None,
    otlp_endpoint: str | None = None,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    trace_file: str | os.PathLike[str] | None = None,
    *,
    registry: CollectorRegistry | None = None,
    set_global: bool = False,
    export_timeout: float = 5.0,
    max_queue_size: int = MAX_QUEUE_SIZE,
    exporters: list[SpanExporter] | None = None,
) -> TelemetryHandle:
    """Configure tracing and metrics for an application (or the demo).

    Args:
        service_name: ``service.name`` of the spans (default ``OTEL_SERVICE_NAME`` or
            "rh_agents").
        otlp_endpoint: OTLP/HTTP base URL (e.g. ``http://127.0.0.1:4318``); default the
            standard ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` variables.
        metrics_port: serve /metrics on this port (0 picks a free one); None for none.
        metrics_addr: the address to bind /metrics to (loopback by default).
        trace_file: a JSON-lines span file; used by default (``.rh_agents/spans.jsonl``)
            when neither an OTLP endpoint nor ``exporters`` are configured.
        registry: the Prometheus registry (default: prometheus_client's).
        set_global: also install the provider as OpenTelemetry's global one, so other
            instrumentation (HTTP clients, ...) nests under rh_agents spans.
        export_timeout: bound in seconds on each export, and the default bound of
            ``shutdown()`` and ``force_flush()``, so an exporter that is down or hangs
            costs bounded time.
        max_queue_size: spans buffered for export (sized so a 10 000-item group is not
            dropped).
        exporters: extra span exporters (e.g. an in-memory one in tests).

    Returns:
        A :class:`TelemetryHandle`; call ``shutdown()`` when the application exits (it
        also runs, bounded, at interpreter exit).

    Raises:
        MetricsPortInUseError: ``metrics_port`` is taken. Nothing has been started
            then: /metrics is bound first, and whatever setup() started before any
            other error is stopped again before it propagates.
    """
    name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "rh_agents"
    # /metrics first: a port in use fails before any exporter thread or file exists.
    server = None
    if metrics_port is not None:
        server = _serve_metrics(metrics_port, metrics_addr, registry)
    # Shut down at exit by the handle (bounded), not by the SDK (30 s per processor).
    provider = TracerProvider(
        resource=Resource.create({"service.name": name}), shutdown_on_exit=False
    )
    processors: list[tuple[SpanProcessor, SpanExporter]] = []
    created: list[SpanExporter] = []
    try:
        endpoint = _traces_endpoint(otlp_endpoint)
        file_path = _create_exporters(endpoint, trace_file, exporters, export_timeout, created)
        for exporter in [*(exporters or []), *created]:
            processor = _batch_processor(exporter, max_queue_size, export_timeout)
            processors.append((processor, exporter))
            provider.add_span_processor(processor)
        telemetry = Telemetry(provider, registry)
    except BaseException:
        _abandon(server, processors, created)
        raise
    if set_global:
        trace.set_tracer_provider(provider)
    return TelemetryHandle(
        telemetry,
        provider,
        telemetry.registry,
        file_path,
        endpoint,
        server,
        export_timeout,
        processors,
    )


def _batch_processor(
    exporter: SpanExporter, max_queue_size: int, export_timeout: float
) -> BatchSpanProcessor:
    return BatchSpanProcessor(
        exporter,
        max_queue_size=max_queue_size,
        max_export_batch_size=min(MAX_EXPORT_BATCH, max_queue_size),
        schedule_delay_millis=SCHEDULE_DELAY_MS,
        export_timeout_millis=int(export_timeout * 1000),
    )


def _create_exporters(
    endpoint: str | None,
    trace_file: str | os.PathLike[str] | None,
    exporters: list[SpanExporter] | None,
    export_timeout: float,
    created: list[SpanExporter],
) -> Path | None:
    """Create the OTLP and file exporters ``setup`` needs, appending each to ``created``
    (so a failure can stop them); returns the span file, if any."""
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        created.append(OTLPSpanExporter(endpoint=endpoint, timeout=export_timeout))
    if trace_file is None and (endpoint or exporters):
        return None
    file_path = Path(trace_file) if trace_file is not None else DEFAULT_TRACE_FILE
    created.append(JsonLinesSpanExporter(file_path))
    return file_path


def _abandon(
    server: Any,
    processors: list[tuple[SpanProcessor, SpanExporter]],
    exporters: list[SpanExporter],
) -> None:
    """Undo a setup() that failed half-way: stop the export threads, the exporters
    setup() created (closing the span file) and the /metrics server."""
    started = {id(e) for _, e in processors}
    for processor, _ in processors:
        _bounded(processor.shutdown, _GRACE, "rh_agents-telemetry-shutdown")
    for exporter in exporters:
        if id(exporter) not in started:
            _bounded(exporter.shutdown, _GRACE, "rh_agents-telemetry-exporter-shutdown")
    if server is not None:
        server.shutdown()
        server.server_close()


def _serve_metrics(port: int, addr: str, registry: CollectorRegistry | None) -> Any:
    from prometheus_client import REGISTRY, start_http_server

    try:
        server, _thread = start_http_server(port, addr, registry or REGISTRY)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise MetricsPortInUseError(
                f"Cannot serve /metrics on {addr}:{port}: the port is already in use "
                f"({exc.strerror}). Pass another metrics_port (0 picks a free one) or stop "
                "the process using it."
            ) from exc
        raise
    return server
