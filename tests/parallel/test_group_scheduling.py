"""How a group schedules its items: the default worker count and priorities."""

from __future__ import annotations

import asyncio

import pytest

from rh_agents import ExecutionState
from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.parallel import DEFAULT_MAX_WORKERS
from rh_agents.testing import TelemetryCapture


async def _run_all_at_once(state: ExecutionState, n: int, expected_together: int) -> int:
    """Run ``n`` items that each wait until ``expected_together`` of them are running;
    returns the group's peak concurrency."""
    running = 0
    all_in = asyncio.Event()

    async def item() -> None:
        nonlocal running
        running += 1
        if running == expected_together:
            all_in.set()
        await all_in.wait()

    async with state.parallel(max_workers=None, name="fan") as p:
        for _ in range(n):
            p.add(item)
        await p.gather()
        return p.statistics().peak_in_flight


async def test_max_workers_none_runs_as_many_workers_as_items(
    rh_telemetry: TelemetryCapture,
) -> None:
    state = ExecutionState()
    assert await _run_all_at_once(state, 7, expected_together=7) == 7
    group = rh_telemetry.one("parallel fan")
    assert (group.attributes or {})["rh_agents.parallel.max_workers"] == 7
    assert rh_telemetry.span_tree() == "parallel fan [outcome='completed']"
    rh_telemetry.assert_metric("rh_agents_parallel_max_workers", 7, group="fan")


async def test_max_workers_none_is_capped_by_the_documented_default() -> None:
    n = DEFAULT_MAX_WORKERS + 8
    peak = await _run_all_at_once(ExecutionState(), n, expected_together=DEFAULT_MAX_WORKERS)
    assert peak == DEFAULT_MAX_WORKERS == 32


async def test_max_workers_none_with_no_items_completes() -> None:
    state = ExecutionState()
    async with state.parallel(max_workers=None) as p:
        assert await p.gather() == []
    assert p.group.max_workers == 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, "4"])
def test_an_invalid_max_workers_names_none_as_the_alternative(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match=r"or None for as many workers as items"):
        ExecutionState().parallel(max_workers=bad)  # type: ignore[arg-type]
