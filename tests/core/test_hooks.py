"""The two registrations the core offers the layers above it: the telemetry a state
uses when given none, and how the trace context of the current span is captured."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rh_agents import ExecutionState
from rh_agents.core import hooks


@pytest.fixture
def registrations() -> Iterator[None]:
    """Put back what ``import rh_agents`` registered."""
    factory, inject = hooks._default_factory, hooks._inject_trace_context
    yield
    hooks.set_default_telemetry_factory(factory)
    hooks.set_trace_propagation(inject)


class Recorded:
    instrumentation = hooks.NOOP


def test_a_state_without_telemetry_uses_the_registered_default(registrations: None) -> None:
    made: list[Any] = []

    def factory() -> Any:
        made.append(Recorded())
        return made[-1]

    hooks.set_default_telemetry_factory(factory)
    assert ExecutionState().telemetry is made[0]
    assert ExecutionState(telemetry=False).telemetry is None
    given = Recorded()
    assert ExecutionState(telemetry=given).telemetry is given
    assert len(made) == 1  # called only for states that need the default
    hooks.set_default_telemetry_factory(None)
    assert ExecutionState().telemetry is None


def test_the_trace_carrier_comes_from_the_registered_propagation(registrations: None) -> None:
    hooks.set_trace_propagation(lambda: {"traceparent": "00-abc-def-01"})
    assert hooks.trace_carrier() == {"traceparent": "00-abc-def-01"}
    hooks.set_trace_propagation(None)
    assert hooks.trace_carrier() == {}
