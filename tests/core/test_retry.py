"""Tests for rh_agents.core.retry."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rh_agents.core.errors import (
    CircuitOpenError,
    InvalidArgumentError,
    LifecycleError,
)
from rh_agents.core.retry import BackoffStrategy, RetryConfig
from rh_agents.testing.clock import FakeClock


class _RateLimited(Exception):
    def __init__(self, retry_after: object) -> None:
        super().__init__("429 Too Many Requests")
        self.retry_after = retry_after


def _delays(config: RetryConfig, attempts: int) -> list[float]:
    return [config.calculate_delay(n) for n in range(1, attempts + 1)]


# --- defaults and validation ---------------------------------------------------------


def test_defaults() -> None:
    config = RetryConfig()
    assert config.max_attempts == 3
    assert config.backoff_strategy is BackoffStrategy.EXPONENTIAL
    assert (config.initial_delay, config.max_delay, config.backoff_multiplier) == (1, 60, 2)
    assert config.jitter
    assert config.retry_on_exceptions == (Exception,)
    assert config.exclude_exceptions == ()
    assert config.retry_on is None
    assert config.retry_timeout is None
    assert config.enabled


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be an integer >= 1"),
        ({"max_attempts": True}, "max_attempts"),
        ({"initial_delay": -1.0}, "initial_delay must be a finite number"),
        ({"initial_delay": math.nan}, "initial_delay"),
        ({"max_delay": math.inf}, "max_delay must be a finite number"),
        ({"backoff_multiplier": 0.5}, "backoff_multiplier must be a finite number >= 1"),
        ({"backoff_multiplier": math.inf}, "backoff_multiplier"),
        ({"retry_timeout": 0}, "retry_timeout"),
        ({"retry_timeout": -3.0}, "retry_timeout"),
        ({"retry_timeout": math.nan}, "retry_timeout"),
        ({"retry_on_exceptions": ("ValueError",)}, "exception classes"),
        ({"exclude_exceptions": (ValueError(),)}, "exception classes"),
        ({"retry_on": ValueError}, "retry_on is a predicate"),
        ({"max_attemps": 2}, "no setting named 'max_attemps'"),
        ({"initial_delay": "soon"}, "initial_delay"),
    ],
)
def test_invalid_settings_raise_invalid_argument_error(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        RetryConfig(**kwargs)


def test_exception_types_may_be_a_list_or_a_single_class() -> None:
    assert RetryConfig(retry_on_exceptions=[TimeoutError, OSError]).retry_on_exceptions == (
        TimeoutError,
        OSError,
    )
    assert RetryConfig(exclude_exceptions=KeyError).exclude_exceptions == (KeyError,)


def test_config_is_immutable() -> None:
    config = RetryConfig()
    with pytest.raises(ValueError):
        config.max_attempts = 10  # type: ignore[misc]


# --- should_retry --------------------------------------------------------------------


def test_retries_matching_exceptions_only() -> None:
    config = RetryConfig(retry_on_exceptions=(TimeoutError, ConnectionError))
    assert config.should_retry(TimeoutError())
    assert config.should_retry(ConnectionResetError())  # a subclass
    assert not config.should_retry(ValueError())


def test_excluded_exceptions_win_over_included_ones() -> None:
    config = RetryConfig(exclude_exceptions=(PermissionError,))
    assert config.should_retry(OSError())
    assert not config.should_retry(PermissionError())


def test_predicate_must_agree() -> None:
    config = RetryConfig(retry_on=lambda exc: "transient" in str(exc))
    assert config.should_retry(RuntimeError("transient glitch"))
    assert not config.should_retry(RuntimeError("bad request"))


@pytest.mark.parametrize(
    "exc",
    [
        asyncio.CancelledError(),
        KeyboardInterrupt(),
        SystemExit(1),
        GeneratorExit(),
        InvalidArgumentError("bad argument"),
        LifecycleError("wrong order"),
    ],
)
def test_never_retries_cancellation_exit_or_usage_errors(exc: BaseException) -> None:
    config = RetryConfig(retry_on_exceptions=(BaseException,), retry_on=lambda _: True)
    assert not config.should_retry(exc)


def test_disabled_config_never_retries() -> None:
    config = RetryConfig(enabled=False)
    assert not config.should_retry(TimeoutError())
    assert config.attempts_exhausted(1, started_at=0.0, now=0.0)


# --- calculate_delay -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (BackoffStrategy.CONSTANT, [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]),
        (BackoffStrategy.LINEAR, [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]),
        (BackoffStrategy.EXPONENTIAL, [2.0, 6.0, 18.0, 54.0, 100.0, 100.0]),
        (BackoffStrategy.FIBONACCI, [2.0, 2.0, 4.0, 6.0, 10.0, 16.0]),
    ],
)
def test_strategies_without_jitter(strategy: BackoffStrategy, expected: list[float]) -> None:
    config = RetryConfig(
        backoff_strategy=strategy,
        initial_delay=2.0,
        backoff_multiplier=3.0,
        max_delay=100.0,
        jitter=False,
    )
    assert _delays(config, 6) == expected


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    for strategy in BackoffStrategy:
        config = RetryConfig(backoff_strategy=strategy, max_delay=30.0, jitter=False)
        expected = 1.0 if strategy is BackoffStrategy.CONSTANT else 30.0
        assert config.calculate_delay(10_000_000) == expected


def test_zero_initial_delay_means_no_wait() -> None:
    config = RetryConfig(initial_delay=0.0, jitter=False)
    assert config.calculate_delay(5000) == 0.0


@given(attempt=st.integers(1, 200), seed=st.integers(0, 2**32))
def test_jitter_stays_between_half_and_full_delay(attempt: int, seed: int) -> None:
    plain = RetryConfig(jitter=False, max_delay=30.0)
    jittered = RetryConfig(jitter=True, max_delay=30.0)
    full = plain.calculate_delay(attempt)
    delay = jittered.calculate_delay(attempt, rng=random.Random(seed))
    assert 0.5 * full <= delay <= full


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    config = RetryConfig()
    first = [config.calculate_delay(n, rng=random.Random(7)) for n in (1, 2, 3)]
    second = [config.calculate_delay(n, rng=random.Random(7)) for n in (1, 2, 3)]
    assert first == second


def test_retry_after_hint_is_honoured_even_above_max_delay() -> None:
    config = RetryConfig(initial_delay=1.0, max_delay=10.0, jitter=False)
    assert config.calculate_delay(1, _RateLimited(30)) == 30.0
    assert config.calculate_delay(4, _RateLimited(0.5)) == 8.0  # the larger one wins
    assert config.calculate_delay(1, CircuitOpenError("llm", retry_after=12.5)) == 12.5


@pytest.mark.parametrize("hint", [None, "30", True, -1, math.nan, math.inf])
def test_unusable_retry_after_hints_are_ignored(hint: object) -> None:
    config = RetryConfig(jitter=False)
    assert config.calculate_delay(1, _RateLimited(hint)) == 1.0


@pytest.mark.parametrize("attempt", [0, -1, True, 1.5])
def test_attempt_numbers_start_at_one(attempt: object) -> None:
    with pytest.raises(InvalidArgumentError, match="1-based"):
        RetryConfig().calculate_delay(attempt)  # type: ignore[arg-type]


# --- attempts_exhausted --------------------------------------------------------------


def test_max_attempts_counts_the_first_attempt() -> None:
    config = RetryConfig(max_attempts=3)
    assert not config.attempts_exhausted(1, started_at=0.0, now=0.0)
    assert not config.attempts_exhausted(2, started_at=0.0, now=0.0)
    assert config.attempts_exhausted(3, started_at=0.0, now=0.0)
    assert RetryConfig(max_attempts=1).attempts_exhausted(1, started_at=0.0, now=0.0)


def test_retry_timeout_includes_the_next_delay() -> None:
    config = RetryConfig(max_attempts=100, retry_timeout=10.0)
    assert not config.attempts_exhausted(1, started_at=100.0, now=105.0, next_delay=4.0)
    assert config.attempts_exhausted(1, started_at=100.0, now=105.0, next_delay=5.0)
    assert config.attempts_exhausted(1, started_at=100.0, now=111.0)


async def test_a_caller_loop_follows_the_policy_on_a_fake_clock() -> None:
    config = RetryConfig(max_attempts=4, initial_delay=1.0, jitter=False)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise TimeoutError("upstream timed out")
        return "ok"

    async with FakeClock() as clock:
        started = clock.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await flaky()
                break
            except Exception as exc:
                if not config.should_retry(exc):
                    raise
                delay = config.calculate_delay(attempt, exc)
                if config.attempts_exhausted(attempt, started, clock.monotonic(), delay):
                    raise
                await clock.sleep(delay)

    assert result == "ok"
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert clock.monotonic() == 7.0


# --- for_group -----------------------------------------------------------------------


def test_for_group_maps_group_settings() -> None:
    config = RetryConfig.for_group(2, 0.5)
    assert config.max_attempts == 3
    assert config.backoff_strategy is BackoffStrategy.EXPONENTIAL
    assert config.initial_delay == 0.5
    assert config.jitter
    assert config.retry_on_exceptions == (Exception,)
    assert config.retry_on is None


def test_for_group_accepts_types_or_a_predicate() -> None:
    by_types = RetryConfig.for_group(1, 1.0, retry_on=(TimeoutError,), non_retryable=[KeyError])
    assert by_types.should_retry(TimeoutError())
    assert not by_types.should_retry(ValueError())
    assert by_types.exclude_exceptions == (KeyError,)

    by_class = RetryConfig.for_group(1, 1.0, retry_on=TimeoutError)
    assert by_class.retry_on_exceptions == (TimeoutError,)

    by_predicate = RetryConfig.for_group(1, 1.0, retry_on=lambda exc: isinstance(exc, KeyError))
    assert by_predicate.should_retry(KeyError())
    assert not by_predicate.should_retry(ValueError())


def test_for_group_keeps_a_long_first_delay_uncapped() -> None:
    config = RetryConfig.for_group(1, 120.0)
    assert config.max_delay == 120.0
    assert config.calculate_delay(1, rng=random.Random(0)) >= 60.0


def test_for_group_with_no_retries_never_retries_twice() -> None:
    config = RetryConfig.for_group(0, 1.0)
    assert config.attempts_exhausted(1, started_at=0.0, now=0.0)


@pytest.mark.parametrize(
    ("max_retries", "retry_delay", "message"),
    [(-1, 1.0, "max_retries"), (1.5, 1.0, "max_retries"), (1, -0.1, "retry_delay")],
)
def test_for_group_validates(max_retries: object, retry_delay: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        RetryConfig.for_group(max_retries, retry_delay)  # type: ignore[arg-type]
