"""Defaults follow the application: states created without ``telemetry=`` trace through
the global providers (even when they are set later) and count into prometheus_client's
default registry; ``telemetry=False`` opts out; a test capture wins; restored states
default the same way; and importing rh_agents stays cheap and sets nothing global."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from prometheus_client import REGISTRY
from pydantic import BaseModel
from span_file import read_spans
from telemetry_app import span_names

from rh_agents import Agent, ExecutionEvent, ExecutionState, RetryConfig, Tool
from rh_agents.core.hooks import NOOP
from rh_agents.state_backends import InMemoryStateBackend
from rh_agents.telemetry import Telemetry, default_telemetry
from rh_agents.testing import FakeClock, capture_telemetry

APP = Path(__file__).with_name("telemetry_app.py")


class Q(BaseModel):
    text: str


async def _echo(data: Q, ctx: Any, state: Any) -> str:
    return data.text


def _events_total(name: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "rh_agents_events_total",
            {"operation": "execute_tool", "name": name, "outcome": "completed"},
        )
        or 0.0
    )


def _app(scenario: str, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [sys.executable, str(APP), scenario, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def test_a_plain_state_counts_into_the_default_registry_and_traces_nothing_yet() -> None:
    # This pytest process never sets a global provider: the API's proxy is in place.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    tool = Tool(name="defaults-plain", input_model=Q, handler=_echo)
    state = ExecutionState()
    assert state.telemetry is default_telemetry()
    assert state.instrumentation.enabled
    assert default_telemetry().tracer is None  # no span work while nothing is configured
    before = _events_total("defaults-plain")
    outer = trace.get_current_span()
    seen: list[Any] = []

    async def look(data: Q, ctx: Any, state: Any) -> str:
        seen.append(trace.get_current_span())
        return data.text

    asyncio.run(ExecutionEvent(actor=tool)(Q(text="x"), {}, state))
    asyncio.run(
        ExecutionEvent(actor=Tool(name="defaults-look", input_model=Q, handler=look))(
            Q(text="y"), {}, state
        )
    )
    assert _events_total("defaults-plain") == before + 1
    assert seen == [outer]  # the current context is left alone


def test_telemetry_false_records_nothing() -> None:
    tool = Tool(name="defaults-off", input_model=Q, handler=_echo)
    state = ExecutionState(telemetry=False)
    assert state.telemetry is None and state.instrumentation is NOOP
    asyncio.run(ExecutionEvent(actor=tool)(Q(text="x"), {}, state))
    assert _events_total("defaults-off") == 0.0


def test_the_ambient_capture_wins_over_the_default_and_explicit_wins_over_both() -> None:
    tool = Tool(name="defaults-ambient", input_model=Q, handler=_echo)
    explicit = Telemetry(tracing=False, metrics=False)
    with capture_telemetry() as cap:
        captured = ExecutionState()
        own = ExecutionState(telemetry=explicit)
        asyncio.run(ExecutionEvent(actor=tool)(Q(text="x"), {}, captured))
        asyncio.run(ExecutionEvent(actor=tool)(Q(text="y"), {}, own))
    assert captured.telemetry is cap.telemetry and own.telemetry is explicit
    assert cap.span_tree() == "execute_tool defaults-ambient [outcome='completed']"
    assert _events_total("defaults-ambient") == 0.0  # nothing leaked into the default


def test_restored_states_take_telemetry_and_default_the_same_way() -> None:
    calls: list[str] = []

    async def step(data: Q, ctx: Any, state: Any) -> str:
        calls.append(data.text)
        return data.text

    tool = Tool(name="defaults-restored", input_model=Q, handler=step)

    async def run(data: Q, ctx: Any, state: ExecutionState) -> int:
        await ExecutionEvent(actor=tool)(Q(text="a"), {}, state)
        if ctx.get("crash"):
            raise RuntimeError("crashed after the first step")
        await ExecutionEvent(actor=tool)(Q(text="b"), {}, state)
        return 2

    agent = Agent(name="defaults-restorer", input_model=Q, handler=run)
    backend = InMemoryStateBackend()
    first = ExecutionState(state_backend=backend, telemetry=False)
    asyncio.run(ExecutionEvent(actor=agent)(Q(text="go"), {"crash": True}, first))

    loaded = ExecutionState.load_from_state_id(first.state_id, backend)
    assert loaded.telemetry is default_telemetry()
    assert ExecutionState.from_snapshot(first.to_snapshot()).telemetry is default_telemetry()
    off = ExecutionState.load_from_state_id(first.state_id, backend, telemetry=False)
    assert off.telemetry is None
    with capture_telemetry() as cap:
        resumed = ExecutionState.load_from_state_id(first.state_id, backend)
        asyncio.run(ExecutionEvent(actor=agent)(Q(text="go"), {}, resumed))
    assert calls == ["a", "b"]
    # the run after the crash, the one people most want to see, is traced
    assert cap.span_tree() == (
        "invoke_agent defaults-restorer [outcome='completed']\n"
        "  execute_tool defaults-restored [outcome='replayed']\n"
        "  execute_tool defaults-restored [outcome='completed']"
    )
    agent_span = cap.one("invoke_agent defaults-restorer")
    assert (agent_span.attributes or {})["gen_ai.conversation.id"] == first.state_id


def test_importing_rh_agents_loads_no_telemetry_and_sets_nothing_global() -> None:
    code = (
        "import sys, rh_agents, rh_agents.core.execution;"
        "from opentelemetry import trace;"
        "loaded = sorted(m for m in sys.modules if m.startswith(('prometheus_client', "
        "'rh_agents.telemetry', 'opentelemetry.sdk')));"
        "print(loaded, type(trace.get_tracer_provider()).__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] ProxyTracerProvider"


def test_an_application_that_sets_its_provider_after_creating_the_state_gets_the_tree() -> None:
    summary = _app("late-provider", "2")
    spans = summary["spans"]
    by_id = {s["id"]: s for s in spans}

    def parent(name: str) -> str | None:
        found = {
            by_id[s["parent"]]["name"] if s["parent"] in by_id else None
            for s in spans
            if s["name"] == name
        }
        assert len(found) == 1, (name, found)
        return found.pop()

    assert sorted(s["name"] for s in spans) == [
        "chat summarize",
        "execute_tool lookup",
        "execute_tool lookup",
        "invoke_agent researcher",
        "parallel lookups",
        "request",
    ]
    assert parent("request") is None
    assert parent("invoke_agent researcher") == "request"  # nests in the app's own span
    assert parent("parallel lookups") == "invoke_agent researcher"
    assert parent("execute_tool lookup") == "parallel lookups"
    assert parent("chat summarize") == "invoke_agent researcher"
    assert (
        summary["registry"][
            "rh_agents_events_total{name=lookup,operation=execute_tool,outcome=completed}"
        ]
        == 2.0
    )


def test_setup_set_global_is_enough_without_passing_the_handle(tmp_path: Path) -> None:
    span_file = tmp_path / "spans.jsonl"
    summary = _app("setup-global", "3", str(span_file))
    assert summary["completed"] == 3
    spans = read_spans(span_file)
    assert sorted(s["name"] for s in spans) == span_names(3)
    assert {s["service_name"] for s in spans} == {"setup-global"}


def test_every_emitted_name_comes_from_the_semconv_module_and_is_documented() -> None:
    import ast
    import inspect

    from rh_agents.telemetry import _breakers, _errors, _health, _otel, metrics, semconv

    for module in (_otel, metrics, _health, _breakers, _errors):
        tree = ast.parse(inspect.getsource(module))
        literals = {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        names = {
            text
            for text in literals
            if text.startswith(("gen_ai.", "rh_agents_", "error.", "exception."))
            or (text.startswith("rh_agents.") and " " not in text)
        }
        # the logger and context variables are not emitted names
        assert names <= {"rh_agents.telemetry", "rh_agents_item", "rh_agents_inside"}, (
            module.__name__,
            names,
        )
    docs = (Path(__file__).resolve().parents[2] / "docs" / "telemetry.md").read_text()
    declared = [
        value
        for holder in (semconv, semconv.Rh)
        for key, value in vars(holder).items()
        if key.isupper()
        and isinstance(value, str)
        and (key.startswith(("ATTR_", "METRIC_")) or holder is semconv.Rh)
    ]
    missing = [
        name
        for name in declared
        # group attributes are listed as `rh_agents.parallel.name`, `.group_id`, ...
        if f"`{name}" not in docs and f"`.{name.split('.')[-1]}`" not in docs
    ]
    assert not missing, missing


async def test_tracing_only_with_no_provider_yet_skips_every_hook_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tries = 0

    async def flaky(data: Q, ctx: Any, state: Any) -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise ConnectionError("once")
        return data.text

    tool = Tool(
        name="defaults-quiet",
        input_model=Q,
        handler=flaky,
        retry_config=RetryConfig(max_attempts=2, initial_delay=0.0, jitter=False),
    )
    telemetry = Telemetry(metrics=False)  # follows the global provider, unset here
    assert not telemetry.instrumentation.enabled
    async with FakeClock() as clock:
        state = ExecutionState(telemetry=telemetry, clock=clock)
        async with state.parallel(name="quiet") as group:
            group.add(ExecutionEvent(actor=tool)(Q(text="x"), {}, state))
            [result] = await group.gather()
    assert result.ok and tries == 2
    assert not [r for r in caplog.records if r.name == "rh_agents.telemetry"]
