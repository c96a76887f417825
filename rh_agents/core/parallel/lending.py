"""Limiter permits held by running attempts, and lent to the nested groups they wait for.

The permits are taken by the guarded attempt (:mod:`rh_agents.core._guarded`) of an item,
or of an actor call whose policy has a limiter. While such an attempt waits for a nested
group that uses the same limiter, its permit is lent to that group (released, then taken
back when the nested group ends): an attempt waiting for its children does not use the
resource itself, and keeping the permit would deadlock as soon as every permit is held
by a waiting parent.
"""

from __future__ import annotations

import asyncio

from rh_agents.core._guarded import Hold, holds
from rh_agents.core.limiter import Limiter

__all__ = ["Hold", "holds", "lend", "reclaim"]


def lend(limiter: Limiter | None) -> list[Hold]:
    """Lend the enclosing items' permits of ``limiter`` to a group that starts; returns
    what was lent, for :func:`reclaim`."""
    lent: list[Hold] = []
    if limiter is None:
        return lent
    for hold in holds.get():
        if hold.limiter is limiter and (hold.held or hold.lent):
            if hold.held:
                hold.held = False
                limiter.release()
            hold.lent += 1
            lent.append(hold)
    return lent


async def reclaim(lent: list[Hold]) -> None:
    """Take back the permits lent by :func:`lend` (not while being cancelled)."""
    task = asyncio.current_task()
    cancelling = task is not None and task.cancelling() > 0
    for hold in lent:
        hold.lent -= 1
        if hold.lent == 0 and not hold.held and not cancelling:
            await hold.limiter.acquire()
            hold.held = True
