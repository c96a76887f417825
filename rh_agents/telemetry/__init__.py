"""OpenTelemetry tracing and Prometheus metrics for rh_agents.

Library code passes a :class:`Telemetry` to ``ExecutionState(telemetry=...)``; an
application (or the demo) calls :func:`setup` once to configure the SDK, exporters and
the /metrics endpoint. Importing this package starts nothing and sets nothing global.
See ``docs/telemetry.md`` for every span, attribute, metric, label and bucket.
"""

from __future__ import annotations

from rh_agents.telemetry._exporters import JsonLinesSpanExporter, span_to_dict
from rh_agents.telemetry._setup import (
    DEFAULT_TRACE_FILE,
    MetricsPortInUseError,
    TelemetryHandle,
    setup,
)
from rh_agents.telemetry._telemetry import SEMCONV_VERSION, Telemetry
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
    "metrics_for",
    "setup",
    "span_to_dict",
]
