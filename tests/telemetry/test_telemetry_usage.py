"""Token usage: reported by handlers or read from a provider's response, it lands on the
spans, in the history (through every journal) and in both kinds of metrics."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents import LLM, Agent, ExecutionEvent, ExecutionState, RetryConfig, Tool
from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.history import HistorySet
from rh_agents.state_backends import (
    FileSystemStateBackend,
    InMemoryStateBackend,
    SQLiteStateBackend,
)
from rh_agents.telemetry import TokenUsage, record_usage, semconv
from rh_agents.testing import FakeClock, TelemetryCapture


class Prompt(BaseModel):
    text: str


class OpenAIChat(LLM):
    model: str = "gpt-4o-mini"
    provider: str = "openai"


async def _answer(data: Prompt, ctx: Any, state: Any) -> str:
    record_usage(
        len(data.text),
        7,
        response_model="gpt-4o-mini-2024-07-18",
        finish_reasons=["stop"],
    )
    return data.text.upper()


CHAT = OpenAIChat(name="writer", input_model=Prompt, handler=_answer, cacheable=False)


def _usage_attrs(span: Any) -> dict[str, Any]:
    attrs = dict(span.attributes or {})
    return {k: v for k, v in attrs.items() if k.startswith("gen_ai.usage") or "response" in k}


async def test_reported_usage_lands_on_span_history_and_both_metrics(
    rh_telemetry: TelemetryCapture,
) -> None:
    state = ExecutionState()
    result = await ExecutionEvent(actor=CHAT)(Prompt(text="hello world"), {}, state)
    assert result.ok
    span = rh_telemetry.one("chat gpt-4o-mini")
    assert _usage_attrs(span) == {
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 7,
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.finish_reasons": ("stop",),
    }
    started, completed = state.history.get_event_list()
    assert started.usage is None
    assert completed.usage == TokenUsage(
        input_tokens=11,
        output_tokens=7,
        response_model="gpt-4o-mini-2024-07-18",
        finish_reasons=("stop",),
    )
    assert state.history.token_usage().input_tokens == 11
    rh_telemetry.assert_metric(
        "rh_agents_tokens_total",
        11,
        name="writer",
        model="gpt-4o-mini-2024-07-18",
        token_type="input",
    )
    rh_telemetry.assert_metric("rh_agents_tokens_total", 7, token_type="output")
    points = rh_telemetry.otel_points(semconv.METRIC_TOKEN_USAGE)
    assert sorted((a[semconv.ATTR_TOKEN_TYPE], p.sum, p.count) for a, p in points) == [
        ("input", 11, 1),
        ("output", 7, 1),
    ]
    attrs, point = points[0]
    assert {k: v for k, v in attrs.items() if k != semconv.ATTR_TOKEN_TYPE} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    }
    assert tuple(point.explicit_bounds) == semconv.TOKEN_USAGE_BUCKETS
    [(duration_attrs, duration)] = rh_telemetry.otel_points(semconv.METRIC_OPERATION_DURATION)
    assert duration.count == 1
    assert tuple(duration.explicit_bounds) == semconv.OPERATION_DURATION_BUCKETS
    assert duration_attrs["gen_ai.operation.name"] == "chat"
    assert "error.type" not in duration_attrs


async def test_reports_add_up_and_reach_the_invocation_from_nested_tasks(
    rh_telemetry: TelemetryCapture,
) -> None:
    async def plan(data: Prompt, ctx: Any, state: ExecutionState) -> int:
        record_usage(100, 10, response_model="m-1")

        async def draft(i: int) -> int:
            record_usage(1, 2, finish_reasons="length")  # a task the handler started
            return i

        async with state.parallel(name="drafts") as group:
            for i in range(3):
                group.add(draft(i))
            await group.gather()
        return 3

    planner = Agent(name="planner", input_model=Prompt, handler=plan)
    state = ExecutionState()
    await ExecutionEvent(actor=planner)(Prompt(text="x"), {}, state)
    agent = rh_telemetry.one("invoke_agent planner")
    attrs = agent.attributes or {}
    assert attrs["gen_ai.usage.input_tokens"] == 103
    assert attrs["gen_ai.usage.output_tokens"] == 16
    assert attrs["gen_ai.response.model"] == "m-1"
    assert attrs["gen_ai.response.finish_reasons"] == ("length", "length", "length")
    assert attrs["gen_ai.conversation.id"] == state.state_id
    # an agent that reported tokens made model calls: its duration is a GenAI metric too
    [(duration_attrs, _)] = rh_telemetry.otel_points(semconv.METRIC_OPERATION_DURATION)
    assert duration_attrs["gen_ai.operation.name"] == "invoke_agent"


class ChatCompletion(BaseModel):
    """The shape of an OpenAI chat completion (the fields that matter here)."""

    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, int]


class Answer(BaseModel):
    text: str


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            ChatCompletion(
                model="gpt-4o-2024-08-06",
                choices=[{"finish_reason": "stop", "message": {"content": "hi"}}],
                usage={"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25},
            ),
            id="openai-chat-object",
        ),
        pytest.param(
            {
                "model": "gpt-4o-2024-08-06",
                "choices": [{"finish_reason": "stop"}],
                "usage": {"prompt_tokens": 21, "completion_tokens": 4},
            },
            id="openai-chat-dict",
        ),
        pytest.param(
            SimpleNamespace(
                model="gpt-4o-2024-08-06",
                stop_reason="stop",
                usage=SimpleNamespace(input_tokens=21, output_tokens=4, cache_read_input_tokens=0),
            ),
            id="anthropic-message-object",
        ),
        pytest.param(
            {
                "model": "gpt-4o-2024-08-06",
                "stop_reason": "stop",
                "usage": {"input_tokens": 21, "output_tokens": 4},
            },
            id="anthropic-message-dict",
        ),
    ],
)
async def test_an_llm_result_carrying_usage_is_picked_up(
    rh_telemetry: TelemetryCapture, response: Any
) -> None:
    async def call(data: Prompt, ctx: Any, state: Any) -> Any:
        return response

    llm = LLM(name="provider-call", input_model=Prompt, handler=call, cacheable=False)
    state = ExecutionState()
    await ExecutionEvent(actor=llm)(Prompt(text="q"), {}, state)
    expected = TokenUsage(
        input_tokens=21,
        output_tokens=4,
        response_model="gpt-4o-2024-08-06",
        finish_reasons=("stop",),
    )
    assert state.history.get_event_list()[-1].usage == expected
    span = rh_telemetry.one("chat provider-call")
    assert (span.attributes or {})["gen_ai.usage.input_tokens"] == 21


async def test_usage_is_read_before_the_output_model_drops_it(
    rh_telemetry: TelemetryCapture,
) -> None:
    async def call(data: Prompt, ctx: Any, state: Any) -> Any:
        return {"text": "hi", "model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 1}}

    llm = LLM(name="typed", input_model=Prompt, output_model=Answer, handler=call, cacheable=False)
    state = ExecutionState()
    result = await ExecutionEvent(actor=llm)(Prompt(text="q"), {}, state)
    assert result.result == Answer(text="hi")
    assert state.history.token_usage() == TokenUsage(
        input_tokens=3, output_tokens=1, response_model="m"
    )


async def test_explicit_reports_win_and_tools_results_are_not_read(
    rh_telemetry: TelemetryCapture,
) -> None:
    payload = {"usage": {"prompt_tokens": 500, "completion_tokens": 500}}

    async def reported(data: Prompt, ctx: Any, state: Any) -> Any:
        record_usage(1, 1)
        return payload

    async def tool_call(data: Prompt, ctx: Any, state: Any) -> Any:
        return payload

    state = ExecutionState()
    llm = LLM(name="explicit", input_model=Prompt, handler=reported, cacheable=False)
    tool = Tool(name="returns-usage", input_model=Prompt, handler=tool_call)
    await ExecutionEvent(actor=llm)(Prompt(text="q"), {}, state)
    await ExecutionEvent(actor=tool)(Prompt(text="q"), {}, state)
    assert [e.usage for e in state.history.get_event_list() if e.usage] == [
        TokenUsage(input_tokens=1, output_tokens=1)
    ]
    assert "gen_ai.usage.input_tokens" not in (
        rh_telemetry.one("execute_tool returns-usage").attributes or {}
    )


async def test_each_attempt_span_gets_its_own_usage_and_the_event_span_the_total(
    rh_telemetry: TelemetryCapture,
) -> None:
    calls = 0

    async def flaky(data: Prompt, ctx: Any, state: Any) -> str:
        nonlocal calls
        calls += 1
        record_usage(10 * calls, calls, response_model=f"m-{calls}", finish_reasons=["stop"])
        if calls < 3:
            raise ConnectionError("overloaded")
        return "ok"

    llm = LLM(
        name="flaky",
        input_model=Prompt,
        handler=flaky,
        cacheable=False,
        retry_config=RetryConfig(max_attempts=3, initial_delay=0.0, jitter=False),
    )
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        result = await ExecutionEvent(actor=llm)(Prompt(text="q"), {}, state)
    assert result.ok
    event = rh_telemetry.one("chat flaky")
    attempts = rh_telemetry.children(event)
    assert [a.name for a in attempts] == ["attempt 1", "attempt 2", "attempt 3"]
    assert [
        (
            (a.attributes or {})["gen_ai.usage.input_tokens"],
            (a.attributes or {})["gen_ai.usage.output_tokens"],
            (a.attributes or {})["gen_ai.response.model"],
        )
        for a in attempts
    ] == [(10, 1, "m-1"), (20, 2, "m-2"), (30, 3, "m-3")]
    total = event.attributes or {}
    assert (total["gen_ai.usage.input_tokens"], total["gen_ai.usage.output_tokens"]) == (60, 6)
    assert total["gen_ai.response.finish_reasons"] == ("stop", "stop", "stop")
    # RETRYING entries carry no usage: summing the history counts each token once
    retrying = [e for e in state.history.get_event_list() if e.execution_status == "retrying"]
    assert len(retrying) == 2 and all(e.usage is None for e in retrying)
    assert state.history.token_usage().input_tokens == 60
    rh_telemetry.assert_metric("rh_agents_tokens_total", 60, name="flaky", token_type="input")


async def test_a_failed_call_keeps_the_tokens_it_spent(rh_telemetry: TelemetryCapture) -> None:
    async def broken(data: Prompt, ctx: Any, state: Any) -> str:
        record_usage(40, 0)
        raise ValueError("the model answered garbage")

    llm = LLM(name="broken", input_model=Prompt, handler=broken, cacheable=False)
    state = ExecutionState()
    result = await ExecutionEvent(actor=llm)(Prompt(text="q"), {}, state)
    assert not result.ok
    assert state.history.get_event_list()[-1].usage == TokenUsage(input_tokens=40)
    rh_telemetry.assert_metric("rh_agents_tokens_total", 40, name="broken")
    [(attrs, _)] = rh_telemetry.otel_points(semconv.METRIC_OPERATION_DURATION)
    assert attrs["error.type"] == "ValueError"


async def test_cached_results_spend_no_tokens(rh_telemetry: TelemetryCapture) -> None:
    cached_llm = OpenAIChat(name="cached", input_model=Prompt, handler=_answer)
    state = ExecutionState()
    await ExecutionEvent(actor=cached_llm)(Prompt(text="same"), {}, state)
    hit = ExecutionEvent(actor=cached_llm)
    await hit(Prompt(text="same"), {}, state)
    assert hit.from_cache and hit.usage is None
    assert state.history.token_usage().input_tokens == 4
    assert len(rh_telemetry.otel_points(semconv.METRIC_OPERATION_DURATION)) == 1


def test_record_usage_outside_an_invocation_warns_once_and_checks_its_arguments(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rh_agents.core.usage as usage_module

    monkeypatch.setattr(usage_module, "_warned_outside", False)
    with caplog.at_level(logging.WARNING, logger="rh_agents.usage"):
        record_usage(1, 2)
        record_usage(1, 2)
    assert [r.getMessage() for r in caplog.records] == [
        "record_usage() was called outside an rh_agents invocation; the tokens were not "
        "recorded. Call it inside an actor's handler (or code it awaits)."
    ]
    with pytest.raises(InvalidArgumentError, match="non-negative integers, got -1"):
        record_usage(-1, 0)
    with pytest.raises(InvalidArgumentError, match="got True"):
        record_usage(True, 0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="finish reasons must be strings"):
        record_usage(1, 1, finish_reasons=[1])  # type: ignore[list-item]


# ------------------------------------------------------------ history and resume


def _backends(tmp_path: Path) -> list[Any]:
    return [
        InMemoryStateBackend(),
        SQLiteStateBackend(tmp_path / "history.db"),
        FileSystemStateBackend(tmp_path / "fs"),
    ]


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["memory", "sqlite", "filesystem"])
def test_usage_survives_the_journal_and_a_resumed_run_counts_replayed_calls(
    tmp_path: Path, kind: int
) -> None:
    backend = _backends(tmp_path)[kind]
    done: list[str] = []

    async def write(data: Prompt, ctx: Any, state: Any) -> str:
        record_usage(len(data.text), 5, response_model="gpt-x", finish_reasons=["stop"])
        done.append(data.text)
        return data.text

    llm = LLM(name="writer", input_model=Prompt, handler=write, cacheable=False)

    async def crashing(data: Prompt, ctx: Any, state: ExecutionState) -> int:
        await ExecutionEvent(actor=llm)(Prompt(text="first"), {}, state)
        if len(done) == 1 and ctx.get("crash"):
            raise RuntimeError("crash after the first call")
        await ExecutionEvent(actor=llm)(Prompt(text="second!"), {}, state)
        return len(done)

    agent = Agent(name="author", input_model=Prompt, handler=crashing)
    state = ExecutionState(state_backend=backend, telemetry=False)
    asyncio.run(ExecutionEvent(actor=agent)(Prompt(text="go"), {"crash": True}, state))
    assert state.history.token_usage() == TokenUsage(
        input_tokens=5, output_tokens=5, response_model="gpt-x", finish_reasons=("stop",)
    )

    restored = ExecutionState.load_from_state_id(state.state_id, backend, telemetry=False)
    records = [e for e in restored.history.get_event_list() if e.usage is not None]
    assert [(e.address, e.usage) for e in records] == [
        ("author/writer", state.history.get_event_list()[2].usage)
    ]
    # the resumed run replays the first call and makes the second one
    asyncio.run(ExecutionEvent(actor=agent)(Prompt(text="go"), {}, restored))
    assert done == ["first", "second!"]
    replayed = [e for e in restored.history.get_event_list() if e.is_replayed]
    assert len(replayed) == 1 and replayed[0].usage is None
    assert restored.history.token_usage() == TokenUsage(
        input_tokens=12,
        output_tokens=10,
        response_model="gpt-x",
        finish_reasons=("stop", "stop"),
    )
    again = ExecutionState.load_from_state_id(state.state_id, backend, telemetry=False)
    assert again.history.token_usage() == restored.history.token_usage()


def test_a_damaged_stored_usage_is_reported_not_half_loaded() -> None:
    record = {
        "seq": 1,
        "address": "a",
        "status": "completed",
        "usage": {"input_tokens": "many", "output_tokens": 1},
    }
    with pytest.raises(Exception, match="token usage of history record 0 cannot be read"):
        HistorySet.from_records([record])


async def test_a_replayed_call_records_no_tokens_in_metrics_or_spans(tmp_path: Path) -> None:
    from rh_agents.testing import capture_telemetry

    backend = InMemoryStateBackend()
    first = ExecutionState(state_backend=backend, telemetry=False)
    await ExecutionEvent(actor=CHAT)(Prompt(text="abc"), {}, first)
    with capture_telemetry() as cap:
        resumed = ExecutionState.load_from_state_id(first.state_id, backend)
        await ExecutionEvent(actor=CHAT)(Prompt(text="abc"), {}, resumed)
    span = cap.one("chat gpt-4o-mini")
    assert (span.attributes or {})["rh_agents.outcome"] == "replayed"
    assert "gen_ai.usage.input_tokens" not in (span.attributes or {})
    assert cap.samples("rh_agents_tokens_total") == []
    assert cap.otel_points(semconv.METRIC_TOKEN_USAGE) == []
    assert resumed.history.token_usage().input_tokens == 3
