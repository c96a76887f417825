"""What the recorder promises: the size limit of a journaled result (exactly at its edge),
the stored type of container results, what a failed journal reports and that it stops
the run, and records that follow each call of a reused event."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents import ExecutionEvent, ExecutionState, Tool
from rh_agents.core.errors import (
    LifecycleError,
    ResultSerializationError,
    StateError,
    StateLockedError,
)
from rh_agents.core.recording import container_type
from rh_agents.core.retry import RetryConfig
from rh_agents.core.state_recovery import StateMetadata, StateStatus
from rh_agents.state_backends import InMemoryStateBackend, SQLiteStateBackend
from tests.journal_faults import FailingCommit, FullDisk
from tests.user_backends import PlainJournalBackend, SnapshotOnlyBackend


class Unencodable:
    def __repr__(self) -> str:
        return "<Unencodable 1>"


class Doc(BaseModel):
    text: str


class Note(Doc):
    pass


def returning(value: Any) -> Tool:
    async def handler(data: Any, extra: Any, state: Any) -> Any:
        return value

    return Tool(name="dump", handler=handler)


async def call(value: Any, **state_options: Any) -> ExecutionState:
    state = ExecutionState(telemetry=False, **state_options)
    result = await ExecutionEvent(actor=returning(value))(None, {}, state)
    if not result.ok:
        assert isinstance(result.exception, ResultSerializationError)
        raise result.exception
    return state


def journaled(limit: int) -> dict[str, Any]:
    return {"state_backend": InMemoryStateBackend(), "max_result_bytes": limit}


async def test_a_result_exactly_at_the_limit_is_stored_and_one_byte_over_is_refused() -> None:
    value = {"text": "x" * 40}  # {"text": "xxx..."} is 52 bytes of JSON
    state = await call(value, **journaled(52))
    assert state.history["dump"].result == value
    with pytest.raises(ResultSerializationError) as refused:
        await call(value, **journaled(51))
    assert str(refused.value) == (
        "The result of actor 'dump' is 52 bytes when encoded for the history, over "
        "max_result_bytes=51 (51 bytes). Store large data in an artifact "
        "(ExecutionState(artifact_backend=...)) and return its reference, or raise "
        "ExecutionState(max_result_bytes=...)."
    )


async def test_a_text_result_is_measured_as_encoded_escapes_included() -> None:
    # Ten control characters: 10 characters, 62 bytes of JSON ("\u0001" each, quotes).
    text = "\x01" * 10
    assert (await call(text, **journaled(62))).history["dump"].result == text
    with pytest.raises(ResultSerializationError, match=r"is 62 bytes .* max_result_bytes=61 "):
        await call(text, **journaled(61))
    with pytest.raises(ResultSerializationError, match=r"is 602 bytes .* max_result_bytes=100 "):
        await call(text * 10, **journaled(100))


async def test_large_sizes_are_given_in_mib() -> None:
    with pytest.raises(ResultSerializationError) as refused:
        await call(["x" * 1024] * 3 * 1024, **journaled(2 * 1024 * 1024))
    assert " is 3.0 MiB when encoded " in str(refused.value)
    assert "over max_result_bytes=2097152 (2.0 MiB)." in str(refused.value)


async def test_without_a_journal_no_size_limit_applies() -> None:
    # Nothing is stored, so nothing is too large to store.
    state = await call("x" * 1000, max_result_bytes=100)
    assert state.history["dump"].result == "x" * 1000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([Doc(text="a"), Doc(text="b")], f"list[{__name__}:Doc]"),
        ((Doc(text="a"),), f"tuple[{__name__}:Doc]"),
        ({"a": Doc(text="a")}, f"dict[{__name__}:Doc]"),
        ((1, 2), "tuple"),
        ({1, 2}, "set"),
        (frozenset({1}), "frozenset"),
        ([1, 2], None),
        ({"a": 1}, None),
        ([], None),
        ([Doc(text="a"), Note(text="b")], None),  # one model type or nothing
        ([Doc(text="a"), 1], None),
        ({1: Doc(text="a")}, None),  # JSON keys are strings: not restorable as given
        ({"a": Doc(text="a"), "b": Note(text="b")}, None),
        ({"a": 1, "b": Doc(text="b")}, None),
        ({"a": Doc(text="a"), "b": 1}, None),
    ],
)
def test_the_recorded_type_of_a_container_result(value: Any, expected: str | None) -> None:
    assert container_type(value) == expected


async def test_a_failed_journal_stops_the_run_with_what_failed_and_what_to_do() -> None:
    backend = FullDisk(InMemoryStateBackend(), room=1)
    state = ExecutionState(telemetry=False, state_id="run-7", state_backend=backend)
    with pytest.raises(StateError) as failed:
        await ExecutionEvent(actor=returning(1))(None, {}, state)
    assert str(failed.value) == (
        "Could not append 'dump' (completed) to the history of state run-7: OSError: "
        "[Errno 28] No space left on device. Everything recorded before is intact; fix "
        "the backend (e.g. free disk space) and resume the run."
    )
    assert isinstance(failed.value.__cause__, OSError)
    backend.room = 10  # even with room again, the state records nothing more
    with pytest.raises(StateError) as again:
        await ExecutionEvent(actor=returning(2))(None, {}, state)
    assert again.value is failed.value
    assert [r["status"] for r in backend.load_events("run-7")] == ["started"]


async def test_each_call_of_a_reused_event_records_its_own_result() -> None:
    values = iter([{"a": [1]}, 5, (Doc(text="c"),), None])

    async def handler(data: Any, extra: Any, state: Any) -> Any:
        return next(values)

    state = ExecutionState(telemetry=False, state_backend=InMemoryStateBackend())
    event: ExecutionEvent[Any] = ExecutionEvent(actor=Tool(name="t", handler=handler))
    for _ in range(4):
        assert (await event(None, {}, state)).ok
    completed = [
        (r["address"], r.get("result"), r.get("result_type"))
        for r in state.history.to_records()
        if r["status"] == "completed"
    ]
    assert completed == [
        ("t", {"a": [1]}, None),
        ("t#1", 5, None),
        ("t#2", [{"text": "c"}], f"tuple[{__name__}:Doc]"),
        ("t#3", None, None),
    ]


@pytest.mark.parametrize(
    ("make", "kind"),
    [(lambda: (i for i in range(3)), "generator"), (lambda: iter([1, 2]), "list_iterator")],
)
async def test_an_iterator_result_is_refused_in_one_plain_sentence(make: Any, kind: str) -> None:
    with pytest.raises(ResultSerializationError) as refused:
        await call(make(), state_backend=InMemoryStateBackend())
    assert str(refused.value) == (
        f"The result of actor 'dump' is a {kind}, which storing in the history would "
        "consume (and a resumed run could not replay); return a list (or another value) "
        "instead."
    )


class Stamp(BaseModel):
    at: datetime.datetime
    tags: list[str]


async def test_a_model_result_is_recorded_in_its_json_form_as_it_was_returned() -> None:
    returned = Stamp(at=datetime.datetime(2026, 1, 2, 3, 4, 5), tags=["a"])
    state = await call(returned, state_backend=InMemoryStateBackend())
    returned.tags.append("changed later by the caller")
    record = next(r for r in state.history.to_records() if r["status"] == "completed")
    assert record["result"] == {"at": "2026-01-02T03:04:05", "tags": ["a"]}
    assert record["result_type"] == f"{__name__}:Stamp"


async def test_a_text_result_records_no_type() -> None:
    state = await call("plain text", state_backend=InMemoryStateBackend())
    record = next(r for r in state.history.to_records() if r["status"] == "completed")
    assert record["result"] == "plain text" and "result_type" not in record


async def test_a_result_without_a_json_form_is_refused_with_advice() -> None:
    with pytest.raises(ResultSerializationError) as refused:
        await call(object())
    assert str(refused.value) == (
        "The result of actor 'dump' is a object that cannot be stored in the history "
        "(PydanticSerializationError: Unable to serialize unknown type: <class 'object'>), "
        "so the run could not be resumed. Return a pydantic model, primitives, lists or "
        "dicts."
    )
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ResultSerializationError) as circular:
        await call(cycle)
    assert str(circular.value) == (
        "The result of actor 'dump' is a list that cannot be stored in the history "
        "(ValueError: Circular reference detected (id repeated)), so the run could not be "
        "resumed. It refers to itself (a cycle); return a copy without the back-reference."
    )
    assert isinstance(circular.value.__cause__, ValueError)


async def test_a_plain_user_journal_records_every_status_change_and_resumes() -> None:
    backend = PlainJournalBackend()
    state = ExecutionState(
        telemetry=False,
        state_id="plain",
        state_backend=backend,  # type: ignore[arg-type]
        storage={"odd": Unencodable()},
        metadata=StateMetadata(pipeline_name="nightly"),
    )
    state.artifact_refs["report"] = "ref-1"
    assert backend.load_events("plain") == []  # nothing written before the first call
    await ExecutionEvent(actor=returning({"n": 1}))(None, {}, state)
    assert [(r["address"], r["status"]) for r in backend.load_events("plain")] == [
        ("dump", "started"),
        ("dump", "completed"),
    ]
    first = backend.load_state("plain")  # the run's first snapshot: the journal is its history
    assert first is not None
    assert first.execution_state == {"events": [], "storage": {"odd": "<Unencodable 1>"}}
    assert first.metadata.pipeline_name == "nightly"
    assert first.artifact_refs == {"report": "ref-1"}
    statistics = state.recorder.statistics()
    assert (statistics.records, statistics.commits) == (2, 2)

    loaded = ExecutionState.load_from_state_id("plain", backend)  # type: ignore[arg-type]
    replayed = await ExecutionEvent(actor=returning({"n": 2}))(None, {}, loaded)
    assert replayed.result == {"n": 1} and replayed.replayed
    with pytest.raises(LifecycleError) as taken:
        ExecutionState(state_id="plain", state_backend=backend)  # type: ignore[arg-type]
    assert str(taken.value).startswith(
        "PlainJournalBackend already holds a history for state 'plain'."
    )


async def test_a_snapshot_only_backend_records_no_journal() -> None:
    backend = SnapshotOnlyBackend()
    state = ExecutionState(telemetry=False, state_id="s", state_backend=backend)  # type: ignore[arg-type]
    await ExecutionEvent(actor=returning(1))(None, {}, state)
    assert state.recorder.journal is None and backend.snapshots == {}
    again = ExecutionState(telemetry=False, state_id="s", state_backend=backend)  # type: ignore[arg-type]
    assert (await ExecutionEvent(actor=returning(2))(None, {}, again)).result == 2


async def test_the_statistics_add_up_over_the_runs_of_a_state() -> None:
    state = ExecutionState(telemetry=False, state_backend=InMemoryStateBackend())
    tool = returning(1)
    for _ in range(3):  # each top-level call opens the run's journal and closes it
        await ExecutionEvent(actor=tool)(None, {}, state)
    statistics = state.recorder.statistics()
    assert statistics.records == 6
    assert 1 <= statistics.commits <= 6
    assert statistics.commit_seconds >= 0.0
    assert statistics.largest_commit >= 1


async def test_the_run_stays_held_until_its_last_open_call_ends() -> None:
    backend = InMemoryStateBackend()
    state = ExecutionState(telemetry=False, state_id="held", state_backend=backend)
    attempts: list[str] = []

    async def inner(data: Any, extra: Any, st: Any) -> int:
        return 1

    async def outer(data: Any, extra: Any, st: Any) -> int:
        first = await ExecutionEvent(actor=Tool(name="inner", handler=inner))(None, {}, st)
        second = await ExecutionEvent(actor=Tool(name="inner", handler=inner))(None, {}, st)
        # Both nested calls ended, the outer one has not: a second writer is refused.
        other = ExecutionState.load_from_state_id("held", backend, check_program=False)
        try:
            await ExecutionEvent(actor=Tool(name="intruder", handler=inner))(None, {}, other)
        except StateLockedError:
            attempts.append("refused")
        return first.result + second.result

    result = await ExecutionEvent(actor=Tool(name="outer", handler=outer))(None, {}, state)
    assert result.result == 2 and attempts == ["refused"]
    # Once the outer call ended, the run is free for the next writer.
    later = ExecutionState.load_from_state_id("held", backend)
    assert (await ExecutionEvent(actor=Tool(name="outer", handler=outer))(None, {}, later)).replayed


@pytest.mark.parametrize("backend", [InMemoryStateBackend, PlainJournalBackend])
async def test_a_later_call_keeps_the_checkpoint_saved_before_it(backend: Any) -> None:
    backend = backend()
    state = ExecutionState(telemetry=False, state_id="kept", state_backend=backend)
    await ExecutionEvent(actor=returning(1))(None, {}, state)
    assert state.save_checkpoint(StateStatus.PAUSED, StateMetadata(description="halfway"))
    await ExecutionEvent(actor=returning(2))(None, {}, state)  # opens the run again
    stored = backend.load_state("kept")
    assert stored is not None
    assert stored.status is StateStatus.PAUSED and stored.metadata.description == "halfway"


async def test_a_coroutine_result_is_refused_in_one_plain_sentence() -> None:
    async def later() -> int:
        return 1

    pending = later()
    try:
        with pytest.raises(ResultSerializationError) as refused:
            await call(pending)
    finally:
        pending.close()
    assert str(refused.value).startswith("The result of actor 'dump' is a coroutine, which ")


async def test_a_limit_of_one_mib_is_shown_in_mib() -> None:
    with pytest.raises(ResultSerializationError) as refused:
        await call("x" * (1024 * 1024), **journaled(1024 * 1024))
    assert "is 1.0 MiB when encoded" in str(refused.value)
    assert "over max_result_bytes=1048576 (1.0 MiB)." in str(refused.value)


async def test_a_failed_commit_names_the_entry_and_releases_the_run() -> None:
    memory = InMemoryStateBackend()
    state = ExecutionState(
        telemetry=False,
        state_id="io",
        state_backend=FailingCommit(memory),  # type: ignore[arg-type]
    )
    with pytest.raises(StateError) as failed:
        await ExecutionEvent(actor=returning(1))(None, {}, state)
    assert str(failed.value).startswith(
        "Could not append 'dump' (started) to the history of state io: OSError: [Errno 5] "
    )  # the first record of a run is committed before the handler runs
    # The failed journal was closed: the run is free for the next writer.
    resumed = ExecutionState.load_from_state_id("io", memory)
    assert (await ExecutionEvent(actor=returning(2))(None, {}, resumed)).result == 2


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_the_run_stays_held_while_a_call_backs_off_a_retry(kind: str, tmp_path: Any) -> None:
    backend: Any = (
        InMemoryStateBackend() if kind == "memory" else SQLiteStateBackend(tmp_path / "h.db")
    )
    state = ExecutionState(telemetry=False, state_id="retry", state_backend=backend)
    intruder_ran: list[bool] = []
    outcomes: list[str] = []

    async def intruder(data: Any, extra: Any, st: Any) -> int:
        intruder_ran.append(True)
        return 0

    async def flaky(data: Any, extra: Any, st: Any) -> int:
        if not outcomes:
            outcomes.append("failed once")
            raise ConnectionError("try again")
        # The first attempt failed and was recorded as RETRYING: the run is still held.
        other = ExecutionState.load_from_state_id("retry", backend, check_program=False)
        try:
            await ExecutionEvent(actor=Tool(name="intruder", handler=intruder))(None, {}, other)
        except StateLockedError:
            outcomes.append("intruder refused")
        return 1

    tool = Tool(
        name="flaky", handler=flaky, retry_config=RetryConfig(max_attempts=2, initial_delay=0.01)
    )
    try:
        assert (await ExecutionEvent(actor=tool)(None, {}, state)).result == 1
    finally:
        if kind == "sqlite":
            backend.close()
    assert outcomes == ["failed once", "intruder refused"] and not intruder_ran


async def test_statistics_count_the_open_journal_and_add_up_commit_time(tmp_path: Any) -> None:
    backend = SQLiteStateBackend(tmp_path / "s.db")
    state = ExecutionState(telemetry=False, state_backend=backend)
    during: list[int] = []

    async def look(data: Any, extra: Any, st: ExecutionState) -> int:
        during.append(st.recorder.statistics().records)
        return 1

    try:
        for _ in range(2):
            await ExecutionEvent(actor=Tool(name="look", handler=look))(None, {}, state)
    finally:
        backend.close()
    statistics = state.recorder.statistics()
    assert statistics.records == 4
    assert during == [1, 3]  # each call's STARTED record was committed before its handler ran
    assert statistics.commit_seconds > 0
