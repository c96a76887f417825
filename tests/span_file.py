"""Reading OTLP JSON span files in tests: one flat dict per span."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rh_agents.cli import load_spans


def read_spans(*paths: Path) -> list[dict[str, Any]]:
    """Every span of the files, as ``name``, ``trace_id``, ``span_id``,
    ``parent_span_id``, ``start_time_unix_nano``, ``end_time_unix_nano``, ``status``
    (UNSET, OK, ERROR), ``status_description``, ``attributes``, ``events`` (names) and
    ``service_name``. Fails on a line that holds no readable spans."""
    spans: list[dict[str, Any]] = []
    for path in paths:
        records, bad = load_spans(path)
        assert not bad, f"unreadable lines {bad} in {path}"
        spans.extend(
            {
                "name": r.name,
                "trace_id": r.trace_id,
                "span_id": r.span_id,
                "parent_span_id": r.parent_span_id,
                "start_time_unix_nano": r.start,
                "end_time_unix_nano": r.end,
                "status": r.status,
                "status_description": r.description,
                "attributes": r.attributes,
                "events": r.events,
                "service_name": r.service,
            }
            for r in records
        )
    return spans
