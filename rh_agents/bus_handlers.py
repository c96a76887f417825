"""Event-bus subscribers that show a run in a terminal or a log.

:class:`EventPrinter` prints one line per event, indented by the event's depth in the call
tree. :class:`ParallelEventPrinter` adds parallel-group awareness: in ``REALTIME`` mode
item events are printed as they arrive, labelled with their group and position; in
``PROGRESS`` mode they are folded into one live progress bar per running group (drawn with
``rich`` on a terminal, plain lines at 25% steps anywhere else).

Both are plain synchronous callables, so they work as bus subscribers, with or without a
running event loop::

    printer = ParallelEventPrinter(parallel_mode="progress")
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus)
    ...
    printer.print_summary()

Output rules:

* Colour only when the stream is a terminal and ``NO_COLOR`` is unset (or when forced
  with ``color=True``); on a pipe or in a file there are no escape codes at all, and
  escape characters inside event messages are replaced.
* On a terminal (or with ``width``), event lines are cut to the width with an ellipsis;
  group summaries, the run summary and :meth:`~EventPrinter.print_line` lines wrap onto
  indented continuation lines instead, so no count or time is lost. Live bars drop their
  least useful fields to fit (see :class:`ParallelEventPrinter`).
* A printer never raises into the bus: an internal error is logged once (then at debug
  level) and counted in ``internal_errors``; events of unknown shape (dicts, objects with
  missing fields, anything else) are printed as well as their fields allow.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import IO, Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.parallel import GroupStatus, ParallelDisplayMode, ParallelGroupTracker

__all__ = ["EventPrinter", "ParallelEventPrinter"]

logger = logging.getLogger("rh_agents.printer")

# --------------------------------------------------------------------------- helpers

# status value -> (symbol, word, rich style)
_STATUS_LOOK: dict[str, tuple[str, str, str]] = {
    "started": ("▶", "started", "cyan"),
    "completed": ("✔", "completed", "green"),
    "failed": ("✖", "failed", "bold red"),
    "recovered": ("↺", "recovered", "blue"),
    "retrying": ("↻", "retrying", "yellow"),
    "cancelled": ("⊘", "cancelled", "magenta"),
    "cancelling": ("⊘", "cancelling", "magenta"),
    "interrupted": ("‖", "interrupted", "magenta"),
    "awaiting": ("…", "awaiting", "cyan"),
    "human_intervention": ("!", "needs human", "yellow"),
}
_UNKNOWN_LOOK = ("?", "unknown", "dim")
_DIVERGENCE_LOOK = ("⚠", "diverged", "bold yellow")
_STATUS_ORDER = list(_STATUS_LOOK)

# Control characters (C0 except tab, DEL, C1) never reach the output: a message that
# carries an escape sequence must not put escape codes on a pipe.
_CONTROL = {c: "?" for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROL[ord("\t")] = " "

_FULL = "█"
_EMPTY = "░"
_CANCELLED = "▒"
# Where the words of a printed line start: after a timestamp, the indentation and a
# one-character status symbol.
_LEAD = re.compile(r"(?:\d\d:\d\d:\d\d\.\d{3} )? *(?:\S )?")


def _clean(value: Any, limit: int = 500) -> str:
    """One printable line: the first line of ``value``, control characters replaced."""
    text = value if isinstance(value, str) else str(value)
    text = text.strip()
    first, sep, _rest = text.partition("\n")
    text = first.rstrip("\r") + (" …" if sep else "")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.translate(_CONTROL)


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` for mappings, ``obj.name`` otherwise; None when absent or broken."""
    try:
        if isinstance(obj, Mapping):
            return obj.get(name)
        return getattr(obj, name, None)
    except Exception:
        return None


def _text_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Enum):
        value = value.value
    return value if isinstance(value, str) else str(value)


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    number = _as_float(value)
    return int(number) if number is not None and number.is_integer() else None


def _format_duration(seconds: float) -> str:
    """``0.4ms``, ``12.3ms``, ``1.23s``, ``2m05s``, ``1h02m``."""
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 60.0:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _short_duration(seconds: float) -> str:
    """Compact form for live bars: ``36ms``, ``1.2s``, ``2m05s``."""
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60.0:
        return f"{seconds:.1f}s"
    return _format_duration(seconds)


def _format_timestamp(timestamp: float | None) -> str:
    ts = time.time() if timestamp is None else timestamp
    try:
        local = time.localtime(ts)
    except (OverflowError, OSError, ValueError):
        local = time.localtime()
        ts = time.time()
    millis = int((ts % 1) * 1000)
    return time.strftime("%H:%M:%S", local) + f".{millis:03d}"


def _bar(fraction: float, width: int, cancelled: float = 0.0) -> str:
    """``width`` blocks: full for the ``fraction`` done, then shaded for the
    ``cancelled`` fraction (items that never ran to an end), light for the rest."""
    width = max(0, width)
    fraction = min(1.0, max(0.0, fraction))
    filled = width if fraction >= 1.0 else min(width - 1, int(width * fraction))
    filled = max(0, filled)
    cancelled = min(1.0 - fraction, max(0.0, cancelled))
    shaded = width - filled if fraction + cancelled >= 1.0 else int(width * cancelled)
    shaded = max(0, min(width - filled, shaded))
    return _FULL * filled + _CANCELLED * shaded + _EMPTY * (width - filled - shaded)


def _percent_text(fraction: float) -> str:
    fraction = min(1.0, max(0.0, fraction))
    # floor, so that 100% is shown only when everything finished
    return f"{math.floor(fraction * 100 + 1e-9)}%"


def _event_time(ev: _Event) -> float | None:
    """When the status change happened: events carry their start time, so a finished
    event's time is its start plus its execution time."""
    if ev.timestamp is not None and ev.execution_time is not None and ev.status != "started":
        return ev.timestamp + ev.execution_time
    return ev.timestamp


def _env_no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


