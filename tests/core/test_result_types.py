"""The optional result models of the API contract (rh_agents.core.result_types)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from rh_agents import LLM, ExecutionEvent, ExecutionState, Tool
from rh_agents.core.result_types import LLM_Result, Tool_Result
from rh_agents.state_backends import InMemoryStateBackend


class Prompt(BaseModel):
    text: str


async def _answer(data: Prompt, ctx: Any, state: Any) -> LLM_Result:
    return LLM_Result(
        content=data.text.upper(),
        model_name="m-2024",
        input_tokens=len(data.text),
        output_tokens=2,
        finish_reason="stop",
    )


def test_tokens_used_is_the_sum_unless_given() -> None:
    assert LLM_Result(input_tokens=3, output_tokens=4).tokens_used == 7
    assert LLM_Result(input_tokens=3, output_tokens=4, tokens_used=9).tokens_used == 9
    assert LLM_Result(content="x").tokens_used is None
    assert LLM_Result(content="x").usage is None


async def test_an_llm_returning_llm_result_reports_its_usage_and_replays_typed() -> None:
    llm = LLM(name="writer", input_model=Prompt, output_model=LLM_Result, handler=_answer)
    backend = InMemoryStateBackend()
    state = ExecutionState(state_backend=backend, telemetry=False)
    result = await ExecutionEvent(actor=llm)(Prompt(text="hello"), {}, state)
    assert result.ok and result.result is not None
    assert result.result.content == "HELLO"
    usage = state.history.token_usage()
    assert (usage.input_tokens, usage.output_tokens) == (5, 2)
    assert usage.response_model == "m-2024"
    assert usage.finish_reasons == ("stop",)

    resumed = ExecutionState.load_from_state_id(state.state_id, backend, telemetry=False)
    again = await ExecutionEvent(actor=llm)(Prompt(text="hello"), {}, resumed)
    assert again.result == result.result and isinstance(again.result, LLM_Result)
    assert resumed.history.token_usage().input_tokens == 5


async def test_tool_result_round_trips_as_a_tools_output_model() -> None:
    async def lookup(data: Prompt, ctx: Any, state: Any) -> Tool_Result:
        return Tool_Result(output={"hits": 2}, tool_name="lookup")

    tool = Tool(name="lookup", input_model=Prompt, output_model=Tool_Result, handler=lookup)
    state = ExecutionState(telemetry=False)
    result = await ExecutionEvent(actor=tool)(Prompt(text="q"), {}, state)
    assert result.result == Tool_Result(output={"hits": 2}, tool_name="lookup", success=True)
