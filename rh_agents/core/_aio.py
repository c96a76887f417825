"""Small asyncio helpers for structured cleanup, and outside work (private)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "cancel_and_wait",
    "loop_is_idle",
    "ordered_outside_work",
    "outside",
    "outside_waiting",
    "release_outside",
    "uninterrupted",
]


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> list[BaseException]:
    """Cancel ``tasks`` and wait until every one has finished.

    A cancellation of the caller while it waits does not cut the wait short (children
    must be finished before their parent leaves); it is re-raised afterwards. Returns the
    exceptions (other than cancellation) the tasks ended with, so none goes unretrieved.
    """
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    pending = {t for t in live if not t.done()}
    interrupted = False
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError:
            interrupted = True
    errors: list[BaseException] = []
    for task in live:
        if not task.cancelled():
            error = task.exception()
            if error is not None:
                errors.append(error)
    if interrupted:
        raise asyncio.CancelledError
    return errors


async def uninterrupted(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to the end even if the current task is cancelled meanwhile.

    Used to record a final status (CANCELLED) so the history never shows a start without
    its end. A cancellation that arrives while waiting is re-raised once the awaitable
    has finished, even when the awaitable failed (its error is retrieved, not raised:
    the caller was cancelled, and a cancelled caller must see its cancellation).
    """
    inner = asyncio.ensure_future(awaitable)
    interrupted = False
    while not inner.done():
        try:
            await asyncio.wait([inner])  # returns when it is done; never cancels it
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        if not inner.cancelled():
            inner.exception()
        raise asyncio.CancelledError
    return inner.result()


def loop_is_idle(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether nothing but the caller is ready to run on ``loop`` right now.

    asyncio has no public "is the loop idle?" query. CPython's event loops keep the
    callbacks that will run on the next iteration in the private deque ``_ready`` and
    timers in the heap ``_scheduled``; an empty ready queue and no timer already due
    means every other task is blocked on something (for the simulated clocks: on them).
    Loops without these attributes (uvloop, ...) are assumed idle, which the callers'
    several-checks-in-a-row requirement makes tolerable. A task waiting for outside work
    (:func:`outside`) does not make the loop busy: a simulated clock releases it first
    (:func:`release_outside`), then moves time.
    """
    ready: Sized | None = getattr(loop, "_ready", None)
    if ready is not None and len(ready) > 0:
        return False
    scheduled: list[asyncio.TimerHandle] | None = getattr(loop, "_scheduled", None)
    return not (scheduled and scheduled[0].when() <= loop.time())


# ------------------------------------------------------------------ outside work
# Work done outside the event loop that a task awaits: a journal commit on a writer
# thread or on another connection. With the real clock its completion wakes the task
# whenever it arrives. Simulated clocks (FakeClock, the demo's PacedClock) must not move
# time while such work is in flight, and must resume its waiters in a reproducible
# order, whatever the thread's timing: they register the loop here, and a waiter, once
# its work is done, waits for its turn, which the clock gives when nothing else can run,
# in the order the waits began.


class _Turns:
    def __init__(self) -> None:
        self.users = 0
        self.next_ticket = 0
        self.done: dict[int, asyncio.Future[None]] = {}  # ticket -> "its work finished"
        self.gates: dict[int, asyncio.Future[None]] = {}  # ticket -> "its turn came"
        self.wakers: set[asyncio.Event] = set()

    def forget(self, ticket: int) -> None:
        for table in (self.done, self.gates):
            future = table.pop(ticket, None)
            if future is not None and not future.done():
                future.set_result(None)


_turns: dict[asyncio.AbstractEventLoop, _Turns] = {}
"""The loops a simulated clock runs on (entries leave with the clock's block)."""


@contextmanager
def ordered_outside_work(loop: asyncio.AbstractEventLoop, waker: asyncio.Event) -> Iterator[None]:
    """While inside, the waiters of outside work on ``loop`` resume only when
    :func:`release_outside` gives them their turn; ``waker`` is set when a wait begins
    (a simulated clock's driver waits on it when nothing sleeps)."""
    turns = _turns.get(loop)
    if turns is None:
        turns = _turns[loop] = _Turns()
    turns.users += 1
    turns.wakers.add(waker)
    try:
        yield
    finally:
        turns.wakers.discard(waker)
        turns.users -= 1
        if not turns.users:
            del _turns[loop]
            for ticket in list(turns.done):
                turns.forget(ticket)


def outside(awaitable: Awaitable[T]) -> Awaitable[T]:
    """``awaitable``, work done outside the event loop, to await in its turn (see the
    comment above; with the real clock it is ``awaitable`` itself)."""
    loop = asyncio.get_running_loop()
    turns = _turns.get(loop)
    if turns is None:
        return awaitable
    return _in_turn(awaitable, turns, loop)


async def _in_turn(awaitable: Awaitable[T], turns: _Turns, loop: asyncio.AbstractEventLoop) -> T:
    ticket = turns.next_ticket
    turns.next_ticket += 1
    done: asyncio.Future[None] = loop.create_future()
    turns.done[ticket] = done
    for waker in turns.wakers:
        waker.set()
    try:
        result = await awaitable
        if not done.done():  # else the ordered block ended meanwhile: no turn to wait for
            gate: asyncio.Future[None] = loop.create_future()
            turns.gates[ticket] = gate
            done.set_result(None)
            await gate
    finally:
        turns.forget(ticket)
    return result


def outside_waiting(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether a task waits for outside work on ``loop`` (or for its turn after it)."""
    turns = _turns.get(loop)
    return turns is not None and bool(turns.done)


async def release_outside(loop: asyncio.AbstractEventLoop) -> bool:
    """Give the earliest waiter of outside work its turn, once its work is done.

    Called by a simulated clock's driver when the loop is otherwise idle, before it
    moves time. Returns False when no task waits for outside work.
    """
    turns = _turns.get(loop)
    if turns is None or not turns.done:
        return False
    ticket = min(turns.done)
    await asyncio.wait([turns.done[ticket]])
    gate = turns.gates.get(ticket)
    if gate is not None and not gate.done():
        gate.set_result(None)
    return True
