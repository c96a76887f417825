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
from rh_agents.core.errors import CircuitOpenError, InvalidArgumentError, LifecycleError
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
        "A guard() of circuit breaker 'api' was entered twice. Call breaker.guard() once per call."
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


def test_a_permit_shows_what_it_is_and_whether_it_was_handed_back() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("api", failure_threshold=1, recovery_timeout=1, clock=clock)
    call = breaker.admit()
    assert call.settled is False
    assert repr(call) == "<CircuitPermit 'api' call open>"
    breaker.record_failure(call)
    assert call.settled is True
    assert repr(call) == "<CircuitPermit 'api' call settled>"
    clock.advance(1)
    probe = breaker.admit()
    assert repr(probe) == "<CircuitPermit 'api' probe open>"


def test_a_breaker_recovers_again_after_a_second_trip() -> None:
    """After a probe closed the circuit, the next trip admits a new probe."""
    clock = FakeClock()
    breaker = CircuitBreaker("api", failure_threshold=1, recovery_timeout=1, clock=clock)
    for _ in range(2):
        breaker.record_failure(breaker.admit())
        assert breaker.state is CircuitState.OPEN
        clock.advance(1)
        probe = breaker.admit()
        assert probe.is_probe
        breaker.record_success(probe)
        assert breaker.state is CircuitState.CLOSED
    assert breaker.trip_count == 2


def test_a_late_success_after_the_circuit_opened_changes_nothing() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("api", failure_threshold=1, recovery_timeout=1, clock=clock)
    breaker.record_failure(breaker.admit())
    clock.advance(1)
    breaker.record_success(breaker.admit())  # closed again, after three transitions
    slow, failing = breaker.admit(), breaker.admit()
    breaker.record_failure(failing)
    breaker.record_success(slow)  # admitted before the trip: stale
    assert (breaker.state, breaker.failure_count) == (CircuitState.OPEN, 1)


@pytest.mark.parametrize("operation", ["record_success", "record_failure", "release"])
def test_a_permit_handed_back_twice_names_the_operation(operation: str) -> None:
    breaker = CircuitBreaker("api", clock=FakeClock())
    permit = breaker.admit()
    breaker.release(permit)
    with pytest.raises(LifecycleError) as raised:
        getattr(breaker, operation)(permit)
    assert str(raised.value) == (
        f"{operation}() was called for a permit of circuit breaker 'api' that was already "
        "handed back. Call exactly one of record_success, record_failure or release per "
        "admitted call."
    )


@pytest.mark.parametrize(
    ("asked", "wanted"),
    [
        ({"failure_threshold": 4}, "failure_threshold=4, recovery_timeout=60.0"),
        ({"recovery_timeout": 5}, "failure_threshold=3, recovery_timeout=5"),
    ],
)
def test_the_registry_refuses_other_settings_for_a_shared_breaker(
    asked: dict[str, float], wanted: str
) -> None:
    registry = CircuitBreakerRegistry()
    registry.get("openai", failure_threshold=3)
    with pytest.raises(InvalidArgumentError) as raised:
        registry.get("openai", **asked)  # type: ignore[arg-type]
    assert str(raised.value) == (
        "Circuit breaker 'openai' already exists with failure_threshold=3, "
        f"recovery_timeout=60.0; this call asks for {wanted}. A breaker shared by name has "
        "one set of settings (its dependency has one health state): pass the same "
        "settings, or none to share the existing breaker, or use another name for a "
        "breaker of its own."
    )
    assert registry.get("openai", failure_threshold=3, recovery_timeout=60).failure_threshold == 3


def test_raising_listeners_and_hooks_are_logged_by_name(caplog: pytest.LogCaptureFixture) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("listener bug")

    registry = CircuitBreakerRegistry()
    registry.on_create(boom)
    breaker = registry.get("api", failure_threshold=1, clock=FakeClock())
    breaker.add_listener(boom)
    breaker.add_reject_listener(boom)
    breaker.record_failure(breaker.admit())
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    assert [r.getMessage() for r in caplog.records] == [
        "An on_create hook of the circuit breaker registry raised for 'api'; it was ignored.",
        "A state listener of circuit breaker 'api' raised on closed -> open; it was ignored.",
        "A reject listener of circuit breaker 'api' raised; it was ignored.",
    ]
    assert all(r.name == "rh_agents.circuit_breaker" for r in caplog.records)


def test_the_registry_lists_its_breakers_by_name() -> None:
    registry = CircuitBreakerRegistry()
    registry.get("search")
    registry.get("openai")
    assert repr(registry) == "<CircuitBreakerRegistry ['openai', 'search']>"
    assert [b.name for b in registry] == ["search", "openai"] and len(registry) == 2
