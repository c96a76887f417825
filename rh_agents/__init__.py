"""rh_agents: an OpenTelemetry-instrumented execution core for agent workflows."""

from __future__ import annotations

__version__ = "0.1.0"
