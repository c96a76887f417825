"""The local span file: OTLP JSON, one ``ExportTraceServiceRequest`` per line.

This is the format of the OpenTelemetry Collector's file exporter (and of the
specification's OTLP file exporter): the OTLP/JSON mapping of protobuf, so a Collector
(``otlpjsonfile`` receiver), otel-tui or any OTLP JSON reader can load the file, and
``rh-agents trace show`` prints it as trees. The mapping follows the OTLP specification:
lowerCamelCase field names, trace and span ids as lowercase hex (not base64), 64-bit
integers (timestamps, ``intValue``) as decimal strings, enums (span kind, status code)
as integers, empty and default fields left out.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from rh_agents.core.errors import InvalidArgumentError

__all__ = ["JsonLinesSpanExporter", "span_to_dict", "spans_to_otlp_json"]

logger = logging.getLogger("rh_agents.telemetry")

_KIND = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
_STATUS = {StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200


def _any_value(value: Any) -> dict[str, Any]:
    """The OTLP ``AnyValue`` of an attribute value."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": _key_values(value)}}
    return {"stringValue": str(value)}


def _key_values(attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [{"key": key, "value": _any_value(value)} for key, value in (attributes or {}).items()]


def _with_attributes(target: dict[str, Any], attributes: Any) -> dict[str, Any]:
    if attributes:
        target["attributes"] = _key_values(attributes)
    dropped = getattr(attributes, "dropped", 0)
    if dropped:
        target["droppedAttributesCount"] = dropped
    return target


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """The OTLP JSON ``Span`` message of a finished span.

    Example:
        >>> span_to_dict(finished)["traceId"]  # doctest: +SKIP
        '5b8aa5a2d2c872e8321cf37308d69df2'
    """
    ctx = span.context
    out: dict[str, Any] = {}
    if ctx is not None:
        out["traceId"] = format(ctx.trace_id, "032x")
        out["spanId"] = format(ctx.span_id, "016x")
        if ctx.trace_state:
            out["traceState"] = ctx.trace_state.to_header()
    parent = span.parent
    if parent is not None:
        out["parentSpanId"] = format(parent.span_id, "016x")
    out["flags"] = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    out["name"] = span.name
    out["kind"] = _KIND.get(span.kind, 1)
    out["startTimeUnixNano"] = str(span.start_time or 0)
    out["endTimeUnixNano"] = str(span.end_time or 0)
    _with_attributes(out, span.attributes)
    events = []
    for event in span.events:
        encoded = {"timeUnixNano": str(event.timestamp), "name": event.name}
        events.append(_with_attributes(encoded, event.attributes))
    if events:
        out["events"] = events
    if span.dropped_events:
        out["droppedEventsCount"] = span.dropped_events
    links = []
    for link in span.links:
        encoded = {
            "traceId": format(link.context.trace_id, "032x"),
            "spanId": format(link.context.span_id, "016x"),
        }
        links.append(_with_attributes(encoded, link.attributes))
    if links:
        out["links"] = links
    if span.dropped_links:
        out["droppedLinksCount"] = span.dropped_links
    status: dict[str, Any] = {}
    if span.status.description:
        status["message"] = span.status.description
    code = _STATUS.get(span.status.status_code, 0)
    if code:
        status["code"] = code
    out["status"] = status
    return out


def spans_to_otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """The OTLP JSON ``ExportTraceServiceRequest`` of ``spans`` (grouped by resource
    and instrumentation scope, in first-seen order)."""
    by_resource: dict[int, tuple[Any, dict[tuple[Any, ...], tuple[Any, list[Any]]]]] = {}
    for span in spans:
        resource = span.resource
        scopes = by_resource.setdefault(id(resource), (resource, {}))[1]
        scope = span.instrumentation_scope
        key = (scope.name, scope.version, scope.schema_url) if scope is not None else (None,) * 3
        scopes.setdefault(key, (scope, []))[1].append(span_to_dict(span))
    resource_spans = []
    for resource, scopes in by_resource.values():
        scope_spans = []
        for scope, encoded in scopes.values():
            entry: dict[str, Any] = {"scope": {}}
            if scope is not None:
                if scope.name:
                    entry["scope"]["name"] = scope.name
                if scope.version:
                    entry["scope"]["version"] = scope.version
                _with_attributes(entry["scope"], scope.attributes)
                if scope.schema_url:
                    entry["schemaUrl"] = scope.schema_url
            entry["spans"] = encoded
            scope_spans.append(entry)
        item: dict[str, Any] = {
            "resource": _with_attributes({}, resource.attributes if resource else None)
        }
        if resource is not None and resource.schema_url:
            item["schemaUrl"] = resource.schema_url
        item["scopeSpans"] = scope_spans
        resource_spans.append(item)
    return {"resourceSpans": resource_spans}


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file in OTLP JSON, one request per line.

    Each export (a batch of the span processor) becomes one line holding an
    ``ExportTraceServiceRequest``, as the OpenTelemetry Collector's file exporter
    writes it. Read it back with ``rh-agents trace show FILE``, or load it into a
    Collector with its ``otlpjsonfile`` receiver.

    Args:
        path: the span file (appended to; its directory is created).
        max_bytes: rotate when the file reaches this size: it becomes ``<path>.1``
            (replacing the previous one) and a new file starts, so at most about twice
            ``max_bytes`` stay on disk (for long-running services). None: never rotate.

    Example:
        >>> exporter = JsonLinesSpanExporter(".rh_agents/spans.jsonl")  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int | None = None) -> None:
        if max_bytes is not None and max_bytes < 1:
            raise InvalidArgumentError(
                f"max_bytes must be a positive number of bytes or None, got {max_bytes!r}."
            )
        self.path = Path(path)
        self.previous = self.path.with_name(self.path.name + ".1")
        self.max_bytes = max_bytes
        self.rotations = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            line = json.dumps(spans_to_otlp_json(spans), separators=(",", ":")) + "\n"
            with self._lock:
                if self._file.closed:
                    return SpanExportResult.FAILURE
                if self.max_bytes is not None and self._file.tell() >= self.max_bytes:
                    self._rotate()
                self._file.write(line)
                self._file.flush()
                self.exported += len(spans)
            return SpanExportResult.SUCCESS
        except Exception:
            logger.exception("Writing spans to %s failed", self.path)
            return SpanExportResult.FAILURE

    def _rotate(self) -> None:
        self._file.close()
        os.replace(self.path, self.previous)
        self._file = open(self.path, "a", encoding="utf-8")
        self.rotations += 1

    def shutdown(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
