"""A limiter permit held by an item is lent to the nested groups it waits for, and taken
back when they end (rh_agents.core.parallel.lending).

The deadlock tests (test_parallel_resilience.py) show that lending happens; these pin
its bookkeeping, counted with a one-permit limiter so every permit is visible: who
holds it during and after each nested group, that only the same limiter's permit is
lent, that two nested groups at once return it only after the last, and that an item
being cancelled does not wait to take it back.
"""

from __future__ import annotations

import asyncio

from rh_agents import ExecutionState, Limiter


async def test_the_permit_goes_to_the_nested_group_and_comes_back() -> None:
    state = ExecutionState(telemetry=False)
    limiter = Limiter("db", 1)
    seen: dict[str, int] = {}

    async def leaf() -> None:
        seen["leaf"] = limiter.in_use  # the lent permit, taken by this leaf

    async def item() -> None:
        seen["before"] = limiter.in_use
        async with state.parallel(max_workers=2, limiter=limiter, name="inner") as q:
            q.add(leaf)
            q.add(leaf)
        seen["after"] = limiter.in_use  # taken back: the item runs under it again

    async with asyncio.timeout(10):
        async with state.parallel(max_workers=1, limiter=limiter, name="outer") as p:
            p.add(item)
    assert p.results[0].ok, p.results[0].error_message
    assert seen == {"before": 1, "leaf": 1, "after": 1}
    stats = limiter.statistics()
    # the item's permit, one per leaf, the item's again
    assert (stats.in_use, stats.total_acquired) == (0, 4)


async def test_only_the_same_limiters_permit_is_lent() -> None:
    state = ExecutionState(telemetry=False)
    outer_limiter, inner_limiter = Limiter("api", 1), Limiter("db", 1)
    seen: list[tuple[int, int]] = []

    async def leaf() -> None:
        seen.append((outer_limiter.in_use, inner_limiter.in_use))

    async def item() -> None:
        async with state.parallel(max_workers=1, limiter=inner_limiter, name="inner") as q:
            q.add(leaf)

    async with asyncio.timeout(10):
        async with state.parallel(max_workers=1, limiter=outer_limiter, name="outer") as p:
            p.add(item)
    assert p.results[0].ok, p.results[0].error_message
    assert seen == [(1, 1)]  # the item keeps the api permit while its db group runs
    assert outer_limiter.statistics().total_acquired == 1


async def test_two_nested_groups_at_once_return_the_permit_after_the_last() -> None:
    state = ExecutionState(telemetry=False)
    limiter = Limiter("db", 2)
    second_started = asyncio.Event()
    first_done = asyncio.Event()
    release_second = asyncio.Event()
    seen: dict[str, int] = {}

    async def quick() -> None:
        await second_started.wait()  # both nested groups hold the lent permit now

    async def slow() -> None:
        second_started.set()
        await first_done.wait()
        seen["between"] = limiter.in_use  # this leaf only: the item's permit is still lent
        await release_second.wait()

    async def group(name: str, work: object) -> None:
        async with state.parallel(max_workers=1, limiter=limiter, name=name) as q:
            q.add(work)  # type: ignore[arg-type]

    async def first() -> None:
        await group("first", quick)
        first_done.set()
        await asyncio.sleep(0)
        release_second.set()

    async def item() -> None:
        await asyncio.gather(first(), group("second", slow))
        seen["after"] = limiter.in_use

    async with asyncio.timeout(10):
        async with state.parallel(max_workers=1, limiter=limiter, name="outer") as p:
            p.add(item)
    assert p.results[0].ok, p.results[0].error_message
    assert seen == {"between": 1, "after": 1}
    assert limiter.statistics().in_use == 0


async def test_a_cancelled_item_does_not_take_its_permit_back() -> None:
    state = ExecutionState(telemetry=False)
    limiter = Limiter("db", 1)
    leaf_started = asyncio.Event()

    async def stuck() -> None:
        leaf_started.set()
        await asyncio.Event().wait()

    async def item() -> None:
        async with state.parallel(max_workers=1, limiter=limiter, name="inner") as q:
            q.add(stuck)

    async def run() -> None:
        async with state.parallel(max_workers=1, limiter=limiter, name="outer") as p:
            p.add(item)

    task = asyncio.create_task(run())
    await asyncio.wait_for(leaf_started.wait(), timeout=10)
    task.cancel()
    async with asyncio.timeout(10):
        try:
            await task
        except asyncio.CancelledError:
            pass
    stats = limiter.statistics()
    # the item's permit and the leaf's; the cancelled item never waited for a third
    assert (stats.in_use, stats.waiting, stats.total_acquired) == (0, 0, 2)
