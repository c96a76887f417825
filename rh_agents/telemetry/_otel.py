"""The OpenTelemetry + Prometheus implementation of the core's instrumentation hooks.

Every hook catches its own errors (logged once per hook) so telemetry never breaks or
stalls a run (``otel_context.detach`` logs its own errors and never raises). Span work
is skipped when tracing is off, and while the global tracer provider that the default
follows is still the API's no-op proxy (it is looked up again at each event until the
application sets one, so configuring OpenTelemetry after creating a state works);
attributes known when a span starts are passed to ``start_span`` (samplers see them,
and the SDK validates them once); metric children are looked up once per label set and
cached. Every name comes from :mod:`rh_agents.telemetry.semconv`.

Exception messages and stack traces go to spans bounded (:data:`MESSAGE_LIMIT`,
:data:`STACKTRACE_LIMIT` characters), and the message of a validation error is rebuilt
from its locations and reasons, without the input values pydantic quotes: handler
inputs never reach an attribute. Durations are measured on the real clock, as spans
are, whatever clock the state runs on.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from contextvars import ContextVar
from time import perf_counter
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from rh_agents.core.errors import CircuitOpenError
from rh_agents.core.hooks import GroupInfo, Outcome
from rh_agents.core.parallel import ParallelTimeoutError
from rh_agents.core.types import EventType
from rh_agents.core.usage import TokenUsage
from rh_agents.telemetry import semconv as sc
from rh_agents.telemetry._breakers import BreakerWatch
from rh_agents.telemetry._errors import error_message, record_exception
from rh_agents.telemetry._outcomes import FinalOutcomes, Pending
from rh_agents.telemetry.semconv import Op, Rh, TokenType

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram

    from rh_agents.core.events import ExecutionEvent
    from rh_agents.telemetry.metrics import LiveGroup, RhAgentsMetrics

__all__ = ["OTelInstrumentation"]

logger = logging.getLogger("rh_agents.telemetry")

# operation name, name attribute, span kind, per event type (GenAI semantic conventions).
# An LLM actor's name is not a model name: it goes to rh_agents.actor.name, and
# gen_ai.request.model is set only from a ``model`` the actor declares.
_OPS: dict[EventType | None, tuple[str, str, SpanKind]] = {
    EventType.AGENT_CALL: (Op.INVOKE_AGENT, sc.ATTR_AGENT_NAME, SpanKind.INTERNAL),
    EventType.TOOL_CALL: (Op.EXECUTE_TOOL, sc.ATTR_TOOL_NAME, SpanKind.INTERNAL),
    EventType.LLM_CALL: (Op.CHAT, Rh.ACTOR_NAME, SpanKind.CLIENT),
}
_DEFAULT_OP = _OPS[EventType.AGENT_CALL]
_OPERATION_OF = {t.value: op for t, (op, _, _) in _OPS.items() if t is not None}
_FAILURES = (Outcome.FAILED, Outcome.REJECTED)


class _EventHandle:
    __slots__ = ("event", "item", "name", "op", "recorded", "root", "span", "token")

    def __init__(self, op: str, name: str, event: ExecutionEvent[Any]) -> None:
        self.op = op
        self.name = name
        # The runner's working copy: record_usage adds to its ``usage`` while it runs.
        self.event = event
        self.span: Any = None
        self.token: Any = None
        # The exception already recorded on an ``attempt {n}`` span of this event.
        self.recorded: BaseException | None = None
        # The group item this invocation is the work of: its group decides whether its
        # outcome is final (it may retry it).
        self.item: _ItemHandle | None = None
        # Token of _inside while this is a root invocation (None: not a root).
        self.root: Any = None


class _AttemptHandle:
    __slots__ = ("event", "span", "token", "usage")

    def __init__(self, event: _EventHandle, span: Any, token: Any) -> None:
        self.event = event
        self.span = span
        self.token = token
        self.usage: TokenUsage | None = event.event.usage  # the total before the attempt


if hasattr(trace, "_TRACER_PROVIDER"):

    def _global_unset() -> bool:
        # The API's own global, read directly: get_tracer_provider() also looks
        # OTEL_PYTHON_TRACER_PROVIDER up in os.environ on every call, which would be most
        # of the cost of an event while nothing is configured.
        return trace._TRACER_PROVIDER is None

else:  # pragma: no cover - another opentelemetry-api layout: the public way

    def _global_unset() -> bool:
        return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


class _TracerRef:
    """The tracer of an explicit provider, or the one of the global provider, looked
    up at each use until the application sets one (ProxyTracer semantics at the cost
    of one global read while nothing is set). Shared by the per-state views."""

    __slots__ = ("follow", "schema_url", "tracer", "version")

    def __init__(self, tracer: trace.Tracer | None, follow: bool, version: str) -> None:
        # The API's no-op tracer records nothing: skip span work entirely (and leave the
        # current context alone, so other instrumentation nests as without rh_agents).
        self.tracer = None if isinstance(tracer, trace.NoOpTracer) else tracer
        self.follow = follow and tracer is None
        self.version = version
        self.schema_url = sc.SCHEMA_URL
        if self.follow:
            trace.get_tracer_provider()  # loads one named by OTEL_PYTHON_TRACER_PROVIDER

    def get(self) -> trace.Tracer | None:
        tracer = self.tracer
        if tracer is not None or not self.follow:
            return tracer
        if _global_unset():
            return None  # nothing configured yet: nothing to record
        provider = trace.get_tracer_provider()
        self.follow = False
        tracer = provider.get_tracer("rh_agents", self.version, schema_url=self.schema_url)
        self.tracer = None if isinstance(tracer, trace.NoOpTracer) else tracer
        return self.tracer


class GenAIMetrics:
    """The GenAI semantic-convention histograms, through the OpenTelemetry metrics API."""

    def __init__(self, meter: Any) -> None:
        self.token_usage: Histogram = meter.create_histogram(
            sc.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=sc.TOKEN_USAGE_BUCKETS,
        )
        self.duration: Histogram = meter.create_histogram(
            sc.METRIC_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=sc.OPERATION_DURATION_BUCKETS,
        )


class _GroupHandle:
    __slots__ = (
        "backoffs",
        "ctx",
        "first_error",
        "group_id",
        "label",
        "live",
        "span",
        "started",
        "wait_child",
    )

    def __init__(self, label: str, group_id: str) -> None:
        self.label = label
        self.group_id = group_id
        self.started = perf_counter()
        self.span: Any = None
        self.ctx: Any = None
        self.live: LiveGroup | None = None
        self.wait_child: Any = None
        # The error type of the first item that finally failed.
        self.first_error: str | None = None
        # Backoff before the next attempt of each item being retried, by index.
        self.backoffs: dict[int, float] = {}


class _ItemHandle:
    """One attempt of a group item; also what ``_current_item`` holds while it runs, so
    the event span of the item can carry its wait and attempt, and its invocations'
    outcomes wait for the group's verdict (final, or retried)."""

    __slots__ = ("attempt", "backoff", "group", "index", "info_token", "pending", "token", "wait")

    def __init__(self, group: _GroupHandle | None, index: int, wait: float, attempt: int) -> None:
        self.group = group
        self.index = index
        self.wait = wait
        self.attempt = attempt
        self.backoff = group.backoffs.pop(index, None) if group is not None else None
        self.pending: Pending = []
        self.token: Any = None
        self.info_token: Any = None


