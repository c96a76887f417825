"""Tests for rh_agents.core.limiter."""

from __future__ import annotations

import asyncio
import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rh_agents.core.errors import InvalidArgumentError, LifecycleError
from rh_agents.core.limiter import Limiter, LimiterStatistics
from rh_agents.testing.clock import FakeClock


async def _settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(5):
        await asyncio.sleep(0)


# --- cancellation safety -------------------------------------------------------------


async def test_waiter_cancelled_as_permit_is_handed_over_does_not_leak_it() -> None:
    limiter = Limiter("llm", max_concurrency=1)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await _settle()
    assert limiter.waiting == 1

    # Hand the permit to the waiter and cancel it before it can resume.
    limiter.release()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter

    assert limiter.in_use == 0
    assert limiter.waiting == 0
    # The permit is really free: a new caller gets it at once.
    await asyncio.wait_for(limiter.acquire(), timeout=1)
    assert limiter.in_use == 1
    limiter.release()


async def test_permit_passes_to_next_waiter_when_its_receiver_is_cancelled() -> None:
    limiter = Limiter("llm", max_concurrency=1)
    await limiter.acquire()
    first = asyncio.create_task(limiter.acquire())
    await _settle()
    second = asyncio.create_task(limiter.acquire())
    await _settle()

    limiter.release()
    first.cancel()
    await asyncio.wait_for(second, timeout=1)

    assert first.cancelled()
    assert limiter.in_use == 1
    assert limiter.waiting == 0
    limiter.release()
    assert limiter.in_use == 0


async def test_cancelled_waiter_leaves_the_queue() -> None:
    limiter = Limiter("llm", max_concurrency=1)
    await limiter.acquire()
    cancelled = asyncio.create_task(limiter.acquire())
    await _settle()
    behind = asyncio.create_task(limiter.acquire())
    await _settle()
    assert limiter.waiting == 2

    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert limiter.waiting == 1

    limiter.release()
    await asyncio.wait_for(behind, timeout=1)
    assert limiter.in_use == 1
    limiter.release()


async def test_cancelled_while_waiting_for_a_rate_token_frees_the_slot() -> None:
    async with FakeClock() as clock:
        limiter = Limiter("llm", max_concurrency=2, rate=1.0, clock=clock)
        await limiter.acquire()  # takes the only token
        blocked = asyncio.create_task(limiter.acquire())  # waits 1 s for a token
        await _settle()
        assert limiter.in_use == 1
        assert limiter.waiting == 1

        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked

        assert limiter.in_use == 1
        assert limiter.waiting == 0
        limiter.release()
        # The cancelled caller's token was given back: the next one starts at t=1.
        await limiter.acquire()
        assert clock.monotonic() == 1.0
        limiter.release()
        assert limiter.in_use == 0


# --- concurrency cap and fairness ----------------------------------------------------


async def test_shared_limiter_caps_concurrency_across_two_groups() -> None:
    limiter = Limiter("provider", max_concurrency=3)
    running = 0
    peak = 0
    gate = asyncio.Event()

    async def call() -> None:
        nonlocal running, peak
        async with limiter:
            running += 1
            peak = max(peak, running)
            await gate.wait()
            await asyncio.sleep(0)
            running -= 1

    async def group(size: int) -> None:
        await asyncio.gather(*(call() for _ in range(size)))

    groups = asyncio.gather(group(5), group(7))
    await _settle()
    assert running == 3
    assert limiter.in_use == 3
    assert limiter.waiting == 9
    gate.set()
    await groups

    assert peak == 3
    stats = limiter.statistics()
    assert stats == LimiterStatistics(
        name="provider",
        max_concurrency=3,
        in_use=0,
        waiting=0,
        peak_in_use=3,
        total_acquired=12,
    )


async def test_nested_groups_share_the_cap() -> None:
    limiter = Limiter("provider", max_concurrency=2)
    running = 0
    peak = 0

    async def leaf() -> None:
        nonlocal running, peak
        async with limiter:
            running += 1
            peak = max(peak, running)
            for _ in range(3):
                await asyncio.sleep(0)
            running -= 1

    async def inner() -> None:
        await asyncio.gather(*(leaf() for _ in range(3)))

    async def outer() -> None:
        await asyncio.gather(leaf(), inner(), inner(), leaf())

    await outer()
    assert peak == 2
    assert limiter.statistics().total_acquired == 8


