"""Every refusal of a bad ``state.parallel()`` argument, word for word, and the settings
the shortcut arguments build (tests/parallel/test_group_arguments.py checks that each bad
argument is refused; these pin what the user reads and what is built)."""

from __future__ import annotations

from typing import Any

import pytest

from rh_agents import CircuitBreaker, ExecutionState, Limiter, Policy
from rh_agents.core.errors import InvalidArgumentError
from rh_agents.executors import ProcessPoolItemExecutor
from rh_agents.testing import FakeClock


def refusal(**kwargs: Any) -> str:
    with pytest.raises(InvalidArgumentError) as caught:
        ExecutionState(telemetry=False).parallel(**kwargs)
    return str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"max_workers": 0},
            "max_workers must be a positive integer, got 0. Use 1 to run the items one at a "
            "time, or None for as many workers as items (at most 32).",
        ),
        (
            {"error_strategy": "fail_later"},
            "Unknown error_strategy 'fail_later'; use ErrorStrategy.FAIL_SLOW or "
            "ErrorStrategy.FAIL_FAST.",
        ),
        (
            {"executor": "process"},
            "executor must be an executor object, got the string 'process'; executors are "
            "objects, not names. For processes of this machine open `async with "
            "ProcessPoolItemExecutor(max_workers=4) as pool:` and pass `executor=pool`; for "
            "a Dask cluster use DaskExecutor the same way (both from rh_agents.executors). "
            "Leave executor out to run the items in the event loop.",
        ),
        (
            {"executor": ProcessPoolItemExecutor},
            "executor must be an executor object, got the class ProcessPoolItemExecutor; "
            "create one and pass it, e.g. executor=ProcessPoolItemExecutor() (a pool is "
            "opened with `async with`).",
        ),
        (
            {"executor": 4},
            "executor must be an ItemExecutor (an object with `async def run(item)`, such as "
            "rh_agents.executors.ProcessPoolItemExecutor) or None, got int.",
        ),
        (
            {"limiter": "openai"},
            "limiter must be a Limiter object, got the string 'openai'; limiters are shared "
            "by passing the same object, not by name. Create it once, e.g. `shared = "
            "Limiter('openai', max_concurrency=8)`, and pass `limiter=shared` to every "
            "group that calls the resource.",
        ),
        (
            {"limiter": 8},
            "limiter must be a rh_agents Limiter or None, got int; create one with "
            "Limiter(name, max_concurrency=...).",
        ),
        (
            {"policy": "strict"},
            "policy must be a rh_agents Policy or None, got str; build one with "
            "Policy(retry=..., breaker=..., limiter=..., timeout=...).",
        ),
        (
            {"circuit_breaker": 3},
            "circuit_breaker must be a CircuitBreaker, a breaker name or None, got int.",
        ),
        (
            {"circuit_breaker_threshold": 0},
            "circuit_breaker_threshold must be a positive integer, got 0. Or pass None for none.",
        ),
        (
            {"name": "  "},
            "A parallel group's name must not be empty or blank, got '  '; give it a name "
            "such as 'docs', or leave name= out for an unnamed group.",
        ),
        (
            {"name": "x#1[0]"},
            "Parallel group name 'x#1[0]' contains '#[]'; '#', '[' and ']' structure "
            "addresses (a group named 'x#1' would get the address of the second group named "
            "'x', and 'y[0]' that of item 0 of group 'y'). Use letters, digits, spaces, "
            "'-', '_', '.' or '/'.",
        ),
        (
            {"item_timeout": 0},
            "item_timeout must be a positive number of seconds (the bound of each attempt of "
            "each item) or None, got 0.",
        ),
    ],
)
def test_each_refusal_says_what_to_pass(kwargs: dict[str, Any], message: str) -> None:
    assert refusal(**kwargs) == message


def test_retry_settings_are_checked_even_without_retries() -> None:
    assert "retry_delay" in refusal(retry_delay=-1.0)
    assert "retry_on" in refusal(retry_on=42)
    assert "non_retryable" in refusal(non_retryable="ValueError")
    # valid, without retries: no retry policy (and no policy at all)
    state = ExecutionState(telemetry=False)
    assert state.parallel(retry_delay=2.0).policy is None
    assert state.parallel(retry_on=ValueError).policy is None
    assert state.parallel(non_retryable=(KeyError,)).policy is None


def test_an_item_timeout_under_a_second_is_a_policy_timeout() -> None:
    group = ExecutionState(telemetry=False).parallel(item_timeout=0.25)
    assert group.policy == Policy(timeout=0.25)


async def test_a_group_breaker_is_named_after_the_group_and_uses_the_states_clock() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(telemetry=False, clock=clock)
        named = state.parallel(name="docs", circuit_breaker_threshold=2).circuit_breaker
        unnamed = state.parallel(circuit_breaker_threshold=3).circuit_breaker
        slow = state.parallel(circuit_breaker_threshold=1, circuit_breaker_timeout=5.0)
        assert isinstance(named, CircuitBreaker) and isinstance(unnamed, CircuitBreaker)
        assert (named.name, named.failure_threshold, named.recovery_timeout) == (
            "parallel:docs",
            2,
            60.0,
        )
        assert unnamed.name == "parallel:group"
        breaker = slow.circuit_breaker
        assert breaker is not None and breaker.recovery_timeout == 5.0
        breaker.record_failure(breaker.admit())
        assert breaker.state.value == "open"
        await clock.sleep(5.0)  # the cooldown runs on the state's clock
        assert breaker.state.value == "half_open"


def test_a_limiter_shortcut_is_the_policys_limiter() -> None:
    shared = Limiter("db", 2)
    group = ExecutionState(telemetry=False).parallel(limiter=shared)
    assert group.policy == Policy(limiter=shared) and group.limiter is shared
