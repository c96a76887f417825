"""A small process-pool :class:`~rh_agents.core.executors.ItemExecutor` for P6.

rh_agents ships a full one (:class:`rh_agents.executors.ProcessPoolItemExecutor`,
measured by P8); this minimal one, kept for P6, shows that the ``ItemExecutor`` seam
alone is enough to run CPU-bound items in other processes while the group keeps its
semantics (limits, retries, results, telemetry) in the event loop::

    pool = ProcessPoolExecutor(max_workers=os.cpu_count())
    async with state.parallel(max_workers=2, executor=ProcessPoolItemExecutor(pool)) as p:
        p.add(ProcessCall(cpu_work, (1_000_000,)))
        results = await p.gather()

An item is a :class:`ProcessCall`: a picklable top-level function and its arguments.
The group hands the executor a ``WorkItem`` whose ``factory`` returns the item's
awaitable; for a ProcessCall that awaitable is an :class:`Offload` describing the call,
which the executor runs in the pool (``loop.run_in_executor``) instead of awaiting it.
Anywhere else (the default AsyncioExecutor) an Offload runs the function inline, in the
event loop, which gives no speedup for CPU-bound work (see P6).

Cancellation cancels the waiting future only: a call already running in a worker process
finishes there and its result is dropped (concurrent.futures cannot interrupt it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from rh_agents.core.errors import InvalidWorkError
from rh_agents.core.executors import WorkItem

__all__ = ["Offload", "ProcessCall", "ProcessPoolItemExecutor"]


class Offload:
    """The awaitable of a :class:`ProcessCall`: ``fn(*args)``, inline when awaited."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args

    def __await__(self) -> Generator[Any, None, Any]:
        return self._inline().__await__()

    async def _inline(self) -> Any:
        return self.fn(*self.args)


@dataclass(frozen=True, slots=True)
class ProcessCall:
    """A group item: a picklable top-level function and its (picklable) arguments."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()

    def __call__(self) -> Offload:
        return Offload(self.fn, self.args)


class ProcessPoolItemExecutor:
    """Runs each attempt of a :class:`ProcessCall` item in ``pool`` (an Executor)."""

    def __init__(self, pool: Executor) -> None:
        self.pool = pool

    async def run(self, item: WorkItem) -> Any:
        work = item.factory()
        if not isinstance(work, Offload):
            close = getattr(work, "close", None)
            if close is not None:
                close()
            raise InvalidWorkError(
                f"Item {item.index} ('{item.name}') is not a ProcessCall; a process-pool "
                "executor can only run picklable functions: p.add(ProcessCall(fn, args))."
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, work.fn, *work.args)
