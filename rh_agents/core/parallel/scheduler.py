"""Which item runs next, the worker tasks that run them, and the group's deadline.

At most ``max_workers`` workers pull items, the highest ``priority`` first and in add
order among equals (``p.add(..., priority=n)``); a factory is called only when
a worker is free, so a group of 100 000 items holds at most ``max_workers`` running
coroutines. A retry waits out its backoff in a queue of its own, without holding a
worker, and goes before the items that have not started yet once it is due. A group
of one worker and no deadline runs its worker inline, in the task that collects the
results (see :class:`~rh_agents.core.parallel.run.GroupRun`).
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rh_agents.core.clock import Clock
    from rh_agents.core.parallel.items import Item

__all__ = ["Scheduler"]


class Scheduler:
    """The order in which the items of one run start, and the workers that start them.

    Attributes:
        items: every item, in add order.
        waiting: the items that have not started when their priorities differ, as a
            heap of ``(-priority, index)``: the highest priority first, add order among
            equals. While every waiting item has the same priority (the common case)
            they wait in ``_fifo`` instead, a queue of indices in add order: no tuple
            per item and no heap to sift.
        delayed: retries waiting out their backoff, as ``(ready_at, index, item)``.
        backing_off: indices of the items waiting out a backoff (in ``delayed``, or
            popped by a worker that sleeps the rest of it).
        workers: the worker tasks (none when the worker runs inline).
        inline: whether the single worker runs in the collecting task.
        stopping: no further item starts (failure, deadline, cancellation).
        timed_out: the group's deadline passed.
    """

    __slots__ = (
        "_clock",
        "_fifo",
        "_priority",
        "backing_off",
        "delayed",
        "inline",
        "items",
        "stopping",
        "timed_out",
        "waiting",
        "workers",
    )

    def __init__(self, items: list[Item], clock: Clock) -> None:
        self._clock = clock
        self.items: list[Item] = items
        self.waiting: list[tuple[int, int]] = []
        self._fifo: deque[int] | None = None
        priority = self._priority = items[0].priority if items else 0
        if len(items) < 2 or all(item.priority == priority for item in items):
            self._fifo = deque(range(len(items)))  # an item's index is its place in items
        else:
            self.waiting = [(-item.priority, item.index) for item in items]
            heapq.heapify(self.waiting)
        self.delayed: list[tuple[float, int, Item]] = []
        self.backing_off: set[int] = set()
        self.workers: list[asyncio.Task[None]] = []
        self.inline: bool = False
        self.stopping: bool = False
        self.timed_out: bool = False

    def queued(self) -> int:
        """Items that have not started their first attempt yet."""
        fifo = self._fifo
        return len(fifo) if fifo is not None else len(self.waiting)

    def next(self) -> Item | None:
        """The item to run next, or None when nothing is left to start."""
        # A retry whose backoff has passed goes before items that have not started yet,
        # so a long queue does not postpone it indefinitely.
        if self.delayed and self.delayed[0][0] <= self._clock.monotonic():
            return heapq.heappop(self.delayed)[2]
        fifo = self._fifo
        if fifo is not None:
            if fifo:
                return self.items[fifo.popleft()]
        elif self.waiting:
            return self.items[heapq.heappop(self.waiting)[1]]
        if self.delayed:
            return heapq.heappop(self.delayed)[2]
        return None

    def push(self, item: Item) -> None:
        """An item added while the group runs waits for a worker like the others."""
        fifo = self._fifo
        if fifo is not None:
            if not fifo:
                self._priority = item.priority  # nothing waits: any priority is uniform
            if item.priority == self._priority and (not fifo or item.index > fifo[-1]):
                fifo.append(item.index)  # add order is index order
                return
            # Priorities differ from now on: the waiting items (one priority, in add
            # order, so already in heap order) move to the heap.
            self.waiting = [(-self._priority, index) for index in fifo]
            self._fifo = None
        heapq.heappush(self.waiting, (-item.priority, item.index))

    def retry_later(self, item: Item, delay: float) -> None:
        """Run ``item`` again once ``delay`` seconds have passed."""
        item.ready_at = self._clock.monotonic() + delay
        heapq.heappush(self.delayed, (item.ready_at, item.index, item))
        self.backing_off.add(item.index)

    def resumed(self, item: Item) -> None:
        """A retried item starts its next attempt."""
        self.backing_off.discard(item.index)

    def stop(self) -> None:
        """Start no further item and cancel the running ones (the other workers)."""
        self.stopping = True
        me = asyncio.current_task()
        for worker in self.workers:
            if worker is not me:
                worker.cancel()

    async def work(
        self,
        attempt: Callable[[Item], Awaitable[None]],
        crash: Callable[[Item | None, Exception], None],
    ) -> None:
        """One worker: run attempts of the next items until none is left or the group
        stops. An exception that is not an item's own failure goes to ``crash``."""
        clock = self._clock
        item: Item | None = None
        inline = self.inline
        task = asyncio.current_task() if inline else None
        try:
            while not self.stopping:
                if inline and task is not None and task.cancelling():
                    # An item swallowed the cancellation of the task running the group
                    # inline: stop here rather than run the rest of the queue.
                    raise asyncio.CancelledError
                item = self.next()
                if item is None:
                    return
                if item.attempts:  # a retry, ready after its backoff (first attempts are)
                    delay = item.ready_at - clock.monotonic()
                    if delay > 0:
                        await clock.sleep(delay)
                        if self.stopping:  # pragma: no cover - stopping cancels the sleep first
                            return
                await attempt(item)
        except Exception as exc:
            # Not the item's work (its errors are results): the group's own machinery
            # failed around it. Going on would hide the error and run the rest anyway.
            crash(item, exc)

    async def watchdog(self, seconds: float, finished: Callable[[], bool]) -> None:
        """Stop the group when its deadline passes before every item ``finished``."""
        await self._clock.sleep(seconds)
        if finished():
            return  # everything finished at the deadline itself: not a timeout
        self.timed_out = True
        self.stop()
