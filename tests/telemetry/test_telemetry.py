"""Spans and metrics of real runs, asserted as trees and exact samples."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

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


async def test_a_span_processor_whose_on_start_raises_leaves_no_span_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from opentelemetry.sdk.trace import SpanProcessor

    class BrokenStart(SpanProcessor):
        def on_start(self, span: object, parent_context: object = None) -> None:  # type: ignore[override]
            raise RuntimeError("processor down")

    calls = 0

    async def flaky(data: Q, ctx: object, state: object) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError("slow")
        return "ok"

    retried = Tool(
        name="retried",
        input_model=Q,
        handler=flaky,
        retry_config=RetryConfig(max_attempts=2, initial_delay=0.5, jitter=False),
    )
    with capture_telemetry() as cap, caplog.at_level(logging.ERROR, "rh_agents.telemetry"):
        cap.tracer_provider.add_span_processor(BrokenStart())
        async with FakeClock() as clock:
            state = ExecutionState(clock=clock)
            result = await ExecutionEvent(actor=AGENT)(Q(text="x"), {}, state)
            async with state.parallel(max_workers=2, name="batch") as p:
                for i in range(3):
                    p.add(ExecutionEvent(actor=SEARCH)(Q(text=str(i)), {}, state))
                await p.gather()
            await ExecutionEvent(actor=retried)(Q(text="x"), {}, state)
    assert result.ok and result.result == ["found x", "found x!"]
    # every span was still ended, with its place in the tree
    cap.assert_no_open_spans()
    assert cap.span_tree(attributes=()) == (
        "invoke_agent researcher\n"
        "  execute_tool search\n"
        "  execute_tool search\n"
        "parallel batch\n"
        "  execute_tool search\n"
        "  execute_tool search\n"
        "  execute_tool search\n"
        "execute_tool retried\n"
        "  attempt 1 ERROR\n"
        "  attempt 2"
    )
    faults = [r.getMessage() for r in caplog.records if r.name == "rh_agents.telemetry"]
    # once per hook (events, groups, attempts), not once per span
    assert sorted(f.split("(span ")[1].split(")")[0] for f in faults) == [
        "'attempt 1'",
        "'invoke_agent researcher'",
        "'parallel batch'",
    ]
    assert all("raised in on_start" in f and "the span is kept" in f for f in faults)


def _exception_events(spans: list[Any]) -> list[tuple[str, str]]:
    return [
        (s.name, str((e.attributes or {})["exception.message"]))
        for s in sorted(spans, key=lambda s: s.start_time or 0)
        for e in s.events
        if e.name == "exception"
    ]


async def test_the_final_exception_of_a_retried_event_is_recorded_once(
    rh_telemetry: TelemetryCapture,
) -> None:
    calls = 0

    async def down(data: Q, ctx: object, state: object) -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"refused {calls}")

    tool = Tool(
        name="down",
        input_model=Q,
        handler=down,
        retry_config=RetryConfig(max_attempts=3, initial_delay=0.5, jitter=False),
    )
    async with FakeClock() as clock:
        result = await ExecutionEvent(actor=tool)(Q(text="x"), {}, ExecutionState(clock=clock))
    assert not result.ok and calls == 3
    assert rh_telemetry.span_tree() == (
        "execute_tool down [outcome='failed'] ERROR\n"
        "  attempt 1 ERROR\n"
        "  attempt 2 ERROR\n"
        "  attempt 3 ERROR"
    )
    # each exception once, on the attempt span that raised it ...
    assert _exception_events(rh_telemetry.spans) == [
        ("attempt 1", "refused 1"),
        ("attempt 2", "refused 2"),
        ("attempt 3", "refused 3"),
    ]
    # ... the event span carries the outcome, status and type, and the retry events
    event = rh_telemetry.one("execute_tool down")
    attrs = event.attributes or {}
    assert attrs["error.type"] == "ConnectionError"
    assert event.status.description == "refused 3"
    assert [e.name for e in event.events] == ["retry", "retry"]
    assert [(e.attributes or {})["exception.message"] for e in event.events] == [
        "refused 1",
        "refused 2",
    ]
    for attempt in (1, 2, 3):
        span = rh_telemetry.one(f"attempt {attempt}")
        assert (span.attributes or {})["rh_agents.retry.attempt"] == attempt
        assert (span.attributes or {})["error.type"] == "ConnectionError"
    rh_telemetry.assert_metric("rh_agents_event_errors_total", 1, name="down")
    rh_telemetry.assert_metric("rh_agents_retries_total", 2, name="down")


async def test_an_error_after_the_attempts_is_recorded_on_the_event_span(
    rh_telemetry: TelemetryCapture,
) -> None:
    async def unstorable(data: Q, ctx: object, state: object) -> object:
        return object()  # the attempt succeeds; the history cannot store the result

    tool = Tool(
        name="odd",
        input_model=Q,
        handler=unstorable,
        retry_config=RetryConfig(max_attempts=2, initial_delay=0.5, jitter=False),
    )
    result = await ExecutionEvent(actor=tool)(Q(text="x"), {}, ExecutionState())
    assert not result.ok
    assert rh_telemetry.span_tree() == "execute_tool odd [outcome='failed'] ERROR\n  attempt 1"
    assert [name for name, _ in _exception_events(rh_telemetry.spans)] == ["execute_tool odd"]


async def test_llm_spans_name_the_model_and_provider_only_when_the_actor_declares_them(
    rh_telemetry: TelemetryCapture,
) -> None:
    async def answer(data: Q, ctx: object, state: object) -> str:
        return "42"

    plain = LLM(name="writer", input_model=Q, handler=answer, cacheable=False)
    declared = LLM(
        name="summarizer",
        input_model=Q,
        handler=answer,
        cacheable=False,
        model="gpt-4o-mini",
        provider="openai",
    )

    async def orchestrate(data: Q, ctx: object, state: ExecutionState) -> str:
        first = await ExecutionEvent(actor=declared)(data, {}, state)
        return str(first.result)

    agent = Agent(name="boss", input_model=Q, handler=orchestrate, llm=declared)
    state = ExecutionState()
    await ExecutionEvent(actor=plain)(Q(text="q"), {}, state)
    await ExecutionEvent(actor=agent)(Q(text="q"), {}, state)
    assert rh_telemetry.span_tree(attributes=()) == (
        "chat writer\ninvoke_agent boss\n  chat gpt-4o-mini"
    )
    # an actor name is not a model name: no gen_ai.request.model without a model
    attrs = rh_telemetry.one("chat writer").attributes or {}
    assert attrs["rh_agents.actor.name"] == "writer"
    assert "gen_ai.request.model" not in attrs and "gen_ai.provider.name" not in attrs
    chat = rh_telemetry.one("chat gpt-4o-mini")
    assert chat.kind.name == "CLIENT"
    assert {k: v for k, v in (chat.attributes or {}).items() if k.startswith("gen_ai.")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.provider.name": "openai",
    }
    assert (chat.attributes or {})["rh_agents.actor.name"] == "summarizer"
    boss = rh_telemetry.one("invoke_agent boss").attributes or {}
    assert boss["gen_ai.agent.name"] == "boss"
    assert boss["gen_ai.request.model"] == "gpt-4o-mini"  # from the agent's llm
    assert boss["gen_ai.provider.name"] == "openai"
    # metrics keep the actor name
    rh_telemetry.assert_metric("rh_agents_events_total", 1, operation="chat", name="summarizer")
    rh_telemetry.assert_metric("rh_agents_events_total", 1, operation="chat", name="writer")


async def test_concurrent_groups_of_the_same_name_add_up_in_the_gauges(
    rh_telemetry: TelemetryCapture,
) -> None:
    state = ExecutionState()
    gate = asyncio.Event()
    running = 0
    all_running = asyncio.Event()

    async def item() -> int:
        nonlocal running
        running += 1
        if running == 21:  # 10 "inner" groups x 2 workers, and the "other" group's item
            all_running.set()
        await gate.wait()
        return 1

    async def one_group(max_workers: int) -> int:
        async with state.parallel(max_workers=max_workers, name="inner") as p:
            for _ in range(5):
                p.add(item)
            return len(await p.gather())

    async def other_group() -> int:
        async with state.parallel(max_workers=4, name="other") as p:
            p.add(item)
            return len(await p.gather())

    # ten groups named "inner" of 5 items and 2 workers each: 20 running, 30 waiting
    tasks = [asyncio.create_task(one_group(2)) for _ in range(10)]
    tasks.append(asyncio.create_task(other_group()))
    await asyncio.wait_for(all_running.wait(), 10)
    assert rh_telemetry.samples("rh_agents_parallel_in_flight") == [
        ({"group": "inner"}, 20.0),
        ({"group": "other"}, 1.0),
    ]
    assert rh_telemetry.samples("rh_agents_parallel_queued") == [
        ({"group": "inner"}, 30.0),
        ({"group": "other"}, 0.0),
    ]
    assert rh_telemetry.samples("rh_agents_parallel_max_workers") == [
        ({"group": "inner"}, 20.0),  # the capacity of the ten running groups
        ({"group": "other"}, 4.0),
    ]
    gate.set()
    assert await asyncio.gather(*tasks) == [5] * 10 + [1]
    assert rh_telemetry.samples("rh_agents_parallel_in_flight") == [
        ({"group": "inner"}, 0.0),
        ({"group": "other"}, 0.0),
    ]
    assert rh_telemetry.samples("rh_agents_parallel_queued") == [
        ({"group": "inner"}, 0.0),
        ({"group": "other"}, 0.0),
    ]
    # none runs: the configured max_workers of the last one
    assert rh_telemetry.samples("rh_agents_parallel_max_workers") == [
        ({"group": "inner"}, 2.0),
        ({"group": "other"}, 4.0),
    ]
    rh_telemetry.assert_metric("rh_agents_parallel_groups_total", 10, group="inner")


def test_a_second_telemetry_on_a_registry_cannot_silently_change_its_label_cap() -> None:
    from prometheus_client import CollectorRegistry

    from rh_agents.core.errors import InvalidArgumentError
    from rh_agents.telemetry import Telemetry

    registry = CollectorRegistry()
    first = Telemetry(registry=registry, tracing=False, max_label_values=3)
    with pytest.raises(
        InvalidArgumentError,
        match=r"already holds the rh_agents metrics with max_label_values=3, so "
        r"max_label_values=1000 cannot apply.*its own CollectorRegistry",
    ):
        Telemetry(registry=registry, tracing=False, max_label_values=1000)
    # the same cap, or none, shares the metrics (and the cap)
    for same in (Telemetry(registry=registry), Telemetry(registry=registry, max_label_values=3)):
        assert same.metrics is first.metrics
        assert same.metrics is not None and same.metrics.cap.max_values == 3
    assert Telemetry(registry=CollectorRegistry()).metrics.cap.max_values == 200  # type: ignore[union-attr]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InvalidArgumentError, match="max_label_values must be a positive"):
            Telemetry(registry=CollectorRegistry(), max_label_values=bad)  # type: ignore[arg-type]


def test_event_metrics_keep_the_latest_trace_as_exemplar_of_each_series_and_bucket() -> None:
    from prometheus_client import CollectorRegistry

    from rh_agents.telemetry.metrics import RhAgentsMetrics

    registry = CollectorRegistry()
    metrics = RhAgentsMetrics(registry)
    series = metrics.event_series("execute_tool", "t", "completed")
    a, b = {"trace_id": "a" * 32}, {"trace_id": "b" * 32}
    for duration, trace_id, exemplar in [
        (0.002, 0xA, a),
        (0.002, 0xB, b),
        (0.003, 0xA, a),
        (0.3, 0xB, b),
        (0.004, 0xB, b),
        (0.004, 0, None),  # an unsampled span: no exemplar
    ]:
        series.record(duration, trace_id, exemplar)

    def exemplar_of(name: str, /, **labels: str) -> tuple[str, float] | None:
        for metric in registry.collect():
            for sample in metric.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    ex = sample.exemplar
                    return (ex.labels["trace_id"][0], ex.value) if ex is not None else None
        raise AssertionError(f"no sample {name}{labels}")

    assert exemplar_of("rh_agents_events_total", name="t") == ("b", 1.0)
    assert exemplar_of("rh_agents_event_duration_seconds_bucket", le="0.005") == ("b", 0.004)
    assert exemplar_of("rh_agents_event_duration_seconds_bucket", le="0.5") == ("b", 0.3)
    assert exemplar_of("rh_agents_event_duration_seconds_bucket", le="0.01") is None
    assert metrics.child(metrics.events, "execute_tool", "t", "completed")._value.get() == 6


async def test_a_no_op_tracer_leaves_the_current_context_alone() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client import CollectorRegistry

    from rh_agents.telemetry import Telemetry

    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    user = provider.get_tracer("user")

    async def fetch(data: Q, ctx: object, state: object) -> str:
        with user.start_as_current_span("GET /search"):
            return "x"

    tool = Tool(name="http", input_model=Q, handler=fetch)
    state = ExecutionState(telemetry=Telemetry(trace.NoOpTracerProvider(), CollectorRegistry()))
    with user.start_as_current_span("request"):
        assert (await ExecutionEvent(actor=tool)(Q(text="q"), {}, state)).ok
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"request", "GET /search"}
    parent = spans["GET /search"].parent
    assert parent is not None and parent.span_id == spans["request"].context.span_id  # type: ignore[union-attr]


def test_names_folded_into_other_do_not_grow_the_label_caches() -> None:
    from prometheus_client import CollectorRegistry

    from rh_agents.telemetry import Telemetry

    telemetry = Telemetry(registry=CollectorRegistry(), tracing=False, max_label_values=3)
    metrics = telemetry.metrics
    assert metrics is not None

    async def run() -> None:
        state = ExecutionState(telemetry=telemetry)
        for i in range(300):  # names that are really ids
            tool = Tool(name=f"call-{i}", input_model=Q, handler=_search)
            await ExecutionEvent(actor=tool)(Q(text="x"), {}, state)

    asyncio.run(run())
    samples = {
        sample.labels["name"]: sample.value
        for metric in metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "rh_agents_events_total"
    }
    assert samples == {"call-0": 1.0, "call-1": 1.0, "call-2": 1.0, "_other": 297.0}
    assert len(metrics._series) == 4
    # events, durations, final outcomes and workflows (each call is a root) x 4 names
    assert len(metrics._children) <= 16
