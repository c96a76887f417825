"""The event bus under load (issue 15, item 11).

An async subscriber that took 1 ms lost events in a 0.5 s run of a 50-worker group: the
bus charged each concurrent delivery's whole wait to the subscriber's time allowance, so
50 deliveries waiting side by side used it up 50 times as fast as the run was held up.

Time here is the event loop's own clock, moved by the subscriber itself (a delivery
"takes 1 ms" by moving the loop's clock 1 ms on), so what the bus measures does not depend
on how busy the machine is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rh_agents import ExecutionEvent, ExecutionState, Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.types import ExecutionStatus

ITEMS = 500  # 1,000 item events and the group's two: 1,002 events


class SteppedLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the test moves it: what the bus
    measures is exactly what the subscriber says it took, however loaded the machine."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


def run_stepped(main: Callable[[SteppedLoop], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=SteppedLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, SteppedLoop)
        runner.run(main(loop))


async def echo(data: int, extra: dict[str, Any], state: Any) -> int:
    return data


async def run_group(bus: EventBus, items: int = ITEMS) -> None:
    state = ExecutionState(event_bus=bus)
    tool = Tool(name="echo", handler=echo)
    async with state.parallel(max_workers=50, name="load") as p:
        for i in range(items):
            p.add(lambda i=i: ExecutionEvent(actor=tool)(i, {}, state))


def test_a_1ms_async_subscriber_receives_every_event_of_a_50_worker_group_in_order() -> None:
    bus = EventBus()  # the default allowance: 5 s of holding up the run
    published: list[Any] = []
    received: list[Any] = []

    async def main(loop: SteppedLoop) -> None:
        async def one_millisecond(event: Any) -> None:
            received.append(event)
            loop.step(0.001)  # the delivery takes 1 ms of the loop's time
            await asyncio.sleep(0)  # and lets the other workers publish meanwhile

        bus.subscribe(published.append)  # sync: sees the publish order
        bus.subscribe(one_millisecond)
        await run_group(bus)

    run_stepped(main)
    assert len(published) == 2 * ITEMS + 2
    assert received == published  # every event, in publish order
    stats = bus.subscriber_stats()[1]
    assert (stats["detached"], stats["timeouts"], stats["dropped"]) == (False, 0, 0)
    assert (bus.dropped_events, bus.subscriber_timeouts) == (0, 0)
    # charged the 1,002 ms the deliveries took (once), not 50 times that
    assert stats["inline_seconds"] == pytest.approx((2 * ITEMS + 2) * 0.001)


def test_every_event_a_stuck_subscriber_misses_is_counted_as_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(subscriber_timeout=0.05)
    published: list[Any] = []
    calls = 0

    async def stuck(event: Any) -> None:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()

    async def main() -> None:
        bus.subscribe(published.append)
        bus.subscribe(stuck)
        await run_group(bus, items=10)  # (real time: the cut-offs must come)
        await bus.aclose()  # drops what is still queued for it

    with caplog.at_level(logging.WARNING, logger="rh_agents.execution"):
        asyncio.run(main())
    stats = bus.subscriber_stats()[1]
    assert stats["detached"] and calls >= 1
    # it received nothing in full: every event is counted, cut off or never delivered
    assert bus.dropped_events == stats["dropped"] == len(published) == 22
    cut_off = [r for r in caplog.records if "that event is lost for it" in r.getMessage()]
    assert len(cut_off) == 1  # logged once, then counted


# ------------------------------------------------- terminal events are never dropped


def _event(address: str, status: ExecutionStatus) -> ExecutionEvent[Any]:
    return ExecutionEvent(address=address, execution_status=status)


async def test_a_full_stream_drops_progress_but_never_a_terminal_event() -> None:
    bus = EventBus()
    stream = bus.stream(maxsize=2)
    statuses = [ExecutionStatus.STARTED, ExecutionStatus.RETRYING, ExecutionStatus.STARTED]
    statuses += [ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED]
    for n, status in enumerate(statuses):
        await bus.publish(_event(f"a{n}", status))
    bus.close()
    got = [(e.address, e.execution_status) async for e in stream]
    assert got == [
        ("a0", ExecutionStatus.STARTED),
        ("a1", ExecutionStatus.RETRYING),
        ("a3", ExecutionStatus.COMPLETED),
        ("a4", ExecutionStatus.FAILED),
        ("a5", ExecutionStatus.CANCELLED),
    ]
    assert stream.dropped == 1


async def test_a_detached_subscribers_full_queue_keeps_terminal_events() -> None:
    bus = EventBus(subscriber_timeout=0.01, subscriber_queue_size=2)
    release = asyncio.Event()
    received: list[str] = []

    async def blocked(event: Any) -> None:
        await release.wait()
        received.append(event.address)

    bus.subscribe(blocked)
    # The first delivery uses up the allowance: the subscriber is detached.
    await bus.publish(_event("first", ExecutionStatus.STARTED))
    assert bus.subscriber_stats()[0]["detached"]
    release.set()
    for n in range(4):
        await bus.publish(_event(f"s{n}", ExecutionStatus.STARTED))
    await bus.publish(_event("done", ExecutionStatus.COMPLETED))
    await bus.drain()
    await bus.aclose()
    # "first" was cut off; of the four progress events queued behind a queue of two,
    # two were dropped; the terminal event got through the full queue
    assert received == ["s0", "s1", "done"]
    assert bus.dropped_events == 1 + 2
