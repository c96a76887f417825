"""Spans and metrics of real runs, asserted as trees and exact samples."""

from __future__ import annotations

import asyncio
import random

import pytest
from pydantic import BaseModel

from rh_agents import (
    LLM,
    Agent,
    ErrorStrategy,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    RetryConfig,
    Tool,
)
from rh_agents.core.errors import CircuitOpenError, EventFailedError
from rh_agents.core.parallel import ParallelTimeoutError
from rh_agents.state_backends import InMemoryStateBackend
from rh_agents.testing import FakeClock, TelemetryCapture, capture_telemetry


class Q(BaseModel):
    text: str


async def _search(data: Q, ctx: dict[str, object], state: ExecutionState) -> str:
    return f"found {data.text}"


SEARCH = Tool(name="search", input_model=Q, handler=_search)


async def _agent(data: Q, ctx: dict[str, object], state: ExecutionState) -> list[str]:
    first = await ExecutionEvent(actor=SEARCH)(Q(text=data.text), {}, state)
    second = await ExecutionEvent(actor=SEARCH)(Q(text=data.text + "!"), {}, state)
    return [first.result, second.result]


AGENT = Agent(name="researcher", input_model=Q, handler=_agent)


def _terminal(state: ExecutionState) -> int:
    return sum(
        1
        for e in state.history.get_event_list()
        if e.kind == "event" and e.execution_status.is_terminal
    )


async def test_agent_calling_tools_gives_a_span_tree(rh_telemetry: TelemetryCapture) -> None:
    state = ExecutionState()
    result = await ExecutionEvent(actor=AGENT)(Q(text="x"), {}, state)
    assert result.ok
    assert rh_telemetry.span_tree() == (
        "invoke_agent researcher [outcome='completed']\n"
        "  execute_tool search [outcome='completed']\n"
        "  execute_tool search [outcome='completed']"
    )
    agent = rh_telemetry.one("invoke_agent researcher")
    attrs = agent.attributes or {}
    assert attrs["gen_ai.operation.name"] == "invoke_agent"
    assert attrs["gen_ai.agent.name"] == "researcher"
    assert attrs["rh_agents.event.address"] == "researcher"
    tools = rh_telemetry.find("execute_tool search")
    assert {(t.attributes or {})["rh_agents.event.address"] for t in tools} == {
        "researcher/search",
        "researcher/search#1",
    }
    assert all((t.attributes or {})["gen_ai.tool.name"] == "search" for t in tools)
    rh_telemetry.assert_metric(
        "rh_agents_events_total", 2, operation="execute_tool", name="search", outcome="completed"
    )
    assert rh_telemetry.histogram_count("rh_agents_event_duration_seconds", name="researcher") == 1
    rh_telemetry.assert_no_open_spans()


async def test_llm_spans_are_client_chat_spans(rh_telemetry: TelemetryCapture) -> None:
    async def answer(data: Q, ctx: object, state: object) -> str:
        return "42"

    llm = LLM(name="gpt-stub", input_model=Q, handler=answer)
    state = ExecutionState()
    await ExecutionEvent(actor=llm)(Q(text="q"), {}, state)
    cached = await ExecutionEvent(actor=llm)(Q(text="q"), {}, state)
    assert cached.ok
    spans = rh_telemetry.find("chat gpt-stub")
    assert len(spans) == 2
    assert all(s.kind.name == "CLIENT" for s in spans)
    assert [(s.attributes or {})["rh_agents.outcome"] for s in spans] == ["completed", "cached"]
    rh_telemetry.assert_metric("rh_agents_events_total", 1, name="gpt-stub", outcome="cached")


async def test_failures_mark_the_span_and_count_errors(rh_telemetry: TelemetryCapture) -> None:
    async def broken(data: Q, ctx: object, state: object) -> str:
        raise ConnectionError("refused")

    tool = Tool(name="flaky", input_model=Q, handler=broken)
    state = ExecutionState()
    result = await ExecutionEvent(actor=tool)(Q(text="q"), {}, state)
    rejected = await ExecutionEvent(actor=tool)({"wrong": 1}, {}, state)
    assert not result.ok and not rejected.ok
    failed = rh_telemetry.one("execute_tool flaky", rh_agents__outcome="failed")
    assert failed.status.status_code.name == "ERROR"
    assert (failed.attributes or {})["error.type"] == "ConnectionError"
    assert [e.name for e in failed.events] == ["exception"]
    assert rh_telemetry.one("execute_tool flaky", rh_agents__outcome="rejected")
    rh_telemetry.assert_metric(
        "rh_agents_event_errors_total", 1, name="flaky", error_type="ConnectionError"
    )
    rh_telemetry.assert_metric(
        "rh_agents_event_errors_total", 1, name="flaky", error_type="InputValidationError"
    )


