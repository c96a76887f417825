"""What the demo prints: progress while it runs, and the end-of-run summary.

Piped (or in a CI log), :class:`LinePrinter` writes whole plain lines, no escape codes:
documents done, retries, degraded groups and breaker changes (and every call with
``--printer realtime``). On a terminal, ``rh_agents.printing.ParallelEventPrinter``
draws live bars (retries, failures and group summaries are in the bars) and a
:class:`LinePrinter` beside it adds the document and breaker lines, printed above the
bars through the bar printer, so both views tell the same story.
"""

from __future__ import annotations

import importlib
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from rh_agents.core.circuit_breaker import CircuitBreaker, CircuitState
from rh_agents.core.events import EventKind, ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.types import EventType, ExecutionStatus
from rh_agents.demo.pipeline import DocumentReport

__all__ = [
    "Display",
    "LinePrinter",
    "RunStats",
    "collect_stats",
    "group_label",
    "make_display",
    "render_summary",
]

_TERMINAL = (
    ExecutionStatus.COMPLETED,
    ExecutionStatus.FAILED,
    ExecutionStatus.CANCELLED,
    ExecutionStatus.RECOVERED,
)


def _where(address: str) -> str:
    """A short label of an address: ``doc-3 chunk-1`` for a chunk call, ``doc-3`` ..."""
    parts = []
    for segment in address.split("/"):
        if "[" in segment and not segment.startswith("parallel:"):
            parts.append(segment[segment.index("[") + 1 : segment.rindex("]")])
    return " ".join(parts) or address


def group_label(name: str | None, address: str) -> str:
    """``chunks``, or ``doc-2 › chunks`` for a group inside a document (as the terminal
    printer names nested groups)."""
    where = _where(address)
    label = name or "group"
    return f"{where} › {label}" if where != address else label


def _group_of(address: str) -> str | None:
    """The name of the innermost parallel group in ``address`` (``chunks``, ...)."""
    for segment in reversed(address.split("/")):
        if segment.startswith("parallel:"):
            return segment[len("parallel:") :].split("[", 1)[0]
    return None


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {plural or word + 's'}"


_ERROR_NAME = re.compile(r"\b([A-Z]\w*(?:Error|Exception))\b")


def _short(text: str | None, width: int = 90) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


