"""The guarded attempt: the one path by which a policy guards an actor's and an item's work.

An attempt under a :class:`~rh_agents.core.policy.Policy` goes, in this order:

1. :func:`hold_permit` - the limiter's permit, held for the whole attempt (and lent to
   nested groups sharing the limiter while the attempt waits for them, see
   :mod:`rh_agents.core.parallel.lending`);
2. :func:`run_attempt` - the breaker's admission, the work under the timeout, the
   outcome reported to the breaker;
3. after a failure, :func:`retry_delay` - the retry guard's decision: the backoff before
   the next attempt, or None.

The caller waits out the backoff: an actor in place (``clock.sleep``), a parallel group
in its scheduler, without holding a worker. Nothing here runs when a call has no policy:
the callers check for None first, so unguarded work allocates no guard object.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from rh_agents.core._aio import cancel_and_wait
from rh_agents.core.errors import AttemptTimeoutError

if TYPE_CHECKING:
    from rh_agents.core.circuit_breaker import CircuitPermit
    from rh_agents.core.clock import Clock
    from rh_agents.core.limiter import Limiter
    from rh_agents.core.policy import Policy

__all__ = [
    "Hold",
    "give_back",
    "guarded_outside",
    "hold_permit",
    "holds",
    "retry_delay",
    "run_attempt",
]


class Hold:
    """A limiter permit held by one running attempt."""

    __slots__ = ("held", "lent", "limiter")

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.held = True
        self.lent = 0

    def release(self) -> None:
        """Give the permit back (the attempt ended), unless it is lent out."""
        if self.held:
            self.held = False
            self.limiter.release()


holds: ContextVar[tuple[Hold, ...]] = ContextVar("rh_agents_limiter_holds", default=())
"""The limiter permits held by the attempts enclosing the current code, outermost first."""

_guarding: ContextVar[tuple[Policy, ...]] = ContextVar("rh_agents_guarding", default=())
"""The policies guarding the attempts that enclose the current code, outermost first."""


def guarded_outside(policy: Policy) -> bool:
    """Whether ``policy`` (this very object) guards an attempt enclosing the current code.

    An actor call made there is not guarded again: the enclosing attempt's retry,
    breaker, limiter and timeout already cover it (one policy shared by a group and the
    actors its items call applies once, at the outer level).
    """
    return any(outer is policy for outer in _guarding.get())


async def hold_permit(limiter: Limiter) -> tuple[Hold, Token[tuple[Hold, ...]]] | None:
    """Wait for a permit of ``limiter``; it is known to nested groups until
    :func:`give_back`.

    Returns None, taking nothing, when an enclosing attempt holds a permit of the same
    limiter (an actor call inside a group item that both use it): the call is part of
    the work that permit admitted, and waiting for a second one could deadlock.
    """
    for hold in holds.get():
        if hold.limiter is limiter and hold.held:
            return None
    await limiter.acquire()
    hold = Hold(limiter)
    return hold, holds.set((*holds.get(), hold))


def give_back(hold: Hold, token: Token[tuple[Hold, ...]]) -> None:
    """Release what :func:`hold_permit` took."""
    holds.reset(token)
    hold.release()


async def run_attempt(
    policy: Policy,
    work: Callable[[], Awaitable[Any]],
    clock: Clock,
    what: str,
    attempt: int,
    failure: Callable[[Any], BaseException | None] | None = None,
) -> tuple[Any, BaseException | None]:
    """One attempt of ``work`` under ``policy``'s breaker and timeout.

    Args:
        policy: the guards.
        work: starts the attempt's work (called once, inside the guards).
        clock: measures the timeout.
        what: names the call in a timeout's message, e.g. ``"actor 'search'"``.
        attempt: the 1-based attempt number, for the timeout's message.
        failure: tells a returned value that is a failure (an ``ok=False`` result) by
            returning its exception; such a value counts against the breaker.

    Returns:
        The value and, when ``failure`` found one, its failure.

    Raises:
        CircuitOpenError: the breaker rejected the attempt (``work`` did not start).
        AttemptTimeoutError: the attempt reached the policy's timeout and was cancelled.
        BaseException: whatever ``work`` raised; an ``Exception`` counts against the
            breaker, a cancellation does not.
    """
    policy._counters.attempts += 1
    breaker = policy.breaker
    permit: CircuitPermit | None = breaker.admit() if breaker is not None else None
    error: BaseException | None = None
    token = _guarding.set((*_guarding.get(), policy))
    try:
        try:
            if policy.timeout is None:
                value = await work()
            else:
                value = await _bounded(policy, work, clock, what, attempt)
        finally:
            _guarding.reset(token)
        if failure is not None:
            error = failure(value)
    except Exception:
        if breaker is not None and permit is not None:
            breaker.record_failure(permit)
        raise
    except BaseException:
        # Cancelled (or the process stops): not the dependency's fault.
        if breaker is not None and permit is not None:
            breaker.release(permit)
        raise
    if breaker is not None and permit is not None:
        if error is None:
            breaker.record_success(permit)
        else:
            breaker.record_failure(permit)
    return value, error


async def _bounded(
    policy: Policy,
    work: Callable[[], Awaitable[Any]],
    clock: Clock,
    what: str,
    attempt: int,
) -> Any:
    """``await work()``, cancelled after ``policy.timeout`` seconds of ``clock``.

    Like ``asyncio.timeout``, but on the injectable clock: a watchdog task sleeps out the
    deadline and cancels this task; the cancellation it caused (and only that one) turns
    into :class:`AttemptTimeoutError`. The watchdog is cancelled and awaited on every
    way out.
    """
    seconds = policy.timeout
    assert seconds is not None
    task = asyncio.current_task()
    assert task is not None
    expired = False

    async def watchdog() -> None:
        nonlocal expired
        await clock.sleep(seconds)
        expired = True
        task.cancel()

    cancelling = task.cancelling()
    dog = asyncio.get_running_loop().create_task(watchdog())
    broken: list[BaseException] = []
    try:
        value = await work()
    except asyncio.CancelledError:
        if expired and task.uncancel() <= cancelling:
            policy._counters.timed_out += 1
            raise AttemptTimeoutError(what, seconds, attempt) from None
        raise
    except BaseException:
        if expired:
            task.uncancel()  # the work turned its cancellation into an error of its own
        raise
    finally:
        # A watchdog that failed (a clock that raised) is reported, not left unretrieved.
        broken = await cancel_and_wait([dog])
    if expired:
        # The work swallowed the cancellation that ended its time, and returned: take
        # the request back, so it does not cancel what the caller does next.
        task.uncancel()
    if broken:
        raise broken[0]
    return value


def retry_delay(
    policy: Policy,
    attempt: int,
    error: BaseException,
    started_at: float,
    now: float,
    rng: random.Random | None = None,
) -> float | None:
    """The retry guard's decision after a failed attempt: the backoff before the next
    one, or None (no retry guard, not retryable, or out of attempts or time).

    Raises:
        Exception: whatever the retry configuration's ``retry_on`` predicate raises.
    """
    retry = policy.retry
    if retry is None:
        return None
    delay = retry.next_delay(attempt, error, started_at, now, rng)
    counters = policy._counters
    if delay is None:
        counters.gave_up += 1
    else:
        counters.retries += 1
    return delay
