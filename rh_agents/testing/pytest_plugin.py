"""pytest fixtures for testing code built on rh_agents (auto-registered via ``pytest11``).

* ``rh_telemetry``: a :class:`~rh_agents.testing.TelemetryCapture`; ExecutionStates
  created during the test record their spans and metrics into it.

The plugin imports rh_agents only when a fixture is used, so it costs nothing at pytest
start-up (and does not hide module-level lines from coverage tools).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from rh_agents.testing._capture import TelemetryCapture


@pytest.fixture
def rh_telemetry() -> Iterator[TelemetryCapture]:
    """Capture spans and metrics of the ExecutionStates created in this test."""
    from rh_agents.testing._capture import capture_telemetry

    with capture_telemetry() as capture:
        yield capture
