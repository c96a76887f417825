"""``setup()``: configure the OpenTelemetry SDK and a /metrics endpoint for an application.

This is the one place that starts exporters and servers, and only when an application
calls it (never on import). Libraries built on rh_agents should accept a
:class:`~rh_agents.telemetry.Telemetry` instead.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
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


class MetricsPortInUseError(InvalidArgumentError, OSError):
    """The /metrics port asked for is taken by another process."""


class TelemetryHandle:
    """What :func:`setup` configured; ``shutdown()`` flushes and stops all of it.

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
    ) -> None:
        self.telemetry = telemetry
        self.tracer_provider = tracer_provider
        self.registry = registry
        self.trace_file = trace_file
        self.otlp_endpoint = otlp_endpoint
        self._server = server
        self._export_timeout = export_timeout
        self.metrics_url: str | None = None
        if server is not None:
            host, port = server.server_address[:2]
            self.metrics_url = f"http://{host}:{port}/metrics"
        self._closed = False

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
        """Export every finished span now (bounded by ``timeout`` seconds)."""
        millis = int((timeout if timeout is not None else self._export_timeout) * 1000)
        return bool(self.tracer_provider.force_flush(millis))

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush spans, stop the exporters and the /metrics server (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.force_flush(timeout)
        except Exception:  # pragma: no cover - SDK flush logs its own errors
            logger.exception("Flushing spans failed")
        try:
            self.tracer_provider.shutdown()
        except Exception:  # pragma: no cover
            logger.exception("Stopping the tracer provider failed")
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> TelemetryHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


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
        export_timeout: bound in seconds on each export and on the final flush, so an
            exporter that is down costs bounded time.
        max_queue_size: spans buffered for export (sized so a 10 000-item group is not
            dropped).
        exporters: extra span exporters (e.g. an in-memory one in tests).

    Returns:
        A :class:`TelemetryHandle`; call ``shutdown()`` when the application exits.

    Raises:
        MetricsPortInUseError: ``metrics_port`` is taken.
    """
    name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "rh_agents"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    endpoint = _traces_endpoint(otlp_endpoint)
    chosen: list[SpanExporter] = list(exporters or [])
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        chosen.append(OTLPSpanExporter(endpoint=endpoint, timeout=export_timeout))
    file_path: Path | None = None
    if trace_file is not None or not (endpoint or exporters):
        file_path = Path(trace_file) if trace_file is not None else DEFAULT_TRACE_FILE
        chosen.append(JsonLinesSpanExporter(file_path))
    for exporter in chosen:
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=max_queue_size,
                max_export_batch_size=min(MAX_EXPORT_BATCH, max_queue_size),
                schedule_delay_millis=SCHEDULE_DELAY_MS,
                export_timeout_millis=int(export_timeout * 1000),
            )
        )
    server = None
    if metrics_port is not None:
        server = _serve_metrics(metrics_port, metrics_addr, registry)
    if set_global:
        trace.set_tracer_provider(provider)
    telemetry = Telemetry(provider, registry)
    return TelemetryHandle(
        telemetry, provider, telemetry.registry, file_path, endpoint, server, export_timeout
    )


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
