"""The ``rh-agents`` command.

::

    rh-agents trace show .rh_agents/spans.jsonl           # every trace in the file
    rh-agents trace show spans.jsonl --last 1 --max-depth 3
    rh-agents demo --documents 3                          # same as python -m rh_agents.demo

``trace show`` reads an OTLP JSON span file, one ``ExportTraceServiceRequest`` per line
(as written by ``rh_agents.telemetry.setup``, ``JsonLinesSpanExporter`` or the
OpenTelemetry Collector's file exporter; span files of earlier rh_agents versions, one
span per line, are read too) and prints one indented tree per trace: each span with its
duration, outcome and, for failed spans, the error type and description.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

__all__ = ["SpanRecord", "load_spans", "main", "render_traces"]

PROG = "rh-agents"
_NAME_WIDTH = 64


@dataclass
class SpanRecord:
    """One span of a span file (the fields ``trace show`` uses)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    start: int
    end: int
    status: str
    description: str | None
    attributes: dict[str, Any]
    events: list[str]
    service: str | None
    children: list[SpanRecord] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return max(0, self.end - self.start) / 1e6

    @classmethod
    def from_otlp(cls, data: Any, service: str | None) -> SpanRecord | None:
        """The span of an OTLP JSON ``Span`` message, or None if it is not one."""
        if not isinstance(data, dict):
            return None
        span_id = data.get("spanId")
        trace_id = data.get("traceId")
        if not isinstance(span_id, str) or not isinstance(trace_id, str) or not span_id:
            return None
        start = _nanos(data.get("startTimeUnixNano"))
        end = _nanos(data.get("endTimeUnixNano"), start)
        status = data.get("status")
        status = status if isinstance(status, dict) else {}
        code = status.get("code", 0)
        events = data.get("events")
        parent = data.get("parentSpanId")
        return cls(
            name=str(data.get("name") or "(unnamed span)"),
            trace_id=trace_id.lower(),
            span_id=span_id.lower(),
            parent_span_id=parent.lower() if isinstance(parent, str) and parent else None,
            start=start,
            end=end,
            status=_STATUS_NAMES.get(code, str(code)) if not isinstance(code, str) else code,
            description=status.get("message") or None,
            attributes=_otlp_attributes(data.get("attributes")),
            events=[str(e.get("name")) for e in events if isinstance(e, dict) and e.get("name")]
            if isinstance(events, list)
            else [],
            service=service,
        )

    @classmethod
    def from_json(cls, data: Any) -> SpanRecord | None:
        """The span in ``data`` (one line of the span files of earlier versions, one span
        per line), or None if it is not a span."""
        if not isinstance(data, dict):
            return None
        span_id = data.get("span_id")
        trace_id = data.get("trace_id")
        if not isinstance(span_id, str) or not isinstance(trace_id, str):
            return None
        start = data.get("start_time_unix_nano")
        end = data.get("end_time_unix_nano")
        start = start if isinstance(start, int) else 0
        if not isinstance(end, int):
            seconds = data.get("duration_s")
            end = start + int(seconds * 1e9) if isinstance(seconds, int | float) else start
        attributes = data.get("attributes")
        events = data.get("events")
        parent = data.get("parent_span_id")
        return cls(
            name=str(data.get("name") or "(unnamed span)"),
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=parent if isinstance(parent, str) and parent else None,
            start=start,
            end=end,
            status=str(data.get("status") or "UNSET"),
            description=data.get("status_description") or None,
            attributes=attributes if isinstance(attributes, dict) else {},
            events=[str(e.get("name")) for e in events if isinstance(e, dict) and e.get("name")]
            if isinstance(events, list)
            else [],
            service=data.get("service_name") if isinstance(data.get("service_name"), str) else None,
        )


_STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR", "STATUS_CODE_ERROR": "ERROR"}


