"""Traces across processes: the trace context shipped with remote work, and worker spans.

The coordinator captures the W3C trace context (``traceparent``) of the current span with
:func:`inject_trace_context`; the top-level package registers it as the core's trace
propagation (:func:`rh_agents.core.hooks.trace_carrier`), so every remote executor ships
it with the work. A worker process runs the work inside :func:`remote_span`: a
``remote {name}`` span under the shipped context, recorded through the provider set with
:func:`use_worker_telemetry` (by default OpenTelemetry's global provider).
:func:`setup_worker_telemetry` configures a worker's exporters in one call.

Example::

    pool = ProcessPoolItemExecutor(
        4, initializer=functools.partial(setup_worker_telemetry, trace_file="w-{pid}.jsonl")
    )
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from rh_agents.telemetry._setup import TelemetryHandle

__all__ = [
    "RemoteSpan",
    "inject_trace_context",
    "remote_span",
    "setup_worker_telemetry",
    "use_worker_telemetry",
]

_MESSAGE_LIMIT = 500

_worker_provider: trace.TracerProvider | None = None


def inject_trace_context() -> dict[str, str]:
    """The W3C trace context (``traceparent``) of the current span, for a worker."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def use_worker_telemetry(tracer_provider: trace.TracerProvider | None) -> None:
    """Set the tracer provider that ``remote ...`` spans use in this (worker) process.

    None goes back to the default: OpenTelemetry's global provider.
    """
    global _worker_provider
    _worker_provider = tracer_provider


def setup_worker_telemetry(**setup_kwargs: Any) -> TelemetryHandle:
    """Configure OpenTelemetry in a worker process for its ``remote ...`` spans.

    Calls :func:`rh_agents.telemetry.setup` with ``setup_kwargs`` (a ``{pid}`` in
    ``trace_file`` becomes the process id, so each worker writes its own file) and makes
    the result the provider of remote spans. Use it as a process pool's initializer
    (``functools.partial(setup_worker_telemetry, trace_file="spans-{pid}.jsonl")``); on
    Dask, :func:`rh_agents.executors.dask.worker_telemetry` calls it in each worker.
    """
    from rh_agents.telemetry._setup import setup

    trace_file = setup_kwargs.get("trace_file")
    if trace_file is not None:
        setup_kwargs["trace_file"] = os.fspath(trace_file).replace("{pid}", str(os.getpid()))
    handle = setup(**setup_kwargs)
    use_worker_telemetry(handle.tracer_provider)
    return handle


class RemoteSpan:
    """The ``remote {name}`` span of one piece of shipped work; says how it ended."""

    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def completed(self) -> None:
        """The work returned a value that travels back."""
        if self._span.is_recording():
            self._span.set_attribute("rh_agents.outcome", "completed")

    def raised(self, error: BaseException) -> None:
        """The work raised ``error``."""
        span = self._span
        if span.is_recording():
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)[:_MESSAGE_LIMIT]))
            span.set_attribute("error.type", type(error).__name__)
            span.set_attribute("rh_agents.outcome", "failed")

    def refused(self, message: str) -> None:
        """The work finished, but what it returned cannot travel back (``message``)."""
        span = self._span
        if span.is_recording():
            span.set_status(Status(StatusCode.ERROR, message[:_MESSAGE_LIMIT]))
            span.set_attribute("rh_agents.outcome", "failed")


@contextmanager
def remote_span(
    name: str, carrier: dict[str, str], attributes: dict[str, Any]
) -> Iterator[RemoteSpan]:
    """Open the span ``name`` under the trace context ``carrier``, current inside the block.

    Exceptions are not recorded by the block itself: the caller reports the outcome
    through the :class:`RemoteSpan` it gets.
    """
    from rh_agents import __version__

    provider = _worker_provider if _worker_provider is not None else trace.get_tracer_provider()
    tracer = provider.get_tracer("rh_agents.remote", __version__)
    with tracer.start_as_current_span(
        name,
        context=propagate.extract(carrier),
        kind=SpanKind.INTERNAL,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        if span.is_recording():
            span.set_attributes(attributes)
        yield RemoteSpan(span)
