"""The OpenTelemetry + Prometheus implementation of the core's instrumentation hooks.

Every hook catches its own errors (logged once per hook) so telemetry never breaks or
stalls a run. Span work is skipped when tracing is off or the span is not recording.
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
    from rh_agents.telemetry.metrics import RhAgentsMetrics

__all__ = ["OTelInstrumentation"]

logger = logging.getLogger("rh_agents.telemetry")

# operation name, name attribute, span kind, per event type (GenAI semantic conventions)
_OPS: dict[EventType | None, tuple[str, str, SpanKind]] = {
    EventType.AGENT_CALL: ("invoke_agent", "gen_ai.agent.name", SpanKind.INTERNAL),
    EventType.TOOL_CALL: ("execute_tool", "gen_ai.tool.name", SpanKind.INTERNAL),
    EventType.LLM_CALL: ("chat", "gen_ai.request.model", SpanKind.CLIENT),
    None: ("invoke_agent", "gen_ai.agent.name", SpanKind.INTERNAL),
}
_OPERATION_OF = {t.value: op for t, (op, _, _) in _OPS.items() if t is not None}


class _ItemInfo:
    __slots__ = ("group", "index", "wait")

    def __init__(self, group: _GroupHandle | None, index: int, wait: float) -> None:
        self.group = group
        self.index = index
        self.wait = wait


_current_item: ContextVar[_ItemInfo | None] = ContextVar("rh_agents_item", default=None)


class _EventHandle:
    __slots__ = ("name", "op", "span", "token")

    def __init__(self, span: Any, token: Any, op: str, name: str) -> None:
        self.span = span
        self.token = token
        self.op = op
        self.name = name


class _GroupHandle:
    __slots__ = ("ctx", "label", "span")

    def __init__(self, span: Any, ctx: Any, label: str) -> None:
        self.span = span
        self.ctx = ctx
        self.label = label


class _ItemHandle:
    __slots__ = ("group", "info_token", "token")

    def __init__(self, group: _GroupHandle | None, token: Any, info_token: Any) -> None:
        self.group = group
        self.token = token
        self.info_token = info_token


def _trace_exemplar(span: Any) -> dict[str, str] | None:
    if span is None:
        return None
    ctx = span.get_span_context()
    if not ctx.trace_flags.sampled:
        return None
    return {"trace_id": format(ctx.trace_id, "032x")}


class OTelInstrumentation:
    """Spans through an OpenTelemetry tracer, metrics into an :class:`RhAgentsMetrics`."""

    enabled = True

    def __init__(self, tracer: trace.Tracer | None, metrics: RhAgentsMetrics | None) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self._failed_hooks: set[str] = set()
        self._breakers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._groups: dict[int, _GroupHandle] = {}

    def _fault(self, hook: str) -> None:
        if hook not in self._failed_hooks:
            self._failed_hooks.add(hook)
            logger.exception("Telemetry hook %s failed; the run continues without it.", hook)

    # ------------------------------------------------------------------ events

    def event_started(self, event: ExecutionEvent[Any], wait: float | None) -> Any:
        op, name_attr, kind = _OPS.get(event.event_type, _OPS[None])
        name = event.name or "unknown"
        handle = _EventHandle(None, None, op, name)
        if self.tracer is None:
            return handle
        try:
            span = self.tracer.start_span(f"{op} {name}", kind=kind)
            handle.span = span
            if span.is_recording():
                attrs: dict[str, Any] = {
                    "gen_ai.operation.name": op,
                    name_attr: name,
                    "rh_agents.event.address": event.address,
                }
                if event.is_parallel:
                    attrs["rh_agents.parallel.group_id"] = event.group_id or ""
                    if event.parallel_index is not None:
                        attrs["rh_agents.parallel.index"] = event.parallel_index
                    info = _current_item.get()
                    if info is not None and info.index == event.parallel_index:
                        attrs["rh_agents.parallel.wait.duration"] = info.wait
                if event.is_replayed:
                    attrs["rh_agents.replayed"] = True
                span.set_attributes(attrs)
            handle.token = otel_context.attach(trace.set_span_in_context(span))
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
                        "exception.message": str(error)[:500],
                    },
                )
        except Exception:
            self._fault("event_retrying")

    def attempt_started(self, handle: Any, attempt: int) -> Any:
        if self.tracer is None or handle is None or handle.span is None:
            return None
        try:
            span = self.tracer.start_span(f"attempt {attempt}")
            if span.is_recording():
                span.set_attribute("rh_agents.retry.attempt", attempt)
            token = otel_context.attach(trace.set_span_in_context(span))
            return (span, token)
        except Exception:
            self._fault("attempt_started")
            return None

    def attempt_finished(self, attempt_handle: Any, error: BaseException | None) -> None:
        if attempt_handle is None:
            return
        span, token = attempt_handle
        try:
            if error is not None and isinstance(error, Exception) and span.is_recording():
                span.set_status(Status(StatusCode.ERROR, str(error)[:500]))
                span.set_attribute("error.type", type(error).__name__)
                span.record_exception(error)
            span.end()
        except Exception:
            self._fault("attempt_finished")
        finally:
            _detach(token)

    def event_finished(
        self,
        handle: Any,
        event: ExecutionEvent[Any],
        outcome: str,
        error: BaseException | None,
        duration: float,
    ) -> None:
        span = handle.span if handle is not None else None
        try:
            if span is not None:
                if span.is_recording():
                    span.set_attribute("rh_agents.outcome", outcome)
                    if outcome in (Outcome.FAILED, Outcome.REJECTED) and error is not None:
                        span.set_status(Status(StatusCode.ERROR, str(error)[:500]))
                        span.set_attribute("error.type", type(error).__name__)
                        span.record_exception(error)
                    elif outcome == Outcome.REPLAYED:
                        span.set_attribute("rh_agents.replayed", True)
                    elif outcome == Outcome.CACHED:
                        span.set_attribute("rh_agents.cached", True)
                span.end()
        except Exception:
            self._fault("event_finished.span")
        finally:
            if handle is not None and handle.token is not None:
                _detach(handle.token)
        if self.metrics is None or handle is None:
            return
        try:
            m = self.metrics
            exemplar = _trace_exemplar(span)
            m.child(m.events, handle.op, handle.name, outcome).inc(1, exemplar)
            m.child(m.duration, handle.op, handle.name, outcome).observe(duration, exemplar)
            if error is not None and outcome in (Outcome.FAILED, Outcome.REJECTED):
                m.child(m.errors, handle.op, handle.name, type(error).__name__).inc()
        except Exception:
            self._fault("event_finished.metrics")

    # ------------------------------------------------------------------ groups

    def group_started(self, group: GroupInfo, error_strategy: str) -> Any:
        label = group.name or "unnamed"
        handle = _GroupHandle(None, None, label)
        try:
            if self.metrics is not None:
                m = self.metrics
                m.child(m.max_workers, label).set(group.max_workers)
            if self.tracer is not None:
                span = self.tracer.start_span(f"parallel {label}", kind=SpanKind.INTERNAL)
                if span.is_recording():
                    span.set_attributes(
                        {
                            "rh_agents.parallel.name": label,
                            "rh_agents.parallel.group_id": group.group_id,
                            "rh_agents.parallel.max_workers": group.max_workers,
                            "rh_agents.parallel.size": group.total,
                            "rh_agents.parallel.error_strategy": error_strategy,
                            "rh_agents.parallel.timeout": group.timeout
                            if group.timeout is not None
                            else -1.0,
                        }
                    )
                handle.span = span
                handle.ctx = trace.set_span_in_context(span)
                self._groups[id(group)] = handle
        except Exception:
            self._fault("group_started")
        return handle

    def item_started(self, handle: Any, group: GroupInfo, index: int, wait: float) -> Any:
        token = None
        info_token = None
        try:
            if self.metrics is not None:
                m = self.metrics
                m.child(m.semaphore_wait, group.name or "unnamed").observe(wait)
            if handle is not None and handle.ctx is not None:
                token = otel_context.attach(handle.ctx)
            info_token = _current_item.set(_ItemInfo(handle, index, wait))
        except Exception:
            self._fault("item_started")
        return _ItemHandle(handle, token, info_token)

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
                            "rh_agents.parallel.index": _index_of(item),
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
                _detach(item.token)

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
        label = handle.label if handle is not None else (group.name or "unnamed")
        span = handle.span if handle is not None else None
        self._groups.pop(id(group), None)
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
                exemplar = _trace_exemplar(span)
                m.child(m.groups, label, status).inc(1, exemplar)
                m.child(m.group_duration, label, status).observe(duration, exemplar)
        except Exception:
            self._fault("group_finished.metrics")

    def queue_changed(self, group: GroupInfo, in_flight: int, queued: int) -> None:
        if self.metrics is None:
            return
        try:
            m = self.metrics
            label = group.name or "unnamed"
            m.child(m.in_flight, label).set(in_flight)
            m.child(m.queued, label).set(queued)
        except Exception:
            self._fault("queue_changed")

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


def _index_of(item: _ItemHandle) -> int:
    info = _current_item.get()
    return info.index if info is not None else -1


def _detach(token: Any) -> None:
    try:
        otel_context.detach(token)
    except Exception:  # pragma: no cover - detach logs and never raises in the SDK
        logger.debug("context detach failed", exc_info=True)
