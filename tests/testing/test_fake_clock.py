"""Tests for rh_agents.testing.clock.FakeClock."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import pytest

from rh_agents.core.clock import Clock
from rh_agents.core.errors import InvalidArgumentError, LifecycleError
from rh_agents.testing.clock import FakeClock


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_fake_clock_satisfies_the_clock_protocol() -> None:
    assert isinstance(FakeClock(), Clock)


async def test_sleepers_wake_in_deadline_order_at_their_deadlines() -> None:
    woke: list[tuple[str, float]] = []
    async with FakeClock() as clock:

        async def sleeper(label: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append((label, clock.monotonic()))

        await asyncio.gather(sleeper("c", 300), sleeper("a", 5), sleeper("b", 60), sleeper("a2", 5))
    assert woke == [("a", 5.0), ("a2", 5.0), ("b", 60.0), ("c", 300.0)]
    assert sorted(clock.sleeps) == [5.0, 5.0, 60.0, 300.0]


async def test_long_virtual_waits_take_no_real_time() -> None:
    started = time.monotonic()
    async with FakeClock() as clock:
        for _ in range(100):
            await clock.sleep(3600)
        assert clock.monotonic() == 360_000.0
    assert time.monotonic() - started < 5


async def test_work_that_is_ready_runs_before_time_jumps() -> None:
    events: list[str] = []
    async with FakeClock() as clock:

        async def busy() -> None:
            for _ in range(50):
                await asyncio.sleep(0)
            events.append(f"busy done at {clock.monotonic()}")

        async def waiter() -> None:
            await clock.sleep(1)
            events.append(f"waiter woke at {clock.monotonic()}")

        await asyncio.gather(waiter(), busy())
    assert events == ["busy done at 0.0", "waiter woke at 1.0"]


async def _with_timeout(
    clock: FakeClock, work: Callable[[], Awaitable[str]], deadline: float
) -> str:
    """A deadline race built on clock.sleep, like a group deadline would be."""
    work_task = asyncio.ensure_future(work())
    timer = asyncio.ensure_future(clock.sleep(deadline))
    try:
        done, _ = await asyncio.wait({work_task, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, timer):
            task.cancel()
        await asyncio.gather(work_task, timer, return_exceptions=True)
    if work_task in done:
        return work_task.result()
    return "timed out"


async def test_timeout_race_fires_the_earlier_deadline() -> None:
    async with FakeClock() as clock:

        async def slow() -> str:
            await clock.sleep(120)
            return "slow finished"

        async def fast() -> str:
            await clock.sleep(2)
            return "fast finished"

        assert await _with_timeout(clock, slow, deadline=30) == "timed out"
        assert clock.monotonic() == 30.0
        assert clock.pending == 0  # the losing sleeper was removed

        assert await _with_timeout(clock, fast, deadline=30) == "fast finished"
        assert clock.monotonic() == 32.0
        assert clock.pending == 0


async def test_cancelled_sleeper_is_removed_and_never_attracts_a_jump() -> None:
    async with FakeClock() as clock:
        doomed = asyncio.create_task(clock.sleep(10))
        await asyncio.sleep(0)
        assert clock.pending == 1
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert clock.pending == 0

        await clock.sleep(20)
        # Time went straight to 20, not via the cancelled sleeper's deadline.
        assert clock.monotonic() == 20.0


async def test_no_tasks_are_left_behind() -> None:
    before = asyncio.all_tasks()
    async with FakeClock() as clock:
        await asyncio.gather(clock.sleep(1), clock.sleep(2))
        sleeping = asyncio.create_task(clock.sleep(math.inf))
        await _settle()
        sleeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeping
    assert asyncio.all_tasks() == before


async def test_sleep_of_zero_or_less_only_yields() -> None:
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with FakeClock(start=100.0) as clock:
        task = asyncio.create_task(other())
        await clock.sleep(0)
        await clock.sleep(-5)
        assert ran == ["other"]
        assert clock.monotonic() == 100.0
        assert clock.sleeps == [0.0, -5.0]
        await task


async def test_manual_advance_wakes_due_sleepers_only() -> None:
    clock = FakeClock(autojump=False)
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(seconds)

    tasks = [asyncio.create_task(sleeper(s)) for s in (3, 1, 2)]
    await _settle()
    clock.advance(1.5)
    await _settle()
    assert woke == [1]
    clock.advance(10)
    await asyncio.gather(*tasks)
    assert woke == [1, 2, 3]
    assert clock.monotonic() == 11.5


async def test_autojump_clock_outside_async_with_refuses_to_sleep() -> None:
    clock = FakeClock()
    with pytest.raises(LifecycleError, match="async with"):
        await clock.sleep(1)
    async with clock:
        await clock.sleep(1)
    with pytest.raises(LifecycleError):
        await clock.sleep(1)


async def test_clock_cannot_be_entered_twice() -> None:
    clock = FakeClock()
    async with clock:
        pass
    with pytest.raises(LifecycleError, match="already entered"):
        async with clock:
            pass


@pytest.mark.parametrize("seconds", [-1.0, math.inf, math.nan])
def test_advance_rejects_bad_durations(seconds: float) -> None:
    with pytest.raises(InvalidArgumentError):
        FakeClock(autojump=False).advance(seconds)


async def test_sleep_rejects_nan() -> None:
    with pytest.raises(InvalidArgumentError, match="NaN"):
        await FakeClock(autojump=False).sleep(math.nan)


async def test_exit_while_the_body_is_cancelled_still_stops_the_driver() -> None:
    before = asyncio.all_tasks()
    entered = asyncio.Event()

    async def body() -> None:
        async with FakeClock() as clock:
            entered.set()
            await clock.sleep(math.inf)

    task = asyncio.create_task(body())
    await entered.wait()
    await _settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asyncio.all_tasks() == before
