"""The injectable Telemetry object, and the default one states use without it."""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from rh_agents.telemetry._otel import GenAIMetrics, OTelInstrumentation
from rh_agents.telemetry.metrics import RhAgentsMetrics, metrics_for
from rh_agents.telemetry.semconv import SCHEMA_URL, SEMCONV_VERSION

__all__ = ["SEMCONV_VERSION", "Telemetry", "default_telemetry"]


class Telemetry:
    """Where rh_agents sends spans and metrics; pass it to ``ExecutionState(telemetry=)``.

    Following OpenTelemetry's guidance for libraries, nothing global is set and the
    application's global providers are used unless others are given:

    * spans go through ``tracer_provider``, by default the global ``TracerProvider``,
      looked up at each invocation until the application sets one (so configuring
      OpenTelemetry after importing rh_agents or creating a state works; until then no
      span work is done at all);
    * the GenAI metrics (``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``)
      go through ``meter_provider``, by default the global ``MeterProvider`` (the API's
      proxy instruments start recording once one is set);
    * the Prometheus metrics go to ``registry``, by default prometheus_client's
      ``REGISTRY``.

    ``ExecutionState()`` without ``telemetry=`` uses :func:`default_telemetry`, which is
    ``Telemetry()``; ``telemetry=False`` records nothing.

    Args:
        tracer_provider: an OpenTelemetry ``TracerProvider``.
        registry: a prometheus_client ``CollectorRegistry``.
        meter_provider: an OpenTelemetry ``MeterProvider`` for the GenAI metrics.
        tracing: False to record no spans.
        metrics: False to record no metrics (neither Prometheus nor GenAI ones).
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
        meter_provider: otel_metrics.MeterProvider | None = None,
        tracing: bool = True,
        metrics: bool = True,
        max_label_values: int | None = None,
    ) -> None:
        from rh_agents import __version__

        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        follow = tracing and (
            tracer_provider is None or isinstance(tracer_provider, trace.ProxyTracerProvider)
        )
        tracer: trace.Tracer | None = None
        if tracing and not follow:
            assert tracer_provider is not None
            tracer = tracer_provider.get_tracer("rh_agents", __version__, schema_url=SCHEMA_URL)
        self.tracing = tracing
        self.metrics: RhAgentsMetrics | None = (
            metrics_for(registry, max_label_values) if metrics else None
        )
        self.registry = self.metrics.registry if self.metrics is not None else registry
        genai: GenAIMetrics | None = None
        if metrics:
            provider = meter_provider or otel_metrics.get_meter_provider()
            genai = GenAIMetrics(
                provider.get_meter("rh_agents", __version__, schema_url=SCHEMA_URL)
            )
        self.instrumentation = OTelInstrumentation(
            tracer, self.metrics, genai, follow_global=follow, version=__version__
        )

    @property
    def tracer(self) -> trace.Tracer | None:
        """The tracer spans are recorded with now (None while there is none to use)."""
        return self.instrumentation.tracer

    def __repr__(self) -> str:
        return f"Telemetry(tracing={self.tracing}, metrics={self.metrics is not None})"

    def _describe(self) -> dict[str, Any]:
        return {"tracing": self.tracing, "metrics": self.metrics is not None}


_default: Telemetry | None = None
_default_lock = threading.Lock()


def default_telemetry() -> Telemetry:
    """The telemetry of states created without ``telemetry=``: ``Telemetry()``, made
    once per process (global providers, prometheus_client's default registry).

    Example:
        >>> default_telemetry() is default_telemetry()
        True
    """
    global _default
    found = _default
    if found is None:
        with _default_lock:
            if _default is None:
                _default = Telemetry()
            found = _default
    return found
