"""Small public promises of the circuit breaker and the limiter that users rely on.

A mutation run of ``circuit_breaker.py`` and ``limiter.py`` showed these could change
without a failing test: the state values written to configuration and dashboards, the
defaults, a permit settled inside ``guard()``, the limiter's read-only properties and
its statistics of a fresh limiter.
"""

from __future__ import annotations

import dataclasses

import pytest

from rh_agents.core.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerRegistry,
    CircuitBreakerStatistics,
    CircuitState,
)
from rh_agents.core.errors import CircuitOpenError, LifecycleError
from rh_agents.core.limiter import Limiter, LimiterStatistics
from rh_agents.testing.clock import FakeClock


def test_circuit_state_values_and_gauge_numbers() -> None:
    assert [(s.value, s.gauge_value) for s in CircuitState] == [
        ("closed", 0),
        ("half_open", 1),
        ("open", 2),
    ]
    assert CircuitState("half_open") is CircuitState.HALF_OPEN


def test_breaker_defaults_are_five_failures_and_sixty_seconds() -> None:
    clock = FakeClock()
    for breaker in (
        CircuitBreaker("direct", clock=clock),
        CircuitBreakerRegistry().get("shared", clock=clock),
    ):
        assert (breaker.failure_threshold, breaker.recovery_timeout) == (5, 60.0)
        for _ in range(4):
            breaker.record_failure(breaker.admit())
        assert breaker.state is CircuitState.CLOSED
        breaker.record_failure(breaker.admit())
        assert breaker.state is CircuitState.OPEN
        clock.advance(59.9)
        with pytest.raises(CircuitOpenError) as rejected:
            breaker.admit()
        assert rejected.value.retry_after == pytest.approx(0.1)
        clock.advance(0.1)
        assert breaker.state is CircuitState.HALF_OPEN


@pytest.mark.parametrize("settle", ["record_success", "record_failure", "release"])
async def test_a_permit_settled_inside_guard_is_left_as_settled(settle: str) -> None:
    """The block may decide the outcome itself; leaving the guard then records nothing
    more (no LifecycleError, no second count)."""
    breaker = CircuitBreaker("api", failure_threshold=1, clock=FakeClock())
    async with breaker.guard() as permit:
        getattr(breaker, settle)(permit)
        assert permit.settled
    expected = CircuitState.OPEN if settle == "record_failure" else CircuitState.CLOSED
    assert breaker.state is expected
    assert breaker.failure_count == (1 if settle == "record_failure" else 0)


async def test_a_permit_settled_inside_a_failing_guard_is_not_counted_twice() -> None:
    breaker = CircuitBreaker("api", failure_threshold=2, clock=FakeClock())
    with pytest.raises(ValueError):
        async with breaker.guard() as permit:
            breaker.release(permit)
            raise ValueError("not the dependency's fault")
    assert breaker.failure_count == 0


async def test_a_guard_is_entered_once() -> None:
    breaker = CircuitBreaker("api", clock=FakeClock())
    guard = breaker.guard()
    async with guard:
        with pytest.raises(LifecycleError) as raised:
            await guard.__aenter__()
    assert str(raised.value) == (
        "A guard() of circuit breaker 'api' was entered twice. Call breaker.guard() once "
        "per call."
    )


def test_breaker_properties_and_repr() -> None:
    breaker = CircuitBreaker("api", failure_threshold=3, recovery_timeout=7, clock=FakeClock())
    assert (breaker.name, breaker.failure_threshold, breaker.recovery_timeout) == ("api", 3, 7.0)
    assert isinstance(breaker.recovery_timeout, float)
    breaker.record_failure(breaker.admit())
    assert repr(breaker) == "<CircuitBreaker 'api' state=closed failures=1/3>"
    assert breaker.statistics() == CircuitBreakerStatistics(
        name="api", state=CircuitState.CLOSED, failure_count=1, trip_count=0, rejected_count=0
    )


def test_a_fresh_limiter_reports_its_settings_and_empty_counters() -> None:
    limiter = Limiter("openai", max_concurrency=4, rate=2, burst=3)
    assert (limiter.name, limiter.max_concurrency, limiter.rate, limiter.burst) == (
        "openai",
        4,
        2.0,
        3,
    )
    assert isinstance(limiter.rate, float)
    assert Limiter("plain", 1).rate is None and Limiter("plain", 1).burst == 1
    assert limiter.statistics() == LimiterStatistics(
        name="openai", max_concurrency=4, in_use=0, waiting=0, peak_in_use=0, total_acquired=0
    )
    assert repr(limiter) == "<Limiter 'openai' in_use=0/4 waiting=0>"


async def test_limiter_statistics_count_and_are_frozen() -> None:
    limiter = Limiter("db", max_concurrency=2)
    async with limiter:
        async with limiter:
            stats = limiter.statistics()
    assert (stats.in_use, stats.peak_in_use, stats.total_acquired) == (2, 2, 2)
    after = limiter.statistics()
    assert (after.in_use, after.peak_in_use, after.total_acquired) == (0, 2, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.in_use = 5  # type: ignore[misc]


@pytest.mark.parametrize("burst", [1, 4])
def test_burst_up_to_max_concurrency_is_accepted(burst: int) -> None:
    assert Limiter("x", max_concurrency=4, rate=1.0, burst=burst).burst == burst
