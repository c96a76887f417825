"""AdaptiveLimiter: AIMD concurrency that shrinks on overload and grows back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rh_agents import AdaptiveLimiter, ExecutionState, Limiter, Policy, RetryConfig
from rh_agents.core.adaptive_limiter import is_overload
from rh_agents.core.errors import (
    AttemptTimeoutError,
    CircuitOpenError,
    InvalidArgumentError,
    RejectedResultError,
)
from rh_agents.core.limiter import LimiterStatistics
from rh_agents.core.retry import BackoffStrategy
from rh_agents.testing import FakeClock, TelemetryCapture


class TooManyRequests(Exception):
    """What an HTTP client raises for a 429."""

    status_code = 429


class Response:
    status_code = 503


class HttpError(Exception):
    def __init__(self) -> None:
        super().__init__("service unavailable")
        self.response = Response()


class Throttled(Exception):
    retry_after = 2.0


class ClientResponseError(Exception):
    """What aiohttp raises: the HTTP status is ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@pytest.mark.parametrize(
    ("error", "overload"),
    [
        (TooManyRequests(), True),
        (HttpError(), True),
        (Throttled(), True),
        (AttemptTimeoutError("actor 'x'", 1.0, 1), True),
        (TimeoutError(), True),
        (RejectedResultError("actor 'x'", 1, {"status": "overloaded"}), True),
        (CircuitOpenError("api", 3.0), False),
        (ValueError("bad input"), False),
        (ClientResponseError(529), True),
        (ClientResponseError(503), True),
        (ClientResponseError(404), False),
    ],
)
def test_overload_signals(error: BaseException, overload: bool) -> None:
    assert is_overload(error) is overload


async def test_the_limit_halves_on_overload_and_grows_by_one_per_window() -> None:
    limiter = AdaptiveLimiter("llm", max_concurrency=8)
    changes: list[tuple[int, int]] = []
    limiter.add_listener(lambda _, old, new: changes.append((old, new)))
    await limiter.acquire()
    limiter.record_outcome(TooManyRequests())
    limiter.release()
    assert limiter.limit == 4
    for _ in range(4):  # a window of `limit` successes raises it by one
        limiter.record_outcome(None)
    assert limiter.limit == 5
    limiter.record_outcome(ValueError("not an overload"))
    assert limiter.limit == 5
    assert changes == [(8, 4), (4, 5)]
    assert limiter.statistics() == LimiterStatistics("llm", 8, 0, 0, 1, 1, limit=5)
    assert limiter.lowest_limit == 4


async def test_overloads_of_calls_already_in_flight_count_once() -> None:
    limiter = AdaptiveLimiter("llm", max_concurrency=8)
    for _ in range(6):
        await limiter.acquire()
    for _ in range(6):  # six calls that were running together all get a 429
        limiter.record_outcome(TooManyRequests())
        limiter.release()
    assert limiter.limit == 4  # one decrease, not six
    await limiter.acquire()
    limiter.record_outcome(TooManyRequests())  # a new call, under the new limit
    limiter.release()
    assert limiter.limit == 2


