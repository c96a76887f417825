"""A group's Policy: the same guards as an actor's, for every attempt of every item.

Also what happens when an actor with its own policy runs as the item of a group with
one (they stack, visibly; one policy shared by both applies once), and the group's
frozen statistics. Everything waits on a FakeClock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

import pytest

from rh_agents import (
    CircuitBreaker,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    Limiter,
    Policy,
    RetryConfig,
    Tool,
)
from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.parallel import GroupStatistics
from rh_agents.core.policy import RetryStatistics, TimeoutStatistics
from rh_agents.core.retry import BackoffStrategy
from rh_agents.testing import FakeClock, TelemetryCapture

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

CONSTANT_1S = RetryConfig(
    max_attempts=3, backoff_strategy=BackoffStrategy.CONSTANT, initial_delay=1.0, jitter=False
)


def retry_events(state: ExecutionState) -> list[tuple[str, int | None, str | None, bool]]:
    """(address, retry_attempt, error type, published by the group) of every RETRYING
    entry; the group's own carry the item's name in their metadata."""
    return [
        (e.address, e.retry_attempt, e.error_type, "item" in e.metadata)
        for e in state.history.get_event_list()
        if e.execution_status is ExecutionStatus.RETRYING
    ]


# ------------------------------------------------------------ policy= and the shortcuts


async def test_a_policy_and_the_shortcuts_it_replaces_run_a_group_alike() -> None:
    async def run(**guards: Any) -> tuple[list[float], list[Any], list[Any]]:
        async with FakeClock() as clock:
            state = ExecutionState(clock=clock)
            calls = {"a": 0, "b": 0}

            async def flaky(key: str) -> str:
                calls[key] += 1
                if calls[key] < 3:
                    raise ConnectionError(f"{key} reset")
                return key

            async with state.parallel(
                max_workers=1, name="net", rng=random.Random(7), **guards
            ) as p:
                p.add(lambda: flaky("a"), name="a")
                p.add(lambda: flaky("b"), name="b")
        events = [
            (e.address, e.retry_attempt, e.retry_delay, e.message)
            for e in state.history.get_event_list()
            if e.is_retry
        ]
        return clock.sleeps, events, [(r.result, r.attempts) for r in p.results]

    shortcuts = await run(max_retries=2, retry_delay=0.5)
    policy = await run(policy=Policy(retry=RetryConfig.for_group(2, 0.5)))
    assert policy == shortcuts
    sleeps, events, results = policy
    assert len(sleeps) == 4 and results == [("a", 3), ("b", 3)]
    assert sorted(e[:2] for e in events) == [
        ("parallel:net[0]", 1),
        ("parallel:net[0]", 2),
        ("parallel:net[1]", 1),
        ("parallel:net[1]", 2),
    ]


async def test_the_group_exposes_the_policy_its_shortcuts_built() -> None:
    state = ExecutionState()
    limiter = Limiter("api", max_concurrency=2)
    p = state.parallel(max_retries=2, retry_delay=0.5, circuit_breaker_threshold=3, limiter=limiter)
    assert p.policy is not None
    assert p.policy.retry == RetryConfig.for_group(2, 0.5)
    assert p.policy.breaker is p.circuit_breaker and p.circuit_breaker is not None
    assert p.circuit_breaker.failure_threshold == 3
    assert p.policy.limiter is limiter is p.limiter
    assert p.max_retries == 2
    assert state.parallel().policy is None
    given = Policy(retry=CONSTANT_1S, timeout=3.0)
    q = state.parallel(policy=given)
    assert q.policy is given and q.max_retries == 2 and q.limiter is None


@pytest.mark.parametrize(
    ("shortcuts", "named"),
    [
        ({"max_retries": 2}, "max_retries"),
        ({"retry_delay": 0.1, "retry_on": (KeyError,)}, "retry_delay, retry_on"),
        ({"non_retryable": (KeyError,)}, "non_retryable"),
        ({"circuit_breaker": "search-api"}, "circuit_breaker"),
        ({"circuit_breaker_threshold": 3}, "circuit_breaker_threshold"),
        ({"circuit_breaker_timeout": 5.0}, "circuit_breaker_timeout"),
        ({"limiter": Limiter("api", max_concurrency=1)}, "limiter"),
    ],
)
def test_a_policy_with_conflicting_shortcuts_is_refused(
    shortcuts: dict[str, Any], named: str
) -> None:
    state = ExecutionState()
    with pytest.raises(InvalidArgumentError) as caught:
        state.parallel(policy=Policy(timeout=1.0), **shortcuts)
    assert str(caught.value) == (
        f"state.parallel() got policy= together with {named}; those arguments are "
        "shortcuts that build a policy, so the two would conflict. Put everything into the "
        "Policy (retry=RetryConfig.for_group(...), breaker=, limiter=, timeout=) or leave "
        "policy= out."
    )


def test_a_policy_goes_with_the_arguments_it_does_not_replace() -> None:
    state = ExecutionState()
    p = state.parallel(
        policy=Policy(retry=CONSTANT_1S),
        max_workers=3,
        timeout=60.0,  # the whole group's deadline, not a guard of each attempt
        name="g",
        rng=random.Random(1),
        max_retries=0,
        retry_delay=1.0,
        non_retryable=[],
    )
    assert p.timeout == 60.0 and p.max_retries == 2
    with pytest.raises(InvalidArgumentError, match="policy must be a rh_agents Policy"):
        state.parallel(policy=RetryConfig())  # type: ignore[arg-type]


# -------------------------------------------------------------- the timeout of attempts


async def test_a_slow_item_times_out_and_its_retry_gets_a_fresh_deadline() -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        starts: list[float] = []
        cancelled: list[float] = []

        async def slow() -> str:
            starts.append(clock.monotonic())
            try:
                await clock.sleep([10.0, 10.0, 1.0][len(starts) - 1])
            except asyncio.CancelledError:
                cancelled.append(clock.monotonic())
                raise
            return "slow done"

        async def quick() -> str:
            await clock.sleep(2.0)
            return "quick done"

        policy = Policy(retry=CONSTANT_1S, timeout=5.0)
        async with state.parallel(max_workers=2, name="docs", policy=policy) as p:
            p.add(slow, name="slow")
            p.add(quick, name="quick")
    assert [(r.ok, r.result, r.attempts) for r in p.results] == [
        (True, "slow done", 3),
        (True, "quick done", 1),
    ]
    assert starts == [0.0, 6.0, 12.0] and cancelled == [5.0, 11.0]
    assert retry_events(state) == [
        ("parallel:docs[0]", 1, "AttemptTimeoutError", True),
        ("parallel:docs[0]", 2, "AttemptTimeoutError", True),
    ]
    first = next(e for e in state.history.get_event_list() if e.is_retry)
    assert first.original_error == (
        "Attempt 1 of item 0 ('slow') of parallel group 'docs' did not finish within its "
        "policy's timeout of 5s and was cancelled. Raise Policy(timeout=...) if the call "
        "needs longer, or let the policy retry it (Policy(retry=RetryConfig(...)))."
    )
    stats = policy.statistics()
    assert stats.timeout == TimeoutStatistics(timeout=5.0, timed_out=2)
    assert stats.retry == RetryStatistics(max_attempts=3, attempts=4, retries=2, gave_up=0)


async def test_a_timed_out_event_item_fails_alone(rh_telemetry: TelemetryCapture) -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)

        async def handler(data: float, extra: Any, st: Any) -> float:
            await clock.sleep(data)
            return data

        tool = Tool(name="wait", handler=handler)
        async with state.parallel(max_workers=1, name="w", policy=Policy(timeout=3.0)) as p:
            for seconds in (1.0, 5.0, 2.0):
                p.add(lambda s=seconds: ExecutionEvent(actor=tool)(s, {}, state))
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert [(r.ok, r.error_type) for r in p.results] == [
        (True, None),
        (False, "AttemptTimeoutError"),
        (True, None),
    ]
    assert clock.monotonic() == 6.0
    # the timed-out call itself was cancelled; the item failed with the timeout
    assert [
        e.execution_status.value
        for e in state.history.get_event_list()
        if e.address == "parallel:w[1]/wait"
    ] == ["started", "cancelled"]
    assert p.group.failed == 1 and p.group.errors[0].startswith("AttemptTimeoutError: Attempt 1")
    rh_telemetry.assert_no_open_spans()


# ------------------------------------------------------- actor policies inside a group


async def test_an_actors_retries_stack_visibly_under_a_groups_retries() -> None:
    calls = 0

    async def down(data: Any, extra: Any, st: Any) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"refused {calls}")

    actor_policy = Policy(retry=RetryConfig(max_attempts=2, initial_delay=1.0, jitter=False))
    tool = Tool(name="fetch", handler=down, policy=actor_policy)
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(name="g", max_retries=1, retry_delay=5.0) as p:
            p.add(lambda: ExecutionEvent(actor=tool)(None, {}, state), name="doc")
    # 2 attempts of the actor's own policy in each of the group's 2 attempts
    assert calls == 4
    [result] = p.results
    assert not result.ok and result.attempts == 2 and result.error_message == "refused 4"
    assert retry_events(state) == [
        ("parallel:g[0]/fetch", 1, "ConnectionError", False),  # the actor's retry
        ("parallel:g[0]/fetch", 1, "ConnectionError", True),  # the group's retry
        ("parallel:g[0]/fetch", 1, "ConnectionError", False),  # the actor's, again
    ]
    assert actor_policy.statistics().retry == RetryStatistics(2, attempts=4, retries=2, gave_up=2)
    assert p.policy is not None
    assert p.policy.statistics().retry == RetryStatistics(2, attempts=2, retries=1, gave_up=1)


async def test_one_policy_shared_by_a_group_and_its_actor_applies_once() -> None:
    calls = 0

    async def down(data: Any, extra: Any, st: Any) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    async with FakeClock() as clock:
        breaker = CircuitBreaker("api", failure_threshold=10, clock=clock)
        limiter = Limiter("api", max_concurrency=1)
        shared = Policy(retry=CONSTANT_1S, breaker=breaker, limiter=limiter, timeout=30.0)
        tool = Tool(name="fetch", handler=down, policy=shared)
        state = ExecutionState(clock=clock)
        async with state.parallel(name="g", max_workers=2, policy=shared) as p:
            for i in range(2):
                p.add(lambda i=i: ExecutionEvent(actor=tool)(i, {}, state))
    # The group's attempts hold the limiter's only permit: the actor call inside does
    # not wait for a second one (no deadlock), nor retry, nor count the failure again.
    assert calls == 6
    assert all(not r.ok and r.attempts == 3 for r in p.results)
    assert all(grouped for *_, grouped in retry_events(state)) and len(retry_events(state)) == 4
    assert breaker.statistics().failure_count == 6
    assert limiter.statistics().total_acquired == 6
    stats = shared.statistics()
    assert stats.retry == RetryStatistics(3, attempts=6, retries=4, gave_up=2)


async def test_an_actor_limiter_inside_an_item_holding_it_does_not_deadlock() -> None:
    limiter = Limiter("llm", max_concurrency=1)

    async def answer(data: Any, extra: Any, st: Any) -> str:
        return f"answer {data}"

    tool = Tool(name="llm", handler=answer, policy=Policy(limiter=limiter, timeout=10.0))
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(max_workers=3, limiter=limiter) as p:
            for i in range(3):
                p.add(lambda i=i: ExecutionEvent(actor=tool)(i, {}, state))
    assert [r.result for r in p.results] == ["answer 0", "answer 1", "answer 2"]
    assert limiter.statistics().total_acquired == 3 and limiter.statistics().in_use == 0


# ------------------------------------------------------------------- the statistics


async def test_group_statistics_are_frozen_and_read_like_the_old_dict() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def held() -> None:
        started.set()
        await release.wait()

    state = ExecutionState()
    async with state.parallel(max_workers=1) as p:
        p.add(held)
        p.add(held)
        before = p.statistics()
        assert isinstance(before, GroupStatistics)
        assert before == GroupStatistics(in_flight=0, peak_in_flight=0, queued=2, delayed=0)
        task = asyncio.create_task(p.gather())
        await started.wait()
        during = p.statistics()
        assert during == {"in_flight": 1, "peak_in_flight": 1, "queued": 1, "delayed": 0}
        assert during["in_flight"] == 1 and during.in_flight == 1
        assert (
            dict(during)
            == during.as_dict()
            == {
                "in_flight": 1,
                "peak_in_flight": 1,
                "queued": 1,
                "delayed": 0,
            }
        )
        assert list(during) == ["in_flight", "peak_in_flight", "queued", "delayed"]
        with pytest.raises(KeyError):
            during["retries"]
        with pytest.raises(dataclasses.FrozenInstanceError):
            during.in_flight = 0  # type: ignore[misc]
        release.set()
        await task
    assert p.statistics() == GroupStatistics(0, 1, 0, 0)
    assert during == GroupStatistics(1, 1, 1, 0)  # a snapshot: it did not move on
    assert len({during, GroupStatistics(1, 1, 1, 0)}) == 1
