"""The OpenTelemetry + Prometheus implementation of the core's instrumentation hooks.

Every hook catches its own errors (logged once per hook) so telemetry never breaks or
stalls a run (``otel_context.detach`` logs its own errors and never raises). Span work
is skipped when tracing is off; attributes known when a span starts are passed to
``start_span`` (samplers see them, and the SDK validates them once); metric children
are looked up once per label set and cached.
"""

from __future__ import annotations

import logging
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from rh_agents.core.hooks import GroupInfo, Outcome
from rh_agents.core.types import EventType

if TYPE_CHECKING:
    from rh_agents.core.circuit_breaker import CircuitBreaker, CircuitState
    from rh_agents.core.events import ExecutionEvent
    from rh_agents.telemetry.metrics import LiveGroup, RhAgentsMetrics

__all__ = ["OTelInstrumentation"]

logger = logging.getLogger("rh_agents.telemetry")

# operation name, name attribute, span kind, per event type (GenAI semantic conventions).
# An LLM actor's name is not a model name: it goes to rh_agents.actor.name, and
# gen_ai.request.model is set only from a ``model`` the actor declares.
_OPS: dict[EventType | None, tuple[str, str, SpanKind]] = {
    EventType.AGENT_CALL: ("invoke_agent", "gen_ai.agent.name", SpanKind.INTERNAL),
    EventType.TOOL_CALL: ("execute_tool", "gen_ai.tool.name", SpanKind.INTERNAL),
    EventType.LLM_CALL: ("chat", "rh_agents.actor.name", SpanKind.CLIENT),
}
_DEFAULT_OP = _OPS[EventType.AGENT_CALL]
_OPERATION_OF = {t.value: op for t, (op, _, _) in _OPS.items() if t is not None}
_MESSAGE_LIMIT = 500


class _EventHandle:
    __slots__ = ("name", "op", "recorded", "span", "token")

    def __init__(self, op: str, name: str) -> None:
        self.op = op
        self.name = name
        self.span: Any = None
        self.token: Any = None
        # The exception already recorded on an ``attempt {n}`` span of this event.
        self.recorded: BaseException | None = None


class _AttemptHandle:
    __slots__ = ("event", "span", "token")

    def __init__(self, event: _EventHandle, span: Any, token: Any) -> None:
        self.event = event
        self.span = span
        self.token = token


class _GroupHandle:
    __slots__ = ("ctx", "label", "live", "span", "wait_child")

    def __init__(self, label: str) -> None:
        self.label = label
        self.span: Any = None
        self.ctx: Any = None
        self.live: LiveGroup | None = None
        self.wait_child: Any = None


class _ItemHandle:
    """One running group item; also what ``_current_item`` holds while it runs, so the
    event span of the item can carry its wait."""

    __slots__ = ("group", "index", "info_token", "token", "wait")

    def __init__(self, group: _GroupHandle | None, index: int, wait: float) -> None:
        self.group = group
        self.index = index
        self.wait = wait
        self.token: Any = None
        self.info_token: Any = None


_current_item: ContextVar[_ItemHandle | None] = ContextVar("rh_agents_item", default=None)


def _trace_exemplar(span: Any) -> dict[str, str] | None:
    if span is None:
        return None
    ctx = span.get_span_context()
    if not ctx.trace_flags.sampled:
        return None
    return {"trace_id": format(ctx.trace_id, "032x")}


_DECLARED: dict[type, tuple[bool, bool]] = {}


def _declares(cls: type) -> tuple[bool, bool]:
    """Whether actors of ``cls`` declare a ``model`` and a ``provider`` (fields of a
    subclass, or properties); looked up once per class."""
    found = _DECLARED.get(cls)
    if found is None:
        fields = getattr(cls, "model_fields", {})
        found = (
            "model" in fields or hasattr(cls, "model"),
            "provider" in fields or hasattr(cls, "provider"),
        )
        _DECLARED[cls] = found
    return found


