"""HistorySet lookups and the EventBus: subscribers, isolation, snapshots, streams."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from rh_agents.core.actors import Tool
from rh_agents.core.errors import ImmutableEventError, InvalidArgumentError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import EventBus, ExecutionState, HistorySet
from rh_agents.core.types import ExecutionStatus

S = ExecutionStatus


class Counter:
    def __init__(self, fail_first: int = 0) -> None:
        self.calls = 0
        self.fail_first = fail_first

    async def __call__(self, data: Any, extra: Any, state: Any) -> Any:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError(f"failure {self.calls}")
        return {"n": data}


# ------------------------------------------------------------------ HistorySet


async def test_history_lookups() -> None:
    handler = Counter(fail_first=1)
    tool = Tool(name="t", handler=handler)
    state = ExecutionState()
    await ExecutionEvent(actor=tool)(1, {}, state)  # fails
    await ExecutionEvent(actor=tool)(2, {}, state)  # completes
    history = state.history

    assert [(e.address, e.execution_status) for e in history.get_event_list()] == [
        ("t", S.STARTED),
        ("t", S.FAILED),
        ("t#1", S.STARTED),
        ("t#1", S.COMPLETED),
    ]
    assert len(history) == 4
    assert history["t"].execution_status is S.FAILED
    assert history["t#1"].execution_status is S.COMPLETED
    assert history["t#1"].result == {"n": 2}
    assert "t#1" in history and "t#2" not in history
    with pytest.raises(KeyError, match="No invocation at address 't#2'"):
        history["t#2"]

    assert history.has_completed_event("t#1")
    assert not history.has_completed_event("t")
    assert not history.has_completed_event("never")
    assert history.get_event_result("t#1") == {"n": 2}
    with pytest.raises(KeyError, match="No completed invocation at address 't'"):
        history.get_event_result("t")

    assert [(address, e.execution_status) for address, e in history] == [
        ("t", S.FAILED),
        ("t#1", S.COMPLETED),
    ]
    assert history.completed_addresses() == ["t#1"]


def test_history_built_from_events_and_records_round_trip() -> None:
    events = [
        ExecutionEvent(address="a", execution_status=S.STARTED, actor_name="x"),
        ExecutionEvent(address="a", execution_status=S.COMPLETED, actor_name="x", result=[1]),
    ]
    history = HistorySet(events)
    again = HistorySet.from_records(history.to_records())
    assert [(e.address, e.execution_status, e.name) for e in again.get_event_list()] == [
        ("a", S.STARTED, "x"),
        ("a", S.COMPLETED, "x"),
    ]
    assert again.get_event_result("a") == [1]


# ------------------------------------------------------------------ EventBus


async def test_sync_async_and_printer_subscribers_all_receive_events() -> None:
    sync_seen: list[str] = []
    async_seen: list[str] = []

    async def async_subscriber(event: Any) -> None:
        await asyncio.sleep(0)
        async_seen.append(event.execution_status.value)

    class Printer:
        def __init__(self) -> None:
            self.printed: list[str] = []

        def print_event(self, event: Any) -> None:
            self.printed.append(event.execution_status.value)

    class AsyncPrinter:
        def __init__(self) -> None:
            self.printed: list[str] = []

        async def print_event(self, event: Any) -> None:
            self.printed.append(event.execution_status.value)

    printer, async_printer = Printer(), AsyncPrinter()
    bus = EventBus()
    assert bus.subscribe(lambda e: sync_seen.append(e.execution_status.value)) is not None
    bus.subscribe(async_subscriber)
    assert bus.subscribe(printer) is printer
    bus.subscribe(async_printer)
    assert len(bus.subscribers) == 4

    state = ExecutionState(event_bus=bus)
    await ExecutionEvent(actor=Tool(name="t", handler=Counter()))(1, {}, state)

    expected = ["started", "completed"]
    assert sync_seen == async_seen == printer.printed == async_printer.printed == expected

    bus.unsubscribe(printer)
    await ExecutionEvent(actor=Tool(name="t", handler=Counter()))(1, {}, state)
    assert printer.printed == expected
    assert async_printer.printed == expected * 2


def test_subscribing_something_unusable_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="print_event"):
        EventBus().subscribe(42)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_raising_subscriber_is_logged_and_isolated(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    before: list[str] = []
    after: list[str] = []

    def sync_bad(event: Any) -> None:
        raise ValueError("subscriber bug")

    async def async_bad(event: Any) -> None:
        raise ValueError("subscriber bug")

    bus = EventBus()
    bus.subscribe(lambda e: before.append(e.execution_status.value))
    bad = sync_bad if kind == "sync" else async_bad
    bus.subscribe(bad)
    bus.subscribe(lambda e: after.append(e.execution_status.value))
    handler = Counter()
    state = ExecutionState(event_bus=bus)

    with caplog.at_level(logging.DEBUG, logger="rh_agents.execution"):
        result = await ExecutionEvent(actor=Tool(name="t", handler=handler))(5, {}, state)

    assert result.ok is True
    assert result.result == {"n": 5}
    assert handler.calls == 1  # never re-run because a subscriber failed
    assert before == after == ["started", "completed"]  # other subscribers unaffected
    assert bus.subscriber_errors == 2
    assert [e.execution_status for e in state.history.get_event_list()] == [
        S.STARTED,
        S.COMPLETED,
    ]
    first = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(first) == 1  # logged with its traceback once, then at debug level
    assert "isolated" in first[0].getMessage()
    assert first[0].exc_info is not None and first[0].exc_info[0] is ValueError


async def test_subscribers_receive_immutable_snapshots() -> None:
    received: list[Any] = []
    state = ExecutionState()
    state.event_bus.subscribe(received.append)
    event: ExecutionEvent[Any] = ExecutionEvent(actor=Tool(name="t", handler=Counter()))

    await event(3, {}, state)

    started, completed = received
    assert started is not completed
    assert started is not event and completed is not event
    # the STARTED snapshot was not changed by the later status change
    assert started.execution_status is S.STARTED
    assert started.result is None
    assert completed.execution_status is S.COMPLETED
    assert completed.result == {"n": 3}
    # changing the caller's event object later does not alter what was delivered
    event.execution_status = S.FAILED
    event.metadata["changed"] = True
    assert completed.execution_status is S.COMPLETED
    assert "changed" not in completed.metadata
    assert state.history["t"].execution_status is S.COMPLETED


async def test_a_subscriber_cannot_change_what_others_and_the_history_see() -> None:
    seen_by_second: list[tuple[str, str, dict[str, Any]]] = []
    refused: list[str] = []

    def vandal(ev: Any) -> None:
        for change in (
            lambda: setattr(ev, "execution_status", S.FAILED),
            lambda: setattr(ev, "address", "hijacked"),
            lambda: ev.metadata.__setitem__("injected", True),
            lambda: ev.metadata.update(injected=True),
            lambda: delattr(ev, "message"),
        ):
            try:
                change()
            except ImmutableEventError as exc:
                refused.append(type(exc).__name__)
        ev.execution_status = S.FAILED  # raises out of the subscriber: isolated

    state = ExecutionState()
    state.event_bus.subscribe(vandal)
    state.event_bus.subscribe(
        lambda ev: seen_by_second.append((ev.address, ev.execution_status.value, dict(ev.metadata)))
    )
    result = await ExecutionEvent(actor=Tool(name="t", handler=Counter()))(3, {}, state)

    assert result.ok and result.result == {"n": 3}
    assert len(refused) == 10  # five changes refused, at STARTED and at COMPLETED
    assert state.event_bus.subscriber_errors == 2
    assert seen_by_second == [("t", "started", {}), ("t", "completed", {})]
    statuses = [(e.address, e.execution_status) for e in state.history.get_event_list()]
    assert statuses == [("t", S.STARTED), ("t", S.COMPLETED)]
    assert state.to_snapshot().execution_state["events"][1]["metadata"] == {}


async def test_a_copy_of_a_published_event_is_an_ordinary_event() -> None:
    import copy
    import pickle

    state = ExecutionState()
    await ExecutionEvent(actor=Tool(name="t", handler=Counter()), metadata={"k": 1})(1, {}, state)
    entry = state.history["t"]
    copies = (entry.model_copy(update={"tag": "x"}), copy.copy(entry), copy.deepcopy(entry))
    for changed in copies:
        changed.message = "mine"
        changed.metadata["k"] = 2
        assert type(changed) is ExecutionEvent
    assert entry.message is None and entry.metadata == {"k": 1}
    restored = pickle.loads(pickle.dumps(entry))
    assert restored.model_dump(exclude={"actor"}) == entry.model_dump(exclude={"actor"})
    with pytest.raises(ImmutableEventError):
        restored.tag = "x"
    assert repr(entry).startswith("ExecutionEvent(")


async def test_stream_receives_published_events() -> None:
    state = ExecutionState()
    stream = state.event_bus.stream()  # registered now, before anything is published
    await ExecutionEvent(actor=Tool(name="t", handler=Counter()))(1, {}, state)
    state.event_bus.close()

    got = [(e.address, e.execution_status.value) async for e in stream]
    assert got == [("t", "started"), ("t", "completed")]


async def test_stream_consumed_concurrently_with_the_run() -> None:
    state = ExecutionState()
    received: list[str] = []
    two_seen = asyncio.Event()

    stream = state.event_bus.stream()

    async def consume() -> None:
        async with stream:
            async for event in stream:
                received.append(event.execution_status.value)
                if len(received) == 2:
                    two_seen.set()
                    return

    consumer = asyncio.create_task(consume())
    await ExecutionEvent(actor=Tool(name="t", handler=Counter()))(1, {}, state)
    await asyncio.wait_for(two_seen.wait(), timeout=5)
    await consumer
    assert received == ["started", "completed"]
    # the stream left with the ``async with`` block is no longer fed
    await state.event_bus.publish(ExecutionEvent(address="x"))
    assert received == ["started", "completed"]


async def test_full_stream_never_fails_the_actor(caplog: pytest.LogCaptureFixture) -> None:
    state = ExecutionState()
    stream = state.event_bus.stream(maxsize=1)  # nobody reads it
    handler = Counter()
    with caplog.at_level(logging.WARNING, logger="rh_agents.execution"):
        result = await ExecutionEvent(actor=Tool(name="t", handler=handler))(1, {}, state)
    assert result.ok and handler.calls == 1
    # the terminal event is kept beyond maxsize; a second call's STARTED is dropped
    assert stream.dropped == 0
    await ExecutionEvent(actor=Tool(name="t2", handler=handler))(1, {}, state)
    assert stream.dropped == 1
    assert "stream is full" in caplog.text
    state.event_bus.close()  # a full stream still ends after what it holds
    assert [e.execution_status.value async for e in stream] == [
        "started",
        "completed",
        "completed",
    ]


async def test_a_subscriber_raising_cancelled_error_is_isolated_like_any_error() -> None:
    def rude(ev: Any) -> None:
        raise asyncio.CancelledError  # its own, not a cancellation of the run

    async def rude_async(ev: Any) -> None:
        raise asyncio.CancelledError

    state = ExecutionState()
    state.event_bus.subscribe(rude)
    state.event_bus.subscribe(rude_async)
    result = await ExecutionEvent(actor=Tool(name="t", handler=Counter()))(1, {}, state)
    assert result.ok
    assert state.event_bus.subscriber_errors == 4
    assert [e.execution_status for e in state.history.get_event_list()] == [
        S.STARTED,
        S.COMPLETED,
    ]
