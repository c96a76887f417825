"""Circuit breakers: stop calling a dependency that keeps failing, then probe it.

A :class:`CircuitBreaker` sits in front of one external dependency (an LLM provider, a
search API, ...) and moves through three states::

    CLOSED ──(failure_threshold consecutive failures)──> OPEN
    OPEN ──(recovery_timeout elapsed, checked lazily)──> HALF_OPEN
    HALF_OPEN ──(probe succeeds)──> CLOSED
    HALF_OPEN ──(probe fails)──> OPEN   (a new trip; the cooldown restarts)

While OPEN every call is rejected at once with
:class:`~rh_agents.core.errors.CircuitOpenError`; in HALF_OPEN exactly one call (the
probe) is let through at a time and everybody else is rejected until it reports.

Admission and recording are synchronous, so each is atomic on the event loop: no two
coroutines can both become the half-open probe. The breaker is meant for one event
loop; it is not thread-safe.

Breakers are shared by name through a :class:`CircuitBreakerRegistry` that the caller
owns; this module keeps no global state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import Enum
from types import TracebackType

from rh_agents.core._validate import is_finite_at_least, is_int_at_least
from rh_agents.core.clock import SYSTEM_CLOCK, Clock
from rh_agents.core.errors import CircuitOpenError, InvalidArgumentError, LifecycleError

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerRegistry",
    "CircuitBreakerStatistics",
    "CircuitPermit",
    "CircuitState",
    "RejectListener",
    "StateListener",
]

_logger = logging.getLogger("rh_agents.circuit_breaker")


class CircuitState(str, Enum):
    """The state of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge_value(self) -> int:
        """The state as a number for a metrics gauge: closed 0, half-open 1, open 2."""
        return _GAUGE_VALUES[self]


_DEFAULT_THRESHOLD = 5
_DEFAULT_COOLDOWN = 60.0
"""The settings of a breaker the registry creates when the caller gives none."""

_GAUGE_VALUES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}

StateListener = Callable[["CircuitBreaker", CircuitState, CircuitState], None]
"""Called as ``fn(breaker, old_state, new_state)`` on every state transition."""

RejectListener = Callable[["CircuitBreaker"], None]
"""Called as ``fn(breaker)`` every time a call is rejected."""


@dataclass(frozen=True)
class CircuitBreakerStatistics:
    """A point-in-time copy of a breaker's counters.

    Attributes:
        name: the breaker's name.
        state: its state when the copy was taken.
        failure_count: consecutive failures counted since the last success or close.
        trip_count: transitions into OPEN since the breaker was created.
        rejected_count: calls rejected since the breaker was created.
    """

    name: str
    state: CircuitState
    failure_count: int
    trip_count: int
    rejected_count: int


class CircuitPermit:
    """Proof that :meth:`CircuitBreaker.admit` let one call through.

    Hand it back exactly once, to ``record_success``, ``record_failure`` or ``release``
    of the breaker that issued it.

    Attributes:
        breaker: the name of the issuing breaker.
        is_probe: whether this call is the half-open probe whose outcome decides
            whether the circuit closes again.
    """

    __slots__ = ("_epoch", "_owner", "_settled", "breaker", "is_probe")

    def __init__(self, owner: CircuitBreaker, epoch: int, is_probe: bool) -> None:
        self._owner = owner
        self._epoch = epoch
        self._settled = False
        self.breaker: str = owner.name
        self.is_probe: bool = is_probe

    @property
    def settled(self) -> bool:
        """Whether the outcome of this call has been recorded or released."""
        return self._settled

    def __repr__(self) -> str:
        kind = "probe" if self.is_probe else "call"
        status = "settled" if self._settled else "open"
        return f"<CircuitPermit {self.breaker!r} {kind} {status}>"


