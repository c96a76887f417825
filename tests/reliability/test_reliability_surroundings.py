"""Faults around a run: subscribers, span exporters, metrics, the clock of the world.

A subscriber that raises, blocks or is slow, an exporter that is down or hangs, and a
metrics registry that fails must never fail a run or hold it hostage beyond the
documented bound (docs/errors.md, "Subscribers cannot stall a run"): an async subscriber
adds at most ``EventBus.subscriber_timeout`` seconds to a run, in total.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry
from span_file import read_spans

from rh_agents.core.actors import Tool
from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import DEFAULT_SUBSCRIBER_TIMEOUT, EventBus, ExecutionState
from rh_agents.core.types import ExecutionStatus
from rh_agents.telemetry import Telemetry, setup

ITEMS = 40


async def _work(data: Any, extra: Any, state: ExecutionState) -> int:
    await asyncio.sleep(0.001)
    return int(data)


TOOL = Tool(name="work", handler=_work)


async def run_group(state: ExecutionState, items: int = ITEMS) -> list[Any]:
    async with state.parallel(max_workers=8, name="g") as group:
        for index in range(items):
            group.add(lambda index=index: ExecutionEvent(actor=TOOL)(index, {}, state))
        results = await group.gather()
    assert all(r.ok for r in results)
    return [r.result for r in results]


async def timed_run(bus: EventBus) -> float:
    state = ExecutionState(event_bus=bus)
    started = time.monotonic()
    assert await run_group(state) == list(range(ITEMS))
    return time.monotonic() - started


def no_other_tasks() -> None:
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert not others, others


# ------------------------------------------------------------------- subscribers


def test_the_bound_is_documented_and_configurable() -> None:
    assert EventBus().subscriber_timeout == DEFAULT_SUBSCRIBER_TIMEOUT == 5.0
    assert EventBus(subscriber_timeout=None).subscriber_timeout is None
    for bad in (0, -1, float("nan"), float("inf"), "5", True):
        with pytest.raises(InvalidArgumentError, match="subscriber_timeout must be"):
            EventBus(subscriber_timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="subscriber_queue_size"):
        EventBus(subscriber_queue_size=0)


async def test_a_raising_subscriber_never_fails_or_slows_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    seen: list[Any] = []

    async def broken(event: Any) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    bus.subscribe(lambda event: 1 / 0)
    bus.subscribe(seen.append)
    with caplog.at_level(logging.DEBUG, logger="rh_agents.execution"):
        await timed_run(bus)
    # every event reached the healthy subscriber; each broken one was logged once
    assert len(seen) == 2 * ITEMS + 2
    assert bus.subscriber_errors == 2 * len(seen)
    first_time = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(first_time) == 2


async def test_a_blocked_subscriber_costs_the_run_at_most_its_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(subscriber_timeout=0.3)
    calls = 0

    async def stuck(event: Any) -> None:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()

    healthy: list[Any] = []
    bus.subscribe(stuck)
    bus.subscribe(healthy.append)
    with caplog.at_level(logging.WARNING, logger="rh_agents.execution"):
        elapsed = await timed_run(bus)
    assert elapsed < 0.3 + 1.0  # the budget, plus the run itself on a busy machine
    assert len(healthy) == 2 * ITEMS + 2  # the other subscriber missed nothing
    stats = bus.subscriber_stats()[0]
    assert stats["detached"] and stats["timeouts"] >= 1
    warnings = [r.getMessage() for r in caplog.records if "held up the run" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per event
    # deliveries in the background stay cut off at the budget each; closing the bus
    # stops them cleanly
    await bus.aclose()
    no_other_tasks()
    assert calls >= 1


async def test_a_slow_subscriber_is_moved_off_the_workers_path_and_still_served() -> None:
    bus = EventBus(subscriber_timeout=0.2)
    received: list[tuple[str, str]] = []

    async def slow(event: Any) -> None:
        await asyncio.sleep(0.02)  # 82 events: 1.6 s if awaited inline
        received.append((event.address, event.execution_status.value))

    bus.subscribe(slow)
    elapsed = await timed_run(bus)
    assert elapsed < 0.2 + 1.0
    assert bus.subscriber_stats()[0]["detached"]
    assert await bus.drain(within=10)
    # everything arrived (but the deliveries in progress when the budget ran out, which
    # were cut off), most of it in the background, in publish order
    stats = bus.subscriber_stats()[0]
    # at most one per worker publishing at that moment (none when the budget ran out
    # between deliveries)
    assert 0 <= stats["timeouts"] <= 8
    assert len(received) == 2 * ITEMS + 2 - stats["timeouts"]
    assert received[0] == ("parallel:g", "started")
    assert received[-1] == ("parallel:g", "completed")
    no_other_tasks()


async def test_a_subscriber_that_cannot_keep_up_loses_events_only_for_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(subscriber_timeout=0.05, subscriber_queue_size=5)
    slow_seen = 0
    fast_seen: list[Any] = []

    async def hopeless(event: Any) -> None:
        nonlocal slow_seen
        await asyncio.sleep(0.05)
        slow_seen += 1

    bus.subscribe(hopeless)
    bus.subscribe(fast_seen.append)
    with caplog.at_level(logging.WARNING, logger="rh_agents.execution"):
        await timed_run(bus)
    await bus.aclose(grace=0.5)
    assert len(fast_seen) == 2 * ITEMS + 2
    assert bus.dropped_events > 0
    assert bus.subscriber_stats()[0]["dropped"] == bus.dropped_events
    assert sum("queue of 5 events is full" in r.getMessage() for r in caplog.records) == 1
    no_other_tasks()


async def test_a_subscriber_cut_off_while_the_run_is_cancelled_still_records_the_end() -> None:
    bus = EventBus(subscriber_timeout=0.2)

    async def stuck(event: Any) -> None:
        await asyncio.Event().wait()

    bus.subscribe(stuck)
    state = ExecutionState(event_bus=bus)
    task = asyncio.create_task(run_group(state))
    await asyncio.sleep(0.05)  # inside the stuck subscriber's first delivery
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    statuses = [e.execution_status for e in state.history.get_event_list()]
    assert statuses[0] is ExecutionStatus.STARTED
    assert statuses[-1] is ExecutionStatus.CANCELLED  # the group says how it ended
    await bus.aclose()
    no_other_tasks()


async def test_an_unbounded_bus_awaits_subscribers_as_before() -> None:
    bus = EventBus(subscriber_timeout=None)
    order: list[str] = []

    async def slow(event: Any) -> None:
        await asyncio.sleep(0.001)
        order.append(event.execution_status.value)

    bus.subscribe(slow)
    state = ExecutionState(event_bus=bus)
    await ExecutionEvent(actor=TOOL)(1, {}, state)
    assert order == ["started", "completed"]  # seen before the call returned


# ------------------------------------------------------------ span exporters


class RaisingExporter(SpanExporter):
    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        raise ConnectionRefusedError("collector down")

    def shutdown(self) -> None:
        pass


class HangingExporter(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        self.release.wait(30)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


@pytest.mark.parametrize("exporter_class", [RaisingExporter, HangingExporter])
def test_an_exporter_that_is_down_or_hangs_does_not_hold_the_run(
    exporter_class: type[SpanExporter],
) -> None:
    exporter = exporter_class()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=10))
    telemetry = Telemetry(provider, CollectorRegistry())

    async def run() -> float:
        state = ExecutionState(telemetry=telemetry)
        started = time.monotonic()
        await run_group(state, 2000)
        return time.monotonic() - started

    reference = asyncio.run(run_without_telemetry())
    elapsed = asyncio.run(run())
    try:
        assert exporter.calls >= 1
        assert elapsed < reference * 5 + 1.0
    finally:
        exporter.shutdown()
        provider.shutdown()


async def run_without_telemetry() -> float:
    state = ExecutionState()
    started = time.monotonic()
    await run_group(state, 2000)
    return time.monotonic() - started


def wait_for_export(exporter: HangingExporter) -> None:
    deadline = time.monotonic() + 10
    while exporter.calls == 0:
        assert time.monotonic() < deadline, "the batch processor never exported"
        time.sleep(0.01)


def test_shutting_down_telemetry_with_a_hanging_exporter_is_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = HangingExporter()
    handle = setup(exporters=[exporter], registry=CollectorRegistry(), export_timeout=0.2)
    try:
        state = ExecutionState(telemetry=handle.telemetry)
        asyncio.run(run_group(state, 200))
        wait_for_export(exporter)  # an export is now hanging
        assert not exporter.release.is_set()
        started = time.monotonic()
        threading.Timer(2.5, exporter.release.set).start()  # do not hang the suite
        with caplog.at_level(logging.WARNING, logger="rh_agents.telemetry"):
            handle.shutdown(timeout=0.2)
        assert time.monotonic() - started < 2.0
        # the hanging export was interrupted by shutting its exporter down, and said so
        assert exporter.release.is_set()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("HangingExporter did not finish within 0.2 s" in w for w in warnings)
        handle.shutdown(timeout=0.2)  # idempotent
    finally:
        exporter.release.set()


def test_flushing_telemetry_with_a_hanging_exporter_is_bounded() -> None:
    exporter = HangingExporter()
    handle = setup(exporters=[exporter], registry=CollectorRegistry(), export_timeout=0.2)
    try:
        state = ExecutionState(telemetry=handle.telemetry)
        asyncio.run(run_group(state, 200))
        wait_for_export(exporter)  # hanging, holding the processor's export lock
        threading.Timer(2.5, exporter.release.set).start()
        started = time.monotonic()
        assert handle.force_flush(timeout=0.2) is False
        assert time.monotonic() - started < 2.0
    finally:
        exporter.release.set()
        handle.shutdown(timeout=0.5)


def test_shutting_down_telemetry_with_a_collector_that_never_answers_is_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A "collector" that accepts connections (the kernel completes the handshake for the
    # listen backlog) and reads the request but never answers: each export waits for
    # its export_timeout, then the OTLP exporter retries until its deadline.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    handle = setup(otlp_endpoint=endpoint, registry=CollectorRegistry(), export_timeout=10.0)
    try:
        state = ExecutionState(telemetry=handle.telemetry)
        asyncio.run(run_group(state, 200))
        time.sleep(0.5)  # the first export is waiting for an answer
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="rh_agents.telemetry"):
            handle.shutdown(timeout=0.3)
        # the time given plus the grace to stop the exporter, instead of the export's
        # 10 s timeout (before the fix: that, then up to 30 s joining the SDK's worker)
        assert time.monotonic() - started < 0.3 + 2.0
        assert any("OTLPSpanExporter did not finish" in r.getMessage() for r in caplog.records), (
            caplog.text
        )
    finally:
        listener.close()


@pytest.mark.parametrize("refused", [False, True], ids=["threads", "threads-refused-at-exit"])
def test_telemetry_is_shut_down_at_exit_within_its_bound(tmp_path: Path, refused: bool) -> None:
    # A process that never calls shutdown(): the handle's exit hook exports the spans
    # (the SDK's own hook would wait 30 s per processor for a hanging exporter). Where
    # the interpreter refuses to start threads in atexit handlers (CPython 3.12, or
    # simulated here), the threads it needs were started by setup().
    script = tmp_path / "app.py"
    spans = tmp_path / "spans.jsonl"
    refuse = (
        textwrap.dedent(
            """
            import atexit, threading
            import rh_agents.telemetry._setup as telemetry_setup

            telemetry_setup._RESERVE_FOR_EXIT = True  # as on CPython 3.12

            def refuse(self, *args, **kwargs):
                raise RuntimeError("can't create new thread at interpreter shutdown")
            """
        )
        if refused
        else ""
    )
    after_setup = (
        # atexit runs its hooks last in, first out: this one runs before the handle's.
        "atexit.register(lambda: setattr(threading.Thread, 'start', refuse))" if refused else ""
    )
    script.write_text(
        refuse
        + textwrap.dedent(
            f"""
            import asyncio, logging, threading
            from prometheus_client import CollectorRegistry
            from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
            from rh_agents.telemetry import setup
            from rh_agents.core.actors import Tool
            from rh_agents.core.events import ExecutionEvent
            from rh_agents.core.execution import ExecutionState

            class Hanging(SpanExporter):
                def export(self, spans):
                    threading.Event().wait(60)
                    return SpanExportResult.SUCCESS

            async def work(data, extra, state):
                return data

            logging.basicConfig()  # the handle's warnings to stderr
            handle = setup(trace_file={str(spans)!r}, exporters=[Hanging()],
                           registry=CollectorRegistry(), export_timeout=0.5)
            state = ExecutionState(telemetry=handle.telemetry)
            asyncio.run(ExecutionEvent(actor=Tool(name="t", handler=work))(1, {{}}, state))
            """
        )
        + after_setup
        + "\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 15  # interpreter start-up on a busy host + 0.5 s
    assert [s["name"] for s in read_spans(spans)] == ["execute_tool t"]
    assert "Hanging did not finish within 0.5 s" in done.stderr


# ------------------------------------------------------------ metrics registries


def test_metric_updates_that_raise_are_logged_once_and_the_run_completes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from prometheus_client.metrics import MetricWrapperBase

    def broken_labels(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("registry is broken")

    monkeypatch.setattr(MetricWrapperBase, "labels", broken_labels)
    telemetry = Telemetry(TracerProvider(), CollectorRegistry())
    state = ExecutionState(telemetry=telemetry)
    with caplog.at_level(logging.ERROR, logger="rh_agents.telemetry"):
        assert asyncio.run(run_group(state)) == list(range(ITEMS))
    failed = [
        r.getMessage() for r in caplog.records if "failed; the run continues" in r.getMessage()
    ]
    assert failed  # each failing hook is logged ...
    assert len(failed) == len(set(failed))  # ... once


def test_a_registry_whose_collect_raises_does_not_touch_the_run() -> None:
    class BrokenRegistry(CollectorRegistry):
        def collect(self) -> Any:
            raise RuntimeError("scrape failed")

    registry = BrokenRegistry()
    state = ExecutionState(telemetry=Telemetry(TracerProvider(), registry))
    assert asyncio.run(run_group(state)) == list(range(ITEMS))
    with pytest.raises(RuntimeError, match="scrape failed"):
        list(registry.collect())
