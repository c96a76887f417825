"""Tests for rh_agents.core.circuit_breaker."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from rh_agents.core.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerRegistry,
    CircuitBreakerStatistics,
    CircuitPermit,
    CircuitState,
)
from rh_agents.core.errors import CircuitOpenError, InvalidArgumentError, LifecycleError
from rh_agents.testing.clock import FakeClock


def _breaker(threshold: int = 3, timeout: float = 10.0) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock(autojump=False)
    return CircuitBreaker("llm", threshold, timeout, clock=clock), clock


def _state(breaker: CircuitBreaker) -> CircuitState:
    """Read the state through a call, so mypy does not narrow it across transitions."""
    return breaker.state


def _fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.record_failure(breaker.admit())


# --- transitions ---------------------------------------------------------------------


def test_gauge_values() -> None:
    assert [s.gauge_value for s in CircuitState] == [0, 1, 2]
    assert CircuitState.HALF_OPEN.value == "half_open"


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker, _ = _breaker(threshold=3)
    _fail(breaker, 2)
    assert _state(breaker) is CircuitState.CLOSED
    assert breaker.failure_count == 2
    _fail(breaker)
    assert _state(breaker) is CircuitState.OPEN
    assert breaker.trip_count == 1


def test_success_in_closed_resets_the_failure_count() -> None:
    breaker, _ = _breaker(threshold=3)
    _fail(breaker, 2)
    breaker.record_success(breaker.admit())
    assert breaker.failure_count == 0
    _fail(breaker, 2)
    assert _state(breaker) is CircuitState.CLOSED


def test_open_circuit_rejects_with_time_until_probe() -> None:
    breaker, clock = _breaker(threshold=1, timeout=10.0)
    _fail(breaker)
    clock.advance(4)
    with pytest.raises(CircuitOpenError, match="Circuit breaker 'llm'") as caught:
        breaker.admit()
    assert caught.value.breaker == "llm"
    assert caught.value.retry_after == pytest.approx(6.0)
    assert breaker.rejected_count == 1


def test_half_open_after_recovery_timeout_and_probe_success_closes() -> None:
    breaker, clock = _breaker(threshold=2, timeout=10.0)
    _fail(breaker, 2)
    clock.advance(9.9)
    assert _state(breaker) is CircuitState.OPEN
    clock.advance(0.1)
    assert _state(breaker) is CircuitState.HALF_OPEN

    probe = breaker.admit()
    assert probe.is_probe
    breaker.record_success(probe)
    assert _state(breaker) is CircuitState.CLOSED
    assert breaker.failure_count == 0
    # A fresh threshold applies again.
    _fail(breaker)
    assert _state(breaker) is CircuitState.CLOSED


def test_probe_failure_reopens_and_restarts_the_cooldown() -> None:
    breaker, clock = _breaker(threshold=1, timeout=10.0)
    _fail(breaker)
    clock.advance(10)
    breaker.record_failure(breaker.admit())
    assert _state(breaker) is CircuitState.OPEN
    assert breaker.trip_count == 2
    clock.advance(9)
    with pytest.raises(CircuitOpenError) as caught:
        breaker.admit()
    assert caught.value.retry_after == pytest.approx(1.0)
    clock.advance(1)
    assert _state(breaker) is CircuitState.HALF_OPEN


def test_half_open_admits_one_probe_and_release_frees_the_slot() -> None:
    breaker, _ = _breaker(threshold=1, timeout=0.0)
    _fail(breaker)
    probe = breaker.admit()
    with pytest.raises(CircuitOpenError) as caught:
        breaker.admit()
    assert caught.value.retry_after is None

    breaker.release(probe)
    assert _state(breaker) is CircuitState.HALF_OPEN
    assert breaker.trip_count == 1
    second_probe = breaker.admit()
    assert second_probe.is_probe
    breaker.record_success(second_probe)
    assert _state(breaker) is CircuitState.CLOSED


def test_outcome_of_a_call_admitted_before_the_trip_is_ignored() -> None:
    breaker, clock = _breaker(threshold=2, timeout=10.0)
    slow_ok = breaker.admit()
    slow_failing = breaker.admit()
    _fail(breaker, 2)
    assert _state(breaker) is CircuitState.OPEN

    clock.advance(10)
    probe = breaker.admit()
    breaker.record_success(slow_ok)  # must not close the circuit: only the probe may
    assert _state(breaker) is CircuitState.HALF_OPEN
    breaker.record_success(probe)
    breaker.record_failure(slow_failing)  # from the previous closed period
    assert breaker.failure_count == 0
    assert breaker.trip_count == 1


def test_a_permit_is_handed_back_exactly_once() -> None:
    breaker, _ = _breaker()
    permit = breaker.admit()
    breaker.record_success(permit)
    assert permit.settled
    for hand_back in (breaker.record_success, breaker.record_failure, breaker.release):
        with pytest.raises(LifecycleError, match="already handed back"):
            hand_back(permit)


def test_a_permit_from_another_breaker_is_refused() -> None:
    breaker, _ = _breaker()
    other = CircuitBreaker("search")
    with pytest.raises(LifecycleError, match="issued by circuit breaker 'search'"):
        breaker.record_failure(other.admit())


def test_statistics_is_a_frozen_snapshot() -> None:
    breaker, _ = _breaker(threshold=1)
    _fail(breaker)
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    stats = breaker.statistics()
    assert stats == CircuitBreakerStatistics(
        name="llm", state=CircuitState.OPEN, failure_count=1, trip_count=1, rejected_count=1
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.trip_count = 5  # type: ignore[misc]


# --- listeners -----------------------------------------------------------------------


def test_listeners_see_every_transition_and_rejection() -> None:
    breaker, clock = _breaker(threshold=1, timeout=5.0)
    transitions: list[tuple[CircuitState, CircuitState]] = []
    rejections: list[str] = []
    breaker.add_listener(lambda b, old, new: transitions.append((old, new)))
    breaker.add_reject_listener(lambda b: rejections.append(b.name))

    _fail(breaker)
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    clock.advance(5)
    breaker.record_success(breaker.admit())

    assert transitions == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]
    assert rejections == ["llm"]


def test_a_raising_listener_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    breaker, _ = _breaker(threshold=1)
    seen: list[CircuitState] = []

    def broken(*_: object) -> None:
        raise RuntimeError("telemetry is down")

    breaker.add_listener(broken)
    breaker.add_listener(lambda b, old, new: seen.append(new))
    breaker.add_reject_listener(broken)
    with caplog.at_level(logging.ERROR, logger="rh_agents.circuit_breaker"):
        _fail(breaker)
        with pytest.raises(CircuitOpenError):
            breaker.admit()
    assert _state(breaker) is CircuitState.OPEN
    assert seen == [CircuitState.OPEN]
    assert len(caplog.records) == 2
    assert all(record.exc_info for record in caplog.records)


# --- guard ---------------------------------------------------------------------------


async def test_guard_records_success_and_failure() -> None:
    breaker, _ = _breaker(threshold=2)
    with pytest.raises(ValueError):
        async with breaker.guard():
            raise ValueError("bad gateway")
    assert breaker.failure_count == 1
    async with breaker.guard() as permit:
        assert isinstance(permit, CircuitPermit)
    assert breaker.failure_count == 0


async def test_guard_releases_the_probe_when_cancelled() -> None:
    breaker, _ = _breaker(threshold=1, timeout=0.0)
    _fail(breaker)
    entered = asyncio.Event()

    async def probe() -> None:
        async with breaker.guard():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(probe())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _state(breaker) is CircuitState.HALF_OPEN
    assert breaker.trip_count == 1
    breaker.release(breaker.admit())  # the probe slot is free again


async def test_guard_rejects_when_open() -> None:
    breaker, _ = _breaker(threshold=1)
    _fail(breaker)
    ran = False
    with pytest.raises(CircuitOpenError):
        async with breaker.guard():
            ran = True
    assert not ran


async def test_fifty_concurrent_callers_in_half_open_get_exactly_one_probe() -> None:
    breaker, clock = _breaker(threshold=1, timeout=30.0)
    _fail(breaker)
    clock.advance(30)
    release_probe = asyncio.Event()
    all_started = asyncio.Event()
    probes = 0
    finished = 0

    async def caller() -> str:
        nonlocal probes, finished
        try:
            async with breaker.guard() as permit:
                probes += 1
                assert permit.is_probe
                await release_probe.wait()
                return "probed"
        except CircuitOpenError:
            return "rejected"
        finally:
            finished += 1
            if finished == 49:
                all_started.set()

    tasks = [asyncio.create_task(caller()) for _ in range(50)]
    await all_started.wait()  # 49 callers were rejected while the probe runs
    assert probes == 1
    release_probe.set()
    outcomes = await asyncio.gather(*tasks)
    assert outcomes.count("probed") == 1
    assert outcomes.count("rejected") == 49
    assert breaker.rejected_count == 49
    assert _state(breaker) is CircuitState.CLOSED


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("",), "non-empty name"),
        (("  ",), "non-empty name"),
        (("x", 0), "failure_threshold"),
        (("x", 2.5), "failure_threshold"),
        (("x", True), "failure_threshold"),
        (("x", 1, -1.0), "recovery_timeout"),
        (("x", 1, float("inf")), "recovery_timeout"),
        (("x", 1, float("nan")), "recovery_timeout"),
    ],
)
def test_invalid_settings_are_rejected(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        CircuitBreaker(*args)  # type: ignore[arg-type]


# --- registry ------------------------------------------------------------------------


def test_registry_shares_one_breaker_per_name_and_keeps_its_settings() -> None:
    registry = CircuitBreakerRegistry()
    created: list[str] = []
    registry.on_create(lambda b: created.append(b.name))

    llm = registry.get("llm", failure_threshold=2, recovery_timeout=5.0)
    with pytest.raises(InvalidArgumentError, match="already exists with failure_threshold=2"):
        registry.get("llm", failure_threshold=9, recovery_timeout=99.0)
    again = registry.get("llm")
    search = registry.get("search")

    assert again is llm
    assert llm.failure_threshold == 2
    assert llm.recovery_timeout == 5.0
    assert created == ["llm", "search"]
    assert "llm" in registry
    assert llm in registry
    assert "other" not in registry
    assert CircuitBreaker("llm") not in registry
    assert list(registry) == [llm, search]
    assert len(registry) == 2


def test_registry_validates_and_survives_a_raising_hook(caplog: pytest.LogCaptureFixture) -> None:
    registry = CircuitBreakerRegistry()

    def broken(_: CircuitBreaker) -> None:
        raise RuntimeError("boom")

    registry.on_create(broken)
    with caplog.at_level(logging.ERROR, logger="rh_agents.circuit_breaker"):
        breaker = registry.get("llm")
    assert breaker in registry
    assert len(caplog.records) == 1
    with pytest.raises(InvalidArgumentError):
        registry.get("llm", failure_threshold=0)
    with pytest.raises(InvalidArgumentError):
        registry.get("")


# --- model-based test ----------------------------------------------------------------


@dataclass
class _ModelPermit:
    epoch: int
    is_probe: bool


class _Model:
    """The specified transitions, written as plainly as possible."""

    def __init__(self, threshold: int, timeout: float) -> None:
        self.threshold = threshold
        self.timeout = timeout
        self.now = 0.0
        self.state = CircuitState.CLOSED
        self.opened_at = 0.0
        self.failures = 0
        self.trips = 0
        self.rejected = 0
        self.probe_out = False
        self.epoch = 0
        self.transitions: list[tuple[CircuitState, CircuitState]] = []

    def move(self, new: CircuitState) -> None:
        self.transitions.append((self.state, new))
        self.state = new
        self.epoch += 1

    def refresh(self) -> None:
        if self.state is CircuitState.OPEN and self.now - self.opened_at >= self.timeout:
            self.move(CircuitState.HALF_OPEN)

    def trip(self) -> None:
        self.trips += 1
        self.opened_at = self.now
        self.move(CircuitState.OPEN)

    def admit(self) -> _ModelPermit | None:
        self.refresh()
        if self.state is CircuitState.CLOSED:
            return _ModelPermit(self.epoch, is_probe=False)
        if self.state is CircuitState.HALF_OPEN and not self.probe_out:
            self.probe_out = True
            return _ModelPermit(self.epoch, is_probe=True)
        self.rejected += 1
        return None

    def success(self, permit: _ModelPermit) -> None:
        self.refresh()
        if permit.epoch != self.epoch:
            return
        self.failures = 0
        if permit.is_probe:
            self.probe_out = False
            self.move(CircuitState.CLOSED)

    def failure(self, permit: _ModelPermit) -> None:
        self.refresh()
        if permit.epoch != self.epoch:
            return
        self.failures += 1
        if permit.is_probe:
            self.probe_out = False
            self.trip()
        elif self.failures >= self.threshold:
            self.trip()

    def release(self, permit: _ModelPermit) -> None:
        if permit.is_probe and permit.epoch == self.epoch:
            self.probe_out = False


class CircuitBreakerMachine(RuleBasedStateMachine):
    """Drives a breaker and the model with the same operations and compares them."""

    permits = Bundle("permits")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(autojump=False)
        self.breaker: CircuitBreaker
        self.model: _Model
        self.seen: list[tuple[CircuitState, CircuitState]] = []

    @initialize(threshold=st.integers(1, 4), timeout=st.sampled_from([0.0, 1.0, 5.0]))
    def create(self, threshold: int, timeout: float) -> None:
        self.breaker = CircuitBreaker("dep", threshold, timeout, clock=self.clock)
        self.breaker.add_listener(lambda b, old, new: self.seen.append((old, new)))
        self.model = _Model(threshold, timeout)

    @rule(target=permits)
    def admit(self) -> object:
        expected = self.model.admit()
        try:
            permit = self.breaker.admit()
        except CircuitOpenError as exc:
            assert expected is None, "breaker rejected a call the model admits"
            if self.model.state is CircuitState.OPEN:
                remaining = self.model.opened_at + self.model.timeout - self.model.now
                assert exc.retry_after == pytest.approx(remaining)
            else:
                assert exc.retry_after is None
            return multiple()
        assert expected is not None, "breaker admitted a call the model rejects"
        assert permit.is_probe == expected.is_probe
        return (permit, expected)

    @rule(pair=consumes(permits))
    def succeed(self, pair: tuple[CircuitPermit, _ModelPermit]) -> None:
        self.breaker.record_success(pair[0])
        self.model.success(pair[1])

    @rule(pair=consumes(permits))
    def fail(self, pair: tuple[CircuitPermit, _ModelPermit]) -> None:
        self.breaker.record_failure(pair[0])
        self.model.failure(pair[1])

    @rule(pair=consumes(permits))
    def release(self, pair: tuple[CircuitPermit, _ModelPermit]) -> None:
        self.breaker.release(pair[0])
        self.model.release(pair[1])

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 2.5, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.now += seconds

    @invariant()
    def matches_model(self) -> None:
        if not hasattr(self, "model"):
            return
        self.model.refresh()
        stats = self.breaker.statistics()
        assert stats.state is self.model.state
        assert stats.failure_count == self.model.failures
        assert stats.trip_count == self.model.trips
        assert stats.rejected_count == self.model.rejected
        assert self.seen == self.model.transitions


CircuitBreakerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestCircuitBreakerModel = CircuitBreakerMachine.TestCase
