"""The narrow interface through which the core reports to telemetry.

The execution core never imports OpenTelemetry or prometheus_client; it calls an
:class:`Instrumentation` object at a handful of points. :data:`NOOP` does nothing and is
what a state uses when no telemetry is configured; ``rh_agents.telemetry`` provides the
real implementation, and registers (from the top-level package, so the core never
imports it) the factory of the default telemetry that states created without
``telemetry=`` use. ``*_started`` hooks return an opaque handle that the matching
``*_finished`` hook receives; a handle may make a span current for the code in between,
so both calls happen in the same task.

Work shipped to another process carries the trace context of the current span, so the
worker's span joins the same trace. The core does not know how that context is
captured: :func:`trace_carrier` calls what :func:`set_trace_propagation` registered
(the top-level package registers OpenTelemetry's W3C propagation, from
:mod:`rh_agents.telemetry.remote`); without it the carrier is empty.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rh_agents.core.events import ExecutionEvent

__all__ = [
    "NOOP",
    "GroupInfo",
    "Instrumentation",
    "NoopInstrumentation",
    "Outcome",
    "ambient_telemetry",
    "resolve_telemetry",
    "set_default_telemetry_factory",
    "set_trace_propagation",
    "trace_carrier",
]


class Outcome:
    """Values of the ``outcome`` label / attribute of a finished invocation."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REPLAYED = "replayed"
    CACHED = "cached"
    REJECTED = "rejected"


class GroupInfo(Protocol):
    """What instrumentation reads from a parallel group (ParallelEventGroup satisfies it)."""

    group_id: str
    name: str | None
    max_workers: int
    total: int
    completed: int
    failed: int
    timeout: float | None


class Instrumentation(Protocol):
    """Callbacks from the core; implementations must never raise."""

    @property
    def enabled(self) -> bool:
        """Whether the hooks record anything now; the core skips the per-event hooks
        when False (it may become True later, e.g. once a global provider is set)."""
        ...

    def event_started(self, event: ExecutionEvent[Any], wait: float | None) -> Any:
        """An invocation starts (after any wait for a worker slot); returns a handle."""
        ...

    def event_retrying(
        self,
        handle: Any,
        event: ExecutionEvent[Any],
        attempt: int,
        delay: float,
        error: BaseException,
    ) -> None:
        """An attempt failed and will be retried after ``delay`` seconds."""
        ...

    def event_finished(
        self,
        handle: Any,
        event: ExecutionEvent[Any],
        outcome: str,
        error: BaseException | None,
        duration: float,
    ) -> None:
        """The invocation ended with ``outcome`` (see :class:`Outcome`)."""
        ...

    def group_started(self, group: GroupInfo, error_strategy: str) -> Any:
        """A parallel group opens; returns a handle that is current for its items."""
        ...

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
        """A parallel group ended with ``status``; ``error`` is what it raises to its
        caller (None when it returns its results, also with failed items)."""
        ...

    def item_started(
        self, handle: Any, group: GroupInfo, index: int, wait: float, *, attempt: int = 1
    ) -> Any:
        """Attempt ``attempt`` (1-based) of an item of a group got a worker slot after
        ``wait`` seconds; returns a handle."""
        ...

    def attempt_started(self, handle: Any, attempt: int) -> Any:
        """Attempt ``attempt`` (1-based) of an actor whose policy retries starts."""
        ...

    def attempt_finished(self, attempt_handle: Any, error: BaseException | None) -> None:
        """That attempt ended (``error`` None on success)."""
        ...

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
        """Group item ``index`` failed and will be retried after ``delay`` seconds."""
        ...

    def watch_breaker(self, breaker: Any) -> None:
        """A circuit breaker is used by a group or an actor's policy: record its trips,
        state and rejections (called again for a breaker already watched)."""
        ...

    def item_finished(
        self,
        item: Any,
        group: GroupInfo,
        outcome: str,
        error: BaseException | None,
        *,
        final: bool = True,
    ) -> None:
        """An attempt of an item ended; ``final`` is False when the group retries it (so
        its outcome is not what the group's caller gets)."""
        ...

    def queue_changed(self, group: GroupInfo, in_flight: int, queued: int) -> None:
        """The number of running and waiting items of a group changed."""
        ...

    def journal_written(self, journal: Any, seconds: float) -> None:
        """An entry was appended to the state's event journal in ``seconds``."""
        ...


