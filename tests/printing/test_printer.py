"""EventPrinter and ParallelEventPrinter: formatting, counts, group tracking, both display
modes, colour and width rules, robustness (in-process; the real terminal is in
test_printer_pty.py)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents.bus_handlers import EventPrinter, ParallelEventPrinter
from rh_agents.core.actors import Agent, Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import EventBus, ExecutionState
from rh_agents.core.parallel import GroupStatus, ParallelDisplayMode
from rh_agents.core.types import EventType, ExecutionStatus

S = ExecutionStatus
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Query(BaseModel):
    text: str


class FakeTTY(io.StringIO):
    """A StringIO that claims to be a terminal (to exercise the terminal paths in-process)."""

    def isatty(self) -> bool:
        return True


def ev(**fields: Any) -> ExecutionEvent[Any]:
    """A hand-built event (no actor needed)."""
    fields.setdefault("actor_name", "search")
    return ExecutionEvent(**fields)


def make_tool(delay: float = 0.0, fail_on: set[str] | None = None) -> Tool:
    async def handler(data: Query, extra: Any, state: Any) -> str:
        if delay:
            await asyncio.sleep(delay)
        if fail_on and data.text in fail_on:
            raise ConnectionError(f"refused {data.text}")
        return f"found {data.text}"

    return Tool(name="search", input_model=Query, handler=handler)


async def run_group(
    printer: Any,
    n: int = 8,
    name: str = "Processing Docs",
    delay: float = 0.0,
    fail_on: set[str] | None = None,
    **options: Any,
) -> ExecutionState:
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus)
    tool = make_tool(delay, fail_on)
    async with state.parallel(max_workers=3, name=name, **options) as p:
        for i in range(n):
            p.add(lambda i=i: ExecutionEvent(actor=tool)(Query(text=str(i)), {}, state))
        await p.gather()
    return state


# ------------------------------------------------------------------ progress bar shape


@pytest.mark.parametrize(
    ("completed", "total", "width", "expected"),
    [
        (8, 10, 10, "████████░░ 80%"),
        (0, 10, 10, "░░░░░░░░░░ 0%"),
        (10, 10, 10, "██████████ 100%"),
        (0, 0, 10, "░░░░░░░░░░ 0%"),
        (1, 4, 4, "█░░░ 25%"),
        (999, 1000, 10, "█████████░ 99%"),
        (12, 10, 10, "██████████ 100%"),
        (-3, 10, 5, "░░░░░ 0%"),
        (1, 3, 20, "██████░░░░░░░░░░░░░░ 33%"),
    ],
)
def test_render_progress_bar(completed: int, total: int, width: int, expected: str) -> None:
    printer = ParallelEventPrinter(stream=io.StringIO())
    assert printer._render_progress_bar(completed, total, width=width) == expected


def test_render_progress_bar_default_width() -> None:
    printer = ParallelEventPrinter(stream=io.StringIO())
    assert printer._render_progress_bar(4, 5) == "████████░░ 80%"


# ------------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("progress", ParallelDisplayMode.PROGRESS),
        ("realtime", ParallelDisplayMode.REALTIME),
        (" Realtime ", ParallelDisplayMode.REALTIME),
        (ParallelDisplayMode.REALTIME, ParallelDisplayMode.REALTIME),
    ],
)
def test_parallel_mode_accepts_enum_and_strings(mode: Any, expected: ParallelDisplayMode) -> None:
    assert ParallelEventPrinter(parallel_mode=mode).parallel_mode is expected


def test_default_mode_is_progress() -> None:
    printer = ParallelEventPrinter()
    assert printer.parallel_mode is ParallelDisplayMode.PROGRESS
    assert printer.show_progress is True
    assert printer.parallel_groups == {}
    assert isinstance(printer, EventPrinter)


@pytest.mark.parametrize("mode", ["bars", "", None, 3])
def test_unknown_mode_is_a_value_error_listing_the_options(mode: Any) -> None:
    with pytest.raises(ValueError, match="'realtime'") as info:
        ParallelEventPrinter(parallel_mode=mode)
    assert "'progress'" in str(info.value)


@pytest.mark.parametrize(
    "kwargs", [{"width": 0}, {"width": "80"}, {"color": "yes"}, {"bar_width": 0}]
)
def test_bad_options_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ParallelEventPrinter(**kwargs)


# -------------------------------------------------------------------- formatting


def test_event_line_shows_status_actor_type_timing_and_address() -> None:
    out = io.StringIO()
    printer = EventPrinter(stream=out)
    printer(ev(address="agent", event_type=EventType.AGENT_CALL))
    printer(ev(address="agent/search", event_type=EventType.TOOL_CALL))
    printer(
        ev(
            address="agent/search",
            event_type=EventType.TOOL_CALL,
            execution_status=S.COMPLETED,
            execution_time=0.0123,
        )
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} ▶ started +search \(agent_call\)  @ agent$", lines[0])
    # indented by depth in the call tree
    assert re.match(r"^\S+ {3}▶ started +search \(tool_call\)  @ agent/search$", lines[1])
    assert "✔ completed search (tool_call) 12.3ms  @ agent/search" in lines[2]
    assert "ms" not in lines[1]  # no timing on non-terminal statuses


def test_timestamp_and_address_can_be_hidden() -> None:
    out = io.StringIO()
    printer = EventPrinter(show_timestamp=False, show_address=False, stream=out)
    printer(ev(address="a/b/c", execution_status=S.COMPLETED, execution_time=2.5))
    assert out.getvalue() == "    ✔ completed search 2.50s\n"


def test_errors_cache_replay_and_retry_markers() -> None:
    printer = EventPrinter(show_timestamp=False, show_address=False)
    failed = printer.format_event(
        ev(execution_status=S.FAILED, error_type="ValueError", message="bad input")
    )
    assert failed == "✖ failed    search — ValueError: bad input"
    cached = printer.format_event(ev(execution_status=S.COMPLETED, from_cache=True))
    assert "[cached]" in cached
    replayed = printer.format_event(ev(execution_status=S.RECOVERED, is_replayed=True))
    assert replayed.startswith("↺ recovered") and "[replayed]" in replayed
    retrying = printer.format_event(
        ev(
            execution_status=S.RETRYING,
            retry_attempt=2,
            retry_delay=0.5,
            original_error="timeout",
            error_type="TimeoutError",
        )
    )
    assert "↻ retrying" in retrying
    assert "attempt 2 failed, retry in 500.0ms" in retrying
    assert "TimeoutError: timeout" in retrying
    second = printer.format_event(ev(retry_attempt=2))
    assert "[retry 2]" in second
    cancelled = printer.format_event(ev(execution_status=S.CANCELLED, message="cancelled"))
    assert cancelled.startswith("⊘ cancelled") and "— cancelled" in cancelled


def test_multiline_messages_and_control_characters_are_flattened() -> None:
    out = io.StringIO()
    printer = EventPrinter(stream=out, show_timestamp=False)
    printer(
        ev(
            execution_status=S.FAILED,
            error_type="Evil",
            message="red \x1b[31mtext\x1b[0m\nsecond line",
            address="x\x1b[2J",
        )
    )
    text = out.getvalue()
    assert "\x1b" not in text
    assert "second line" not in text
    assert text.count("\n") == 1


def test_group_events_in_the_base_printer() -> None:
    printer = EventPrinter(show_timestamp=False, show_address=False)
    started = printer.format_event(
        ev(
            kind="group",
            actor_name="parallel:docs",
            group_id="g",
            is_parallel=True,
            metadata={"group_name": "docs", "total": 4, "max_workers": 2},
        )
    )
    assert started == "▶ started   parallel group 'docs' (4 items, max 2 workers)"
    done = printer.format_event(
        ev(
            kind="group",
            group_id="g",
            is_parallel=True,
            execution_status=S.FAILED,
            execution_time=1.5,
            message="1 of 4 events failed with 1 error type: KeyError (1)",
            metadata={
                "group_name": "docs",
                "total": 4,
                "completed": 3,
                "failed": 1,
                "cancelled": 0,
                "timed_out": True,
            },
        )
    )
    assert "3 completed, 1 failed, 0 cancelled of 4 in 1.50s" in done
    assert "[timed out]" in done and "KeyError (1)" in done


def test_counts_and_summary() -> None:
    out = io.StringIO()
    printer = EventPrinter(stream=out, show_timestamp=False)
    for status in (S.STARTED, S.STARTED, S.COMPLETED, S.FAILED, S.RETRYING):
        printer(ev(execution_status=status))
    printer(ev(kind="group", group_id="g", metadata={"total": 1}))
    printer(ev(kind="group", group_id="g", execution_status=S.COMPLETED))
    printer(ev(kind="divergence", execution_status=S.COMPLETED, message="differs"))
    assert printer.status_counts == {
        "started": 2,
        "completed": 1,
        "failed": 1,
        "retrying": 1,
        "divergence": 1,
    }
    assert printer.group_counts == {"started": 1, "completed": 1}
    out.truncate(0)
    out.seek(0)
    printer.print_summary()
    summary = out.getvalue()
    assert "Summary: 6 events — 2 started, 1 completed, 1 failed, 1 retrying, 1 divergence" in (
        summary
    )
    assert "Parallel groups: 1 started, 1 completed" in summary


# ------------------------------------------------------------------- robustness


class Broken:
    """An object whose attributes raise."""

    address = "a/b"

    @property
    def execution_status(self) -> Any:
        raise RuntimeError("no status")


@pytest.mark.parametrize("printer_cls", [EventPrinter, ParallelEventPrinter])
@pytest.mark.parametrize("mode", ["progress", "realtime"])
def test_events_of_unknown_shape(printer_cls: type[EventPrinter], mode: str) -> None:
    out = io.StringIO()
    kwargs: dict[str, Any] = {"stream": out}
    if printer_cls is ParallelEventPrinter:
        kwargs["parallel_mode"] = mode
    printer = printer_cls(**kwargs)
    weird: list[Any] = [
        None,
        42,
        "text",
        object(),
        Broken(),
        {},
        {
            "execution_status": "completed",
            "actor_name": "d",
            "address": "x/y",
            "execution_time": "0.5",
            "is_parallel": "yes",
        },
        {"status": "weird-status", "name": "n", "metadata": "not a dict", "parallel_index": "x"},
        {"is_parallel": True, "group_id": "g", "execution_status": "started"},
        {
            "kind": "group",
            "group_id": "g",
            "execution_status": "completed",
            "metadata": {"total": "many", "completed": None},
        },
        ExecutionEvent(),
        ev(execution_time=float("nan"), timestamp=float("inf")),
    ]
    for thing in weird:
        printer.print_event(thing)
    printer.print_summary()
    printer.close()
    assert printer.internal_errors == 0
    text = out.getvalue()
    assert "unrecognized event: 42" in text
    assert "✔ completed d 500.0ms" in text
    assert "\x1b" not in text


def test_internal_errors_are_caught_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    printer = EventPrinter(stream=io.StringIO())

    def explode(_: Any) -> None:
        raise RuntimeError("printer bug")

    printer._handle = explode  # type: ignore[method-assign]
    with caplog.at_level(logging.DEBUG, logger="rh_agents.printer"):
        printer.print_event(ev())
        printer.print_event(ev())
        printer(ev())
    assert printer.internal_errors == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "printer bug" in (errors[0].exc_text or "")


def test_a_broken_stream_never_raises() -> None:
    out = io.StringIO()
    out.close()
    printer = ParallelEventPrinter("realtime", stream=out)
    printer(ev())
    printer.print_summary()
    printer.close()
    assert printer.internal_errors >= 1


async def test_a_printer_error_never_fails_the_run() -> None:
    out = io.StringIO()
    printer = ParallelEventPrinter("realtime", stream=out)
    out.close()  # every write fails
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus)
    tool = make_tool()
    async with state.parallel(max_workers=2, name="docs") as p:
        for i in range(4):
            p.add(ExecutionEvent(actor=tool)(Query(text=str(i)), {}, state))
        results = await p.gather()
    assert [r.ok for r in results] == [True] * 4
    assert printer.internal_errors > 0
    assert bus.subscriber_errors == 0
    assert printer.parallel_groups[p.group.group_id].completed == 4


def test_works_without_an_event_loop() -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    out = io.StringIO()
    printer = ParallelEventPrinter("progress", stream=out, show_timestamp=False)
    printer(
        ev(
            kind="group",
            group_id="g",
            is_parallel=True,
            address="parallel:x",
            metadata={"group_name": "x", "total": 2},
        )
    )
    for i in range(2):
        printer(
            ev(is_parallel=True, group_id="g", parallel_index=i, address=f"parallel:x[{i}]/search")
        )
        printer(
            ev(
                is_parallel=True,
                group_id="g",
                parallel_index=i,
                address=f"parallel:x[{i}]/search",
                execution_status=S.COMPLETED,
            )
        )
    printer(
        ev(
            kind="group",
            group_id="g",
            is_parallel=True,
            address="parallel:x",
            execution_status=S.COMPLETED,
            metadata={"group_name": "x", "total": 2, "completed": 2},
        )
    )
    assert "✔ group 'x' complete ██████████ 100%  2/2 completed" in out.getvalue()
    assert printer.parallel_groups["g"].is_complete


# -------------------------------------------------------------------- trackers


def test_hand_built_parallel_event_creates_a_tracker() -> None:
    printer = ParallelEventPrinter(stream=io.StringIO())
    printer(ev(address="plain"))
    assert printer.parallel_groups == {}
    printer(ev(is_parallel=True, group_id="g1"))
    tracker = printer.parallel_groups["g1"]
    assert tracker.group_id == "g1"
    assert tracker.started == 1 and tracker.total >= 1
    printer(ev(is_parallel=True, group_id="g1"))
    printer(ev(is_parallel=True, group_id="g1", execution_status=S.COMPLETED))
    assert tracker.started == 2 and tracker.total == 2 and tracker.completed == 1
    assert tracker.in_flight == 1
    # is_parallel without a group id, or a group id without is_parallel: no tracker
    printer(ev(is_parallel=True))
    printer(ev(group_id="g9"))
    assert list(printer.parallel_groups) == ["g1"]


def test_tracker_counts_follow_items_through_retries() -> None:
    printer = ParallelEventPrinter("realtime", stream=io.StringIO())

    def item(index: int, status: ExecutionStatus, **extra: Any) -> None:
        printer(
            ev(
                is_parallel=True,
                group_id="g",
                parallel_index=index,
                execution_status=status,
                **extra,
            )
        )

    printer(ev(kind="group", group_id="g", is_parallel=True, metadata={"total": 5}))
    for i in range(3):
        item(i, S.STARTED)
    item(0, S.COMPLETED)
    item(1, S.FAILED, error_type="IOError", message="disk")
    t = printer.parallel_groups["g"]
    assert (t.total, t.started, t.completed, t.failed, t.retrying) == (5, 3, 1, 1, 0)
    assert t.errors == ["IOError: disk"]
    item(1, S.RETRYING, retry_attempt=1, retry_delay=0.1)  # the failure is retried
    assert (t.failed, t.retrying) == (0, 1) and t.errors == []
    item(1, S.STARTED)
    item(1, S.COMPLETED)
    item(2, S.CANCELLED)
    assert (t.completed, t.failed, t.retrying, t.cancelled, t.in_flight) == (2, 0, 0, 1, 0)
    assert not t.is_complete and t.completion_percentage == 60.0


async def test_real_run_trackers_stay_after_completion() -> None:
    printer = ParallelEventPrinter("progress", stream=io.StringIO())
    state = await run_group(printer, n=6)
    assert len(printer.parallel_groups) == 1
    (tracker,) = printer.parallel_groups.values()
    assert tracker.name == "Processing Docs"
    assert (tracker.total, tracker.started, tracker.completed, tracker.failed) == (6, 6, 6, 0)
    assert tracker.status is GroupStatus.COMPLETED and tracker.is_complete
    assert tracker.end_time is not None
    assert tracker.completion_percentage == 100.0
    assert state.history.get_event_list()


async def test_plain_non_parallel_events_create_no_tracker() -> None:
    printer = ParallelEventPrinter("progress", stream=io.StringIO())
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus)
    await ExecutionEvent(actor=make_tool())(Query(text="x"), {}, state)
    assert printer.parallel_groups == {}
    assert printer.status_counts == {"started": 1, "completed": 1}


# ------------------------------------------------------------------ realtime mode


async def test_realtime_two_interleaved_groups() -> None:
    out = io.StringIO()
    printer = ParallelEventPrinter("realtime", stream=out, show_timestamp=False)
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus)
    tool = make_tool(delay=0.005)

    async def group(name: str, n: int) -> None:
        async with state.parallel(max_workers=2, name=name) as p:
            for i in range(n):
                p.add(lambda i=i: ExecutionEvent(actor=tool)(Query(text=f"{name}{i}"), {}, state))
            await p.gather()

    await asyncio.gather(group("Alpha", 4), group("Beta", 3))
    lines = out.getvalue().splitlines()
    alpha = [i for i, line in enumerate(lines) if "[Alpha " in line]
    beta = [i for i, line in enumerate(lines) if "[Beta " in line]
    assert len(alpha) == 8 and len(beta) == 6  # started + completed per item
    # the groups really interleave, and every line is attributed to its own group
    assert min(beta) < max(alpha) and min(alpha) < max(beta)
    for i in alpha:
        assert re.search(r"\[Alpha [1-4]/4\] .*@ parallel:Alpha\[\d\]/search$", lines[i])
    for i in beta:
        assert re.search(r"\[Beta [1-3]/3\] .*@ parallel:Beta\[\d\]/search$", lines[i])
    # position = index + 1
    for line in lines:
        m = re.search(r"\[(Alpha|Beta) (\d)/\d\].*\[(\d)\]/search$", line)
        if m:
            assert int(m.group(2)) == int(m.group(3)) + 1
    # one header and one "complete" per group, around its items
    for name, idx in (("Alpha", alpha), ("Beta", beta)):
        headers = [i for i, x in enumerate(lines) if f"▶ group '{name}' started" in x]
        ends = [i for i, x in enumerate(lines) if f"group '{name}' complete" in x]
        assert len(headers) == 1 and len(ends) == 1
        assert headers[0] < min(idx) and ends[0] > max(idx)
        assert f"{4 if name == 'Alpha' else 3}/" in lines[ends[0]]
    # indented under the group (the group is at depth 0, its items one level deeper)
    assert all(lines[i].startswith("  [") for i in alpha + beta)
    assert "\x1b" not in out.getvalue()


async def test_realtime_nested_groups_failures_and_retries() -> None:
    out = io.StringIO()
    printer = ParallelEventPrinter("realtime", stream=out, show_timestamp=False)
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus)
    calls: dict[str, int] = {}

    async def flaky(data: Query, extra: Any, st: Any) -> str:
        calls[data.text] = calls.get(data.text, 0) + 1
        if data.text == "1" and calls["1"] == 1:
            raise ConnectionError("refused")
        if data.text == "2":
            raise ValueError("always 2")
        return data.text

    tool = Tool(name="fetch", input_model=Query, handler=flaky)

    async def agent_handler(data: Query, extra: Any, st: ExecutionState) -> int:
        async with st.parallel(max_workers=2, name="inner") as q:
            q.add(ExecutionEvent(actor=tool)(Query(text="x"), {}, st))
            q.add(ExecutionEvent(actor=tool)(Query(text="y"), {}, st))
        return 2

    agent = Agent(name="planner", input_model=Query, handler=agent_handler)
    async with state.parallel(max_workers=2, name="outer", max_retries=1, retry_delay=0.001) as p:
        for i in range(3):
            p.add(lambda i=i: ExecutionEvent(actor=tool)(Query(text=str(i)), {}, state))
        p.add(lambda: ExecutionEvent(actor=agent)(Query(text="a"), {}, state), name="nested")
        await p.gather()
    text = out.getvalue()
    trackers = {t.name: t for t in printer.parallel_groups.values()}
    assert set(trackers) == {"outer", "inner"}
    assert trackers["inner"].parent_group_id == trackers["outer"].group_id
    assert trackers["outer"].failed == 1 and trackers["outer"].completed == 3
    assert "[outer 2/4] ↻ retrying  fetch [attempt 1 failed" in text
    assert "ConnectionError: refused" in text
    # nested group lines: inner items are attributed to inner, the agent to outer
    inner_lines = [line for line in text.splitlines() if "[outer 4 › inner " in line]
    assert inner_lines and all(
        "parallel:outer[3]/planner/parallel:inner[" in x for x in inner_lines
    )
    assert all(x.startswith("      [outer 4 › inner") for x in inner_lines)  # depth 3
    # the nested group is named after the item it runs in
    assert "    ▶ group 'outer 4 › inner' started: 2 items" in text
    assert "✖ group 'outer' failed" in text
    assert "errors: 1 of 4 events failed with 1 error type: ValueError 'always 2' (1)" in text
    assert text.count("group 'outer 4 › inner' complete") == 1


async def test_realtime_cancelled_and_timed_out_groups() -> None:
    out = io.StringIO()
    printer = ParallelEventPrinter("realtime", stream=out, show_timestamp=False)
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus)
    tool = make_tool(delay=5)
    with pytest.raises(KeyError):
        async with state.parallel(name="abandoned") as p:
            p.add(ExecutionEvent(actor=tool)(Query(text="1"), {}, state))
            raise KeyError("body failed")
    with pytest.raises(TimeoutError):
        async with state.parallel(name="slow", timeout=0.05) as p:
            p.add(lambda: ExecutionEvent(actor=tool)(Query(text="1"), {}, state))
            await p.gather()
    text = out.getvalue()
    assert "⊘ group 'abandoned' cancelled" in text
    assert "⏱ group 'slow' timed out" in text
    assert printer.parallel_groups[p.group.group_id].status is GroupStatus.FAILED


async def test_a_cancelled_group_does_not_look_done() -> None:
    """Cancelled items never ran to an end: the summary bar shades them, and does not
    count them in its percentage."""
    out = io.StringIO()
    printer = ParallelEventPrinter("progress", stream=out, show_timestamp=False)
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus)
    release = asyncio.Event()

    async def handler(data: Query, extra: Any, st: Any) -> str:
        if data.text != "quick":
            await release.wait()  # never set: cancelled
        return data.text

    tool = Tool(name="wait", input_model=Query, handler=handler)
    async with state.parallel(max_workers=4, name="stopped") as p:
        p.add(lambda: ExecutionEvent(actor=tool)(Query(text="quick"), {}, state))
        for _ in range(3):
            p.add(lambda: ExecutionEvent(actor=tool)(Query(text="slow"), {}, state))
        gather = asyncio.create_task(p.gather())
        for _ in range(1000):
            if p.group.completed:
                break
            await asyncio.sleep(0)
        gather.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gather
    [summary] = [line for line in out.getvalue().splitlines() if "'stopped' cancelled" in line]
    assert "⊘ group 'stopped' cancelled ██▒▒▒▒▒▒▒▒ 25%  1/4 completed, 3 cancelled" in summary


def test_summary_bars_shade_cancelled_items() -> None:
    from rh_agents.printing._format import bar_text

    assert bar_text(0.0, 10, cancelled=1.0) == "▒" * 10
    assert bar_text(0.5, 10, cancelled=0.2) == "█" * 5 + "▒" * 2 + "░" * 3
    assert bar_text(0.25, 4, cancelled=0.75) == "█▒▒▒"
    assert bar_text(1.0, 10) == "█" * 10


# ------------------------------------------------------------------ progress mode


async def test_progress_mode_on_a_pipe_is_plain_and_coarse() -> None:
    out = io.StringIO()
    printer = ParallelEventPrinter("progress", stream=out, show_timestamp=False)
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus)
    tool = make_tool(fail_on={"3"})
    await ExecutionEvent(actor=tool)(Query(text="before"), {}, state)
    async with state.parallel(max_workers=3, name="Processing Docs") as p:
        for i in range(20):
            p.add(lambda i=i: ExecutionEvent(actor=tool)(Query(text=str(i)), {}, state))
        await p.gather()
    text = out.getvalue()
    assert "\x1b" not in text
    lines = text.splitlines()
    # non-parallel events print as usual; item events are folded into progress lines
    assert lines[0].startswith("▶ started   search")
    assert not any("[Processing Docs" in line for line in lines)
    assert sum("@ parallel:" in line for line in lines) == 0
    progress = [line for line in lines if line.startswith("Processing Docs ")]
    assert [re.search(r"(\d+)%", line).group(1) for line in progress] == ["25", "50", "75"]  # type: ignore[union-attr]
    assert "▶ group 'Processing Docs' started: 20 items, max 3 workers" in text
    summary = [line for line in lines if "group 'Processing Docs' failed" in line]
    assert len(summary) == 1
    assert "██████████ 100%  19/20 completed, 1 failed" in summary[0]
    assert "errors: 1 of 20 events failed with 1 error type: ConnectionError" in text


async def test_progress_without_bars() -> None:
    out = io.StringIO()
    printer = ParallelEventPrinter(
        "progress", show_progress=False, stream=out, show_timestamp=False
    )
    await run_group(printer, n=8)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("▶ group 'Processing Docs' started")
    assert lines[1].startswith("✔ group 'Processing Docs' complete  8/8 completed")
    assert "█" not in out.getvalue()


async def test_width_is_respected() -> None:
    out = io.StringIO()
    printer = ParallelEventPrinter("realtime", stream=out, width=40)
    await run_group(printer, n=3)
    printer.print_summary()
    lines = out.getvalue().splitlines()
    assert lines and all(len(line) <= 40 for line in lines)
    assert any(line.endswith("…") for line in lines)


# ----------------------------------------------------------------- colour / TTY


def test_colour_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    event = ev(execution_status=S.FAILED, error_type="E", message="m")
    pipe = io.StringIO()
    EventPrinter(stream=pipe)(event)
    assert "\x1b" not in pipe.getvalue()
    tty = FakeTTY()
    EventPrinter(stream=tty)(event)
    assert "\x1b[" in tty.getvalue()
    assert ANSI.sub("", tty.getvalue()).strip().endswith("✖ failed    search — E: m")
    forced = io.StringIO()
    EventPrinter(stream=forced, color=True)(event)
    assert "\x1b[" in forced.getvalue()
    never = FakeTTY()
    EventPrinter(stream=never, color=False)(event)
    assert "\x1b" not in never.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    no_color = FakeTTY()
    printer = EventPrinter(stream=no_color)
    assert not printer.use_color and printer.is_terminal
    printer(event)
    assert "\x1b" not in no_color.getvalue()


def test_default_stream_is_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    printer = EventPrinter(show_timestamp=False)
    printer(ev(address="a"))
    assert capsys.readouterr().out == "▶ started   search  @ a\n"


async def test_progress_mode_on_a_terminal_draws_live_bars(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "100")
    tty = FakeTTY()
    printer = ParallelEventPrinter("progress", stream=tty, refresh_per_second=50)
    bus = EventBus()
    bus.subscribe(printer)
    state = ExecutionState(event_bus=bus)
    tool = make_tool(delay=0.01, fail_on={"2"})
    seen_live: list[bool] = []

    async def handler(data: Query, extra: Any, st: ExecutionState) -> int:
        async with st.parallel(max_workers=2, name="inner") as q:
            for i in range(2):
                q.add(ExecutionEvent(actor=tool)(Query(text=f"n{i}"), {}, st))
        seen_live.append(printer.live_active)
        return 1

    agent = Agent(name="planner", input_model=Query, handler=handler)
    async with state.parallel(max_workers=3, name="outer") as p:
        for i in range(6):
            p.add(lambda i=i: ExecutionEvent(actor=tool)(Query(text=str(i)), {}, state))
        p.add(lambda: ExecutionEvent(actor=agent)(Query(text="a"), {}, state))
        await asyncio.sleep(0)
        await p.gather()
    assert seen_live == [True]  # the outer bar was still running
    assert not printer.live_active  # stopped with the last group
    await ExecutionEvent(actor=tool)(Query(text="after"), {}, state)
    printer.close()
    printer.close()
    raw = tty.getvalue()
    plain = ANSI.sub("", raw)
    assert "\x1b[?25l" in raw and raw.rstrip().endswith("\x1b[0m")
    assert raw.rfind("\x1b[?25h") > raw.rfind("\x1b[?25l")  # cursor shown again
    assert "outer" in plain and "in flight" in plain and "ETA" in plain
    assert re.search(r"outer 7 › inner █+ 100%  2/2", plain)  # its last frame
    assert "✔ group 'outer 7 › inner' complete ██████████ 100%  2/2 completed" in plain
    assert "✖ group 'outer' failed ██████████ 100%  6/7 completed, 1 failed" in plain
    assert "ConnectionError 'refused 2' (1)" in plain
    assert "✔ completed search" in plain.splitlines()[-1]
    assert printer.internal_errors == 0


async def test_update_progress_bar_and_context_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    tty = FakeTTY()
    with ParallelEventPrinter("progress", stream=tty) as printer:
        printer(ev(is_parallel=True, group_id="g", parallel_index=0))
        assert printer.live_active
        printer._update_progress_bar("g")
        printer._update_progress_bar("unknown")
        rendered = "\n".join(t.plain for t in printer._bars.lines(60))
        assert rendered.startswith("g ") and "0/1" in rendered and "1 in flight" in rendered
        assert all(len(t.plain) <= 60 for t in printer._bars.lines(60))
    assert not printer.live_active


async def test_the_same_program_twice_on_one_printer() -> None:
    """Group ids are deterministic, so a second run reuses them: a fresh tracker each time."""
    out = io.StringIO()
    printer = ParallelEventPrinter("realtime", stream=out, show_timestamp=False)
    await run_group(printer, n=3)
    first = next(iter(printer.parallel_groups.values()))
    await run_group(printer, n=3, fail_on={"1"})
    assert len(printer.parallel_groups) == 1
    second = next(iter(printer.parallel_groups.values()))
    assert second is not first
    assert (first.completed, first.failed) == (3, 0)
    assert (second.completed, second.failed) == (2, 1)
    text = out.getvalue()
    assert text.count("▶ group 'Processing Docs' started") == 2
    assert text.count("✔ group 'Processing Docs' complete") == 1
    assert text.count("✖ group 'Processing Docs' failed") == 1


def test_hand_built_items_find_their_group_by_address() -> None:
    out = io.StringIO()
    printer = ParallelEventPrinter("realtime", stream=out, show_timestamp=False)
    printer(ev(is_parallel=True, group_id="g", parallel_index=2, address="run/parallel:x[2]/a"))
    # a call made by the item: not parallel itself, attributed to the group by address
    printer(ev(actor_name="inner", address="run/parallel:x[2]/a/inner"))
    printer(ev(actor_name="other", address="run/elsewhere"))
    lines = out.getvalue().splitlines()
    assert lines[0] == "    [g 3/3] ▶ started   search  @ run/parallel:x[2]/a"
    assert lines[1] == "      [g 3/3] ▶ started   inner  @ run/parallel:x[2]/a/inner"
    assert lines[2] == "  ▶ started   other  @ run/elsewhere"
    # items without index or address are matched started -> finished in order
    printer(ev(is_parallel=True, group_id="h"))
    printer(ev(is_parallel=True, group_id="h", execution_status=S.FAILED, error_type="E"))
    printer(ev(is_parallel=True, group_id="h", execution_status=S.COMPLETED))
    h = printer.parallel_groups["h"]
    assert (h.started, h.failed, h.completed, h.total) == (2, 1, 1, 2)
    # a group that ends without a message gets its errors categorized locally
    printer(ev(kind="group", group_id="h", is_parallel=True, execution_status=S.FAILED))
    assert "errors: 1 failed: E (1)" in out.getvalue()
    assert h.status is GroupStatus.FAILED


def test_long_durations_long_messages_and_narrow_encodings() -> None:
    printer = EventPrinter(show_timestamp=False, show_address=False)
    line = printer.format_event(ev(execution_status=S.COMPLETED, execution_time=125))
    assert line.endswith(" 2m05s")
    line = printer.format_event(ev(execution_status=S.COMPLETED, execution_time=3725))
    assert line.endswith(" 1h02m")
    line = printer.format_event(ev(execution_status=S.FAILED, message="x" * 2000))
    assert len(line) < 600 and line.endswith("x…")
    raw = io.BytesIO()
    ascii_stream = io.TextIOWrapper(raw, encoding="ascii")
    EventPrinter(stream=ascii_stream, show_timestamp=False)(ev(execution_status=S.COMPLETED))
    ascii_stream.flush()
    assert raw.getvalue() == b"? completed search\n"


def test_invalid_refresh_rate() -> None:
    with pytest.raises(ValueError, match="refresh_per_second"):
        ParallelEventPrinter(refresh_per_second=0)


async def test_dumb_terminal_gets_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty = FakeTTY()
    printer = ParallelEventPrinter("progress", stream=tty, show_timestamp=False)
    await run_group(printer, n=8)
    assert not printer.live_active
    text = tty.getvalue()
    assert "\x1b" not in text
    assert "Processing Docs ██████████░░░░░░░░░░ 50%  4/8" in text
    assert "✔ group 'Processing Docs' complete ██████████ 100%  8/8 completed" in text


def test_live_bars_leave_out_zeros_and_drop_fields_to_fit() -> None:
    from rh_agents.printing._live import Row as _Row
    from rh_agents.printing._live import row_text

    printer = ParallelEventPrinter("progress", stream=io.StringIO())
    busy = _Row("doc-2 › chunks", 1, total=10, finished=4, failed=1, retrying=2, running=3, start=0)
    wide = row_text(busy, 2.0, 200, printer.bar_width).plain
    assert wide.endswith("40%  4/10 · 3 in flight · 1 failed · 2 retrying · 2.0s · ETA 3.0s")
    # narrower: the elapsed time goes first, then items in flight, then retrying...
    assert row_text(busy, 2.0, 100, printer.bar_width).plain.endswith(
        "4/10 · 3 in flight · 1 failed · 2 retrying · ETA 3.0s"
    )
    assert row_text(busy, 2.0, 80, printer.bar_width).plain.endswith(
        "4/10 · 1 failed · 2 retrying · ETA 3.0s"
    )
    assert row_text(busy, 2.0, 60, printer.bar_width).plain.endswith("4/10 · 1 failed · ETA 3.0s")
    # ... the count and the ETA stay longest; nothing is cut while the count fits
    assert row_text(busy, 2.0, 50, printer.bar_width).plain.endswith("4/10 · ETA 3.0s")
    assert all("…" not in row_text(busy, 2.0, w, printer.bar_width).plain for w in range(34, 120))
    assert all(row_text(busy, 2.0, w, printer.bar_width).cell_len <= w for w in range(20, 120))
    calm = _Row("docs", 0, total=10, finished=4, failed=0, retrying=0, running=0, start=0)
    assert row_text(calm, 2.0, 80, printer.bar_width).plain.endswith("40%  4/10 · 2.0s · ETA 3.0s")


def test_nested_groups_are_named_after_their_item() -> None:
    from rh_agents.printing._groups import item_label as _item_label

    tagged = "orchestrator/parallel:documents[1]/document[doc-2]/parallel:chunks"
    assert _item_label(tagged) == "doc-2"
    assert _item_label("a/parallel:outer[2]/section/parallel:inner") == "outer 3"
    assert _item_label("a/parallel:outer[0]/section#1/step[x]#2/parallel:inner") == "outer 1"
    assert _item_label("p/parallel:docs[0]/doc[d-1]#1/parallel:pages") == "d-1"
    assert _item_label("pipeline/parallel:outer") is None
    assert _item_label("parallel:outer") is None
