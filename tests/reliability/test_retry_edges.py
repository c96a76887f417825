"""Retry budgets at their edges, and the small promises of the retry policy.

What a mutation run of ``rh_agents/core/retry.py`` showed no test would notice: the
default ``next_delay`` of ``attempts_exhausted``, the clamp of a negative backoff,
``retry_after`` hints under a second, valid settings other than the defaults, the
configuration strings of :class:`BackoffStrategy`, the 60 s floor of ``for_group``, the
equality of stop conditions and the exact wording of a refused configuration.
"""

from __future__ import annotations

import random

import pytest

from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.retry import (
    BackoffStrategy,
    RetryConfig,
    RetryState,
    StopAfterAttempt,
    StopAfterDelay,
    StopAny,
)


class Hinted(Exception):
    def __init__(self, retry_after: object) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


def test_attempts_exhausted_counts_no_backoff_unless_told() -> None:
    """Called without ``next_delay`` the budget is checked at ``now`` itself: half a
    second left is still time for an attempt."""
    config = RetryConfig(max_attempts=5, retry_timeout=10.0)
    assert config.attempts_exhausted(1, started_at=100.0, now=109.5) is False
    assert config.attempts_exhausted(1, started_at=100.0, now=109.5, next_delay=0.4) is False
    assert config.attempts_exhausted(1, started_at=100.0, now=109.5, next_delay=0.5) is True
    assert config.attempts_exhausted(1, started_at=100.0, now=110.0) is True


def test_a_negative_backoff_counts_as_none_against_the_budget() -> None:
    stop = StopAfterDelay(10.0)
    assert stop(RetryState(attempt=1, elapsed=10.0, next_delay=-3.0)) is True
    assert stop(RetryState(attempt=1, elapsed=9.0, next_delay=-3.0)) is False
    assert stop(RetryState(attempt=1, elapsed=9.0, next_delay=0.5)) is False
    assert stop(RetryState(attempt=1, elapsed=9.0, next_delay=1.0)) is True


@pytest.mark.parametrize("hint", [0.25, 0.5, 1, 0.999])
def test_a_retry_after_hint_under_a_second_is_honoured(hint: float) -> None:
    config = RetryConfig(initial_delay=0.1, jitter=False)
    assert config.calculate_delay(1, Hinted(hint)) == hint
    assert isinstance(config.calculate_delay(1, Hinted(hint)), float)


def test_a_zero_retry_after_hint_leaves_the_backoff() -> None:
    config = RetryConfig(initial_delay=0.0, jitter=False)
    assert config.calculate_delay(1, Hinted(0)) == 0.0
    assert RetryConfig(initial_delay=0.3, jitter=False).calculate_delay(1, Hinted(0.0)) == 0.3


def test_a_hint_below_the_backoff_does_not_shorten_it() -> None:
    config = RetryConfig(initial_delay=2.0, jitter=False)
    assert config.calculate_delay(1, Hinted(0.5)) == 2.0


@pytest.mark.parametrize(
    ("multiplier", "expected"),
    [(1.0, [0.5, 0.5, 0.5, 0.5]), (1.5, [0.5, 0.75, 1.125, 1.6875])],
)
def test_backoff_multipliers_from_one_up_are_accepted(
    multiplier: float, expected: list[float]
) -> None:
    config = RetryConfig(initial_delay=0.5, backoff_multiplier=multiplier, jitter=False)
    assert config.backoff_multiplier == multiplier
    assert [config.calculate_delay(n) for n in range(1, 5)] == expected


@pytest.mark.parametrize("timeout", [0.001, 0.5, 0.999])
def test_a_retry_timeout_under_a_second_is_accepted(timeout: float) -> None:
    config = RetryConfig(max_attempts=10, retry_timeout=timeout, initial_delay=0.0)
    assert config.retry_timeout == timeout
    assert config.next_delay(1, TimeoutError(), started_at=0.0, now=0.0) == 0.0
    assert config.next_delay(1, TimeoutError(), started_at=0.0, now=timeout) is None


def test_boundary_settings_are_accepted() -> None:
    config = RetryConfig(max_attempts=1, initial_delay=0.0, max_delay=0.0)
    assert (config.max_attempts, config.initial_delay, config.max_delay) == (1, 0.0, 0.0)
    assert config.next_delay(1, TimeoutError(), 0.0, 0.0) is None


@pytest.mark.parametrize(
    ("text", "strategy"),
    [
        ("constant", BackoffStrategy.CONSTANT),
        ("linear", BackoffStrategy.LINEAR),
        ("exponential", BackoffStrategy.EXPONENTIAL),
        ("fibonacci", BackoffStrategy.FIBONACCI),
    ],
)
def test_backoff_strategies_read_from_configuration_strings(
    text: str, strategy: BackoffStrategy
) -> None:
    assert strategy.value == text
    assert BackoffStrategy(text) is strategy
    assert RetryConfig(backoff_strategy=text).backoff_strategy is strategy  # type: ignore[arg-type]
    assert RetryConfig.model_validate({"backoff_strategy": text}).backoff_strategy is strategy


