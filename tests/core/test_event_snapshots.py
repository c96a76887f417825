"""The immutable copies a call publishes (history entries, what subscribers receive):
what they refuse, how they copy and pickle, and what they share to stay small."""

from __future__ import annotations

import copy
import pickle
import sys
import uuid
from typing import Any

import pytest

from rh_agents import ExecutionEvent, ExecutionState, Tool
from rh_agents.core.errors import ImmutableEventError, InvalidArgumentError
from rh_agents.core.events import freeze, is_snapshot
from rh_agents.core.types import ExecutionStatus as S

READ_ONLY = (
    "The metadata of a history entry (the event subscribers receive) cannot be "
    "changed; copy it with dict(event.metadata) and change the copy."
)


async def echo(data: Any, extra: Any, state: Any) -> Any:
    return data


async def completed_entry(
    result: Any = None, *, version: str = "1.0.0", metadata: dict[str, Any] | None = None
) -> tuple[ExecutionState, ExecutionEvent[Any]]:
    state = ExecutionState(telemetry=False)
    tool = Tool(name="echo", handler=echo, version=version)
    await ExecutionEvent(actor=tool, metadata=metadata or {})(result, {}, state)
    return state, state.history["echo"]


async def test_calling_an_event_without_its_actor_or_state_says_how_to_call_it() -> None:
    with pytest.raises(InvalidArgumentError) as no_actor:
        await ExecutionEvent()(1, {}, ExecutionState(telemetry=False))
    assert str(no_actor.value) == (
        "This ExecutionEvent has no actor; build it as ExecutionEvent(actor=...)."
    )
    with pytest.raises(InvalidArgumentError) as no_state:
        await ExecutionEvent(actor=Tool(name="lonely", handler=echo))(1, {})
    assert str(no_state.value) == (
        "Calling the event for actor 'lonely' needs the ExecutionState: "
        "await event(input_data, extra_context, execution_state)."
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda md: md.__setitem__("k", 2),
        lambda md: md.__delitem__("k"),
        lambda md: md.__ior__({"k": 2}),
        lambda md: md.clear(),
        lambda md: md.pop("k"),
        lambda md: md.popitem(),
        lambda md: md.setdefault("new", 1),
        lambda md: md.update(k=2),
    ],
    ids=["set", "del", "|=", "clear", "pop", "popitem", "setdefault", "update"],
)
async def test_every_change_of_an_entrys_metadata_is_refused_with_the_way_out(
    change: Any,
) -> None:
    _, entry = await completed_entry(metadata={"k": 1})
    with pytest.raises(ImmutableEventError) as refused:
        change(entry.metadata)
    assert str(refused.value) == READ_ONLY
    assert entry.metadata == {"k": 1}


async def test_an_entrys_metadata_copies_into_an_ordinary_dict() -> None:
    _, entry = await completed_entry(metadata={"k": 1, "items": [1]})
    metadata = entry.metadata
    mutable = metadata.copy()
    mutable["k"] = 2  # the copy is the user's to change
    assert type(mutable) is dict and metadata["k"] == 1
    assert copy.copy(metadata) is metadata  # read-only: a copy may be the same object

    copied, items = copy.deepcopy((metadata, metadata["items"]))
    assert copied == {"k": 1, "items": [1]} and copied["items"] is not metadata["items"]
    assert copied["items"] is items  # one deep copy: shared values stay shared
    with pytest.raises(ImmutableEventError):
        copied["k"] = 2

    unpickled = pickle.loads(pickle.dumps(metadata))
    assert unpickled == {"k": 1, "items": [1]}
    with pytest.raises(ImmutableEventError):
        unpickled["k"] = 2


async def test_deleting_an_attribute_of_an_entry_names_it() -> None:
    _, entry = await completed_entry(1)
    with pytest.raises(ImmutableEventError, match=r"^Cannot set 'message' on the event of 'echo'"):
        del entry.message