@dataclass(slots=True)
class _Event:
    """A normalized view of whatever was published (ExecutionEvent, dict, anything)."""

    raw: Any
    known: bool
    kind: str
    status: str
    name: str | None
    event_type: str | None
    address: str
    timestamp: float | None
    execution_time: float | None
    message: str | None
    detail: str | None
    error_type: str | None
    from_cache: bool
    is_replayed: bool
    group_id: str | None
    parallel_index: int | None
    is_parallel: bool
    retry_attempt: int
    retry_delay: float | None
    original_error: str | None
    metadata: dict[str, Any]

    @property
    def depth(self) -> int:
        return self.address.count("/") if self.address else 0


def _normalize(event: Any) -> _Event:
    get = _field
    status = _text_value(get(event, "execution_status"))
    if status is None:
        status = _text_value(get(event, "status"))
    kind = _text_value(get(event, "kind"))
    address = _text_value(get(event, "address"))
    name = _text_value(get(event, "actor_name"))
    if name is None:
        actor = get(event, "actor")
        name = actor if isinstance(actor, str) else _text_value(get(actor, "name"))
    if name is None:
        candidate = get(event, "name")
        name = candidate if isinstance(candidate, str) else None
    metadata = get(event, "metadata")
    known = any(v is not None for v in (status, kind, address, name))
    group_id = _text_value(get(event, "group_id"))
    return _Event(
        raw=event,
        known=known,
        kind=(kind or "event").lower(),
        status=(status or "unknown").lower(),
        name=name,
        event_type=_text_value(get(event, "event_type")),
        address=address or "",
        timestamp=_as_float(get(event, "timestamp")),
        execution_time=_as_float(get(event, "execution_time")),
        message=_text_value(get(event, "message")),
        detail=_text_value(get(event, "detail")),
        error_type=_text_value(get(event, "error_type")),
        from_cache=get(event, "from_cache") is True,
        is_replayed=get(event, "is_replayed") is True,
        group_id=group_id or None,
        parallel_index=_as_int(get(event, "parallel_index")),
        is_parallel=get(event, "is_parallel") is True,
        retry_attempt=_as_int(get(event, "retry_attempt")) or 0,
        retry_delay=_as_float(get(event, "retry_delay")),
        original_error=_text_value(get(event, "original_error")),
        metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
    )


# ----------------------------------------------------------------------- EventPrinter


