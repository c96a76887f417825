"""The pytest plugin of rh_agents.testing: the fixtures its docstring promises."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

import rh_agents.testing
from rh_agents import ExecutionEvent, ExecutionState, RetryConfig, Tool
from rh_agents.core.errors import LifecycleError
from rh_agents.testing import FakeClock, TelemetryCapture, pytest_plugin


class Q(BaseModel):
    text: str


def test_the_plugin_provides_the_fixtures_the_package_promises() -> None:
    doc = rh_agents.testing.__doc__ or ""
    for name in ("rh_telemetry", "fake_clock"):
        assert f"``{name}``" in doc
        assert name in pytest_plugin.__all__
        assert callable(getattr(pytest_plugin, name))


async def test_fake_clock_is_a_fresh_autojump_clock_entered_by_the_test(
    fake_clock: FakeClock, rh_telemetry: TelemetryCapture
) -> None:
    assert isinstance(fake_clock, FakeClock)
    assert fake_clock.autojump and fake_clock.monotonic() == 0.0 and fake_clock.sleeps == []
    with pytest.raises(LifecycleError, match="outside its `async with` block"):
        await fake_clock.sleep(1)
    calls = 0

    async def flaky(data: Q, ctx: object, state: object) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TimeoutError("slow")
        return "ok"

    tool = Tool(
        name="flaky",
        input_model=Q,
        handler=flaky,
        retry_config=RetryConfig(max_attempts=3, initial_delay=30.0, jitter=False),
    )
    started = time.monotonic()
    async with fake_clock:
        state = ExecutionState(clock=fake_clock)
        result = await ExecutionEvent(actor=tool)(Q(text="x"), {}, state)
    assert result.ok
    assert fake_clock.sleeps == [1, 30.0, 60.0]  # the rejected sleep is recorded too
    assert fake_clock.monotonic() == 90.0
    assert time.monotonic() - started < 5  # 90 s of backoff took no real time
    rh_telemetry.assert_metric("rh_agents_retries_total", 2, name="flaky")


@pytest.mark.parametrize("fake_clock", [{"autojump": False, "start": 100.0}], indirect=True)
async def test_fake_clock_takes_arguments_by_indirect_parametrization(
    fake_clock: FakeClock,
) -> None:
    assert not fake_clock.autojump and fake_clock.monotonic() == 100.0
    task = asyncio.create_task(fake_clock.sleep(5))
    await asyncio.sleep(0)
    assert fake_clock.pending == 1
    fake_clock.advance(5)
    await task
    assert fake_clock.monotonic() == 105.0


def test_each_test_gets_its_own_clock(fake_clock: FakeClock) -> None:
    # the previous tests moved their clocks; this one starts at 0 again
    assert fake_clock.monotonic() == 0.0 and fake_clock.sleeps == []
