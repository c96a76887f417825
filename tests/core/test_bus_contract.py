"""What a user of the EventBus relies on (docs/errors.md, "Subscribers cannot stall a run").

The defaults and validation of its parameters, what a stuck, slow or failing subscriber
costs (itself only), when it is detached and how it is then served in the background,
what is counted in the statistics and logged (and in which words), what ``drain`` and
``aclose`` promise, and how streams end and drop events.

Cut-offs are the bus's own timeouts, in real time: the tests wait for outcomes (``drain``,
``aclose``), never for a time, and every test runs under a generous guard so a bus that
no longer cuts anything off fails instead of hanging. Where the time charged to a
subscriber matters, the event loop's clock is moved by the subscriber itself
(:class:`SteppedLoop`), so what the bus measures does not depend on the machine's load.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from test_bus_under_load import SteppedLoop, run_stepped

from rh_agents.core.bus import (
    DEFAULT_SUBSCRIBER_QUEUE_SIZE,
    DEFAULT_SUBSCRIBER_TIMEOUT,
    EventBus,
)
from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.types import ExecutionStatus

S = ExecutionStatus
LOGGER = "rh_agents.execution"
GUARD = 10.0  # seconds: far above what any test here needs; a hang fails the test
CUT = 0.25  # a subscriber_timeout that cuts a stuck delivery off soon, yet far above
# what a delivery that does not get stuck takes on a loaded machine


def ev(address: str, status: ExecutionStatus = S.STARTED) -> ExecutionEvent[Any]:
    return ExecutionEvent(address=address, execution_status=status)


class Scripted:
    """An async subscriber whose behaviour is chosen per event address: ``take`` (the
    default: receive it, yielding to the loop meanwhile), ``instant`` (receive it without
    yielding), ``stuck`` (never return), ``raise`` (a ValueError), ``timeout`` (its own
    TimeoutError), ``cancel`` (its own CancelledError) or ``gate`` (wait for
    :attr:`gate`, then receive it)."""

    def __init__(
        self, name: str, script: dict[str, str] | None = None, default: str = "take"
    ) -> None:
        self.name = name
        self.script = script or {}
        self.default = default
        self.gate = asyncio.Event()
        self.received: list[str] = []
        self.active = 0
        self.max_active = 0

    def __repr__(self) -> str:
        return f"<{self.name}>"

    async def __call__(self, event: Any) -> None:
        action = self.script.get(event.address, self.default)
        if action == "stuck":
            await asyncio.Event().wait()
        elif action == "instant":
            self.received.append(event.address)
            return
        elif action == "raise":
            raise ValueError(f"bug on {event.address}")
        elif action == "timeout":
            raise TimeoutError(f"its own, on {event.address}")
        elif action == "cancel":
            raise asyncio.CancelledError
        elif action == "gate":
            await self.gate.wait()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        for _ in range(3):
            await asyncio.sleep(0)  # lets other deliveries run meanwhile, if any would
        self.active -= 1
        self.received.append(event.address)


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def no_other_tasks() -> None:
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert not others, others


# ------------------------------------------------------------ parameters and defaults


def test_the_defaults_are_five_seconds_and_ten_thousand_queued_events() -> None:
    bus = EventBus()
    assert bus.subscriber_timeout == DEFAULT_SUBSCRIBER_TIMEOUT == 5.0
    assert bus.subscriber_queue_size == DEFAULT_SUBSCRIBER_QUEUE_SIZE == 10_000
    timeout = EventBus(subscriber_timeout=2).subscriber_timeout
    assert timeout == 2.0 and isinstance(timeout, float)
    assert EventBus(subscriber_timeout=None).subscriber_timeout is None  # no bound


def test_a_queue_of_one_event_is_allowed() -> None:
    assert EventBus(subscriber_queue_size=1).subscriber_queue_size == 1


@pytest.mark.parametrize("bad", [0, -1, True, False, 1.5, "5", None])
def test_a_queue_size_that_is_not_a_positive_integer_is_rejected_in_these_words(
    bad: Any,
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        EventBus(subscriber_queue_size=bad)
    assert str(caught.value) == (
        f"subscriber_queue_size must be a positive integer, got {bad!r}. The default is 10000."
    )


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), float("inf"), "5", True])
def test_a_timeout_that_is_not_a_positive_number_is_rejected_in_these_words(bad: Any) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        EventBus(subscriber_timeout=bad)
    assert str(caught.value) == (
        "subscriber_timeout must be a positive number of seconds or None (no bound), "
        f"got {bad!r}. The default is 5."
    )


def test_an_object_whose_print_event_is_not_callable_is_rejected_in_these_words() -> None:
    class NotAPrinter:
        print_event = "not a method"

        def __repr__(self) -> str:
            return "<not a printer>"

    with pytest.raises(InvalidArgumentError) as caught:
        EventBus().subscribe(NotAPrinter())
    assert str(caught.value) == (
        "Cannot subscribe <not a printer>: pass a callable taking the event, or an object "
        "with a print_event(event) method."
    )


# ------------------------------------------------------------------- has_listeners


async def test_has_listeners_follows_subscribers_and_open_streams() -> None:
    bus = EventBus()
    assert not bus.has_listeners()
    handler = Scripted("handler")
    bus.subscribe(handler)
    assert bus.has_listeners()
    bus.unsubscribe(handler)
    assert not bus.has_listeners()

    stream = bus.stream()
    assert bus.has_listeners()
    await stream.aclose()  # closed by its reader
    assert not bus.has_listeners()

    bus.stream()
    bus.close()  # ended by the bus
    assert not bus.has_listeners()


def test_a_subclass_of_the_bus_always_has_listeners() -> None:
    class ForwardingBus(EventBus):
        """Publishes elsewhere too (the bus cannot know where)."""

    assert ForwardingBus().has_listeners()


# ------------------------------------------------------------- statistics, errors


async def test_subscriber_stats_name_each_figure_per_subscriber(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    seen: list[Any] = []

    def broken(event: Any) -> None:
        raise RuntimeError(f"bug on {event.address}")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for name in ("a", "b", "c"):
            await bus.publish(ev(name))
    assert [e.address for e in seen] == ["a", "b", "c"]
    assert bus.subscriber_stats() == [
        {
            "subscriber": broken,
            "errors": 3,
            "timeouts": 0,
            "inline_seconds": 0.0,
            "detached": False,
            "queued": 0,
            "dropped": 0,
        },
        {
            "subscriber": seen.append,
            "errors": 0,
            "timeouts": 0,
            "inline_seconds": 0.0,
            "detached": False,
            "queued": 0,
            "dropped": 0,
        },
    ]
    assert (bus.subscriber_errors, bus.subscriber_timeouts, bus.dropped_events) == (3, 0, 0)


async def test_the_first_error_of_a_subscriber_is_logged_with_its_traceback_the_rest_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    broken = Scripted("broken", default="raise")
    bus.subscribe(broken)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for name in ("first", "second", "third"):
            await bus.publish(ev(name))
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (
            logging.ERROR,
            "Event subscriber <broken> raised; it is isolated and the run continues "
            "(further errors from it are logged at debug level).",
        ),
        (logging.DEBUG, "Event subscriber <broken> raised again"),
        (logging.DEBUG, "Event subscriber <broken> raised again"),
    ]
    # each record carries the traceback of its own error, the first one first
    tracebacks = [r.exc_info for r in records]
    assert all(t is not None and t[1] is not None for t in tracebacks)
    assert [str(t[1]) for t in tracebacks if t] == [
        "bug on first",
        "bug on second",
        "bug on third",
    ]
    assert bus.subscriber_stats()[0]["errors"] == bus.subscriber_errors == 3


# ------------------------------------------------------------- cut off and detached


async def test_a_stuck_subscriber_is_cut_off_detached_and_costs_the_others_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(subscriber_timeout=CUT)
    stuck = Scripted("stuck", default="stuck")
    after: list[str] = []
    bus.subscribe(stuck)
    bus.subscribe(lambda event: after.append(event.address))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        async with asyncio.timeout(GUARD):
            for name in ("e1", "e2", "e3"):
                await bus.publish(ev(name))
            # e1 was cut off inline; e2 and e3 are cut off in the background
            assert await bus.drain() is True
    # a subscriber after it received every event, inline
    assert after == ["e1", "e2", "e3"]
    stats = bus.subscriber_stats()[0]
    assert stats["detached"] is True
    # a cut-off is a timeout and a lost event, not an error of the subscriber
    assert (stats["timeouts"], stats["dropped"], stats["errors"], stats["queued"]) == (3, 3, 0, 0)
    assert (bus.subscriber_timeouts, bus.dropped_events, bus.subscriber_errors) == (3, 3, 0)
    assert messages(caplog, logging.WARNING) == [
        "A delivery to event subscriber <stuck> was cut off after its time allowance "
        "(subscriber_timeout 0.25s); that event is lost for it (counted in "
        "EventBus.dropped_events).",
        "Event subscriber <stuck> held up the run for 0.25s in total (subscriber_timeout); "
        "it now receives events in the background (at most 10000 queued, further events "
        "dropped for it) so it cannot stall the run.",
    ]
    assert messages(caplog, logging.DEBUG) == ["Event subscriber <stuck> was cut off again"] * 2
    assert not messages(caplog, logging.ERROR)
    await bus.aclose()
    no_other_tasks()


async def test_a_detached_subscriber_gets_its_events_in_order_one_at_a_time_in_a_named_task() -> (
    None
):
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    try:
        bus = EventBus(subscriber_timeout=CUT)
        slow = Scripted("slow", {"e1": "stuck"})
        bus.subscribe(slow)
        async with asyncio.timeout(GUARD):
            await bus.publish(ev("e1"))  # cut off: detached
            for name in ("e2", "e3", "e4", "e5"):
                await bus.publish(ev(name))
            # publishing did not wait for it: everything is still queued, for a task
            # named after the subscriber (it shows in task dumps)
            assert bus.subscriber_stats()[0]["queued"] == 4
            names = {task.get_name() for task in asyncio.all_tasks()}
            assert "rh_agents subscriber <slow>" in names
            assert await bus.drain() is True
        assert slow.received == ["e2", "e3", "e4", "e5"]
        assert slow.max_active == 1  # never two deliveries to it at once
        assert bus.subscriber_stats()[0]["queued"] == 0
        assert bus.dropped_events == 1  # e1 only
        await bus.aclose()
        no_other_tasks()
    finally:
        loop.set_exception_handler(previous)
    assert loop_errors == []  # nothing went wrong behind the bus's back


async def test_a_detached_subscriber_that_raises_in_the_background_keeps_being_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(subscriber_timeout=CUT)
    flaky = Scripted("flaky", {"e1": "stuck", "e2": "raise", "e3": "cancel"})
    bus.subscribe(flaky)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        async with asyncio.timeout(GUARD):
            for name in ("e1", "e2", "e3", "e4"):
                await bus.publish(ev(name))
            assert await bus.drain() is True
    assert flaky.received == ["e4"]
    stats = bus.subscriber_stats()[0]
    assert (stats["errors"], stats["timeouts"], stats["dropped"]) == (2, 1, 1)
    assert bus.subscriber_errors == 2
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "Event subscriber <flaky> raised; it is isolated and the run continues "
        "(further errors from it are logged at debug level)."
    ]
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is ValueError
    again = [r for r in caplog.records if r.getMessage() == "Event subscriber <flaky> raised again"]
    assert len(again) == 1 and again[0].levelno == logging.DEBUG
    assert again[0].exc_info is not None and again[0].exc_info[0] is asyncio.CancelledError
    await bus.aclose()


async def test_a_full_queue_drops_progress_events_for_that_subscriber_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(subscriber_timeout=CUT, subscriber_queue_size=2)
    slow = Scripted("slow", {"e1": "stuck"})
    others: list[str] = []
    bus.subscribe(slow)
    bus.subscribe(lambda event: others.append(event.address))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with asyncio.timeout(GUARD):
            await bus.publish(ev("e1"))  # cut off: detached
            for n in range(5):
                await bus.publish(ev(f"p{n}"))
            await bus.publish(ev("done", S.COMPLETED))
            assert bus.subscriber_stats()[0]["queued"] == 3  # two, and the terminal one
            assert await bus.drain()
    assert slow.received == ["p0", "p1", "done"]
    assert others == ["e1", "p0", "p1", "p2", "p3", "p4", "done"]
    assert bus.subscriber_stats()[0]["dropped"] == bus.dropped_events == 1 + 3
    full = [m for m in messages(caplog, logging.WARNING) if "is too slow" in m]
    assert full == [
        "Event subscriber <slow> is too slow: its queue of 2 events is full, so events "
        "are dropped for it, all but terminal ones (counted in EventBus.dropped_events)."
    ]
    await bus.aclose()


# ------------------------------------------------- the allowance (loop-clock time)


def test_the_allowance_is_a_total_over_deliveries_not_a_bound_per_delivery() -> None:
    """0.6 s of a 1 s allowance used by one delivery leaves 0.4 s for the next: the run
    is held up at most 1 s in total, so a second delivery of 0.6 s is cut off."""
    bus = EventBus(subscriber_timeout=1.0)
    finished: list[str] = []

    async def main(loop: SteppedLoop) -> None:
        async def sixty_percent(event: Any) -> None:
            loop.step(0.6)
            for _ in range(3):
                await asyncio.sleep(0)  # the cut-off, if due, comes here
            finished.append(event.address)

        bus.subscribe(sixty_percent)
        await bus.publish(ev("e1"))
        assert not bus.subscriber_stats()[0]["detached"]
        await bus.publish(ev("e2"))
        await bus.aclose()

    run_stepped(main)
    assert finished == ["e1"]
    stats = bus.subscriber_stats()[0]
    assert (stats["detached"], stats["timeouts"], stats["dropped"]) == (True, 1, 1)
    assert stats["inline_seconds"] == pytest.approx(1.2)


def test_a_subscriber_that_used_exactly_its_allowance_is_detached() -> None:
    bus = EventBus(subscriber_timeout=0.5)
    received: list[str] = []

    async def main(loop: SteppedLoop) -> None:
        async def half_a_second(event: Any) -> None:
            loop.step(0.5)
            received.append(event.address)

        bus.subscribe(half_a_second)
        await bus.publish(ev("e1"))
        assert bus.subscriber_stats()[0]["detached"]
        await bus.publish(ev("e2"))
        assert received == ["e1"]  # e2 is queued: the run no longer waits for it
        assert await bus.drain()
        await bus.aclose()

    run_stepped(main)
    assert received == ["e1", "e2"]
    assert (bus.subscriber_timeouts, bus.dropped_events) == (0, 0)


# --------------------------------------------------------------- drain and aclose


async def test_drain_with_nothing_in_the_background_is_true_at_once() -> None:
    bus = EventBus()
    bus.subscribe(Scripted("fast"))
    await bus.publish(ev("e1"))
    assert await bus.drain() is True
    assert await bus.drain(within=0) is True


async def test_drain_within_gives_up_without_cancelling_the_deliveries() -> None:
    bus = EventBus(subscriber_timeout=1.0)
    waiting = Scripted("waiting", {"e1": "stuck", "e2": "gate"})
    bus.subscribe(waiting)
    async with asyncio.timeout(GUARD):
        await bus.publish(ev("e1"))  # cut off after 1 s: detached
        await bus.publish(ev("e2"))  # waits for its gate, in the background
        assert await bus.drain(within=0.01) is False
        waiting.gate.set()
        assert await bus.drain() is True
    assert waiting.received == ["e2"]  # the delivery went on after drain gave up
    assert bus.dropped_events == 1
    await bus.aclose()


async def test_aclose_by_default_drops_queued_events_at_once() -> None:
    bus = EventBus(subscriber_timeout=CUT)
    # it would take e2 and e3 at once, given a single turn of the event loop
    late = Scripted("late", {"e1": "stuck"}, default="instant")
    bus.subscribe(late)
    async with asyncio.timeout(GUARD):
        await bus.publish(ev("e1"))  # cut off: detached
        await bus.publish(ev("e2"))
        await bus.publish(ev("e3"))
        await bus.aclose()  # no grace: e2 and e3 are not delivered
    assert late.received == []
    assert bus.subscriber_stats()[0]["queued"] == 0
    assert bus.subscriber_stats()[0]["dropped"] == bus.dropped_events == 3
    no_other_tasks()


async def test_aclose_with_a_grace_delivers_what_is_queued_meanwhile() -> None:
    bus = EventBus(subscriber_timeout=CUT)
    late = Scripted("late", {"e1": "stuck"})
    bus.subscribe(late)
    async with asyncio.timeout(GUARD):
        await bus.publish(ev("e1"))  # cut off: detached
        await bus.publish(ev("e2"))
        await bus.publish(ev("e3"))
        await bus.aclose(grace=1.0)
    assert late.received == ["e2", "e3"]
    assert bus.dropped_events == 1
    no_other_tasks()


async def test_aclose_waits_no_longer_than_its_grace() -> None:
    """A hundred queued events for a stuck subscriber would take 100 x 0.2 s to be cut
    off one by one; aclose(grace=0.05) drops them instead (the guard fails a wait)."""
    bus = EventBus(subscriber_timeout=0.2)
    stuck = Scripted("stuck", default="stuck")
    bus.subscribe(stuck)
    await bus.publish(ev("e0"))  # cut off: detached
    for n in range(100):
        await bus.publish(ev(f"e{n + 1}"))
    async with asyncio.timeout(5.0):
        await bus.aclose(grace=0.05)
    assert stuck.received == []
    assert bus.dropped_events == bus.subscriber_stats()[0]["dropped"] == 101
    no_other_tasks()


# -------------------------------------------------------------------------- streams


async def test_a_stream_is_unbounded_by_default() -> None:
    bus = EventBus()
    stream = bus.stream()
    for n in range(3):
        await bus.publish(ev(f"e{n}"))
    bus.close()
    assert [e.address async for e in stream] == ["e0", "e1", "e2"]
    assert stream.dropped == 0


async def test_a_full_stream_counts_every_dropped_event_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    stream = bus.stream(maxsize=1)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for n in range(4):
            await bus.publish(ev(f"e{n}"))
    assert stream.dropped == 3
    assert messages(caplog, logging.WARNING) == [
        "An event stream is full (maxsize=1); events are dropped for it until its reader "
        "catches up (terminal events are always kept)."
    ]
    bus.close()
    assert [e.address async for e in stream] == ["e0"]


async def test_a_full_stream_drops_events_that_have_no_status_without_failing() -> None:
    bus = EventBus()
    stream = bus.stream(maxsize=1)
    first, second = object(), object()
    await bus.publish(first)
    await bus.publish(second)  # not an execution event: a progress event, dropped
    assert stream.dropped == 1
    bus.close()
    assert [e async for e in stream] == [first]


async def test_a_reader_of_an_empty_stream_waits_for_the_next_event() -> None:
    bus = EventBus()
    stream = bus.stream()
    reader = asyncio.create_task(anext(stream))
    await asyncio.sleep(0)  # the reader runs up to its wait
    assert not reader.done()
    await bus.publish(ev("e1"))
    async with asyncio.timeout(GUARD):
        assert (await reader).address == "e1"
    await stream.aclose()


async def test_an_ended_stream_stays_ended() -> None:
    bus = EventBus()
    stream = bus.stream()
    await bus.publish(ev("e1"))
    bus.close()
    async with asyncio.timeout(GUARD):
        assert [e.address async for e in stream] == ["e1"]
        assert [e.address async for e in stream] == []
    await bus.publish(ev("e2"))  # the bus no longer feeds it
    assert not bus.has_listeners()


async def test_a_stream_closed_by_its_reader_yields_what_it_holds_and_nothing_after() -> None:
    bus = EventBus()
    stream = bus.stream()
    await bus.publish(ev("e1"))
    await stream.aclose()
    await bus.publish(ev("e2"))
    async with asyncio.timeout(GUARD):
        assert [e.address async for e in stream] == ["e1"]
    assert not bus.has_listeners()


# ----------------------------------------------- found while writing these tests


async def test_events_queued_for_an_unsubscribed_subscriber_are_still_delivered() -> None:
    bus = EventBus(subscriber_timeout=CUT)
    gone = Scripted("gone", {"e1": "stuck"})
    bus.subscribe(gone)
    async with asyncio.timeout(GUARD):
        for name in ("e1", "e2", "e3"):
            await bus.publish(ev(name))
        bus.unsubscribe(gone)
        await bus.publish(ev("e4"))  # not for it any more
        assert await bus.drain()
    assert gone.received == ["e2", "e3"]
    await bus.aclose()


async def test_events_left_queued_for_an_unsubscribed_subscriber_count_as_dropped_at_close() -> (
    None
):
    """Nothing is lost silently: what aclose() drops is counted, for a subscriber that
    has been unsubscribed meanwhile too."""
    bus = EventBus(subscriber_timeout=CUT)
    gone = Scripted("gone", {"e1": "stuck"}, default="instant")
    bus.subscribe(gone)
    async with asyncio.timeout(GUARD):
        for name in ("e1", "e2", "e3"):
            await bus.publish(ev(name))
        bus.unsubscribe(gone)
        await bus.aclose()
    assert gone.received == []
    assert bus.dropped_events == 3  # e1 cut off, e2 and e3 dropped at close
    no_other_tasks()


async def test_a_subscribers_own_timeout_error_is_an_error_inline_and_in_the_background(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only the bus's own cut-off is a timeout (and a lost event); a TimeoutError the
    subscriber raises is its error, as any other exception, wherever it is delivered."""
    bus = EventBus(subscriber_timeout=CUT)
    own = Scripted("own", {"e1": "timeout", "e2": "stuck", "e3": "timeout"})
    bus.subscribe(own)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        async with asyncio.timeout(GUARD):
            for name in ("e1", "e2", "e3", "e4"):
                await bus.publish(ev(name))
            assert await bus.drain()
    assert own.received == ["e4"]
    stats = bus.subscriber_stats()[0]
    # e1 (inline) and e3 (background) raised; e2 was cut off
    assert (stats["errors"], stats["timeouts"], stats["dropped"]) == (2, 1, 1)
    assert (bus.subscriber_errors, bus.subscriber_timeouts, bus.dropped_events) == (2, 1, 1)
    assert [r.getMessage() for r in caplog.records if "cut off" in r.getMessage()] == [
        "A delivery to event subscriber <own> was cut off after its time allowance "
        "(subscriber_timeout 0.25s); that event is lost for it (counted in "
        "EventBus.dropped_events)."
    ]
    await bus.aclose()


async def test_closing_a_stream_ends_a_reader_waiting_in_another_task() -> None:
    bus = EventBus()
    stream = bus.stream()
    read: list[str] = []
    first_read = asyncio.Event()

    async def reader() -> None:
        async for event in stream:
            read.append(event.address)
            first_read.set()  # and goes on waiting for the next one

    task = asyncio.create_task(reader())
    await bus.publish(ev("e1"))
    await first_read.wait()
    await stream.aclose()
    async with asyncio.timeout(GUARD):
        await task  # it ends, instead of waiting for ever
    assert read == ["e1"]
    assert not bus.has_listeners()