def _model_of(actor: Any) -> tuple[str | None, str | None]:
    """The (model, provider) an LLM or agent actor declares, else those of its ``llm``."""
    if actor is None:
        return None, None
    has_model, has_provider = _declares(type(actor))
    model = getattr(actor, "model", None) if has_model else None
    provider = getattr(actor, "provider", None) if has_provider else None
    llm = actor.__dict__.get("llm")
    if llm is not None and (model is None or provider is None):
        inner_model, inner_provider = _model_of(llm)
        model = model if model is not None else inner_model
        provider = provider if provider is not None else inner_provider
    return (
        model if isinstance(model, str) and model else None,
        provider if isinstance(provider, str) and provider else None,
    )


def _span_left_started(error: BaseException) -> Any:
    """The span ``start_span`` created before a span processor's ``on_start`` raised.

    The SDK starts the span, then calls every processor's ``on_start``; when one raises,
    ``start_span`` raises too and the span is lost to its caller although the processors
    before the failing one saw it start. Found in the traceback, it can be used and
    ended like any other, so no processor is left with an open span.
    """
    tb = error.__traceback__
    try:
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_code.co_name == "start_span":
                candidate = frame.f_locals.get("span")
                if isinstance(candidate, trace.Span) and candidate.is_recording():
                    return candidate
            tb = tb.tb_next
        return None
    finally:
        del tb


