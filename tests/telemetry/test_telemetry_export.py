"""Exporting for real: OTLP on the wire, the span file, /metrics with exemplars."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from span_file import read_spans

from rh_agents import Agent, ExecutionEvent, ExecutionState, Tool
from rh_agents.telemetry import MetricsPortInUseError, setup


class Q(BaseModel):
    text: str


async def _search(data: Q, ctx: object, state: object) -> str:
    return data.text


SEARCH = Tool(name="search", input_model=Q, handler=_search)


async def _orchestrate(data: Q, ctx: object, state: ExecutionState) -> int:
    async with state.parallel(max_workers=4, name="fanout") as p:
        for i in range(int(data.text)):
            p.add(ExecutionEvent(actor=SEARCH)(Q(text=str(i)), {}, state))
        return len(await p.gather())


ORCHESTRATOR = Agent(name="orchestrator", input_model=Q, handler=_orchestrate)


class _Receiver(BaseHTTPRequestHandler):
    requests: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[str, list[bytes]]]:
    handler = type("Handler", (_Receiver,), {"requests": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _decode(bodies: list[bytes]) -> list[dict[str, Any]]:
    spans = []
    for body in bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}.get(
                "service.name"
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attrs = {}
                    for a in span.attributes:
                        v = a.value
                        attrs[a.key] = (
                            v.string_value or v.int_value or v.double_value or v.bool_value
                        )
                    spans.append(
                        {
                            "name": span.name,
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex() or None,
                            "trace_id": span.trace_id.hex(),
                            "attributes": attrs,
                            "service": service,
                            "scope": scope.scope.name,
                        }
                    )
    return spans


def test_spans_reach_an_otlp_http_receiver_with_their_tree(
    otlp_receiver: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    endpoint, bodies = otlp_receiver
    handle = setup(service_name="otlp-test", otlp_endpoint=endpoint, registry=CollectorRegistry())
    try:
        state = ExecutionState(telemetry=handle.telemetry)
        result = asyncio.run(ExecutionEvent(actor=ORCHESTRATOR)(Q(text="5"), {}, state))
        assert result.result == 5
    finally:
        handle.shutdown()
    assert handle.trace_file is None  # OTLP only: no local file unless asked
    spans = _decode(bodies)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    assert sorted(by_name) == [
        "execute_tool search",
        "invoke_agent orchestrator",
        "parallel fanout",
    ]
    agent = by_name["invoke_agent orchestrator"][0]
    group = by_name["parallel fanout"][0]
    assert agent["parent"] is None
    assert group["parent"] == agent["span_id"]
    assert len(by_name["execute_tool search"]) == 5
    assert all(s["parent"] == group["span_id"] for s in by_name["execute_tool search"])
    assert {s["trace_id"] for s in spans} == {agent["trace_id"]}
    assert {s["service"] for s in spans} == {"otlp-test"}
    assert {s["scope"] for s in spans} == {"rh_agents"}
    assert group["attributes"]["rh_agents.parallel.size"] == 5
    assert sorted(
        s["attributes"]["rh_agents.parallel.index"] or 0 for s in by_name["execute_tool search"]
    ) == [0, 1, 2, 3, 4]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_exporter_that_is_down_neither_fails_nor_stalls_the_run(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    handle = setup(otlp_endpoint=endpoint, registry=CollectorRegistry(), export_timeout=1.0)
    state = ExecutionState(telemetry=handle.telemetry)
    result = asyncio.run(ExecutionEvent(actor=ORCHESTRATOR)(Q(text="20"), {}, state))
    assert result.ok and result.result == 20
    started = time.monotonic()
    handle.shutdown()
    # Bounded by export_timeout (1 s) per pending export: generous bound for a busy host.
    assert time.monotonic() - started < 15


def test_the_span_file_holds_every_span_of_a_ten_thousand_item_group(tmp_path: Path) -> None:
    trace_file = tmp_path / "spans.jsonl"
    handle = setup(trace_file=trace_file, registry=CollectorRegistry())
    try:
        state = ExecutionState(telemetry=handle.telemetry)

        async def run() -> int:
            async with state.parallel(max_workers=100, name="big") as p:
                for i in range(10_000):
                    p.add(ExecutionEvent(actor=SEARCH)(Q(text=str(i)), {}, state))
                return len(await p.gather())

        assert asyncio.run(run()) == 10_000
    finally:
        handle.shutdown()
    spans = read_spans(trace_file)
    assert len(spans) == 10_001
    group = next(s for s in spans if s["name"] == "parallel big")
    assert sum(1 for s in spans if s["parent_span_id"] == group["span_id"]) == 10_000


def test_metrics_are_served_with_exemplars_of_exported_spans() -> None:
    registry = CollectorRegistry()
    memory = InMemorySpanExporter()
    handle = setup(
        metrics_port=0, registry=registry, exporters=[memory], trace_file=None, otlp_endpoint=None
    )
    try:
        state = ExecutionState(telemetry=handle.telemetry)
        asyncio.run(ExecutionEvent(actor=ORCHESTRATOR)(Q(text="3"), {}, state))
        handle.force_flush()
        assert handle.metrics_url is not None and "127.0.0.1" in handle.metrics_url
        request = urllib.request.Request(
            handle.metrics_url,
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read().decode()
    finally:
        handle.shutdown()
    assert (
        'rh_agents_events_total{name="search",operation="execute_tool",outcome="completed"}' in body
    )
    exemplar_ids = {
        line.split('trace_id="', 1)[1].split('"', 1)[0]
        for line in body.splitlines()
        if "# {trace_id=" in line
    }
    exported = {format(s.context.trace_id, "032x") for s in memory.get_finished_spans()}
    assert exemplar_ids, body
    assert exemplar_ids <= exported


def _export_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("OtelBatch")}


def test_a_metrics_port_in_use_is_a_clear_error_and_starts_nothing(tmp_path: Path) -> None:
    trace_file = tmp_path / "spans.jsonl"
    before = _export_threads()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(MetricsPortInUseError, match=f"127.0.0.1:{port}.*already in use"):
            setup(
                metrics_port=port,
                registry=CollectorRegistry(),
                trace_file=trace_file,
                exporters=[InMemorySpanExporter()],
            )
    # no export thread was started and no span file opened (or created)
    assert _export_threads() == before
    assert not trace_file.exists()


def _open_files() -> set[str]:
    fds = Path("/proc/self/fd")
    if not fds.is_dir():  # pragma: no cover - not Linux
        pytest.skip("needs /proc/self/fd")
    found = set()
    for fd in fds.iterdir():
        try:
            found.add(os.readlink(fd))
        except OSError:
            pass
    return found


def test_a_setup_that_fails_half_way_stops_what_it_started(tmp_path: Path) -> None:
    from prometheus_client import Counter

    trace_file = tmp_path / "spans.jsonl"
    registry = CollectorRegistry()
    Counter("rh_agents_events", "Someone else's metric of the same name.", registry=registry)
    before = _export_threads()
    # the export threads run and the span file is open when registering the metrics fails
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        setup(
            metrics_port=0,
            registry=registry,
            trace_file=trace_file,
            exporters=[InMemorySpanExporter()],
        )
    assert _export_threads() == before
    assert str(trace_file) not in _open_files()


def test_the_metrics_server_of_a_failed_setup_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rh_agents.telemetry import _setup

    servers: list[Any] = []
    serve = _setup._serve_metrics

    def recording(*args: Any) -> Any:
        servers.append(serve(*args))
        return servers[-1]

    monkeypatch.setattr(_setup, "_serve_metrics", recording)
    with pytest.raises(IsADirectoryError):
        setup(metrics_port=0, registry=CollectorRegistry(), trace_file=tmp_path)
    (server,) = servers
    assert server.socket.fileno() == -1  # closed
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.server_address[1])) != 0


def test_shutdown_exports_everything_and_closes_the_span_file(tmp_path: Path) -> None:
    trace_file = tmp_path / "spans.jsonl"
    handle = setup(trace_file=trace_file, registry=CollectorRegistry(), metrics_port=0)
    state = ExecutionState(telemetry=handle.telemetry)
    asyncio.run(ExecutionEvent(actor=ORCHESTRATOR)(Q(text="3"), {}, state))
    assert handle.force_flush(timeout=5) is True
    assert len(read_spans(trace_file)) == 5
    url = handle.metrics_url
    assert url is not None
    handle.shutdown()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)
    assert handle.force_flush(timeout=1) is False  # nothing to flush into any more
    handle.shutdown()  # idempotent


def test_the_endpoint_comes_from_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    handle = setup(registry=CollectorRegistry())
    try:
        assert handle.otlp_endpoint == "http://127.0.0.1:4318/v1/traces"
        assert handle.trace_file is None
        assert "OTLP http://127.0.0.1:4318/v1/traces" in handle.describe()
        resource = handle.tracer_provider.resource.attributes
        assert resource["service.name"] == "from-env"
    finally:
        handle.shutdown(timeout=0.5)