class CircuitBreaker:
    """Rejects calls to a dependency after repeated failures, and probes for recovery.

    A success while CLOSED resets the consecutive-failure count. An outcome reported
    for a permit issued before the latest state change (for example a slow call that
    was admitted while CLOSED and fails after the circuit already opened) is stale: it
    is accepted but changes nothing, so it can neither extend a cooldown nor close a
    circuit that only the probe may close.

    Args:
        name: identifies the dependency in errors, logs and metrics; not empty.
        failure_threshold: consecutive failures that open the circuit; an int >= 1.
        recovery_timeout: seconds to stay OPEN before admitting a probe; finite, >= 0.
        clock: source of time; inject a fake clock in tests.

    Raises:
        InvalidArgumentError: an argument is out of range.

    Example::

        breaker = CircuitBreaker("openai", failure_threshold=3, recovery_timeout=30)

        async with breaker.guard():          # raises CircuitOpenError when open
            reply = await client.complete(prompt)

        # or, when the caller decides what counts as a failure:
        permit = breaker.admit()
        try:
            reply = await client.complete(prompt)
        except RateLimited:
            breaker.record_failure(permit)
            raise
        except BaseException:
            breaker.release(permit)          # cancelled, or not the dependency's fault
            raise
        else:
            breaker.record_success(permit)
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        recovery_timeout: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        _check_settings(name, failure_threshold, recovery_timeout)
        self._name = name
        self._failure_threshold = failure_threshold
        self._recovery_timeout = float(recovery_timeout)
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._epoch = 0
        self._opened_at = 0.0
        self._failure_count = 0
        self._trip_count = 0
        self._rejected_count = 0
        self._probe: CircuitPermit | None = None
        self._listeners: list[StateListener] = []
        self._reject_listeners: list[RejectListener] = []

    @property
    def name(self) -> str:
        """The breaker's name."""
        return self._name

    @property
    def failure_threshold(self) -> int:
        """Consecutive failures that open the circuit."""
        return self._failure_threshold

    @property
    def recovery_timeout(self) -> float:
        """Seconds the circuit stays OPEN before a probe is admitted."""
        return self._recovery_timeout

    @property
    def state(self) -> CircuitState:
        """The current state; an OPEN circuit whose cooldown has passed reads HALF_OPEN."""
        self._refresh()
        return self._state

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted since the last success or close."""
        return self._failure_count

    @property
    def trip_count(self) -> int:
        """How many times the circuit has opened."""
        return self._trip_count

    @property
    def rejected_count(self) -> int:
        """How many calls have been rejected."""
        return self._rejected_count

    def statistics(self) -> CircuitBreakerStatistics:
        """A frozen snapshot of the state and counters."""
        return CircuitBreakerStatistics(
            name=self._name,
            state=self.state,
            failure_count=self._failure_count,
            trip_count=self._trip_count,
            rejected_count=self._rejected_count,
        )

    def add_listener(self, fn: StateListener) -> None:
        """Call ``fn(breaker, old_state, new_state)`` synchronously on every transition.

        A listener that raises is logged and ignored, so telemetry cannot break calls.
        """
        self._listeners.append(fn)

    def add_reject_listener(self, fn: RejectListener) -> None:
        """Call ``fn(breaker)`` synchronously every time a call is rejected.

        A listener that raises is logged and ignored.
        """
        self._reject_listeners.append(fn)

    def admit(self) -> CircuitPermit:
        """Let one call through, or reject it.

        Returns:
            A permit to hand back to exactly one of :meth:`record_success`,
            :meth:`record_failure` or :meth:`release`. Until it is handed back, a
            half-open probe permit keeps every other caller out.

        Raises:
            CircuitOpenError: the circuit is OPEN (``retry_after`` is the number of
                seconds until a probe will be admitted) or HALF_OPEN with its probe
                still running (``retry_after`` is None).
        """
        self._refresh()
        if self._state is CircuitState.CLOSED:
            return CircuitPermit(self, self._epoch, is_probe=False)
        if self._state is CircuitState.HALF_OPEN and self._probe is None:
            self._probe = CircuitPermit(self, self._epoch, is_probe=True)
            return self._probe
        retry_after: float | None = None
        if self._state is CircuitState.OPEN:
            elapsed = self._clock.monotonic() - self._opened_at
            retry_after = max(0.0, self._recovery_timeout - elapsed)
        self._rejected_count += 1
        for listener in list(self._reject_listeners):
            try:
                listener(self)
            except Exception:
                _logger.exception(
                    "A reject listener of circuit breaker %r raised; it was ignored.",
                    self._name,
                )
        raise CircuitOpenError(self._name, retry_after=retry_after)

    def record_success(self, permit: CircuitPermit) -> None:
        """Report that the admitted call succeeded.

        Closes a half-open circuit when ``permit`` is the probe; resets the failure
        count when the circuit is closed.

        Raises:
            LifecycleError: the permit was already handed back or is from another breaker.
        """
        self._settle(permit, "record_success")
        self._refresh()
        if permit._epoch != self._epoch:
            return
        if permit.is_probe:
            self._probe = None
            self._failure_count = 0
            self._transition(CircuitState.CLOSED)
        else:
            self._failure_count = 0

    def record_failure(self, permit: CircuitPermit) -> None:
        """Report that the admitted call failed in a way that counts against the dependency.

        Re-opens a half-open circuit when ``permit`` is the probe; opens a closed
        circuit when this is the ``failure_threshold``-th consecutive failure.

        Raises:
            LifecycleError: the permit was already handed back or is from another breaker.
        """
        self._settle(permit, "record_failure")
        self._refresh()
        if permit._epoch != self._epoch:
            return
        self._failure_count += 1
        if permit.is_probe:
            self._probe = None
            self._trip()
        elif self._failure_count >= self._failure_threshold:
            self._trip()

    def release(self, permit: CircuitPermit) -> None:
        """Hand a permit back without an outcome (the call was cancelled or did not count).

        Frees the half-open probe slot so the next caller can probe; changes no state
        or counter.

        Raises:
            LifecycleError: the permit was already handed back or is from another breaker.
        """
        self._settle(permit, "release")
        if self._probe is permit:
            self._probe = None

    def guard(self) -> AbstractAsyncContextManager[CircuitPermit]:
        """An async context manager that admits one call and records its outcome.

        On entry it calls :meth:`admit` (so it may raise
        :class:`~rh_agents.core.errors.CircuitOpenError`); on exit it records a
        success, a failure for any ``Exception``, or releases the permit for
        ``asyncio.CancelledError`` and any other exception that is not an
        ``Exception``. Exceptions are never swallowed.

        Example::

            async with breaker.guard():
                await call_dependency()
        """
        return _Guard(self)

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker {self._name!r} state={self.state.value} "
            f"failures={self._failure_count}/{self._failure_threshold}>"
        )

    def _settle(self, permit: CircuitPermit, operation: str) -> None:
        """Mark ``permit`` as handed back, or raise if it cannot be."""
        if permit._owner is not self:
            raise LifecycleError(
                f"{operation}() got a permit issued by circuit breaker {permit.breaker!r}, "
                f"not by {self._name!r}. Hand each permit back to the breaker that "
                f"admitted it."
            )
        if permit._settled:
            raise LifecycleError(
                f"{operation}() was called for a permit of circuit breaker "
                f"{self._name!r} that was already handed back. Call exactly one of "
                f"record_success, record_failure or release per admitted call."
            )
        permit._settled = True

    def _refresh(self) -> None:
        """Move OPEN to HALF_OPEN once the recovery timeout has passed."""
        if (
            self._state is CircuitState.OPEN
            and self._clock.monotonic() - self._opened_at >= self._recovery_timeout
        ):
            self._transition(CircuitState.HALF_OPEN)

    def _trip(self) -> None:
        self._trip_count += 1
        self._opened_at = self._clock.monotonic()
        self._transition(CircuitState.OPEN)

    def _transition(self, new_state: CircuitState) -> None:
        old_state = self._state
        self._state = new_state
        self._epoch += 1
        for listener in list(self._listeners):
            try:
                listener(self, old_state, new_state)
            except Exception:
                _logger.exception(
                    "A state listener of circuit breaker %r raised on %s -> %s; it was ignored.",
                    self._name,
                    old_state.value,
                    new_state.value,
                )


class _Guard(AbstractAsyncContextManager[CircuitPermit]):
    """The async context manager returned by :meth:`CircuitBreaker.guard`."""

    __slots__ = ("_breaker", "_permit")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._permit: CircuitPermit | None = None

    async def __aenter__(self) -> CircuitPermit:
        if self._permit is not None:
            raise LifecycleError(
                f"A guard() of circuit breaker {self._breaker.name!r} was entered twice. "
                f"Call breaker.guard() once per call."
            )
        self._permit = self._breaker.admit()
        return self._permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit = self._permit
        if permit is None or permit.settled:
            return
        if exc is None:
            self._breaker.record_success(permit)
        elif isinstance(exc, Exception):
            self._breaker.record_failure(permit)
        else:
            self._breaker.release(permit)


class CircuitBreakerRegistry:
    """Named circuit breakers, one per external dependency, owned by the caller.

    Every group or actor that talks to the same dependency asks the registry for the
    breaker by name and so shares its failure count and state.

    Iterating yields the breakers in creation order; ``name in registry`` tests by name
    (a breaker instance is also accepted).

    Example::

        registry = CircuitBreakerRegistry()
        registry.on_create(lambda b: b.add_listener(record_transition))
        breaker = registry.get("openai", failure_threshold=3)
        assert registry.get("openai") is breaker
    """

    def __init__(self) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}
        self._create_hooks: list[Callable[[CircuitBreaker], None]] = []

    def get(
        self,
        name: str,
        failure_threshold: int | None = None,
        recovery_timeout: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> CircuitBreaker:
        """Return the breaker called ``name``, creating it on first use.

        A dependency has one health state however many callers use it, so a breaker
        shared by name has one set of settings: a setting left out (None) takes the
        existing breaker's (or, for a new one, the default: 5 failures, 60 s), and a
        setting that differs from the existing breaker's is refused. The clock only
        applies when the breaker is created.

        Raises:
            InvalidArgumentError: an argument is out of range, or the breaker exists
                with another ``failure_threshold`` or ``recovery_timeout`` (the message
                names both settings).

        Example::

            registry.get("openai", failure_threshold=3)
            registry.get("openai")                        # the same breaker
            registry.get("openai", failure_threshold=5)   # InvalidArgumentError
        """
        threshold = _DEFAULT_THRESHOLD if failure_threshold is None else failure_threshold
        cooldown = _DEFAULT_COOLDOWN if recovery_timeout is None else recovery_timeout
        _check_settings(name, threshold, cooldown)
        breaker = self._breakers.get(name)
        if breaker is not None:
            _check_same_settings(breaker, failure_threshold, recovery_timeout)
            return breaker
        breaker = CircuitBreaker(name, threshold, cooldown, clock)
        self._breakers[name] = breaker
        for hook in list(self._create_hooks):
            try:
                hook(breaker)
            except Exception:
                _logger.exception(
                    "An on_create hook of the circuit breaker registry raised for %r; it "
                    "was ignored.",
                    name,
                )
        return breaker

    def on_create(self, fn: Callable[[CircuitBreaker], None]) -> None:
        """Call ``fn(breaker)`` for every breaker this registry creates from now on.

        Breakers that already exist are not passed to ``fn``; iterate the registry to
        reach them. A hook that raises is logged and ignored.
        """
        self._create_hooks.append(fn)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, CircuitBreaker):
            return self._breakers.get(item.name) is item
        return item in self._breakers

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)

    def __repr__(self) -> str:
        return f"<CircuitBreakerRegistry {sorted(self._breakers)}>"


def _check_same_settings(
    breaker: CircuitBreaker, failure_threshold: int | None, recovery_timeout: float | None
) -> None:
    """Refuse settings that differ from those of the existing shared ``breaker``."""
    threshold = breaker.failure_threshold if failure_threshold is None else failure_threshold
    cooldown = breaker.recovery_timeout if recovery_timeout is None else recovery_timeout
    if threshold == breaker.failure_threshold and cooldown == breaker.recovery_timeout:
        return
    raise InvalidArgumentError(
        f"Circuit breaker {breaker.name!r} already exists with failure_threshold="
        f"{breaker.failure_threshold}, recovery_timeout={breaker.recovery_timeout!r}; this "
        f"call asks for failure_threshold={threshold}, recovery_timeout={cooldown!r}. A "
        "breaker shared by name has one set of settings (its dependency has one health "
        "state): pass the same settings, or none to share the existing breaker, or use "
        "another name for a breaker of its own."
    )


def _check_settings(name: object, failure_threshold: object, recovery_timeout: object) -> None:
    """Raise InvalidArgumentError for a breaker setting that cannot work."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError(
            f"A circuit breaker needs a non-empty name, got {name!r}. Name it after the "
            f"dependency it protects, such as 'openai'."
        )
    if not is_int_at_least(failure_threshold, 1):
        raise InvalidArgumentError(
            f"failure_threshold of circuit breaker {name!r} must be an integer >= 1, got "
            f"{failure_threshold!r}."
        )
    if not is_finite_at_least(recovery_timeout, 0):
        raise InvalidArgumentError(
            f"recovery_timeout of circuit breaker {name!r} must be a finite number of "
            f"seconds >= 0, got {recovery_timeout!r}."
        )
