"""Quickstart: an agent that calls two tools and a (stub) LLM, then prints the history.

Run it with ``python examples/quickstart.py``. It needs no network: the LLM is a stub.
The LLM actor is cacheable (LLMs are by default), so asking it the same prompt twice
calls the stub once; the second answer is marked ``from_cache``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from rh_agents import LLM, Agent, ExecutionEvent, ExecutionState, Tool, ToolSet


class City(BaseModel):
    name: str


class Weather(BaseModel):
    city: str
    celsius: float


class Prompt(BaseModel):
    text: str


class Reply(BaseModel):
    content: str


async def get_weather(data: City, extra: dict[str, Any], state: ExecutionState) -> Weather:
    # A real tool would call a weather API here.
    table = {"Lisbon": 21.5, "Oslo": 4.0}
    return Weather(city=data.name, celsius=table.get(data.name, 15.0))


async def convert(data: Weather, extra: dict[str, Any], state: ExecutionState) -> float:
    return round(data.celsius * 9 / 5 + 32, 1)


LLM_CALLS = 0


async def stub_llm(data: Prompt, extra: dict[str, Any], state: ExecutionState) -> Reply:
    global LLM_CALLS
    LLM_CALLS += 1
    return Reply(content=f"Summary: {data.text}")


weather_tool = Tool(
    name="get_weather",
    description="Current weather of a city",
    input_model=City,
    output_model=Weather,
    handler=get_weather,
)
convert_tool = Tool(
    name="to_fahrenheit",
    description="Celsius to Fahrenheit",
    input_model=Weather,
    handler=convert,
)
llm = LLM(name="stub_llm", input_model=Prompt, output_model=Reply, handler=stub_llm)
tools = ToolSet(tools=[weather_tool, convert_tool])


async def travel_agent(data: City, extra: dict[str, Any], state: ExecutionState) -> str:
    weather = await ExecutionEvent(actor=tools["get_weather"])(data, extra, state)
    if not weather.ok:
        raise RuntimeError(weather.error_message)
    fahrenheit = await ExecutionEvent(actor=tools["to_fahrenheit"])(weather.result, extra, state)
    prompt = Prompt(text=f"{data.name} is {weather.result.celsius} C ({fahrenheit.result} F)")
    first = await ExecutionEvent(actor=llm)(prompt, extra, state)
    second = await ExecutionEvent(actor=llm)(prompt, extra, state)  # served from the cache
    assert first.result == second.result
    return first.result.content


agent = Agent(
    name="travel_agent",
    input_model=City,
    handler=travel_agent,
    tools=tools,
    llm=llm,
)


async def main() -> None:
    state = ExecutionState()
    state.event_bus.subscribe(
        lambda event: print(f"  event: {event.address} {event.execution_status.value}")
    )

    result = await ExecutionEvent(actor=agent)(City(name="Lisbon"), {}, state)
    print(f"result: ok={result.ok} value={result.result!r}")
    print(f"llm handler calls: {LLM_CALLS}")

    print("history:")
    for event in state.history.get_event_list():
        flags = " (from cache)" if event.from_cache else ""
        print(f"  {event.address:<30} {event.execution_status.value}{flags}")


if __name__ == "__main__":
    asyncio.run(main())
