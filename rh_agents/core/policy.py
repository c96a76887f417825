"""Policy: the resilience guards of a call, one object for actors and parallel groups.

A :class:`Policy` combines up to four guards, each optional::

    retry    RetryConfig      try a failed attempt again, after a backoff (core.retry)
    breaker  CircuitBreaker   reject calls at once while a dependency keeps failing
    limiter  Limiter          cap how many attempts run at once (and how often)
    timeout  seconds          bound each attempt; a retry gets a fresh deadline

An actor takes one (``Tool(..., policy=...)``) and guards each call of its handler; a
parallel group takes one (``state.parallel(policy=...)``) and guards each attempt of each
item. Both go through the same guarded attempt (:mod:`rh_agents.core._guarded`): the
limiter's permit, then the breaker's admission, then the work under the timeout; after a
failure the retry guard decides (:meth:`RetryConfig.next_delay
<rh_agents.core.retry.RetryConfig.next_delay>`). The older keyword arguments are shortcuts
that build a policy: ``retry_config=`` on actors, and ``max_retries``, ``retry_delay``,
``retry_on``, ``non_retryable``, ``circuit_breaker*`` and ``limiter`` on groups.

A policy is immutable and may be shared by any number of actors and groups, like the
breaker and limiter it holds; :meth:`Policy.statistics` then counts for all of them.

Example::

    openai = Policy(
        retry=RetryConfig(max_attempts=3, initial_delay=0.5),
        breaker=CircuitBreaker("openai", failure_threshold=5, recovery_timeout=30),
        limiter=Limiter("openai", max_concurrency=8),
        timeout=20.0,
    )
    writer = LLM(name="writer", handler=write, policy=openai)
    async with state.parallel(policy=openai, max_workers=16) as p:
        ...
    openai.statistics().timeout.timed_out  # attempts cut off by the timeout
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rh_agents.core._validate import is_finite_at_least
from rh_agents.core.circuit_breaker import CircuitBreaker, CircuitBreakerStatistics
from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.limiter import Limiter, LimiterStatistics
from rh_agents.core.retry import RetryConfig

__all__ = ["Policy", "PolicyStatistics", "RetryStatistics", "TimeoutStatistics"]


@dataclass(frozen=True)
class RetryStatistics:
    """A point-in-time copy of a policy's retry counters.

    Attributes:
        max_attempts: the most attempts per call, the first included.
        attempts: attempts started under the policy (first attempts included).
        retries: failed attempts that were tried again.
        gave_up: failed attempts that were not tried again (not retryable, or the
            attempts or the time budget were used up).
    """

    max_attempts: int
    attempts: int
    retries: int
    gave_up: int


@dataclass(frozen=True)
class TimeoutStatistics:
    """A point-in-time copy of a policy's timeout counters.

    Attributes:
        timeout: the bound of each attempt, in seconds.
        timed_out: attempts cancelled because they reached it.
    """

    timeout: float
    timed_out: int


@dataclass(frozen=True)
class PolicyStatistics:
    """The statistics of every guard of a policy; None for a guard it does not have.

    Attributes:
        retry: the retry counters.
        breaker: the circuit breaker's (shared by everyone who uses that breaker).
        limiter: the limiter's (shared by everyone who uses that limiter).
        timeout: the timeout counters.
    """

    retry: RetryStatistics | None
    breaker: CircuitBreakerStatistics | None
    limiter: LimiterStatistics | None
    timeout: TimeoutStatistics | None


class _Counters:
    """What a policy counts as it is used; the policy's only mutable part."""

    __slots__ = ("attempts", "gave_up", "retries", "timed_out")

    def __init__(self) -> None:
        self.attempts = 0
        self.retries = 0
        self.gave_up = 0
        self.timed_out = 0