async def test_group_span_parents_every_event_span_with_mixed_outcomes(
    rh_telemetry: TelemetryCapture,
) -> None:
    async def maybe(data: Q, ctx: object, state: object) -> str:
        if data.text.endswith("3") or data.text.endswith("7"):
            raise ValueError(f"bad {data.text}")
        return data.text

    tool = Tool(name="work", input_model=Q, handler=maybe)

    async def orchestrate(data: Q, ctx: object, state: ExecutionState) -> int:
        async with state.parallel(max_workers=3, name="batch") as p:
            for i in range(10):
                p.add(ExecutionEvent(actor=tool)(Q(text=f"doc{i}"), {}, state))
            results = await p.gather()
        return sum(r.ok for r in results)

    boss = Agent(name="boss", input_model=Q, handler=orchestrate)
    state = ExecutionState()
    result = await ExecutionEvent(actor=boss)(Q(text="go"), {}, state)
    assert result.result == 8
    group = rh_telemetry.one("parallel batch")
    assert rh_telemetry.parent_of(group) is rh_telemetry.one("invoke_agent boss") or (
        rh_telemetry.parent_of(group).name == "invoke_agent boss"  # type: ignore[union-attr]
    )
    attrs = group.attributes or {}
    assert attrs["rh_agents.parallel.size"] == 10
    assert attrs["rh_agents.parallel.completed"] == 8
    assert attrs["rh_agents.parallel.failed"] == 2
    assert attrs["rh_agents.parallel.max_workers"] == 3
    assert attrs["rh_agents.parallel.error_strategy"] == "fail_slow"
    children = rh_telemetry.children(group)
    assert len(children) == 10
    assert sorted((c.attributes or {})["rh_agents.parallel.index"] for c in children) == list(
        range(10)
    )
    assert all("rh_agents.parallel.wait.duration" in (c.attributes or {}) for c in children)
    failed = [c for c in children if (c.attributes or {})["rh_agents.outcome"] == "failed"]
    assert sorted((c.attributes or {})["rh_agents.parallel.index"] for c in failed) == [3, 7]
    rh_telemetry.assert_metric("rh_agents_parallel_groups_total", 1, group="batch", status="failed")
    assert rh_telemetry.histogram_count("rh_agents_semaphore_wait_seconds", group="batch") == 10
    rh_telemetry.assert_metric("rh_agents_parallel_max_workers", 3, group="batch")
    rh_telemetry.assert_metric("rh_agents_parallel_in_flight", 0, group="batch")
    # metrics equal the history exactly
    assert rh_telemetry.metric_value("rh_agents_events_total") == _terminal(state)
    rh_telemetry.assert_no_open_spans()


async def test_two_hundred_concurrent_items_all_parented_by_their_group(
    rh_telemetry: TelemetryCapture,
) -> None:
    rng = random.Random(7)

    async def jitter(data: Q, ctx: object, state: object) -> str:
        for _ in range(rng.randint(0, 5)):
            await asyncio.sleep(0)
        return data.text

    tool = Tool(name="jitter", input_model=Q, handler=jitter)
    state = ExecutionState()
    async with state.parallel(max_workers=50, name="wide") as p:
        for i in range(200):
            p.add(ExecutionEvent(actor=tool)(Q(text=str(i)), {}, state))
        await p.gather()
    group = rh_telemetry.one("parallel wide")
    assert group.context is not None
    spans = rh_telemetry.find("execute_tool jitter")
    assert len(spans) == 200
    assert all(s.parent is not None and s.parent.span_id == group.context.span_id for s in spans)
    rh_telemetry.assert_no_open_spans()


async def test_nested_groups_nest_their_spans(rh_telemetry: TelemetryCapture) -> None:
    state = ExecutionState()

    async def inner(i: int) -> int:
        async with state.parallel(max_workers=2, name="inner") as q:
            for j in range(3):
                q.add(ExecutionEvent(actor=SEARCH)(Q(text=f"{i}-{j}"), {}, state))
            return len(await q.gather())

    async with state.parallel(max_workers=2, name="outer") as p:
        for i in range(2):
            p.add(inner(i))
        results = await p.gather()
    assert [r.result for r in results] == [3, 3]
    outer = rh_telemetry.one("parallel outer")
    inners = rh_telemetry.find("parallel inner")
    assert len(inners) == 2
    assert all(rh_telemetry.parent_of(s) == outer for s in inners)
    for group in inners:
        assert [c.name for c in rh_telemetry.children(group)] == ["execute_tool search"] * 3