class EventPrinter:
    """Print each execution event as one line, indented by its depth in the call tree.

    Subscribe it to an :class:`~rh_agents.core.execution.EventBus` (it is a callable)::

        printer = EventPrinter()
        bus.subscribe(printer)

    Each line shows an optional timestamp, the status (symbol and word), the actor name
    and type, cache / replay / retry markers, the execution time on terminal statuses,
    errors (type and message) and optionally the address.

    Args:
        show_timestamp: start each line with the event's wall-clock time.
        show_address: end each line with the event's address.
        stream: where to write (default: ``sys.stdout`` at the time of printing).
        color: None (default) colours only on a terminal with ``NO_COLOR`` unset; True
            forces colour (even on a pipe); False never colours.
        width: cut lines to this many columns; by default the terminal's width on a
            terminal and no limit elsewhere.

    Attributes:
        status_counts: events seen by status value (``"completed"`` ...); parallel-group
            lifecycle events are counted in ``group_counts`` instead, divergence warnings
            under ``"divergence"``, unrecognized objects under ``"unknown"``.
        group_counts: parallel-group lifecycle events by status.
        internal_errors: errors the printer caught in itself (never raised to the bus).
    """

    def __init__(
        self,
        show_timestamp: bool = True,
        show_address: bool = True,
        stream: IO[str] | None = None,
        color: bool | None = None,
        width: int | None = None,
    ) -> None:
        if width is not None and (isinstance(width, bool) or not isinstance(width, int)):
            raise InvalidArgumentError(f"width must be a positive integer or None, got {width!r}.")
        if width is not None and width < 10:
            raise InvalidArgumentError(f"width must be at least 10 columns, got {width}.")
        if color is not None and not isinstance(color, bool):
            raise InvalidArgumentError(f"color must be True, False or None, got {color!r}.")
        self.show_timestamp = show_timestamp
        self.show_address = show_address
        self.color = color
        self.width = width
        self._stream = stream
        self.status_counts: Counter[str] = Counter()
        self.group_counts: Counter[str] = Counter()
        self.internal_errors = 0
        self._lock = threading.RLock()
        self._console: Console | None = None
        self._console_stream: Any = None
        # While a live display redirects sys.stdout, keep writing to the real stream.
        self._pinned: IO[str] | None = None

    # ------------------------------------------------------------------ public API

    @property
    def stream(self) -> IO[str]:
        """The stream written to (``sys.stdout`` unless one was given)."""
        if self._pinned is not None:
            return self._pinned
        return self._stream if self._stream is not None else sys.stdout

    @property
    def is_terminal(self) -> bool:
        """Whether the stream is a terminal (TTY)."""
        return _is_tty(self.stream)

    @property
    def use_color(self) -> bool:
        """Whether output is coloured (see the ``color`` argument)."""
        if self.color is not None:
            return self.color
        return self.is_terminal and not _env_no_color() and os.environ.get("TERM") != "dumb"

    def __call__(self, event: Any) -> None:
        """Same as :meth:`print_event` (so the printer itself can be subscribed)."""
        self.print_event(event)

    def print_event(self, event: Any) -> None:
        """Print one event. Never raises; works without an event loop."""
        try:
            ev = _normalize(event)
            with self._lock:
                self._count(ev)
                self._handle(ev)
        except Exception:
            self._internal_error("printing an event")

    def format_event(self, event: Any) -> str:
        """The line :class:`EventPrinter` would print for ``event``, without colour."""
        return self._event_text(_normalize(event)).plain

    def print_summary(self) -> None:
        """Print the counts of events seen so far, by status."""
        try:
            with self._lock:
                for line in self._summary_lines():
                    self._emit(line, wrap=True)
        except Exception:
            self._internal_error("printing the summary")

    def print_line(self, text: str | Text, *, wrap: bool = True) -> None:
        """Print a line of your own among the event lines (on a terminal, above the live
        progress bars of a :class:`ParallelEventPrinter`, which stay intact).

        It starts with the current time when the printer shows timestamps. A line wider
        than the terminal wraps onto indented continuation lines (or, with
        ``wrap=False``, is cut with an ellipsis). Never raises.

        Example::

            printer.print_line("breaker search-api: closed -> open")
        """
        try:
            line = Text()
            if self.show_timestamp:
                line.append(_format_timestamp(None) + " ", style="dim")
            line.append_text(text if isinstance(text, Text) else Text(_clean(text, 2000)))
            with self._lock:
                self._emit(line, wrap=wrap)
        except Exception:
            self._internal_error("printing a line")

    def close(self) -> None:
        """Flush the stream (subclasses also stop live displays)."""
        try:
            self._flush()
        except Exception:
            self._internal_error("closing")

    def __enter__(self) -> EventPrinter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --------------------------------------------------------------- internals

    def _internal_error(self, what: str) -> None:
        self.internal_errors += 1
        if self.internal_errors == 1:
            logger.exception(
                "%s failed while %s; the error is ignored and the run continues "
                "(further printer errors are logged at debug level).",
                type(self).__name__,
                what,
            )
        else:
            logger.debug("%s failed again while %s", type(self).__name__, what, exc_info=True)

    def _count(self, ev: _Event) -> None:
        if not ev.known:
            self.status_counts["unknown"] += 1
        elif ev.kind == "group":
            self.group_counts[ev.status] += 1
        elif ev.kind == "divergence":
            self.status_counts["divergence"] += 1
        else:
            self.status_counts[ev.status] += 1

    def _handle(self, ev: _Event) -> None:
        self._emit(self._event_text(ev))

    # -- formatting

    def _look(self, ev: _Event) -> tuple[str, str, str]:
        if ev.kind == "divergence":
            return _DIVERGENCE_LOOK
        look = _STATUS_LOOK.get(ev.status)
        if look is None:
            return (_UNKNOWN_LOOK[0], _clean(ev.status, 30), _UNKNOWN_LOOK[2])
        return look

    def _event_text(self, ev: _Event, prefix: str | None = None, indent: int | None = None) -> Text:
        text = Text()
        if self.show_timestamp:
            text.append(_format_timestamp(_event_time(ev)) + " ", style="dim")
        text.append("  " * (ev.depth if indent is None else indent))
        if prefix:
            text.append(prefix + " ", style="bold blue")
        if not ev.known:
            text.append("? unrecognized event: ", style="dim")
            text.append(_clean(repr(ev.raw), 200))
            return text
        symbol, word, style = self._look(ev)
        text.append(f"{symbol} {word:<9}", style=style)
        text.append(" ")
        if ev.kind == "group":
            self._append_group_body(text, ev)
        else:
            self._append_event_body(text, ev)
        if self.show_address and ev.address:
            text.append("  @ " + _clean(ev.address), style="dim")
        return text

    def _append_event_body(self, text: Text, ev: _Event) -> None:
        text.append(_clean(ev.name) if ev.name else "<unnamed>", style="bold")
        if ev.event_type:
            text.append(f" ({_clean(ev.event_type, 40)})", style="dim")
        if ev.from_cache:
            text.append(" [cached]", style="blue")
        if ev.is_replayed:
            text.append(" [replayed]", style="blue")
        if ev.status == "retrying":
            attempt = ev.retry_attempt or None
            parts = [f"attempt {attempt} failed" if attempt else "attempt failed"]
            if ev.retry_delay is not None:
                parts.append(f"retry in {_format_duration(ev.retry_delay)}")
            text.append(f" [{', '.join(parts)}]", style="yellow")
        elif ev.retry_attempt > 0:
            text.append(f" [retry {ev.retry_attempt}]", style="yellow")
        if ev.execution_time is not None and ev.status != "started":
            text.append(f" {_format_duration(ev.execution_time)}", style="dim")
        self._append_error(text, ev)

    def _append_error(self, text: Text, ev: _Event) -> None:
        if ev.status == "retrying":
            message = ev.original_error or ev.message
        else:
            message = ev.message or (ev.detail if ev.status == "failed" else None)
        error_type = ev.error_type if ev.status in ("failed", "retrying") else None
        if not message and not error_type:
            return
        if error_type and message:
            body = f"{_clean(error_type, 80)}: {_clean(message)}"
        else:
            body = _clean(error_type or message or "")
        if ev.status == "failed":
            style = "red"
        elif ev.status == "retrying" or ev.kind != "event":
            style = "yellow"
        else:
            style = ""
        text.append(" — " + body, style=style)

    def _append_group_body(self, text: Text, ev: _Event) -> None:
        meta = ev.metadata
        name = meta.get("group_name") or ev.name or ev.group_id or "group"
        text.append(f"parallel group '{_clean(name, 80)}'", style="bold")
        total = _as_int(meta.get("total"))
        if ev.status == "started":
            details = []
            if total is not None:
                details.append(f"{total} items")
            workers = _as_int(meta.get("max_workers"))
            if workers is not None:
                details.append(f"max {workers} workers")
            if details:
                text.append(" (" + ", ".join(details) + ")", style="dim")
            return
        counts = [
            f"{_as_int(meta.get(key)) or 0} {key}"
            for key in ("completed", "failed", "cancelled")
            if meta.get(key) is not None
        ]
        if counts:
            text.append(" " + ", ".join(counts) + (f" of {total}" if total is not None else ""))
        if ev.execution_time is not None:
            text.append(f" in {_format_duration(ev.execution_time)}", style="dim")
        if meta.get("timed_out"):
            text.append(" [timed out]", style="red")
        if ev.message:
            text.append(" — " + _clean(ev.message), style="red")

    def _summary_lines(self) -> list[Text]:
        counts = self.status_counts
        total = sum(counts.values())
        line = Text(f"Summary: {total} event{'s' if total != 1 else ''}", style="bold")
        parts = [_status_count(status, n) for status, n in _ordered(counts)]
        if parts:
            line.append(" — " + ", ".join(parts))
        lines = [line]
        if self.group_counts:
            started = self.group_counts.get("started", 0)
            ended = [_status_count(s, n) for s, n in _ordered(self.group_counts) if s != "started"]
            groups = Text(f"Parallel groups: {started} started")
            if ended:
                groups.append(", " + ", ".join(ended))
            lines.append(groups)
        return lines

    # -- output

    def _terminal_width(self) -> int | None:
        """Columns to cut lines at (None: no limit)."""
        if self.width is not None:
            return self.width
        stream = self.stream
        if not _is_tty(stream):
            return None
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        if columns <= 0:
            columns = _as_int(os.environ.get("COLUMNS")) or 80
        return max(10, columns)

    def _get_console(self) -> Console | None:
        """A rich console for terminals / forced colour; None for plain writes."""
        stream = self.stream
        tty = _is_tty(stream) and os.environ.get("TERM") != "dumb"
        color = self.use_color
        if not tty and not color:
            return None
        if self._console is None or self._console_stream is not stream:
            self._console = Console(
                file=stream,
                force_terminal=True,
                color_system="auto" if color else None,
                no_color=not color,
                highlight=False,
                markup=False,
                emoji=False,
                soft_wrap=False,
                legacy_windows=False,
                width=self._terminal_width() or 80,
            )
            self._console_stream = stream
        return self._console

    def _emit(self, text: Text, *, wrap: bool = False) -> None:
        """Write one line: cut to the terminal width, or with ``wrap`` folded onto
        continuation lines indented under the line's text."""
        width = self._terminal_width()
        if width is None or text.cell_len <= width:
            lines = [text]
        elif wrap:
            lines = _wrap(text, width)
        else:
            text.truncate(width, overflow="ellipsis")
            lines = [text]
        console = self._get_console()
        for line in lines:
            if console is not None:
                if width is not None:
                    console.width = width
                line.no_wrap = True
                line.overflow = "ellipsis"
                console.print(line, soft_wrap=width is None)
                continue
            self._write_plain(line.plain + "\n")

    def _write_plain(self, line: str) -> None:
        stream = self.stream
        try:
            stream.write(line)
        except UnicodeEncodeError:
            encoding = getattr(stream, "encoding", None) or "ascii"
            stream.write(line.encode(encoding, "replace").decode(encoding))
        self._flush()

    def _flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if callable(flush):
            flush()


