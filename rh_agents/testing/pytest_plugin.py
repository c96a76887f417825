"""pytest fixtures for testing code built on rh_agents (auto-registered via ``pytest11``).

* ``rh_telemetry``: a :class:`~rh_agents.testing.TelemetryCapture`; ExecutionStates
  created during the test record their spans and metrics into it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rh_agents.testing._capture import TelemetryCapture, capture_telemetry


@pytest.fixture
def rh_telemetry() -> Iterator[TelemetryCapture]:
    """Capture spans and metrics of the ExecutionStates created in this test."""
    with capture_telemetry() as capture:
        yield capture
