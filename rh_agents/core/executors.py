"""Where the items of a parallel group run.

A parallel group keeps all of its semantics (limits, retries, circuit breakers,
deadlines, history, spans, metrics) in the coordinator and hands each attempt of an
item to an :class:`ItemExecutor`. The default, :class:`AsyncioExecutor`, simply awaits
the item in the worker task; other executors (process pools, distributed engines) can
run the work elsewhere without the group logic changing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["ASYNCIO_EXECUTOR", "AsyncioExecutor", "ItemExecutor", "WorkItem"]


@dataclass(slots=True)
class WorkItem:
    """One attempt of one item, as handed to an executor.

    Attributes:
        index: the item's position in its group.
        name: the item's name.
        group_id: the deterministic id of the group.
        attempt: 1 for the first attempt.
        factory: returns the awaitable to run (called once per attempt).
    """

    index: int
    name: str
    group_id: str
    attempt: int
    factory: Callable[[], Awaitable[Any]]


@runtime_checkable
class ItemExecutor(Protocol):
    """Runs one attempt of a group item and returns its value (or raises)."""

    async def run(self, item: WorkItem) -> Any:
        """Run ``item`` to completion; cancellation of the caller must cancel the work."""
        ...


class AsyncioExecutor:
    """Runs items in the current event loop, inside the group's worker task."""

    async def run(self, item: WorkItem) -> Any:
        return await item.factory()


ASYNCIO_EXECUTOR = AsyncioExecutor()
