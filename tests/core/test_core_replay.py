"""Snapshots, state backends, resume and the three replay modes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.errors import (
    InvalidArgumentError,
    LifecycleError,
    SnapshotMismatchError,
    StateNotFoundError,
)
from rh_agents.core.events import EventKind, ExecutionEvent
from rh_agents.core.execution import EventBus, ExecutionState
from rh_agents.core.state_recovery import ReplayMode, StateMetadata, StateSnapshot, StateStatus
from rh_agents.core.types import ExecutionStatus
from rh_agents.state_backends import (
    InMemoryStateBackend,
    SQLiteStateBackend,
    StateBackend,
)

S = ExecutionStatus


class Query(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str
    score: float = 1.0


class Calls:
    """A handler that counts its calls and computes from its input."""

    def __init__(self, fn: Any = None) -> None:
        self.calls: list[Any] = []
        self.fn = fn or (lambda data: Answer(answer=f"about {data.text}"))

    async def __call__(self, data: Any, extra: Any, state: Any) -> Any:
        self.calls.append(data)
        return self.fn(data)


def make_tool(name: str = "search", fn: Any = None, output_model: Any = Answer) -> Tool:
    return Tool(name=name, input_model=Query, output_model=output_model, handler=Calls(fn))


def calls_of(tool: Tool) -> list[Any]:
    handler = tool.handler
    assert isinstance(handler, Calls)
    return handler.calls


# ------------------------------------------------------------------ snapshots


async def test_snapshot_round_trip_restores_history_storage_and_metadata() -> None:
    tool = make_tool()
    state = ExecutionState(metadata=StateMetadata(pipeline_name="triage", tags=["t"]))
    state.storage["cursor"] = {"page": 2}
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, state)

    snapshot = state.to_snapshot(status=StateStatus.PAUSED)
    assert snapshot.state_id == state.state_id
    assert snapshot.status is StateStatus.PAUSED
    # snapshots are plain JSON
    snapshot = StateSnapshot.model_validate_json(snapshot.model_dump_json())

    restored = ExecutionState.from_snapshot(snapshot, replay_mode="republish_all")
    assert restored.state_id == state.state_id
    assert restored.replay_mode is ReplayMode.REPUBLISH_ALL
    assert restored.storage == {"cursor": {"page": 2}}
    assert restored.metadata.pipeline_name == "triage"
    assert restored.is_restored
    assert [(e.address, e.execution_status) for e in restored.history.get_event_list()] == [
        ("search", S.STARTED),
        ("search", S.COMPLETED),
    ]
    assert restored.history.get_event_result("search") == {"answer": "about a", "score": 1.0}


async def test_checkpoint_and_load_from_state_id(backend: StateBackend) -> None:
    tool = make_tool()
    state = ExecutionState(state_backend=backend)
    state.storage["k"] = [1, 2]
    first = await ExecutionEvent(actor=tool)(Query(text="a"), {}, state)
    assert state.save_checkpoint(status=StateStatus.COMPLETED)
    assert backend.exists(state.state_id)

    restored = ExecutionState.load_from_state_id(state.state_id, backend)
    assert restored.storage == {"k": [1, 2]}
    assert restored.history.has_completed_event("search")

    again = await ExecutionEvent(actor=tool)(Query(text="a"), {}, restored)
    assert calls_of(tool) == [Query(text="a")]  # not called again
    assert isinstance(again.result, Answer)
    assert again.result == first.result


async def test_journal_makes_a_run_resumable_without_any_checkpoint(
    backend: StateBackend,
) -> None:
    tool = make_tool()
    state = ExecutionState(state_backend=backend)
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, state)
    # no save_checkpoint: every status change was appended to the journal as it happened
    restored = ExecutionState.load_from_state_id(state.state_id, backend)
    result = await ExecutionEvent(actor=tool)(Query(text="a"), {}, restored)
    assert result.status is S.RECOVERED
    assert len(calls_of(tool)) == 1


# ------------------------------------------------------------------ replay semantics


async def test_completed_invocation_is_replayed_without_calling_the_handler() -> None:
    tool = make_tool()
    state = ExecutionState()
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, state)

    bus_seen: list[Any] = []
    bus = EventBus()
    bus.subscribe(bus_seen.append)
    restored = ExecutionState.from_snapshot(state.to_snapshot(), event_bus=bus)
    event: ExecutionEvent[Any] = ExecutionEvent(actor=tool)
    result = await event(Query(text="a"), {}, restored)

    assert len(calls_of(tool)) == 1
    assert result.ok and result.status is S.RECOVERED
    assert isinstance(result.result, Answer)  # re-validated into the output_model
    assert result.result == Answer(answer="about a")
    assert event.is_replayed is True
    assert event.skip_republish is True
    assert event.execution_status is S.RECOVERED
    assert event.address == "search"
    assert restored.history["search"].execution_status is S.RECOVERED
    assert restored.history["search"].is_replayed
    assert bus_seen == []  # NORMAL: replayed events are not published again


async def test_reused_event_object_publishes_live_calls_after_a_replay() -> None:
    tool = make_tool()
    state = ExecutionState()
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, state)

    seen: list[Any] = []
    bus = EventBus()
    bus.subscribe(seen.append)
    restored = ExecutionState.from_snapshot(state.to_snapshot(), event_bus=bus)
    event: ExecutionEvent[Any] = ExecutionEvent(actor=tool)
    replayed = await event(Query(text="a"), {}, restored)
    assert replayed.status is S.RECOVERED and event.skip_republish is True
    live = await event(Query(text="b"), {}, restored)  # a new address: runs

    assert live.status is S.COMPLETED
    assert event.skip_republish is False and event.is_replayed is False
    assert [(e.address, e.execution_status) for e in seen] == [
        ("search#1", S.STARTED),
        ("search#1", S.COMPLETED),
    ]


async def test_republish_all_publishes_replayed_events() -> None:
    tool = make_tool()
    state = ExecutionState()
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, state)

    seen: list[Any] = []
    bus = EventBus()
    bus.subscribe(seen.append)
    restored = ExecutionState.from_snapshot(
        state.to_snapshot(), event_bus=bus, replay_mode=ReplayMode.REPUBLISH_ALL
    )
    event: ExecutionEvent[Any] = ExecutionEvent(actor=tool)
    result = await event(Query(text="a"), {}, restored)

    assert len(calls_of(tool)) == 1
    assert result.status is S.RECOVERED
    assert event.skip_republish is False
    assert [(e.address, e.execution_status, e.is_replayed) for e in seen] == [
        ("search", S.RECOVERED, True)
    ]
    assert isinstance(seen[0].result, Answer)


async def test_failed_and_unfinished_invocations_run_again() -> None:
    outcomes = iter([RuntimeError("flaky"), None, None, None])
    snapshots: list[StateSnapshot] = []

    def flaky(data: Query) -> Answer:
        error = next(outcomes)
        if error is not None:
            raise error
        return Answer(answer=data.text)

    failing = make_tool("failing", flaky)

    async def in_flight_handler(data: Any, extra: Any, state: ExecutionState) -> str:
        calls.append(data)
        if len(calls) == 1:
            snapshots.append(state.to_snapshot())  # taken while this call is running
        return "done"

    calls: list[Any] = []
    in_flight = Tool(name="in_flight", handler=in_flight_handler)

    state = ExecutionState()
    assert not (await ExecutionEvent(actor=failing)(Query(text="x"), {}, state)).ok
    await ExecutionEvent(actor=in_flight)(None, {}, state)
    (snapshot,) = snapshots
    restored_statuses = [e.execution_status for e in snapshot_history(snapshot)]
    assert restored_statuses == [S.STARTED, S.FAILED, S.STARTED]

    restored = ExecutionState.from_snapshot(snapshot)
    retried = await ExecutionEvent(actor=failing)(Query(text="x"), {}, restored)
    rerun = await ExecutionEvent(actor=in_flight)(None, {}, restored)

    assert retried.ok and retried.status is S.COMPLETED and retried.result == Answer(answer="x")
    assert rerun.ok and rerun.status is S.COMPLETED
    assert len(calls_of(failing)) == 2 and len(calls) == 2


def snapshot_history(snapshot: StateSnapshot) -> list[ExecutionEvent[Any]]:
    return ExecutionState.from_snapshot(snapshot).history.get_event_list()


async def test_resumed_agent_reruns_but_replays_its_completed_tools() -> None:
    first = make_tool("first")
    fail_once = iter([True, False])

    def second_fn(data: Query) -> Answer:
        if next(fail_once):
            raise ConnectionError("down")
        return Answer(answer="second " + data.text)

    second = make_tool("second", second_fn)
    agent_calls: list[int] = []

    async def agent_handler(data: Query, extra: Any, state: ExecutionState) -> list[str]:
        agent_calls.append(1)
        a = await ExecutionEvent(actor=first)(data, extra, state)
        b = await ExecutionEvent(actor=second)(data, extra, state)
        if not b.ok:
            raise RuntimeError(f"second failed: {b.error_message}")
        return [a.result.answer, b.result.answer]

    agent = Agent(name="agent", input_model=Query, handler=agent_handler)
    state = ExecutionState()
    assert not (await ExecutionEvent(actor=agent)(Query(text="q"), {}, state)).ok

    restored = ExecutionState.from_snapshot(state.to_snapshot())
    result = await ExecutionEvent(actor=agent)(Query(text="q"), {}, restored)
    assert result.ok, result.error_message
    assert result.result == ["about q", "second q"]
    assert len(agent_calls) == 2
    assert len(calls_of(first)) == 1  # replayed inside the re-running agent
    assert len(calls_of(second)) == 2
    assert restored.history["agent/first"].execution_status is S.RECOVERED

    # a completed agent is replayed as a whole: nothing below it runs again
    twice = ExecutionState.from_snapshot(restored.to_snapshot())
    again = await ExecutionEvent(actor=agent)(Query(text="q"), {}, twice)
    assert again.status is S.RECOVERED
    assert again.result == ["about q", "second q"]
    assert len(agent_calls) == 2


async def test_a_resumed_run_can_be_resumed_again(backend: StateBackend) -> None:
    tool = make_tool()
    state = ExecutionState(state_backend=backend)
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, state)
    second = ExecutionState.load_from_state_id(state.state_id, backend)
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, second)  # replayed
    await ExecutionEvent(actor=tool)(Query(text="b"), {}, second)  # new: search#1
    third = ExecutionState.load_from_state_id(state.state_id, backend)
    r1 = await ExecutionEvent(actor=tool)(Query(text="a"), {}, third)
    r2 = await ExecutionEvent(actor=tool)(Query(text="b"), {}, third)
    assert (r1.status, r2.status) == (S.RECOVERED, S.RECOVERED)
    assert (r1.result, r2.result) == (Answer(answer="about a"), Answer(answer="about b"))
    assert len(calls_of(tool)) == 2


def validating_copy(state: ExecutionState) -> tuple[ExecutionState, list[Any]]:
    """``state`` restored to rerun in validation mode, and what its event bus publishes."""
    seen: list[Any] = []
    bus = EventBus()
    bus.subscribe(seen.append)
    restored = ExecutionState.from_snapshot(
        state.to_snapshot(), event_bus=bus, replay_mode="validation"
    )
    return restored, seen


async def test_validation_mode_reruns_and_reports_divergence() -> None:
    answers = iter(["same", "old", "same", "new"])
    tool = make_tool("t", lambda data: Answer(answer=next(answers)))
    state = ExecutionState()
    await ExecutionEvent(actor=tool)(Query(text="1"), {}, state)
    await ExecutionEvent(actor=tool)(Query(text="2"), {}, state)

    restored, seen = validating_copy(state)
    same = await ExecutionEvent(actor=tool)(Query(text="1"), {}, restored)
    diverged = await ExecutionEvent(actor=tool)(Query(text="2"), {}, restored)

    assert len(calls_of(tool)) == 4  # everything ran again
    assert same.status is diverged.status is S.COMPLETED
    assert diverged.result == Answer(answer="new")
    assert restored.divergences == [
        {
            "address": "t#1",
            "expected": {"answer": "old", "score": 1.0},
            "actual": {"answer": "new", "score": 1.0},
            "expected_status": "completed",
            "actual_status": "completed",
        }
    ]
    warnings = [e for e in seen if e.kind == EventKind.DIVERGENCE]
    assert len(warnings) == 1
    assert warnings[0].address == "t#1"
    assert warnings[0].metadata["replay_divergence"] == restored.divergences[0]
    assert "differs from the recorded history" in (warnings[0].message or "")
    # the divergence warning does not replace the invocation's latest status
    assert restored.history["t#1"].execution_status is S.COMPLETED


async def test_validation_mode_reports_a_rerun_that_now_fails() -> None:
    fail = [False]

    def fn(data: Query) -> Answer:
        if fail[0]:
            raise RuntimeError("now broken")
        return Answer(answer="fine")

    tool = make_tool("t", fn)
    state = ExecutionState()
    await ExecutionEvent(actor=tool)(Query(text="1"), {}, state)
    fail[0] = True
    restored = ExecutionState.from_snapshot(state.to_snapshot(), replay_mode="validation")
    result = await ExecutionEvent(actor=tool)(Query(text="1"), {}, restored)
    assert not result.ok
    (divergence,) = restored.divergences
    assert divergence["address"] == "t"
    assert divergence["actual_status"] == "failed"
    assert divergence["error"] == "now broken"


async def test_validation_mode_reports_a_changed_input_even_with_the_same_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tool = make_tool("t", lambda data: Answer(answer="same"))
    state = ExecutionState()
    await ExecutionEvent(actor=tool)(Query(text="before"), {}, state)
    restored, seen = validating_copy(state)
    with caplog.at_level(logging.WARNING, logger="rh_agents"):
        await ExecutionEvent(actor=tool)(Query(text="after"), {}, restored)
    assert restored.divergences == [
        {
            "address": "t",
            "expected": {"answer": "same", "score": 1.0},
            "actual": {"answer": "same", "score": 1.0},
            "expected_status": "completed",
            "actual_status": "completed",
            "input_changed": True,
        }
    ]
    [warning] = [e for e in seen if e.kind == EventKind.DIVERGENCE]
    assert (warning.actor_name, warning.event_type) == ("t", "tool_call")
    assert warning.execution_status is S.COMPLETED
    assert (
        "Replay divergence at t: recorded {'answer': 'same', 'score': 1.0}, now "
        "{'answer': 'same', 'score': 1.0} (completed)" in caplog.text
    )


async def test_a_fresh_run_never_replays() -> None:
    tool = make_tool()
    first = ExecutionState()
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, first)

    fresh = ExecutionState()
    result = await ExecutionEvent(actor=tool)(Query(text="b"), {}, fresh)
    assert result.status is S.COMPLETED
    assert result.result == Answer(answer="about b")
    # handing a history to the constructor is not a restore either
    handed = ExecutionState(history=first.history)
    assert not handed.is_restored
    result = await ExecutionEvent(actor=tool)(Query(text="c"), {}, handed)
    assert result.result == Answer(answer="about c")
    assert len(calls_of(tool)) == 3


async def test_restoring_into_another_backend_keeps_the_restored_history(
    backend: StateBackend,
) -> None:
    tool = make_tool()
    state = ExecutionState()
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, state)
    await ExecutionEvent(actor=tool)(Query(text="b"), {}, state)

    moved = ExecutionState.from_snapshot(state.to_snapshot(), state_backend=backend)
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, moved)  # replayed; b never reached

    reloaded = ExecutionState.load_from_state_id(state.state_id, backend)
    assert reloaded.history.has_completed_event("search#1")
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, reloaded)
    b = await ExecutionEvent(actor=tool)(Query(text="b"), {}, reloaded)
    assert b.status is S.RECOVERED
    assert len(calls_of(tool)) == 2


# ------------------------------------------------------------------ result round trips


class Wrapper(BaseModel):
    inner: Answer
    tags: list[str]


ROUND_TRIP_VALUES = [
    pytest.param(Answer(answer="x", score=0.5), id="model"),
    pytest.param(Wrapper(inner=Answer(answer="y"), tags=["a"]), id="nested-model"),
    pytest.param(7, id="int"),
    pytest.param(2.5, id="float"),
    pytest.param("text", id="str"),
    pytest.param(True, id="bool"),
    pytest.param(None, id="none"),
    pytest.param([1, "two", [3.0], {"four": 4}], id="list"),
    pytest.param({"a": {"b": [1, 2]}, "c": None}, id="dict"),
]


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES)
async def test_results_round_trip_through_the_backend(backend: StateBackend, value: Any) -> None:
    async def handler(data: Any, extra: Any, state: Any) -> Any:
        calls.append(1)
        return value

    calls: list[int] = []
    tool = Tool(name="t", handler=handler)  # no output_model: the type is recorded
    state = ExecutionState(state_backend=backend)
    original = await ExecutionEvent(actor=tool)(None, {}, state)
    assert original.ok, original.error_message

    # the models a result may be are registered by the program (never imported by name)
    restored = ExecutionState.load_from_state_id(
        state.state_id, backend, result_types=[Answer, Wrapper]
    )
    replayed = await ExecutionEvent(actor=tool)(None, {}, restored)
    assert replayed.status is S.RECOVERED
    assert calls == [1]
    assert replayed.result == value
    assert type(replayed.result) is type(value)


class Unserializable:
    def __repr__(self) -> str:
        return "<Unserializable>"


def cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {"name": "loop"}
    value["self"] = value
    return value


@pytest.mark.parametrize(
    ("make", "type_name"),
    [(object, "object"), (Unserializable, "Unserializable"), (cyclic, "dict")],
)
@pytest.mark.parametrize("with_backend", [False, True])
async def test_unserializable_result_fails_at_completion(
    make: Any, type_name: str, with_backend: bool
) -> None:
    async def handler(data: Any, extra: Any, state: Any) -> Any:
        return make()

    tool = Tool(name="weird_tool", handler=handler)
    backend = InMemoryStateBackend() if with_backend else None
    state = ExecutionState(state_backend=backend)
    result = await ExecutionEvent(actor=tool)(None, {}, state)

    assert result.ok is False
    assert result.error_type == "ResultSerializationError"
    assert result.error_message is not None
    assert "'weird_tool'" in result.error_message
    assert f"is a {type_name} " in result.error_message
    assert state.history["weird_tool"].execution_status is S.FAILED
    if backend is not None:
        records = backend.load_events(state.state_id)
        assert [r["status"] for r in records] == ["started", "failed"]
        json.dumps(records)


async def test_recorded_result_that_no_longer_validates_is_a_clear_error() -> None:
    class NewAnswer(BaseModel):
        answer: int  # the program changed its output model since the run was recorded

    old = make_tool("t")
    state = ExecutionState()
    await ExecutionEvent(actor=old)(Query(text="a"), {}, state)
    new = Tool(name="t", input_model=Query, output_model=NewAnswer, handler=Calls())
    restored = ExecutionState.from_snapshot(state.to_snapshot())
    with pytest.raises(SnapshotMismatchError, match="no longer validates into NewAnswer"):
        await ExecutionEvent(actor=new)(Query(text="a"), {}, restored)
    assert calls_of(new) == []


# ------------------------------------------------------------------ bad inputs


def test_unknown_replay_mode_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=r"Unknown replay_mode 'fast'.*normal"):
        ExecutionState(replay_mode="fast")
    snapshot = ExecutionState().to_snapshot()
    with pytest.raises(InvalidArgumentError, match="Unknown replay_mode"):
        ExecutionState.from_snapshot(snapshot, replay_mode="REPLAY")


async def test_load_unknown_state_id_lists_known_ids(backend: StateBackend) -> None:
    for state_id in ("run-a", "run-b"):  # a run is stored from its first record on
        state = ExecutionState(state_id=state_id, state_backend=backend)
        await ExecutionEvent(actor=make_tool())(Query(text="a"), {}, state)
    with pytest.raises(StateNotFoundError) as info:
        ExecutionState.load_from_state_id("run-zzz", backend)
    message = str(info.value)
    assert "No state 'run-zzz'" in message
    assert "run-a" in message and "run-b" in message
    assert isinstance(info.value, KeyError)


def test_load_from_empty_backend_says_none_known() -> None:
    with pytest.raises(StateNotFoundError, match="known states: none"):
        ExecutionState.load_from_state_id("missing", InMemoryStateBackend())


def test_save_checkpoint_without_backend_is_a_clear_error() -> None:
    with pytest.raises(LifecycleError, match="needs a state_backend"):
        ExecutionState().save_checkpoint()


async def _fan_out(
    state: ExecutionState, tool: Tool, texts: list[str], order: list[int], tagged: bool = False
) -> Any:
    """Branches gathered with asyncio.gather that each wait before calling ``tool``; they
    are released in ``order``, so the calls take their ordinals in that order."""
    import asyncio

    gates = [asyncio.Event() for _ in texts]

    async def branch(i: int) -> Any:
        await gates[i].wait()
        tag = texts[i] if tagged else ""
        return await ExecutionEvent(actor=tool, tag=tag)(Query(text=texts[i]), {}, state)

    async def release() -> None:
        for i in order:
            gates[i].set()
            await asyncio.sleep(0)  # let branch i take its ordinal

    results, _ = await asyncio.gather(
        asyncio.gather(*(branch(i) for i in range(len(texts)))), release()
    )
    return results


async def test_concurrent_siblings_started_in_another_order_still_replay() -> None:
    texts = ["a", "b", "c", "d"]
    tool = make_tool()
    state = ExecutionState()
    first = await _fan_out(state, tool, texts, [0, 1, 2, 3])
    assert [r.result.answer for r in first] == [f"about {t}" for t in texts]
    # the addresses follow the start order: search (a), search#1 (b), ...
    assert [r.address for r in first] == ["search", "search#1", "search#2", "search#3"]

    resumed = ExecutionState.from_snapshot(state.to_snapshot())
    again = await _fan_out(resumed, tool, texts, [2, 0, 3, 1])

    assert len(calls_of(tool)) == 4  # nothing ran again
    assert [r.result.answer for r in again] == [f"about {t}" for t in texts]
    assert all(r.status is S.RECOVERED for r in again)
    # each call got the result recorded for its own input, under its new address
    assert [r.address for r in again] == ["search#1", "search#3", "search", "search#2"]


async def test_a_fan_out_resumed_after_a_crash_in_another_order_needs_tags() -> None:
    # Untagged, the first call of the resumed run takes the address whose record has
    # another input: that is refused (it may be another program's history) ...
    tool = make_tool()
    state = ExecutionState()
    await ExecutionEvent(actor=tool)(Query(text="c"), {}, state)  # only "c" completed
    resumed = ExecutionState.from_snapshot(state.to_snapshot())
    with pytest.raises(SnapshotMismatchError, match="different input"):
        await _fan_out(resumed, tool, ["a", "b", "c"], [0, 1, 2])

    # ... with a tag per call (or in a parallel group, where the index is the address)
    # the addresses do not depend on the start order: completed calls replay, the rest run.
    tool = make_tool()
    state = ExecutionState()
    await ExecutionEvent(actor=tool, tag="c")(Query(text="c"), {}, state)
    resumed = ExecutionState.from_snapshot(state.to_snapshot())
    results = await _fan_out(resumed, tool, ["a", "b", "c"], [0, 1, 2], tagged=True)
    assert [r.result.answer for r in results] == ["about a", "about b", "about c"]
    assert [r.status for r in results] == [S.COMPLETED, S.COMPLETED, S.RECOVERED]
    assert [c.text for c in calls_of(tool)] == ["c", "a", "b"]


async def test_a_different_input_with_no_recorded_sibling_is_still_refused() -> None:
    tool = make_tool()
    state = ExecutionState()
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, state)
    resumed = ExecutionState.from_snapshot(state.to_snapshot())

    with pytest.raises(SnapshotMismatchError, match="different input"):
        await ExecutionEvent(actor=tool)(Query(text="z"), {}, resumed)
    assert len(calls_of(tool)) == 1


async def test_in_memory_states_record_input_fingerprints_too() -> None:
    tool = make_tool()
    state = ExecutionState()  # no backend, no journal
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, state)
    assert state.history["search"].input_hash is not None
    off = ExecutionState(record_input_hashes=False)
    await ExecutionEvent(actor=tool)(Query(text="a"), {}, off)
    assert off.history["search"].input_hash is None


class Doc(BaseModel):
    title: str


@pytest.mark.parametrize(
    "value",
    [
        (1, "two", 3.0),
        {1, 2, 3},
        frozenset({"a"}),
        [Doc(title="a"), Doc(title="b")],
        (Doc(title="a"),),
        {"x": Doc(title="a"), "y": Doc(title="b")},
        [Doc(title="a"), {"mixed": True}],
        [],
        {},
    ],
    ids=[
        "tuple",
        "set",
        "frozenset",
        "list-of-models",
        "tuple-of-models",
        "dict-of-models",
        "mixed-list",
        "empty-list",
        "empty-dict",
    ],
)
async def test_results_without_output_model_replay_with_their_type(
    value: Any, tmp_path: Path
) -> None:
    tool = Tool(name="t", handler=Calls(lambda data: value))
    with SQLiteStateBackend(tmp_path / "h.db") as backend:
        state = ExecutionState(state_id="run", state_backend=backend)
        first = await ExecutionEvent(actor=tool)(None, {}, state)
        # Doc is a type the program registers: a record only ever names it
        resumed = ExecutionState.load_from_state_id("run", backend, result_types=[Doc])
        again = await ExecutionEvent(actor=tool)(None, {}, resumed)
    assert again.status is S.RECOVERED and len(calls_of(tool)) == 1
    expected = value
    if value == [Doc(title="a"), {"mixed": True}]:
        expected = [{"title": "a"}, {"mixed": True}]  # no one model: the JSON form
    assert first.result == value
    assert again.result == expected
    assert type(again.result) is type(value)


@pytest.mark.parametrize("make", [lambda: iter([1, 2]), lambda: (i for i in range(3))])
async def test_a_generator_result_is_refused_not_consumed(make: Any) -> None:
    produced = make()
    tool = Tool(name="t", handler=Calls(lambda data: produced))
    state = ExecutionState()
    result = await ExecutionEvent(actor=tool)(None, {}, state)
    assert not result.ok and result.error_type == "ResultSerializationError"
    assert "return a list" in (result.error_message or "")
    assert next(produced) in (0, 1)  # not consumed by the attempt to store it


async def test_an_unstorable_result_of_a_cacheable_actor_is_not_cached() -> None:
    tool = Tool(name="t", cacheable=True, handler=Calls(lambda data: object()))
    state = ExecutionState()
    first = await ExecutionEvent(actor=tool)(None, {}, state)
    second = await ExecutionEvent(actor=tool)(None, {}, state)
    assert not first.ok and not second.ok
    assert first.error_type == second.error_type == "ResultSerializationError"
    assert len(calls_of(tool)) == 2  # the failed value was not served from the cache


def test_a_fresh_state_may_not_reuse_the_id_of_a_stored_history(tmp_path: Path) -> None:
    import asyncio

    with SQLiteStateBackend(tmp_path / "h.db") as backend:
        state = ExecutionState(state_id="run", state_backend=backend)
        asyncio.run(ExecutionEvent(actor=make_tool())(Query(text="a"), {}, state))
        with pytest.raises(LifecycleError, match=r"already holds a history for state 'run'"):
            ExecutionState(state_id="run", state_backend=backend)
        assert ExecutionState.load_from_state_id("run", backend).is_restored


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("search", "search"),
        ("search#3", "search"),
        ("plan/search#12", "plan/search"),
        ("plan#1/search", "plan#1/search"),  # the parent's ordinal is part of the key
        ("plan#1/search#2", "plan#1/search"),
        ("parallel:g[3]/search#1", "parallel:g[3]/search"),
    ],
)
def test_siblings_share_the_address_without_the_last_ordinal(address: str, key: str) -> None:
    from rh_agents.core.replay import _sibling_key

    assert _sibling_key(address) == key