async def test_actor_retries_give_attempt_spans_and_retry_metrics(
    rh_telemetry: TelemetryCapture,
) -> None:
    calls = 0

    async def flaky(data: Q, ctx: object, state: object) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TimeoutError(f"slow {calls}")
        return "ok"

    tool = Tool(
        name="flaky",
        input_model=Q,
        handler=flaky,
        retry_config=RetryConfig(max_attempts=3, initial_delay=0.5, jitter=False),
    )
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        result = await ExecutionEvent(actor=tool)(Q(text="x"), {}, state)
    assert result.ok and calls == 3
    assert clock.sleeps == [0.5, 1.0]
    assert rh_telemetry.span_tree(attributes=()) == (
        "execute_tool flaky\n  attempt 1 ERROR\n  attempt 2 ERROR\n  attempt 3"
    )
    event_span = rh_telemetry.one("execute_tool flaky")
    assert (event_span.attributes or {})["rh_agents.outcome"] == "completed"
    assert [e.name for e in event_span.events] == ["retry", "retry"]
    assert [(e.attributes or {})["rh_agents.retry.delay"] for e in event_span.events] == [0.5, 1.0]
    rh_telemetry.assert_metric("rh_agents_retries_total", 2, name="flaky")
    retrying = [
        e for e in state.history.get_event_list() if e.execution_status is ExecutionStatus.RETRYING
    ]
    assert [e.retry_attempt for e in retrying] == [1, 2]


async def test_group_retries_and_breaker_are_counted(rh_telemetry: TelemetryCapture) -> None:
    attempts: dict[int, int] = {}

    async def sometimes(i: int) -> int:
        attempts[i] = attempts.get(i, 0) + 1
        if i == 0 and attempts[i] == 1:
            raise ConnectionError("reset")
        return i

    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(
            max_workers=2, name="retried", max_retries=2, retry_delay=0.1
        ) as p:
            for i in range(3):
                p.add(lambda i=i: sometimes(i))
            results = await p.gather()
    assert [r.ok for r in results] == [True, True, True]
    assert results[0].attempts == 2
    rh_telemetry.assert_metric(
        "rh_agents_retries_total", 1, name="retried", operation="parallel_item"
    )
    group = rh_telemetry.one("parallel retried")
    assert [e.name for e in group.events] == ["retry"]


async def test_breaker_trips_and_rejections_are_recorded(rh_telemetry: TelemetryCapture) -> None:
    async def down() -> None:
        raise ConnectionError("down")

    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(
            max_workers=1,
            name="calls",
            circuit_breaker="search-api",
            circuit_breaker_threshold=2,
            circuit_breaker_timeout=30.0,
        ) as p:
            for _ in range(5):
                p.add(down)
            results = await p.gather()
    assert [r.error_type for r in results] == ["ConnectionError"] * 2 + ["CircuitOpenError"] * 3
    assert all("Circuit breaker 'search-api'" in (r.error_message or "") for r in results[2:])
    assert isinstance(results[2].exception, CircuitOpenError)
    rh_telemetry.assert_metric("rh_agents_circuit_breaker_trips_total", 1, breaker="search-api")
    rh_telemetry.assert_metric(
        "rh_agents_circuit_breaker_rejections_total", 3, breaker="search-api"
    )
    rh_telemetry.assert_metric("rh_agents_circuit_breaker_state", 2, breaker="search-api")
    group = rh_telemetry.one("parallel calls")
    names = [e.name for e in group.events]
    assert names.count("circuit_breaker.rejected") == 3


async def test_fail_fast_cancels_spans_and_leaves_none_open(
    rh_telemetry: TelemetryCapture,
) -> None:
    release = asyncio.Event()

    async def slow(data: Q, ctx: object, state: object) -> str:
        await release.wait()
        return "late"

    async def boom(data: Q, ctx: object, state: object) -> str:
        await asyncio.sleep(0)
        raise ValueError("boom")

    slow_tool = Tool(name="slow", input_model=Q, handler=slow)
    bad_tool = Tool(name="bad", input_model=Q, handler=boom)
    state = ExecutionState()
    with pytest.raises(EventFailedError, match="boom"):
        async with state.parallel(
            max_workers=3, error_strategy=ErrorStrategy.FAIL_FAST, name="ff"
        ) as p:
            p.add(ExecutionEvent(actor=slow_tool)(Q(text="a"), {}, state))
            p.add(ExecutionEvent(actor=slow_tool)(Q(text="b"), {}, state))
            p.add(ExecutionEvent(actor=bad_tool)(Q(text="c"), {}, state))
            await p.gather()
    rh_telemetry.assert_no_open_spans()
    outcomes = sorted(
        (s.attributes or {})["rh_agents.outcome"] for s in rh_telemetry.find("execute_tool *")
    )
    assert outcomes == ["cancelled", "cancelled", "failed"]
    cancelled = rh_telemetry.find("execute_tool slow")
    assert all(s.status.status_code.name != "ERROR" for s in cancelled)
    assert rh_telemetry.metric_value("rh_agents_events_total") == _terminal(state)


