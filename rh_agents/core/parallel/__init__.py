"""Parallel groups: run independent work concurrently, with limits and resilience.

::

    async with state.parallel(max_workers=4, name="docs") as p:
        for doc in docs:
            p.add(lambda doc=doc: summarize(doc, state), name=doc.id)
        results = await p.gather()

Design:

* A pool of at most ``max_workers`` worker tasks pulls items in add order; factories are
  called only when a worker is free, so a group of 100 000 items holds at most
  ``max_workers`` running coroutines. The time an item waits for a worker is measured
  (telemetry's semaphore wait). A shared :class:`~rh_agents.core.limiter.Limiter` caps
  concurrency across groups on top of that.
* Each item runs under its own item frame, so its address (``.../parallel:docs[3]/...``)
  depends on its index, never on completion order, and group ids derive from the parent
  address, the group name and its ordinal: the same program gives the same ids on every
  run, which is what makes replay possible.
* Failures: FAIL_SLOW (default) records them as ``ok=False`` results; FAIL_FAST cancels
  the running items, never starts queued ones and re-raises the first error. An
  ExecutionEvent call returning ``ok=False`` is a failure like an exception. An error of
  the group's own machinery (a raising ``retry_on`` predicate, a failing limiter, a
  history that cannot be written) stops the group under either strategy.
* The group's :class:`~rh_agents.core.policy.Policy` (or the shortcut arguments that
  build one) guards every attempt, as an actor's policy guards its calls: retries back
  off exponentially with jitter (through the injectable clock) without holding a worker;
  circuit breakers reject calls without running them while open; a per-attempt timeout
  cancels an attempt that takes too long.
* Every exit path (success, FAIL_FAST, timeout, leaving ``stream()``, an exception in the
  ``async with`` body, external cancellation) cancels and awaits all work of the group,
  also when another task runs ``gather()``: the block owns the group.

The package, one module per part of a group's life:

* :mod:`.group`: :class:`ParallelExecutionManager`, the ``async with`` block users hold
  (arguments, ``add``, collecting, leaving the block); :mod:`.config` checks its
  arguments and :mod:`.items` the items it is given.
* :mod:`.run`: one run of the group (start, workers, deadline, how it ended).
* :mod:`.scheduler`: which item runs next, the worker tasks, the deadline.
* :mod:`.attempt`: one attempt of one item (its policy's guards, executor, retry).
* :mod:`.lending`: limiter permits lent by waiting items to their nested groups.
* :mod:`.results`: the result of every item, the group's events and summaries.
* :mod:`.models` and :mod:`.errors`: what users and printers read (the group's state,
  its enums) and the errors a group raises.
"""

from __future__ import annotations

from rh_agents.core.parallel.errors import ParallelGroupError, ParallelTimeoutError
from rh_agents.core.parallel.group import ParallelExecutionManager
from rh_agents.core.parallel.models import (
    ErrorStrategy,
    GroupStatistics,
    GroupStatus,
    ParallelDisplayMode,
    ParallelEventGroup,
    ParallelGroupTracker,
)

__all__ = [
    "ErrorStrategy",
    "GroupStatistics",
    "GroupStatus",
    "ParallelDisplayMode",
    "ParallelEventGroup",
    "ParallelExecutionManager",
    "ParallelGroupError",
    "ParallelGroupTracker",
    "ParallelTimeoutError",
]
