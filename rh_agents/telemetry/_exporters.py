"""A span exporter that writes one JSON object per line (the embedded default)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from rh_agents.core.errors import InvalidArgumentError

__all__ = ["JsonLinesSpanExporter", "span_to_dict"]

logger = logging.getLogger("rh_agents.telemetry")


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """The JSON form of a finished span (ids as lowercase hex)."""
    ctx = span.context
    parent = span.parent
    resource = span.resource.attributes if span.resource is not None else {}
    return {
        "name": span.name,
        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
        "span_id": format(ctx.span_id, "016x") if ctx else None,
        "parent_span_id": format(parent.span_id, "016x") if parent else None,
        "kind": span.kind.name if span.kind else None,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "duration_s": ((span.end_time or 0) - (span.start_time or 0)) / 1e9,
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "timestamp": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
        "service_name": resource.get("service.name"),
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line.

    Read it back with ``rh-agents trace show FILE``.

    Args:
        path: the span file (appended to; its directory is created).
        max_bytes: rotate when the file reaches this size: it becomes ``<path>.1``
            (replacing the previous one) and a new file starts, so at most about twice
            ``max_bytes`` stay on disk (for long-running services). None: never rotate.
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
        try:
            lines = "".join(json.dumps(span_to_dict(s), default=str) + "\n" for s in spans)
            with self._lock:
                if self._file.closed:
                    return SpanExportResult.FAILURE
                if self.max_bytes is not None and self._file.tell() >= self.max_bytes:
                    self._rotate()
                self._file.write(lines)
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