def _ordered(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    known = [(s, counts[s]) for s in _STATUS_ORDER if counts.get(s)]
    rest = sorted((s, n) for s, n in counts.items() if s not in _STATUS_LOOK and n)
    return known + rest


def _status_count(status: str, n: int) -> str:
    return f"{n} {status.replace('_', ' ')}"


def _fitting(text: str, start: int, cells: int) -> int:
    """The end offset of the longest piece of ``text`` from ``start`` within ``cells``."""
    end, used = start, 0
    while end < len(text):
        used += cell_len(text[end])
        if used > cells:
            break
        end += 1
    return end


def _wrap(text: Text, width: int) -> list[Text]:
    """``text`` folded at spaces into lines of at most ``width`` cells. Continuation
    lines are indented two columns past where the first line's words start (after a
    timestamp, the indentation and a status symbol), or four on a narrow terminal."""
    plain = text.plain
    lead_match = _LEAD.match(plain)
    lead = lead_match.end() if lead_match else 0
    pad = lead + 2 if lead + 2 <= width // 2 else 4
    offsets: list[int] = []
    start, room, floor = 0, width, lead
    while cell_len(plain[start:]) > room:
        cut = _fitting(plain, start, room)
        space = plain.rfind(" ", floor + 1, cut + 1)
        end = space if space > start else max(cut, start + 1)
        start = end
        while start < len(plain) and plain[start] == " ":
            start += 1
        offsets += [end, start] if start > end else [end]
        room, floor = width - pad, start
    lines: list[Text] = []
    for part in text.divide(offsets):
        if not part.plain.strip(" "):
            continue
        if lines:
            line = Text(" " * pad)
            line.append_text(part)
            part = line
        lines.append(part)
    return lines


# ------------------------------------------------------------- ParallelEventPrinter

_ITEM_STATE = {
    "started": "running",
    "completed": "completed",
    "recovered": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "interrupted": "cancelled",
    "retrying": "retrying",
}
_GROUP_TERMINAL = {
    "completed": GroupStatus.COMPLETED,
    "failed": GroupStatus.FAILED,
    "cancelled": GroupStatus.CANCELLED,
    "interrupted": GroupStatus.CANCELLED,
}
_STEP = 25  # percent between plain progress lines
_SUMMARY_BAR = 10  # blocks of the bar in group summaries
_TAIL_ROOM = 52  # columns kept for the numbers after a live bar (" 40%  4/10 · ...")


@dataclass(eq=False)
class _GroupView:
    """What the printer keeps per group next to its public tracker."""

    tracker: ParallelGroupTracker
    order: int
    address: str | None = None
    parent: _GroupView | None = None
    announced: bool = False  # a group-started event was seen
    finished: bool = False  # a terminal group event was seen
    told_total: int = 0
    max_workers: int | None = None
    retries: int = 0
    message: str | None = None
    duration: float | None = None
    timed_out: bool = False
    last_step: int = 0
    items: dict[int | str, str] = field(default_factory=dict)
    states: Counter[str] = field(default_factory=Counter)
    errors: dict[int | str, str] = field(default_factory=dict)
    anonymous: int = 0
    highest_index: int = -1  # item index n implies at least n + 1 items

    item_label: str | None = None  # the item of the enclosing group it runs in

    @property
    def label(self) -> str:
        """``chunks``, or ``doc-2 › chunks`` for a group run by an item of another."""
        name = _clean(self.tracker.name or self.tracker.group_id, 60)
        return f"{self.item_label} › {name}" if self.item_label else name

    @property
    def level(self) -> int:
        level, parent = 0, self.parent
        while parent is not None:
            level, parent = level + 1, parent.parent
        return level

    @property
    def running(self) -> int:
        return self.states["running"]

    @property
    def finished_items(self) -> int:
        t = self.tracker
        return t.completed + t.failed + t.cancelled

    @property
    def shown(self) -> bool:
        """Whether the group has a live bar."""
        return not self.finished and (
            self.announced or self.running > 0 or self.states["retrying"] > 0
        )


@dataclass(frozen=True, slots=True)
class _Row:
    """An immutable snapshot of one live bar (read by the refresh thread)."""

    label: str
    level: int
    total: int
    finished: int
    failed: int
    retrying: int
    running: int
    start: float


class ParallelEventPrinter(EventPrinter):
    """An :class:`EventPrinter` that understands parallel groups.

    Args:
        parallel_mode: ``ParallelDisplayMode.PROGRESS`` (default) or ``REALTIME``, also
            as the strings ``"progress"`` / ``"realtime"``.
        show_progress: draw progress bars (PROGRESS mode) and put the bar in group
            summaries; False keeps only group headers and summaries.
        show_timestamp: as for :class:`EventPrinter`.
        show_address: as for :class:`EventPrinter`.
        stream: as for :class:`EventPrinter`.
        color: as for :class:`EventPrinter`.
        width: as for :class:`EventPrinter`.
        bar_width: characters of the bar in live and plain progress lines.
        refresh_per_second: redraws per second of the live display (terminals only).

    REALTIME prints every event as it arrives; events of a group are indented under it and
    prefixed with the group name and the item position (``[Processing Docs 3/10]``),
    with a header when the group starts and one summary when it ends. A group that runs
    inside an item of another group is named after that item too: ``doc-2 › chunks``
    (the item's tag, else the enclosing group and the position: ``outer 3 › inner``),
    in its bar, prefix, header and summary.

    PROGRESS shows one live bar per running group (nested groups as nested bars) with
    finished/total, items in flight, failures, retries, elapsed time and ETA (counts that
    are zero are left out; on a narrow terminal the least useful fields go first); item
    events are folded into the bars, other events (and :meth:`print_line` lines, and log
    records written to ``sys.stderr``) print above them. When the stream is not a
    terminal, a plain progress line is printed at each 25% step instead. Each group ends
    with a summary line (bar, counts, time) and its categorized errors. The live display
    stops when the last group ends; :meth:`close` stops it in any case. In a summary the
    bar is full for the items that ran to an end (completed or failed) and shaded for
    cancelled ones.

    Attributes:
        parallel_mode: the display mode.
        parallel_groups: ``group_id -> ParallelGroupTracker`` for every group seen (kept
            after the group ends).
    """

    def __init__(
        self,
        parallel_mode: ParallelDisplayMode | str = ParallelDisplayMode.PROGRESS,
        show_progress: bool = True,
        *,
        show_timestamp: bool = True,
        show_address: bool = True,
        stream: IO[str] | None = None,
        color: bool | None = None,
        width: int | None = None,
        bar_width: int = 20,
        refresh_per_second: float = 10.0,
    ) -> None:
        super().__init__(
            show_timestamp=show_timestamp,
            show_address=show_address,
            stream=stream,
            color=color,
            width=width,
        )
        self.parallel_mode = _parse_mode(parallel_mode)
        self.show_progress = show_progress
        if isinstance(bar_width, bool) or not isinstance(bar_width, int) or bar_width < 1:
            raise InvalidArgumentError(f"bar_width must be a positive integer, got {bar_width!r}.")
        if not _as_float(refresh_per_second) or refresh_per_second <= 0:
            raise InvalidArgumentError(
                f"refresh_per_second must be a positive number, got {refresh_per_second!r}."
            )
        self.bar_width = bar_width
        self.refresh_per_second = float(refresh_per_second)
        self.parallel_groups: dict[str, ParallelGroupTracker] = {}
        self._views: dict[str, _GroupView] = {}
        self._open: dict[str, _GroupView] = {}  # views of groups that have not ended
        self._sequence = 0
        self._live: Live | None = None
        self._rows: tuple[_Row, ...] = ()
        self._render_failed = False

    # ------------------------------------------------------------------ public API

    def _render_progress_bar(self, completed: int, total: int, width: int = 10) -> str:
        """``████████░░ 80%``: ``width`` blocks, full for the finished fraction, then the
        integer percentage (rounded down; 0% for a total of 0)."""
        total = max(0, int(total))
        completed = min(max(0, int(completed)), total)
        fraction = completed / total if total else 0.0
        return f"{_bar(fraction, width)} {_percent_text(fraction)}"

    def _update_progress_bar(self, group_id: str) -> None:
        """Redraw the display of one group (live bar, or a plain step line)."""
        view = self._views.get(group_id)
        if view is not None:
            self._progress_changed(view)

    @property
    def live_active(self) -> bool:
        """Whether a live progress display is currently drawn."""
        return self._live is not None

    def close(self) -> None:
        """Stop the live display (leaving the terminal clean) and flush the stream."""
        try:
            with self._lock:
                self._stop_live()
        except Exception:
            self._internal_error("closing")
        super().close()

    def __enter__(self) -> ParallelEventPrinter:
        return self

    # --------------------------------------------------------------- dispatching

    def _handle(self, ev: _Event) -> None:
        if not ev.known:
            super()._handle(ev)
            return
        if ev.kind == "group" and ev.group_id:
            self._on_group_event(ev)
            return
        view: _GroupView | None = None
        index = ev.parallel_index
        if ev.is_parallel and ev.group_id:
            view = self._view(ev.group_id, ev)
            self._track_item(view, ev)
        else:
            view, index = self._enclosing_view(ev.address)
        if view is None:
            super()._handle(ev)
            return
        if self.parallel_mode is ParallelDisplayMode.REALTIME:
            self._emit(self._event_text(ev, self._prefix(view, index), self._indent(view, ev)))
            return
        if ev.kind == "divergence":
            super()._handle(ev)
        self._progress_changed(view)

    def _prefix(self, view: _GroupView, index: int | None) -> str:
        if index is None:
            return f"[{view.label}]"
        total = view.tracker.total
        return f"[{view.label} {index + 1}/{total if total else '?'}]"

    def _indent(self, view: _GroupView, ev: _Event) -> int:
        group_depth = view.address.count("/") if view.address else view.level
        return max(ev.depth, group_depth + 1)

    # ---------------------------------------------------------------- group state

    def _view(self, group_id: str, ev: _Event, fresh: bool = False) -> _GroupView:
        view = self._views.get(group_id)
        if view is None or fresh:
            tracker = ParallelGroupTracker(group_id=group_id)
            self._sequence += 1
            view = _GroupView(tracker=tracker, order=self._sequence)
            self._views[group_id] = view
            self._open[group_id] = view
            self.parallel_groups[group_id] = tracker
        if view.address is None:
            address = ev.address if ev.kind == "group" else _group_address(ev)
            if address:
                view.address = address
                view.item_label = _item_label(address)
                view.parent, _ = self._enclosing_view(address, exclude=view)
                if view.parent is not None:
                    view.tracker.parent_group_id = view.parent.tracker.group_id
        if view.tracker.name is None:
            name = ev.metadata.get("group_name") if ev.kind == "group" else None
            if not name and ev.kind == "group" and ev.name:
                name = ev.name.removeprefix("parallel:")
            if name:
                view.tracker.name = _clean(name, 80)
        return view

    def _enclosing_view(
        self, address: str, exclude: _GroupView | None = None
    ) -> tuple[_GroupView | None, int | None]:
        """The innermost group whose items contain ``address``, and the item's index."""
        if not address:
            return None, None
        best: _GroupView | None = None
        for view in self._open.values():
            if view is exclude or view.address is None:
                continue
            if address.startswith(view.address + "[") and (
                best is None or len(view.address) > len(best.address or "")
            ):
                best = view
        if best is None or best.address is None:
            return None, None
        rest = address[len(best.address) + 1 :]
        return best, _as_int(rest.partition("]")[0])

    def _track_item(self, view: _GroupView, ev: _Event) -> None:
        state = _ITEM_STATE.get(ev.status)
        if state is None or view.finished:
            return
        key: int | str
        if ev.parallel_index is not None:
            key = ev.parallel_index
            view.highest_index = max(view.highest_index, key)
        elif ev.address:
            key = ev.address
        else:
            key = self._anonymous_key(view, state)
        previous = view.items.get(key)
        if previous is not None:
            view.states[previous] -= 1
        view.items[key] = state
        view.states[state] += 1
        if state == "failed":
            view.errors[key] = (
                f"{ev.error_type}: {_clean(ev.message)}"
                if ev.error_type and ev.message
                else _clean(ev.error_type or ev.message or "failed")
            )
        else:
            view.errors.pop(key, None)
        if state == "retrying":
            view.retries += 1
        self._sync_tracker(view)

    @staticmethod
    def _anonymous_key(view: _GroupView, state: str) -> str:
        if state != "running":
            for key, current in view.items.items():
                if isinstance(key, str) and key.startswith("#") and current == "running":
                    return key
        view.anonymous += 1
        return f"#{view.anonymous}"

    def _sync_tracker(self, view: _GroupView) -> None:
        t = view.tracker
        states = view.states
        t.started = len(view.items)
        t.completed = states["completed"]
        t.failed = states["failed"]
        t.cancelled = states["cancelled"]
        t.retrying = states["retrying"]
        t.total = max(view.told_total, t.started, view.highest_index + 1)
        t.errors = list(view.errors.values())

    def _on_group_event(self, ev: _Event) -> None:
        assert ev.group_id is not None
        previous = self._views.get(ev.group_id)
        # Group ids are deterministic: the same program run again (another state on the
        # same printer) starts a group with the id of one that already ended.
        restarted = ev.status == "started" and previous is not None and previous.finished
        view = self._view(ev.group_id, ev, fresh=restarted)
        meta = ev.metadata
        total = _as_int(meta.get("total"))
        if total is not None and total >= 0:
            view.told_total = total
            view.tracker.total = max(total, view.tracker.started)
        workers = _as_int(meta.get("max_workers"))
        if workers is not None:
            view.max_workers = workers
        if ev.status == "started":
            if view.announced or view.finished:
                return
            view.announced = True
            if self._wants_live():
                self._progress_changed(view)
            else:
                self._emit(self._header_text(view, ev))
            return
        terminal = _GROUP_TERMINAL.get(ev.status)
        if terminal is None or view.finished:
            return
        t = view.tracker
        for name in ("completed", "failed", "cancelled"):
            value = _as_int(meta.get(name))
            if value is not None:
                setattr(t, name, max(0, value))
        t.retrying = 0
        t.started = max(t.started, t.completed + t.failed + t.cancelled)
        t.total = max(t.total, t.started)
        t.status = terminal
        t.end_time = time.monotonic()
        retries = _as_int(meta.get("retries"))
        if retries is not None:
            view.retries = retries
        view.message = ev.message
        view.duration = (
            ev.execution_time if ev.execution_time is not None else t.end_time - t.start_time
        )
        view.timed_out = bool(meta.get("timed_out"))
        live = self._live
        if live is not None:
            # Draw the group's final state once before its bar makes way for the summary.
            self._rows = self._snapshot_rows()
            live.refresh()
        view.finished = True
        self._open.pop(t.group_id, None)
        self._rows = self._snapshot_rows()
        for line in self._group_summary(view, ev):
            self._emit(line, wrap=True)
        self._refresh_live()

    # ---------------------------------------------------------------- displays

    def _wants_live(self) -> bool:
        return (
            self.parallel_mode is ParallelDisplayMode.PROGRESS
            and self.show_progress
            and self.is_terminal
            and os.environ.get("TERM") != "dumb"
        )

    def _progress_changed(self, view: _GroupView) -> None:
        if self.parallel_mode is not ParallelDisplayMode.PROGRESS or not self.show_progress:
            return
        if self._wants_live():
            self._refresh_live()
            return
        if view.finished:
            return
        t = view.tracker
        if t.total <= 0:
            return
        step = int(100 * view.finished_items / t.total) // _STEP
        if step > view.last_step and step * _STEP < 100:
            view.last_step = step
            self._emit(self._progress_line(view))

    def _progress_line(self, view: _GroupView) -> Text:
        t = view.tracker
        text = Text()
        if self.show_timestamp:
            text.append(_format_timestamp(None) + " ", style="dim")
        text.append("  " * self._group_indent(view))
        text.append(view.label, style="bold")
        text.append(" " + self._render_progress_bar(view.finished_items, t.total, self.bar_width))
        text.append(f"  {view.finished_items}/{t.total}")
        if t.failed:
            text.append(f" · {t.failed} failed", style="red")
        text.append(f" · {_format_duration(time.monotonic() - t.start_time)}", style="dim")
        return text

    def _group_indent(self, view: _GroupView) -> int:
        return view.address.count("/") if view.address else view.level

    def _header_text(self, view: _GroupView, ev: _Event) -> Text:
        text = Text()
        if self.show_timestamp:
            text.append(_format_timestamp(ev.timestamp) + " ", style="dim")
        text.append("  " * self._group_indent(view))
        text.append("▶ ", style="cyan")
        text.append(f"group '{view.label}'", style="bold")
        details = [f"{view.tracker.total} items"]
        if view.max_workers is not None:
            details.append(f"max {view.max_workers} workers")
        text.append(" started: " + ", ".join(details))
        return text

    def _group_summary(self, view: _GroupView, ev: _Event) -> list[Text]:
        t = view.tracker
        if view.timed_out:
            symbol, word, style = "⏱", "timed out", "bold red"
        elif t.status is GroupStatus.CANCELLED:
            symbol, word, style = "⊘", "cancelled", "magenta"
        elif t.status is GroupStatus.FAILED:
            symbol, word, style = "✖", "failed", "bold red"
        else:
            symbol, word, style = "✔", "complete", "bold green"
        text = Text()
        if self.show_timestamp:
            text.append(_format_timestamp(ev.timestamp) + " ", style="dim")
        indent = "  " * self._group_indent(view)
        text.append(indent)
        text.append(f"{symbol} group '{view.label}' {word}", style=style)
        if self.show_progress:
            # Cancelled items never ran to an end: they are not "done", and show shaded.
            total = max(1, t.total)
            done = (t.completed + t.failed) / total
            bar = _bar(done, _SUMMARY_BAR, cancelled=t.cancelled / total)
            text.append(f" {bar} {_percent_text(done)}")
        counts = f"  {t.completed}/{t.total} completed"
        if t.failed:
            counts += f", {t.failed} failed"
        if t.cancelled:
            counts += f", {t.cancelled} cancelled"
        if view.retries:
            counts += f", {view.retries} retr{'y' if view.retries == 1 else 'ies'}"
        text.append(counts)
        if view.duration is not None:
            text.append(f" in {_format_duration(view.duration)}", style="dim")
        lines = [text]
        errors = view.message or _categorize(t.errors)
        if errors and (t.failed or t.cancelled or view.timed_out):
            pad = " " * 13 if self.show_timestamp else ""
            lines.append(Text(f"{pad}{indent}    errors: {_clean(errors)}", style="red"))
        return lines

    # -- live display (terminals)

    def _refresh_live(self) -> None:
        rows = self._snapshot_rows()
        self._rows = rows
        if rows and self._live is None and self._wants_live():
            self._start_live()
        elif not rows and self._live is not None:
            self._stop_live()

    def _snapshot_rows(self) -> tuple[_Row, ...]:
        shown = [v for v in self._open.values() if v.shown]
        if not shown:
            return ()
        children: dict[int, list[_GroupView]] = {}
        roots: list[_GroupView] = []
        shown_ids = {id(v) for v in shown}
        for view in shown:
            parent = view.parent
            while parent is not None and id(parent) not in shown_ids:
                parent = parent.parent
            if parent is None:
                roots.append(view)
            else:
                children.setdefault(id(parent), []).append(view)
        rows: list[_Row] = []

        def walk(views: Iterable[_GroupView], level: int) -> None:
            for view in sorted(views, key=lambda v: v.order):
                t = view.tracker
                rows.append(
                    _Row(
                        label=view.label,
                        level=level,
                        total=t.total,
                        finished=view.finished_items,
                        failed=t.failed,
                        retrying=t.retrying,
                        running=view.running,
                        start=t.start_time,
                    )
                )
                walk(children.get(id(view), ()), level + 1)

        walk(roots, 0)
        return tuple(rows)

    def _start_live(self) -> None:
        console = self._get_console()
        if console is None:  # pragma: no cover - _wants_live checked the terminal
            return
        stream = self.stream
        standard = stream is sys.stdout or stream is sys.stderr
        self._pinned = stream
        live = Live(
            console=console,
            auto_refresh=True,
            refresh_per_second=self.refresh_per_second,
            transient=True,
            redirect_stdout=standard,
            redirect_stderr=standard,
        )
        live.update(_Bars(self))
        self._live = live
        _LIVE_PRINTERS.add(self)
        live.start(refresh=True)

    def _stop_live(self) -> None:
        live, self._live = self._live, None
        self._rows = ()
        _LIVE_PRINTERS.discard(self)
        if live is not None:
            try:
                live.stop()
            finally:
                self._pinned = None
            self._flush()

    def _live_lines(self, width: int) -> list[Text]:
        """The bars of the current snapshot (called by rich, also from its refresh thread,
        so it reads only the immutable ``_rows``)."""
        try:
            now = time.monotonic()
            return [self._row_text(row, now, width) for row in self._rows]
        except Exception:
            if not self._render_failed:
                self._render_failed = True
                logger.exception("ParallelEventPrinter failed to draw its progress bars.")
            return []

    def _row_text(self, row: _Row, now: float, width: int) -> Text:
        """``name ████░░░░  40%  4/10 · 3 in flight · 1 failed · 1 retrying · 1.2s · ETA 1.8s``

        Counts that are zero are left out. The bar shrinks on narrow terminals (down to
        5 blocks); then the fields that do not fit are dropped, least useful first
        (elapsed time, items in flight, retrying, failed; the count and the ETA stay),
        and only a line that still does not fit is cut.
        """
        fraction = row.finished / row.total if row.total else 0.0
        elapsed = max(0.0, now - row.start)
        if row.finished and row.total > row.finished:
            eta = _short_duration(elapsed / row.finished * (row.total - row.finished))
        else:
            eta = "--"
        head = Text("  " * row.level)
        head.append(row.label, style="bold")
        # (priority: lower is kept longer, text, style), in display order
        fields: list[tuple[int, str, str]] = []
        if row.running:
            fields.append((3, f" · {row.running} in flight", ""))
        if row.failed:
            fields.append((1, f" · {row.failed} failed", "red"))
        if row.retrying:
            fields.append((2, f" · {row.retrying} retrying", "yellow"))
        fields.append((4, f" · {_short_duration(elapsed)}", "dim"))
        fields.append((0, f" · ETA {eta}", "dim"))
        count = f" {_percent_text(fraction):>4}  {row.finished}/{row.total or '?'}"
        # The bar's size depends only on the width and the label, so it does not jitter
        # as the numbers after it change length.
        blocks = max(5, min(self.bar_width, width - head.cell_len - 1 - _TAIL_ROOM))
        room = width - head.cell_len - 1 - blocks - len(count)
        while fields and sum(len(f[1]) for f in fields) > room:
            fields.remove(max(fields, key=lambda f: f[0]))
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append_text(head)
        text.append(" " + _bar(fraction, blocks), style="red" if row.failed else "green")
        text.append(count)
        for _, field_text, style in fields:
            text.append(field_text, style=style)
        text.truncate(width, overflow="ellipsis")
        return text

    # -- summary

    def _summary_lines(self) -> list[Text]:
        lines = super()._summary_lines()
        for view in sorted(self._views.values(), key=lambda v: v.order):
            t = view.tracker
            line = Text("  " * (view.level + 1) + f"{view.label}: {t.status.value}, ")
            line.append(f"{t.completed}/{t.total} completed")
            if t.failed:
                line.append(f", {t.failed} failed")
            if t.cancelled:
                line.append(f", {t.cancelled} cancelled")
            if view.duration is not None:
                line.append(f" in {_format_duration(view.duration)}")
            lines.append(line)
        return lines


class _Bars:
    """The live display's renderable: drawn from the printer's latest snapshot each time
    rich renders it (refresh thread, or when a line is printed above the bars)."""

    def __init__(self, printer: ParallelEventPrinter) -> None:
        self._printer = printer

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self._printer._live_lines(options.max_width)


def _parse_mode(mode: Any) -> ParallelDisplayMode:
    if isinstance(mode, ParallelDisplayMode):
        return mode
    if isinstance(mode, str):
        try:
            return ParallelDisplayMode(mode.strip().lower())
        except ValueError:
            pass
    options = ", ".join(repr(m.value) for m in ParallelDisplayMode)
    raise InvalidArgumentError(
        f"Unknown parallel_mode {mode!r}; use one of {options} "
        "(or ParallelDisplayMode.PROGRESS / ParallelDisplayMode.REALTIME)."
    )


def _group_address(ev: _Event) -> str | None:
    """The group address of an item event: ``a/parallel:x[3]/tool`` -> ``a/parallel:x``."""
    if ev.parallel_index is None or not ev.address:
        return None
    marker = f"[{ev.parallel_index}]"
    at = ev.address.rfind(marker + "/")
    if at < 0 and ev.address.endswith(marker):
        at = len(ev.address) - len(marker)
    return ev.address[:at] if at > 0 else None


_SEGMENT_SUFFIX = re.compile(r"#\d+$")


def _item_label(address: str) -> str | None:
    """The item a nested group runs in, from the group's address.

    ``orchestrator/parallel:documents[1]/document[doc-2]/parallel:chunks`` gives
    ``doc-2`` (the tag of the item's invocation), ``a/parallel:outer[2]/section/
    parallel:inner`` gives ``outer 3`` (the enclosing group and the item's position);
    a group outside any other group gives None.
    """
    segments = [_SEGMENT_SUFFIX.sub("", s) for s in address.split("/")[:-1]]
    for at in range(len(segments) - 1, -1, -1):
        segment = segments[at]
        if not (segment.startswith("parallel:") and segment.endswith("]")):
            continue
        name, _, index = segment[len("parallel:") : -1].rpartition("[")
        invocation = segments[at + 1] if at + 1 < len(segments) else ""
        if invocation.endswith("]") and "[" in invocation:
            tag = invocation[invocation.index("[") + 1 : -1]
            if tag:
                return _clean(tag, 40)
        position = _as_int(index)
        return _clean(f"{name} {position + 1}" if position is not None else name, 40)
    return None


def _categorize(errors: list[str]) -> str:
    if not errors:
        return ""
    kinds = Counter(error.partition(":")[0] for error in errors)
    parts = [f"{kind} ({n})" for kind, n in kinds.most_common()]
    return f"{len(errors)} failed: " + ", ".join(parts)


# Printers with a live display, stopped at interpreter exit so that the cursor is shown
# again even when close() was never called.
_LIVE_PRINTERS: weakref.WeakSet[ParallelEventPrinter] = weakref.WeakSet()


@atexit.register
def _close_live_printers() -> None:  # pragma: no cover - runs at interpreter exit
    for printer in list(_LIVE_PRINTERS):
        printer.close()
