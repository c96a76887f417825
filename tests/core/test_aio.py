"""The private asyncio helpers the core's cleanup and the simulated clocks rely on."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from rh_agents.core._aio import (
    cancel_and_wait,
    loop_is_idle,
    ordered_outside_work,
    outside,
    outside_waiting,
    release_outside,
    uninterrupted,
)


async def test_cancel_and_wait_finishes_the_children_before_a_cancelled_caller_leaves() -> None:
    finished: list[str] = []

    async def child(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)  # cleanup that takes a while
            finished.append(name)

    async def failing() -> None:
        raise ValueError("boom")

    children = [asyncio.create_task(child("a")), asyncio.create_task(child("b"))]
    broken = asyncio.create_task(failing())
    await asyncio.sleep(0)
    assert await cancel_and_wait([broken, None]) == [broken.exception()]

    waiter = asyncio.create_task(cancel_and_wait(children))
    await asyncio.sleep(0)
    waiter.cancel()  # the caller is cancelled while its children clean up
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert sorted(finished) == ["a", "b"] and all(c.done() for c in children)


async def test_uninterrupted_runs_to_the_end_then_reraises_the_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: list[str] = []

    async def record(fail: bool) -> str:
        await asyncio.sleep(0.01)
        done.append("recorded")
        if fail:
            raise OSError("disk full")
        return "ok"

    assert await uninterrupted(record(False)) == "ok"
    for fail in (False, True):
        task = asyncio.create_task(uninterrupted(record(fail)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert done == ["recorded"] * 3
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
        await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text  # the failure was retrieved


async def test_a_loop_is_busy_with_a_ready_callback_or_a_due_timer() -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0)
    assert loop_is_idle(loop)
    handle = loop.call_soon(lambda: None)
    assert not loop_is_idle(loop)
    handle.cancel()
    await asyncio.sleep(0)
    later = loop.call_later(60, lambda: None)
    assert loop_is_idle(loop)  # a timer in the future is not work now
    now = loop.time()
    due = loop.call_at(now, lambda: None)
    loop.time = lambda: now  # type: ignore[method-assign]  # time stands still: due exactly now
    try:
        assert not loop_is_idle(loop)
    finally:
        del loop.time
    due.cancel()
    later.cancel()


def test_a_loop_without_cpythons_queues_counts_as_idle() -> None:
    # uvloop and other loops have neither _ready nor _scheduled.
    class OtherLoop:
        def time(self) -> float:
            return 0.0

    assert loop_is_idle(OtherLoop())  # type: ignore[arg-type]


async def test_outside_work_resumes_in_the_order_the_waits_began() -> None:
    loop = asyncio.get_running_loop()
    assert await release_outside(loop) is False
    first_work, second_work = loop.create_future(), loop.create_future()
    assert outside(first_work) is first_work  # no simulated clock: the awaitable itself
    resumed: list[str] = []

    async def wait(name: str, work: asyncio.Future[Any]) -> Any:
        result = await outside(work)
        resumed.append(name)
        return result

    waker = asyncio.Event()
    with ordered_outside_work(loop, waker):
        assert not outside_waiting(loop)
        first = asyncio.create_task(wait("first", first_work))
        await asyncio.sleep(0)
        second = asyncio.create_task(wait("second", second_work))
        await asyncio.sleep(0)
        assert waker.is_set() and outside_waiting(loop)
        second_work.set_result(2)  # the later wait's work finishes first
        first_work.set_result(1)
        for _ in range(3):
            await asyncio.sleep(0)
        assert resumed == []  # nobody resumes before its turn is given
        assert await release_outside(loop) is True
        await asyncio.sleep(0)
        assert resumed == ["first"]
        assert await release_outside(loop) is True
        assert (await first, await second) == (1, 2)
        assert resumed == ["first", "second"]
        assert not outside_waiting(loop) and await release_outside(loop) is False


async def test_leaving_the_ordered_block_releases_whoever_still_waits() -> None:
    loop = asyncio.get_running_loop()
    work = loop.create_future()
    with ordered_outside_work(loop, asyncio.Event()):
        waiter = asyncio.create_task(outside(work))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        work.set_result("late")
        await asyncio.sleep(0)
        assert not waiter.done()
    assert await asyncio.wait_for(waiter, timeout=5) == "late"
    assert not outside_waiting(loop)


async def test_three_waits_resume_in_the_order_they_began() -> None:
    loop = asyncio.get_running_loop()
    works = [loop.create_future() for _ in range(3)]
    resumed: list[int] = []

    async def wait(n: int) -> None:
        await outside(works[n])
        resumed.append(n)

    with ordered_outside_work(loop, asyncio.Event()):
        waiters = []
        for n in range(3):
            waiters.append(asyncio.create_task(wait(n)))
            await asyncio.sleep(0)
        for work in reversed(works):  # the work finishes in the opposite order
            work.set_result(None)
        for expected in ([0], [0, 1], [0, 1, 2]):
            assert await release_outside(loop) is True
            for _ in range(3):
                await asyncio.sleep(0)
            assert resumed == expected
        await asyncio.gather(*waiters)


async def test_a_release_pending_when_the_ordered_block_ends_returns_quietly() -> None:
    # The clock's driver waits for the earliest work; the block ends meanwhile (the
    # clock is closed), which releases the waiter without a turn: nothing to give.
    loop = asyncio.get_running_loop()
    work = loop.create_future()
    with ordered_outside_work(loop, asyncio.Event()):
        waiter = asyncio.create_task(outside(work))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        release = asyncio.create_task(release_outside(loop))
        await asyncio.sleep(0)
        assert not release.done()
    assert await asyncio.wait_for(release, timeout=5) is True
    work.set_result("done")
    assert await asyncio.wait_for(waiter, timeout=5) == "done"
