"""Resuming a run that crashed in the middle of a parallel group (SQLite journal)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rh_agents import (
    ErrorStrategy,
    ExecutionEvent,
    ExecutionResult,
    ExecutionState,
    ExecutionStatus,
    Tool,
)
from rh_agents.core.events import EventKind
from rh_agents.state_backends import SQLiteStateBackend

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

DOCS = [f"doc-{i}" for i in range(6)]


class Pipeline:
    """A program whose group items are ExecutionEvents; counts handler calls."""

    def __init__(self, block_from: int | None = None, fail_at: int | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.completed = 0
        self.progress = asyncio.Event()
        self.block_from = block_from
        self.fail_at = fail_at
        self.tool = Tool(name="summarize", handler=self.summarize)

    async def summarize(self, doc: Any, extra: Any, state: Any) -> dict[str, Any]:
        self.calls[doc] += 1
        index = DOCS.index(doc)
        if self.fail_at is not None and index == self.fail_at:
            raise RuntimeError(f"crash while summarizing {doc}")
        if self.block_from is not None and index >= self.block_from:
            await asyncio.Event().wait()  # the process "dies" here
        self.completed += 1
        self.progress.set()
        return {"doc": doc, "words": 10 * (index + 1)}

    async def run(
        self, state: ExecutionState, strategy: ErrorStrategy
    ) -> list[ExecutionResult[Any]]:
        async with state.parallel(max_workers=2, name="summaries", error_strategy=strategy) as p:
            for doc in DOCS:
                p.add(ExecutionEvent(actor=self.tool)(doc, {}, state), name=doc)
            return await p.gather()


async def wait_for_completed(pipeline: Pipeline, count: int) -> None:
    while pipeline.completed < count:
        pipeline.progress.clear()
        await pipeline.progress.wait()


def check_resumed(results: list[ExecutionResult[Any]], done: int, resumed: Pipeline) -> None:
    assert [r.result for r in results] == [
        {"doc": doc, "words": 10 * (i + 1)} for i, doc in enumerate(DOCS)
    ]
    assert all(r.ok for r in results)
    # Completed items come back from the history without running their handlers.
    assert sorted(resumed.calls) == DOCS[done:]
    assert all(n == 1 for n in resumed.calls.values())
    for r in results[:done]:
        assert r.status is ExecutionStatus.RECOVERED and r.metadata["is_replayed"]
    for r in results[done:]:
        assert r.status is ExecutionStatus.COMPLETED and not r.metadata["is_replayed"]
    assert [r.metadata["address"] for r in results] == [
        f"parallel:summaries[{i}]/summarize" for i in range(len(DOCS))
    ]


async def test_resume_after_a_crash_mid_group_runs_only_the_unfinished_items(
    tmp_path: Path,
) -> None:
    backend = SQLiteStateBackend(tmp_path / "history.db")
    first = Pipeline(block_from=4)
    state = ExecutionState(state_backend=backend)
    task = asyncio.create_task(first.run(state, ErrorStrategy.FAIL_SLOW))
    await wait_for_completed(first, 4)
    task.cancel()  # the crash, with items 4 and 5 in flight
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sum(first.calls.values()) == 6

    restored = ExecutionState.load_from_state_id(state.state_id, backend)
    assert restored.is_restored
    for i in range(4):
        assert restored.history.has_completed_event(f"parallel:summaries[{i}]/summarize")
    assert not restored.history.has_completed_event("parallel:summaries[4]/summarize")

    second = Pipeline()
    results = await second.run(restored, ErrorStrategy.FAIL_SLOW)
    check_resumed(results, 4, second)
    recovered = [
        e.address
        for e in restored.history.get_event_list()
        if e.kind == EventKind.EVENT and e.execution_status is ExecutionStatus.RECOVERED
    ]
    assert sorted(recovered) == [f"parallel:summaries[{i}]/summarize" for i in range(4)]
    # The group got the same deterministic id in both runs.
    gids = {e.group_id for e in restored.history.get_event_list() if e.kind == EventKind.GROUP}
    assert len(gids) == 1
    backend.close()


async def test_resume_after_fail_fast_stopped_the_group(tmp_path: Path) -> None:
    backend = SQLiteStateBackend(tmp_path / "history.db")
    first = Pipeline(fail_at=3)
    state = ExecutionState(state_backend=backend)
    with pytest.raises(Exception, match="crash while summarizing doc-3"):
        await first.run(state, ErrorStrategy.FAIL_FAST)
    done = first.completed
    assert done == 3  # docs 0-2 finished (max_workers=2), 3 failed, 4-5 never started
    assert "doc-5" not in first.calls

    restored = ExecutionState.load_from_state_id(state.state_id, backend)
    second = Pipeline()
    results = await second.run(restored, ErrorStrategy.FAIL_FAST)
    check_resumed(results, done, second)
    backend.close()
