"""Retry policy: which failures are worth another attempt, and how long to wait first.

This module holds the *policy* only; :mod:`rh_agents.core.policy` runs it, for actors
(``BaseActor(policy=...)`` or ``retry_config=``) and parallel groups alike. After each
failed attempt the caller asks one question, :meth:`RetryConfig.next_delay`: how long to
back off before the next attempt, or None to stop. It combines three parts:

1. :meth:`RetryConfig.should_retry` - is this exception transient?
2. :meth:`RetryConfig.calculate_delay` - how long should the caller back off? (the wait:
   a :class:`BackoffStrategy`, capped, jittered, at least an exception's ``retry_after``)
3. :meth:`RetryConfig.attempts_exhausted` - does a stop condition say stop? Stop
   conditions are small objects that compose like tenacity's:
   ``StopAfterAttempt(3) | StopAfterDelay(30)`` stops at whichever comes first.
   ``max_attempts`` and ``retry_timeout`` are the two built in; ``stop=`` adds more.

Keeping the policy free of loops and clocks makes it trivial to test and lets every
caller wait through its own injectable :class:`~rh_agents.core.clock.Clock`.

Example::

    config = RetryConfig(max_attempts=4, initial_delay=0.5)
    started = clock.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call_llm()
        except Exception as exc:
            delay = config.next_delay(attempt, exc, started, clock.monotonic())
            if delay is None:
                raise
            await clock.sleep(delay)
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from rh_agents.core._validate import (
    ExceptionClasses,
    exception_classes,
    is_finite_at_least,
    is_int_at_least,
)
from rh_agents.core.errors import InvalidArgumentError, UsageError

__all__ = [
    "BackoffStrategy",
    "RetryConfig",
    "RetryState",
    "StopAfterAttempt",
    "StopAfterDelay",
    "StopAny",
    "StopCondition",
]

_RNG = random.Random()
"""Jitter source used when the caller passes no ``rng`` of its own."""

_NEVER_RETRIED: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
    UsageError,
)
"""Exceptions that are never transient, whatever the configuration says.

