"""AdaptiveLimiter: a limiter whose concurrency shrinks under overload and grows back (AIMD).

A fixed :class:`~rh_agents.core.limiter.Limiter` needs its ``max_concurrency`` guessed in
advance: too low wastes a provider's capacity, too high gets every call answered "429 Too
Many Requests". An :class:`AdaptiveLimiter` finds the level by itself, the way TCP finds
a link's capacity (additive increase, multiplicative decrease):

* every **overload signal** (see :func:`is_overload`: an HTTP 429, 503 or 529, an error with a
  ``retry_after`` hint, a timeout, a result ``retry_on_result`` rejected) multiplies the
  limit by ``decrease_factor`` (0.5: halves it), never below ``min_concurrency`` (1);
* every ``limit`` successful calls raise it by one, never above ``max_concurrency``.

Calls already running when the limit drops finish normally (the limit applies to new
permits), and their overload signals count as one: after a decrease, the next one waits
until the calls that were in flight at the time have reported.

It is a ``Limiter`` (``isinstance`` holds), usable wherever one is: ``Policy(limiter=)``,
``state.parallel(limiter=)``, ``async with limiter:``. The guarded attempt reports every
outcome to it (:meth:`Limiter.record_outcome <rh_agents.core.limiter.Limiter.record_outcome>`);
code that uses ``async with`` itself reports with ``record_outcome`` too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rh_agents.core._validate import is_finite_at_least, is_int_at_least
from rh_agents.core.clock import SYSTEM_CLOCK, Clock
from rh_agents.core.errors import CircuitOpenError, InvalidArgumentError, RejectedResultError
from rh_agents.core.limiter import Limiter, LimiterStatistics

__all__ = ["AdaptiveLimiter", "LimitListener", "is_overload"]

LimitListener = Callable[["AdaptiveLimiter", int, int], None]
"""Called as ``listener(limiter, old_limit, new_limit)`` after every change of the limit."""

_OVERLOAD_STATUS = frozenset({429, 503, 529})


def is_overload(error: BaseException) -> bool:
    """Whether ``error`` says the called resource is overloaded (the default signal).

    True for: an error with an HTTP status 429, 503 or 529 (``status_code`` or ``status``
    attribute, or ``response.status_code`` as httpx and requests raise them); an error
    with a numeric ``retry_after`` hint; a ``TimeoutError`` (an attempt timeout
    included); a :class:`~rh_agents.core.errors.RejectedResultError`. False for a
    circuit breaker's rejection (the call never reached the resource) and for every
    other error.

    Example:
        >>> class TooMany(Exception):
        ...     status_code = 429
        >>> is_overload(TooMany()), is_overload(ValueError())
        (True, False)
    """
    if isinstance(error, CircuitOpenError):
        return False
    if isinstance(error, TimeoutError | RejectedResultError):
        return True
    hint = getattr(error, "retry_after", None)
    if isinstance(hint, int | float) and not isinstance(hint, bool) and math.isfinite(hint):
        return True
    status = getattr(error, "status_code", None)
    if status is None:
        status = getattr(error, "status", None)
    if status is None:
        status = getattr(getattr(error, "response", None), "status_code", None)
    return status in _OVERLOAD_STATUS


class AdaptiveLimiter(Limiter):
    """A :class:`~rh_agents.core.limiter.Limiter` whose limit adapts to overload (AIMD).

    Args:
        name: identifies the resource in logs and metrics; not empty.
        max_concurrency: the highest the limit goes (use the group's ``max_workers``).
        initial: the limit to start at (default ``max_concurrency``).
        min_concurrency: the lowest the limit goes (default 1).
        decrease_factor: the limit is multiplied by it on an overload signal (rounded
            down); between 0 and 1, exclusive.
        overload: tells an error that means "overloaded"; default :func:`is_overload`.
        rate: as for ``Limiter``: the most acquisitions per second, or None.
        clock: as for ``Limiter``: the rate limit's time source.
        burst: as for ``Limiter``.

    Raises:
        InvalidArgumentError: an argument is out of range.

    Example::

        llm = AdaptiveLimiter("llm", max_concurrency=16, initial=4)
        policy = Policy(retry=RetryConfig(max_attempts=4), limiter=llm)
        async with state.parallel(max_workers=16, policy=policy) as p: ...
        llm.limit  # where it settled
    """

    def __init__(
        self,
        name: str,
        max_concurrency: int,
        *,
        initial: int | None = None,
        min_concurrency: int = 1,
        decrease_factor: float = 0.5,
        overload: Callable[[BaseException], bool] = is_overload,
        rate: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        burst: int = 1,
    ) -> None:
        super().__init__(name, max_concurrency, rate, clock, burst=burst)
        if not is_int_at_least(min_concurrency, 1) or min_concurrency > max_concurrency:
            raise InvalidArgumentError(
                f"min_concurrency of adaptive limiter {name!r} must be an integer from 1 to "
                f"max_concurrency ({max_concurrency}), got {min_concurrency!r}."
            )
        start = max_concurrency if initial is None else initial
        if not is_int_at_least(start, min_concurrency) or start > max_concurrency:
            raise InvalidArgumentError(
                f"initial of adaptive limiter {name!r} must be an integer from "
                f"min_concurrency ({min_concurrency}) to max_concurrency ({max_concurrency}), "
                f"got {initial!r}."
            )
        if not is_finite_at_least(decrease_factor, 0, strict=True) or decrease_factor >= 1:
            raise InvalidArgumentError(
                f"decrease_factor of adaptive limiter {name!r} must be a number between 0 "
                f"and 1 (0.5 halves the limit on overload), got {decrease_factor!r}."
            )
        if not callable(overload):
            raise InvalidArgumentError(
                f"overload of adaptive limiter {name!r} must be a predicate "
                f"fn(error) -> bool, got {overload!r}."
            )
        self._limit = start
        self._min = min_concurrency
        self._factor = float(decrease_factor)
        self._overload = overload
        self._successes = 0  # since the last change of the limit
        self._settling = 0  # outcomes of calls in flight at the last decrease, to ignore
        self._lowest = start
        self._listeners: list[LimitListener] = []

    @property
    def limit(self) -> int:
        """The permits handed out at most now (between min and max concurrency)."""
        return self._limit

    @property
    def min_concurrency(self) -> int:
        """The lowest the limit goes."""
        return self._min

    @property
    def lowest_limit(self) -> int:
        """The lowest limit reached since the limiter was created."""
        return self._lowest

    def add_listener(self, listener: LimitListener) -> None:
        """Call ``listener(limiter, old, new)`` after every change of the limit (telemetry
        uses it; a listener that raises is not the limiter's concern and propagates)."""
        self._listeners.append(listener)

    def statistics(self) -> LimiterStatistics:
        """A frozen snapshot of the counters, with the current ``limit``."""
        stats = super().statistics()
        return LimiterStatistics(
            name=stats.name,
            max_concurrency=stats.max_concurrency,
            in_use=stats.in_use,
            waiting=stats.waiting,
            peak_in_use=stats.peak_in_use,
            total_acquired=stats.total_acquired,
            limit=self._limit,
        )

    def record_outcome(self, error: BaseException | None) -> None:
        """Adapt the limit to how a call ended: None (success) counts towards an increase,
        an overload signal decreases it, any other error changes nothing."""
        settling = self._settling
        if settling:
            self._settling = settling - 1
        if error is None:
            self._successes += 1
            if self._successes >= self._limit and self._limit < self._max:
                self._set_limit(self._limit + 1)
            return
        if settling or not self._overload(error):
            return  # not an overload, or one the last decrease already answered
        lower = max(self._min, math.floor(self._limit * self._factor))
        # The calls still running started under the old limit: their signals are the
        # same overload, already answered (the caller itself is still counted in use).
        self._settling = max(0, self.in_use - 1)
        if lower < self._limit:
            self._set_limit(lower)
        else:
            self._successes = 0

    def _set_limit(self, new: int) -> None:
        old = self._limit
        self._limit = new
        self._successes = 0
        self._lowest = min(self._lowest, new)
        if new > old:
            self._wake()
        for listener in tuple(self._listeners):
            listener(self, old, new)

    def __repr__(self) -> str:
        return (
            f"<AdaptiveLimiter {self.name!r} limit={self._limit}/{self._max} "
            f"in_use={self.in_use} waiting={self.waiting}>"
        )
