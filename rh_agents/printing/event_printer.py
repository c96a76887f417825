"""EventPrinter: one line per event, indented by the event's depth in the call tree."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import Counter
from types import TracebackType
from typing import IO, Any

from rich.console import Console
from rich.text import Text

from rh_agents.core.errors import InvalidArgumentError
from rh_agents.printing._format import (
    DIVERGENCE_LOOK,
    STATUS_LOOK,
    UNKNOWN_LOOK,
    EventView,
    as_int,
    clean,
    env_no_color,
    event_time,
    format_duration,
    format_timestamp,
    is_tty,
    normalize,
    ordered_counts,
    status_count,
    wrap_text,
)

__all__ = ["EventPrinter"]

logger: logging.Logger = logging.getLogger("rh_agents.printer")


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
        self.internal_errors: int = 0
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
        return is_tty(self.stream)

    @property
    def use_color(self) -> bool:
        """Whether output is coloured (see the ``color`` argument)."""
        if self.color is not None:
            return self.color
        return self.is_terminal and not env_no_color() and os.environ.get("TERM") != "dumb"

    def __call__(self, event: Any) -> None:
        """Same as :meth:`print_event` (so the printer itself can be subscribed)."""
        self.print_event(event)

    def print_event(self, event: Any) -> None:
        """Print one event. Never raises; works without an event loop."""
        try:
            ev = normalize(event)
            with self._lock:
                self._count(ev)
                self._handle(ev)
        except Exception:
            self._internal_error("printing an event")

    def format_event(self, event: Any) -> str:
        """The line :class:`EventPrinter` would print for ``event``, without colour."""
        return self._event_text(normalize(event)).plain

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
                line.append(format_timestamp(None) + " ", style="dim")
            line.append_text(text if isinstance(text, Text) else Text(clean(text, 2000)))
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

    def _count(self, ev: EventView) -> None:
        if not ev.known:
            self.status_counts["unknown"] += 1
        elif ev.kind == "group":
            self.group_counts[ev.status] += 1
        elif ev.kind == "divergence":
            self.status_counts["divergence"] += 1
        else:
            self.status_counts[ev.status] += 1

    def _handle(self, ev: EventView) -> None:
        self._emit(self._event_text(ev))

    # -- formatting

    def _look(self, ev: EventView) -> tuple[str, str, str]:
        if ev.kind == "divergence":
            return DIVERGENCE_LOOK
        look = STATUS_LOOK.get(ev.status)
        if look is None:
            return (UNKNOWN_LOOK[0], clean(ev.status, 30), UNKNOWN_LOOK[2])
        return look

    def _event_text(
        self, ev: EventView, prefix: str | None = None, indent: int | None = None
    ) -> Text:
        text = Text()
        if self.show_timestamp:
            text.append(format_timestamp(event_time(ev)) + " ", style="dim")
        text.append("  " * (ev.depth if indent is None else indent))
        if prefix:
            text.append(prefix + " ", style="bold blue")
        if not ev.known:
            text.append("? unrecognized event: ", style="dim")
            text.append(clean(repr(ev.raw), 200))
            return text
        symbol, word, style = self._look(ev)
        text.append(f"{symbol} {word:<9}", style=style)
        text.append(" ")
        if ev.kind == "group":
            self._append_group_body(text, ev)
        else:
            self._append_event_body(text, ev)
        if self.show_address and ev.address:
            text.append("  @ " + clean(ev.address), style="dim")
        return text

    def _append_event_body(self, text: Text, ev: EventView) -> None:
        text.append(clean(ev.name) if ev.name else "<unnamed>", style="bold")
        if ev.event_type:
            text.append(f" ({clean(ev.event_type, 40)})", style="dim")
        if ev.from_cache:
            text.append(" [cached]", style="blue")
        if ev.is_replayed:
            text.append(" [replayed]", style="blue")
        if ev.status == "retrying":
            attempt = ev.retry_attempt or None
            parts = [f"attempt {attempt} failed" if attempt else "attempt failed"]
            if ev.retry_delay is not None:
                parts.append(f"retry in {format_duration(ev.retry_delay)}")
            text.append(f" [{', '.join(parts)}]", style="yellow")
        elif ev.retry_attempt > 0:
            text.append(f" [retry {ev.retry_attempt}]", style="yellow")
        if ev.execution_time is not None and ev.status != "started":
            text.append(f" {format_duration(ev.execution_time)}", style="dim")
        self._append_error(text, ev)

    def _append_error(self, text: Text, ev: EventView) -> None:
        if ev.status == "retrying":
            message = ev.original_error or ev.message
        else:
            message = ev.message or (ev.detail if ev.status == "failed" else None)
        error_type = ev.error_type if ev.status in ("failed", "retrying") else None
        if not message and not error_type:
            return
        if error_type and message:
            body = f"{clean(error_type, 80)}: {clean(message)}"
        else:
            body = clean(error_type or message or "")
        if ev.status == "failed":
            style = "red"
        elif ev.status == "retrying" or ev.kind != "event":
            style = "yellow"
        else:
            style = ""
        text.append(" — " + body, style=style)

    def _append_group_body(self, text: Text, ev: EventView) -> None:
        meta = ev.metadata
        name = meta.get("group_name") or ev.name or ev.group_id or "group"
        text.append(f"parallel group '{clean(name, 80)}'", style="bold")
        total = as_int(meta.get("total"))
        if ev.status == "started":
            details = []
            if total is not None:
                details.append(f"{total} items")
            workers = as_int(meta.get("max_workers"))
            if workers is not None:
                details.append(f"max {workers} workers")
            if details:
                text.append(" (" + ", ".join(details) + ")", style="dim")
            return
        counts = [
            f"{as_int(meta.get(key)) or 0} {key}"
            for key in ("completed", "failed", "cancelled")
            if meta.get(key) is not None
        ]
        if counts:
            text.append(" " + ", ".join(counts) + (f" of {total}" if total is not None else ""))
        if ev.execution_time is not None:
            text.append(f" in {format_duration(ev.execution_time)}", style="dim")
        if meta.get("timed_out"):
            text.append(" [timed out]", style="red")
        if ev.message:
            text.append(" — " + clean(ev.message), style="red")

    def _summary_lines(self) -> list[Text]:
        counts = self.status_counts
        total = sum(counts.values())
        line = Text(f"Summary: {total} event{'s' if total != 1 else ''}", style="bold")
        parts = [status_count(status, n) for status, n in ordered_counts(counts)]
        if parts:
            line.append(" — " + ", ".join(parts))
        lines = [line]
        if self.group_counts:
            started = self.group_counts.get("started", 0)
            ended = [
                status_count(s, n) for s, n in ordered_counts(self.group_counts) if s != "started"
            ]
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
        if not is_tty(stream):
            return None
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        if columns <= 0:
            columns = as_int(os.environ.get("COLUMNS")) or 80
        return max(10, columns)

    def _get_console(self) -> Console | None:
        """A rich console for terminals / forced colour; None for plain writes."""
        stream = self.stream
        tty = is_tty(stream) and os.environ.get("TERM") != "dumb"
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
            lines = wrap_text(text, width)
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