@dataclass(frozen=True, slots=True)
class Policy:
    """The guards of a call: retry, circuit breaker, limiter and a per-attempt timeout.

    Every guard is optional; a policy with none guards nothing (and costs nothing). The
    policy is immutable: derive a changed one with ``dataclasses.replace(policy,
    timeout=5.0)`` (it counts its statistics afresh).

    Args:
        retry: when and how often a failed attempt is tried again
            (:class:`~rh_agents.core.retry.RetryConfig`).
        breaker: a :class:`~rh_agents.core.circuit_breaker.CircuitBreaker` every attempt
            must pass; an open one rejects the attempt with
            :class:`~rh_agents.core.errors.CircuitOpenError` (a failure the retry guard
            may retry after the breaker's cooldown).
        limiter: a :class:`~rh_agents.core.limiter.Limiter` whose permit every attempt
            holds while it runs (not while it backs off).
        timeout: seconds each attempt may take, measured on the state's clock; an
            attempt that takes longer is cancelled and fails with
            :class:`~rh_agents.core.errors.AttemptTimeoutError`, which the retry guard
            retries like any failure, with a fresh deadline.

    Raises:
        InvalidArgumentError: a guard of the wrong type, or a timeout that is not a
            positive number of seconds.

    Example::

        policy = Policy(retry=RetryConfig(max_attempts=3), timeout=10.0)
        search = Tool(name="search", handler=search_web, policy=policy)
        stats = policy.statistics()
        stats.retry.retries, stats.timeout.timed_out
    """

    retry: RetryConfig | None = None
    breaker: CircuitBreaker | None = None
    limiter: Limiter | None = None
    timeout: float | None = None
    _counters: _Counters = field(default_factory=_Counters, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.retry is not None and not isinstance(self.retry, RetryConfig):
            raise InvalidArgumentError(
                f"Policy(retry=...) takes a RetryConfig such as RetryConfig(max_attempts=3), "
                f"or None, got {type(self.retry).__name__}."
            )
        if self.breaker is not None and not isinstance(self.breaker, CircuitBreaker):
            shared = (
                f" To share a breaker by name, get it once with "
                f"state.circuit_breakers.get({self.breaker!r}, ...) and pass the object."
                if isinstance(self.breaker, str)
                else ""
            )
            raise InvalidArgumentError(
                f"Policy(breaker=...) takes a CircuitBreaker or None, got "
                f"{type(self.breaker).__name__}.{shared}"
            )
        if self.limiter is not None and not isinstance(self.limiter, Limiter):
            raise InvalidArgumentError(
                f"Policy(limiter=...) takes a Limiter such as Limiter('openai', "
                f"max_concurrency=8), or None, got {type(self.limiter).__name__}. Share a "
                "limiter by passing the same object."
            )
        if self.timeout is not None:
            if not is_finite_at_least(self.timeout, 0, strict=True):
                raise InvalidArgumentError(
                    f"Policy(timeout=...) takes a positive number of seconds (the bound of "
                    f"each attempt), or None for no bound, got {self.timeout!r}."
                )
            object.__setattr__(self, "timeout", float(self.timeout))

    @property
    def is_empty(self) -> bool:
        """Whether the policy guards nothing (no retry, breaker, limiter or timeout)."""
        return (
            self.retry is None
            and self.breaker is None
            and self.limiter is None
            and self.timeout is None
        )

    @property
    def max_attempts(self) -> int:
        """The most attempts a call gets: 1 without an enabled retry guard."""
        retry = self.retry
        return retry.max_attempts if retry is not None and retry.enabled else 1

    def statistics(self) -> PolicyStatistics:
        """A frozen snapshot of every guard's counters.

        The retry and timeout counters count every actor and group that uses this
        policy; the breaker's and the limiter's are those objects' own
        (:meth:`CircuitBreaker.statistics
        <rh_agents.core.circuit_breaker.CircuitBreaker.statistics>`,
        :meth:`Limiter.statistics <rh_agents.core.limiter.Limiter.statistics>`).
        """
        counters = self._counters
        return PolicyStatistics(
            retry=None
            if self.retry is None
            else RetryStatistics(
                max_attempts=self.max_attempts,
                attempts=counters.attempts,
                retries=counters.retries,
                gave_up=counters.gave_up,
            ),
            breaker=None if self.breaker is None else self.breaker.statistics(),
            limiter=None if self.limiter is None else self.limiter.statistics(),
            timeout=None
            if self.timeout is None
            else TimeoutStatistics(timeout=self.timeout, timed_out=counters.timed_out),
        )
