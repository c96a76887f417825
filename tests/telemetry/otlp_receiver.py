"""An in-test OTLP/HTTP receiver: records each request, decodes traces and metrics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@dataclass
class Received:
    url: str
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def spans(self) -> list[dict[str, Any]]:
        """Every span received on /v1/traces, flattened."""
        spans = []
        for path, _, body in self.requests:
            if path != "/v1/traces":
                continue
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        spans.append(
                            {
                                "name": span.name,
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex() or None,
                                "trace_id": span.trace_id.hex(),
                                "kind": span.kind,
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                                "resource": resource,
                                "scope": scope.scope.name,
                                "schema_url": scope.schema_url,
                            }
                        )
        return spans

    def histogram_points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, point) of every data point of histogram ``name`` received."""
        points = []
        for path, _, body in self.requests:
            if path != "/v1/metrics":
                continue
            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            for resource_metrics in request.resource_metrics:
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        if metric.name == name:
                            for point in metric.histogram.data_points:
                                attrs = {a.key: _value(a.value) for a in point.attributes}
                                points.append((attrs, point))
        return points


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, kind) if kind else None


@contextmanager
def otlp_receiver() -> Iterator[Received]:
    """A loopback OTLP/HTTP receiver answering 200 to every POST."""
    received = Received(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                received.requests.append((self.path, dict(self.headers.items()), body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    received.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
