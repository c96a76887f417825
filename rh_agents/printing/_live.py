"""The live progress bars of a ParallelEventPrinter on a terminal.

The printer hands :class:`LiveBars` an immutable snapshot of its running groups (one
:class:`Row` per bar, nested groups under their parent) at each change; the bars are
redrawn from the latest snapshot, so drawing never reads the printer's changing state.

Every redraw happens in the thread that prints (the event loop's): a timer of the running
loop redraws the bars ``refresh_per_second`` times, instead of rich's own refresh thread.
A redraw from another thread can interleave with a line printed above the bars (rich
positions the cursor for the bars' old height while the new height is being drawn), and
the terminal is then left with a stale bar line among the printed ones. Only a printer
used without a running event loop lets rich's refresh thread redraw.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

from rh_agents.printing._format import bar_text, percent_text, short_duration
from rh_agents.printing._groups import GroupView

__all__ = ["LiveBars", "Row", "row_text", "snapshot_rows"]

logger = logging.getLogger("rh_agents.printer")

TAIL_ROOM = 52  # columns kept for the numbers after a live bar (" 40%  4/10 · ...")


@dataclass(frozen=True, slots=True)
class Row:
    """An immutable snapshot of one live bar (read by the refresh thread)."""

    label: str
    level: int
    total: int
    finished: int
    failed: int
    retrying: int
    running: int
    start: float


def snapshot_rows(views: Iterable[GroupView]) -> tuple[Row, ...]:
    """The bars of the groups that have one, each nested group under its parent."""
    shown = [v for v in views if v.shown]
    if not shown:
        return ()
    children: dict[int, list[GroupView]] = {}
    roots: list[GroupView] = []
    shown_ids = {id(v) for v in shown}
    for view in shown:
        parent = view.parent
        while parent is not None and id(parent) not in shown_ids:
            parent = parent.parent
        if parent is None:
            roots.append(view)
        else:
            children.setdefault(id(parent), []).append(view)
    rows: list[Row] = []

    def walk(level_views: Iterable[GroupView], level: int) -> None:
        for view in sorted(level_views, key=lambda v: v.order):
            t = view.tracker
            rows.append(
                Row(
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


def row_text(row: Row, now: float, width: int, bar_width: int) -> Text:
    """``name ████░░░░  40%  4/10 · 3 in flight · 1 failed · 1 retrying · 1.2s · ETA 1.8s``

    Counts that are zero are left out. The bar shrinks on narrow terminals (down to
    5 blocks); then the fields that do not fit are dropped, least useful first
    (elapsed time, items in flight, retrying, failed; the count and the ETA stay),
    and only a line that still does not fit is cut.
    """
    fraction = row.finished / row.total if row.total else 0.0
    elapsed = max(0.0, now - row.start)
    if row.finished and row.total > row.finished:
        eta = short_duration(elapsed / row.finished * (row.total - row.finished))
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
    fields.append((4, f" · {short_duration(elapsed)}", "dim"))
    fields.append((0, f" · ETA {eta}", "dim"))
    count = f" {percent_text(fraction):>4}  {row.finished}/{row.total or '?'}"
    # The bar's size depends only on the width and the label, so it does not jitter
    # as the numbers after it change length.
    blocks = max(5, min(bar_width, width - head.cell_len - 1 - TAIL_ROOM))
    room = width - head.cell_len - 1 - blocks - len(count)
    while fields and sum(len(f[1]) for f in fields) > room:
        fields.remove(max(fields, key=lambda f: f[0]))
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append_text(head)
    text.append(" " + bar_text(fraction, blocks), style="red" if row.failed else "green")
    text.append(count)
    for _, field_text, style in fields:
        text.append(field_text, style=style)
    text.truncate(width, overflow="ellipsis")
    return text


class LiveBars:
    """One printer's live display: a rich ``Live`` drawing the latest :attr:`rows`.

    Args:
        bar_width: the largest bar, in blocks.
        refresh_per_second: redraws per second.
    """

    def __init__(self, bar_width: int, refresh_per_second: float) -> None:
        self.bar_width = bar_width
        self.refresh_per_second = refresh_per_second
        self.rows: tuple[Row, ...] = ()
        self._live: Live | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._render_failed = False

    @property
    def active(self) -> bool:
        """Whether the bars are drawn."""
        return self._live is not None

    def start(self, console: Console, owner: Any, *, redirect: bool) -> None:
        """Start drawing on ``console``; ``owner`` (the printer) is closed at exit.

        With ``redirect``, what the program writes to ``sys.stdout`` and ``sys.stderr``
        meanwhile prints above the bars.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # used synchronously: rich's refresh thread redraws
        live = Live(
            console=console,
            auto_refresh=loop is None,
            refresh_per_second=self.refresh_per_second,
            transient=True,
            redirect_stdout=redirect,
            redirect_stderr=redirect,
        )
        live.update(self)
        self._live = live
        _LIVE_PRINTERS.add(owner)
        live.start(refresh=True)
        if loop is not None:
            self._tick = loop.call_later(1 / self.refresh_per_second, self._redraw)

    def _redraw(self) -> None:
        """Redraw the bars (their times move without events) and schedule the next."""
        live = self._live
        if live is None:
            return
        live.refresh()
        self._tick = asyncio.get_running_loop().call_later(
            1 / self.refresh_per_second, self._redraw
        )

    def stop(self, owner: Any) -> bool:
        """Stop drawing and clear the bars; returns whether they were drawn."""
        live, self._live = self._live, None
        tick, self._tick = self._tick, None
        if tick is not None:
            tick.cancel()
        self.rows = ()
        _LIVE_PRINTERS.discard(owner)
        if live is None:
            return False
        live.stop()
        return True

    def show(self, rows: tuple[Row, ...]) -> None:
        """Draw ``rows`` now (not only at the next refresh)."""
        self.rows = rows
        if self._live is not None:
            self._live.refresh()

    def lines(self, width: int) -> list[Text]:
        """The bars of the current snapshot (called by rich, also from its refresh thread,
        so it reads only the immutable ``rows``)."""
        try:
            now = time.monotonic()
            return [row_text(row, now, width, self.bar_width) for row in self.rows]
        except Exception:
            if not self._render_failed:
                self._render_failed = True
                logger.exception("ParallelEventPrinter failed to draw its progress bars.")
            return []

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.lines(options.max_width)


# Printers with a live display, stopped at interpreter exit so that the cursor is shown
# again even when close() was never called.
_LIVE_PRINTERS: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _close_live_printers() -> None:  # pragma: no cover - runs at interpreter exit
    for printer in list(_LIVE_PRINTERS):
        printer.close()
