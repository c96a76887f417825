"""A small application using rh_agents the way a new user would: ``ExecutionState()``
without ``telemetry=``. Run as a script by the telemetry tests, under different
OpenTelemetry set-ups (``opentelemetry-instrument``, the application's own provider,
``setup(set_global=True)``); it prints a JSON summary on its last line.

    python telemetry_app.py SCENARIO [N]
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from prometheus_client import REGISTRY
from pydantic import BaseModel

from rh_agents import LLM, Agent, ExecutionEvent, ExecutionState, Tool
from rh_agents.telemetry import record_usage


class Q(BaseModel):
    text: str


async def _lookup(data: Q, ctx: Any, state: Any) -> str:
    return f"found {data.text}"


async def _chat(data: Q, ctx: Any, state: Any) -> str:
    record_usage(12, 3, response_model="stub-model-1", finish_reasons=["stop"])
    return "summary"


LOOKUP = Tool(name="lookup", input_model=Q, handler=_lookup)
CHAT = LLM(name="summarize", input_model=Q, handler=_chat, cacheable=False)


async def _research(data: Q, ctx: Any, state: ExecutionState) -> int:
    async with state.parallel(max_workers=2, name="lookups") as group:
        for i in range(int(data.text)):
            group.add(ExecutionEvent(actor=LOOKUP, tag=f"q{i}")(Q(text=str(i)), {}, state))
        results = await group.gather()
    await ExecutionEvent(actor=CHAT)(Q(text="all"), {}, state)
    return sum(r.ok for r in results)


RESEARCHER = Agent(name="researcher", input_model=Q, handler=_research)


def span_names(n: int) -> list[str]:
    """The sorted span names of one run with ``n`` lookups."""
    return sorted(
        ["invoke_agent researcher", "parallel lookups", "chat summarize"]
        + ["execute_tool lookup"] * n
    )


def run(state: ExecutionState, n: int) -> int:
    result = asyncio.run(ExecutionEvent(actor=RESEARCHER)(Q(text=str(n)), {}, state))
    assert result.ok, result.error_message
    return int(result.result)


def registry_samples() -> dict[str, float]:
    """The rh_agents samples of prometheus_client's default registry."""
    return {
        f"{s.name}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}": s.value
        for metric in REGISTRY.collect()
        for s in metric.samples
        if s.name.startswith("rh_agents_events_total") or s.name.startswith("rh_agents_tokens")
    }


def main(scenario: str, n: int) -> None:
    summary: dict[str, Any] = {"scenario": scenario}
    if scenario == "plain":
        # zero-code: whatever opentelemetry-instrument configured
        summary["completed"] = run(ExecutionState(), n)
    elif scenario == "late-provider":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        state = ExecutionState()  # created before OpenTelemetry is configured
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        app_tracer = trace.get_tracer("app")
        with app_tracer.start_as_current_span("request"):
            summary["completed"] = run(state, n)
        summary["spans"] = [
            {
                "name": s.name,
                "id": format(s.context.span_id, "016x"),
                "parent": format(s.parent.span_id, "016x") if s.parent else None,
                "attributes": {k: v for k, v in (s.attributes or {}).items()},
            }
            for s in exporter.get_finished_spans()
        ]
    elif scenario == "setup-global":
        from rh_agents.telemetry import setup

        handle = setup(service_name="setup-global", trace_file=sys.argv[3], set_global=True)
        summary["completed"] = run(ExecutionState(), n)  # handle.telemetry not passed
        handle.shutdown()
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    summary["registry"] = registry_samples()
    print(json.dumps(summary, default=list))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
