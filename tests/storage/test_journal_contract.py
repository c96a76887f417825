"""The contract of a run journal, for every backend (``BACKEND_KINDS`` in conftest.py).

What the core relies on from any backend, in-memory, SQLite, file system (and the next
ones, which only add themselves to ``BACKEND_KINDS``):

* records get consecutive positions; the journal's length is its high-water mark;
* one writer per run: a second state recording the same run while the first holds the
  lease is refused with ``StateLockedError`` naming the holder; the lease is given back
  when the run has nothing open; a state loaded before another writer recorded is
  refused too; inspecting a run (loading it) needs no lease;
* concurrent completions share commits, and a result is handed back only once its
  COMPLETED record is committed;
* a resume writes no replayed entries again, a VALIDATION replay writes nothing;
* a new state cannot take the id of a stored run.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter
from typing import Any

import pytest
from conftest import Backend

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.errors import LifecycleError, StateLockedError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.state_recovery import ReplayMode
from rh_agents.core.storage import JournalOpening, LeasedJournal
from rh_agents.core.types import ExecutionStatus

S = ExecutionStatus


class Program:
    """A pipeline of ``items`` tool calls in a group; counts handler calls; a handler
    may be held at ``hold`` until ``release`` is set."""

    def __init__(self, items: int = 4, hold: int | None = None, scale: int = 2) -> None:
        self.items = items
        self.calls: Counter[int] = Counter()
        self.hold = hold
        self.held = asyncio.Event()
        self.release = asyncio.Event()

        async def step(data: int, extra: Any, state: ExecutionState) -> int:
            self.calls[data] += 1
            if data == self.hold:
                self.held.set()
                await self.release.wait()
            return data * scale

        self.tool = Tool(name="step", handler=step)

        async def pipeline(data: Any, extra: Any, state: ExecutionState) -> list[int]:
            async with state.parallel(max_workers=4, name="steps") as group:
                for index in range(self.items):
                    group.add(ExecutionEvent(actor=self.tool)(index, {}, state))
                return [int(r.result) for r in await group.gather()]

        self.agent = Agent(name="pipeline", handler=pipeline)

    async def run(self, state: ExecutionState) -> list[int]:
        result = await ExecutionEvent(actor=self.agent)(None, {}, state)
        if not result.ok:
            raise result.exception or RuntimeError(result.error_message)
        return list(result.result)


def test_every_backend_is_a_leased_journal(backend: Backend) -> None:
    assert isinstance(backend, LeasedJournal)


async def test_records_get_consecutive_positions_up_to_the_high_water_mark(
    backend: Backend,
) -> None:
    journal = backend.open_run(JournalOpening("run-1"))
    for seq in range(1, 6):
        journal.append({"seq": seq, "address": "a", "status": "started"})
    await journal.flush()
    journal.close()
    await journal.wait_closed()
    assert [r["seq"] for r in backend.load_events("run-1")] == [1, 2, 3, 4, 5]
    assert [r["seq"] for r in backend.iter_events("run-1")] == [1, 2, 3, 4, 5]
    assert backend.journal_length("run-1") == 5
    assert backend.list_journals() == ["run-1"]
    assert journal.statistics().records == 5


async def test_a_result_is_handed_back_only_once_its_completion_is_committed(
    backend: Backend,
) -> None:
    seen: list[tuple[int, int]] = []
    state = ExecutionState(state_id="run-1", state_backend=backend)

    async def spy(data: int, extra: Any, state: ExecutionState) -> int:
        return data

    inner = Tool(name="inner", handler=spy)

    async def outer(data: Any, extra: Any, state: ExecutionState) -> int:
        result = await ExecutionEvent(actor=inner)(7, {}, state)
        # the completion the caller just received is in the journal already
        stored = [r for r in backend.load_events("run-1") if r["address"] == "outer/inner"]
        seen.append((len(stored), result.result))
        return int(result.result)

    await ExecutionEvent(actor=Agent(name="outer", handler=outer))(None, {}, state)
    assert seen == [(2, 7)]  # STARTED and COMPLETED, both committed


async def test_concurrent_completions_share_commits(backend: Backend) -> None:
    release, all_waiting = asyncio.Event(), asyncio.Event()
    waiting = 0

    async def step(data: int, extra: Any, state: ExecutionState) -> int:
        nonlocal waiting
        waiting += 1
        if waiting == 60:
            all_waiting.set()
        await release.wait()  # all 60 complete at the same moment
        return data

    tool = Tool(name="step", handler=step)
    state = ExecutionState(state_id="run-1", state_backend=backend)

    async def pipeline(data: Any, extra: Any, state: ExecutionState) -> int:
        async with state.parallel(max_workers=60, name="steps") as group:
            for index in range(60):
                group.add(ExecutionEvent(actor=tool)(index, {}, state))
            gathering = asyncio.create_task(group.gather())
            await all_waiting.wait()
            release.set()
            return len(await gathering)

    assert await ExecutionEvent(actor=Agent(name="pipeline", handler=pipeline))(None, {}, state)
    stats = state.recorder.statistics()
    assert stats.records == backend.journal_length("run-1") == 2 + 2 + 2 * 60
    if type(backend).__name__ != "InMemoryStateBackend":  # it appends in place
        # one transaction carried many completions
        assert stats.largest_commit >= 10, stats
        assert stats.commits < stats.records / 3, stats


# ------------------------------------------------------------------ the lease


async def test_a_second_state_recording_the_same_run_is_refused(backend: Backend) -> None:
    first = Program(hold=2)
    state = ExecutionState(state_id="run-1", state_backend=backend)
    running = asyncio.create_task(first.run(state))
    await first.held.wait()  # the first state holds the lease, a call is in flight

    # inspecting the run needs no lease
    inspected = ExecutionState.load_from_state_id("run-1", backend)
    assert inspected.history["pipeline"].execution_status is S.STARTED

    second = Program()
    with pytest.raises(StateLockedError) as info:
        await second.run(inspected)
    message = str(info.value)
    assert "State 'run-1' is being recorded by another writer" in message
    assert f"(host {socket.gethostname()}, pid {os.getpid()}, since " in message
    assert "only one process, and one ExecutionState, may record a run at a time" in message
    assert "nothing was recorded and no call ran" in message
    assert info.value.state_id == "run-1"
    assert info.value.holder.pid == os.getpid()
    assert second.calls == Counter()

    first.release.set()
    assert await running == [0, 2, 4, 6]
    assert first.calls == Counter({0: 1, 1: 1, 2: 1, 3: 1})


async def test_a_state_loaded_before_another_writer_recorded_is_refused(
    backend: Backend,
) -> None:
    first = Program(hold=1)
    state = ExecutionState(state_id="run-1", state_backend=backend)
    running = asyncio.create_task(first.run(state))
    await first.held.wait()
    stale = ExecutionState.load_from_state_id("run-1", backend)
    loaded = len(stale.history)
    first.release.set()
    await running  # the run completed and gave its lease back

    calls: Counter[int] = Counter()

    async def count(data: int, extra: Any, state: ExecutionState) -> None:
        calls[data] += 1  # never called

    other = Tool(name="step", handler=count)

    async def again(data: Any, extra: Any, state: ExecutionState) -> None:
        await ExecutionEvent(actor=other)(99, {}, state)

    with pytest.raises(StateLockedError) as info:
        await ExecutionEvent(actor=Agent(name="pipeline", handler=again))(None, {}, stale)
    message = str(info.value)
    assert (
        f"The journal of state 'run-1' holds {backend.journal_length('run-1')} record(s)" in message
    )
    assert f"but this state was loaded with {loaded}" in message
    assert "load it again with ExecutionState.load_from_state_id('run-1', backend)" in message
    assert not calls


async def test_the_lease_is_given_back_when_the_run_has_nothing_open(backend: Backend) -> None:
    program = Program()
    state = ExecutionState(state_id="run-1", state_backend=backend)
    assert await program.run(state) == [0, 2, 4, 6]
    # a second state of this process resumes at once: replays, nothing runs again
    resumed = ExecutionState.load_from_state_id("run-1", backend)
    assert await program.run(resumed) == [0, 2, 4, 6]
    assert program.calls == Counter({0: 1, 1: 1, 2: 1, 3: 1})
    # and records into the run: the same state id, a new top-level call

    async def five(data: Any, extra: Any, state: ExecutionState) -> int:
        return 5

    extra = Tool(name="pipeline", handler=five)
    more = ExecutionState.load_from_state_id("run-1", backend)
    result = await ExecutionEvent(actor=extra, tag="again")(None, {}, more)
    assert result.ok


# -------------------------------------------------------- what a resume writes


async def test_a_resume_does_not_write_replayed_calls_again(backend: Backend) -> None:
    crashing = Program(hold=3)
    state = ExecutionState(state_id="run-1", state_backend=backend)
    running = asyncio.create_task(crashing.run(state))
    await crashing.held.wait()
    running.cancel()  # the crash, with item 3 in flight
    with pytest.raises(asyncio.CancelledError):
        await running
    before = backend.load_events("run-1")

    program = Program()
    resumed = ExecutionState.load_from_state_id("run-1", backend)
    assert await program.run(resumed) == [0, 2, 4, 6]
    assert program.calls == Counter({3: 1})
    after = backend.load_events("run-1")
    assert after[: len(before)] == before
    added = [(r["address"], r["status"]) for r in after[len(before) :]]
    assert ("pipeline/parallel:steps[3]/step", "completed") in added
    assert not [a for a in added if a[1] == "recovered"]
    # only the run's new work: pipeline and group start/end, item 3 start/end
    assert len(added) == 6, added


async def test_a_validation_replay_never_changes_the_recorded_run(backend: Backend) -> None:
    program = Program()
    state = ExecutionState(state_id="run-1", state_backend=backend)
    assert await program.run(state) == [0, 2, 4, 6]
    recorded = backend.load_events("run-1")

    changed = Program(scale=3)  # the same program, now giving other results
    validating = ExecutionState.load_from_state_id(
        "run-1", backend, replay_mode=ReplayMode.VALIDATION
    )
    assert await changed.run(validating) == [0, 3, 6, 9]
    assert len(validating.divergences) == 3 + 1  # items 1-3 and the pipeline
    assert backend.load_events("run-1") == recorded  # nothing written

    normal = ExecutionState.load_from_state_id("run-1", backend)
    assert await Program().run(normal) == [0, 2, 4, 6]  # the recorded results


def test_a_new_state_cannot_take_the_id_of_a_stored_run(backend: Backend) -> None:
    journal = backend.open_run(JournalOpening("run-1"))
    journal.append({"seq": 1, "address": "a", "status": "started"})
    asyncio.run(journal.flush())
    journal.close()
    with pytest.raises(LifecycleError, match=r"already holds a history for state 'run-1'"):
        ExecutionState(state_id="run-1", state_backend=backend)
