"""A virtual-time clock for tests of code that waits.

:class:`FakeClock` implements :class:`~rh_agents.core.clock.Clock` without touching real
time: ``monotonic()`` returns a virtual time that only moves when the test (or the
autojump driver) says so, and ``sleep()`` suspends until virtual time catches up. Tests
of backoffs, cooldowns and deadlines of minutes therefore finish in milliseconds and
always in the same order.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from contextlib import AbstractContextManager
from types import TracebackType

from rh_agents.core._aio import (
    loop_is_idle,
    ordered_outside_work,
    outside_waiting,
    release_outside,
)
from rh_agents.core.errors import InvalidArgumentError, LifecycleError

__all__ = ["FakeClock"]

_IDLE_CHECKS = 3
"""Consecutive idle observations required before autojump moves time.

Between two observations the event loop runs a full iteration, polling I/O without
blocking and promoting due timers, so work that becomes ready only through the loop's
own machinery gets a chance to show up before virtual time moves.
"""


class FakeClock:
    """A :class:`~rh_agents.core.clock.Clock` with virtual time, for tests.

    ``await clock.sleep(d)`` suspends until virtual time reaches ``now + d`` (``d <= 0``
    just yields to the event loop once); every requested duration is appended to
    :attr:`sleeps`, so a test can assert the backoff a retry loop used. Sleepers due at
    the same time wake in the order they started sleeping. A cancelled sleeper is
    removed at once.

    Time moves in two ways:

    * :meth:`advance` moves it by hand and wakes every sleeper that is now due (they
      all observe the new time, not their own deadline).
    * Autojump (the default): inside ``async with FakeClock() as clock:`` a driver task
      waits until the event loop has nothing else ready to run, then jumps virtual time
      to the earliest sleeper's deadline and wakes it. Waiting through ``clock.sleep``
      therefore costs no real time, and everything that can happen "before" a deadline
      does happen before it. The driver is cancelled and awaited on exit. Sleeping on
      an autojump clock outside its ``async with`` block raises
      :class:`~rh_agents.core.errors.LifecycleError` instead of hanging the test.

    Autojump treats "nothing ready" as "waiting for the clock", so it moves time even
    while the test awaits real I/O or a thread; keep such tests on
    ``autojump=False``.

    Args:
        start: initial virtual time in seconds.
        autojump: whether ``async with`` starts the autojump driver.

    Example::

        async def test_backoff() -> None:
            async with FakeClock() as clock:
                await retrying_call(clock=clock)        # waits 1 s, 2 s, 4 s virtually
                assert clock.sleeps == [1.0, 2.0, 4.0]
                assert clock.monotonic() == 7.0

        async def test_by_hand() -> None:
            clock = FakeClock(autojump=False)
            task = asyncio.create_task(clock.sleep(5))
            await asyncio.sleep(0)
            clock.advance(5)
            await task
    """

    def __init__(self, start: float = 0.0, *, autojump: bool = True) -> None:
        if isinstance(start, bool) or not isinstance(start, (int, float)):
            raise InvalidArgumentError(f"start must be a number of seconds, got {start!r}.")
        if not math.isfinite(start):
            raise InvalidArgumentError(f"start must be a finite number, got {start!r}.")
        self._now = float(start)
        self._autojump = autojump
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._sequence = itertools.count()
        self._driver: asyncio.Task[None] | None = None
        self._sleeper_added: asyncio.Event | None = None
        self._outside: AbstractContextManager[None] | None = None
        self._entered = False
        self.sleeps: list[float] = []
        """Every duration passed to :meth:`sleep`, in call order."""

    @property
    def autojump(self) -> bool:
        """Whether this clock jumps time by itself inside ``async with``."""
        return self._autojump

    @property
    def pending(self) -> int:
        """How many sleepers are waiting for virtual time to reach their deadline."""
        return len(self._sleepers)

    def monotonic(self) -> float:
        """The current virtual time in seconds."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Suspend until virtual time has moved ``seconds`` past now.

        ``seconds <= 0`` yields to the event loop once without waiting; ``math.inf``
        waits until cancelled.

        Raises:
            InvalidArgumentError: ``seconds`` is NaN or not a number.
            LifecycleError: autojump is on but the clock is not inside ``async with``.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise InvalidArgumentError(f"sleep() takes a number of seconds, got {seconds!r}.")
        if math.isnan(seconds):
            raise InvalidArgumentError("sleep() got NaN seconds; pass a number >= 0.")
        self.sleeps.append(float(seconds))
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        if self._autojump and self._driver is None:
            raise LifecycleError(
                "FakeClock.sleep() was awaited on an autojump clock outside its "
                "`async with` block, so nothing would ever move time. Use "
                "`async with FakeClock() as clock:`, or FakeClock(autojump=False) with "
                "clock.advance()."
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self._now + seconds, next(self._sequence), future)
        heapq.heappush(self._sleepers, entry)
        if self._sleeper_added is not None:
            self._sleeper_added.set()
        try:
            await future
        finally:
            if not future.done() or future.cancelled():
                self._remove(entry)

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by ``seconds`` and wake every sleeper now due.

        The woken sleepers resume the next time the event loop runs, in deadline order.

        Raises:
            InvalidArgumentError: ``seconds`` is negative, NaN or infinite.
        """
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise InvalidArgumentError(
                f"advance() takes a finite number of seconds >= 0, got {seconds!r}; "
                f"virtual time never runs backwards."
            )
        self._now += seconds
        self._wake_due()

    async def __aenter__(self) -> FakeClock:
        if self._entered:
            raise LifecycleError(
                "This FakeClock was already entered; use a new FakeClock per `async with`."
            )
        self._entered = True
        if self._autojump:
            self._sleeper_added = asyncio.Event()
            loop = asyncio.get_running_loop()
            # Journal commits and other outside work: time stands still meanwhile, and
            # their waiters resume in a reproducible order (see _drive).
            self._outside = ordered_outside_work(loop, self._sleeper_added)
            self._outside.__enter__()
            self._driver = loop.create_task(self._drive(), name="FakeClock autojump")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        driver = self._driver
        if driver is None:
            return
        driver.cancel()
        try:
            await driver
        except asyncio.CancelledError:
            # The driver's own cancellation is expected; re-raise only when the task
            # running this block is itself being cancelled.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        finally:
            self._driver = None
            self._sleeper_added = None
            if self._outside is not None:
                self._outside.__exit__(None, None, None)
                self._outside = None

    def _wake_due(self) -> None:
        """Resolve every sleeper whose deadline is not after the current time."""
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    def _remove(self, entry: tuple[float, int, asyncio.Future[None]]) -> None:
        """Drop a cancelled sleeper so it neither counts as pending nor attracts a jump."""
        try:
            self._sleepers.remove(entry)
        except ValueError:
            return
        heapq.heapify(self._sleepers)

    async def _drive(self) -> None:
        """Autojump loop: when the event loop is idle, jump to the next deadline."""
        assert self._sleeper_added is not None
        loop = asyncio.get_running_loop()
        idle = 0
        while True:
            if not self._sleepers and not outside_waiting(loop):
                idle = 0
                self._sleeper_added.clear()
                await self._sleeper_added.wait()
                continue
            await asyncio.sleep(0)
            if not loop_is_idle(loop):
                idle = 0
                continue
            idle += 1
            if idle < _IDLE_CHECKS:
                continue
            idle = 0
            if await release_outside(loop):
                continue  # a task resumes from outside work first; time moves later
            if not self._sleepers:
                continue
            deadline = self._sleepers[0][0] if self._sleepers else math.inf
            if math.isfinite(deadline):
                self._now = max(self._now, deadline)
                self._wake_due()
            else:
                # Only sleepers that wait forever are left; wait for a new one.
                self._sleeper_added.clear()
                await self._sleeper_added.wait()
