"""Policy: the guards of an actor's calls (retry, breaker, limiter, per-attempt timeout).

Everything waits on a FakeClock; no test measures real time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from rh_agents import (
    AttemptTimeoutError,
    CircuitBreaker,
    CircuitState,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    Limiter,
    Policy,
    RetryConfig,
    Tool,
)
from rh_agents.core._guarded import retry_delay
from rh_agents.core.circuit_breaker import CircuitBreakerStatistics
from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.limiter import LimiterStatistics
from rh_agents.core.policy import PolicyStatistics, RetryStatistics, TimeoutStatistics
from rh_agents.core.retry import (
    BackoffStrategy,
    RetryState,
    StopAfterAttempt,
    StopAfterDelay,
    StopAny,
)
from rh_agents.testing import FakeClock, TelemetryCapture

S = ExecutionStatus

CONSTANT_1S = RetryConfig(
    max_attempts=3, backoff_strategy=BackoffStrategy.CONSTANT, initial_delay=1.0, jitter=False
)


def history(state: ExecutionState) -> list[tuple[str, str, str | None]]:
    """(address, status, error type) of every history entry, in order."""
    return [
        (e.address, e.execution_status.value, e.error_type) for e in state.history.get_event_list()
    ]


class Slow:
    """A handler taking ``durations[n]`` virtual seconds on call n; records when each
    call started and when it was cancelled."""

    def __init__(self, clock: FakeClock, durations: list[float]) -> None:
        self.clock = clock
        self.durations = durations
        self.started: list[float] = []
        self.cancelled: list[float] = []

    async def __call__(self, data: Any, extra: Any, state: Any) -> str:
        self.started.append(self.clock.monotonic())
        try:
            await self.clock.sleep(self.durations[len(self.started) - 1])
        except asyncio.CancelledError:
            self.cancelled.append(self.clock.monotonic())
            raise
        return f"done after {len(self.started)}"


# ------------------------------------------------------------------ the Policy object


def test_a_policy_is_immutable_and_compares_by_its_guards() -> None:
    breaker = CircuitBreaker("dep")
    policy = Policy(retry=CONSTANT_1S, breaker=breaker, timeout=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.timeout = 10.0  # type: ignore[misc]
    assert policy.timeout == 5.0 and isinstance(policy.timeout, float)
    assert policy == Policy(retry=CONSTANT_1S, breaker=breaker, timeout=5.0)
    assert policy != Policy(retry=CONSTANT_1S, breaker=CircuitBreaker("dep"), timeout=5.0)
    assert hash(policy) == hash(Policy(retry=CONSTANT_1S, breaker=breaker, timeout=5.0))
    longer = dataclasses.replace(policy, timeout=10.0)
    assert longer.timeout == 10.0 and longer.breaker is breaker and policy.timeout == 5.0
    assert Policy().is_empty and not policy.is_empty
    assert Policy().max_attempts == 1 and policy.max_attempts == 3
    assert Policy(retry=RetryConfig(max_attempts=4, enabled=False)).max_attempts == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry": 3}, r"Policy\(retry=...\) takes a RetryConfig .* got int"),
        (
            {"breaker": "openai"},
            r"takes a CircuitBreaker or None, got str\. To share a breaker by name, get it "
            r"once with state\.circuit_breakers\.get\('openai', \.\.\.\) and pass the object\.",
        ),
        (
            {"limiter": 8},
            r"^Policy\(limiter=...\) takes a Limiter such as Limiter\('openai', "
            r"max_concurrency=8\), or None, got int\. Share a limiter by passing the same "
            r"object\.$",
        ),
        ({"breaker": 3}, r"^Policy\(breaker=...\) takes a CircuitBreaker or None, got int\.$"),
        ({"timeout": 0}, r"positive number of seconds .* got 0"),
        ({"timeout": -1.0}, "got -1.0"),
        ({"timeout": math.nan}, "got nan"),
        ({"timeout": math.inf}, "got inf"),
        ({"timeout": True}, "got True"),
    ],
)
def test_a_policy_refuses_guards_it_cannot_use(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        Policy(**kwargs)


def test_statistics_are_frozen_and_have_one_shape_for_every_guard() -> None:
    breaker = CircuitBreaker("dep")
    limiter = Limiter("dep", max_concurrency=2)
    stats = Policy(retry=CONSTANT_1S, breaker=breaker, limiter=limiter, timeout=2).statistics()
    assert stats == PolicyStatistics(
        retry=RetryStatistics(max_attempts=3, attempts=0, retries=0, gave_up=0),
        breaker=CircuitBreakerStatistics("dep", CircuitState.CLOSED, 0, 0, 0),
        limiter=LimiterStatistics("dep", 2, 0, 0, 0, 0),
        timeout=TimeoutStatistics(timeout=2.0, timed_out=0),
    )
    for part in (stats, stats.retry, stats.timeout):
        assert dataclasses.is_dataclass(part)
        with pytest.raises(dataclasses.FrozenInstanceError):
            part.timeout = 1  # type: ignore[union-attr]
    assert Policy().statistics() == PolicyStatistics(None, None, None, None)


def test_stop_conditions_compose_with_or() -> None:
    stop = StopAfterAttempt(3) | StopAfterDelay(10.0)
    assert stop == StopAny(StopAfterAttempt(3), StopAfterDelay(10.0))
    assert repr(stop) == "StopAfterAttempt(3) | StopAfterDelay(10)"
    assert not stop(RetryState(attempt=2, elapsed=5.0, next_delay=4.0))
    assert stop(RetryState(attempt=3, elapsed=0.0, next_delay=0.0))
    assert stop(RetryState(attempt=1, elapsed=6.0, next_delay=4.0))  # the backoff counts
    config = RetryConfig(max_attempts=5, retry_timeout=30.0)
    assert config.stop_condition == StopAfterAttempt(5) | StopAfterDelay(30.0)
    with pytest.raises(InvalidArgumentError, match="integer >= 1"):
        StopAfterAttempt(0)
    with pytest.raises(InvalidArgumentError, match="seconds > 0"):
        StopAfterDelay(-1)


def test_a_stop_condition_of_ones_own_ends_retrying() -> None:
    class AfterTwoLongWaits(StopAfterAttempt):
        def __call__(self, state: RetryState) -> bool:
            return state.next_delay >= 2.0

    config = RetryConfig(
        max_attempts=10, initial_delay=1.0, jitter=False, stop=AfterTwoLongWaits(1)
    )
    assert config.next_delay(1, ConnectionError(), 0.0, 0.0) == 1.0
    assert config.next_delay(2, ConnectionError(), 0.0, 1.0) is None  # 2 s: stop
    with pytest.raises(InvalidArgumentError, match="stop must be a StopCondition"):
        RetryConfig(stop=3)


def test_next_delay_is_the_one_retry_decision() -> None:
    config = RetryConfig(max_attempts=3, initial_delay=1.0, jitter=False, retry_timeout=10.0)
    assert config.next_delay(1, ConnectionError(), 0.0, 0.0) == 1.0
    assert config.next_delay(2, ConnectionError(), 0.0, 0.0) == 2.0
    assert config.next_delay(3, ConnectionError(), 0.0, 0.0) is None  # out of attempts
    assert config.next_delay(1, ConnectionError(), 0.0, 9.5) is None  # 9.5 + 1 >= 10
    assert config.next_delay(1, asyncio.CancelledError(), 0.0, 0.0) is None


# ---------------------------------------------------------------- actors: the retry guard


@pytest.mark.parametrize("how", ["retry_config", "policy"])
async def test_policy_retry_and_the_retry_config_shortcut_record_the_same(
    how: str, rh_telemetry: TelemetryCapture
) -> None:
    errors = [ConnectionError("reset 1"), ConnectionError("reset 2")]

    async def flaky(data: Any, extra: Any, state: Any) -> str:
        if errors:
            raise errors.pop(0)
        return "third time"

    config = RetryConfig(max_attempts=3, initial_delay=2.0, jitter=False)
    guards: dict[str, Any] = (
        {"retry_config": config} if how == "retry_config" else {"policy": Policy(retry=config)}
    )
    tool = Tool(name="flaky", handler=flaky, **guards)
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        result = await ExecutionEvent(actor=tool)(None, {}, state)
    assert result.ok and result.result == "third time"
    assert clock.sleeps == [2.0, 4.0]
    assert history(state) == [
        ("flaky", "started", None),
        ("flaky", "retrying", "ConnectionError"),
        ("flaky", "retrying", "ConnectionError"),
        ("flaky", "completed", None),
    ]
    assert rh_telemetry.span_tree() == (
        "execute_tool flaky [outcome='completed']\n"
        "  attempt 1 ERROR\n"
        "  attempt 2 ERROR\n"
        "  attempt 3"
    )
    rh_telemetry.assert_metric("rh_agents_retries_total", 2, name="flaky")
    policy = tool.effective_policy
    assert policy is not None and policy.retry is config
    assert policy.statistics().retry == RetryStatistics(
        max_attempts=3, attempts=3, retries=2, gave_up=0
    )


def test_an_actor_refuses_a_policy_next_to_the_retry_config_shortcut() -> None:
    async def handler(data: Any, extra: Any, state: Any) -> None:
        return None

    message = (
        r"Actor 'search' got both retry_config= and policy=; retry_config is the shortcut "
        r"for policy=Policy\(retry=\.\.\.\)\. Put the RetryConfig into the policy"
    )
    with pytest.raises(ValueError, match=message):
        Tool(name="search", handler=handler, retry_config=CONSTANT_1S, policy=Policy(timeout=1))
    tool = Tool(name="search", handler=handler, policy=Policy(timeout=1))
    with pytest.raises(ValueError, match=message):
        tool.retry_config = CONSTANT_1S
    assert tool.retry_config is None  # the refused assignment left the actor as it was
    assert tool.effective_policy is tool.policy
    assert Tool(name="plain", handler=handler, policy=Policy()).effective_policy is None


async def test_the_shortcut_policy_is_built_once_per_retry_config() -> None:
    async def fails(data: Any, extra: Any, state: Any) -> None:
        raise ConnectionError("down")

    tool = Tool(name="t", handler=fails, retry_config=RetryConfig(max_attempts=2, jitter=False))
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        for _ in range(2):
            await ExecutionEvent(actor=tool)(None, {}, state)
    policy = tool.effective_policy
    assert policy is not None
    assert policy.statistics().retry == RetryStatistics(2, attempts=4, retries=2, gave_up=2)
    tool.retry_config = CONSTANT_1S
    assert tool.effective_policy is not policy and tool.effective_policy.retry is CONSTANT_1S  # type: ignore[union-attr]


async def test_the_retry_time_budget_counts_the_next_backoff() -> None:
    async def fails(data: Any, extra: Any, state: Any) -> None:
        raise ConnectionError("down")

    retry = RetryConfig(max_attempts=10, initial_delay=4.0, jitter=False, retry_timeout=10.0)
    tool = Tool(name="t", handler=fails, policy=Policy(retry=retry))
    async with FakeClock() as clock:
        result = await ExecutionEvent(actor=tool)(None, {}, ExecutionState(clock=clock))
    # 4 s, then 8 s would end at 12 s > 10 s: the second failure is final.
    assert not result.ok and clock.sleeps == [4.0]


# ------------------------------------------------------------- actors: the timeout guard


async def test_each_attempt_gets_a_fresh_deadline() -> None:
    async with FakeClock() as clock:
        handler = Slow(clock, [10.0, 10.0, 1.0])
        policy = Policy(retry=CONSTANT_1S, timeout=5.0)
        tool = Tool(name="slow", handler=handler, policy=policy)
        state = ExecutionState(clock=clock)
        result = await ExecutionEvent(actor=tool)(None, {}, state)
    assert result.ok and result.result == "done after 3"
    assert handler.started == [0.0, 6.0, 12.0]
    assert handler.cancelled == [5.0, 11.0]  # 5 s after each start, not after the first
    assert clock.monotonic() == 13.0
    retries = [e for e in state.history.get_event_list() if e.is_retry]
    assert [(e.retry_attempt, e.error_type) for e in retries] == [
        (1, "AttemptTimeoutError"),
        (2, "AttemptTimeoutError"),
    ]
    assert retries[0].original_error == (
        "Attempt 1 of actor 'slow' did not finish within its policy's timeout of 5s and was "
        "cancelled. Raise Policy(timeout=...) if the call needs longer, or let the policy "
        "retry it (Policy(retry=RetryConfig(...)))."
    )
    stats = policy.statistics()
    assert stats.timeout == TimeoutStatistics(timeout=5.0, timed_out=2)
    assert stats.retry == RetryStatistics(max_attempts=3, attempts=3, retries=2, gave_up=0)


async def test_a_timed_out_call_fails_with_its_own_error_type(
    rh_telemetry: TelemetryCapture,
) -> None:
    async with FakeClock() as clock:
        handler = Slow(clock, [60.0])
        tool = Tool(name="slow", handler=handler, policy=Policy(timeout=2.5))
        state = ExecutionState(clock=clock)
        result = await ExecutionEvent(actor=tool)(None, {}, state)
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert not result.ok and result.error_type == "AttemptTimeoutError"
    assert isinstance(result.exception, AttemptTimeoutError)
    assert isinstance(result.exception, TimeoutError)
    assert result.exception.timeout == 2.5 and result.exception.attempt == 1
    assert "within its policy's timeout of 2.5s" in (result.error_message or "")
    assert handler.cancelled == [2.5]
    assert history(state) == [("slow", "started", None), ("slow", "failed", "AttemptTimeoutError")]
    assert rh_telemetry.span_tree() == "execute_tool slow [outcome='failed'] ERROR"
    rh_telemetry.assert_no_open_spans()


async def test_a_call_that_ends_in_time_leaves_no_watchdog() -> None:
    async with FakeClock() as clock:
        handler = Slow(clock, [1.0])
        tool = Tool(name="quick", handler=handler, policy=Policy(timeout=5.0))
        result = await ExecutionEvent(actor=tool)(None, {}, ExecutionState(clock=clock))
        assert result.ok and clock.pending == 0
        assert len(asyncio.all_tasks()) == 2  # this test and the clock's driver
    assert tool.policy is not None and tool.policy.statistics().timeout == TimeoutStatistics(5.0, 0)


async def test_cancelling_a_timed_call_is_a_cancellation_not_a_timeout() -> None:
    started = asyncio.Event()
    async with FakeClock() as clock:

        async def waits(data: Any, extra: Any, state: Any) -> None:
            started.set()
            await asyncio.Event().wait()

        policy = Policy(retry=CONSTANT_1S, timeout=30.0)
        tool = Tool(name="waits", handler=waits, policy=policy)
        state = ExecutionState(clock=clock)
        task = asyncio.create_task(ExecutionEvent(actor=tool)(None, {}, state))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert clock.pending == 0  # the watchdog's sleep is gone
    assert history(state)[-1] == ("waits", "cancelled", None)
    assert policy.statistics().timeout == TimeoutStatistics(30.0, 0)
    assert policy.statistics().retry == RetryStatistics(3, attempts=1, retries=0, gave_up=0)


async def test_work_that_swallows_its_timeout_keeps_its_result() -> None:
    async with FakeClock() as clock:

        async def stubborn(data: Any, extra: Any, state: Any) -> str:
            try:
                await clock.sleep(10.0)
            except asyncio.CancelledError:
                return "kept going"
            return "slept"

        tool = Tool(name="stubborn", handler=stubborn, policy=Policy(timeout=1.0))
        result = await ExecutionEvent(actor=tool)(None, {}, ExecutionState(clock=clock))
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        await asyncio.sleep(0)  # no stray cancellation is left for the caller
    assert result.ok and result.result == "kept going"


async def test_work_that_turns_its_timeout_into_an_error_fails_with_that_error() -> None:
    async with FakeClock() as clock:

        async def converts(data: Any, extra: Any, state: Any) -> str:
            try:
                await clock.sleep(10.0)
            except asyncio.CancelledError:
                raise RuntimeError("gave up when cancelled") from None
            return "slept"

        policy = Policy(timeout=1.0)
        tool = Tool(name="converts", handler=converts, policy=policy)
        result = await ExecutionEvent(actor=tool)(None, {}, ExecutionState(clock=clock))
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert (result.ok, result.error_message) == (False, "gave up when cancelled")
    assert policy.statistics().timeout == TimeoutStatistics(1.0, 0)


async def test_a_clock_that_fails_the_timeout_is_reported() -> None:
    class BrokenClock:
        def monotonic(self) -> float:
            return 0.0

        async def sleep(self, seconds: float) -> None:
            raise OSError("the clock broke")

    async def quick(data: Any, extra: Any, state: Any) -> str:
        await asyncio.sleep(0)
        return "done"

    tool = Tool(name="quick", handler=quick, policy=Policy(timeout=1.0))
    result = await ExecutionEvent(actor=tool)(None, {}, ExecutionState(clock=BrokenClock()))
    assert (result.ok, result.error_type, result.error_message) == (
        False,
        "OSError",
        "the clock broke",
    )


# ------------------------------------------------------ actors: the breaker and the limiter


async def test_an_actor_breaker_rejects_calls_once_open(rh_telemetry: TelemetryCapture) -> None:
    calls = 0

    async def down(data: Any, extra: Any, state: Any) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    async with FakeClock() as clock:
        breaker = CircuitBreaker(
            "search-api", failure_threshold=2, recovery_timeout=30, clock=clock
        )
        tool = Tool(name="search", handler=down, policy=Policy(breaker=breaker))
        state = ExecutionState(clock=clock)
        results = [await ExecutionEvent(actor=tool)(None, {}, state) for _ in range(3)]
    assert calls == 2
    assert [r.error_type for r in results] == [
        "ConnectionError",
        "ConnectionError",
        "CircuitOpenError",
    ]
    assert breaker.statistics().rejected_count == 1
    assert rh_telemetry.span_tree().splitlines()[-1] == (
        "execute_tool search [outcome='rejected'] ERROR"
    )
    rh_telemetry.assert_metric("rh_agents_circuit_breaker_trips_total", 1, breaker="search-api")
    rh_telemetry.assert_metric(
        "rh_agents_circuit_breaker_rejections_total", 1, breaker="search-api"
    )


async def test_an_actor_retry_waits_out_its_breakers_cooldown() -> None:
    failures = [ConnectionError("1"), ConnectionError("2")]

    async def flaky(data: Any, extra: Any, state: Any) -> str:
        if failures:
            raise failures.pop(0)
        return "up"

    async with FakeClock() as clock:
        breaker = CircuitBreaker("dep", failure_threshold=2, recovery_timeout=30, clock=clock)
        retry = RetryConfig(max_attempts=4, initial_delay=1.0, jitter=False)
        tool = Tool(name="t", handler=flaky, policy=Policy(retry=retry, breaker=breaker))
        state = ExecutionState(clock=clock)
        result = await ExecutionEvent(actor=tool)(None, {}, state)
    # Attempts 1 (t=0) and 2 (t=1) fail and open the breaker at t=1; attempt 3 (t=3) is
    # rejected, and its retry_after (28 s left of the cooldown) beats the 4 s backoff;
    # attempt 4 (t=31) is the half-open probe, and succeeds.
    assert result.ok and result.result == "up"
    assert clock.sleeps == [1.0, 2.0, 28.0]
    assert [e.error_type for e in state.history.get_event_list() if e.is_retry] == [
        "ConnectionError",
        "ConnectionError",
        "CircuitOpenError",
    ]
    assert breaker.state is CircuitState.CLOSED


async def test_an_actor_limiter_caps_its_concurrent_calls() -> None:
    running = 0
    peak = 0
    release = asyncio.Event()
    two_running = asyncio.Event()

    async def work(data: Any, extra: Any, state: Any) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 2:
            two_running.set()
        await release.wait()
        running -= 1
        return int(data)

    limiter = Limiter("api", max_concurrency=2)
    tool = Tool(name="api", handler=work, policy=Policy(limiter=limiter))
    state = ExecutionState()
    calls = [asyncio.create_task(ExecutionEvent(actor=tool)(i, {}, state)) for i in range(5)]
    await two_running.wait()
    assert limiter.statistics().in_use == 2 and limiter.statistics().waiting == 3
    release.set()
    results = await asyncio.gather(*calls)
    assert [r.result for r in results] == [0, 1, 2, 3, 4]
    assert peak == 2
    assert limiter.statistics() == LimiterStatistics("api", 2, 0, 0, 2, 5)


# ------------------------------------------------------------- a property of the guards


@settings(max_examples=60, deadline=None)
@given(
    durations=st.lists(st.sampled_from([0.5, 1.0, 3.0, 9.0]), min_size=1, max_size=6),
    max_attempts=st.integers(1, 5),
    timeout=st.sampled_from([None, 2.0, 4.0]),
    budget=st.sampled_from([None, 6.0, 20.0]),
)
def test_attempts_timeouts_and_budget_follow_the_policy(
    durations: list[float], max_attempts: int, timeout: float | None, budget: float | None
) -> None:
    """Each attempt sleeps its duration and then fails (the last one succeeds)."""
    durations = durations + [0.1] * 6

    async def run() -> tuple[Any, list[float], Policy]:
        async with FakeClock() as clock:
            starts: list[float] = []
            last = len(durations) - 6

            async def handler(data: Any, extra: Any, state: Any) -> str:
                starts.append(clock.monotonic())
                n = len(starts)
                await clock.sleep(durations[n - 1])
                if n <= last:
                    raise ConnectionError(f"attempt {n}")
                return "ok"

            retry = RetryConfig(
                max_attempts=max_attempts,
                backoff_strategy=BackoffStrategy.CONSTANT,
                initial_delay=1.0,
                jitter=False,
                retry_timeout=budget,
            )
            policy = Policy(retry=retry, timeout=timeout)
            tool = Tool(name="t", handler=handler, policy=policy)
            result = await ExecutionEvent(actor=tool)(None, {}, ExecutionState(clock=clock))
            return result, starts, policy

    result, starts, policy = asyncio.run(run())
    n = len(starts)
    assert 1 <= n <= max_attempts
    stats = policy.statistics()
    assert stats.retry is not None and stats.retry.attempts == n
    assert stats.retry.retries == n - 1
    assert stats.retry.gave_up == (0 if result.ok else 1)
    expected_timeouts = sum(1 for d in durations[:n] if timeout is not None and d > timeout)
    assert stats.timeout is None or stats.timeout.timed_out == expected_timeouts
    for k in range(1, n):  # every retry started inside the time budget
        assert budget is None or starts[k] - starts[0] < budget
    if not result.ok and n < max_attempts:
        assert budget is not None  # only the time budget stops retrying early
        last_end = starts[-1] + min(durations[n - 1], timeout or math.inf)
        assert last_end + 1.0 - starts[0] >= budget


# --------------------------------------------------- a state machine of the retry guard


class RetryGuardMachine(RuleBasedStateMachine):
    """Failed attempts of many calls sharing one policy; the guard's decisions and its
    counters must match a model of max_attempts, the time budget and the retry filter."""

    def __init__(self) -> None:
        super().__init__()
        self.policy: Policy
        self.calls: list[tuple[int, float]] = []  # (failed attempts, start time)
        self.now = 0.0
        self.retries = 0
        self.gave_up = 0

    @initialize(
        max_attempts=st.integers(1, 4),
        budget=st.sampled_from([None, 3.0, 10.0]),
        delay=st.sampled_from([0.0, 1.0, 2.5]),
    )
    def create(self, max_attempts: int, budget: float | None, delay: float) -> None:
        self.retry = RetryConfig(
            max_attempts=max_attempts,
            backoff_strategy=BackoffStrategy.CONSTANT,
            initial_delay=delay,
            jitter=False,
            retry_timeout=budget,
            exclude_exceptions=(KeyError,),
        )
        self.policy = Policy(retry=self.retry)

    @rule()
    def start_call(self) -> None:
        self.calls.append((0, self.now))

    @rule(index=st.integers(0, 20), retryable=st.booleans())
    def attempt_fails(self, index: int, retryable: bool) -> None:
        live = [i for i, (attempts, _) in enumerate(self.calls) if attempts >= 0]
        if not live:
            return
        i = live[index % len(live)]
        attempts, started = self.calls[i]
        attempt = attempts + 1
        error: Exception = ConnectionError() if retryable else KeyError("no")
        delay = retry_delay(self.policy, attempt, error, started, self.now)
        budget = self.retry.retry_timeout
        expected = (
            retryable
            and attempt < self.retry.max_attempts
            and (budget is None or self.now + self.retry.initial_delay - started < budget)
        )
        if expected:
            assert delay == self.retry.initial_delay
            self.retries += 1
            self.calls[i] = (attempt, started)
        else:
            assert delay is None
            self.gave_up += 1
            self.calls[i] = (-1, started)  # the call ended

    @rule(seconds=st.sampled_from([0.5, 1.0, 4.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def counters_match(self) -> None:
        if not hasattr(self, "policy"):
            return
        stats = self.policy.statistics().retry
        assert stats is not None
        assert (stats.retries, stats.gave_up) == (self.retries, self.gave_up)


RetryGuardMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None
)
TestRetryGuardModel = RetryGuardMachine.TestCase
