"""Soak: a million invocations through parallel groups with telemetry on (``make soak``).

Each batch is a fresh ExecutionState running one group of GROUP_SIZE tool calls, with an
SDK TracerProvider (a counting no-op exporter behind a BatchSpanProcessor) and metrics in
a private registry. After a warm-up, memory must stay flat (no growth per completed
group, by RSS over the whole run and by tracemalloc over a window) and throughput must
not fall over time. Prints the figures. Not run by ``make test`` (marker ``soak``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from rh_agents.core.actors import Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.telemetry import Telemetry

pytestmark = pytest.mark.soak

EVENTS = int(os.environ.get("RH_AGENTS_SOAK_EVENTS", "1000000"))
GROUP_SIZE = 1_000
BATCHES = EVENTS // GROUP_SIZE
WARM_UP = min(100, BATCHES // 5 // 10 * 10)
MAX_WORKERS = 50


class CountingExporter(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


async def _work(data: Any, extra: Any, state: ExecutionState) -> int:
    return int(data) * 2


TOOL = Tool(name="work", handler=_work)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def one_batch(telemetry: Telemetry) -> ExecutionState:
    state = ExecutionState(telemetry=telemetry)
    async with state.parallel(max_workers=MAX_WORKERS, name="soak") as group:
        for index in range(GROUP_SIZE):
            group.add(lambda index=index: ExecutionEvent(actor=TOOL)(index, {}, state))
        results = await group.gather()
    assert len(results) == GROUP_SIZE and all(r.ok for r in results)
    return state


def test_a_million_events_memory_stays_flat_and_throughput_steady() -> None:
    exporter = CountingExporter()
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter, max_queue_size=65_536, max_export_batch_size=4_096, schedule_delay_millis=200
        )
    )
    registry = CollectorRegistry()
    telemetry = Telemetry(provider, registry)
    rates: list[float] = []
    rss: list[int] = []

    async def soak() -> float:
        started = time.perf_counter()
        for batch in range(BATCHES):
            began = time.perf_counter()
            await one_batch(telemetry)
            rates.append(GROUP_SIZE / (time.perf_counter() - began))
            if batch % 10 == 9:
                gc.collect()
                rss.append(rss_bytes())
        return time.perf_counter() - started

    elapsed = asyncio.run(soak())
    provider.force_flush(30_000)

    # memory per group, precisely, over a window of batches after the soak
    async def window() -> list[int]:
        sizes = []
        for _ in range(12):
            await one_batch(telemetry)
            gc.collect()
            sizes.append(tracemalloc.get_traced_memory()[0])
        return sizes

    tracemalloc.start()
    sizes = asyncio.run(window())
    tracemalloc.stop()
    per_group = (sizes[-1] - sizes[2]) / (len(sizes) - 3)

    # what the history costs when a state is kept: bytes per invocation
    tracemalloc.start()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    kept = asyncio.run(one_batch(telemetry))
    gc.collect()
    history_bytes = (tracemalloc.get_traced_memory()[0] - before) / GROUP_SIZE
    tracemalloc.stop()
    assert len(kept.history) == 2 * GROUP_SIZE + 2

    provider.shutdown()
    warm = rss[WARM_UP // 10 :]
    growth = warm[-1] - warm[0]
    first = statistics.median(rates[WARM_UP : WARM_UP + 100])
    last = statistics.median(rates[-100:])
    spans_expected = (BATCHES + 13) * (GROUP_SIZE + 1)
    events_metric = sum(
        s.value for m in registry.collect() for s in m.samples if s.name == "rh_agents_events_total"
    )
    mib = 1024 * 1024
    print(
        f"\nsoak: {BATCHES * GROUP_SIZE:,} events in {BATCHES} groups of {GROUP_SIZE} "
        f"(max_workers={MAX_WORKERS}) with telemetry on, {elapsed:.1f}s, "
        f"{BATCHES * GROUP_SIZE / elapsed:,.0f} events/s overall"
        f"\nthroughput (median events/s): batches {WARM_UP}-{WARM_UP + 100}: {first:,.0f}; "
        f"last 100: {last:,.0f} ({last / first:.0%})"
        f"\nRSS after warm-up: {warm[0] / mib:.1f} MiB -> end: {warm[-1] / mib:.1f} MiB "
        f"(growth {growth / mib:+.1f} MiB over {BATCHES - WARM_UP} groups, "
        f"{growth / (BATCHES - WARM_UP) / 1024:+.2f} KiB/group); peak {max(rss) / mib:.1f} MiB"
        f"\ntracemalloc over 9 groups after the soak: {per_group:+.0f} bytes/group"
        f"\nhistory kept by a live state: {history_bytes:,.0f} bytes per invocation "
        f"(2 entries: started, completed)"
        f"\nspans exported: {exporter.spans:,} of {spans_expected:,}; "
        f"rh_agents_events_total: {events_metric:,.0f}"
    )
    # flat memory: under 16 MiB for 900 groups (< 18 bytes per event), and no measurable
    # growth per group by tracemalloc
    assert growth < 16 * mib
    assert per_group < 2048
    # no slowdown over time (a generous margin for a shared machine)
    assert last > 0.6 * first
    # nothing lost on the way to the exporter or the metrics
    assert exporter.spans == spans_expected
    assert events_metric == (BATCHES + 13) * GROUP_SIZE
