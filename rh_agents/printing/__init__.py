"""Terminal output: event-bus subscribers that show a run in a terminal or a log.

:class:`EventPrinter` (:mod:`.event_printer`) prints one line per event, indented by the
event's depth in the call tree. :class:`ParallelEventPrinter` (:mod:`.parallel_printer`)
adds parallel-group awareness: in ``REALTIME`` mode item events are printed as they
arrive, labelled with their group and position; in ``PROGRESS`` mode they are folded
into one live progress bar per running group (drawn with ``rich`` on a terminal, plain
lines at 25% steps anywhere else).

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

The shared formatting (event lines, durations, bars, wrapping) is in :mod:`._format`,
the per-group bookkeeping of the parallel printer in :mod:`._groups` and its live bars
in :mod:`._live`. A printer is only a bus subscriber: the core knows nothing of it.
"""

from __future__ import annotations

from rh_agents.printing.event_printer import EventPrinter
from rh_agents.printing.parallel_printer import ParallelEventPrinter

__all__ = ["EventPrinter", "ParallelEventPrinter"]