class LinePrinter:
    """Prints one plain line per notable event.

    Args:
        stream: where lines go.
        mode: "progress" (documents done, retries, failures, breaker changes) or
            "realtime" (every finished call as well).
        write: prints one line instead of writing to ``stream`` (the terminal printer's
            ``print_line``, so lines appear above its live bars); lines then carry no
            elapsed-time prefix (the writer adds its own timestamp).
        beside_bars: a progress-bar printer shows the rest, so print only documents and
            breaker changes.
    """

    def __init__(
        self,
        stream: TextIO,
        mode: str = "progress",
        *,
        write: Callable[[str], None] | None = None,
        beside_bars: bool = False,
    ) -> None:
        self.stream = stream
        self.realtime = mode == "realtime"
        self.write = write
        self.beside_bars = beside_bars
        self.started = time.monotonic()
        self.documents_total = 0
        self.documents_done = 0

    def _line(self, kind: str, text: str) -> None:
        if self.write is not None:
            self.write(f"{kind:<8} {text}")
            return
        elapsed = time.monotonic() - self.started
        print(f"{elapsed:7.2f}s  {kind:<8} {text}", file=self.stream, flush=True)

    def __call__(self, event: ExecutionEvent[Any]) -> None:
        status = event.execution_status
        if event.kind == EventKind.GROUP:
            self._group(event)
        elif status is ExecutionStatus.RETRYING:
            if not self.beside_bars:
                self._retry(event)
        elif event.kind == EventKind.EVENT and status in _TERMINAL:
            self._finished(event)

    def _retry(self, event: ExecutionEvent[Any]) -> None:
        where = _where(event.address)
        what = event.name
        if event.address.rsplit("/", 1)[-1].startswith("parallel:"):
            # The item never reached its actor (e.g. rejected by an open breaker).
            what = _group_of(event.address) or what
            where = f"{where} {event.metadata.get('item', '')}".strip()
        verb = "rejected" if event.error_type == "CircuitOpenError" else "failed"
        self._line(
            "retry",
            f"{what} {where}: attempt {event.retry_attempt} {verb} ({event.error_type}), "
            f"next in {event.retry_delay or 0:.2f}s",
        )

    def _group(self, event: ExecutionEvent[Any]) -> None:
        meta = event.metadata
        name = meta.get("group_name")
        status = event.execution_status
        if name == "documents" and status is ExecutionStatus.STARTED:
            self.documents_total = int(meta.get("total") or 0)
        if self.beside_bars:
            return  # the bar printer prints every group's summary
        label = group_label(name, event.address)
        if status is ExecutionStatus.FAILED:
            kinds = sorted(set(_ERROR_NAME.findall(event.message or "")))
            self._line(
                "degraded",
                f"{label}: {meta.get('failed', 0)} of {meta.get('total', 0)} failed"
                + (f" ({', '.join(kinds)})" if kinds else ""),
            )
        elif self.realtime and status is not ExecutionStatus.STARTED:
            self._line(
                "group",
                f"{label}: {meta.get('completed', 0)}/{meta.get('total', 0)} {status.value}",
            )

    def _finished(self, event: ExecutionEvent[Any]) -> None:
        status = event.execution_status
        took = f"{(event.execution_time or 0) * 1000:.0f} ms"
        verb = "replayed" if status is ExecutionStatus.RECOVERED else status.value
        if event.name == "document" and status is ExecutionStatus.CANCELLED:
            self._line("document", f"{_where(event.address)} cancelled after {took}")
        elif event.name == "document" and status is not ExecutionStatus.FAILED:
            self.documents_done += 1
            report = event.result
            detail = ""
            if isinstance(report, DocumentReport):
                detail = (
                    f"{report.chunks_summarized}/{report.chunks_summarized + report.chunks_failed}"
                    f" chunks, {_plural(len(report.citations), 'citation')}"
                )
                if report.searches_unavailable:
                    missing = _plural(report.searches_unavailable, "search", "searches")
                    detail += f", {missing} unavailable"
            total = max(self.documents_total, self.documents_done)
            self._line(
                "document",
                f"[{self.documents_done}/{total}] {_where(event.address)} {verb}"
                + ("" if status is ExecutionStatus.RECOVERED else f" in {took}")
                + (f": {detail}" if detail else ""),
            )
        elif self.beside_bars:
            return  # calls are in the bars (and, with realtime, in the bar printer's lines)
        elif self.realtime or status is ExecutionStatus.FAILED:
            if status is ExecutionStatus.FAILED and not self.realtime:
                # Failures of parallel items are followed by a retry or a degraded line.
                if event.is_parallel:
                    return
            text = f"{event.name} {_where(event.address)} {verb} in {took}"
            if status is ExecutionStatus.FAILED:
                text += f" ({event.error_type}: {_short(event.message, 70)})"
            self._line("call", text)

    def watch_breaker(self, breaker: CircuitBreaker) -> None:
        """Print the state changes of ``breaker`` (pass to ``registry.on_create``)."""
        breaker.add_listener(self._on_transition)

    def _on_transition(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        notes = {
            CircuitState.OPEN: "calls are rejected until the cooldown ends",
            CircuitState.HALF_OPEN: "cooldown over, the next call probes the API",
            CircuitState.CLOSED: "the probe succeeded, calls flow again",
        }
        self._line("breaker", f"{breaker.name}: {old.value} -> {new.value} ({notes[new]})")


class Display:
    """The progress output of one run: its bus subscribers and breaker lines.

    Attributes:
        lines: the plain-line printer (always there; it also prints breaker changes).
        bars: the terminal's live-bar printer, or None on a pipe.
    """

    def __init__(self, lines: LinePrinter, bars: Any = None) -> None:
        self.lines = lines
        self.bars = bars

    def attach(self, state: ExecutionState) -> None:
        """Subscribe to ``state``'s events and print its breakers' state changes."""
        if self.bars is not None:
            state.event_bus.subscribe(self.bars)
        state.event_bus.subscribe(self.lines)
        state.circuit_breakers.on_create(self.lines.watch_breaker)

    def close(self) -> None:
        """Stop the live bars (if any) so what follows prints below them."""
        close = getattr(self.bars, "close", None)
        if callable(close):
            close()


def make_display(stream: TextIO, mode: str, enabled: bool) -> Display | None:
    """The progress output for ``stream``, or None when progress is off.

    On a terminal, ``ParallelEventPrinter`` from :mod:`rh_agents.printing` draws
    the bars and the line printer writes through it; otherwise (and always when the
    output is piped) plain lines only.
    """
    if not enabled:
        return None
    if stream.isatty():
        try:
            handlers = importlib.import_module("rh_agents.printing")
        except ImportError:
            handlers = None
        printer_cls = getattr(handlers, "ParallelEventPrinter", None)
        if printer_cls is not None:
            bars = printer_cls(parallel_mode=mode, show_progress=True, stream=stream)
            lines = LinePrinter(stream, mode, write=bars.print_line, beside_bars=True)
            return Display(lines, bars)
    return Display(LinePrinter(stream, mode))


# --------------------------------------------------------------------------- summary


@dataclass
class RunStats:
    """What happened in one run (or one resumed session of it), from its history."""

    outcomes: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    durations: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    slowest_call: tuple[str, float] | None = None
    replayed: int = 0
    from_cache: int = 0
    breakers: list[tuple[str, int, int, str]] = field(default_factory=list)

    @property
    def total_retries(self) -> int:
        return sum(self.retries.values())

    @property
    def breaker_trips(self) -> int:
        return sum(trips for _, trips, _, _ in self.breakers)


def collect_stats(state: ExecutionState, start: int = 0) -> RunStats:
    """Statistics of the history entries of ``state`` from position ``start`` on.

    ``start`` is the length of the history when the session began, so a resumed run
    counts what it replayed and ran, not what the interrupted run recorded.
    """
    stats = RunStats()
    for event in state.history.get_event_list()[start:]:
        if event.kind != EventKind.EVENT:
            continue
        status = event.execution_status
        if status is ExecutionStatus.RETRYING:
            stats.retries[_group_of(event.address) or event.name or "?"] += 1
            continue
        if status not in _TERMINAL:
            continue
        stats.outcomes[status.value] += 1
        if status is ExecutionStatus.RECOVERED:
            stats.replayed += 1
            continue
        if event.from_cache:
            stats.from_cache += 1
        if event.execution_time is not None and status is not ExecutionStatus.CANCELLED:
            stats.durations[event.name or "?"].append(event.execution_time)
            leaf = event.event_type is not EventType.AGENT_CALL
            if leaf and (
                stats.slowest_call is None or event.execution_time > stats.slowest_call[1]
            ):
                stats.slowest_call = (event.address, event.execution_time)
    for breaker in state.circuit_breakers:
        stats.breakers.append(
            (breaker.name, breaker.trip_count, breaker.rejected_count, breaker.state.value)
        )
    return stats


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def render_summary(
    stats: RunStats,
    *,
    title: str,
    documents: str,
    history: str,
    destinations: str,
) -> str:
    """The end-of-run summary as plain text.

    ``calls`` counts invocations by how each attempt ended: a chunk whose first attempt
    failed and whose retry succeeded counts once as failed and once as completed (the
    documents line counts chunks and searches by their final outcome).
    """
    calls = [
        f"{stats.outcomes.get('completed', 0)} completed",
        f"{_plural(stats.outcomes.get('failed', 0), 'failed attempt')}",
        f"{stats.outcomes.get('cancelled', 0)} cancelled",
        f"{stats.outcomes.get('recovered', 0)} replayed",
    ]
    if stats.from_cache:
        calls.append(f"{stats.from_cache} from cache")
    retry_text = str(stats.total_retries)
    if stats.retries:
        retry_text += " (" + ", ".join(f"{c} in {n}" for n, c in stats.retries.most_common()) + ")"
    lines = [
        title,
        f"  documents  {documents}",
        f"  calls      {', '.join(calls)}",
        f"  retries    {retry_text}",
    ]
    if stats.breakers:
        for name, trips, rejected, state in stats.breakers:
            lines.append(
                f"  breaker    {name}: {_plural(trips, 'trip')}, "
                f"{_plural(rejected, 'call')} rejected, {state} now"
            )
    elif stats.replayed:
        lines.append("  breaker    not called: the work behind it was replayed from the history")
    else:
        lines.append("  breaker    no circuit breaker was used")
    lines.append(f"  replayed   {_plural(stats.replayed, 'item')} from the history")
    if stats.durations:
        lines.append("  slowest    actor            calls      mean       max")
        ranked = sorted(stats.durations.items(), key=lambda kv: max(kv[1]), reverse=True)
        for name, values in ranked[:5]:
            lines.append(
                f"             {name:<16} {len(values):>5} {_ms(statistics.fmean(values)):>9} "
                f"{_ms(max(values)):>9}"
            )
        if stats.slowest_call is not None:
            address, seconds = stats.slowest_call
            lines.append(f"             slowest tool/LLM call: {address} ({_ms(seconds)})")
    lines.append(f"  history    {history}")
    lines.extend(f"  {line}" for line in destinations.splitlines())
    return "\n".join(lines)
