"""What a resumed run promises its user, as rh_agents.core.replay decides it.

* Which recorded completion a resumed call replays, and when it runs again: each
  completion is replayed at most once, only for its own actor and input, and a
  completion recorded without an input fingerprint replays for any input.
* The exact wording of every refusal (another program, actor, kind of call, input,
  version, pipeline, a damaged snapshot, an unknown state) and of the divergence log of
  VALIDATION mode.
* What a replayed call and a restored history keep: the recorded value with its type,
  the recorded fingerprint, result type, duration and cache flag (so a snapshot of a
  resumed run resumes again the same way), the metadata and the program check.
* Where a resume reads the history: the journal (streamed), else the snapshot.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents import interrupt
from rh_agents.core.actors import LLM, Agent, Tool
from rh_agents.core.cache import InMemoryCacheBackend
from rh_agents.core.errors import (
    InvalidArgumentError,
    SnapshotMismatchError,
    StateCorruptedError,
    StateNotFoundError,
)
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import EventBus, ExecutionState
from rh_agents.core.recording import model_path
from rh_agents.core.state_recovery import (
    ReplayMode,
    StateMetadata,
    StateSnapshot,
    StateStatus,
)
from rh_agents.core.types import ExecutionStatus
from rh_agents.storage import InMemoryStateBackend
from tests.user_backends import PlainJournalBackend, SnapshotOnlyBackend

S = ExecutionStatus

PROGRAM_FIX = (
    "Start a fresh run (a new state_id), resume it with the program that wrote it, "
    "or pass check_program=False to resume anyway."
)
CALL_FIX = (
    "Start a fresh run (a new state_id), or resume this one with the program and "
    "inputs that wrote it."
)


class Query(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str


class Doc(BaseModel):
    title: str


class Counted:
    """A handler that records its inputs and answers from them."""

    def __init__(self) -> None:
        self.inputs: list[str] = []

    async def __call__(self, data: Query, extra: Any, state: ExecutionState) -> Answer:
        self.inputs.append(data.text)
        return Answer(answer=f"about {data.text}")


def search_tool(name: str = "search") -> tuple[Tool, Counted]:
    handler = Counted()
    return Tool(name=name, input_model=Query, output_model=Answer, handler=handler), handler


async def call(actor: Any, data: Any, state: ExecutionState, tag: str = "") -> Any:
    return await ExecutionEvent(actor=actor, tag=tag)(data, {}, state)


def resumed(state: ExecutionState, **options: Any) -> ExecutionState:
    """``state`` restored from a JSON round trip of its snapshot."""
    snapshot = StateSnapshot.model_validate_json(state.to_snapshot().model_dump_json())
    return ExecutionState.from_snapshot(snapshot, **options)


def mismatch(excinfo: pytest.ExceptionInfo[SnapshotMismatchError]) -> str:
    return str(excinfo.value)


# ------------------------------------------------------------ what a resumed call replays


async def test_a_fresh_state_is_not_restored() -> None:
    assert ExecutionState().is_restored is False


async def test_a_replayer_loaded_without_a_recorded_program_checks_no_program() -> None:
    tool, handler = search_tool()
    state = ExecutionState()
    await call(tool, Query(text="a"), state)

    other = ExecutionState()
    other.replayer.load(state.history)  # no RecordedProgram: nothing to compare with
    newer = Tool(
        name="search", version="9.0.0", input_model=Query, output_model=Answer, handler=handler
    )
    result = await call(newer, Query(text="a"), other)
    assert result.status is S.RECOVERED and handler.inputs == ["a"]


async def test_a_completion_is_replayed_at_most_once_even_for_a_repeated_input() -> None:
    tool, handler = search_tool()
    state = ExecutionState()
    await call(tool, Query(text="a"), state)
    await call(tool, Query(text="b"), state)

    again = resumed(state)
    first = await call(tool, Query(text="a"), again)
    assert first.status is S.RECOVERED and first.result == Answer(answer="about a")
    # "search#1" recorded "b"; the only completion recorded with "a" was replayed above
    with pytest.raises(SnapshotMismatchError) as info:
        await call(tool, Query(text="a"), again)
    assert mismatch(info).startswith("Actor 'search' completed at 'search#1' in the stored")
    assert handler.inputs == ["a", "b"]


async def test_a_sibling_completion_replayed_elsewhere_is_not_replayed_again() -> None:
    tool, handler = search_tool()
    state = ExecutionState()
    await call(tool, Query(text="a"), state)
    await call(tool, Query(text="b"), state)

    again = resumed(state)
    swapped = await call(tool, Query(text="b"), again)  # at "search": replays search#1
    assert swapped.status is S.RECOVERED and swapped.result == Answer(answer="about b")
    # at "search#1", whose completion was just replayed: the call runs
    repeated = await call(tool, Query(text="b"), again)
    assert repeated.status is S.COMPLETED and repeated.address == "search#1"
    assert handler.inputs == ["a", "b", "b"]


async def test_a_call_never_replays_another_actors_completion_under_its_parent() -> None:
    search, searched = search_tool("search")
    fetch, fetched = search_tool("fetch")

    async def step(data: str, extra: Any, state: ExecutionState) -> str:
        await call(search, Query(text="x"), state)
        await call(fetch, Query(text=data), state)
        raise RuntimeError("stopped")

    agent = Agent(name="step", handler=step)
    state = ExecutionState()
    await call(agent, "first", state)  # "step": its calls are recorded under "step"
    await call(agent, "y", state)  # "step#1/search" ("x") and "step#1/fetch" ("y")

    again = resumed(state)

    async def other_step(data: str, extra: Any, state: ExecutionState) -> str:
        if data == "first":
            await call(search, Query(text="x"), state)
            await call(fetch, Query(text="first"), state)
        else:  # fetch called with the input search recorded under "step#1"
            await call(fetch, Query(text="x"), state)
        return "done"

    other = Agent(name="step", handler=other_step)
    await call(other, "first", again)
    with pytest.raises(SnapshotMismatchError, match="completed at 'step#1/fetch'"):
        await call(other, "y", again)
    assert searched.inputs == ["x", "x"] and fetched.inputs == ["first", "y"]


async def test_a_completion_recorded_without_input_fingerprint_replays_for_any_input() -> None:
    tool, handler = search_tool()
    state = ExecutionState(record_input_hashes=False)
    await call(tool, Query(text="a"), state)
    assert state.history["search"].input_hash is None

    result = await call(tool, Query(text="something else"), resumed(state))
    assert result.status is S.RECOVERED
    assert result.result == Answer(answer="about a")
    assert handler.inputs == ["a"]


async def test_an_invalid_input_without_own_record_is_reported_by_the_call() -> None:
    tool, handler = search_tool()
    state = ExecutionState()
    await call(tool, Query(text="a"), state)

    again = resumed(state)
    assert (await call(tool, Query(text="a"), again)).status is S.RECOVERED
    # "search#1" has no record, its sibling's was replayed: the call itself rejects it
    bad = await call(tool, {"wrong": 1}, again)
    assert not bad.ok and bad.error_type == "InputValidationError"
    assert handler.inputs == ["a"]


# ------------------------------------------------------------ refusals and their wording


async def test_an_input_that_no_longer_validates_at_a_completed_address_is_refused() -> None:
    tool, handler = search_tool()
    state = ExecutionState(state_id="r")
    await call(tool, Query(text="a"), state)
    with pytest.raises(SnapshotMismatchError) as info:
        await call(tool, {"wrong": 1}, resumed(state))
    assert mismatch(info) == (
        "Actor 'search' completed at 'search' in the stored history, but the input it is "
        "called with now does not validate into its input_model: the history was written "
        f"by a different program. {CALL_FIX}"
    )
    assert handler.inputs == ["a"]


async def test_a_different_input_is_refused_with_both_fingerprints() -> None:
    tool, _ = search_tool()
    state = ExecutionState(state_id="r")
    await call(tool, Query(text="a"), state)
    recorded = state.history["search"].input_hash
    again = resumed(state)
    with pytest.raises(SnapshotMismatchError) as info:
        await call(tool, Query(text="z"), again)
    now = again.recorder.input_hash(Query(text="z"))
    assert recorded is not None and now is not None and recorded != now
    assert mismatch(info) == (
        f"Actor 'search' completed at 'search' in the stored history with a different "
        f"input (fingerprint {recorded}, now {now}), and no sibling call of it completed "
        f"with this input, so its recorded result would be wrong for this call. {CALL_FIX}"
    )


async def test_another_kind_of_call_at_a_completed_address_is_refused() -> None:
    tool, _ = search_tool()
    state = ExecutionState()
    await call(tool, Query(text="a"), state)
    agent = Agent(name="search", input_model=Query, output_model=Answer, handler=Counted())
    with pytest.raises(SnapshotMismatchError) as info:
        await call(agent, Query(text="a"), resumed(state))
    assert mismatch(info) == (
        "The stored history has a tool_call at 'search', but this program makes a "
        "agent_call there (actor 'search'): the history was written by a different "
        f"program. {CALL_FIX}"
    )


async def test_another_actor_recorded_at_the_address_is_refused() -> None:
    tool, handler = search_tool()
    state = ExecutionState()
    await call(tool, Query(text="a"), state)
    snapshot = state.to_snapshot()
    for record in snapshot.execution_state["events"]:
        record["actor"] = "lookup"  # a history written where another actor ran
    snapshot.execution_state["events"][0]["actor"] = "search"  # started by "search"
    with pytest.raises(SnapshotMismatchError) as info:
        await call(tool, Query(text="a"), ExecutionState.from_snapshot(snapshot))
    assert mismatch(info) == (
        "The stored history has actor 'lookup' at 'search', but this program calls actor "
        "'search' there: the history was written by a different program, so its result "
        f"cannot be replayed. {CALL_FIX}"
    )
    assert handler.inputs == ["a"]


# ------------------------------------------------------------ the program check


async def test_the_program_check_names_every_recorded_top_level_actor() -> None:
    alpha, _ = search_tool("alpha")
    beta, _ = search_tool("beta")
    gamma, gamma_ran = search_tool("gamma")
    state = ExecutionState(state_id="r")
    await call(beta, Query(text="b"), state)
    await call(alpha, Query(text="a"), state)
    with pytest.raises(SnapshotMismatchError) as info:
        await call(gamma, Query(text="c"), resumed(state))
    assert mismatch(info) == (
        "The stored history of state 'r' was recorded by a program whose top-level calls "
        "are 'alpha', 'beta', but this program calls actor 'gamma' at the top level: it "
        f"belongs to another program, and recording into it would mix two runs. {PROGRAM_FIX}"
    )
    assert gamma_ran.inputs == []


async def test_another_version_is_refused_with_the_full_message() -> None:
    tool, _ = search_tool()
    state = ExecutionState(state_id="r")
    await call(tool, Query(text="a"), state)
    newer = Tool(
        name="search", version="2.0.0", input_model=Query, output_model=Answer, handler=Counted()
    )
    with pytest.raises(SnapshotMismatchError) as info:
        await call(newer, Query(text="a"), resumed(state))
    assert mismatch(info) == (
        "The stored history of state 'r' was recorded with version 1.0.0 of actor "
        "'search', but this program has version 2.0.0: its recorded results may not be "
        f"what this version returns. {PROGRAM_FIX}"
    )


async def test_a_nested_actor_called_at_the_top_level_is_another_program() -> None:
    step, step_ran = search_tool("step")

    async def run(data: str, extra: Any, state: ExecutionState) -> str:
        await call(step, Query(text=data), state)
        raise RuntimeError("stopped")

    state = ExecutionState(state_id="r")
    await call(Agent(name="pipeline", handler=run), "a", state)
    with pytest.raises(SnapshotMismatchError, match="top-level calls are 'pipeline', but"):
        await call(step, Query(text="a"), resumed(state))
    assert step_ran.inputs == ["a"]


def publisher(draft_version: str) -> Agent:
    """draft (a tool) -> ask (a tool that waits for a human) -> the answer."""

    async def draft(topic: str, extra: Any, state: ExecutionState) -> str:
        return f"A post about {topic}"

    async def ask(text: str, extra: Any, state: ExecutionState) -> str:
        return str(await interrupt({"draft": text}))

    drafting = Tool(name="draft", version=draft_version, handler=draft)
    asking = Tool(name="ask", handler=ask)

    async def publish(topic: str, extra: Any, state: ExecutionState) -> str:
        text = await call(drafting, topic, state)
        verdict = await call(asking, text.result, state)
        if not verdict.ok:
            raise RuntimeError(verdict.error_message)
        return str(verdict.result)

    return Agent(name="publish", handler=publish)


async def test_resume_with_keeps_checking_the_recorded_program() -> None:
    backend = InMemoryStateBackend()
    state = ExecutionState(state_id="r", state_backend=backend)
    paused = await call(publisher("1.0.0"), "owls", state)
    assert paused.status is S.AWAITING

    loaded = ExecutionState.load_from_state_id("r", backend)
    loaded.resume_with("yes")
    with pytest.raises(SnapshotMismatchError, match=r"version 1\.0\.0 of actor 'draft'"):
        await call(publisher("2.0.0"), "owls", loaded)


# ------------------------------------------------------------ recorded values and their types


def doc_model(strict: bool) -> type[BaseModel]:
    """Two versions of one registered model (same module and qualified name)."""
    if strict:

        class Doc(BaseModel):
            title: int

        return Doc

    class Doc(BaseModel):  # type: ignore[no-redef]
        title: str

    return Doc


async def test_a_registered_type_that_no_longer_validates_is_a_clear_mismatch() -> None:
    old, new = doc_model(strict=False), doc_model(strict=True)
    assert model_path(old) == model_path(new)

    async def fetch(data: Any, extra: Any, state: ExecutionState) -> Any:
        return old(title="draft")

    tool = Tool(name="fetch", handler=fetch)
    state = ExecutionState()
    await call(tool, None, state)
    with pytest.raises(SnapshotMismatchError) as info:
        await call(tool, None, resumed(state, result_types=[new]))
    assert mismatch(info) == (
        f"The recorded result at 'fetch' no longer validates into {model_path(new)} "
        "(1 error(s)); the history was written by a different version of the program. "
        "Start a fresh run instead of resuming this one."
    )


def test_result_types_must_be_models_with_the_full_message() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        ExecutionState(result_types=["app.models:Doc"])  # type: ignore[list-item]
    assert str(info.value) == (
        "result_types must be pydantic model classes, got 'app.models:Doc'. Pass the "
        "models your actors return without declaring an output_model."
    )


async def test_a_record_whose_type_does_not_fit_its_value_stays_json() -> None:
    async def fetch(data: Any, extra: Any, state: ExecutionState) -> Any:
        return {"k": {"title": "a"}}

    tool = Tool(name="fetch", handler=fetch)
    state = ExecutionState()
    await call(tool, None, state)
    snapshot = state.to_snapshot()
    completed = snapshot.execution_state["events"][-1]
    completed["result_type"] = f"list[{model_path(Doc)}]"  # a list named, a dict stored
    again = ExecutionState.from_snapshot(snapshot, result_types=[Doc])
    replayed = await call(tool, None, again)
    assert replayed.status is S.RECOVERED
    assert replayed.result == {"k": {"title": "a"}}


async def test_a_resumed_run_resumed_again_keeps_types_and_fingerprints() -> None:
    async def fetch(data: Query, extra: Any, state: ExecutionState) -> Any:
        ran.append(data.text)
        return [Doc(title=data.text)]

    ran: list[str] = []
    tool = Tool(name="fetch", input_model=Query, handler=fetch)
    state = ExecutionState()
    await call(tool, Query(text="a"), state)

    second = resumed(state, result_types=[Doc])
    assert (await call(tool, Query(text="a"), second)).result == [Doc(title="a")]
    assert second.history["fetch"].execution_status is S.RECOVERED

    # the snapshot of the resumed run holds the replayed entry: it resumes the same way
    third = resumed(second, result_types=[Doc])
    again = await call(tool, Query(text="a"), third)
    assert again.status is S.RECOVERED and again.result == [Doc(title="a")]
    fourth = resumed(second, result_types=[Doc])
    with pytest.raises(SnapshotMismatchError, match="with a different input"):
        await call(tool, Query(text="b"), fourth)
    assert ran == ["a"]


async def test_a_snapshot_of_a_resumed_run_keeps_the_recorded_result_json() -> None:
    class Reply(BaseModel):
        answer: str

    class NewReply(BaseModel):
        answer: str
        score: float = 1.0  # added since the run was recorded

    async def reply(data: Any, extra: Any, state: ExecutionState) -> Any:
        return Reply(answer="a")

    state = ExecutionState()
    await call(Tool(name="reply", output_model=Reply, handler=reply), None, state)
    again = resumed(state)
    newer = Tool(name="reply", output_model=NewReply, handler=reply)
    assert (await call(newer, None, again)).result == NewReply(answer="a", score=1.0)
    [*_, replayed] = again.to_snapshot().execution_state["events"]
    assert replayed["status"] == "recovered"
    assert replayed["result"] == {"answer": "a"}  # as recorded, not re-encoded


async def test_a_result_recorded_as_json_comes_back_as_the_declared_output_model() -> None:
    async def answer(data: Any, extra: Any, state: ExecutionState) -> Any:
        return {"answer": "a"}

    state = ExecutionState()
    await call(Tool(name="answer", handler=answer), None, state)  # no output_model yet
    declared = Tool(name="answer", output_model=Answer, handler=answer)
    replayed = await call(declared, None, resumed(state))
    assert replayed.status is S.RECOVERED
    assert type(replayed.result) is Answer and replayed.result == Answer(answer="a")


async def test_a_recorded_none_replays_as_none_even_under_an_output_model() -> None:
    async def nothing(data: Any, extra: Any, state: ExecutionState) -> Any:
        return None

    state = ExecutionState()
    await call(Tool(name="notify", handler=nothing), None, state)
    declared = Tool(name="notify", output_model=Answer, handler=nothing)
    replayed = await call(declared, None, resumed(state))
    assert replayed.status is S.RECOVERED and replayed.result is None


async def test_a_replayed_call_reports_the_recorded_duration_and_cache_flag() -> None:
    class Prompt(BaseModel):
        text: str

    async def model(data: Prompt, extra: Any, state: ExecutionState) -> Answer:
        return Answer(answer=data.text)

    gpt = LLM(name="gpt", input_model=Prompt, output_model=Answer, handler=model)
    state = ExecutionState(cache_backend=InMemoryCacheBackend())
    await call(gpt, Prompt(text="hi"), state)
    await call(gpt, Prompt(text="hi"), state)  # "gpt#1": served from the cache
    recorded = state.history["gpt"]

    seen: list[Any] = []
    bus = EventBus()
    bus.subscribe(seen.append)
    again = resumed(state, event_bus=bus, replay_mode=ReplayMode.REPUBLISH_ALL)
    first: ExecutionEvent[Any] = ExecutionEvent(actor=gpt)
    second: ExecutionEvent[Any] = ExecutionEvent(actor=gpt)
    await first(Prompt(text="hi"), {}, again)
    await second(Prompt(text="hi"), {}, again)

    assert (first.is_replayed, second.is_replayed) == (True, True)
    assert (first.from_cache, second.from_cache) == (False, True)
    assert first.execution_time == recorded.execution_time is not None
    assert [(e.address, e.from_cache) for e in seen] == [("gpt", False), ("gpt#1", True)]
    assert seen[0].execution_time == recorded.execution_time


# ------------------------------------------------------------ VALIDATION mode


async def test_validation_mode_logs_each_divergence_in_one_exact_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers = iter(["old", "new"])

    async def handler(data: Query, extra: Any, state: ExecutionState) -> Answer:
        return Answer(answer=next(answers))

    tool = Tool(name="t", input_model=Query, output_model=Answer, handler=handler)
    state = ExecutionState()
    await call(tool, Query(text="1"), state)
    again = resumed(state, replay_mode="validation")
    with caplog.at_level(logging.WARNING, logger="rh_agents.execution"):
        await call(tool, Query(text="1"), again)
    messages = [r.getMessage() for r in caplog.records if r.name == "rh_agents.execution"]
    assert messages == [
        "Replay divergence at t: recorded {'answer': 'old'}, now {'answer': 'new'} (completed)"
    ]


# ------------------------------------------------------------ restoring snapshots


async def test_a_snapshot_without_events_restores_an_empty_history() -> None:
    snapshot = StateSnapshot(state_id="r", execution_state={"storage": {"k": 1}})
    state = ExecutionState.from_snapshot(snapshot)
    assert len(state.history) == 0 and state.storage == {"k": 1}
    assert state.is_restored is False


def test_a_snapshot_with_unreadable_storage_is_refused() -> None:
    snapshot = StateSnapshot(state_id="r", execution_state={"events": [], "storage": "x"})
    with pytest.raises(StateCorruptedError) as info:
        ExecutionState.from_snapshot(snapshot)
    assert str(info.value) == (
        "The snapshot of state 'r' has no readable history (events is a list, storage a "
        "str); it was written by another program or is damaged. Start a fresh run."
    )


async def test_a_snapshot_record_is_checked_at_its_position() -> None:
    tool, _ = search_tool()
    state = ExecutionState()
    await call(tool, Query(text="a"), state)
    events = state.to_snapshot().execution_state["events"]
    snapshot = StateSnapshot(state_id="r", execution_state={"events": [*events, "junk"]})
    with pytest.raises(StateCorruptedError, match="History record 2 is a str"):
        ExecutionState.from_snapshot(snapshot)


# ------------------------------------------------------------ the pipeline of a snapshot


def named(pipeline_name: str | None) -> StateSnapshot:
    return StateSnapshot(
        state_id="r",
        metadata=StateMetadata(pipeline_name=pipeline_name, tags=["t"]),
        execution_state={"events": []},
    )


def test_another_pipelines_snapshot_is_refused_with_the_full_message() -> None:
    with pytest.raises(SnapshotMismatchError) as info:
        ExecutionState.from_snapshot(named("billing"), pipeline_name="triage")
    assert str(info.value) == (
        "State 'r' was written by pipeline 'billing', not by 'triage' which tries to "
        "resume it; replaying its results would give wrong answers. Resume it with "
        "pipeline 'billing', or start a fresh run (a new state_id)."
    )


def test_the_same_pipeline_resumes_its_snapshot() -> None:
    state = ExecutionState.from_snapshot(named("triage"), pipeline_name="triage")
    assert state.metadata.pipeline_name == "triage" and state.metadata.tags == ["t"]


def test_a_snapshot_without_pipeline_adopts_the_resuming_one() -> None:
    state = ExecutionState.from_snapshot(named(None), pipeline_name="triage")
    assert state.metadata.pipeline_name == "triage" and state.metadata.tags == ["t"]
    assert ExecutionState.from_snapshot(named(None)).metadata.pipeline_name is None
    assert ExecutionState.from_snapshot(named("x")).metadata.pipeline_name == "x"


# ------------------------------------------------------------ where a resume reads from


class StreamingOnlyBackend(InMemoryStateBackend):
    """An in-memory backend whose journal may only be streamed on resume."""

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        raise AssertionError("a resume reads the journal once, through iter_events")


async def test_a_checkpoint_without_journal_resumes_from_its_snapshot() -> None:
    tool, handler = search_tool()
    backend = SnapshotOnlyBackend()
    state = ExecutionState(state_id="r", state_backend=backend)  # type: ignore[arg-type]
    await call(tool, Query(text="a"), state)
    assert state.save_checkpoint()

    loaded = ExecutionState.load_from_state_id("r", backend)  # type: ignore[arg-type]
    result = await call(tool, Query(text="a"), loaded)
    assert result.status is S.RECOVERED and handler.inputs == ["a"]


async def test_a_snapshot_saved_from_a_state_without_backend_resumes() -> None:
    tool, handler = search_tool()
    state = ExecutionState(state_id="r")
    await call(tool, Query(text="a"), state)
    backend = InMemoryStateBackend()
    backend.save_state(state.to_snapshot(status=StateStatus.PAUSED))

    loaded = ExecutionState.load_from_state_id("r", backend)
    assert (await call(tool, Query(text="a"), loaded)).status is S.RECOVERED
    assert handler.inputs == ["a"]


async def test_a_plain_event_journal_is_read_on_resume() -> None:
    tool, handler = search_tool()
    backend = PlainJournalBackend()
    state = ExecutionState(state_id="r", state_backend=backend)  # type: ignore[arg-type]
    await call(tool, Query(text="a"), state)
    assert [r["status"] for r in backend.records["r"]] == ["started", "completed"]

    loaded = ExecutionState.load_from_state_id("r", backend)  # type: ignore[arg-type]
    assert (await call(tool, Query(text="a"), loaded)).status is S.RECOVERED
    assert handler.inputs == ["a"]


async def test_a_journal_without_checkpoint_restores_under_its_own_id() -> None:
    tool, handler = search_tool()
    backend = PlainJournalBackend()
    state = ExecutionState(state_id="run-7", state_backend=backend)  # type: ignore[arg-type]
    await call(tool, Query(text="a"), state)
    backend.snapshots.clear()  # only the journal is left

    loaded = ExecutionState.load_from_state_id("run-7", backend)  # type: ignore[arg-type]
    assert loaded.state_id == "run-7"
    assert loaded.storage == {} and loaded.metadata == StateMetadata()
    assert (await call(tool, Query(text="a"), loaded)).status is S.RECOVERED
    assert handler.inputs == ["a"]


async def test_a_resume_streams_the_journal_when_the_backend_can() -> None:
    tool, handler = search_tool()
    backend = StreamingOnlyBackend()
    state = ExecutionState(state_id="r", state_backend=backend)
    await call(tool, Query(text="a"), state)

    loaded = ExecutionState.load_from_state_id("r", backend)
    assert (await call(tool, Query(text="a"), loaded)).status is S.RECOVERED
    assert handler.inputs == ["a"]


async def test_an_unknown_state_is_reported_with_at_most_ten_known_ids() -> None:
    backend = InMemoryStateBackend()
    for i in range(12):
        backend.save_state(StateSnapshot(state_id=f"run-{i:02d}"))
    with pytest.raises(StateNotFoundError) as info:
        ExecutionState.load_from_state_id("missing", backend)
    known = ", ".join(f"run-{i:02d}" for i in range(10))
    assert info.value.args[0] == (
        f"No state 'missing' in InMemoryStateBackend; known states: {known}. Start a "
        "fresh run, or pass the id of an existing state."
    )