async def test_a_lower_limit_holds_back_new_callers_and_a_higher_one_wakes_them() -> None:
    limiter = AdaptiveLimiter("llm", max_concurrency=2, initial=1)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    assert limiter.waiting == 1 and limiter.in_use == 1
    limiter.record_outcome(None)  # one success at limit 1: the limit becomes 2
    await asyncio.sleep(0)
    assert waiter.done() and limiter.in_use == 2 and limiter.limit == 2
    limiter.release()
    limiter.release()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_concurrency": 0}, r"min_concurrency of adaptive limiter 'x' must be"),
        ({"min_concurrency": 5}, r"min_concurrency of adaptive limiter 'x' must be"),
        ({"initial": 5}, r"initial of adaptive limiter 'x' must be an integer from"),
        ({"initial": 0}, r"initial of adaptive limiter 'x' must be an integer from"),
        ({"decrease_factor": 1.0}, r"decrease_factor of adaptive limiter 'x' must be"),
        ({"decrease_factor": 0}, r"decrease_factor of adaptive limiter 'x' must be"),
        ({"overload": "429"}, r"overload of adaptive limiter 'x' must be a predicate"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        AdaptiveLimiter("x", max_concurrency=4, **kwargs)


def test_an_adaptive_limiter_is_a_limiter() -> None:
    limiter = AdaptiveLimiter("x", max_concurrency=4)
    assert isinstance(limiter, Limiter)
    assert repr(limiter) == "<AdaptiveLimiter 'x' limit=4/4 in_use=0 waiting=0>"


# ----------------------------------------------------------------- property-based

_STEP = st.one_of(
    st.just("start"),
    st.sampled_from(["ok", "overload", "other"]),
)


@settings(max_examples=150, deadline=None)
@given(
    max_concurrency=st.integers(min_value=1, max_value=12),
    factor=st.sampled_from([0.1, 0.5, 0.75, 0.9]),
    steps=st.lists(_STEP, max_size=80),
)
def test_the_limit_stays_in_bounds_and_recovers_after_the_overload_stops(
    max_concurrency: int, factor: float, steps: list[str]
) -> None:
    async def run() -> None:
        limiter = AdaptiveLimiter("p", max_concurrency=max_concurrency, decrease_factor=factor)
        running = 0
        for step in steps:
            if step == "start":
                if limiter.in_use < limiter.limit:  # a permit is free: acquire() returns
                    await limiter.acquire()
                    running += 1
            elif running:
                error = {"ok": None, "overload": TooManyRequests(), "other": KeyError()}[step]
                limiter.record_outcome(error)
                limiter.release()
                running -= 1
            assert 1 <= limiter.limit <= max_concurrency
            assert limiter.in_use <= max_concurrency
            assert limiter.in_use == running
        for _ in range(running):
            limiter.record_outcome(None)
            limiter.release()
        # The overload stopped: calls succeed, and the limit climbs back to the maximum.
        for _ in range(max_concurrency * max_concurrency):
            await limiter.acquire()
            limiter.record_outcome(None)
            limiter.release()
            assert 1 <= limiter.limit <= max_concurrency
        assert limiter.limit == max_concurrency

    asyncio.run(run())


# --------------------------------------------------------- in a group, with telemetry


async def test_a_group_backs_off_to_what_the_server_takes_and_reports_it(
    rh_telemetry: TelemetryCapture,
) -> None:
    capacity = 2  # the server answers 429 beyond two concurrent requests
    running = 0
    peak_accepted = 0

    async with FakeClock() as clock:

        async def request() -> str:
            nonlocal running, peak_accepted
            if running >= capacity:
                raise TooManyRequests("slow down")
            running += 1
            peak_accepted = max(peak_accepted, running)
            try:
                await clock.sleep(1.0)
            finally:
                running -= 1
            return "ok"

        limiter = AdaptiveLimiter("api", max_concurrency=8)
        retry = RetryConfig(
            max_attempts=20, backoff_strategy=BackoffStrategy.CONSTANT, initial_delay=0.5
        )
        state = ExecutionState(clock=clock)
        policy = Policy(retry=retry, limiter=limiter)
        async with state.parallel(max_workers=8, name="calls", policy=policy) as p:
            for _ in range(16):
                p.add(request)
            results = await p.gather()
    assert all(r.ok for r in results)
    assert peak_accepted <= capacity
    assert limiter.lowest_limit <= capacity
    assert 1 <= limiter.limit <= 8
    group = rh_telemetry.one("parallel calls")
    attributes = group.attributes or {}
    assert attributes["rh_agents.limiter.name"] == "api"
    assert attributes["rh_agents.limiter.limit.initial"] == 8
    assert attributes["rh_agents.limiter.limit.min"] == limiter.lowest_limit
    assert attributes["rh_agents.limiter.limit"] == limiter.limit
    changes = [(e.attributes or {}) for e in group.events if e.name == "limiter.limit_change"]
    assert changes and changes[0]["rh_agents.limiter.from"] == 8
    assert changes[0]["rh_agents.limiter.limit"] == 4
    rh_telemetry.assert_metric("rh_agents_limiter_limit", limiter.limit, limiter="api")
    rh_telemetry.assert_no_open_spans()


def test_the_limit_grows_after_exactly_limit_successes_counted_from_each_change() -> None:
    changes: list[tuple[int, int]] = []
    limiter = AdaptiveLimiter("api", max_concurrency=4, initial=2, min_concurrency=2)
    limiter.add_listener(lambda _, old, new: changes.append((old, new)))
    limiter.record_outcome(None)
    assert limiter.limit == 2  # one success of the two a limit of 2 needs
    limiter.record_outcome(None)
    assert limiter.limit == 3
    limiter.record_outcome(None)
    limiter.record_outcome(None)
    assert limiter.limit == 3  # the count started again at the change: 3 are needed
    limiter.record_outcome(None)
    assert limiter.limit == 4
    for _ in range(10):
        limiter.record_outcome(None)
    assert limiter.limit == 4 and changes == [(2, 3), (3, 4)]


def test_an_overload_at_the_floor_changes_nothing_but_restarts_the_count() -> None:
    changes: list[tuple[int, int]] = []
    limiter = AdaptiveLimiter("api", max_concurrency=4, initial=2, min_concurrency=2)
    limiter.add_listener(lambda _, old, new: changes.append((old, new)))
    limiter.record_outcome(None)
    limiter.record_outcome(TooManyRequests())  # halving 2 gives 1, below the floor
    assert limiter.limit == 2 and changes == []  # no change, no listener call
    limiter.record_outcome(None)
    assert limiter.limit == 2  # the success before the overload no longer counts
    limiter.record_outcome(None)
    assert limiter.limit == 3 and changes == [(2, 3)]


def test_overloads_reported_with_nothing_in_flight_each_decrease() -> None:
    # No call holds a permit, so no later report is the same overload: each one halves.
    limiter = AdaptiveLimiter("api", max_concurrency=16)
    for expected in (8, 4, 2, 1, 1):
        limiter.record_outcome(TooManyRequests())
        assert limiter.limit == expected
    assert limiter.lowest_limit == 1


async def test_rate_clock_and_burst_are_those_of_a_limiter() -> None:
    async with FakeClock() as clock:
        limiter = AdaptiveLimiter("api", max_concurrency=4, rate=2.0, clock=clock, burst=2)
        assert (limiter.rate, limiter.burst, limiter.max_concurrency) == (2.0, 2, 4)
        starts: list[float] = []

        async def call() -> None:
            async with limiter:
                starts.append(clock.monotonic())

        await asyncio.gather(*(call() for _ in range(4)))
        assert starts == [0.0, 0.0, 0.5, 1.0]  # the burst at once, then the rate