async def test_waiters_are_served_first_come_first_served() -> None:
    limiter = Limiter("llm", max_concurrency=1)
    order: list[int] = []
    await limiter.acquire()

    async def caller(index: int) -> None:
        async with limiter:
            order.append(index)

    tasks = []
    for index in range(6):
        tasks.append(asyncio.create_task(caller(index)))
        await _settle()
    limiter.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]


async def test_new_caller_does_not_overtake_a_woken_waiter() -> None:
    limiter = Limiter("llm", max_concurrency=1)
    order: list[str] = []
    await limiter.acquire()

    async def caller(label: str) -> None:
        async with limiter:
            order.append(label)

    waiter = asyncio.create_task(caller("waiter"))
    await _settle()
    limiter.release()
    # The slot now belongs to the waiter, even though it has not resumed yet.
    latecomer = asyncio.create_task(caller("latecomer"))
    await asyncio.gather(waiter, latecomer)
    assert order == ["waiter", "latecomer"]


async def test_context_manager_releases_on_error() -> None:
    limiter = Limiter("llm", max_concurrency=1)
    with pytest.raises(RuntimeError):
        async with limiter:
            raise RuntimeError("boom")
    assert limiter.in_use == 0


def test_release_without_acquire_is_a_lifecycle_error() -> None:
    limiter = Limiter("llm", max_concurrency=1)
    with pytest.raises(LifecycleError, match="released more times"):
        limiter.release()


# --- rate limit ----------------------------------------------------------------------


async def test_rate_spaces_acquisitions_with_burst_one() -> None:
    async with FakeClock() as clock:
        limiter = Limiter("llm", max_concurrency=10, rate=2.0, clock=clock)
        starts: list[float] = []

        async def call() -> None:
            async with limiter:
                starts.append(clock.monotonic())

        await asyncio.gather(*(call() for _ in range(5)))
        assert starts == [0.0, 0.5, 1.0, 1.5, 2.0]


async def test_rate_with_burst_starts_a_batch_then_settles_to_rate() -> None:
    async with FakeClock() as clock:
        limiter = Limiter("llm", max_concurrency=3, rate=1.0, clock=clock, burst=3)
        starts: list[float] = []

        async def call() -> None:
            async with limiter:
                starts.append(clock.monotonic())

        await asyncio.gather(*(call() for _ in range(6)))
        assert starts == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]

        # After a quiet period the bucket is full again.
        await clock.sleep(10)
        await asyncio.gather(*(call() for _ in range(3)))
        assert starts[6:] == [13.0, 13.0, 13.0]


async def test_rate_limited_callers_keep_fifo_order() -> None:
    async with FakeClock() as clock:
        limiter = Limiter("llm", max_concurrency=2, rate=1.0, clock=clock)
        order: list[int] = []

        async def call(index: int) -> None:
            async with limiter:
                order.append(index)
                await clock.sleep(0.25)

        tasks = []
        for index in range(5):
            tasks.append(asyncio.create_task(call(index)))
            await _settle()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]
        assert clock.monotonic() == 4.25


@pytest.mark.parametrize("order", ["first_to_last", "last_to_first", "all_at_once"])
async def test_every_cancelled_token_waiter_gives_its_token_back(order: str) -> None:
    # What a cancelled group does to a rate-limited limiter: all its waiters go at once.
    async with FakeClock() as clock:
        limiter = Limiter("api", max_concurrency=5, rate=1.0, clock=clock)
        await limiter.acquire()  # t=0: the only token that is used
        waiters = [asyncio.create_task(limiter.acquire()) for _ in range(4)]
        await _settle()
        assert limiter.waiting == 4  # holding slots, waiting for tokens at t=1, 2, 3, 4
        await clock.sleep(0.1)

        if order == "all_at_once":
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        else:
            for waiter in waiters if order == "first_to_last" else reversed(waiters):
                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
        assert (limiter.in_use, limiter.waiting) == (1, 0)

        limiter.release()
        await limiter.acquire()
        assert clock.monotonic() == 1.0  # the next token after t=0's, not after t=4's
        limiter.release()