def test_fibonacci_delays_reach_the_cap_exactly() -> None:
    config = RetryConfig(
        backoff_strategy=BackoffStrategy.FIBONACCI, initial_delay=1.0, max_delay=5.0, jitter=False
    )
    assert [config.calculate_delay(n) for n in range(1, 8)] == [1, 1, 2, 3, 5, 5, 5]


def test_for_group_floors_the_delay_cap_at_sixty_seconds() -> None:
    config = RetryConfig.for_group(2, 0.5)
    assert config.max_delay == 60.0
    assert config.backoff_strategy is BackoffStrategy.EXPONENTIAL
    assert config.backoff_multiplier == 2.0
    assert config.jitter is True
    assert (config.max_attempts, config.initial_delay) == (3, 0.5)
    assert RetryConfig.for_group(2, 90).max_delay == 90.0
    assert RetryConfig.for_group(2, 60).max_delay == 60.0


@pytest.mark.parametrize("argument", ["retry_on", "non_retryable"])
def test_for_group_names_the_argument_that_holds_no_exception_class(argument: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        RetryConfig.for_group(1, 0.5, **{argument: (ValueError, "KeyError")})  # type: ignore[arg-type]
    assert str(raised.value).startswith(
        f"{argument} takes an exception class or a tuple (or list, or set) of exception "
        "classes, got (<class 'ValueError'>, 'KeyError'): 'KeyError' is not one."
    )


def test_no_jitter_is_drawn_for_the_last_attempt() -> None:
    config = RetryConfig(max_attempts=2)
    rng = random.Random(7)
    before = rng.getstate()
    assert config.next_delay(2, TimeoutError(), 0.0, 0.0, rng) is None
    assert rng.getstate() == before
    assert config.next_delay(1, ValueError(), 0.0, 0.0, rng) is not None
    assert rng.getstate() != before
    rng.setstate(before)
    assert config.next_delay(3, TimeoutError(), 0.0, 0.0, rng) is None
    assert rng.getstate() == before


def test_stop_conditions_compare_by_their_settings() -> None:
    assert StopAfterAttempt(3) == StopAfterAttempt(3)
    assert StopAfterAttempt(3) != StopAfterAttempt(4)
    assert StopAfterAttempt(3) != StopAfterDelay(3)
    assert StopAfterDelay(3) != StopAfterAttempt(3)
    assert StopAfterDelay(1.5) == StopAfterDelay(1.5) and StopAfterDelay(1.5) != StopAfterDelay(2)
    either = StopAfterAttempt(3) | StopAfterDelay(30)
    assert either == StopAny(StopAfterAttempt(3), StopAfterDelay(30))
    assert either != StopAny(StopAfterAttempt(3))
    assert either != StopAfterAttempt(3)
    assert StopAfterAttempt(3) != either
    assert len({StopAfterAttempt(3), StopAfterAttempt(3), StopAfterAttempt(4)}) == 2
    assert len({StopAfterDelay(3), StopAfterDelay(3.0), StopAfterAttempt(3)}) == 2
    assert hash(either) == hash(StopAny(StopAfterAttempt(3), StopAfterDelay(30)))
    assert hash(StopAfterAttempt(3)) != hash(StopAfterDelay(3))


def test_combined_conditions_stay_flat() -> None:
    three = StopAfterAttempt(3) | StopAfterDelay(30) | StopAfterAttempt(9)
    assert isinstance(three, StopAny)
    assert three.conditions == (StopAfterAttempt(3), StopAfterDelay(30), StopAfterAttempt(9))
    nested = StopAny(StopAny(StopAfterAttempt(1)), StopAfterDelay(2))
    assert nested.conditions == (StopAfterAttempt(1), StopAfterDelay(2))
    assert repr(three) == "StopAfterAttempt(3) | StopAfterDelay(30) | StopAfterAttempt(9)"


@pytest.mark.parametrize("seconds", [0.001, 0.5, 1, 2.5])
def test_stop_after_delay_takes_any_positive_number(seconds: float) -> None:
    assert StopAfterDelay(seconds).seconds == seconds


@pytest.mark.parametrize("seconds", [0, 0.0, -1])
def test_stop_after_delay_refuses_no_time_at_all(seconds: float) -> None:
    with pytest.raises(InvalidArgumentError, match="StopAfterDelay takes a finite number"):
        StopAfterDelay(seconds)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"max_delay": -1.0},
            "Invalid RetryConfig: max_delay must be a finite number of seconds >= 0, got "
            "-1.0. Pass 0 for no delay.",
        ),
        (
            {"max_delay": "soon"},
            "Invalid RetryConfig: max_delay: Input should be a valid number, unable to parse "
            "string as a number.",
        ),
        (
            {"max_delay": -1.0, "colour": "red"},
            "Invalid RetryConfig: max_delay must be a finite number of seconds >= 0, got "
            "-1.0. Pass 0 for no delay. RetryConfig has no setting named 'colour'; check the "
            "spelling.",
        ),
    ],
)
def test_a_refused_configuration_says_why_in_sentences(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        RetryConfig(**settings)  # type: ignore[arg-type]
    assert str(raised.value) == message


def test_a_problem_in_a_nested_setting_names_its_path() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        RetryConfig(retry_on_exceptions=[ValueError, 3])  # type: ignore[list-item]
    assert str(raised.value).startswith(
        "Invalid RetryConfig: retry_on_exceptions takes an exception class or a tuple"
    )
