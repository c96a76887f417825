"""The in-memory journal keeps a run's history entries and builds records when read.

What a user relies on: the records it gives back are the ones a persistent backend
stores for the same run (so tests on the in-memory backend say something about the
SQLite one), they are the values as they were when recorded (a list in the metadata
changed afterwards does not change the journal), and callers own their copies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents import ExecutionEvent, ExecutionState, Tool
from rh_agents.core.events import freeze
from rh_agents.core.history import event_to_record, record_is_final
from rh_agents.core.types import ExecutionStatus
from rh_agents.state_backends import InMemoryStateBackend, SQLiteStateBackend


class Doc(BaseModel):
    title: str
    tags: list[str]


async def echo(data: Any, extra: Any, state: Any) -> Any:
    if data == "boom":
        raise ValueError("boom")
    return data


async def _run(backend: Any, tags: list[str]) -> str:
    """A run with primitive, model, container and failed results, a group and metadata
    holding a list; returns its state id."""
    state = ExecutionState(telemetry=False, state_backend=backend, state_id="entries")
    tool = Tool(name="echo", handler=echo, version="2.0.0")
    doc = Doc(title="t", tags=["x"])
    for value in (1, "text", None, doc, [doc, doc], {"k": [1, 2]}, (1, 2), "boom"):
        await ExecutionEvent(actor=tool, metadata={"tags": tags, "n": 1})(value, {}, state)
    async with state.parallel(max_workers=2, name="pair") as group:
        for i in range(2):
            group.add(lambda i=i: ExecutionEvent(actor=tool)(i, {}, state))
        await group.gather()
    return state.state_id


def _timeless(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    clocks = {"timestamp", "execution_time"}
    return [{k: v for k, v in record.items() if k not in clocks} for record in records]


def _json(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(json.dumps(record)) for record in records]


async def test_the_in_memory_journal_gives_the_records_a_sqlite_file_stores(
    tmp_path: Path,
) -> None:
    memory = InMemoryStateBackend()
    sqlite = SQLiteStateBackend(tmp_path / "h.db")
    try:
        for backend in (memory, sqlite):
            await _run(backend, ["a"])
        from_memory = memory.load_events("entries")
        from_sqlite = sqlite.load_events("entries")
    finally:
        sqlite.close()
    assert len(from_memory) == len(from_sqlite) == 8 * 2 + 2 + 2 * 2
    assert _timeless(from_memory) == _timeless(_json(from_sqlite))
    assert [r["seq"] for r in from_memory] == list(range(1, len(from_memory) + 1))
    assert from_memory[7]["result"] == {"title": "t", "tags": ["x"]}
    assert from_memory[7]["result_type"].endswith(":Doc")


async def test_a_list_in_the_metadata_is_recorded_as_it_was_when_recorded() -> None:
    backend = InMemoryStateBackend()
    tags = ["before"]
    await _run(backend, tags)
    tags.append("after")  # the program changes the list the entries share
    first = backend.load_events("entries")[0]
    assert first["metadata"] == {"tags": ["before"], "n": 1}


async def test_records_read_from_the_in_memory_journal_are_the_callers_own() -> None:
    backend = InMemoryStateBackend()
    await _run(backend, ["a"])
    model = backend.load_events("entries")[7]
    model["result"]["title"] = "changed"
    model["metadata"]["tags"].append("b")
    again = backend.load_events("entries")[7]
    assert again["result"]["title"] == "t"
    assert again["metadata"]["tags"] == ["a"]


def _entry(**fields: Any) -> ExecutionEvent[Any]:
    return freeze(ExecutionEvent(address="a", **fields))


@pytest.mark.parametrize(
    ("fields", "final"),
    [
        ({}, True),
        ({"result": 3, "metadata": {"a": 1, "b": "x", "c": None, "d": 1.5, "e": True}}, True),
        ({"result": "text"}, True),
        ({"metadata": {"a": [1]}}, False),
        ({"metadata": {"a": {"b": 1}}}, False),
        ({"result": [1, 2]}, False),
        ({"result": {"k": 1}}, False),
        ({"result": Doc(title="t", tags=[])}, False),
    ],
)
def test_a_record_is_final_only_when_nothing_in_it_can_change(
    fields: dict[str, Any], final: bool
) -> None:
    assert record_is_final(_entry(**fields)) is final


def test_an_encoded_result_makes_the_record_final() -> None:
    event = ExecutionEvent(address="a", result=[1, 2], execution_status=ExecutionStatus.COMPLETED)
    event.__pydantic_private__["_record_result"] = [1, 2]  # type: ignore[index]
    entry = freeze(event)
    assert record_is_final(entry)
    assert event_to_record(entry, 1)["result"] == [1, 2]
