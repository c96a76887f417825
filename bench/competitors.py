"""The same job, "run these factories with at most W at once and keep the results", done
by rh_agents and by the usual alternatives. aiometer and anyio are optional: when they are
not installed the benchmarks report "not installed" for them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bench._common import installed
from rh_agents import ExecutionState

Factory = Callable[[], Awaitable[Any]]

HAVE_AIOMETER = installed("aiometer")
HAVE_ANYIO = installed("anyio")


async def rh_group(
    state: ExecutionState, factories: Sequence[Factory], max_workers: int, name: str = "bench"
) -> list[Any]:
    """rh_agents: one parallel group (results are ExecutionResult objects)."""
    async with state.parallel(max_workers=max_workers, name=name) as p:
        for factory in factories:
            p.add(factory)
        results = await p.gather()
    return results


async def raw_gather(factories: Sequence[Factory], max_workers: int) -> list[Any]:
    """Plain asyncio: a Semaphore around each factory, one task each through gather."""
    semaphore = asyncio.Semaphore(max_workers)

    async def one(factory: Factory) -> Any:
        async with semaphore:
            return await factory()

    return await asyncio.gather(*[one(factory) for factory in factories])


async def aiometer_run_all(factories: Sequence[Factory], max_workers: int) -> list[Any]:
    """aiometer.run_all with max_at_once."""
    import aiometer

    return list(await aiometer.run_all(list(factories), max_at_once=max_workers))


async def anyio_limited(factories: Sequence[Factory], max_workers: int) -> list[Any]:
    """An anyio task group, one task per factory, limited by a CapacityLimiter."""
    import anyio

    limiter = anyio.CapacityLimiter(max_workers)
    results: list[Any] = [None] * len(factories)

    async def one(index: int, factory: Factory) -> None:
        async with limiter:
            results[index] = await factory()

    async with anyio.create_task_group() as group:
        for index, factory in enumerate(factories):
            group.start_soon(one, index, factory)
    return results
