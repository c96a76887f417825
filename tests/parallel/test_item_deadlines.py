"""Per-call deadlines: item_timeout of a group, a total retry budget, retry on a result.

Everything waits on a FakeClock; no test measures real time.
"""

from __future__ import annotations

from typing import Any

import pytest

from rh_agents import (
    ExecutionEvent,
    ExecutionState,
    Policy,
    RejectedResultError,
    RetryConfig,
    Tool,
)
from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.policy import RetryStatistics, TimeoutStatistics
from rh_agents.core.retry import BackoffStrategy, StopAfterDelay
from rh_agents.testing import FakeClock, TelemetryCapture


def _sleeper(clock: FakeClock, seconds: float, value: str) -> Any:
    async def run() -> str:
        await clock.sleep(seconds)
        return value

    return run


async def test_item_timeout_fails_the_slow_item_alone(rh_telemetry: TelemetryCapture) -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(max_workers=3, name="pages", item_timeout=2.0) as p:
            p.add(_sleeper(clock, 1.0, "a"), name="a")
            p.add(_sleeper(clock, 30.0, "slow"), name="slow")
            p.add(_sleeper(clock, 1.5, "c"), name="c")
            results = await p.gather()
    assert [(r.ok, r.result, r.error_type) for r in results] == [
        (True, "a", None),
        (False, None, "AttemptTimeoutError"),
        (True, "c", None),
    ]
    assert clock.monotonic() == 2.0  # the slow item was cut off at its deadline
    assert results[1].error_message == (
        "Attempt 1 of item 1 ('slow') of parallel group 'pages' did not finish within its "
        "policy's timeout of 2s and was cancelled. Raise Policy(timeout=...) if the call "
        "needs longer, or let the policy retry it (Policy(retry=RetryConfig(...)))."
    )
    assert p.policy is not None
    assert p.policy.statistics().timeout == TimeoutStatistics(timeout=2.0, timed_out=1)
    assert rh_telemetry.span_tree() == "parallel pages [outcome='failed'] ERROR"
    rh_telemetry.assert_metric("rh_agents_parallel_groups_total", 1, group="pages", status="failed")
    rh_telemetry.assert_no_open_spans()


async def test_item_timeout_gives_each_retry_a_fresh_deadline() -> None:
    starts: list[float] = []
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)

        async def slow_then_fast() -> str:
            starts.append(clock.monotonic())
            await clock.sleep(5.0 if len(starts) == 1 else 1.5)
            return "done"

        async with state.parallel(
            name="g", item_timeout=2.0, max_retries=1, retry_delay=1.0, rng=_Zero()
        ) as p:
            p.add(slow_then_fast)
            (result,) = await p.gather()
    assert result.ok and result.result == "done" and result.attempts == 2
    # attempt 1 cut at 2.0, backoff 0.5 (jitter factor 0.5 of 1.0), attempt 2 takes 1.5
    assert starts == [0.0, 2.5] and clock.monotonic() == 4.0


class _Zero:
    """A random source whose jitter factor is always the lowest (0.5)."""

    def random(self) -> float:
        return 0.0

    def uniform(self, a: float, b: float) -> float:
        return a


def test_item_timeout_must_be_positive() -> None:
    with pytest.raises(InvalidArgumentError, match=r"item_timeout must be a positive number"):
        ExecutionState().parallel(item_timeout=0)


# ------------------------------------------------------------- total retry budget


async def test_a_total_retry_budget_stops_retrying_in_time(rh_telemetry: TelemetryCapture) -> None:
    calls = 0

    async def down(data: Any, extra: Any, st: Any) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"refused {calls}")

    budget = RetryConfig(
        max_attempts=100,
        backoff_strategy=BackoffStrategy.CONSTANT,
        initial_delay=2.0,
        jitter=False,
        stop=StopAfterDelay(7.0),  # or retry_timeout=7.0
    )
    tool = Tool(name="api", handler=down, policy=Policy(retry=budget))
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        result = await ExecutionEvent(actor=tool)(None, {}, state)
    # attempts at 0, 2, 4 and 6; a fifth would start at 8, past the budget of 7
    assert not result.ok and result.error_message == "refused 4"
    assert clock.sleeps == [2.0, 2.0, 2.0] and clock.monotonic() == 6.0
    assert rh_telemetry.span_tree() == (
        "execute_tool api [outcome='failed'] ERROR\n"
        "  attempt 1 ERROR\n"
        "  attempt 2 ERROR\n"
        "  attempt 3 ERROR\n"
        "  attempt 4 ERROR"
    )
    rh_telemetry.assert_metric("rh_agents_retries_total", 3, name="api")


