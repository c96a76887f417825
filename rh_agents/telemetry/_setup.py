"""``setup()``: configure the OpenTelemetry SDK and a /metrics endpoint for an application.

This is the one place that starts exporters, servers and monitor threads, and only when
an application calls it (never on import). Libraries built on rh_agents should accept a
:class:`~rh_agents.telemetry.Telemetry` instead.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from queue import SimpleQueue
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from prometheus_client import CollectorRegistry

from rh_agents.core.errors import InvalidArgumentError
from rh_agents.telemetry._exporters import JsonLinesSpanExporter
from rh_agents.telemetry._health import CountingSpanProcessor, LoopLagMonitor
from rh_agents.telemetry._telemetry import Telemetry
from rh_agents.telemetry.metrics import metrics_for

__all__ = [
    "DEFAULT_LOOP_LAG_INTERVAL",
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
MAX_EXPORT_BATCH = 512
"""Spans per export: the SDK's default. A span waits in the queue until its batch is full
(or the schedule fires), and every span that waits long enough is promoted to the oldest
generation of the garbage collector, whose full collections then walk the whole heap (a
long run's history included): 4 096-span batches cost a 100 000-event group about 20 %
more collector time (docs/performance.md)."""
SCHEDULE_DELAY_MS = 200
_GRACE = 1.0
"""Seconds given to stopping an exporter that did not finish in time."""
DEFAULT_LOOP_LAG_INTERVAL = 0.5
"""Seconds between two event-loop lag probes of the monitor ``setup()`` starts."""
_RESERVE_FOR_EXIT = sys.version_info[:2] == (3, 12)
"""CPython 3.12 refuses to start threads in atexit handlers (gh-113964; its atexit
documentation says so): there, setup() starts the threads its exit hook needs at once."""

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
        otlp_endpoint: the OTLP traces endpoint (None when not exporting).
        otlp_protocol: ``http/protobuf`` or ``grpc``.
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
        *,
        protocol: str = "http/protobuf",
        monitor: LoopLagMonitor | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.otlp_protocol = protocol
        self.tracer_provider = tracer_provider
        self.registry = registry
        self.trace_file = trace_file
        self.otlp_endpoint = otlp_endpoint
        self.span_processor_settings: dict[str, float] = {}
        """The batch span processors' settings (from arguments, OTEL_BSP_* or defaults)."""
        self._server = server
        self._export_timeout = export_timeout
        self._processors = list(processors)
        self._monitor = monitor
        # Where the interpreter may refuse new threads at exit, the threads the bounded
        # shutdown needs (one per processor, one per exporter to interrupt, one for the
        # provider) are started now and wait.
        self._reserve = _Reserve(2 * len(self._processors) + 1) if _RESERVE_FOR_EXIT else None
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
            lines.append(f"traces  -> OTLP {self.otlp_endpoint} ({self.otlp_protocol})")
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
        if self._monitor is not None:
            self._monitor.stop()
        try:
            self._stop_processors(seconds)
        except Exception:  # pragma: no cover - defensive: shutdown never raises
            logger.exception("Stopping the span exporters failed")
        finally:
            if self._reserve is not None:
                self._reserve.close()
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
        reserve = self._reserve
        # One thread per processor: each exports what it still holds (the SDK's worker
        # does so when stopping), so a hanging exporter does not hold the others back.
        stopping = [
            (
                processor,
                exporter,
                _start(processor.shutdown, "rh_agents-telemetry-shutdown", reserve),
            )
            for processor, exporter in self._processors
        ]
        stuck = [
            (processor, exporter)
            for processor, exporter, done in stopping
            if not _wait_until(done, deadline)
        ]
        # After the deadline, one short grace period for the rest, however many are stuck.
        grace = max(deadline, time.monotonic()) + _GRACE
        if stuck:
            for processor, _ in stuck:
                if isinstance(processor, CountingSpanProcessor):
                    processor.abandon()
            names = ", ".join(sorted({type(e).__name__ for _, e in stuck}))
            logger.warning(
                "Span exporter(s) %s did not finish within %.1f s (down, hanging or not "
                "answering); stopping them and dropping the spans they still hold.",
                names,
                seconds,
            )
            # The SDK would join its worker for 30 s before telling the exporter; telling
            # it now interrupts a hanging export (and the OTLP exporter's retries).
            interrupting = [
                _start(exporter.shutdown, "rh_agents-telemetry-exporter-shutdown", reserve)
                for _, exporter in stuck
            ]
            for done in interrupting:
                _wait_until(done, grace)
        # Processors the application added to the provider (ours return at once now).
        if not _wait_until(
            _start(self.tracer_provider.shutdown, "rh_agents-telemetry-shutdown", reserve),
            grace,
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


class _Reserve:
    """Daemon threads started in advance, each running one task at a time when asked.

    For an interpreter that refuses to start threads in atexit handlers: the handle's
    exit hook hands its tasks to these instead, and stays bounded.
    """

    def __init__(self, size: int) -> None:
        self._tasks: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._idle = size
        self._lock = threading.Lock()
        self._size = size
        for _ in range(size):
            threading.Thread(
                target=self._serve, name="rh_agents-telemetry-reserve", daemon=True
            ).start()

    def _serve(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                task()
            finally:
                with self._lock:
                    self._idle += 1

    def run(self, task: Callable[[], None]) -> bool:
        """Hand ``task`` to an idle thread; False when none is idle."""
        with self._lock:
            if not self._idle:
                return False
            self._idle -= 1
        self._tasks.put(task)
        return True

    def close(self) -> None:
        """Let the idle threads end (a thread still running a task ends after it)."""
        for _ in range(self._size):
            self._tasks.put(None)


def _start(
    target: Callable[[], object], name: str, reserve: _Reserve | None = None
) -> threading.Event:
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
        # The interpreter refuses new threads (CPython 3.12 in atexit handlers): a
        # thread started in advance runs it, else it runs here, unbounded then.
        if reserve is None or not reserve.run(run):
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


_TRUE = ("true", "1", "yes")


def _env_number(name: str, default: float) -> float:
    """A positive number from the environment (``default`` when unset or invalid)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        logger.warning("Ignoring %s=%r: expected a positive number.", name, text)
        return default
    return value


def _protocol(explicit: str | None) -> str:
    protocol = (
        explicit
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in ("http/protobuf", "grpc"):
        raise InvalidArgumentError(
            f"Unsupported OTLP protocol {protocol!r} (from "
            f"{'otlp_protocol' if explicit else 'OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL'}): "
            "rh_agents exports traces with 'http/protobuf' (the default) or 'grpc'; the "
            "Python exporters have no 'http/json'."
        )
    return protocol


def _traces_endpoint(explicit: str | None, protocol: str = "http/protobuf") -> str | None:
    """The traces endpoint: explicit, else the signal-specific variable (used as is),
    else the generic one (with ``/v1/traces`` appended for OTLP/HTTP)."""
    http = protocol == "http/protobuf"
    if explicit:
        base = explicit.rstrip("/")
        return base if not http or base.endswith("/v1/traces") else base + "/v1/traces"
    specific = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if specific:
        return specific
    generic = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if generic:
        return generic.rstrip("/") + "/v1/traces" if http else generic
    return None


def _otlp_exporter(
    endpoint: str, protocol: str, headers: dict[str, str] | None, timeout: float
) -> SpanExporter:
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError as exc:
            raise InvalidArgumentError(
                "OTLP over gRPC was asked for (otlp_protocol or "
                "OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL='grpc') but its exporter is not "
                "installed: pip install opentelemetry-exporter-otlp-proto-grpc, or use "
                "'http/protobuf'."
            ) from exc
        exporter: SpanExporter = GrpcSpanExporter(
            endpoint=endpoint, headers=headers, timeout=timeout
        )
        return exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=timeout)


def _resource(service_name: str | None) -> Resource:
    """``service.name``: explicit, else OTEL_SERVICE_NAME, else the one in
    OTEL_RESOURCE_ATTRIBUTES, else "rh_agents"; the other resource attributes of
    OTEL_RESOURCE_ATTRIBUTES are kept."""
    resource = Resource.create({"service.name": service_name} if service_name else {})
    current = resource.attributes.get("service.name")
    if not isinstance(current, str) or current.startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "rh_agents"}))
    return resource


def setup(
    service_name: str | None = None,
    otlp_endpoint: str | None = None,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    trace_file: str | os.PathLike[str] | None = None,
    *,
    registry: CollectorRegistry | None = None,
    set_global: bool = False,
    export_timeout: float | None = None,
    max_queue_size: int | None = None,
    max_export_batch_size: int | None = None,
    schedule_delay: float | None = None,
    exporters: list[SpanExporter] | None = None,
    otlp_protocol: str | None = None,
    otlp_headers: dict[str, str] | None = None,
    sampler: Sampler | None = None,
    loop_lag_interval: float | None = DEFAULT_LOOP_LAG_INTERVAL,
) -> TelemetryHandle:
    """Configure tracing and metrics for an application (or the demo).

    Every setting follows the standard OpenTelemetry environment variables unless given
    as an argument (explicit arguments win); docs/telemetry.md has the table.

    Args:
        service_name: ``service.name`` of the spans (default ``OTEL_SERVICE_NAME``, then
            ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``, then "rh_agents"); the
            other ``OTEL_RESOURCE_ATTRIBUTES`` go on the resource too.
        otlp_endpoint: OTLP base URL (e.g. ``http://127.0.0.1:4318``); default the
            ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` variables.
        metrics_port: serve /metrics on this port (0 picks a free one); None for none.
        metrics_addr: the address to bind /metrics to (loopback by default).
        trace_file: an OTLP JSON span file; used by default (``.rh_agents/spans.jsonl``)
            when neither an OTLP endpoint nor ``exporters`` are configured.
        registry: the Prometheus registry (default: prometheus_client's).
        set_global: also install the provider as OpenTelemetry's global one, so other
            instrumentation (HTTP clients, ...) nests under rh_agents spans, and states
            created without ``telemetry=`` use it.
        export_timeout: bound in seconds on each export, and the default bound of
            ``shutdown()`` and ``force_flush()`` (default ``OTEL_BSP_EXPORT_TIMEOUT``,
            else 5 s).
        max_queue_size: spans buffered for export (default ``OTEL_BSP_MAX_QUEUE_SIZE``,
            else 65 536, so a 10 000-item group is not dropped).
        max_export_batch_size: spans per export (default
            ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, else 512, the SDK's default).
        schedule_delay: seconds between exports (default ``OTEL_BSP_SCHEDULE_DELAY``,
            else 0.2).
        exporters: extra span exporters (e.g. an in-memory one in tests).
        otlp_protocol: ``http/protobuf`` or ``grpc`` (default
            ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``, else ``http/protobuf``; gRPC needs
            ``opentelemetry-exporter-otlp-proto-grpc``).
        otlp_headers: headers of the OTLP requests (default
            ``OTEL_EXPORTER_OTLP_(TRACES_)HEADERS``).
        sampler: the span sampler (default ``OTEL_TRACES_SAMPLER`` / ``_ARG``, else
            parent-based always-on). A sampled-out span changes no history or metric.
        loop_lag_interval: seconds between the probes of the event-loop lag monitor
            (``rh_agents_event_loop_lag_seconds``; a thread started here and stopped
            by ``shutdown()``, probing the loops the handle's states run on); None
            for no monitor.

    ``OTEL_SDK_DISABLED=true`` turns the spans off (no exporter, no span file); the
    Prometheus metrics and /metrics stay.

    Returns:
        A :class:`TelemetryHandle`; call ``shutdown()`` when the application exits (it
        also runs, bounded, at interpreter exit).

    Raises:
        MetricsPortInUseError: ``metrics_port`` is taken. Nothing has been started
            then: /metrics is bound first, and whatever setup() started before any
            other error is stopped again before it propagates.
        InvalidArgumentError: the OTLP protocol is not supported, or is ``grpc``
            without its exporter installed.

    Example:
        >>> handle = setup(service_name="my-agents", metrics_port=9464)  # doctest: +SKIP
        >>> state = ExecutionState(telemetry=handle.telemetry)  # doctest: +SKIP
    """
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE
    timeout, batching = _batch_settings(
        export_timeout, max_queue_size, max_export_batch_size, schedule_delay
    )
    endpoint: str | None = None
    protocol = "http/protobuf"
    if not disabled:
        endpoint = _traces_endpoint(otlp_endpoint)
        if endpoint is not None:
            protocol = _protocol(otlp_protocol)
            endpoint = _traces_endpoint(otlp_endpoint, protocol)
    # /metrics first: a port in use fails before any exporter thread or file exists.
    server = None
    if metrics_port is not None:
        server = _serve_metrics(metrics_port, metrics_addr, registry)
    # Shut down at exit by the handle (bounded), not by the SDK (30 s per processor).
    provider = TracerProvider(
        resource=_resource(service_name), sampler=sampler, shutdown_on_exit=False
    )
    processors: list[tuple[SpanProcessor, SpanExporter]] = []
    created: list[SpanExporter] = []
    file_path: Path | None = None
    monitor: LoopLagMonitor | None = None
    try:
        span_metrics = metrics_for(registry).span_export()
        if disabled:
            logger.info("OTEL_SDK_DISABLED is set: rh_agents records no spans.")
        else:
            if endpoint:
                created.append(_otlp_exporter(endpoint, protocol, otlp_headers, timeout))
            if trace_file is not None or not (endpoint or exporters):
                file_path = Path(trace_file) if trace_file is not None else DEFAULT_TRACE_FILE
                created.append(JsonLinesSpanExporter(file_path))
            for exporter in [*(exporters or []), *created]:
                processor = CountingSpanProcessor(exporter, span_metrics, **batching)
                processors.append((processor, exporter))
                provider.add_span_processor(processor)
        telemetry = Telemetry(provider, registry, tracing=not disabled)
        monitor = _lag_monitor(telemetry, loop_lag_interval)
    except BaseException:
        if monitor is not None:
            monitor.stop()
        _abandon(server, processors, created)
        raise
    if set_global:
        trace.set_tracer_provider(provider)
    handle = TelemetryHandle(
        telemetry,
        provider,
        telemetry.registry,
        file_path,
        endpoint,
        server,
        timeout,
        processors,
        protocol=protocol,
        monitor=monitor,
    )
    handle.span_processor_settings = dict(batching)
    return handle


def _lag_monitor(telemetry: Telemetry, interval: float | None) -> LoopLagMonitor | None:
    """The event-loop lag monitor of ``telemetry``, started (None: no monitor)."""
    if interval is None or interval <= 0 or telemetry.metrics is None:
        return None
    monitor = LoopLagMonitor(telemetry.metrics.loop_lag(), float(interval))
    telemetry.instrumentation.loops = monitor
    monitor.start()
    return monitor


def _batch_settings(
    export_timeout: float | None,
    max_queue_size: int | None,
    max_export_batch_size: int | None,
    schedule_delay: float | None,
) -> tuple[float, dict[str, Any]]:
    """The export timeout in seconds and the BatchSpanProcessor arguments: the given
    values, else the OTEL_BSP_* ones."""
    timeout = (
        float(export_timeout)
        if export_timeout is not None
        else _env_number("OTEL_BSP_EXPORT_TIMEOUT", 5000.0) / 1000
    )
    queue = max_queue_size or int(_env_number("OTEL_BSP_MAX_QUEUE_SIZE", MAX_QUEUE_SIZE))
    batch = max_export_batch_size or int(
        _env_number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", MAX_EXPORT_BATCH)
    )
    delay_ms = (
        schedule_delay * 1000
        if schedule_delay is not None
        else _env_number("OTEL_BSP_SCHEDULE_DELAY", SCHEDULE_DELAY_MS)
    )
    return timeout, {
        "max_queue_size": queue,
        "max_export_batch_size": min(batch, queue),
        "schedule_delay_millis": delay_ms,
        "export_timeout_millis": int(timeout * 1000),
    }


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
