"""Enums, actors and ToolSet: the values and construction rules users rely on."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents.core.actors import LLM, Agent, BaseActor, Tool, ToolSet
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.types import EventType, ExecutionStatus


class Query(BaseModel):
    text: str


async def echo(data: Any, extra: Any, state: Any) -> Any:
    return data


def test_event_type_values() -> None:
    assert {e.name: e.value for e in EventType} == {
        "AGENT_CALL": "agent_call",
        "TOOL_CALL": "tool_call",
        "LLM_CALL": "llm_call",
    }
    assert EventType("tool_call") is EventType.TOOL_CALL
    assert EventType.LLM_CALL == "llm_call"  # str enum: compares to plain strings


def test_execution_status_values_are_lower_case() -> None:
    expected = {
        "STARTED",
        "COMPLETED",
        "FAILED",
        "RECOVERED",
        "RETRYING",
        "CANCELLED",
        "INTERRUPTED",
        "AWAITING",
        "HUMAN_INTERVENTION",
        "CANCELLING",
    }
    assert {s.name for s in ExecutionStatus} == expected
    for status in ExecutionStatus:
        assert status.value == status.name.lower()
        assert ExecutionStatus(status.value) is status
    assert ExecutionStatus.COMPLETED.is_terminal
    assert ExecutionStatus.CANCELLED.is_terminal
    assert not ExecutionStatus.STARTED.is_terminal
    assert not ExecutionStatus.RETRYING.is_terminal


@pytest.mark.parametrize("cls", [Tool, LLM, Agent, BaseActor])
def test_sync_handler_is_rejected_naming_the_actor(cls: type[BaseActor]) -> None:
    def not_async(data: Any, extra: Any, state: Any) -> Any:
        return data

    with pytest.raises(TypeError, match=r"'fetch_weather'.*async"):
        cls(name="fetch_weather", handler=not_async)


def test_non_callable_handler_is_rejected() -> None:
    with pytest.raises(TypeError, match="'broken'"):
        Tool(name="broken", handler="not a function")  # type: ignore[arg-type]


def test_callable_object_with_async_call_is_accepted() -> None:
    class Handler:
        async def __call__(self, data: Any, extra: Any, state: Any) -> Any:
            return data

    tool = Tool(name="obj", handler=Handler())
    assert isinstance(tool.handler, Handler)


def test_empty_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-empty name"):
        Tool(name="  ", handler=echo)


def test_actor_defaults() -> None:
    tool = Tool(name="t", handler=echo, input_model=Query)
    assert tool.event_type is EventType.TOOL_CALL
    assert tool.cacheable is False
    assert tool.cache_ttl is None
    assert tool.version == "1.0.0"
    assert tool.retry_config is None
    assert tool.preconditions == [] and tool.postconditions == []

    llm = LLM(name="model", handler=echo)
    assert llm.event_type is EventType.LLM_CALL
    assert llm.cacheable is True
    assert llm.cache_ttl == 3600

    agent = Agent(name="a", handler=echo)
    assert agent.event_type is EventType.AGENT_CALL
    assert len(agent.tools) == 0
    assert agent.llm is None


def test_non_positive_ttl_is_rejected() -> None:
    with pytest.raises(ValueError, match="cache_ttl"):
        LLM(name="m", handler=echo, cache_ttl=0)


def test_toolset_lookup() -> None:
    search = Tool(name="search", handler=echo)
    fetch = Tool(name="fetch", handler=echo)
    tools = ToolSet(tools=[search, fetch])

    assert tools["search"] is search
    assert tools.get("fetch") is fetch
    assert tools.get("missing") is None
    assert tools.get("missing", search) is search
    assert tools.by_name == {"search": search, "fetch": fetch}
    assert list(tools) == [search, fetch]
    assert len(tools) == 2
    assert "search" in tools and "nope" not in tools
    with pytest.raises(KeyError, match=r"No tool named 'nope'.*fetch, search"):
        tools["nope"]

    agent = Agent(name="a", handler=echo, tools=tools)
    assert agent.tools["fetch"] is fetch
    with pytest.raises(KeyError) as empty:
        ToolSet()["search"]
    assert empty.value.args == ("No tool named 'search' in this ToolSet (tools: none).",)


def test_toolset_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="two tools named 'search'"):
        ToolSet(tools=[Tool(name="search", handler=echo), Tool(name="search", handler=echo)])


@pytest.mark.parametrize("name", ["a/b", "t#1", "x[0]", "y]"])
def test_names_with_address_characters_are_rejected(name: str) -> None:
    async def handler(data: object, ctx: object, state: object) -> None:
        return None

    with pytest.raises(ValueError, match="structure addresses"):
        Tool(name=name, handler=handler)


async def test_tags_with_address_characters_are_rejected() -> None:
    from rh_agents import ExecutionEvent, ExecutionState

    async def handler(data: object, ctx: object, state: object) -> None:
        return None

    tool = Tool(name="t", handler=handler)
    with pytest.raises(ValueError, match="structure addresses"):
        await ExecutionEvent(actor=tool, tag="a/b")(None, {}, ExecutionState())


def test_assigning_a_sync_handler_later_is_refused_too() -> None:
    async def ok(data: Any, extra: Any, state: Any) -> Any:
        return data

    tool = Tool(name="t", handler=ok)
    with pytest.raises(TypeError, match="handler of actor 't' must be an async function"):
        tool.handler = lambda data, extra, state: data  # type: ignore[assignment,return-value]
    assert tool.handler is ok


def test_an_agent_takes_a_plain_list_of_tools() -> None:
    async def ok(data: Any, extra: Any, state: Any) -> Any:
        return data

    search, fetch = Tool(name="search", handler=ok), Tool(name="fetch", handler=ok)
    agent = Agent(name="a", handler=ok, tools=[search, fetch])
    assert isinstance(agent.tools, ToolSet)
    assert [t.name for t in agent.tools] == ["search", "fetch"]
    assert agent.tools["fetch"].name == "fetch"


@pytest.mark.parametrize(
    "build",
    [
        lambda: Tool(name="t", handler=echo, retry=3),  # retry_config= is the setting
        lambda: LLM(name="m", handler=echo, cache_tl=60),
        lambda: Agent(name="a", handler=echo, tool=[]),
        lambda: ToolSet(tool=[]),
        lambda: ExecutionEvent(actor=Tool(name="t", handler=echo), tagg="first"),
    ],
    ids=["Tool", "LLM", "Agent", "ToolSet", "ExecutionEvent"],
)
def test_a_misspelt_setting_is_refused_not_ignored(build: Any) -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        build()
