"""Soak: a million invocations through parallel groups with telemetry on (``make soak``).

Each batch is a fresh ExecutionState running one group of GROUP_SIZE tool calls, with an
SDK TracerProvider (a counting no-op exporter behind a BatchSpanProcessor) and metrics in
a private registry. The claim: after a warm-up, memory stays flat (no growth per
completed group) and throughput does not fall over time.

How it is measured, so that the figures do not depend on when a sample happens to be
taken:

* The span processor's queue holds up to tens of thousands of finished spans between two
  exports (0.5 to 1 MB swings); every memory sample first flushes it
  (``force_flush``) and collects garbage, so it sees what the run *retains*.
* Memory and throughput are compared as medians of windows (early after warm-up vs the
  end of the run), never as two single samples.

Prints the figures. Not run by ``make test`` (marker ``soak``). ``RH_AGENTS_SOAK_EVENTS``
shrinks the run for a quick look (the bounds are meant for the full million).
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
from rh_agents.telemetry._setup import MAX_EXPORT_BATCH, MAX_QUEUE_SIZE, SCHEDULE_DELAY_MS

pytestmark = pytest.mark.soak

EVENTS = int(os.environ.get("RH_AGENTS_SOAK_EVENTS", "1000000"))
GROUP_SIZE = 1_000
BATCHES = max(50, EVENTS // GROUP_SIZE)
WARM_UP = BATCHES // 10  # groups run before anything is compared
SAMPLE_EVERY = 10  # groups between two RSS samples
WINDOW = max(5, BATCHES // 5)  # groups per throughput window (early / late)
TRACED_GROUPS = 30  # groups measured with tracemalloc after the soak
MAX_WORKERS = 50
MIB = 1024 * 1024


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


def settle(provider: TracerProvider) -> None:
    """Export every queued span and collect garbage: what is left is retained memory."""
    assert provider.force_flush(30_000)
    gc.collect()


def window_medians(values: list[float], size: int) -> tuple[float, float]:
    """The median of the first and of the last ``size`` values."""
    return statistics.median(values[:size]), statistics.median(values[-size:])


def test_a_million_events_memory_stays_flat_and_throughput_steady() -> None:
    exporter = CountingExporter()
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(  # sized as telemetry.setup() sizes it
            exporter,
            max_queue_size=MAX_QUEUE_SIZE,
            max_export_batch_size=MAX_EXPORT_BATCH,
            schedule_delay_millis=SCHEDULE_DELAY_MS,
        )
    )
    registry = CollectorRegistry()
    telemetry = Telemetry(provider, registry)
    rates: list[float] = []  # events/s of each group after the warm-up
    rss: list[int] = []  # after each SAMPLE_EVERY groups after the warm-up, settled

    async def soak() -> float:
        started = time.perf_counter()
        for batch in range(BATCHES):
            began = time.perf_counter()
            await one_batch(telemetry)
            took = time.perf_counter() - began
            if batch >= WARM_UP:
                rates.append(GROUP_SIZE / took)
                if (batch - WARM_UP) % SAMPLE_EVERY == SAMPLE_EVERY - 1:
                    settle(provider)
                    rss.append(rss_bytes())
        return time.perf_counter() - started

    elapsed = asyncio.run(soak())
    settle(provider)

    # Bytes retained per completed group, precisely: tracemalloc over TRACED_GROUPS more
    # groups, settled after each; the medians of the first and last third are compared.
    async def traced() -> list[int]:
        sizes = []
        for _ in range(TRACED_GROUPS):
            await one_batch(telemetry)
            settle(provider)
            sizes.append(tracemalloc.get_traced_memory()[0])
        return sizes

    tracemalloc.start()
    sizes = asyncio.run(traced())
    tracemalloc.stop()
    third = TRACED_GROUPS // 3
    early_size, late_size = window_medians([float(s) for s in sizes], third)
    per_group = (late_size - early_size) / (TRACED_GROUPS - third)

    # What the history costs when a state is kept alive: bytes per invocation.
    tracemalloc.start()
    settle(provider)
    before = tracemalloc.get_traced_memory()[0]
    kept = asyncio.run(one_batch(telemetry))
    settle(provider)
    history_bytes = (tracemalloc.get_traced_memory()[0] - before) / GROUP_SIZE
    tracemalloc.stop()
    assert len(kept.history) == 2 * GROUP_SIZE + 2

    provider.shutdown()
    samples = max(1, len(rss) // 5)
    rss_early, rss_late = window_medians([float(r) for r in rss], samples)
    growth = rss_late - rss_early
    groups_between = len(rss) * SAMPLE_EVERY - samples * SAMPLE_EVERY
    first, last = window_medians(rates, WINDOW)
    groups = BATCHES + TRACED_GROUPS + 1
    spans_expected = groups * (GROUP_SIZE + 1)
    events_metric = sum(
        s.value for m in registry.collect() for s in m.samples if s.name == "rh_agents_events_total"
    )
    print(
        f"\nsoak: {BATCHES * GROUP_SIZE:,} events in {BATCHES} groups of {GROUP_SIZE} "
        f"(max_workers={MAX_WORKERS}) with telemetry on, {elapsed:.1f}s, "
        f"{BATCHES * GROUP_SIZE / elapsed:,.0f} events/s overall"
        f"\nthroughput (median events/s of a group): first {WINDOW} after a warm-up of "
        f"{WARM_UP}: {first:,.0f}; last {WINDOW}: {last:,.0f} ({last / first:.0%})"
        f"\nRSS (spans flushed, median of {samples} samples): {rss_early / MIB:.1f} MiB after "
        f"warm-up -> {rss_late / MIB:.1f} MiB at the end (growth {growth / MIB:+.2f} MiB "
        f"over ~{groups_between} groups, {growth / max(1, groups_between) / 1024:+.2f} "
        f"KiB/group); peak sample {max(rss) / MIB:.1f} MiB"
        f"\ntracemalloc over {TRACED_GROUPS} more groups (spans flushed): {per_group:+.0f} "
        f"bytes retained per group of {GROUP_SIZE}"
        f"\nhistory kept by a live state: {history_bytes:,.0f} bytes per invocation "
        f"(2 entries: started, completed)"
        f"\nspans exported: {exporter.spans:,} of {spans_expected:,}; "
        f"rh_agents_events_total: {events_metric:,.0f}"
    )
    # Flat memory. A leak of one span or one history entry per group (~1-3 KB), or of two
    # bytes per event, fails the tracemalloc bound; RSS (allocator noise included) may not
    # move by more than 16 MiB, i.e. ~18 bytes per event over the run.
    assert per_group < 2048
    assert growth < 16 * MIB
    # No slowdown over time: the late groups are not much slower than the early ones
    # (generous, the machine is shared; a per-event cost that grows with the number of
    # runs would halve throughput long before the end).
    assert last > 0.5 * first
    # Nothing lost on the way to the exporter or the metrics.
    assert exporter.spans == spans_expected
    assert events_metric == groups * GROUP_SIZE