_current_item: ContextVar[_ItemHandle | None] = ContextVar("rh_agents_item", default=None)
_inside: ContextVar[bool] = ContextVar("rh_agents_inside", default=False)


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

    def __init__(
        self,
        tracer: trace.Tracer | None,
        metrics: RhAgentsMetrics | None,
        genai: GenAIMetrics | None = None,
        *,
        follow_global: bool = False,
        version: str = "",
    ) -> None:
        self._tracer = _TracerRef(tracer, follow_global, version)
        self.metrics = metrics
        self.genai = genai
        self._recording = metrics is not None or genai is not None
        self.conversation_id: str | None = None
        self._failed_hooks: set[str] = set()
        self._breaker_watch = BreakerWatch(metrics, self._fault)
        self._outcomes = FinalOutcomes(metrics) if metrics is not None else None
        self._groups: dict[int, _GroupHandle] = {}
        self._exemplar: tuple[int, dict[str, str]] = (0, {})
        # The event-loop lag monitor of setup() (watches the loops states run on).
        self.loops: Any = None
        self._loop_unseen = False

    @property
    def enabled(self) -> bool:
        """Whether the hooks can record anything now: metrics are on, or there is a
        tracer (with tracing only, False until the global provider is set)."""
        return self._recording or self._tracer.get() is not None

    @property
    def tracer(self) -> trace.Tracer | None:
        """The tracer spans are recorded with now (None: no span work)."""
        return self._tracer.get()

    def for_state(self, state_id: str) -> OTelInstrumentation:
        """The view an ExecutionState uses: the same tracer, metrics and error log, with
        the state id as ``gen_ai.conversation.id`` and its own running groups."""
        view = copy.copy(self)
        view.conversation_id = state_id
        view._groups = {}
        view._loop_unseen = self.loops is not None
        return view

    def _see_loop(self) -> None:
        """Show the loop this state runs on to the lag monitor (once per state)."""
        self._loop_unseen = False
        try:
            self.loops.watch(asyncio.get_running_loop())
        except Exception:
            self._fault("loop_monitor")

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
        tracer = self._tracer.tracer
        assert tracer is not None
        try:
            return tracer.start_span(name, context, kind, attributes)
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
        handle = _EventHandle(op, name, event)
        if self._loop_unseen:
            self._see_loop()
        if not _inside.get():
            handle.root = _inside.set(True)
        handle.item = info = _own_item(event)
        if self._tracer.get() is None:
            return handle
        try:
            span_name, attrs = _event_attributes(
                event, op, name_attr, name, info, self.conversation_id
            )
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
        if handle is None:  # the hooks were off when the invocation started
            return
        try:
            if self.metrics is not None:
                m = self.metrics
                m.child(m.retries, handle.op, handle.name).inc()
            span = handle.span
            if span is not None and span.is_recording():
                span.add_event(
                    Rh.EVENT_RETRY,
                    {
                        Rh.RETRY_ATTEMPT: attempt,
                        Rh.RETRY_DELAY: delay,
                        sc.ATTR_ERROR_TYPE: type(error).__name__,
                        sc.ATTR_EXCEPTION_MESSAGE: error_message(error),
                    },
                )
        except Exception:
            self._fault("event_retrying")

    def attempt_started(self, handle: Any, attempt: int) -> Any:
        if handle is None or handle.span is None or self._tracer.tracer is None:
            return None
        try:
            span = self._start_span(
                "attempt_started",
                f"attempt {attempt}",
                SpanKind.INTERNAL,
                {Rh.RETRY_ATTEMPT: attempt},
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
            if span.is_recording():
                total = attempt_handle.event.event.usage
                if total is not None and total is not attempt_handle.usage:
                    span.set_attributes(_usage_attributes(total.since(attempt_handle.usage)))
            if error is not None and isinstance(error, Exception) and span.is_recording():
                span.set_status(Status(StatusCode.ERROR, error_message(error)))
                span.set_attribute(sc.ATTR_ERROR_TYPE, type(error).__name__)
                record_exception(span, error)
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
        if handle.root is not None:
            _inside.reset(handle.root)
        span = handle.span
        usage = event.usage
        if span is not None:
            try:
                if span.is_recording():
                    if usage is not None:
                        span.set_attributes(_usage_attributes(usage))
                    if outcome in (Outcome.FAILED, Outcome.REJECTED) and error is not None:
                        span.set_attributes(
                            {Rh.OUTCOME: outcome, sc.ATTR_ERROR_TYPE: type(error).__name__}
                        )
                        span.set_status(Status(StatusCode.ERROR, error_message(error)))
                        if error is not handle.recorded:
                            record_exception(span, error)
                    elif outcome == Outcome.REPLAYED:
                        span.set_attributes({Rh.OUTCOME: outcome, Rh.REPLAYED: True})
                    elif outcome == Outcome.CACHED:
                        span.set_attributes({Rh.OUTCOME: outcome, Rh.CACHED: True})
                    else:
                        span.set_attribute(Rh.OUTCOME, outcome)
                span.end()
            except Exception:
                self._fault("event_finished.span")
            finally:
                if handle.token is not None:
                    otel_context.detach(handle.token)
        if (usage is not None or handle.op == Op.CHAT) and (
            outcome == Outcome.COMPLETED or outcome == Outcome.FAILED
        ):
            try:
                _record_model_call(self.metrics, self.genai, handle, event, usage, error, duration)
            except Exception:
                self._fault("event_finished.model_call")
        m = self.metrics
        if m is None:
            return
        try:
            trace_id, exemplar = self._exemplar_of(span)
            series = m.event_series(handle.op, handle.name, outcome)
            series.record(duration, trace_id, exemplar)
            error_type = None
            if error is not None and outcome in _FAILURES:
                error_type = type(error).__name__
                m.child(m.errors, handle.op, handle.name, error_type).inc()
            item = handle.item
            assert self._outcomes is not None  # there are metrics
            self._outcomes.invocation(
                series,
                handle.op,
                handle.name,
                outcome,
                error_type,
                handle.root is not None,
                item.pending if item is not None else None,
            )
        except Exception:
            self._fault("event_finished.metrics")

    # ------------------------------------------------------------------ groups

    def group_started(self, group: GroupInfo, error_strategy: str) -> Any:
        label = group.name or "unnamed"
        handle = _GroupHandle(label, group.group_id)
        self._groups[id(group)] = handle
        if self._loop_unseen:
            self._see_loop()
        try:
            if self.metrics is not None:
                m = self.metrics
                handle.live = m.track_group(label, group.max_workers)
                handle.wait_child = m.child(m.semaphore_wait, label)
        except Exception:
            self._fault("group_started.metrics")
        if self._tracer.get() is None:
            return handle
        try:
            span = self._start_span(
                "group_started",
                f"parallel {label}",
                SpanKind.INTERNAL,
                {
                    Rh.GROUP_NAME: label,
                    Rh.GROUP_ID: group.group_id,
                    Rh.MAX_WORKERS: group.max_workers,
                    Rh.SIZE: group.total,
                    Rh.ERROR_STRATEGY: error_strategy,
                    Rh.TIMEOUT: group.timeout if group.timeout is not None else -1.0,
                },
            )
            handle.span = span
            if span.get_span_context().is_valid:
                handle.ctx = trace.set_span_in_context(span)
        except Exception:
            self._fault("group_started")
        return handle

    def item_started(
        self, handle: Any, group: GroupInfo, index: int, wait: float, *, attempt: int = 1
    ) -> Any:
        item = _ItemHandle(handle, index, wait, attempt)
        try:
            if handle is not None:
                wait_child = handle.wait_child
                if wait_child is not None:
                    wait_child.observe(wait)
                if handle.ctx is not None:
                    item.token = otel_context.attach(handle.ctx)
            item.info_token = _current_item.set(item)
        except Exception:
            self._fault("item_started")
        return item

    def item_finished(
        self,
        item: Any,
        group: GroupInfo,
        outcome: str,
        error: BaseException | None,
        *,
        final: bool = True,
    ) -> None:
        if item is None:
            return
        try:
            group_handle = item.group
            if isinstance(error, CircuitOpenError):
                _note_rejection(item, error)  # every rejection, also one the group retries
            if final:
                failed = error is not None and outcome in _FAILURES
                error_type = type(error).__name__ if failed else None
                if group_handle is not None:
                    group_handle.first_error = group_handle.first_error or error_type
                if self._outcomes is not None:
                    label = group_handle.label if group_handle is not None else "unnamed"
                    self._outcomes.item(item.pending, label, outcome, error_type)
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
        *,
        index: int | None = None,
    ) -> None:
        try:
            if self.metrics is not None:
                m = self.metrics
                op = _OPERATION_OF.get(operation or "", Op.PARALLEL_ITEM)
                m.child(m.retries, op, name).inc()
            handle = self._groups.get(id(group))
            if handle is not None and index is not None:
                handle.backoffs[index] = delay
            span = handle.span if handle is not None else None
            if span is not None and span.is_recording():
                span.add_event(
                    Rh.EVENT_RETRY,
                    {
                        Rh.ITEM: name,
                        Rh.RETRY_ATTEMPT: attempt,
                        Rh.RETRY_DELAY: delay,
                        sc.ATTR_ERROR_TYPE: type(error).__name__,
                        sc.ATTR_EXCEPTION_MESSAGE: error_message(error),
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
        *,
        error: BaseException | None = None,
    ) -> None:
        self._groups.pop(id(group), None)
        label = handle.label if handle is not None else (group.name or "unnamed")
        span = handle.span if handle is not None else None
        if handle is not None:
            # The real time the group took, as its span measures it (not the state's
            # clock, which may be simulated): the exemplar and its trace agree.
            duration = perf_counter() - handle.started
        try:
            if span is not None:
                if span.is_recording():
                    first = handle.first_error if handle is not None else None
                    _group_span_result(span, group, status, cancelled, timed_out, error, first)
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

    # ----------------------------------------------------------------- journal

    def journal_written(self, journal: Any, seconds: float) -> None:
        m = self.metrics
        if m is None:
            return
        try:
            m.child(m.journal_write, type(journal).__name__).observe(seconds)
        except Exception:
            self._fault("journal_written")

    # ---------------------------------------------------------------- breakers

    def watch_breaker(self, breaker: Any) -> None:
        self._breaker_watch.watch(breaker)


def _record_model_call(
    m: RhAgentsMetrics | None,
    genai: GenAIMetrics | None,
    handle: _EventHandle,
    event: ExecutionEvent[Any],
    usage: TokenUsage | None,
    error: BaseException | None,
    duration: float,
) -> None:
    """Tokens and duration of an invocation that called a model (a chat invocation
    that ran its handler, or any that reported usage)."""
    request_model, provider = _model_of(event.actor)
    response_model = usage.response_model if usage is not None else None
    if m is not None:
        model = response_model or request_model or "unknown"
        m.child(m.model_duration, handle.name, model).observe(duration)
        if usage is not None and usage.input_tokens:
            m.child(m.tokens, handle.name, model, TokenType.INPUT).inc(usage.input_tokens)
        if usage is not None and usage.output_tokens:
            m.child(m.tokens, handle.name, model, TokenType.OUTPUT).inc(usage.output_tokens)
    if genai is None:
        return
    attrs: dict[str, Any] = {sc.ATTR_OPERATION_NAME: handle.op}
    if provider is not None:
        attrs[sc.ATTR_PROVIDER_NAME] = provider
    if request_model is not None:
        attrs[sc.ATTR_REQUEST_MODEL] = request_model
    if response_model is not None:
        attrs[sc.ATTR_RESPONSE_MODEL] = response_model
    if usage is not None:
        genai.token_usage.record(usage.input_tokens, {**attrs, sc.ATTR_TOKEN_TYPE: TokenType.INPUT})
        genai.token_usage.record(
            usage.output_tokens, {**attrs, sc.ATTR_TOKEN_TYPE: TokenType.OUTPUT}
        )
    if error is not None:
        attrs[sc.ATTR_ERROR_TYPE] = type(error).__name__
    genai.duration.record(duration, attrs)


def _group_span_result(
    span: Any,
    group: GroupInfo,
    status: str,
    cancelled: int,
    timed_out: bool,
    error: BaseException | None,
    first_error: str | None,
) -> None:
    """How a group ended, on its span. A failed or timed-out group has ``error.type``:
    what it raised (the type of its first failed item when that is what it raised,
    ``ParallelTimeoutError`` on timeout), or ``_partial_failure`` when it returned its
    results with failed items."""
    span.set_attributes(
        {
            Rh.SIZE: group.total,
            Rh.COMPLETED: group.completed,
            Rh.FAILED: group.failed,
            Rh.CANCELLED: cancelled,
            Rh.STATUS: status,
            Rh.OUTCOME: status,
        }
    )
    if timed_out:
        raised = type(error).__name__ if error is not None else ParallelTimeoutError.__name__
        span.set_attributes({Rh.TIMED_OUT: True, sc.ATTR_ERROR_TYPE: raised})
        span.add_event(Rh.EVENT_TIMEOUT, {Rh.TIMEOUT: group.timeout or -1.0})
        span.set_status(Status(StatusCode.ERROR, f"timed out after {group.timeout}s"))
    elif status == "failed":
        if error is None:
            error_type = sc.ERROR_TYPE_PARTIAL_FAILURE
        else:
            error_type = first_error or type(error).__name__
        span.set_attribute(sc.ATTR_ERROR_TYPE, error_type)
        span.set_status(Status(StatusCode.ERROR, f"{group.failed} items failed"))


def _event_attributes(
    event: ExecutionEvent[Any],
    op: str,
    name_attr: str,
    name: str,
    item: _ItemHandle | None,
    conversation_id: str | None,
) -> tuple[str, dict[str, Any]]:
    """The name and the start attributes of an event span."""
    event_type = event.event_type
    attrs: dict[str, Any] = {
        sc.ATTR_OPERATION_NAME: op,
        name_attr: name,
        Rh.ADDRESS: event.address,
    }
    span_name = f"{op} {name}"
    if event_type is EventType.LLM_CALL or event_type is EventType.AGENT_CALL:
        model, provider = _model_of(event.actor)
        if model is not None:
            attrs[sc.ATTR_REQUEST_MODEL] = model
            if event_type is EventType.LLM_CALL:
                span_name = f"{op} {model}"
        if provider is not None:
            attrs[sc.ATTR_PROVIDER_NAME] = provider
        if event_type is EventType.AGENT_CALL and conversation_id is not None:
            attrs[sc.ATTR_CONVERSATION_ID] = conversation_id
    if event.is_parallel:
        attrs[Rh.GROUP_ID] = event.group_id or ""
        index = event.parallel_index
        if index is not None:
            attrs[Rh.INDEX] = index
            if item is not None:
                attrs[Rh.WAIT] = item.wait
                attrs[Rh.ATTEMPT] = item.attempt
                if item.backoff is not None:
                    attrs[Rh.RETRY_DELAY] = item.backoff
    if event.is_replayed:
        attrs[Rh.REPLAYED] = True
    return span_name, attrs


def _note_rejection(item: _ItemHandle, error: CircuitOpenError) -> None:
    """A ``circuit_breaker.rejected`` event on the group span of a rejected attempt."""
    span = item.group.span if item.group is not None else None
    if span is not None and span.is_recording():
        span.add_event(
            Rh.EVENT_REJECTED,
            {Rh.BREAKER_NAME: error.breaker, Rh.INDEX: item.index, Rh.ATTEMPT: item.attempt},
        )


def _own_item(event: ExecutionEvent[Any]) -> _ItemHandle | None:
    """The group item ``event`` is the work of (run directly by the item), if any."""
    if not event.is_parallel:
        return None
    info = _current_item.get()
    if (
        info is not None
        and info.index == event.parallel_index
        and info.group is not None
        and info.group.group_id == event.group_id
    ):
        return info
    return None


def _usage_attributes(usage: TokenUsage) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        sc.ATTR_USAGE_INPUT_TOKENS: usage.input_tokens,
        sc.ATTR_USAGE_OUTPUT_TOKENS: usage.output_tokens,
    }
    if usage.response_model is not None:
        attrs[sc.ATTR_RESPONSE_MODEL] = usage.response_model
    if usage.finish_reasons:
        attrs[sc.ATTR_RESPONSE_FINISH_REASONS] = list(usage.finish_reasons)
    return attrs
