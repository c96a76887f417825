"""The local span file is OTLP JSON (the Collector file exporter's format), and setup()
honours the standard OTEL_* environment, with explicit arguments winning."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from otlp_receiver import otlp_receiver
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from rh_agents import LLM, Agent, ExecutionEvent, ExecutionState, RetryConfig, Tool
from rh_agents.cli import load_spans, render_traces
from rh_agents.core.errors import InvalidArgumentError
from rh_agents.telemetry import JsonLinesSpanExporter, record_usage, semconv, setup


class Q(BaseModel):
    text: str


async def _flaky(data: Q, ctx: Any, state: ExecutionState) -> str:
    # the first attempt of each call fails (counted per run, in its state's storage)
    tries = state.storage.setdefault("tries", {})
    tries[data.text] = tries.get(data.text, 0) + 1
    if tries[data.text] == 1:
        raise ConnectionError("refused")
    return data.text


async def _chat(data: Q, ctx: Any, state: Any) -> str:
    record_usage(5, 2, response_model="m-1", finish_reasons=["stop", "length"])
    return "ok"


FLAKY = Tool(
    name="flaky",
    input_model=Q,
    handler=_flaky,
    retry_config=RetryConfig(max_attempts=2, initial_delay=0.0, jitter=False),
)
CHAT = LLM(name="talk", input_model=Q, handler=_chat, cacheable=False)


async def _orchestrate(data: Q, ctx: Any, state: ExecutionState) -> int:
    async with state.parallel(max_workers=2, name="fan") as group:
        for i in range(2):
            group.add(ExecutionEvent(actor=FLAKY, tag=str(i))(Q(text=str(i)), {}, state))
        await group.gather()
    await ExecutionEvent(actor=CHAT)(Q(text="x"), {}, state)
    return 1


AGENT = Agent(name="boss", input_model=Q, handler=_orchestrate)


def _run(**setup_args: Any) -> Any:
    handle = setup(registry=CollectorRegistry(), **setup_args)
    try:
        state = ExecutionState(telemetry=handle.telemetry)
        asyncio.run(ExecutionEvent(actor=AGENT)(Q(text="go"), {}, state))
    finally:
        handle.shutdown()
    return handle, state


def _as_protobuf(line: str) -> ExportTraceServiceRequest:
    """Parse one line strictly against the OTLP proto (unknown fields fail). OTLP JSON
    writes ids as hex where protobuf's own JSON mapping expects base64."""
    data = json.loads(line)
    for resource in data["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return json_format.ParseDict(data, ExportTraceServiceRequest())


def test_the_span_file_is_otlp_json_one_request_per_line(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    _run(trace_file=path, service_name="file-test")
    lines = path.read_text().splitlines()
    assert lines and all(line.startswith('{"resourceSpans":[') for line in lines)
    spans = [
        (span, scope)
        for line in lines
        for resource in _as_protobuf(line).resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = sorted(span.name for span, _ in spans)
    assert names == [
        "attempt 1",
        "attempt 1",
        "attempt 2",
        "attempt 2",
        "chat talk",
        "execute_tool flaky",
        "execute_tool flaky",
        "invoke_agent boss",
        "parallel fan",
    ]
    by_id = {span.span_id: span for span, _ in spans}
    parent_name = {
        span.name: by_id[span.parent_span_id].name for span, _ in spans if span.parent_span_id
    }
    assert parent_name["parallel fan"] == "invoke_agent boss"
    assert parent_name["execute_tool flaky"] == "parallel fan"
    assert parent_name["attempt 1"] == "execute_tool flaky"
    assert parent_name["chat talk"] == "invoke_agent boss"
    assert {scope.scope.name for _, scope in spans} == {"rh_agents"}
    assert {scope.schema_url for _, scope in spans} == {semconv.SCHEMA_URL}
    chat = next(span for span, _ in spans if span.name == "chat talk")
    assert chat.kind == chat.SPAN_KIND_CLIENT
    attrs = {a.key: a.value for a in chat.attributes}
    assert attrs["gen_ai.usage.input_tokens"].int_value == 5
    assert [v.string_value for v in attrs["gen_ai.response.finish_reasons"].array_value.values] == [
        "stop",
        "length",
    ]
    failed = [s for s, _ in spans if s.name == "attempt 1"]
    assert all(s.status.code == s.status.STATUS_CODE_ERROR for s in failed)
    assert all(s.status.message == "refused" for s in failed)
    assert all([e.name for e in s.events] == ["exception"] for s in failed)
    # the JSON mapping itself: hex ids, 64-bit integers as strings, enums as numbers
    raw = json.loads(lines[0])["resourceSpans"][0]
    first = raw["scopeSpans"][0]["spans"][0]
    assert len(first["traceId"]) == 32 and int(first["traceId"], 16)
    assert len(first["spanId"]) == 16
    assert isinstance(first["startTimeUnixNano"], str) and first["startTimeUnixNano"].isdigit()
    assert isinstance(first["kind"], int)
    service = {a["key"]: a["value"] for a in raw["resource"]["attributes"]}["service.name"]
    assert service == {"stringValue": "file-test"}
    every = [
        s
        for line in lines
        for r in json.loads(line)["resourceSpans"]
        for sc in r["scopeSpans"]
        for s in sc["spans"]
    ]
    ints = [a["value"] for s in every for a in s.get("attributes", []) if "intValue" in a["value"]]
    assert ints and all(isinstance(v["intValue"], str) for v in ints)
    # and rh-agents trace show reads it back as one tree
    records, bad = load_spans(path)
    assert not bad
    text, count = render_traces(records)
    assert count == 1
    rows = [re.match(r"( *\S.*?)(?=  )", line) for line in text.splitlines()[1:4]]
    assert [row.group(1) if row else None for row in rows] == [
        "  invoke_agent boss",
        "    parallel fan",
        "      execute_tool flaky [0]",
    ]


def test_rotation_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = JsonLinesSpanExporter(path, max_bytes=2_000)
    handle = setup(registry=CollectorRegistry(), exporters=[exporter], schedule_delay=0.01)
    try:
        state = ExecutionState(telemetry=handle.telemetry)
        for _ in range(10):
            asyncio.run(ExecutionEvent(actor=AGENT)(Q(text="go"), {}, state))
            handle.force_flush()
    finally:
        handle.shutdown()
    assert exporter.rotations >= 2
    for kept in (path, exporter.previous):
        records, bad = load_spans(kept)
        assert records and not bad


# ----------------------------------------------------------------- environment


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_endpoint_headers_service_and_resource_come_from_the_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    with otlp_receiver() as received:
        clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", received.url)
        clean_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=secret-1,x-team=agents")
        clean_env.setenv(
            "OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci,service.name=ra"
        )
        clean_env.setenv("OTEL_SERVICE_NAME", "from-env")
        handle, _ = _run()
        spans = received.spans()
        headers = [h for path, h, _ in received.requests if path == "/v1/traces"]
    assert handle.otlp_endpoint == received.url + "/v1/traces"
    assert handle.trace_file is None
    assert len(spans) == 9
    assert {s["resource"]["service.name"] for s in spans} == {"from-env"}
    assert {s["resource"]["deployment.environment.name"] for s in spans} == {"ci"}
    assert headers and all(h["x-api-key"] == "secret-1" for h in headers)


def test_explicit_arguments_win_over_the_environment(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with otlp_receiver() as env_receiver, otlp_receiver() as explicit:
        clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", env_receiver.url + "/custom")
        clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=from-env")
        clean_env.setenv("OTEL_SERVICE_NAME", "from-env")
        clean_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=x")
        clean_env.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "1234")
        clean_env.setenv("OTEL_BSP_EXPORT_TIMEOUT", "7000")
        env_only, _ = _run()
        paths = [path for path, _, _ in env_receiver.requests]
        handle, _ = _run(
            otlp_endpoint=explicit.url,
            otlp_headers={"x-api-key": "explicit"},
            service_name="explicit",
            max_queue_size=99,
        )
        spans = explicit.spans()
        headers = {h["x-api-key"] for p, h, _ in explicit.requests}
    assert set(paths) == {"/custom"}  # a signal-specific endpoint is used as is
    assert env_only.span_processor_settings["max_queue_size"] == 1234
    assert env_only.span_processor_settings["export_timeout_millis"] == 7000
    # not set anywhere: the SDK's 512-span batches (spans wait less; docs/performance.md)
    assert env_only.span_processor_settings["max_export_batch_size"] == 512
    assert handle.span_processor_settings["max_queue_size"] == 99
    assert {s["resource"]["service.name"] for s in spans} == {"explicit"}
    assert {s["resource"]["team"] for s in spans} == {"x"}
    assert headers == {"explicit"}


def test_bsp_variables_set_the_batching(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    clean_env.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "3")
    clean_env.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "not a number")
    handle, _ = _run(trace_file=tmp_path / "s.jsonl")
    assert handle.span_processor_settings == {
        "max_queue_size": 65_536,  # the invalid value is ignored (with a warning)
        "max_export_batch_size": 3,
        "schedule_delay_millis": 50.0,
        "export_timeout_millis": 5000,
    }
    assert len(load_spans(tmp_path / "s.jsonl")[0]) == 9


def test_otlp_protocols(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidArgumentError, match="opentelemetry-exporter-otlp-proto-grpc"):
            setup(registry=CollectorRegistry())
    else:  # pragma: no cover - grpc installed
        handle = setup(registry=CollectorRegistry())
        assert handle.otlp_endpoint == "http://127.0.0.1:4317"
        handle.shutdown(timeout=0.5)
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    with pytest.raises(InvalidArgumentError, match="Unsupported OTLP protocol 'http/json'"):
        setup(registry=CollectorRegistry())
    # explicit wins: http/protobuf to the same base URL, with /v1/traces
    handle = setup(registry=CollectorRegistry(), otlp_protocol="http/protobuf")
    assert handle.otlp_endpoint == "http://127.0.0.1:4317/v1/traces"
    handle.shutdown(timeout=0.5)


def test_sdk_disabled_records_no_spans_but_keeps_the_metrics(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("OTEL_SDK_DISABLED", "true")
    clean_env.chdir(tmp_path)
    registry = CollectorRegistry()
    handle = setup(registry=registry)
    try:
        state = ExecutionState(telemetry=handle.telemetry)
        asyncio.run(ExecutionEvent(actor=AGENT)(Q(text="go"), {}, state))
    finally:
        handle.shutdown()
    assert handle.trace_file is None and not (tmp_path / ".rh_agents").exists()
    assert handle.telemetry.tracer is None
    assert (
        registry.get_sample_value(
            "rh_agents_events_total",
            {"operation": "invoke_agent", "name": "boss", "outcome": "completed"},
        )
        == 1.0
    )


def _comparable(state: ExecutionState) -> list[dict[str, Any]]:
    drop = {"timestamp", "execution_time"}
    return [
        {k: v for k, v in record.items() if k not in drop} for record in state.history.to_records()
    ]


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[Any, ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in registry.collect()
        for s in m.samples
        if not s.name.endswith(("_bucket", "_sum", "_created"))
        # the health of the export counts the spans themselves
        and not s.name.startswith("rh_agents_spans_")
    }


@pytest.mark.parametrize("sampler", ["always_off", "traceidratio"])
def test_a_sampled_out_span_changes_no_history_and_no_metric(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, sampler: str
) -> None:
    results = []
    for setting in ("always_on", sampler):
        clean_env.setenv("OTEL_TRACES_SAMPLER", setting)
        clean_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
        registry = CollectorRegistry()
        path = tmp_path / f"{setting}.jsonl"
        handle = setup(registry=registry, trace_file=path, loop_lag_interval=None)
        try:
            state = ExecutionState(telemetry=handle.telemetry, state_id="same-run")
            asyncio.run(ExecutionEvent(actor=AGENT)(Q(text="go"), {}, state))
        finally:
            handle.shutdown()
        results.append((_comparable(state), _samples(registry), load_spans(path)[0]))
    (on_history, on_metrics, on_spans), (off_history, off_metrics, off_spans) = results
    assert len(on_spans) == 9 and off_spans == []
    assert off_history == on_history
    assert off_metrics == on_metrics
