"""A named, shareable concurrency (and optional rate) limiter.

A :class:`Limiter` caps how many calls to one resource run at once - "at most 8
concurrent requests to this LLM provider" - across every parallel group that shares it,
nested groups included. Unlike a group's own concurrency setting it is not tied to one
group: create it once, hand the same instance to every group that calls the resource.

Waiters are served strictly first come, first served, and cancelling a waiter never
leaks a permit, even when the cancellation lands at the moment a permit is handed over.
With a rate limit, a waiter cancelled before its start gives its token back too (see
``Limiter``), so cancelling a whole group of waiters does not delay the next caller.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass
from types import TracebackType

from rh_agents.core._validate import is_finite_at_least, is_int_at_least
from rh_agents.core.clock import SYSTEM_CLOCK, Clock
from rh_agents.core.errors import InvalidArgumentError, LifecycleError

__all__ = ["Limiter", "LimiterStatistics"]


@dataclass(frozen=True)
class LimiterStatistics:
    """A point-in-time copy of a limiter's counters.

    Attributes:
        name: the limiter's name.
        max_concurrency: the most holders allowed at once.
        in_use: callers holding a permit (``acquire()`` has returned, ``release()``
            not yet called).
        waiting: callers inside ``acquire()`` that do not hold a permit yet.
        peak_in_use: the highest ``in_use`` seen since the limiter was created.
        total_acquired: completed ``acquire()`` calls since the limiter was created.
        limit: an :class:`~rh_agents.core.adaptive_limiter.AdaptiveLimiter`'s current
            limit (between 1 and ``max_concurrency``); None for a fixed limiter.
    """

    name: str
    max_concurrency: int
    in_use: int
    waiting: int
    peak_in_use: int
    total_acquired: int
    limit: int | None = None


class Limiter:
    """Caps concurrent (and optionally per-second) use of a shared resource.

    ``acquire()`` waits for a free slot in FIFO order; ``release()`` hands the slot to
    the longest waiter. ``async with limiter:`` does both.

    With ``rate`` set, acquisitions are also spaced by a token bucket: ``rate`` tokens
    per second, holding at most ``burst`` tokens (the bucket starts full). ``burst=1``
    (the default) spaces every acquisition at least ``1/rate`` seconds apart; a larger
    burst, up to ``max_concurrency``, lets that many start together after a quiet
    period, then settles to ``rate`` per second. A caller takes its concurrency slot
    first and then waits for its token through ``clock.sleep``, so starts are spaced
    even when many slots free up at once, and the FIFO order is kept. A caller
    cancelled while it waits for its token gives the token back; if callers behind it
    still wait, they keep their start times (the freed start is skipped rather than
    letting two starts come closer than ``1/rate``).

    Do not hold a permit while awaiting other work that needs the same limiter (for
    example a nested group sharing it): with every slot held by outer callers the inner
    ones would wait forever. Acquire around the individual calls instead.

    The limiter is for one event loop; it is not thread-safe. ``release()`` does not
    check which task releases; it only refuses to release more permits than are held.

    Args:
        name: identifies the resource in logs and metrics; not empty.
        max_concurrency: the most callers holding a permit at once; an int >= 1.
        rate: the most acquisitions per second, or None for no rate limit; finite, > 0.
        clock: time source for the rate limit; inject a fake clock in tests.
        burst: tokens the rate bucket holds, an int from 1 to ``max_concurrency``.

    Raises:
        InvalidArgumentError: an argument is out of range.

    Example::

        openai = Limiter("openai", max_concurrency=8, rate=5.0)

        async def ask(prompt: str) -> str:
            async with openai:
                return await client.complete(prompt)
    """

    def __init__(
        self,
        name: str,
        max_concurrency: int,
        rate: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        *,
        burst: int = 1,
    ) -> None:
        _check_settings(name, max_concurrency, rate, burst)
        self._name = name
        self._max = max_concurrency
        # Permits handed out at most now: max_concurrency, unless a subclass adapts it.
        self._limit = max_concurrency
        self._rate = None if rate is None else float(rate)
        self._burst = burst
        self._clock = clock
        # Slots taken, including callers that hold a slot but still wait for a token.
        self._slots = 0
        self._token_waiting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._peak = 0
        self._total = 0
        # Token bucket as a "theoretical arrival time": the clock time at which the
        # bucket would be empty again if no more tokens were taken. It counts the
        # tokens of callers still waiting for theirs (reservations) as taken.
        self._tat = -math.inf
        # The tat as of the tokens actually handed out, and the tat each waiting caller
        # reserved: a cancelled reservation is given back by recomputing the tat from
        # what remains, whatever order the waiters are cancelled in.
        self._taken_tat = -math.inf
        self._reserved: set[float] = set()

    @property
    def name(self) -> str:
        """The limiter's name."""
        return self._name

    @property
    def max_concurrency(self) -> int:
        """The most callers holding a permit at once."""
        return self._max

    @property
    def rate(self) -> float | None:
        """The most acquisitions per second, or None."""
        return self._rate

    @property
    def burst(self) -> int:
        """How many tokens the rate bucket holds."""
        return self._burst

    @property
    def in_use(self) -> int:
        """Callers holding a permit right now."""
        return self._slots - self._token_waiting

    @property
    def waiting(self) -> int:
        """Callers inside ``acquire()`` that do not hold a permit yet."""
        queued = sum(1 for future in self._waiters if not future.done())
        return queued + self._token_waiting

    def statistics(self) -> LimiterStatistics:
        """A frozen snapshot of the counters."""
        return LimiterStatistics(
            name=self._name,
            max_concurrency=self._max,
            in_use=self.in_use,
            waiting=self.waiting,
            peak_in_use=self._peak,
            total_acquired=self._total,
        )

    async def acquire(self) -> None:
        """Wait for a permit; callers are served in the order they called.

        If the calling task is cancelled while waiting, it holds no permit afterwards
        (a permit handed to it at that moment passes on to the next waiter).
        """
        await self._take_slot()
        if self._rate is not None:
            self._token_waiting += 1
            try:
                await self._take_token(self._rate)
            except BaseException:
                self._token_waiting -= 1
                self._give_slot()
                raise
            self._token_waiting -= 1
        self._total += 1
        self._peak = max(self._peak, self.in_use)

    def release(self) -> None:
        """Give a permit back; the longest waiter (if any) gets it.

        Raises:
            LifecycleError: no permit is held (more releases than acquires).
        """
        if self.in_use <= 0:
            raise LifecycleError(
                f"Limiter {self._name!r} was released more times than it was acquired. "
                f"Call release() exactly once per completed acquire(), or use "
                f"`async with limiter:`."
            )
        self._give_slot()

    def record_outcome(self, error: BaseException | None) -> None:
        """How a call made under a permit ended (None: it succeeded).

        The guarded attempt (:mod:`rh_agents.core._guarded`) reports every attempt of a
        policy with this limiter here, before the permit is released. A fixed limiter
        ignores it; :class:`~rh_agents.core.adaptive_limiter.AdaptiveLimiter` adapts its
        limit to it.
        """
        return None

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Limiter {self._name!r} in_use={self.in_use}/{self._max} waiting={self.waiting}>"

    async def _take_slot(self) -> None:
        """Take a concurrency slot, queueing behind earlier callers."""
        self._drop_cancelled_head()
        if self._slots < self._limit and not self._waiters:
            self._slots += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                # The slot was handed over just as we were cancelled: pass it on.
                self._give_slot()
            else:
                future.cancel()
                try:
                    self._waiters.remove(future)
                except ValueError:
                    pass
            raise

    def _give_slot(self) -> None:
        """Hand a taken slot to the first live waiter, or free it."""
        self._drop_cancelled_head()
        if self._waiters and self._slots <= self._limit:
            # The slot changes hands; self._slots stays the same.
            self._waiters.popleft().set_result(None)
        else:
            self._slots -= 1

    def _wake(self) -> None:
        """Hand free slots to waiters (the limit grew)."""
        self._drop_cancelled_head()
        while self._waiters and self._slots < self._limit:
            self._slots += 1
            self._waiters.popleft().set_result(None)
            self._drop_cancelled_head()

    def _drop_cancelled_head(self) -> None:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()

    async def _take_token(self, rate: float) -> None:
        """Wait until the token bucket allows one more acquisition.

        A caller that is cancelled while waiting gives its token back: the tat becomes
        the latest of the tokens handed out and the reservations still waiting. When
        every waiter is cancelled (a cancelled group) the bucket is exactly as if they
        had never asked. When later callers still wait, they keep their places, so the
        cancelled reservation is a gap that nobody uses rather than two starts closer
        together than ``1/rate``.
        """
        interval = 1.0 / rate
        now = self._clock.monotonic()
        start_at = max(now, self._tat - (self._burst - 1) * interval)
        reserved_tat = max(self._tat, start_at) + interval
        self._tat = reserved_tat
        if now >= start_at:
            self._taken_tat = reserved_tat
            return
        reserved = self._reserved
        reserved.add(reserved_tat)
        try:
            while (now := self._clock.monotonic()) < start_at:
                await self._clock.sleep(start_at - now)
        except BaseException:
            reserved.discard(reserved_tat)
            self._tat = max(self._taken_tat, max(reserved, default=-math.inf))
            raise
        reserved.discard(reserved_tat)
        self._taken_tat = max(self._taken_tat, reserved_tat)


def _check_settings(name: object, max_concurrency: object, rate: object, burst: object) -> None:
    """Raise InvalidArgumentError for a limiter setting that cannot work."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError(
            f"A limiter needs a non-empty name, got {name!r}. Name it after the resource "
            f"it protects, such as 'openai'."
        )
    if not is_int_at_least(max_concurrency, 1):
        raise InvalidArgumentError(
            f"max_concurrency of limiter {name!r} must be an integer >= 1, got {max_concurrency!r}."
        )
    if rate is not None and not is_finite_at_least(rate, 0, strict=True):
        raise InvalidArgumentError(
            f"rate of limiter {name!r} must be a finite number of acquisitions per second "
            f"> 0, or None for no rate limit, got {rate!r}."
        )
    assert isinstance(max_concurrency, int)
    if not is_int_at_least(burst, 1) or burst > max_concurrency:  # type: ignore[operator]
        raise InvalidArgumentError(
            f"burst of limiter {name!r} must be an integer from 1 to max_concurrency "
            f"({max_concurrency}), got {burst!r}."
        )