async def test_timeout_marks_the_group_span(rh_telemetry: TelemetryCapture) -> None:
    async def sleepy(i: int, clock: FakeClock) -> int:
        await clock.sleep(10.0 * i)
        return i

    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        with pytest.raises(ParallelTimeoutError):
            async with state.parallel(max_workers=4, name="slowpoke", timeout=15.0) as p:
                for i in range(4):
                    p.add(sleepy(i, clock))
                await p.gather()
    group = rh_telemetry.one("parallel slowpoke")
    attrs = group.attributes or {}
    assert attrs["rh_agents.parallel.timed_out"] is True
    assert attrs["rh_agents.parallel.completed"] == 2
    assert group.status.status_code.name == "ERROR"
    assert [e.name for e in group.events] == ["timeout"]
    rh_telemetry.assert_no_open_spans()


async def test_replayed_events_are_marked(rh_telemetry: TelemetryCapture) -> None:
    backend = InMemoryStateBackend()
    state = ExecutionState(state_backend=backend)
    await ExecutionEvent(actor=AGENT)(Q(text="x"), {}, state)
    restored = ExecutionState.load_from_state_id(state.state_id, backend)
    await ExecutionEvent(actor=AGENT)(Q(text="x"), {}, restored)
    replayed = rh_telemetry.find(rh_agents__replayed=True)
    assert [s.name for s in replayed] == ["invoke_agent researcher"]
    assert (replayed[0].attributes or {})["rh_agents.outcome"] == "replayed"
    rh_telemetry.assert_metric("rh_agents_events_total", 1, outcome="replayed")


async def test_user_spans_inside_a_handler_nest_under_the_event_span(
    rh_telemetry: TelemetryCapture,
) -> None:
    tracer = rh_telemetry.tracer_provider.get_tracer("user")

    async def fetch(data: Q, ctx: object, state: object) -> str:
        with tracer.start_as_current_span("GET /search"):
            return "x"

    tool = Tool(name="http", input_model=Q, handler=fetch)
    await ExecutionEvent(actor=tool)(Q(text="q"), {}, ExecutionState())
    assert rh_telemetry.span_tree(attributes=()) == "execute_tool http\n  GET /search"


async def test_external_cancellation_leaves_no_open_span(rh_telemetry: TelemetryCapture) -> None:
    started = asyncio.Event()

    async def hang(data: Q, ctx: object, state: object) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    tool = Tool(name="hang", input_model=Q, handler=hang)
    state = ExecutionState()

    async def run() -> None:
        async with state.parallel(max_workers=2, name="doomed") as p:
            p.add(ExecutionEvent(actor=tool)(Q(text="a"), {}, state))
            p.add(ExecutionEvent(actor=tool)(Q(text="b"), {}, state))
            await p.gather()

    task = asyncio.create_task(run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rh_telemetry.assert_no_open_spans()
    rh_telemetry.assert_metric(
        "rh_agents_parallel_groups_total", 1, group="doomed", status="cancelled"
    )


async def test_a_failing_span_processor_never_breaks_the_run() -> None:
    from opentelemetry.sdk.trace import SpanProcessor

    class Broken(SpanProcessor):
        def on_end(self, span: object) -> None:  # type: ignore[override]
            raise RuntimeError("processor down")

    with capture_telemetry() as cap:
        cap.tracer_provider.add_span_processor(Broken())
        state = ExecutionState()
        result = await ExecutionEvent(actor=AGENT)(Q(text="x"), {}, state)
    assert result.ok and result.result == ["found x", "found x!"]


def test_label_values_are_capped_into_other() -> None:
    from prometheus_client import CollectorRegistry

    from rh_agents.telemetry import Telemetry

    registry = CollectorRegistry()
    telemetry = Telemetry(registry=registry, tracing=False, max_label_values=3)

    async def run() -> None:
        state = ExecutionState(telemetry=telemetry)
        for i in range(6):
            tool = Tool(name=f"tool{i}", input_model=Q, handler=_search)
            await ExecutionEvent(actor=tool)(Q(text="x"), {}, state)

    asyncio.run(run())
    names = {
        s.labels["name"]
        for m in registry.collect()
        for s in m.samples
        if s.name == "rh_agents_events_total"
    }
    assert names == {"tool0", "tool1", "tool2", "_other"}


def test_importing_and_using_the_library_sets_no_global_provider() -> None:
    from opentelemetry import trace

    asyncio.run(ExecutionEvent(actor=AGENT)(Q(text="x"), {}, ExecutionState()))
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
