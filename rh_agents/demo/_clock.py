"""Simulated time for the demo: deterministic, but paced like real time.

With the real clock, which search call meets the open circuit breaker depends on how
the operating system happens to schedule a few milliseconds here and there, so two runs
with the same seed could differ by a retry or a rejection. The demo therefore runs on a
:class:`PacedClock`: every wait (the stubs' latencies, retry backoffs, the breaker's
cooldown) is a sleep on this clock, and its time moves only when every task of the run
is waiting for it. Then it waits for real until the earliest deadline (so the progress
bars move as in a real run) and wakes the tasks due, in the order they started waiting.
The order of everything that happens, and so every outcome, depends only on the seed.

``--speed`` changes only how fast simulated time runs against real time, never a
simulated duration: scaling the durations themselves would change their floating-point
sums, and with them the order of events that fall close together.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from contextlib import AbstractContextManager
from types import TracebackType

from rh_agents.core._aio import (
    loop_is_idle,
    ordered_outside_work,
    outside_waiting,
    release_outside,
)

__all__ = ["PacedClock"]

_IDLE_ROUNDS = 3
"""Event-loop iterations in a row with nothing to run before time moves."""


class PacedClock:
    """A :class:`~rh_agents.core.clock.Clock` whose time moves when everybody waits.

    Use it inside ``async with``, which runs the task that moves time::

        async with PacedClock(speed=0.1) as clock:
            state = ExecutionState(clock=clock)
            await run_pipeline(pipeline, state)

    Args:
        speed: real seconds per simulated second (0.1 runs ten times faster than real
            time; 0 does not wait at all).
    """

    def __init__(self, speed: float = 1.0) -> None:
        if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed >= 0):
            raise ValueError(f"speed must be a finite number >= 0, got {speed!r}.")
        self.speed: float = float(speed)
        self._now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._woken: asyncio.Event | None = None
        self._mover: asyncio.Task[None] | None = None
        # While time moves towards a deadline at the pace of real time: (real start,
        # deadline). Only something from outside (a signal, Ctrl-C) can run meanwhile.
        self._pacing: tuple[float, float] | None = None
        self._outside: AbstractContextManager[None] | None = None

    def monotonic(self) -> float:
        """Simulated seconds since the clock was created.

        Between two moves it does not change, which is what makes runs reproducible. The
        only code that can read it while time moves towards the next deadline is code
        woken from outside (a cancellation on Ctrl-C): it reads the time reached so far,
        so what an interruption records (durations of cancelled work) is realistic.
        """
        pacing = self._pacing
        if pacing is None:
            return self._now
        started, deadline = pacing
        return min(deadline, self._now + (time.monotonic() - started) / self.speed)

    async def sleep(self, seconds: float) -> None:
        """Wait until simulated time has moved ``seconds`` on (``<= 0``: yield once)."""
        if not seconds > 0:
            await asyncio.sleep(0)
            return
        if self._mover is None:
            raise RuntimeError("PacedClock.sleep() needs the clock's `async with` block.")
        future = asyncio.get_running_loop().create_future()
        entry = (self.monotonic() + seconds, next(self._order), future)
        heapq.heappush(self._sleepers, entry)
        assert self._woken is not None
        self._woken.set()
        try:
            await future
        finally:
            if not future.done():  # cancelled: it no longer waits
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    async def __aenter__(self) -> PacedClock:
        self._woken = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Journal commits (outside work) hold time, and resume in a reproducible order.
        self._outside = ordered_outside_work(loop, self._woken)
        self._outside.__enter__()
        self._mover = loop.create_task(self._move(), name="PacedClock")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        mover, self._mover = self._mover, None
        if mover is None:
            return
        mover.cancel()
        try:
            await mover
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        finally:
            if self._outside is not None:
                self._outside.__exit__(None, None, None)
                self._outside = None

    async def _move(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._woken is not None
        while True:
            if not self._sleepers and not outside_waiting(loop):
                self._woken.clear()
                await self._woken.wait()
                continue
            idle = 0
            while idle < _IDLE_ROUNDS:
                await asyncio.sleep(0)
                idle = idle + 1 if loop_is_idle(loop) else 0
            if await release_outside(loop):
                continue  # a task resumes from outside work first; time moves later
            if not self._sleepers:
                continue
            deadline = self._sleepers[0][0]
            if not math.isfinite(deadline):  # pragma: no cover - nothing sleeps forever
                self._woken.clear()
                await self._woken.wait()
                continue
            if self.speed and deadline > self._now:
                self._pacing = (time.monotonic(), deadline)
                try:
                    await asyncio.sleep((deadline - self._now) * self.speed)
                finally:
                    reached, self._pacing = self.monotonic(), None
                    self._now = max(self._now, reached)
            self._now = max(self._now, deadline)
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, future = heapq.heappop(self._sleepers)
                if not future.done():
                    future.set_result(None)