# --------------------------------------------------------------- retry on a result


def _overloaded(result: Any) -> bool:
    return isinstance(result, dict) and result.get("status") == "overloaded"


RESULT_RETRY = RetryConfig(
    max_attempts=3,
    backoff_strategy=BackoffStrategy.CONSTANT,
    initial_delay=1.0,
    jitter=False,
    retry_on_exceptions=(TimeoutError,),  # does not filter rejected results
    retry_on_result=_overloaded,
)


async def test_an_actor_retries_an_overloaded_result(rh_telemetry: TelemetryCapture) -> None:
    answers: list[dict[str, str]] = [{"status": "overloaded"}, {"status": "ok", "text": "hi"}]

    async def answer(data: Any, extra: Any, st: Any) -> dict[str, str]:
        return answers.pop(0)

    tool = Tool(name="llm", handler=answer, policy=Policy(retry=RESULT_RETRY))
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        result = await ExecutionEvent(actor=tool)(None, {}, state)
    assert result.ok and result.result == {"status": "ok", "text": "hi"}
    assert clock.sleeps == [1.0]
    retry = next(e for e in state.history.get_event_list() if e.is_retry)
    assert retry.error_type == "RejectedResultError"
    assert retry.original_error is not None and retry.original_error.startswith(
        "Attempt 1 of actor 'llm' returned a result that the retry policy's retry_on_result "
        "predicate rejected: {'status': 'overloaded'}."
    )
    assert rh_telemetry.span_tree() == (
        "execute_tool llm [outcome='completed']\n  attempt 1 ERROR\n  attempt 2"
    )
    rh_telemetry.assert_metric("rh_agents_retries_total", 1, name="llm")


async def test_an_actor_fails_with_the_last_rejected_result_when_out_of_attempts() -> None:
    async def answer(data: Any, extra: Any, st: Any) -> dict[str, str]:
        return {"status": "overloaded"}

    policy = Policy(retry=RESULT_RETRY)
    tool = Tool(name="llm", handler=answer, policy=policy)
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        result = await ExecutionEvent(actor=tool)(None, {}, state)
    assert not result.ok and result.error_type == "RejectedResultError"
    assert isinstance(result.exception, RejectedResultError)
    assert result.exception.result == {"status": "overloaded"}
    assert result.exception.attempt == 3
    assert policy.statistics().retry == RetryStatistics(
        max_attempts=3, attempts=3, retries=2, gave_up=1
    )


async def test_a_group_retries_an_item_whose_result_is_rejected() -> None:
    values = iter(["overloaded", "overloaded", "fine"])

    async def item() -> str:
        return next(values)

    retry = RetryConfig.for_group(2, 1.0).model_copy(
        update={"retry_on_result": lambda value: value == "overloaded", "jitter": False}
    )
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(name="g", policy=Policy(retry=retry)) as p:
            p.add(item, name="ask")
            (result,) = await p.gather()
    assert result.ok and result.result == "fine" and result.attempts == 3
    assert [e.error_type for e in state.history.get_event_list() if e.is_retry] == [
        "RejectedResultError",
        "RejectedResultError",
    ]


def test_retry_on_result_must_be_callable() -> None:
    with pytest.raises(InvalidArgumentError, match=r"retry_on_result is a predicate"):
        RetryConfig(retry_on_result="overloaded")  # type: ignore[arg-type]


async def test_a_rejected_result_counts_against_the_breaker() -> None:
    from rh_agents import CircuitBreaker

    async def answer(data: Any, extra: Any, st: Any) -> dict[str, str]:
        return {"status": "overloaded"}

    async with FakeClock() as clock:
        breaker = CircuitBreaker("llm", failure_threshold=2, recovery_timeout=60, clock=clock)
        retry = RESULT_RETRY.model_copy(update={"max_attempts": 2})
        tool = Tool(name="llm", handler=answer, policy=Policy(retry=retry, breaker=breaker))
        state = ExecutionState(clock=clock)
        await ExecutionEvent(actor=tool)(None, {}, state)
    assert breaker.statistics().state.value == "open"
