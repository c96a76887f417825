"""Small asyncio helpers for structured cleanup (private)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sized
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["cancel_and_wait", "loop_is_idle", "uninterrupted"]


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
    has finished.
    """
    inner = asyncio.ensure_future(awaitable)
    interrupted = False
    while not inner.done():
        try:
            await asyncio.shield(inner)
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
    several-checks-in-a-row requirement makes tolerable.
    """
    ready: Sized | None = getattr(loop, "_ready", None)
    if ready is not None and len(ready) > 0:
        return False
    scheduled: list[asyncio.TimerHandle] | None = getattr(loop, "_scheduled", None)
    return not (scheduled and scheduled[0].when() <= loop.time())
