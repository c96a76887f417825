"""What the immutable snapshot of a call carries into its history record: the actor's
version, the type of a model result, and the result's stored form."""

from __future__ import annotations

import copy
import pickle
from typing import Any

from pydantic import BaseModel

from rh_agents import ExecutionEvent, ExecutionState, Tool
from rh_agents.core.types import ExecutionStatus


class Answer(BaseModel):
    text: str


async def test_records_carry_the_actor_version_and_the_result_type() -> None:
    async def answer(data: Any, extra: Any, st: Any) -> Answer:
        return Answer(text=str(data))

    async def plain(data: Any, extra: Any, st: Any) -> int:
        return 1

    state = ExecutionState(telemetry=False)
    await ExecutionEvent(actor=Tool(name="answer", handler=answer, version="2.1"))("x", {}, state)
    await ExecutionEvent(actor=Tool(name="plain", handler=plain))(None, {}, state)
    records = state.history.to_records()
    by_status = {(r["address"], r["status"]): r for r in records}
    done = by_status[("answer", "completed")]
    assert done["version"] == "2.1"
    assert done["result"] == {"text": "x"}
    assert done["result_type"].endswith("Answer")
    started = by_status[("answer", "started")]
    assert started["version"] == "2.1" and "result_type" not in started
    assert by_status[("plain", "completed")]["version"] == "1.0.0"
    assert "result_type" not in by_status[("plain", "completed")]


async def answer_y(data: Any, extra: Any, st: Any) -> Answer:
    return Answer(text="y")


async def test_a_copied_or_pickled_entry_records_the_same() -> None:
    state = ExecutionState(telemetry=False)
    await ExecutionEvent(actor=Tool(name="answer", handler=answer_y, version="3"))(None, {}, state)
    entry = next(e for e in state.history.events if e.execution_status is ExecutionStatus.COMPLETED)
    record = {k: v for k, v in state.history.to_records()[-1].items() if k != "seq"}
    for copied in (copy.deepcopy(entry), pickle.loads(pickle.dumps(entry)), copy.copy(entry)):
        again = ExecutionState(telemetry=False)
        await again.add_event(copied)
        copied_record = again.history.to_records()[-1]
        assert {k: v for k, v in copied_record.items() if k != "seq"} == record
