"""pytest fixtures for testing code built on rh_agents (auto-registered via ``pytest11``).

* ``rh_telemetry``: a :class:`~rh_agents.testing.TelemetryCapture`; ExecutionStates
  created during the test record their spans and metrics into it.
* ``fake_clock``: a fresh :class:`~rh_agents.testing.FakeClock` (virtual time) to pass
  as ``ExecutionState(clock=...)``.

The plugin imports rh_agents only when a fixture is used, so it costs nothing at pytest
start-up (and does not hide module-level lines from coverage tools).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from rh_agents.testing._capture import TelemetryCapture
    from rh_agents.testing.clock import FakeClock

__all__ = ["fake_clock", "rh_telemetry"]


@pytest.fixture
def rh_telemetry() -> Iterator[TelemetryCapture]:
    """Capture spans and metrics of the ExecutionStates created in this test."""
    from rh_agents.testing._capture import capture_telemetry

    with capture_telemetry() as capture:
        yield capture


@pytest.fixture
def fake_clock(request: pytest.FixtureRequest) -> FakeClock:
    """A new :class:`~rh_agents.testing.FakeClock` at virtual time 0, with autojump.

    The fixture is synchronous (it works with any async test plugin), so the test
    enters the clock itself: inside ``async with fake_clock:`` virtual time jumps to
    the next deadline whenever the event loop is idle. Pass other arguments with
    indirect parametrization, e.g. a clock moved by hand with ``advance()``::

        async def test_backoff(fake_clock):
            async with fake_clock:
                state = ExecutionState(clock=fake_clock)
                await ExecutionEvent(actor=flaky_tool)(query, {}, state)
            assert fake_clock.sleeps == [0.5, 1.0]

        @pytest.mark.parametrize("fake_clock", [{"autojump": False}], indirect=True)
        async def test_by_hand(fake_clock): ...
    """
    from rh_agents.testing.clock import FakeClock

    options: dict[str, Any] = dict(getattr(request, "param", None) or {})
    return FakeClock(**options)
