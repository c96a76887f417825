"""Safe restore: stored data never chooses code, and a foreign program is refused.

* A recorded ``result_type`` names a class ("module:qualname"); restoring it imports
  nothing: the type comes from the actor's ``output_model`` or from the types the program
  registered (``ExecutionState(result_types=[...])``), else the stored JSON value is given
  back as it is.
* A restored state refuses, by default, calls the program that recorded it would not
  have made: a top-level actor it never called, an actor of another version.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.errors import SnapshotMismatchError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.types import ExecutionStatus
from rh_agents.storage import InMemoryStateBackend, SQLiteStateBackend
from rh_agents.storage._codec import seal, unseal

S = ExecutionStatus


class Doc(BaseModel):
    title: str


def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module on the import path that leaves a marker file when imported."""
    marker = tmp_path / "IMPORTED"
    (tmp_path / "rh_evil_payload.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "from pydantic import BaseModel\n"
        "class Payload(BaseModel):\n"
        "    title: str = ''\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return marker


def rewrite_result_type(path: Path, state_id: str, address: str, result_type: str) -> None:
    """Rewrite the result type of the completion at ``address``, with a valid checksum
    (as someone who can write the file can)."""
    import json
    import sqlite3

    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT position, record FROM events WHERE state_id = ?", (state_id,)
    ).fetchall()
    for position, text in rows:
        body, problem = unseal(text, state_id, position)
        assert problem is None
        record = json.loads(body)
        if record["address"] == address and record["status"] == "completed":
            record["result_type"] = result_type
            stored = seal(json.dumps(record, separators=(",", ":")), state_id, position)
            conn.execute(
                "UPDATE events SET record = ? WHERE state_id = ? AND position = ?",
                (stored, state_id, position),
            )
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "result_type",
    ["rh_evil_payload:Payload", "list[rh_evil_payload:Payload]", "dict[rh_evil_payload:Payload]"],
)
async def test_a_crafted_result_type_imports_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, result_type: str
) -> None:
    marker = evil_module(tmp_path, monkeypatch)
    value: Any = {"title": "a"} if "[" not in result_type else [{"title": "a"}]
    if result_type.startswith("dict"):
        value = {"k": {"title": "a"}}

    async def handler(data: Any, extra: Any, state: ExecutionState) -> Any:
        return value

    tool = Tool(name="fetch", handler=handler)  # no output_model
    path = tmp_path / "history.db"
    with SQLiteStateBackend(path) as backend:
        await ExecutionEvent(actor=tool)(
            None, {}, ExecutionState(state_id="r", state_backend=backend)
        )
    rewrite_result_type(path, "r", "fetch", result_type)

    with SQLiteStateBackend(path) as backend:
        resumed = ExecutionState.load_from_state_id("r", backend)
        replayed = await ExecutionEvent(actor=tool)(None, {}, resumed)
    assert replayed.status is S.RECOVERED
    assert replayed.result == value  # the stored JSON value, as it is
    assert not marker.exists()
    assert "rh_evil_payload" not in sys.modules


async def test_registered_types_come_back_and_others_stay_json() -> None:
    async def handler(data: Any, extra: Any, state: ExecutionState) -> Any:
        return [Doc(title="a"), Doc(title="b")]

    tool = Tool(name="fetch", handler=handler)
    backend = InMemoryStateBackend()
    state = ExecutionState(state_id="r", state_backend=backend)
    await ExecutionEvent(actor=tool)(None, {}, state)

    plain = ExecutionState.load_from_state_id("r", backend)
    assert (await ExecutionEvent(actor=tool)(None, {}, plain)).result == [
        {"title": "a"},
        {"title": "b"},
    ]
    typed = ExecutionState.load_from_state_id("r", backend, result_types=[Doc])
    assert (await ExecutionEvent(actor=tool)(None, {}, typed)).result == [
        Doc(title="a"),
        Doc(title="b"),
    ]


def test_result_types_must_be_models() -> None:
    with pytest.raises(ValueError, match="result_types must be pydantic model classes"):
        ExecutionState(result_types=["app.models:Doc"])  # type: ignore[list-item]


# ------------------------------------------------------------------ the program check


def pipeline(name: str = "pipeline", version: str = "1.0.0") -> tuple[Agent, list[str]]:
    ran: list[str] = []

    async def step(data: int, extra: Any, state: ExecutionState) -> int:
        ran.append(state.get_current_address())
        return data + 1

    tool = Tool(name="step", handler=step, version=version)

    async def run(data: int, extra: Any, state: ExecutionState) -> int:
        first = await ExecutionEvent(actor=tool)(data, {}, state)
        if data < 0:
            raise RuntimeError("stopped here")
        return int(first.result)

    return Agent(name=name, handler=run), ran


async def stopped_run(backend: Any) -> None:
    agent, _ = pipeline()
    state = ExecutionState(state_id="r", state_backend=backend)
    result = await ExecutionEvent(actor=agent)(-1, {}, state)
    assert not result.ok


async def test_another_programs_top_level_call_is_refused_before_it_runs() -> None:
    backend = InMemoryStateBackend()
    await stopped_run(backend)
    before = backend.load_events("r")
    other, ran = pipeline(name="billing")
    resumed = ExecutionState.load_from_state_id("r", backend)
    with pytest.raises(SnapshotMismatchError) as info:
        await ExecutionEvent(actor=other)(-1, {}, resumed)
    message = str(info.value)
    assert "was recorded by a program whose top-level calls are 'pipeline'" in message
    assert "but this program calls actor 'billing' at the top level" in message
    assert "pass check_program=False to resume anyway" in message
    assert ran == [] and backend.load_events("r") == before  # nothing ran, nothing written


async def test_another_version_of_an_actor_is_refused() -> None:
    backend = InMemoryStateBackend()
    await stopped_run(backend)
    agent, ran = pipeline(version="2.0.0")
    resumed = ExecutionState.load_from_state_id("r", backend)
    with pytest.raises(SnapshotMismatchError) as info:
        await ExecutionEvent(actor=agent)(-1, {}, resumed)
    assert (
        "was recorded with version 1.0.0 of actor 'step', but this program has version 2.0.0"
        in str(info.value)
    )
    assert ran == []


async def test_the_program_check_can_be_switched_off() -> None:
    backend = InMemoryStateBackend()
    await stopped_run(backend)
    agent, ran = pipeline(version="2.0.0")
    resumed = ExecutionState.load_from_state_id("r", backend, check_program=False)
    result = await ExecutionEvent(actor=agent)(-1, {}, resumed)
    assert ran == []  # the recorded step was replayed, not refused
    assert result.error_message == "stopped here"
