"""OpenTelemetry tracing and Prometheus metrics for rh_agents.

With no configuration, ``ExecutionState()`` traces through the application's global
OpenTelemetry providers (so ``opentelemetry-instrument`` or an application's own
``trace.set_tracer_provider`` is enough) and counts into prometheus_client's default
registry. :class:`Telemetry` injects other providers or a registry;
``telemetry=False`` records nothing. An application without its own OpenTelemetry set-up
calls :func:`setup` once to configure the SDK, exporters (OTLP or a local OTLP-JSON span
file) and the /metrics endpoint. Handlers report token usage with :func:`record_usage`.
Importing this package starts nothing and sets nothing global. See
``docs/telemetry.md`` for every span, attribute, metric, label and bucket.
"""

from __future__ import annotations

from rh_agents.core.usage import TokenUsage, record_usage
from rh_agents.telemetry import semconv
from rh_agents.telemetry._exporters import JsonLinesSpanExporter, span_to_dict
from rh_agents.telemetry._setup import (
    DEFAULT_TRACE_FILE,
    MetricsPortInUseError,
    TelemetryHandle,
    setup,
)
from rh_agents.telemetry._telemetry import SEMCONV_VERSION, Telemetry, default_telemetry
from rh_agents.telemetry.metrics import (
    DURATION_BUCKETS,
    GROUP_DURATION_BUCKETS,
    WAIT_BUCKETS,
    RhAgentsMetrics,
    metrics_for,
)

__all__ = [
    "DEFAULT_TRACE_FILE",
    "DURATION_BUCKETS",
    "GROUP_DURATION_BUCKETS",
    "SEMCONV_VERSION",
    "WAIT_BUCKETS",
    "JsonLinesSpanExporter",
    "MetricsPortInUseError",
    "RhAgentsMetrics",
    "Telemetry",
    "TelemetryHandle",
    "TokenUsage",
    "default_telemetry",
    "metrics_for",
    "record_usage",
    "semconv",
    "setup",
    "span_to_dict",
]