async def test_a_cancelled_middle_waiter_never_brings_two_starts_closer_than_the_rate() -> None:
    async with FakeClock() as clock:
        limiter = Limiter("api", max_concurrency=10, rate=1.0, clock=clock)
        starts: dict[str, float] = {}

        async def call(name: str) -> None:
            async with limiter:
                starts[name] = clock.monotonic()

        tasks = {name: asyncio.create_task(call(name)) for name in "abcd"}
        await _settle()  # a at t=0; b, c, d reserved t=1, 2, 3
        tasks["c"].cancel()
        tasks["e"] = asyncio.create_task(call("e"))
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    # d keeps its place; e goes after it rather than into c's freed start next to d.
    assert starts == {"a": 0.0, "b": 1.0, "d": 3.0, "e": 4.0}


Caller = tuple[float, float | None]  # (arrives at, cancelled this long after arriving)

callers = st.lists(
    st.tuples(
        st.integers(0, 16).map(lambda q: q / 4),
        st.none() | st.integers(0, 12).map(lambda q: q / 4),
    ),
    min_size=1,
    max_size=8,
)


async def run_rate_plan(rate: float, burst: int, plan: list[Caller]) -> tuple[list[float], float]:
    """Start times of the callers that got a token, then of one more caller after all."""
    async with FakeClock() as clock:
        limiter = Limiter("api", max_concurrency=16, rate=rate, clock=clock, burst=burst)
        starts: list[float] = []

        async def take() -> None:
            await limiter.acquire()
            starts.append(clock.monotonic())
            limiter.release()

        async def caller(arrives: float, cancel_after: float | None) -> None:
            await clock.sleep(arrives)
            task = asyncio.create_task(take())
            if cancel_after is not None:
                await clock.sleep(cancel_after)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        await asyncio.gather(*(caller(*c) for c in plan))
        assert (limiter.in_use, limiter.waiting) == (0, 0)
        quiet_until = clock.monotonic()
        await limiter.acquire()
        starts.append(clock.monotonic())
        limiter.release()
        return starts, quiet_until


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([0.5, 1.0, 2.0, 4.0]), st.integers(1, 3), callers)
def test_cancellations_never_break_the_rate_nor_lose_tokens(
    rate: float, burst: int, plan: list[Caller]
) -> None:
    starts, quiet_until = asyncio.run(run_rate_plan(rate, burst, plan))
    interval = 1.0 / rate
    # Token bucket conformance: n + burst starts take at least n intervals.
    for i, early in enumerate(starts):
        for j in range(i + 1, len(starts)):
            assert starts[j] - early >= (j - i - (burst - 1)) * interval - 1e-9
    if burst == 1:
        # No token is lost to a cancelled waiter: once nobody waits, the next caller
        # needs to wait only for the last start's interval to pass.
        *taken, fresh = starts
        expected = max(quiet_until, max(taken, default=-math.inf) + interval)
        assert fresh == pytest.approx(expected)


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "", "max_concurrency": 1}, "non-empty name"),
        ({"name": "x", "max_concurrency": 0}, "max_concurrency"),
        ({"name": "x", "max_concurrency": True}, "max_concurrency"),
        ({"name": "x", "max_concurrency": 2.0}, "max_concurrency"),
        ({"name": "x", "max_concurrency": 1, "rate": 0}, "rate"),
        ({"name": "x", "max_concurrency": 1, "rate": float("inf")}, "rate"),
        ({"name": "x", "max_concurrency": 1, "rate": float("nan")}, "rate"),
        ({"name": "x", "max_concurrency": 2, "rate": 1.0, "burst": 3}, "burst"),
        ({"name": "x", "max_concurrency": 2, "rate": 1.0, "burst": 0}, "burst"),
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        Limiter(**kwargs)  # type: ignore[arg-type]
