"""Error handling in parallel groups: fail slow, fail fast, retries, circuit breakers.

    python examples/parallel_error_handling.py

1. FAIL_SLOW (the default): every item runs; failures are ``ok=False`` results, summarized
   by type, and ``raise_for_failures()`` turns them into an ``ExceptionGroup`` for
   ``except*``.
2. FAIL_FAST: the first failure cancels the running items, queued items never start, and
   the original exception is re-raised (``except ValueError`` works).
3. Retries: a flaky tool is retried with exponential backoff and jitter; each retry is a
   RETRYING event on the bus, and the worker is free for other items during the backoff.
4. A circuit breaker shared by name (``circuit_breaker="search-api"``): after repeated
   failures calls are rejected without running, until a probe after the cooldown succeeds.
5. One ``Policy`` for an actor and a group: each attempt is bounded by a timeout, and a
   retry gets a fresh deadline; the group given the same policy guards its items once.

No network is used; the run takes ~1 s.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from pydantic import BaseModel

from rh_agents import (
    ErrorStrategy,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    ParallelGroupError,
    Policy,
    RetryConfig,
    Tool,
)


class Query(BaseModel):
    text: str


# --------------------------------------------------------------- 1. FAIL_SLOW


async def call_api(data: Query, extra: dict[str, Any], state: ExecutionState) -> str:
    await asyncio.sleep(0.01)
    if data.text in ("q2", "q5"):
        raise ConnectionError("refused")
    if data.text == "q6":
        raise TimeoutError()
    return f"200 OK for {data.text}"


api_tool = Tool(name="call_api", input_model=Query, handler=call_api)


async def fail_slow(state: ExecutionState) -> None:
    print("1. FAIL_SLOW: collect everything")
    async with state.parallel(max_workers=4, name="api-calls") as p:
        for i in range(8):
            p.add(ExecutionEvent(actor=api_tool)(Query(text=f"q{i}"), {}, state))
    for r in p.results:
        detail = f": {r.error_message}" if r.error_message != r.error_type else ""
        line = r.result if r.ok else f"failed with {r.error_type}{detail}"
        print(f"   [{r.index}] {line}")
    print(f"   summary: {p.group.error_summary()}")
    try:
        p.raise_for_failures()
    except* ConnectionError as group:
        print(f"   except* ConnectionError caught {len(group.exceptions)}")
    except* TimeoutError as group:
        print(f"   except* TimeoutError caught {len(group.exceptions)}")


# --------------------------------------------------------------- 2. FAIL_FAST


async def validate(record: int) -> int:
    await asyncio.sleep(0.01 * (record + 1))
    if record == 1:
        raise ValueError(f"record {record} has no id")
    return record


async def fail_fast(state: ExecutionState) -> None:
    print("2. FAIL_FAST: stop at the first error")
    p = state.parallel(max_workers=2, name="validation", error_strategy=ErrorStrategy.FAIL_FAST)
    try:
        async with p:
            for record in range(6):
                p.add(lambda record=record: validate(record))
    except ValueError as exc:
        print(f"   raised ValueError: {exc}")
    for status in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        names = [r.name for r in p.results if r.status is status]
        print(f"   {status.value:<9} {names}")
    never = sum(1 for r in p.results if r.attempts == 0)
    print(f"   never started: {never}; group status: {p.group.status.value}")


# ----------------------------------------------------------------- 3. retries

_attempts: dict[str, int] = {}


async def flaky_search(data: Query, extra: dict[str, Any], state: ExecutionState) -> str:
    _attempts[data.text] = _attempts.get(data.text, 0) + 1
    await asyncio.sleep(0.005)
    if data.text == "flaky" and _attempts[data.text] < 3:
        raise ConnectionError("connection reset by peer")
    return f"results for {data.text}"


search_tool = Tool(name="search", input_model=Query, handler=flaky_search)


async def retries(state: ExecutionState) -> None:
    print("3. retries with exponential backoff")

    def on_retry(event: Any) -> None:
        if event.execution_status is ExecutionStatus.RETRYING:
            print(
                f"   RETRYING {event.address}: attempt {event.retry_attempt} failed "
                f"({event.original_error}); next in {event.retry_delay * 1000:.0f} ms"
            )

    state.event_bus.subscribe(on_retry)
    async with state.parallel(
        max_workers=1, name="search", max_retries=3, retry_delay=0.02, rng=random.Random(42)
    ) as p:
        for text in ("flaky", "stable", "also-stable"):
            p.add(lambda text=text: ExecutionEvent(actor=search_tool)(Query(text=text), {}, state))
    state.event_bus.unsubscribe(on_retry)
    for r in p.results:
        print(f"   {r.result} after {r.attempts} attempt(s)")


# --------------------------------------------------------- 4. circuit breaker

service_up = False
calls = 0


async def search_api(query: str) -> str:
    global calls
    calls += 1
    await asyncio.sleep(0.005)
    if not service_up:
        raise ConnectionError("search-api: 503 Service Unavailable")
    return f"hits for {query}"


async def breaker(state: ExecutionState) -> None:
    global service_up
    print("4. circuit breaker shared by name")

    def group(name: str) -> Any:
        return state.parallel(
            max_workers=1,
            name=name,
            circuit_breaker="search-api",
            circuit_breaker_threshold=3,
            circuit_breaker_timeout=0.1,
        )

    async with group("batch-1") as p:
        for i in range(5):
            p.add(lambda i=i: search_api(f"q{i}"))
    cb = state.circuit_breakers.get("search-api")
    print(f"   batch-1: {calls} calls made, breaker {cb.state.value}")
    print(f"   rejected: {p.results[-1].error_message}")

    async with group("batch-2") as p:
        p.add(lambda: search_api("q5"))
    print(f"   batch-2 (shares the breaker): {calls} calls made, {p.results[0].error_type}")

    await asyncio.sleep(0.11)  # the cooldown passes; the service is back
    service_up = True
    print(f"   after the cooldown the breaker is {cb.state.value}")
    async with group("batch-3") as p:
        for i in range(3):
            p.add(lambda i=i: search_api(f"r{i}"))
    print(
        f"   batch-3: {sum(r.ok for r in p.results)}/3 ok, breaker {cb.state.value}, "
        f"trips so far: {cb.trip_count}"
    )


# -------------------------------------------------- 5. one policy, per-attempt timeouts

_model_calls: dict[str, int] = {}


async def hangs_once(data: Query, extra: dict[str, Any], state: ExecutionState) -> str:
    """A model that hangs on the first call of each prompt, then answers at once."""
    _model_calls[data.text] = _model_calls.get(data.text, 0) + 1
    if _model_calls[data.text] == 1:
        await asyncio.sleep(60)
    return f"answer to {data.text!r}"


model_policy = Policy(
    retry=RetryConfig(max_attempts=3, initial_delay=0.01, jitter=False),
    timeout=0.2,  # seconds per attempt
)
model = Tool(name="model", input_model=Query, handler=hangs_once, policy=model_policy)


async def policies(state: ExecutionState) -> None:
    print("5. one Policy: a timeout per attempt, retried with a fresh deadline")
    result = await ExecutionEvent(actor=model)(Query(text="hello"), {}, state)
    [retry] = [e for e in state.history.get_event_list() if e.address == "model" and e.is_retry]
    print(f"   {result.result}, after attempt {retry.retry_attempt} failed: {retry.error_type}")
    async with state.parallel(max_workers=2, name="prompts", policy=model_policy) as p:
        for text in ("a", "b"):
            p.add(lambda text=text: ExecutionEvent(actor=model)(Query(text=text), {}, state))
    print(f"   group with the same policy: {[(r.result, r.attempts) for r in p.results]}")
    stats = model_policy.statistics()
    assert stats.retry is not None and stats.timeout is not None
    print(
        f"   policy statistics: {stats.retry.attempts} attempts, {stats.retry.retries} "
        f"retries, {stats.timeout.timed_out} timed out"
    )


async def main() -> None:
    # Failed groups are also logged (logger "rh_agents.parallel", level WARNING).
    logging.basicConfig(format="   (log) %(message)s", level=logging.WARNING)
    state = ExecutionState()
    await fail_slow(state)
    await fail_fast(state)
    await retries(state)
    await breaker(state)
    await policies(state)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except ParallelGroupError as exc:  # pragma: no cover - not raised: shown for reference
        print(exc)