Cancellation and interpreter shutdown must propagate at once, and a
:class:`~rh_agents.core.errors.UsageError` is a programming mistake that fails the same
way on every attempt.
"""


class BackoffStrategy(str, Enum):
    """How the wait between attempts grows with the attempt number.

    With ``initial_delay=d`` and ``backoff_multiplier=m``, the wait after failed attempt
    ``n`` (1-based) is: ``CONSTANT`` d; ``LINEAR`` d·n; ``EXPONENTIAL`` d·m^(n-1);
    ``FIBONACCI`` d·fib(n) with fib = 1, 1, 2, 3, 5, ...
    """

    CONSTANT = "constant"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"
    FIBONACCI = "fibonacci"


@dataclass(frozen=True, slots=True)
class RetryState:
    """What a :class:`StopCondition` sees after a failed attempt.

    Attributes:
        attempt: the 1-based number of the attempt that just failed.
        elapsed: seconds from the start of the first attempt to now (caller's clock).
        next_delay: the backoff the caller would wait before the next attempt.
    """

    attempt: int
    elapsed: float
    next_delay: float


class StopCondition:
    """Says when to stop retrying; conditions combine with ``|`` (stop when any says so).

    Subclass it and implement :meth:`__call__` for a condition of your own.

    Example::

        stop = StopAfterAttempt(5) | StopAfterDelay(30.0)
        stop(RetryState(attempt=2, elapsed=31.0, next_delay=1.0))  # True: out of time
    """

    __slots__ = ()

    def __call__(self, state: RetryState) -> bool:
        """Whether retrying must stop after the failed attempt ``state`` describes."""
        raise NotImplementedError

    def __or__(self, other: StopCondition) -> StopCondition:
        if not isinstance(other, StopCondition):
            return NotImplemented
        return StopAny(self, other)


class StopAny(StopCondition):
    """Stops when any of its conditions says so (what ``a | b`` builds)."""

    __slots__ = ("conditions",)

    def __init__(self, *conditions: StopCondition) -> None:
        flat: list[StopCondition] = []
        for condition in conditions:
            flat.extend(condition.conditions if isinstance(condition, StopAny) else (condition,))
        self.conditions: tuple[StopCondition, ...] = tuple(flat)

    def __call__(self, state: RetryState) -> bool:
        return any(condition(state) for condition in self.conditions)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StopAny) and other.conditions == self.conditions

    def __hash__(self) -> int:
        return hash(self.conditions)

    def __repr__(self) -> str:
        return " | ".join(repr(condition) for condition in self.conditions)


class StopAfterAttempt(StopCondition):
    """Stops once ``attempts`` attempts (the first included) have failed.

    Raises:
        InvalidArgumentError: ``attempts`` is not an integer >= 1.
    """

    __slots__ = ("attempts",)

    def __init__(self, attempts: int) -> None:
        if not is_int_at_least(attempts, 1):
            raise InvalidArgumentError(
                f"StopAfterAttempt takes an integer >= 1 (the first attempt counts), got "
                f"{attempts!r}."
            )
        self.attempts: int = attempts

    def __call__(self, state: RetryState) -> bool:
        return state.attempt >= self.attempts

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StopAfterAttempt) and other.attempts == self.attempts

    def __hash__(self) -> int:
        return hash((StopAfterAttempt, self.attempts))

    def __repr__(self) -> str:
        return f"StopAfterAttempt({self.attempts})"


class StopAfterDelay(StopCondition):
    """Stops when the next attempt would start ``seconds`` or more after the first began
    (the backoff about to be waited counts).

    Raises:
        InvalidArgumentError: ``seconds`` is not a finite number > 0.
    """

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        if not is_finite_at_least(seconds, 0, strict=True):
            raise InvalidArgumentError(
                f"StopAfterDelay takes a finite number of seconds > 0, got {seconds!r}."
            )
        self.seconds: float = float(seconds)

    def __call__(self, state: RetryState) -> bool:
        return state.elapsed + max(state.next_delay, 0.0) >= self.seconds

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StopAfterDelay) and other.seconds == self.seconds

    def __hash__(self) -> int:
        return hash((StopAfterDelay, self.seconds))

    def __repr__(self) -> str:
        return f"StopAfterDelay({self.seconds:g})"


class RetryConfig(BaseModel):
    """When and how to retry failed work.

    ``max_attempts`` counts every attempt including the first, so ``max_attempts=1``
    means "never retry". The configuration is immutable, so one instance can be shared
    by many actors and groups.

    The constructor raises :class:`~rh_agents.core.errors.InvalidArgumentError` for a
    value it cannot work with (negative, NaN or infinite delays, ``max_attempts < 1``,
    ``backoff_multiplier < 1``, ...). ``RetryConfig.model_validate`` reports the same
    problems as a pydantic ``ValidationError`` (also a ``ValueError``).

    Attributes:
        max_attempts: total attempts including the first; at least 1.
        backoff_strategy: how the delay grows, see :class:`BackoffStrategy`.
        initial_delay: seconds to wait after the first failure.
        max_delay: upper bound for the computed delay, in seconds. A ``retry_after``
            hint carried by the exception may exceed it.
        backoff_multiplier: growth factor for ``EXPONENTIAL``; at least 1.
        jitter: multiply each delay by a random factor in [0.5, 1.0], so that many
            callers failing together do not retry in lock-step.
        retry_on_exceptions: only exceptions of these types are retried (give a class,
            or a tuple, list or set of classes; stored as a tuple).
        exclude_exceptions: exceptions of these types are never retried, even when they
            also match ``retry_on_exceptions`` (a class, or a tuple, list or set).
        retry_on: an extra predicate; when set, an exception is retried only if it also
            returns True. An exception raised by the predicate propagates to the caller.
        retry_timeout: total time budget in seconds, measured from the start of the
            first attempt; no new attempt starts once it would be exceeded.
        stop: a further :class:`StopCondition` (e.g. one of your own); retrying stops
            when it, ``max_attempts`` or ``retry_timeout`` says so.
        enabled: False turns retries off without changing the other settings.

    Example::

        config = RetryConfig(
            max_attempts=5,
            backoff_strategy=BackoffStrategy.EXPONENTIAL,
            initial_delay=0.5,
            retry_on_exceptions=(TimeoutError, ConnectionError),
            retry_timeout=30.0,
        )
        config.should_retry(TimeoutError())  # True
        config.calculate_delay(3)            # between 1.0 and 2.0 seconds (jittered)
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(
        arbitrary_types_allowed=True, frozen=True, extra="forbid"
    )

    max_attempts: int = 3
    backoff_strategy: BackoffStrategy = BackoffStrategy.EXPONENTIAL
    initial_delay: float = 1.0
    max_delay: float = 60.0
    backoff_multiplier: float = 2.0
    jitter: bool = True
    retry_on_exceptions: tuple[type[BaseException], ...] = (Exception,)
    exclude_exceptions: tuple[type[BaseException], ...] = ()
    retry_on: Callable[[BaseException], bool] | None = None
    retry_timeout: float | None = None
    stop: StopCondition | None = None
    enabled: bool = True

    if not TYPE_CHECKING:
        # Hidden from type checkers so the pydantic mypy plugin still checks keyword
        # arguments against the fields; at run time it turns pydantic's error into the
        # library's own InvalidArgumentError.
        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise InvalidArgumentError(_describe_validation_error(exc)) from None

    @field_validator("max_attempts", mode="before")
    @classmethod
    def _check_max_attempts(cls, value: Any) -> Any:
        if not is_int_at_least(value, 1):
            raise ValueError(
                f"max_attempts must be an integer >= 1 (the first attempt counts), "
                f"got {value!r}. Use max_attempts=1 to disable retries."
            )
        return value

    @field_validator("initial_delay", "max_delay")
    @classmethod
    def _check_delay(cls, value: float, info: ValidationInfo) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"{info.field_name} must be a finite number of seconds >= 0, got {value!r}. "
                f"Pass 0 for no delay."
            )
        return value

    @field_validator("backoff_multiplier")
    @classmethod
    def _check_multiplier(cls, value: float) -> float:
        if not math.isfinite(value) or value < 1:
            raise ValueError(
                f"backoff_multiplier must be a finite number >= 1, got {value!r}; a "
                f"smaller factor would shrink the delay. Use BackoffStrategy.CONSTANT "
                f"for a fixed delay."
            )
        return value

    @field_validator("retry_timeout")
    @classmethod
    def _check_timeout(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise ValueError(
                f"retry_timeout must be a finite number of seconds > 0, or None for no "
                f"time budget, got {value!r}."
            )
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, StopCondition):
            raise ValueError(
                f"stop must be a StopCondition such as StopAfterDelay(30.0), got {value!r}. "
                f"For a number of attempts use max_attempts=."
            )
        return value

    @field_validator("retry_on_exceptions", "exclude_exceptions", mode="before")
    @classmethod
    def _check_exception_types(cls, value: Any, info: ValidationInfo) -> Any:
        return exception_classes(value, str(info.field_name))

    @field_validator("retry_on", mode="before")
    @classmethod
    def _check_predicate(cls, value: Any) -> Any:
        # An exception class is callable, so it would pass as a predicate that always
        # returns a truthy instance; that is never what the caller meant.
        if isinstance(value, type) and issubclass(value, BaseException):
            raise ValueError(
                f"retry_on is a predicate fn(exc) -> bool, but got the exception class "
                f"{value.__name__}. Pass exception classes as retry_on_exceptions instead."
            )
        return value

    @classmethod
    def for_group(
        cls,
        max_retries: int,
        retry_delay: float,
        retry_on: ExceptionClasses | Callable[[BaseException], bool] | None = None,
        non_retryable: ExceptionClasses = (),
    ) -> RetryConfig:
        """Build the configuration a parallel group uses for each of its items.

        Args:
            max_retries: retries after the first attempt (so ``max_attempts`` is
                ``max_retries + 1``); 0 disables retries.
            retry_delay: the first backoff delay in seconds; later delays grow
                exponentially (x2) with jitter. ``max_delay`` is at least 60 s and never
                below ``retry_delay``.
            retry_on: exception classes to retry (a class, or a tuple, list or set of
                classes), or a predicate ``fn(exc) -> bool``; None retries every
                ``Exception``.
            non_retryable: exception classes that are never retried (a class, or a
                tuple, list or set of classes).

        Returns:
            A new :class:`RetryConfig`.

        Raises:
            InvalidArgumentError: ``max_retries`` is not an integer >= 0,
                ``retry_delay`` is negative, NaN or infinite, or ``retry_on`` /
                ``non_retryable`` hold something that is not an exception class.

        Example::

            RetryConfig.for_group(2, 0.5, retry_on=(TimeoutError,))
        """
        if not is_int_at_least(max_retries, 0):
            raise InvalidArgumentError(
                f"max_retries must be an integer >= 0 (the number of retries after the "
                f"first attempt), got {max_retries!r}."
            )
        if not is_finite_at_least(retry_delay, 0):
            raise InvalidArgumentError(
                f"retry_delay must be a finite number of seconds >= 0, got {retry_delay!r}."
            )
        types: tuple[type[BaseException], ...] = (Exception,)
        predicate: Callable[[BaseException], bool] | None = None
        if isinstance(retry_on, type | tuple | list | set | frozenset) or (
            retry_on is not None and not callable(retry_on)
        ):
            types = exception_classes(retry_on, "retry_on")
        elif retry_on is not None:
            predicate = retry_on
        return cls(
            max_attempts=max_retries + 1,
            backoff_strategy=BackoffStrategy.EXPONENTIAL,
            initial_delay=float(retry_delay),
            max_delay=max(60.0, float(retry_delay)),
            jitter=True,
            retry_on_exceptions=types,
            exclude_exceptions=exception_classes(non_retryable, "non_retryable"),
            retry_on=predicate,
        )

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt under this policy.

        Never true when the policy is disabled, for cancellation and interpreter exit
        (``asyncio.CancelledError``, ``KeyboardInterrupt``, ``SystemExit``,
        ``GeneratorExit``), or for a :class:`~rh_agents.core.errors.UsageError` (a
        programming mistake fails the same way every time). Otherwise true when ``exc``
        is an instance of ``retry_on_exceptions``, not of ``exclude_exceptions``, and
        the ``retry_on`` predicate (if any) agrees.

        This does not look at the attempt count; see :meth:`attempts_exhausted`.
        """
        if not self.enabled or isinstance(exc, _NEVER_RETRIED):
            return False
        if self.exclude_exceptions and isinstance(exc, self.exclude_exceptions):
            return False
        if not isinstance(exc, self.retry_on_exceptions):
            return False
        if self.retry_on is not None:
            return bool(self.retry_on(exc))
        return True

    def calculate_delay(
        self,
        attempt: int,
        exc: BaseException | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to wait before the attempt after ``attempt``.

        The strategy's delay is capped at ``max_delay`` and then, with ``jitter``,
        multiplied by a factor drawn uniformly from [0.5, 1.0]. If ``exc`` carries a
        numeric ``retry_after`` attribute (seconds, e.g. parsed from an HTTP 429 or a
        :class:`~rh_agents.core.errors.CircuitOpenError`), the result is at least that
        hint, even above ``max_delay``: the server knows best.

        Args:
            attempt: the 1-based number of the attempt that just failed.
            exc: the exception that attempt raised, for its ``retry_after`` hint.
            rng: the jitter source; pass a seeded ``random.Random`` for reproducible
                delays. Defaults to a module-level generator.

        Raises:
            InvalidArgumentError: ``attempt`` is not an integer >= 1.
        """
        if not is_int_at_least(attempt, 1):
            raise InvalidArgumentError(
                f"attempt must be the 1-based number of the attempt that failed, got {attempt!r}."
            )
        delay = min(self._raw_delay(attempt), self.max_delay)
        if self.jitter:
            delay *= (rng if rng is not None else _RNG).uniform(0.5, 1.0)
        hint = _retry_after(exc)
        if hint is not None:
            delay = max(delay, hint)
        return delay

    def attempts_exhausted(
        self,
        attempt: int,
        started_at: float,
        now: float,
        next_delay: float = 0.0,
    ) -> bool:
        """Whether the caller must stop retrying after ``attempt`` failed.

        True when the policy is disabled or :attr:`stop_condition` says stop: ``attempt``
        has reached ``max_attempts``, waiting ``next_delay`` from ``now`` would reach or
        exceed the ``retry_timeout`` budget counted from ``started_at``, or the extra
        ``stop`` condition holds. All times are read from the caller's clock.

        Args:
            attempt: the 1-based number of the attempt that just failed.
            started_at: clock time when the first attempt started.
            now: the current clock time.
            next_delay: the backoff the caller is about to wait, usually the result of
                :meth:`calculate_delay`.
        """
        if not self.enabled or attempt >= self.max_attempts:
            return True
        if self.retry_timeout is None and self.stop is None:
            return False
        return self.stop_condition(RetryState(attempt, now - started_at, next_delay))

    @property
    def stop_condition(self) -> StopCondition:
        """The stop conditions of this configuration, combined:
        ``StopAfterAttempt(max_attempts)``, then ``StopAfterDelay(retry_timeout)`` and
        ``stop`` when they are set."""
        condition: StopCondition = StopAfterAttempt(self.max_attempts)
        if self.retry_timeout is not None:
            condition = condition | StopAfterDelay(self.retry_timeout)
        if self.stop is not None:
            condition = condition | self.stop
        return condition

    def next_delay(
        self,
        attempt: int,
        error: BaseException,
        started_at: float,
        now: float,
        rng: random.Random | None = None,
    ) -> float | None:
        """The backoff before the attempt after ``attempt``, or None to stop retrying.

        The one retry decision of rh_agents (actors and parallel groups both ask it):
        None when ``error`` is not retried (:meth:`should_retry`) or a stop condition
        holds (:meth:`attempts_exhausted`, with the backoff counted against the time
        budget); otherwise :meth:`calculate_delay`. No jitter is drawn for an attempt
        that is not retried.

        Args:
            attempt: the 1-based number of the attempt that just failed.
            error: what it raised.
            started_at: clock time when the first attempt started.
            now: the current clock time.
            rng: the jitter source (see :meth:`calculate_delay`).

        Raises:
            Exception: whatever a ``retry_on`` predicate raises.

        Example::

            delay = config.next_delay(1, TimeoutError(), started, clock.monotonic())
            if delay is None:
                raise
            await clock.sleep(delay)
        """
        if not self.should_retry(error) or attempt >= self.max_attempts:
            return None
        delay = self.calculate_delay(attempt, error, rng)
        if self.attempts_exhausted(attempt, started_at, now, delay):
            return None
        return delay

    def _raw_delay(self, attempt: int) -> float:
        """The strategy's delay for ``attempt`` before capping; may exceed max_delay."""
        initial = self.initial_delay
        if initial == 0:
            return 0.0
        strategy = self.backoff_strategy
        if strategy is BackoffStrategy.CONSTANT:
            return initial
        if strategy is BackoffStrategy.LINEAR:
            return initial * attempt
        if strategy is BackoffStrategy.EXPONENTIAL:
            try:
                return initial * self.backoff_multiplier ** (attempt - 1)
            except OverflowError:
                return math.inf
        # FIBONACCI: stop as soon as the cap is reached, so huge attempts stay cheap.
        previous, current = 0, 1
        for _ in range(attempt - 1):
            if initial * current >= self.max_delay:
                break
            previous, current = current, previous + current
        return initial * current


def _retry_after(exc: BaseException | None) -> float | None:
    """The usable ``retry_after`` hint of ``exc`` in seconds, or None."""
    hint = getattr(exc, "retry_after", None)
    if isinstance(hint, bool) or not isinstance(hint, (int, float)):
        return None
    if not math.isfinite(hint) or hint < 0:
        return None
    return float(hint)


def _describe_validation_error(exc: ValidationError) -> str:
    """One readable sentence per problem pydantic found in a RetryConfig."""
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        field = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            message = f"RetryConfig has no setting named {field!r}; check the spelling."
        elif error["type"] != "value_error" and field:
            message = f"{field}: {message}."
        problems.append(message)
    return "Invalid RetryConfig: " + " ".join(problems)
