"""Test helpers for users of rh_agents: a fake clock and telemetry capture.

``rh_agents.testing`` is also a pytest plugin (registered through the ``pytest11`` entry
point) providing the ``rh_telemetry`` and ``fake_clock`` fixtures.
"""

from __future__ import annotations

from rh_agents.testing._capture import TelemetryCapture, capture_telemetry
from rh_agents.testing.clock import FakeClock

__all__ = ["FakeClock", "TelemetryCapture", "capture_telemetry"]
