"""What an on-call engineer reads from spans and metrics: final outcomes (what callers
got, after group retries), root workflows, failed groups' error types, every breaker
rejection, numbered attempts, bounded and input-free error text, one clock for group
durations, breaker transitions and time open, journal and model latencies."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from pydantic import BaseModel

from rh_agents import (
    LLM,
    Agent,
    ErrorStrategy,
    ExecutionEvent,
    ExecutionState,
    Tool,
)
from rh_agents.core.errors import CircuitOpenError, EventFailedError
from rh_agents.core.parallel import ParallelTimeoutError
from rh_agents.core.usage import record_usage
from rh_agents.state_backends import SQLiteStateBackend
from rh_agents.telemetry.metrics import RhAgentsMetrics
from rh_agents.testing import FakeClock, TelemetryCapture


class Q(BaseModel):
    text: str


class Number(BaseModel):
    value: int


def error_spans_without_type(capture: TelemetryCapture) -> list[str]:
    return [
        s.name
        for s in capture.spans
        if s.status.status_code.name == "ERROR" and "error.type" not in (s.attributes or {})
    ]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def final_outcomes(capture: TelemetryCapture) -> list[tuple[str, str, str, float]]:
    """(operation, name, outcome, count) of rh_agents_final_outcomes_total, sorted."""
    return sorted(
        (labels["operation"], labels["name"], labels["outcome"], value)
        for labels, value in capture.samples("rh_agents_final_outcomes_total")
    )


def metrics_of(capture: TelemetryCapture) -> RhAgentsMetrics:
    metrics = capture.telemetry.metrics
    assert metrics is not None
    return metrics


# ------------------------------------------------------------------ final outcomes


async def test_group_retries_leave_only_the_last_attempt_as_the_final_outcome(
    rh_telemetry: TelemetryCapture,
) -> None:
    calls: dict[str, int] = {}

    async def summarize(data: Q, ctx: object, state: ExecutionState) -> str:
        calls[data.text] = calls.get(data.text, 0) + 1
        if data.text == "broken" or (data.text == "flaky" and calls[data.text] == 1):
            raise ConnectionError("the model provider is overloaded")
        return data.text.upper()

    llm = LLM(name="summarizer", input_model=Q, handler=summarize)

    async def orchestrate(data: Q, ctx: object, state: ExecutionState) -> list[bool]:
        async with state.parallel(
            max_workers=2, name="chunks", max_retries=2, retry_delay=0.1
        ) as p:
            for text in ("fine", "flaky", "broken"):
                p.add(lambda text=text: ExecutionEvent(actor=llm)(Q(text=text), {}, state))
            return [r.ok for r in await p.gather()]

    agent = Agent(name="orchestrator", input_model=Q, handler=orchestrate)
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        result = await ExecutionEvent(actor=agent)(Q(text="go"), {}, state)
    assert result.ok and result.result == [True, True, False]
    assert calls == {"fine": 1, "flaky": 2, "broken": 3}

    # Attempts: 4 of 6 chat calls failed ...
    rh_telemetry.assert_metric("rh_agents_events_total", 4, name="summarizer", outcome="failed")
    rh_telemetry.assert_metric("rh_agents_events_total", 2, name="summarizer", outcome="completed")
    # ... but the orchestrator got 2 summaries and 1 failure.
    assert final_outcomes(rh_telemetry) == [
        ("chat", "summarizer", "completed", 2.0),
        ("chat", "summarizer", "failed", 1.0),
        ("invoke_agent", "orchestrator", "completed", 1.0),
    ]
    rh_telemetry.assert_metric(
        "rh_agents_final_errors_total",
        1,
        operation="chat",
        name="summarizer",
        error_type="ConnectionError",
    )
    # Only the root invocation is a workflow.
    assert rh_telemetry.samples("rh_agents_workflows_total") == [
        ({"name": "orchestrator", "outcome": "completed"}, 1.0)
    ]


async def test_a_failed_root_workflow_and_direct_calls_are_final_at_once(
    rh_telemetry: TelemetryCapture,
) -> None:
    async def lookup(data: Q, ctx: object, state: ExecutionState) -> str:
        raise KeyError(data.text)

    tool = Tool(name="lookup", input_model=Q, handler=lookup)

    async def agent_handler(data: Q, ctx: object, state: ExecutionState) -> str:
        found = await ExecutionEvent(actor=tool)(data, {}, state)
        raise RuntimeError(f"nothing found: {found.error_message}")

    agent = Agent(name="researcher", input_model=Q, handler=agent_handler)
    result = await ExecutionEvent(actor=agent)(Q(text="x"), {}, ExecutionState())
    assert not result.ok
    final_errors = {
        (labels["name"], labels["error_type"]): value
        for labels, value in rh_telemetry.samples("rh_agents_final_errors_total")
    }
    assert final_errors == {("lookup", "KeyError"): 1.0, ("researcher", "RuntimeError"): 1.0}
    assert rh_telemetry.samples("rh_agents_workflows_total") == [
        ({"name": "researcher", "outcome": "failed"}, 1.0)
    ]


async def test_group_items_that_reach_no_actor_are_final_under_the_group_name(
    rh_telemetry: TelemetryCapture,
) -> None:
    async def work(i: int) -> int:
        if i == 2:
            raise ValueError("bad item")
        return i

    state = ExecutionState()
    async with state.parallel(max_workers=2, name="plain") as p:
        for i in range(3):
            p.add(work(i))
    final = final_outcomes(rh_telemetry)
    assert final == [
        ("parallel_item", "plain", "completed", 2.0),
        ("parallel_item", "plain", "failed", 1.0),
    ]
    rh_telemetry.assert_metric(
        "rh_agents_final_errors_total", 1, name="plain", error_type="ValueError"
    )


# ------------------------------------------------------- group error.type, rejections


async def test_every_error_span_has_an_error_type_groups_included(
    rh_telemetry: TelemetryCapture,
) -> None:
    async def flaky(data: Number, ctx: object, state: ExecutionState) -> int:
        if data.value % 2:
            raise LookupError(f"no {data.value}")
        return data.value

    tool = Tool(name="lookup", input_model=Number, handler=flaky)
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        # FAIL_SLOW: the group returns its results, one of them failed.
        async with state.parallel(max_workers=2, name="partial") as p:
            for i in range(3):
                p.add(ExecutionEvent(actor=tool)(Number(value=i), {}, state))
        # FAIL_FAST: the group raises its first failure.
        with pytest.raises(EventFailedError):
            async with state.parallel(
                max_workers=1, name="strict", error_strategy=ErrorStrategy.FAIL_FAST
            ) as p:
                for i in range(3):
                    p.add(ExecutionEvent(actor=tool)(Number(value=i), {}, state))

        async def sleepy(seconds: float) -> None:
            await clock.sleep(seconds)

        with pytest.raises(ParallelTimeoutError):
            async with state.parallel(max_workers=2, name="slow", timeout=5.0) as p:
                p.add(sleepy(1.0))
                p.add(sleepy(10.0))
    types = {
        name: attrs(rh_telemetry.one(f"parallel {name}")).get("error.type")
        for name in ("partial", "strict", "slow")
    }
    assert types == {
        "partial": "_partial_failure",
        "strict": "LookupError",
        "slow": "ParallelTimeoutError",
    }
    assert error_spans_without_type(rh_telemetry) == []
    rh_telemetry.assert_no_open_spans()


async def test_a_rejection_is_an_event_each_time_also_when_the_item_is_retried(
    rh_telemetry: TelemetryCapture,
) -> None:
    async def down(data: Number, ctx: object, state: ExecutionState) -> int:
        raise ConnectionError("503")

    tool = Tool(name="search", input_model=Number, handler=down)
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(
            max_workers=1,
            name="search",
            circuit_breaker="search-api",
            circuit_breaker_threshold=1,
            circuit_breaker_timeout=100.0,
            max_retries=1,
            retry_delay=1.0,
            retry_on=(CircuitOpenError,),
        ) as p:
            for i in range(3):
                p.add(lambda i=i: ExecutionEvent(actor=tool)(Number(value=i), {}, state))
            results = await p.gather()
    # Item 0 trips the breaker; items 1 and 2 are rejected and retried once the
    # cooldown is over: item 1 is the probe, fails and opens it again, so item 2's
    # retry is rejected too.
    assert [r.error_type for r in results] == [
        "ConnectionError",
        "ConnectionError",
        "CircuitOpenError",
    ]
    group = rh_telemetry.one("parallel search")
    rejected = [
        (attributes["rh_agents.parallel.index"], attributes["rh_agents.attempt"])
        for e in group.events
        if e.name == "circuit_breaker.rejected"
        for attributes in [dict(e.attributes or {})]
    ]
    assert sorted(rejected) == [(1, 1), (2, 1), (2, 2)]
    rh_telemetry.assert_metric(
        "rh_agents_circuit_breaker_rejections_total", 3, breaker="search-api"
    )
    # What the caller got: two failed searches, one call that reached no actor.
    final = final_outcomes(rh_telemetry)
    assert final == [
        ("execute_tool", "search", "failed", 2.0),
        ("parallel_item", "search", "rejected", 1.0),
    ]
    assert error_spans_without_type(rh_telemetry) == []


async def test_each_attempt_span_of_a_retried_group_item_is_numbered_with_its_backoff(
    rh_telemetry: TelemetryCapture,
) -> None:
    tries: dict[str, int] = {}

    async def flaky(data: Q, ctx: object, state: ExecutionState) -> str:
        tries[data.text] = tries.get(data.text, 0) + 1
        if data.text == "a" and tries["a"] < 3:
            raise TimeoutError("slow upstream")
        return "ok"

    tool = Tool(name="fetch", input_model=Q, handler=flaky)
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(
            name="fetches", max_retries=2, retry_delay=0.5, rng=random.Random(3)
        ) as p:
            p.add(lambda: ExecutionEvent(actor=tool)(Q(text="a"), {}, state))
            p.add(lambda: ExecutionEvent(actor=tool)(Q(text="b"), {}, state))
    spans = sorted(
        rh_telemetry.find("execute_tool fetch"),
        key=lambda s: (attrs(s)["rh_agents.parallel.index"], attrs(s)["rh_agents.attempt"]),
    )
    retries = [
        dict(e.attributes or {})
        for e in rh_telemetry.one("parallel fetches").events
        if e.name == "retry"
    ]
    # Only item 0 is retried: its retry events, in order, hold the delays.
    delays = [r["rh_agents.retry.delay"] for r in retries]
    numbered = [
        (
            attrs(s)["rh_agents.parallel.index"],
            attrs(s)["rh_agents.attempt"],
            attrs(s).get("rh_agents.retry.delay"),
            attrs(s)["rh_agents.outcome"],
        )
        for s in spans
    ]
    # Item 0 fails twice, then succeeds; item 1 succeeds at once.
    first_item = [n for n in numbered if n[0] == 0]
    assert [n[1] for n in first_item] == [1, 2, 3]
    assert [n[3] for n in first_item] == ["failed", "failed", "completed"]
    assert first_item[0][2] is None  # nothing waited before the first attempt
    assert [n[2] for n in first_item[1:]] == delays
    assert len(delays) == 2 and all(isinstance(d, float) and d > 0 for d in delays)
    assert [n[1:] for n in numbered if n[0] == 1] == [(1, None, "completed")]


# ----------------------------------------------------------- error text on spans


async def test_exception_messages_and_stack_traces_are_bounded(
    rh_telemetry: TelemetryCapture,
) -> None:
    async def verbose(data: Q, ctx: object, state: ExecutionState) -> str:
        raise ValueError("x" * 2050)

    tool = Tool(name="verbose", input_model=Q, handler=verbose)
    await ExecutionEvent(actor=tool)(Q(text="a"), {}, ExecutionState())
    span = rh_telemetry.one("execute_tool verbose")
    description = span.status.description or ""
    assert len(description) <= 500
    assert description.endswith("... (2050 characters)")
    [event] = [e for e in span.events if e.name == "exception"]
    event_attrs = dict(event.attributes or {})
    assert event_attrs["exception.type"] == "ValueError"
    assert event_attrs["exception.message"] == description
    stacktrace = str(event_attrs["exception.stacktrace"])
    assert len(stacktrace) <= 8192
    assert "in verbose" in stacktrace and stacktrace.endswith(f"ValueError: {description}\n")


async def test_validation_errors_never_put_handler_inputs_into_spans(
    rh_telemetry: TelemetryCapture,
) -> None:
    async def answer(data: Number, ctx: object, state: ExecutionState) -> Any:
        return {"value": "SECRET-OUTPUT"}

    tool = Tool(name="answer", input_model=Number, output_model=Number, handler=answer)
    state = ExecutionState()
    rejected = await ExecutionEvent(actor=tool)({"value": "SECRET-INPUT"}, {}, state)
    wrong = await ExecutionEvent(actor=tool)(Number(value=1), {}, state)
    assert not rejected.ok and "SECRET-INPUT" in (rejected.error_message or "")
    assert not wrong.ok
    spans = rh_telemetry.find("execute_tool answer")
    assert [attrs(s)["rh_agents.outcome"] for s in spans] == ["rejected", "failed"]
    texts = [s.status.description or "" for s in spans] + [
        str(value) for s in spans for e in s.events for value in (e.attributes or {}).values()
    ]
    assert not [t for t in texts if "SECRET" in t]
    assert spans[0].status.description == (
        "Input for actor 'answer' does not match its input_model Number; the handler was "
        "not called. Pass a Number or data that validates into it: 1 validation error: "
        "value: Input should be a valid integer, unable to parse string as an integer"
    )


# ------------------------------------------------------------------- one clock


async def test_group_durations_are_real_time_like_their_spans(
    rh_telemetry: TelemetryCapture,
) -> None:
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        async with state.parallel(name="simulated") as p:
            p.add(clock.sleep(30.0))
    assert p.group.execution_time == 30.0  # the state's (simulated) clock
    span = rh_telemetry.one("parallel simulated")
    assert span.start_time is not None and span.end_time is not None
    span_seconds = (span.end_time - span.start_time) / 1e9
    observed = rh_telemetry.histogram_sum(
        "rh_agents_parallel_group_duration_seconds", group="simulated"
    )
    # Real time, as the span measures it (the metric brackets the span, a few
    # microseconds wider), not the 30 simulated seconds.
    assert observed < 30.0
    assert observed == pytest.approx(span_seconds, abs=0.5)


# -------------------------------------------------------------------- breakers


async def test_breaker_transitions_and_time_open_are_counters(
    rh_telemetry: TelemetryCapture,
) -> None:
    metrics = metrics_of(rh_telemetry)
    now = [1000.0]
    metrics.now = lambda: now[0]
    fail = True

    async def call(data: Number, ctx: object, state: ExecutionState) -> int:
        if fail:
            raise ConnectionError("down")
        return data.value

    tool = Tool(name="api", input_model=Number, handler=call)

    def transitions() -> dict[str, float]:
        return {
            labels["to_state"]: value
            for labels, value in rh_telemetry.samples("rh_agents_circuit_breaker_transitions_total")
        }

    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        options: dict[str, Any] = {
            "max_workers": 1,
            "circuit_breaker": "api",
            "circuit_breaker_threshold": 2,
            "circuit_breaker_timeout": 30.0,
        }
        async with state.parallel(name="first", **options) as p:
            for i in range(2):
                p.add(ExecutionEvent(actor=tool)(Number(value=i), {}, state))
        assert transitions() == {"closed": 0.0, "half_open": 0.0, "open": 1.0}
        now[0] += 12.5  # open for 12.5 s so far: the scrape sees it
        rh_telemetry.assert_metric(
            "rh_agents_circuit_breaker_open_seconds_total", 12.5, breaker="api"
        )
        now[0] += 40.0  # long past the cooldown: the period counts the cooldown
        rh_telemetry.assert_metric(
            "rh_agents_circuit_breaker_open_seconds_total", 30.0, breaker="api"
        )
        await clock.sleep(31.0)
        fail = False
        async with state.parallel(name="second", **options) as p:
            p.add(ExecutionEvent(actor=tool)(Number(value=9), {}, state))
    assert transitions() == {"closed": 1.0, "half_open": 1.0, "open": 1.0}
    rh_telemetry.assert_metric("rh_agents_circuit_breaker_open_seconds_total", 30.0, breaker="api")
    rh_telemetry.assert_metric("rh_agents_circuit_breaker_trips_total", 1, breaker="api")


async def test_a_watched_breaker_exposes_its_counters_at_zero(
    rh_telemetry: TelemetryCapture,
) -> None:
    state = ExecutionState()
    async with state.parallel(name="fine", circuit_breaker="quiet") as p:
        p.add(lambda: None)
    assert sorted(
        (labels["to_state"], value)
        for labels, value in rh_telemetry.samples("rh_agents_circuit_breaker_transitions_total")
    ) == [("closed", 0.0), ("half_open", 0.0), ("open", 0.0)]
    rh_telemetry.assert_metric("rh_agents_circuit_breaker_open_seconds_total", 0, breaker="quiet")
    rh_telemetry.assert_metric("rh_agents_circuit_breaker_rejections_total", 0, breaker="quiet")


# ------------------------------------------------------------ journal and models


async def test_journal_writes_are_timed_per_backend(
    rh_telemetry: TelemetryCapture, tmp_path: Path
) -> None:
    async def echo(data: Q, ctx: object, state: ExecutionState) -> str:
        return data.text

    backend = SQLiteStateBackend(tmp_path / "history.db")
    try:
        state = ExecutionState(state_backend=backend)
        await ExecutionEvent(actor=Tool(name="echo", input_model=Q, handler=echo))(
            Q(text="a"), {}, state
        )
    finally:
        backend.close()
    entries = len(state.history.get_event_list())
    assert entries == 2  # started, completed
    assert (
        rh_telemetry.histogram_count(
            "rh_agents_journal_write_duration_seconds", backend="SQLiteStateBackend"
        )
        == entries
    )


async def test_model_call_latency_is_recorded_per_model(rh_telemetry: TelemetryCapture) -> None:
    class Chat(LLM):
        model: str = "model-a"

    async def reply(data: Q, ctx: object, state: ExecutionState) -> str:
        if data.text == "answered-by-b":
            record_usage(input_tokens=3, output_tokens=2, response_model="model-b")
        elif data.text == "fail":
            raise ConnectionError("down")
        return "ok"

    llm = Chat(name="chat", input_model=Q, handler=reply, cacheable=False)
    state = ExecutionState()
    for text in ("plain", "answered-by-b", "fail"):
        await ExecutionEvent(actor=llm)(Q(text=text), {}, state)
    counts = {
        model: rh_telemetry.histogram_count(
            "rh_agents_model_duration_seconds", name="chat", model=model
        )
        for model in ("model-a", "model-b")
    }
    assert counts == {"model-a": 2, "model-b": 1}
