"""interrupt(): pause for a human, resume with the answer (same process or a new one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rh_agents import (
    Agent,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    Interrupted,
    PendingInterrupt,
    Tool,
    interrupt,
)
from rh_agents.core.errors import InvalidArgumentError, LifecycleError
from rh_agents.storage import InMemoryStateBackend
from rh_agents.testing import TelemetryCapture

S = ExecutionStatus


class Pipeline:
    """draft (a tool) -> approve (a tool that asks a human) -> the verdict."""

    def __init__(self) -> None:
        self.runs: list[str] = []

        async def draft(topic: str, extra: Any, state: Any) -> str:
            self.runs.append("draft")
            return f"A post about {topic}"

        async def approve(text: str, extra: Any, state: Any) -> str:
            self.runs.append("approve")
            answer = await interrupt({"draft": text, "question": "Publish?"})
            return "published" if answer == "yes" else "dropped"

        self.draft = Tool(name="draft", handler=draft)
        self.approve = Tool(name="approve", handler=approve)

        async def publish(topic: str, extra: Any, state: ExecutionState) -> str:
            text = await ExecutionEvent(actor=self.draft)(topic, extra, state)
            verdict = await ExecutionEvent(actor=self.approve)(text.result, extra, state)
            if not verdict.ok:
                raise RuntimeError(f"approval failed: {verdict.error_message}")
            return str(verdict.result)

        self.publish = Agent(name="publish", handler=publish)

    async def call(self, state: ExecutionState) -> Any:
        return await ExecutionEvent(actor=self.publish)("owls", {}, state)


def statuses(state: ExecutionState) -> list[tuple[str, str]]:
    return [(e.address, e.execution_status.value) for e in state.history.get_event_list()]


async def test_a_run_pauses_and_resumes_with_the_answer(rh_telemetry: TelemetryCapture) -> None:
    backend = InMemoryStateBackend()
    pipeline = Pipeline()
    state = ExecutionState(state_id="run-1", state_backend=backend)
    result = await pipeline.call(state)

    assert not result.ok and result.status is S.AWAITING
    assert result.error_type == "Interrupted"
    assert isinstance(result.exception, Interrupted)
    assert state.pending_interrupts == [
        PendingInterrupt(
            "publish/approve/interrupt", {"draft": "A post about owls", "question": "Publish?"}
        )
    ]
    assert statuses(state) == [
        ("publish", "started"),
        ("publish/draft", "started"),
        ("publish/draft", "completed"),
        ("publish/approve", "started"),
        ("publish/approve/interrupt", "awaiting"),
        ("publish/approve", "awaiting"),
        ("publish", "awaiting"),
    ]
    assert rh_telemetry.span_tree() == (
        "invoke_agent publish [outcome='awaiting']\n"
        "  execute_tool draft [outcome='completed']\n"
        "  execute_tool approve [outcome='awaiting']"
    )
    rh_telemetry.assert_metric(
        "rh_agents_events_total", 1, name="approve", operation="execute_tool", outcome="awaiting"
    )
    rh_telemetry.assert_no_open_spans()

    # Later, from the stored history:
    resumed = ExecutionState.load_from_state_id("run-1", backend)
    assert [p.address for p in resumed.pending_interrupts] == ["publish/approve/interrupt"]
    resumed.resume_with("yes")
    result = await pipeline.call(resumed)
    assert result.ok and result.result == "published"
    assert pipeline.runs == ["draft", "approve", "approve"]  # draft replayed, not re-run
    assert resumed.pending_interrupts == []
    answered = resumed.history.get_completed_event("publish/approve/interrupt")
    assert answered is not None and answered.result == "yes"


async def test_resume_on_the_same_state_in_the_same_process() -> None:
    pipeline = Pipeline()
    state = ExecutionState()
    assert (await pipeline.call(state)).status is S.AWAITING
    state.resume_with("no")
    result = await pipeline.call(state)
    assert result.ok and result.result == "dropped"
    assert pipeline.runs == ["draft", "approve", "approve"]


async def test_an_answer_is_replayed_by_a_later_resume() -> None:
    backend = InMemoryStateBackend()
    asked: list[str] = []

    async def two_questions(data: Any, extra: Any, state: Any) -> list[Any]:
        first = await interrupt("first?")
        asked.append(f"got {first}")
        second = await interrupt("second?")
        return [first, second]

    tool = Tool(name="ask", handler=two_questions)
    state = ExecutionState(state_id="q", state_backend=backend)
    assert (await ExecutionEvent(actor=tool)(None, {}, state)).status is S.AWAITING
    state = ExecutionState.load_from_state_id("q", backend)
    state.resume_with(1)
    result = await ExecutionEvent(actor=tool)(None, {}, state)
    assert result.status is S.AWAITING
    assert [p.address for p in state.pending_interrupts] == ["ask/interrupt#1"]
    state = ExecutionState.load_from_state_id("q", backend)
    state.resume_with(2)
    result = await ExecutionEvent(actor=tool)(None, {}, state)
    assert result.ok and result.result == [1, 2]
    assert asked == ["got 1", "got 1"]


async def test_in_a_group_one_waiting_item_does_not_block_the_others(
    rh_telemetry: TelemetryCapture,
) -> None:
    backend = InMemoryStateBackend()
    runs: list[str] = []

    async def review(doc: str, extra: Any, state: Any) -> str:
        runs.append(doc)
        if doc == "contract":
            verdict = await interrupt({"doc": doc})
            return f"{doc}: {verdict}"
        await asyncio.sleep(0)
        return f"{doc}: auto-approved"

    reviewer = Tool(name="review", handler=review)

    async def batch(docs: list[str], extra: Any, state: ExecutionState) -> list[Any]:
        async with state.parallel(max_workers=3, name="docs") as p:
            for doc in docs:
                p.add(lambda doc=doc: ExecutionEvent(actor=reviewer, tag=doc)(doc, extra, state))
            results = await p.gather()
        return [r.result for r in results]

    agent = Agent(name="batch", handler=batch)
    docs = ["memo", "contract", "invoice"]
    state = ExecutionState(state_id="b", state_backend=backend)
    result = await ExecutionEvent(actor=agent)(docs, {}, state)
    assert result.status is S.AWAITING
    assert sorted(runs) == ["contract", "invoice", "memo"]  # the others finished
    completed = {
        e.address for e in state.history.get_event_list() if e.execution_status is S.COMPLETED
    }
    assert completed == {
        "batch/parallel:docs",  # the group ended: every item has its result
        "batch/parallel:docs[0]/review[memo]",
        "batch/parallel:docs[2]/review[invoice]",
    }
    assert [p.address for p in state.pending_interrupts] == [
        "batch/parallel:docs[1]/review[contract]/interrupt"
    ]
    assert rh_telemetry.span_tree() == (
        "invoke_agent batch [outcome='awaiting']\n"
        "  parallel docs [outcome='completed']\n"
        "    execute_tool review [outcome='completed']\n"
        "    execute_tool review [outcome='awaiting']\n"
        "    execute_tool review [outcome='completed']"
    )

    state = ExecutionState.load_from_state_id("b", backend)
    state.resume_with("signed")
    result = await ExecutionEvent(actor=agent)(docs, {}, state)
    assert result.ok
    assert result.result == ["memo: auto-approved", "contract: signed", "invoice: auto-approved"]
    assert sorted(runs) == ["contract", "contract", "invoice", "memo"]  # only it re-ran


async def test_several_pending_interrupts_are_answered_by_address() -> None:
    async def ask(name: str, extra: Any, state: Any) -> Any:
        return await interrupt(f"ok for {name}?")

    asker = Tool(name="ask", handler=ask)

    async def both(data: Any, extra: Any, state: ExecutionState) -> list[Any]:
        async with state.parallel(name="g") as p:
            p.add(lambda: ExecutionEvent(actor=asker)("a", extra, state))
            p.add(lambda: ExecutionEvent(actor=asker)("b", extra, state))
            return [r.result for r in await p.gather()]

    agent = Agent(name="both", handler=both)
    state = ExecutionState()
    result = await ExecutionEvent(actor=agent)(None, {}, state)
    assert result.status is S.AWAITING
    assert isinstance(result.exception, Interrupted)
    assert len(result.exception.interrupts) == 2
    pending = [p.address for p in state.pending_interrupts]
    assert pending == ["both/parallel:g[0]/ask/interrupt", "both/parallel:g[1]/ask/interrupt"]
    with pytest.raises(InvalidArgumentError, match=r"2 interrupts are pending"):
        state.resume_with("yes")
    state.resume_with({pending[0]: "yes a", pending[1]: "yes b"})
    result = await ExecutionEvent(actor=agent)(None, {}, state)
    assert result.ok and result.result == ["yes a", "yes b"]


async def test_interrupt_outside_a_handler_and_resume_without_pending_are_usage_errors() -> None:
    with pytest.raises(LifecycleError, match=r"interrupt\(\) must be awaited inside a handler"):
        await interrupt("x")
    with pytest.raises(LifecycleError, match=r"found no pending interrupt"):
        ExecutionState().resume_with("x")


async def test_a_pause_is_not_caught_by_except_exception_nor_retried() -> None:
    from rh_agents import Policy, RetryConfig

    caught: list[BaseException] = []

    async def careful(data: Any, extra: Any, state: Any) -> str:
        try:
            return str(await interrupt("ok?"))
        except Exception as exc:  # a handler's usual safety net
            caught.append(exc)
            return "swallowed"

    policy = Policy(retry=RetryConfig(max_attempts=3, initial_delay=0))
    tool = Tool(name="careful", handler=careful, policy=policy)
    result = await ExecutionEvent(actor=tool)(None, {}, ExecutionState())
    assert result.status is S.AWAITING and caught == []
    stats = policy.statistics().retry
    assert stats is not None and stats.retries == 0


async def test_usage_errors_say_what_to_do() -> None:
    outside = (
        "interrupt() must be awaited inside a handler (or a parallel group's item) of a "
        "running call; outside one there is no run to pause. Pass state= from an item of "
        "a group opened outside any handler."
    )
    with pytest.raises(LifecycleError) as caught:
        await interrupt("x")
    assert str(caught.value) == outside
    with pytest.raises(LifecycleError) as caught:  # a state, but no running call
        await interrupt("x", state=ExecutionState())
    assert str(caught.value) == outside
    with pytest.raises(LifecycleError) as caught:
        ExecutionState().resume_with("x")
    assert str(caught.value) == (
        "resume_with() found no pending interrupt in this state: the run is not waiting "
        "for an answer (state.pending_interrupts is empty)."
    )


async def test_several_pending_need_a_dict_of_their_addresses() -> None:
    state = ExecutionState()
    async with state.parallel(name="g") as p:
        p.add(lambda: interrupt("first", state=state))
        p.add(lambda: interrupt("second", state=state))
        with pytest.raises(Interrupted):
            await p.gather()
    with pytest.raises(InvalidArgumentError) as caught:
        state.resume_with({"elsewhere": 1})
    assert str(caught.value) == (
        "2 interrupts are pending (parallel:g[0]/interrupt, parallel:g[1]/interrupt); "
        "answer them with a dict keyed by their addresses: state.resume_with({address: "
        "answer, ...}) (the addresses are in state.pending_interrupts)."
    )


async def test_an_item_of_a_group_outside_any_handler_pauses_with_the_state_given() -> None:
    state = ExecutionState()
    async with state.parallel(name="review") as p:
        p.add(lambda: interrupt({"draft": "v1"}, state=state))
        p.add(lambda: asyncio.sleep(0, result="other"))
        with pytest.raises(Interrupted) as caught:
            await p.gather()
    address = "parallel:review[0]/interrupt"
    assert caught.value.interrupts == (PendingInterrupt(address, {"draft": "v1"}),)
    assert state.pending_interrupts == [PendingInterrupt(address, {"draft": "v1"})]
    (waiting,) = [e for e in state.history.get_event_list() if e.address == address]
    group_id = waiting.group_id
    assert group_id is not None and group_id.startswith("g-")
    assert (
        waiting.actor_name,
        waiting.execution_status,
        waiting.message,
        waiting.metadata,
        waiting.parallel_index,
        waiting.is_parallel,
        waiting.result,
    ) == (
        "interrupt",
        S.AWAITING,
        "awaiting an answer",
        {"interrupt": {"draft": "v1"}},
        0,
        True,
        None,
    )
    assert waiting.actor is not None and waiting.actor.name == "interrupt"

    state.resume_with("approved")
    async with state.parallel(name="review") as p:
        p.add(lambda: interrupt({"draft": "v1"}, state=state))
        p.add(lambda: asyncio.sleep(0, result="other"))
        results = await p.gather()
    assert [r.result for r in results] == ["approved", "other"]
    answered = state.history.get_completed_event(address)
    assert answered is not None
    assert (answered.message, answered.metadata, answered.result, answered.group_id) == (
        "answered",
        {"interrupt": {"draft": "v1"}},
        "approved",
        group_id,
    )
    assert state.pending_interrupts == []


async def test_an_interrupt_in_a_plain_handler_is_not_parallel() -> None:
    async def ask(data: Any, extra: Any, state: Any) -> Any:
        return await interrupt("sure?")

    state = ExecutionState()
    result = await ExecutionEvent(actor=Tool(name="ask", handler=ask))(None, {}, state)
    assert result.status is S.AWAITING
    entry = state.history.get_event_list()[-2]  # the interrupt's, then the call's own
    assert entry.address == "ask/interrupt"
    assert (entry.group_id, entry.parallel_index, entry.is_parallel) == (None, None, False)