def _nanos(value: Any, default: int = 0) -> int:
    """An OTLP JSON 64-bit timestamp (a decimal string, or a number)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return default


def _otlp_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return None
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return value["boolValue"]
    if "intValue" in value:
        return _nanos(value["intValue"])
    if "doubleValue" in value:
        return value["doubleValue"]
    if "arrayValue" in value:
        items = value["arrayValue"].get("values") if isinstance(value["arrayValue"], dict) else []
        return [_otlp_value(v) for v in items or []]
    if "kvlistValue" in value:
        entries = value["kvlistValue"]
        return _otlp_attributes(entries.get("values") if isinstance(entries, dict) else None)
    return None


def _otlp_attributes(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    return {
        str(kv["key"]): _otlp_value(kv.get("value"))
        for kv in items
        if isinstance(kv, dict) and "key" in kv
    }


def _otlp_spans(request: dict[str, Any]) -> list[SpanRecord] | None:
    """The spans of one ``ExportTraceServiceRequest`` line; None if it is malformed."""
    resource_spans = request.get("resourceSpans")
    if not isinstance(resource_spans, list):
        return None
    spans: list[SpanRecord] = []
    for entry in resource_spans:
        if not isinstance(entry, dict):
            return None
        resource = entry.get("resource")
        attributes = _otlp_attributes(
            resource.get("attributes") if isinstance(resource, dict) else None
        )
        service = attributes.get("service.name")
        service = service if isinstance(service, str) else None
        for scope in entry.get("scopeSpans") or []:
            if not isinstance(scope, dict):
                return None
            for data in scope.get("spans") or []:
                record = SpanRecord.from_otlp(data, service)
                if record is None:
                    return None
                spans.append(record)
    return spans


class SpanFileError(Exception):
    """The span file cannot be read."""


def load_spans(path: Path) -> tuple[list[SpanRecord], list[int]]:
    """The spans of ``path`` and the numbers of the lines that hold no readable spans.

    Raises:
        SpanFileError: the file does not exist or cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise SpanFileError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise SpanFileError(f"{path} is a directory, not a span file") from None
    except OSError as exc:
        raise SpanFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    spans: list[SpanRecord] = []
    bad: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            bad.append(number)
            continue
        found = _otlp_spans(data) if isinstance(data, dict) and "resourceSpans" in data else None
        if found is not None:
            spans.extend(found)
            continue
        record = SpanRecord.from_json(data)
        if record is None:
            bad.append(number)
        else:
            spans.append(record)
    return spans, bad


def _label(span: SpanRecord) -> str:
    """``[doc-3]`` for a span whose address ends in ``document[doc-3]``."""
    address = span.attributes.get("rh_agents.event.address")
    if not isinstance(address, str) or not address:
        return ""
    last = address.rsplit("/", 1)[-1]
    if "[" in last and last.endswith("]"):
        return " " + last[last.index("[") :]
    if "#" in last:
        return " #" + last.rsplit("#", 1)[-1]
    return ""


def _details(span: SpanRecord) -> str:
    attrs = span.attributes
    parts: list[str] = []
    outcome = attrs.get("rh_agents.outcome")
    if outcome:
        parts.append(str(outcome))
    if attrs.get("rh_agents.replayed") and outcome != "replayed":
        parts.append("replayed")
    if attrs.get("rh_agents.cached") and outcome != "cached":
        parts.append("cached")
    if span.status == "ERROR":
        error_type = attrs.get("error.type")
        error = "ERROR"
        if error_type:
            error += f" {error_type}"
        if span.description:
            description = span.description.splitlines()[0]
            if len(description) > 90:
                description = description[:87] + "..."
            error += f": {description}"
        parts.append(error)
    # "exception" events repeat the error shown above.
    counts = Counter(e for e in span.events if e != "exception")
    if counts:
        parts.append(
            "events: " + ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counts.items())
        )
    return "  ".join(parts)


def _descendants(span: SpanRecord) -> int:
    total = 0
    stack = list(span.children)
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        if node.span_id in seen:
            continue
        seen.add(node.span_id)
        total += 1
        stack.extend(node.children)
    return total


def _ms(value: float) -> str:
    return f"{value:,.1f} ms" if value < 10_000 else f"{value / 1000:,.2f} s"


def render_traces(
    spans: Sequence[SpanRecord],
    *,
    max_depth: int | None = None,
    trace_prefix: str | None = None,
    last: int | None = None,
) -> tuple[str, int]:
    """The traces of ``spans`` as indented trees, and how many traces were rendered."""
    by_trace: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    traces = sorted(by_trace.items(), key=lambda kv: min(s.start for s in kv[1]))
    if trace_prefix:
        wanted = trace_prefix.lower()
        traces = [(tid, group) for tid, group in traces if tid.lower().startswith(wanted)]
    if last is not None:
        traces = traces[-last:]
    blocks = [_render_trace(tid, group, max_depth) for tid, group in traces]
    return "\n\n".join(blocks), len(traces)


