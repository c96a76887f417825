"""Zero-code instrumentation: an application that never mentions telemetry, run under
``opentelemetry-instrument``, exports its whole span tree and GenAI metrics over OTLP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from otlp_receiver import otlp_receiver
from telemetry_app import span_names

from rh_agents.telemetry import semconv

APP = Path(__file__).with_name("telemetry_app.py")
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")

pytestmark = pytest.mark.skipif(
    not INSTRUMENT.exists() and shutil.which("opentelemetry-instrument") is None,
    reason="opentelemetry-distro is not installed (it is in the dev extra)",
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], str]:
    proc = subprocess.run(
        [str(INSTRUMENT), *args, sys.executable, str(APP), "plain", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"scenario"')]
    return json.loads(lines[-1]), proc.stdout


def test_opentelemetry_instrument_exports_the_span_tree_and_genai_metrics_over_otlp() -> None:
    with otlp_receiver() as received:
        summary, _ = _run(
            [],
            _env(
                OTEL_SERVICE_NAME="zero-code-app",
                OTEL_TRACES_EXPORTER="otlp",
                OTEL_METRICS_EXPORTER="otlp",
                OTEL_LOGS_EXPORTER="none",
                OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                OTEL_EXPORTER_OTLP_ENDPOINT=received.url,
                OTEL_METRIC_EXPORT_INTERVAL="60000",  # exported once, at exit
            ),
        )
        spans = received.spans()
        tokens = received.histogram_points(semconv.METRIC_TOKEN_USAGE)
        durations = received.histogram_points(semconv.METRIC_OPERATION_DURATION)
    assert summary["completed"] == 3
    by_id = {s["span_id"]: s for s in spans}

    def tree(span: dict[str, Any], depth: int = 0) -> list[str]:
        kids = sorted(
            (s for s in spans if s["parent"] == span["span_id"]),
            key=lambda s: (s["name"], str(s["attributes"].get("rh_agents.parallel.index"))),
        )
        return ["  " * depth + span["name"]] + [line for k in kids for line in tree(k, depth + 1)]

    roots = [s for s in spans if s["parent"] not in by_id]
    assert [line for root in roots for line in tree(root)] == [
        "invoke_agent researcher",
        "  chat summarize",
        "  parallel lookups",
        "    execute_tool lookup",
        "    execute_tool lookup",
        "    execute_tool lookup",
    ]
    assert {s["resource"]["service.name"] for s in spans} == {"zero-code-app"}
    assert {s["scope"] for s in spans} == {"rh_agents"}
    assert {s["schema_url"] for s in spans} == {semconv.SCHEMA_URL}
    items = [s for s in spans if s["name"] == "execute_tool lookup"]
    assert sorted(s["attributes"]["rh_agents.parallel.index"] for s in items) == [0, 1, 2]
    agent = next(s for s in spans if s["name"] == "invoke_agent researcher")
    assert agent["attributes"]["gen_ai.conversation.id"]
    chat = next(s for s in spans if s["name"] == "chat summarize")
    assert chat["kind"] == 3  # CLIENT
    assert chat["attributes"]["gen_ai.usage.input_tokens"] == 12
    assert chat["attributes"]["gen_ai.usage.output_tokens"] == 3
    assert chat["attributes"]["gen_ai.response.finish_reasons"] == ("stop",)
    # the GenAI metrics reached the OTLP endpoint through the global MeterProvider
    assert sorted((a["gen_ai.token.type"], p.sum) for a, p in tokens) == [
        ("input", 12.0),
        ("output", 3.0),
    ]
    assert all(tuple(p.explicit_bounds) == semconv.TOKEN_USAGE_BUCKETS for _, p in tokens)
    [(duration_attrs, duration)] = durations
    assert duration_attrs["gen_ai.operation.name"] == "chat"
    assert duration.count == 1
    assert tuple(duration.explicit_bounds) == semconv.OPERATION_DURATION_BUCKETS
    # and the Prometheus metrics went to prometheus_client's default registry
    assert (
        summary["registry"][
            "rh_agents_events_total{name=lookup,operation=execute_tool,outcome=completed}"
        ]
        == 3.0
    )


def test_the_console_exporter_prints_every_span() -> None:
    """The first thing a new user tries, from the issue."""
    summary, out = _run(
        ["--traces_exporter", "console", "--metrics_exporter", "none", "--logs_exporter", "none"],
        _env(OTEL_SERVICE_NAME="console-app"),
    )
    names = [json.loads(block)["name"] for block in _json_blocks(out)]
    assert sorted(names) == span_names(3)
    assert (
        summary["registry"][
            "rh_agents_tokens_total{model=stub-model-1,name=summarize,token_type=input}"
        ]
        == 12.0
    )


def _json_blocks(out: str) -> list[str]:
    """The pretty-printed JSON objects the console exporter writes, one per span."""
    blocks, current = [], []
    for line in out.splitlines():
        if line == "{":
            current = [line]
        elif current:
            current.append(line)
            if line == "}":
                blocks.append("\n".join(current))
                current = []
    return blocks
