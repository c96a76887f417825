"""The real clock: what every wait in rh_agents uses unless a test injects a fake one."""

from __future__ import annotations

import time

from rh_agents.core.clock import SYSTEM_CLOCK, Clock, SystemClock


async def test_the_system_clock_is_monotonic_time_and_sleeps_for_real() -> None:
    assert isinstance(SYSTEM_CLOCK, SystemClock) and isinstance(SYSTEM_CLOCK, Clock)
    before, wall_before = SYSTEM_CLOCK.monotonic(), time.monotonic()
    await SYSTEM_CLOCK.sleep(0.02)
    # lower bounds only: a sleep never ends early, however busy the machine
    assert SYSTEM_CLOCK.monotonic() - before >= 0.02
    assert time.monotonic() - wall_before >= 0.02
    assert abs(SYSTEM_CLOCK.monotonic() - time.monotonic()) < 1.0