def _render_trace(trace_id: str, spans: list[SpanRecord], max_depth: int | None) -> str:
    by_id: dict[str, SpanRecord] = {}
    for span in spans:
        span.children = []
        by_id.setdefault(span.span_id, span)
    roots: list[SpanRecord] = []
    orphans: set[str] = set()
    cyclic: set[str] = set()
    for span in by_id.values():
        parent = by_id.get(span.parent_span_id) if span.parent_span_id else None
        if parent is None or parent is span:
            roots.append(span)
            if span.parent_span_id:
                orphans.add(span.span_id)
        else:
            parent.children.append(span)
    for span in by_id.values():
        span.children.sort(key=lambda s: (s.start, s.name))
    roots.sort(key=lambda s: (s.start, s.name))

    start = min(s.start for s in spans)
    end = max(s.end for s in spans)
    errors = sum(1 for s in spans if s.status == "ERROR")
    service = next((s.service for s in spans if s.service), None)
    when = datetime.fromtimestamp(start / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    header = (
        f"trace {trace_id}"
        + (f"  {service}" if service else "")
        + f"  {when}  {len(by_id)} spans, {_ms((end - start) / 1e6)}"
        + (f", {errors} with errors" if errors else "")
    )
    rows: list[tuple[str, str, str]] = []
    seen: set[str] = set()

    def walk(span: SpanRecord, depth: int) -> None:
        if span.span_id in seen:  # a malformed file with a parent cycle
            return
        seen.add(span.span_id)
        title = "  " * (depth + 1) + span.name + _label(span)
        details = _details(span)
        if span.span_id in orphans:
            details = (details + "  " if details else "") + (
                f"(parent span {span.parent_span_id} is not in the file)"
            )
        elif span.span_id in cyclic:
            details = (details + "  " if details else "") + (
                f"(parent span {span.parent_span_id} is its own ancestor: broken file)"
            )
        if max_depth is not None and depth >= max_depth and span.children:
            hidden = _descendants(span)
            details = (details + "  " if details else "") + (
                f"(+{hidden} span{'s' if hidden != 1 else ''} below --max-depth {max_depth})"
            )
            rows.append((title, _ms(span.duration_ms), details))
            seen.update(_all_ids(span))
            return
        rows.append((title, _ms(span.duration_ms), details))
        for child in span.children:
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    # Spans whose parents form a cycle are reachable from no root; show them anyway.
    for span in sorted(by_id.values(), key=lambda s: (s.start, s.name)):
        if span.span_id not in seen:
            cyclic.add(span.span_id)
            walk(span, 0)
    width = min(_NAME_WIDTH, max(len(title) for title, _, _ in rows))
    lines = [header]
    for title, duration, details in rows:
        lines.append(f"{title:<{width}}  {duration:>11}  {details}".rstrip())
    return "\n".join(lines)


def _all_ids(span: SpanRecord) -> set[str]:
    ids: set[str] = set()
    stack = [span]
    while stack:
        node = stack.pop()
        if node.span_id in ids:
            continue
        ids.add(node.span_id)
        stack.extend(node.children)
    return ids


# ------------------------------------------------------------------------- command


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``rh-agents`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tools for rh_agents: read span files, run the demo.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    trace = commands.add_parser(
        "trace", help="read span files", description="Read OTLP JSON span files."
    )
    trace.set_defaults(help_text=trace.format_help)
    trace_commands = trace.add_subparsers(dest="trace_command", metavar="COMMAND")
    show = trace_commands.add_parser(
        "show",
        help="print the traces of a span file as trees",
        description=(
            "Print each trace of an OTLP JSON span file as an indented tree (children "
            "under their parent span, by start time) with durations, outcomes and errors."
        ),
        epilog=(
            "Exit status: 0 when traces were printed, 1 when the file holds no spans or "
            "no trace matches --trace, 2 when the file cannot be read."
        ),
    )
    show.add_argument("file", type=Path, help="the span file, e.g. .rh_agents/spans.jsonl")
    show.add_argument(
        "--max-depth",
        type=_non_negative_int,
        metavar="N",
        help="show spans at most N levels below the roots (0: roots only)",
    )
    show.add_argument("--trace", metavar="ID", help="only traces whose id starts with ID")
    show.add_argument(
        "--last", type=_positive_int, metavar="N", help="only the N most recent traces"
    )
    commands.add_parser(
        "demo",
        help="run the demo (same options as python -m rh_agents.demo)",
        add_help=False,
    )
    return parser


def _trace_show(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path: Path = args.file
    try:
        spans, bad = load_spans(path)
    except SpanFileError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return 2
    if bad:
        lines = ", ".join(str(n) for n in bad[:5]) + (", ..." if len(bad) > 5 else "")
        print(
            f"warning: skipped {len(bad)} line(s) of {path} that are not spans (line {lines}); "
            "a line may be cut short while a program is still writing the file.",
            file=err,
        )
    if not spans:
        print(
            f"No spans in {path}. Spans are written in batches while a program runs and "
            "flushed when it exits; run `python -m rh_agents.demo` to record some.",
            file=err,
        )
        return 1
    text, count = render_traces(
        spans, max_depth=args.max_depth, trace_prefix=args.trace, last=args.last
    )
    if not count:
        ids = sorted({s.trace_id for s in spans})
        print(
            f"No trace in {path} has an id starting with {args.trace!r}; it holds "
            f"{len(ids)} trace(s): "
            + ", ".join(i[:12] for i in ids[:5])
            + (", ..." if len(ids) > 5 else ""),
            file=err,
        )
        return 1
    traces = len({s.trace_id for s in spans})
    print(text, file=out)
    print(
        f"\n{count} of {traces} trace(s), {len(spans)} span(s) in {path}",
        file=out,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rh-agents`` console script; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["demo"]:
        from rh_agents.demo import main as demo_main

        return demo_main(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command == "trace" and args.trace_command == "show":
        try:
            return _trace_show(args, sys.stdout, sys.stderr)
        except BrokenPipeError:  # e.g. piped into `head`
            return 0
    help_text = getattr(args, "help_text", None) or parser.format_help
    print(help_text(), file=sys.stderr, end="")
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
