"""Event-bus subscribers that show a run in a terminal (compatibility module).

The printers live in the :mod:`rh_agents.printing` package; this module re-exports
them, so ``from rh_agents.bus_handlers import ParallelEventPrinter`` keeps working.
"""

from __future__ import annotations

from rh_agents.printing import EventPrinter, ParallelEventPrinter

__all__ = ["EventPrinter", "ParallelEventPrinter"]