class OTelInstrumentation:
    """Spans through an OpenTelemetry tracer, metrics into an :class:`RhAgentsMetrics`."""

    enabled = True

    def __init__(self, tracer: trace.Tracer | None, metrics: RhAgentsMetrics | None) -> None:
        # The API's no-op tracer records nothing: skip span work entirely (and leave the
        # current context alone, so other instrumentation nests as without rh_agents).
        self.tracer = None if isinstance(tracer, trace.NoOpTracer) else tracer
        self.metrics = metrics
        self._failed_hooks: set[str] = set()
        self._breakers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._groups: dict[int, _GroupHandle] = {}
        self._exemplar: tuple[int, dict[str, str]] = (0, {})

    def _fault(self, hook: str) -> None:
        if hook not in self._failed_hooks:
            self._failed_hooks.add(hook)
            logger.exception("Telemetry hook %s failed; the run continues without it.", hook)

    def _start_span(
        self,
        hook: str,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        context: otel_context.Context | None = None,
    ) -> Any:
        """``tracer.start_span``, surviving a span processor whose ``on_start`` raises."""
        assert self.tracer is not None
        try:
            return self.tracer.start_span(name, context, kind, attributes)
        except Exception as exc:
            span = _span_left_started(exc)
            if span is None:
                raise
            key = f"{hook}.on_start"
            if key not in self._failed_hooks:
                self._failed_hooks.add(key)
                logger.exception(
                    "A span processor raised in on_start (span %r); the span is kept and "
                    "ended as usual, and the run continues. Logged once per hook.",
                    name,
                )
            return span

    def _exemplar_of(self, span: Any) -> tuple[int, dict[str, str] | None]:
        """The trace id of a sampled span and its exemplar labels (cached per trace)."""
        if span is None:
            return 0, None
        ctx = span.get_span_context()
        if not ctx.trace_flags.sampled:
            return 0, None
        trace_id: int = ctx.trace_id
        cached = self._exemplar
        if cached[0] != trace_id:
            cached = (trace_id, {"trace_id": format(trace_id, "032x")})
            self._exemplar = cached
        return trace_id, cached[1]

    # ------------------------------------------------------------------ events

    def event_started(self, event: ExecutionEvent[Any], wait: float | None) -> Any:
        event_type = event.event_type
        op, name_attr, kind = _OPS.get(event_type, _DEFAULT_OP)
        name = event.name or "unknown"
        handle = _EventHandle(op, name)
        if self.tracer is None:
            return handle
        try:
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": op,
                name_attr: name,
                "rh_agents.event.address": event.address,
            }
            span_name = f"{op} {name}"
            if event_type is EventType.LLM_CALL or event_type is EventType.AGENT_CALL:
                model, provider = _model_of(event.actor)
                if model is not None:
                    attrs["gen_ai.request.model"] = model
                    if event_type is EventType.LLM_CALL:
                        span_name = f"{op} {model}"
                if provider is not None:
                    attrs["gen_ai.provider.name"] = provider
            if event.is_parallel:
                attrs["rh_agents.parallel.group_id"] = event.group_id or ""
                index = event.parallel_index
                if index is not None:
                    attrs["rh_agents.parallel.index"] = index
                    info = _current_item.get()
                    if info is not None and info.index == index:
                        attrs["rh_agents.parallel.wait.duration"] = info.wait
            if event.is_replayed:
                attrs["rh_agents.replayed"] = True
            parent = otel_context.get_current()
            span = self._start_span("event_started", span_name, kind, attrs, parent)
            handle.span = span
            # Current for the handler, so its spans (and nested events) are children.
            if span.get_span_context().is_valid:
                handle.token = otel_context.attach(trace.set_span_in_context(span, parent))
        except Exception:
            self._fault("event_started")
        return handle

    def event_retrying(
        self,
        handle: Any,
        event: ExecutionEvent[Any],
        attempt: int,
        delay: float,
        error: BaseException,
    ) -> None:
        try:
            if self.metrics is not None:
                m = self.metrics
                m.child(m.retries, handle.op, handle.name).inc()
            span = handle.span
            if span is not None and span.is_recording():
                span.add_event(
                    "retry",
                    {
                        "rh_agents.retry.attempt": attempt,
                        "rh_agents.retry.delay": delay,
                        "error.type": type(error).__name__,
                        "exception.message": str(error)[:_MESSAGE_LIMIT],
                    },
                )
        except Exception:
            self._fault("event_retrying")

    def attempt_started(self, handle: Any, attempt: int) -> Any:
        if self.tracer is None or handle is None or handle.span is None:
            return None
        try:
            span = self._start_span(
                "attempt_started",
                f"attempt {attempt}",
                SpanKind.INTERNAL,
                {"rh_agents.retry.attempt": attempt},
            )
            token = None
            if span.get_span_context().is_valid:
                token = otel_context.attach(trace.set_span_in_context(span))
            return _AttemptHandle(handle, span, token)
        except Exception:
            self._fault("attempt_started")
            return None

    def attempt_finished(self, attempt_handle: Any, error: BaseException | None) -> None:
        if attempt_handle is None:
            return
        span = attempt_handle.span
        try:
            if error is not None and isinstance(error, Exception) and span.is_recording():
                span.set_status(Status(StatusCode.ERROR, str(error)[:_MESSAGE_LIMIT]))
                span.set_attribute("error.type", type(error).__name__)
                span.record_exception(error)
                # Recorded where it was raised; the event span only takes its status.
                attempt_handle.event.recorded = error
            span.end()
        except Exception:
            self._fault("attempt_finished")
        finally:
            if attempt_handle.token is not None:
                otel_context.detach(attempt_handle.token)

    def event_finished(
        self,
        handle: Any,
        event: ExecutionEvent[Any],
        outcome: str,
        error: BaseException | None,
        duration: float,
    ) -> None:
        if handle is None:
            return
        span = handle.span
        if span is not None:
            try:
                if span.is_recording():
                    if outcome in (Outcome.FAILED, Outcome.REJECTED) and error is not None:
                        span.set_attributes(
                            {"rh_agents.outcome": outcome, "error.type": type(error).__name__}
                        )
                        span.set_status(Status(StatusCode.ERROR, str(error)[:_MESSAGE_LIMIT]))
                        if error is not handle.recorded:
                            span.record_exception(error)
                    elif outcome == Outcome.REPLAYED:
                        span.set_attributes(
                            {"rh_agents.outcome": outcome, "rh_agents.replayed": True}
                        )
                    elif outcome == Outcome.CACHED:
                        span.set_attributes(
                            {"rh_agents.outcome": outcome, "rh_agents.cached": True}
                        )
                    else:
                        span.set_attribute("rh_agents.outcome", outcome)
                span.end()
            except Exception:
                self._fault("event_finished.span")
            finally:
                if handle.token is not None:
                    otel_context.detach(handle.token)
        m = self.metrics
        if m is None:
            return
        try:
            trace_id, exemplar = self._exemplar_of(span)
            m.event_series(handle.op, handle.name, outcome).record(duration, trace_id, exemplar)
            if error is not None and outcome in (Outcome.FAILED, Outcome.REJECTED):
                m.child(m.errors, handle.op, handle.name, type(error).__name__).inc()
        except Exception:
            self._fault("event_finished.metrics")

    # ------------------------------------------------------------------ groups

    def group_started(self, group: GroupInfo, error_strategy: str) -> Any:
        label = group.name or "unnamed"
        handle = _GroupHandle(label)
        self._groups[id(group)] = handle
        try:
            if self.metrics is not None:
                m = self.metrics
                handle.live = m.track_group(label, group.max_workers)
                handle.wait_child = m.child(m.semaphore_wait, label)
        except Exception:
            self._fault("group_started.metrics")
        if self.tracer is None:
            return handle
        try:
            span = self._start_span(
                "group_started",
                f"parallel {label}",
                SpanKind.INTERNAL,
                {
                    "rh_agents.parallel.name": label,
                    "rh_agents.parallel.group_id": group.group_id,
                    "rh_agents.parallel.max_workers": group.max_workers,
                    "rh_agents.parallel.size": group.total,
                    "rh_agents.parallel.error_strategy": error_strategy,
                    "rh_agents.parallel.timeout": group.timeout
                    if group.timeout is not None
                    else -1.0,
                },
            )
            handle.span = span
            if span.get_span_context().is_valid:
                handle.ctx = trace.set_span_in_context(span)
        except Exception:
            self._fault("group_started")
        return handle

    def item_started(self, handle: Any, group: GroupInfo, index: int, wait: float) -> Any:
        item = _ItemHandle(handle, index, wait)
        try:
            if handle is not None:
                wait_child = handle.wait_child
                if wait_child is not None:
                    wait_child.observe(wait)
                if handle.ctx is not None:
                    item.token = otel_context.attach(handle.ctx)
            if self.tracer is not None:
                item.info_token = _current_item.set(item)
        except Exception:
            self._fault("item_started")
        return item

    def item_finished(
        self, item: Any, group: GroupInfo, outcome: str, error: BaseException | None
    ) -> None:
        if item is None:
            return
        try:
            if outcome == Outcome.REJECTED and item.group is not None:
                span = item.group.span
                if span is not None and span.is_recording():
                    span.add_event(
                        "circuit_breaker.rejected",
                        {
                            "rh_agents.circuit_breaker.name": getattr(error, "breaker", ""),
                            "rh_agents.parallel.index": item.index,
                        },
                    )
        except Exception:
            self._fault("item_finished")
        finally:
            if item.info_token is not None:
                try:
                    _current_item.reset(item.info_token)
                except ValueError:  # pragma: no cover - reset from another context
                    pass
            if item.token is not None:
                otel_context.detach(item.token)

    def item_retrying(
        self,
        group: GroupInfo,
        name: str,
        operation: str | None,
        attempt: int,
        delay: float,
        error: BaseException,
    ) -> None:
        try:
            if self.metrics is not None:
                m = self.metrics
                op = _OPERATION_OF.get(operation or "", "parallel_item")
                m.child(m.retries, op, name).inc()
            handle = self._groups.get(id(group))
            span = handle.span if handle is not None else None
            if span is not None and span.is_recording():
                span.add_event(
                    "retry",
                    {
                        "rh_agents.parallel.item": name,
                        "rh_agents.retry.attempt": attempt,
                        "rh_agents.retry.delay": delay,
                        "error.type": type(error).__name__,
                        "exception.message": str(error)[:_MESSAGE_LIMIT],
                    },
                )
        except Exception:
            self._fault("item_retrying")

    def group_finished(
        self,
        handle: Any,
        group: GroupInfo,
        status: str,
        cancelled: int,
        duration: float,
        timed_out: bool,
    ) -> None:
        self._groups.pop(id(group), None)
        label = handle.label if handle is not None else (group.name or "unnamed")
        span = handle.span if handle is not None else None
        try:
            if span is not None:
                if span.is_recording():
                    span.set_attributes(
                        {
                            "rh_agents.parallel.size": group.total,
                            "rh_agents.parallel.completed": group.completed,
                            "rh_agents.parallel.failed": group.failed,
                            "rh_agents.parallel.cancelled": cancelled,
                            "rh_agents.parallel.status": status,
                            "rh_agents.outcome": status,
                        }
                    )
                    if timed_out:
                        span.set_attribute("rh_agents.parallel.timed_out", True)
                        span.add_event(
                            "timeout", {"rh_agents.parallel.timeout": group.timeout or -1.0}
                        )
                        span.set_status(
                            Status(StatusCode.ERROR, f"timed out after {group.timeout}s")
                        )
                    elif status == "failed":
                        span.set_status(Status(StatusCode.ERROR, f"{group.failed} items failed"))
                span.end()
        except Exception:
            self._fault("group_finished.span")
        try:
            if self.metrics is not None:
                m = self.metrics
                if handle is not None and handle.live is not None:
                    m.untrack_group(handle.live)
                    handle.live = None
                exemplar = _trace_exemplar(span)
                m.child(m.groups, label, status).inc(1, exemplar)
                m.child(m.group_duration, label, status).observe(duration, exemplar)
        except Exception:
            self._fault("group_finished.metrics")

    def queue_changed(self, group: GroupInfo, in_flight: int, queued: int) -> None:
        # Called twice per item: two stores into the group's record, which the metrics
        # collector sums per group name when /metrics is scraped.
        handle = self._groups.get(id(group))
        if handle is not None:
            live = handle.live
            if live is not None:
                live.in_flight = in_flight
                live.queued = queued

    # ---------------------------------------------------------------- breakers

    def watch_breaker(self, breaker: Any) -> None:
        try:
            if breaker in self._breakers:
                return
            self._breakers.add(breaker)
            if self.metrics is not None:
                m = self.metrics
                m.child(m.breaker_state, breaker.name).set(breaker.state.gauge_value)
            breaker.add_listener(self._on_transition)
            breaker.add_reject_listener(self._on_reject)
        except Exception:
            self._fault("watch_breaker")

    def _on_transition(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        try:
            if self.metrics is not None:
                m = self.metrics
                m.child(m.breaker_state, breaker.name).set(new.gauge_value)
                if new.value == "open":
                    m.child(m.breaker_trips, breaker.name).inc()
            span = trace.get_current_span()
            if span.is_recording():
                span.add_event(
                    "circuit_breaker.state_change",
                    {
                        "rh_agents.circuit_breaker.name": breaker.name,
                        "rh_agents.circuit_breaker.from": old.value,
                        "rh_agents.circuit_breaker.to": new.value,
                    },
                )
        except Exception:
            self._fault("breaker_transition")

    def _on_reject(self, breaker: CircuitBreaker) -> None:
        try:
            if self.metrics is not None:
                m = self.metrics
                m.child(m.breaker_rejections, breaker.name).inc()
        except Exception:
            self._fault("breaker_reject")