class NoopInstrumentation:
    """Instrumentation that does nothing (the default)."""

    enabled = False

    def event_started(self, event: ExecutionEvent[Any], wait: float | None) -> Any:
        return None

    def event_retrying(
        self,
        handle: Any,
        event: ExecutionEvent[Any],
        attempt: int,
        delay: float,
        error: BaseException,
    ) -> None:
        return None

    def event_finished(
        self,
        handle: Any,
        event: ExecutionEvent[Any],
        outcome: str,
        error: BaseException | None,
        duration: float,
    ) -> None:
        return None

    def group_started(self, group: GroupInfo, error_strategy: str) -> Any:
        return None

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
        return None

    def item_started(
        self, handle: Any, group: GroupInfo, index: int, wait: float, *, attempt: int = 1
    ) -> Any:
        return None

    def attempt_started(self, handle: Any, attempt: int) -> Any:
        return None

    def attempt_finished(self, attempt_handle: Any, error: BaseException | None) -> None:
        return None

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
        return None

    def watch_breaker(self, breaker: Any) -> None:
        return None

    def item_finished(
        self,
        item: Any,
        group: GroupInfo,
        outcome: str,
        error: BaseException | None,
        *,
        final: bool = True,
    ) -> None:
        return None

    def queue_changed(self, group: GroupInfo, in_flight: int, queued: int) -> None:
        return None

    def journal_written(self, journal: Any, seconds: float) -> None:
        return None


NOOP: Instrumentation = NoopInstrumentation()

ambient_telemetry: ContextVar[Any] = ContextVar("rh_agents_ambient_telemetry", default=None)
"""Telemetry used by ExecutionStates created without one (set by test helpers)."""


_default_factory: Callable[[], Any] | None = None


def set_default_telemetry_factory(factory: Callable[[], Any] | None) -> None:
    """Set what ``ExecutionState()`` uses when given no telemetry (None: nothing).

    ``rh_agents/__init__.py`` registers the factory of ``rh_agents.telemetry``'s
    default (the global OpenTelemetry providers and prometheus_client's registry); it
    is called on first use, so importing rh_agents imports no telemetry code.
    """
    global _default_factory
    _default_factory = factory


def resolve_telemetry(telemetry: Any) -> Any:
    """The telemetry a state uses: the given one, False for none, else the ambient
    telemetry of a test capture, else the default; None when there is none."""
    if telemetry is None:
        telemetry = ambient_telemetry.get()
        if telemetry is None and _default_factory is not None:
            telemetry = _default_factory()
    return None if telemetry is False else telemetry


def _no_trace_context() -> dict[str, str]:
    return {}


_inject_trace_context: Callable[[], dict[str, str]] = _no_trace_context


def set_trace_propagation(inject: Callable[[], dict[str, str]] | None) -> None:
    """Set how :func:`trace_carrier` captures the trace context of the current span.

    ``inject`` returns the carrier (e.g. ``{"traceparent": ...}``) for the span that is
    current where it is called; None goes back to an empty carrier.
    """
    global _inject_trace_context
    _inject_trace_context = inject if inject is not None else _no_trace_context


def trace_carrier() -> dict[str, str]:
    """The trace context of the current span, to ship with work run in another process.

    Example:
        >>> carrier = trace_carrier()  # {"traceparent": "00-..."} inside a span
    """
    return _inject_trace_context()