async def test_a_deep_copy_keeps_shared_values_shared() -> None:
    _, entry = await completed_entry([1, 2])
    copied, result = copy.deepcopy((entry, entry.result))
    assert not is_snapshot(copied)
    assert copied.result == [1, 2] and copied.result is not entry.result
    assert copied.result is result


async def test_a_pickled_entry_is_an_entry_again() -> None:
    _, entry = await completed_entry(7, metadata={"k": 1})
    again = pickle.loads(pickle.dumps(entry))
    assert is_snapshot(again)
    assert again.model_fields_set == entry.model_fields_set
    assert again.model_extra is None
    assert again.result == 7 and again.execution_status is S.COMPLETED
    with pytest.raises(ImmutableEventError) as refused:
        again.metadata["k"] = 2
    assert str(refused.value) == READ_ONLY
    assert set(again.__dict__) == set(ExecutionEvent.model_fields)


async def test_the_record_keeps_the_result_as_it_was_returned() -> None:
    returned = {"hits": ["a"]}
    state, _ = await completed_entry(returned)
    returned["hits"].append("changed later by the caller")
    completed = [r for r in state.history.to_records() if r["status"] == "completed"]
    assert completed[0]["result"] == {"hits": ["a"]}


async def test_recording_a_new_status_of_an_entry_leaves_the_entry_unchanged() -> None:
    state, entry = await completed_entry(1)
    await state.add_event(entry, S.FAILED)
    assert entry.execution_status is S.COMPLETED
    assert [e.execution_status for e in state.history.get_event_list()] == [
        S.STARTED,
        S.COMPLETED,
        S.FAILED,
    ]


def test_freezing_an_entry_again_returns_it() -> None:
    entry = freeze(ExecutionEvent(actor=Tool(name="t", handler=echo)))
    assert freeze(entry) is entry


def test_a_snapshot_keeps_the_fields_that_were_set() -> None:
    # A combination of fields no other test sets: the first snapshot of a new field set.
    event: ExecutionEvent[Any] = ExecutionEvent(
        actor=Tool(name="t", handler=echo),
        detail=f"d-{uuid.uuid4()}",
        retry_delay=0.25,
        original_error="boom",
        parallel_index=3,
        error_type="KeyError",
    )
    expected = {"actor", "detail", "retry_delay", "original_error", "parallel_index", "error_type"}
    first, second = freeze(event), freeze(event)
    assert first.model_fields_set == second.model_fields_set == expected
    assert copy.copy(first).model_fields_set == expected
    assert first.model_extra is None


async def test_entries_share_what_they_have_in_common() -> None:
    # A long run holds two entries per call: equal parts are one object, not one each.
    version = f"v-{uuid.uuid4()}"
    state, _ = await completed_entry(1, version=version)
    started, completed = state.history.get_event_list()
    assert started.__pydantic_private__ is completed.__pydantic_private__
    assert completed.__pydantic_private__ == {
        "_record_result": None,
        "_result_type": None,
        "_actor_version": version,
    }
    assert started.metadata is completed.metadata  # no metadata: one shared empty dict
    assert (
        freeze(ExecutionEvent(tag="a")).model_fields_set
        is freeze(ExecutionEvent(tag="b")).model_fields_set
    )
    records = state.history.to_records()
    assert [r["version"] for r in records] == [version, version]


async def test_live_and_restored_entries_share_one_key_table() -> None:
    # A long run's history holds two entries per call: each entry's dictionary shares
    # the key table of all snapshots (a split dict), a third of a dict of its own.
    from rh_agents.core.history import record_to_event

    state, entry = await completed_entry(3, metadata={"k": 1})
    restored = record_to_event(state.history.to_records()[-1], 2)
    own = sys.getsizeof(dict(entry.__dict__))
    assert sys.getsizeof(entry.__dict__) < own / 2
    assert sys.getsizeof(restored.__dict__) == sys.getsizeof(entry.__dict__)
    assert list(restored.__dict__) == list(ExecutionEvent.model_fields)
    assert restored.result == 3 and restored.metadata == {"k": 1}
