"""The injectable Telemetry object a library user passes to ExecutionState."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from rh_agents.telemetry._otel import OTelInstrumentation
from rh_agents.telemetry.metrics import RhAgentsMetrics, metrics_for

__all__ = ["SEMCONV_VERSION", "Telemetry"]

SEMCONV_VERSION = "1.37.0"
"""The OpenTelemetry semantic conventions (GenAI) version the spans follow (the first
with ``gen_ai.provider.name``, which replaced ``gen_ai.system``)."""


class Telemetry:
    """Where rh_agents sends spans and metrics; pass it to ``ExecutionState(telemetry=)``.

    Following OpenTelemetry's guidance for libraries, nothing global is set: the tracer
    comes from ``tracer_provider`` (default: the global provider, a no-op until the
    application configures the SDK) and metrics go to ``registry`` (default:
    prometheus_client's default registry).

    Args:
        tracer_provider: an OpenTelemetry ``TracerProvider``.
        registry: a prometheus_client ``CollectorRegistry``.
        tracing: False to record no spans.
        metrics: False to record no metrics.
        max_label_values: distinct values per metric label before folding into
            ``_other``. The cap belongs to the registry: None (the default) takes the cap
            the registry's rh_agents metrics already have (200 for a new registry).

    Raises:
        InvalidArgumentError: ``max_label_values`` differs from the cap of the rh_agents
            metrics already in ``registry`` (they are shared, so it cannot apply to
            this Telemetry alone), or is not a positive integer.

    Example:
        >>> telemetry = Telemetry(registry=CollectorRegistry())
        >>> state = ExecutionState(telemetry=telemetry)  # doctest: +SKIP
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        registry: CollectorRegistry | None = None,
        *,
        tracing: bool = True,
        metrics: bool = True,
        max_label_values: int | None = None,
    ) -> None:
        from rh_agents import __version__

        self.tracer_provider = tracer_provider
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self.tracer: trace.Tracer | None = (
            provider.get_tracer(
                "rh_agents",
                __version__,
                schema_url=f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}",
            )
            if tracing
            else None
        )
        self.metrics: RhAgentsMetrics | None = (
            metrics_for(registry, max_label_values) if metrics else None
        )
        self.registry = self.metrics.registry if self.metrics is not None else registry
        self.instrumentation = OTelInstrumentation(self.tracer, self.metrics)

    def __repr__(self) -> str:
        return f"Telemetry(tracing={self.tracer is not None}, metrics={self.metrics is not None})"

    def _describe(self) -> dict[str, Any]:
        return {"tracing": self.tracer is not None, "metrics": self.metrics is not None}
