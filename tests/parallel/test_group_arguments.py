"""Arguments of a parallel group that a new user gets wrong (issue 15): an executor that
is not one, exception classes given as a class or a set, a shared breaker asked for with
other settings, and a group opened with a plain ``with``."""

from __future__ import annotations

from typing import Any

import pytest

from rh_agents import ExecutionState, RetryConfig
from rh_agents.core.circuit_breaker import CircuitBreakerRegistry
from rh_agents.core.errors import InvalidArgumentError, LifecycleError, UsageError
from rh_agents.core.executors import AsyncioExecutor
from rh_agents.testing.clock import FakeClock

# ------------------------------------------------------------------- executor=


@pytest.mark.parametrize(
    ("executor", "match"),
    [
        ("process", "got the string 'process'.*ProcessPoolItemExecutor"),
        ("dask", "got the string 'dask'.*DaskExecutor"),
        (4, "executor must be an ItemExecutor.*got int"),
        (AsyncioExecutor, "got the class AsyncioExecutor.*AsyncioExecutor\\(\\)"),
    ],
)
def test_an_executor_that_is_not_one_is_refused_when_the_group_is_created(
    executor: Any, match: str
) -> None:
    state = ExecutionState()
    with pytest.raises(InvalidArgumentError, match=match):
        state.parallel(executor=executor, max_retries=2)


async def test_an_executor_object_is_accepted_and_runs_the_items() -> None:
    state = ExecutionState()

    async def double(n: int) -> int:
        return 2 * n

    async with state.parallel(executor=AsyncioExecutor(), max_workers=2) as p:
        for n in range(3):
            p.add(lambda n=n: double(n))
    assert [r.result for r in p.results] == [0, 2, 4]


# ------------------------------------------------ exception classes: one or many


async def _attempts_of(state: ExecutionState, error: BaseException, **options: Any) -> int:
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise error

    async with state.parallel(max_retries=2, retry_delay=0, **options) as p:
        p.add(failing)
    assert not p.results[0].ok
    return calls


@pytest.mark.parametrize(
    "non_retryable",
    [ConnectionError, (ConnectionError,), [ConnectionError], {ConnectionError}],
    ids=["class", "tuple", "list", "set"],
)
async def test_non_retryable_takes_a_class_or_a_collection_of_classes(
    non_retryable: Any,
) -> None:
    state = ExecutionState()
    options = {"non_retryable": non_retryable}
    assert await _attempts_of(state, ConnectionRefusedError("no"), **options) == 1
    assert await _attempts_of(state, TimeoutError("slow"), **options) == 3


@pytest.mark.parametrize(
    "retry_on",
    [ConnectionError, (ConnectionError,), frozenset({ConnectionError})],
    ids=["class", "tuple", "frozenset"],
)
async def test_retry_on_takes_a_class_or_a_collection_of_classes(retry_on: Any) -> None:
    state = ExecutionState()
    assert await _attempts_of(state, ConnectionRefusedError("no"), retry_on=retry_on) == 3
    assert await _attempts_of(state, TimeoutError("slow"), retry_on=retry_on) == 1


@pytest.mark.parametrize(
    "field", ["retry_on_exceptions", "exclude_exceptions"], ids=["retry_on", "exclude"]
)
def test_retry_config_takes_a_class_a_tuple_or_a_set(field: str) -> None:
    one = RetryConfig(**{field: KeyError})
    many = RetryConfig(**{field: {KeyError, TimeoutError}})
    assert getattr(one, field) == (KeyError,)
    assert set(getattr(many, field)) == {KeyError, TimeoutError}
    assert isinstance(getattr(many, field), tuple)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"non_retryable": "ConnectionError"}, "non_retryable.*'ConnectionError'"),
        ({"non_retryable": [ValueError()]}, "non_retryable.*classes, not instances"),
        ({"retry_on": [KeyError, "x"]}, "retry_on.*'x'"),
    ],
)
def test_exception_classes_that_are_not_classes_are_refused(
    options: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        ExecutionState().parallel(max_retries=1, **options)


# ---------------------------------------------------------- shared breakers by name


async def test_a_shared_breaker_asked_for_with_other_settings_is_refused() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        state.parallel(
            circuit_breaker="search-api", circuit_breaker_threshold=3, circuit_breaker_timeout=30
        )
        with pytest.raises(InvalidArgumentError) as info:
            state.parallel(
                circuit_breaker="search-api",
                circuit_breaker_threshold=5,
                circuit_breaker_timeout=30,
            )
        message = str(info.value)
        assert "Circuit breaker 'search-api'" in message
        assert "failure_threshold=3, recovery_timeout=30" in message
        assert "failure_threshold=5, recovery_timeout=30" in message
        # The same settings, or none, share the breaker.
        same = state.parallel(
            circuit_breaker="search-api", circuit_breaker_threshold=3, circuit_breaker_timeout=30
        )
        plain = state.parallel(circuit_breaker="search-api")
        assert same.circuit_breaker is plain.circuit_breaker
        assert plain.circuit_breaker is not None
        assert plain.circuit_breaker.failure_threshold == 3
        assert plain.circuit_breaker.recovery_timeout == 30


def test_a_breaker_named_without_settings_gets_the_defaults() -> None:
    state = ExecutionState()
    breaker = state.parallel(circuit_breaker="llm").circuit_breaker
    assert breaker is not None
    assert (breaker.failure_threshold, breaker.recovery_timeout) == (5, 60.0)
    # A cooldown alone differs from the existing breaker's: refused too.
    with pytest.raises(InvalidArgumentError, match=r"recovery_timeout=60.0.*recovery_timeout=5"):
        state.parallel(circuit_breaker="llm", circuit_breaker_timeout=5)


def test_the_registry_refuses_a_second_set_of_settings() -> None:
    registry = CircuitBreakerRegistry()
    llm = registry.get("llm", failure_threshold=2, recovery_timeout=5.0)
    assert registry.get("llm") is llm
    assert registry.get("llm", failure_threshold=2) is llm
    assert registry.get("llm", recovery_timeout=5.0) is llm
    with pytest.raises(InvalidArgumentError, match=r"failure_threshold=2.*failure_threshold=9"):
        registry.get("llm", failure_threshold=9, recovery_timeout=99.0)
    assert (llm.failure_threshold, llm.recovery_timeout) == (2, 5.0)


# --------------------------------------------------------------------- with, not async


def test_a_plain_with_says_use_async_with() -> None:
    state = ExecutionState()
    with pytest.raises(LifecycleError, match=r"use `async with state\.parallel") as info:
        with state.parallel(name="docs"):  # type: ignore[attr-defined]
            pass  # pragma: no cover - never entered
    assert isinstance(info.value, UsageError)
    assert "is an async context manager" in str(info.value)
