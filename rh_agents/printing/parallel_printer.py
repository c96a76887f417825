"""ParallelEventPrinter: an EventPrinter that shows parallel groups as they run."""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from rich.text import Text

from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.parallel import GroupStatus, ParallelDisplayMode, ParallelGroupTracker
from rh_agents.printing._format import (
    EventView,
    as_float,
    as_int,
    bar_text,
    clean,
    format_duration,
    format_timestamp,
    percent_text,
)
from rh_agents.printing._groups import (
    GROUP_TERMINAL,
    ITEM_STATE,
    PROGRESS_STEP,
    SUMMARY_BAR,
    GroupView,
    categorize,
    group_address,
    item_label,
)
from rh_agents.printing._live import LiveBars, snapshot_rows
from rh_agents.printing.event_printer import EventPrinter

__all__ = ["ParallelEventPrinter"]


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
        self.parallel_mode: ParallelDisplayMode = _parse_mode(parallel_mode)
        self.show_progress = show_progress
        if isinstance(bar_width, bool) or not isinstance(bar_width, int) or bar_width < 1:
            raise InvalidArgumentError(f"bar_width must be a positive integer, got {bar_width!r}.")
        if not as_float(refresh_per_second) or refresh_per_second <= 0:
            raise InvalidArgumentError(
                f"refresh_per_second must be a positive number, got {refresh_per_second!r}."
            )
        self.bar_width = bar_width
        self.refresh_per_second: float = float(refresh_per_second)
        self.parallel_groups: dict[str, ParallelGroupTracker] = {}
        self._views: dict[str, GroupView] = {}
        self._open: dict[str, GroupView] = {}  # views of groups that have not ended
        self._sequence = 0
        self._bars = LiveBars(bar_width, self.refresh_per_second)

    # ------------------------------------------------------------------ public API

    def _render_progress_bar(self, completed: int, total: int, width: int = 10) -> str:
        """``████████░░ 80%``: ``width`` blocks, full for the finished fraction, then the
        integer percentage (rounded down; 0% for a total of 0)."""
        total = max(0, int(total))
        completed = min(max(0, int(completed)), total)
        fraction = completed / total if total else 0.0
        return f"{bar_text(fraction, width)} {percent_text(fraction)}"

    def _update_progress_bar(self, group_id: str) -> None:
        """Redraw the display of one group (live bar, or a plain step line)."""
        view = self._views.get(group_id)
        if view is not None:
            self._progress_changed(view)

    @property
    def live_active(self) -> bool:
        """Whether a live progress display is currently drawn."""
        return self._bars.active

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

    def _handle(self, ev: EventView) -> None:
        if not ev.known:
            super()._handle(ev)
            return
        if ev.kind == "group" and ev.group_id:
            self._on_group_event(ev)
            return
        view: GroupView | None = None
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

    def _prefix(self, view: GroupView, index: int | None) -> str:
        if index is None:
            return f"[{view.label}]"
        total = view.tracker.total
        return f"[{view.label} {index + 1}/{total if total else '?'}]"

    def _indent(self, view: GroupView, ev: EventView) -> int:
        group_depth = view.address.count("/") if view.address else view.level
        return max(ev.depth, group_depth + 1)

    # ---------------------------------------------------------------- group state

    def _view(self, group_id: str, ev: EventView, fresh: bool = False) -> GroupView:
        view = self._views.get(group_id)
        if view is None or fresh:
            tracker = ParallelGroupTracker(group_id=group_id)
            self._sequence += 1
            view = GroupView(tracker=tracker, order=self._sequence)
            self._views[group_id] = view
            self._open[group_id] = view
            self.parallel_groups[group_id] = tracker
        if view.address is None:
            address = ev.address if ev.kind == "group" else group_address(ev)
            if address:
                view.address = address
                view.item_label = item_label(address)
                view.parent, _ = self._enclosing_view(address, exclude=view)
                if view.parent is not None:
                    view.tracker.parent_group_id = view.parent.tracker.group_id
        if view.tracker.name is None:
            name = ev.metadata.get("group_name") if ev.kind == "group" else None
            if not name and ev.kind == "group" and ev.name:
                name = ev.name.removeprefix("parallel:")
            if name:
                view.tracker.name = clean(name, 80)
        return view

    def _enclosing_view(
        self, address: str, exclude: GroupView | None = None
    ) -> tuple[GroupView | None, int | None]:
        """The innermost group whose items contain ``address``, and the item's index."""
        if not address:
            return None, None
        best: GroupView | None = None
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
        return best, as_int(rest.partition("]")[0])

    def _track_item(self, view: GroupView, ev: EventView) -> None:
        state = ITEM_STATE.get(ev.status)
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
                f"{ev.error_type}: {clean(ev.message)}"
                if ev.error_type and ev.message
                else clean(ev.error_type or ev.message or "failed")
            )
        else:
            view.errors.pop(key, None)
        if state == "retrying":
            view.retries += 1
        self._sync_tracker(view)

    @staticmethod
    def _anonymous_key(view: GroupView, state: str) -> str:
        if state != "running":
            for key, current in view.items.items():
                if isinstance(key, str) and key.startswith("#") and current == "running":
                    return key
        view.anonymous += 1
        return f"#{view.anonymous}"

    def _sync_tracker(self, view: GroupView) -> None:
        t = view.tracker
        states = view.states
        t.started = len(view.items)
        t.completed = states["completed"]
        t.failed = states["failed"]
        t.cancelled = states["cancelled"]
        t.retrying = states["retrying"]
        t.total = max(view.told_total, t.started, view.highest_index + 1)
        t.errors = list(view.errors.values())

    def _on_group_event(self, ev: EventView) -> None:
        assert ev.group_id is not None
        previous = self._views.get(ev.group_id)
        # Group ids are deterministic: the same program run again (another state on the
        # same printer) starts a group with the id of one that already ended.
        restarted = ev.status == "started" and previous is not None and previous.finished
        view = self._view(ev.group_id, ev, fresh=restarted)
        meta = ev.metadata
        total = as_int(meta.get("total"))
        if total is not None and total >= 0:
            view.told_total = total
            view.tracker.total = max(total, view.tracker.started)
        workers = as_int(meta.get("max_workers"))
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
        terminal = GROUP_TERMINAL.get(ev.status)
        if terminal is None or view.finished:
            return
        t = view.tracker
        for name in ("completed", "failed", "cancelled"):
            value = as_int(meta.get(name))
            if value is not None:
                setattr(t, name, max(0, value))
        t.retrying = 0
        t.started = max(t.started, t.completed + t.failed + t.cancelled)
        t.total = max(t.total, t.started)
        t.status = terminal
        t.end_time = time.monotonic()
        retries = as_int(meta.get("retries"))
        if retries is not None:
            view.retries = retries
        view.message = ev.message
        view.duration = (
            ev.execution_time if ev.execution_time is not None else t.end_time - t.start_time
        )
        view.timed_out = bool(meta.get("timed_out"))
        if self._bars.active:
            # Draw the group's final state once before its bar makes way for the summary.
            self._bars.show(snapshot_rows(self._open.values()))
        view.finished = True
        self._open.pop(t.group_id, None)
        self._bars.rows = snapshot_rows(self._open.values())
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

    def _progress_changed(self, view: GroupView) -> None:
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
        step = int(100 * view.finished_items / t.total) // PROGRESS_STEP
        if step > view.last_step and step * PROGRESS_STEP < 100:
            view.last_step = step
            self._emit(self._progress_line(view))

    def _progress_line(self, view: GroupView) -> Text:
        t = view.tracker
        text = Text()
        if self.show_timestamp:
            text.append(format_timestamp(None) + " ", style="dim")
        text.append("  " * self._group_indent(view))
        text.append(view.label, style="bold")
        text.append(" " + self._render_progress_bar(view.finished_items, t.total, self.bar_width))
        text.append(f"  {view.finished_items}/{t.total}")
        if t.failed:
            text.append(f" · {t.failed} failed", style="red")
        text.append(f" · {format_duration(time.monotonic() - t.start_time)}", style="dim")
        return text

    def _group_indent(self, view: GroupView) -> int:
        return view.address.count("/") if view.address else view.level

    def _header_text(self, view: GroupView, ev: EventView) -> Text:
        text = Text()
        if self.show_timestamp:
            text.append(format_timestamp(ev.timestamp) + " ", style="dim")
        text.append("  " * self._group_indent(view))
        text.append("▶ ", style="cyan")
        text.append(f"group '{view.label}'", style="bold")
        details = [f"{view.tracker.total} items"]
        if view.max_workers is not None:
            details.append(f"max {view.max_workers} workers")
        text.append(" started: " + ", ".join(details))
        return text

    def _group_summary(self, view: GroupView, ev: EventView) -> list[Text]:
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
            text.append(format_timestamp(ev.timestamp) + " ", style="dim")
        indent = "  " * self._group_indent(view)
        text.append(indent)
        text.append(f"{symbol} group '{view.label}' {word}", style=style)
        if self.show_progress:
            # Cancelled items never ran to an end: they are not "done", and show shaded.
            total = max(1, t.total)
            done = (t.completed + t.failed) / total
            bar = bar_text(done, SUMMARY_BAR, cancelled=t.cancelled / total)
            text.append(f" {bar} {percent_text(done)}")
        counts = f"  {t.completed}/{t.total} completed"
        if t.failed:
            counts += f", {t.failed} failed"
        if t.cancelled:
            counts += f", {t.cancelled} cancelled"
        if view.retries:
            counts += f", {view.retries} retr{'y' if view.retries == 1 else 'ies'}"
        text.append(counts)
        if view.duration is not None:
            text.append(f" in {format_duration(view.duration)}", style="dim")
        lines = [text]
        errors = view.message or categorize(t.errors)
        if errors and (t.failed or t.cancelled or view.timed_out):
            pad = " " * 13 if self.show_timestamp else ""
            lines.append(Text(f"{pad}{indent}    errors: {clean(errors)}", style="red"))
        return lines

    # -- live display (terminals)

    def _refresh_live(self) -> None:
        rows = snapshot_rows(self._open.values())
        self._bars.rows = rows
        if rows and not self._bars.active and self._wants_live():
            self._start_live()
        elif not rows and self._bars.active:
            self._stop_live()

    def _start_live(self) -> None:
        console = self._get_console()
        if console is None:  # pragma: no cover - _wants_live checked the terminal
            return
        stream = self.stream
        self._pinned = stream
        standard = stream is sys.stdout or stream is sys.stderr
        self._bars.start(console, self, redirect=standard)

    def _stop_live(self) -> None:
        try:
            stopped = self._bars.stop(self)
        finally:
            self._pinned = None
        if stopped:
            self._flush()

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
                line.append(f" in {format_duration(view.duration)}")
            lines.append(line)
        return lines


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
