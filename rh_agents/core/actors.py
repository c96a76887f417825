"""Actors: the units of work an :class:`~rh_agents.core.events.ExecutionEvent` runs.

An actor is a pydantic model holding an async ``handler`` plus what the core needs to
run it safely: input and output models for validation, pre- and postconditions, and
caching settings. ``Tool``, ``LLM`` and ``Agent`` only differ in their defaults.

Example:
    >>> from pydantic import BaseModel
    >>> class Query(BaseModel):
    ...     text: str
    >>> async def search(data: Query, extra_context, state):
    ...     return f"results for {data.text}"
    >>> tool = Tool(name="search", input_model=Query, handler=search)
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from rh_agents.core.errors import InvalidArgumentError, InvalidWorkError
from rh_agents.core.retry import RetryConfig
from rh_agents.core.types import EventType

__all__ = [
    "LLM",
    "RESERVED_ADDRESS_CHARS",
    "Agent",
    "BaseActor",
    "Condition",
    "Handler",
    "Tool",
    "ToolSet",
]

RESERVED_ADDRESS_CHARS = "/#[]"
"""Characters that structure addresses; not allowed in actor names and tags."""

Handler = Callable[..., Awaitable[Any]]
"""``async def handler(input_data, extra_context, execution_state) -> result``."""

Condition = Callable[..., Any]
"""A sync or async check; returning ``False`` (or raising) fails the invocation."""


def _is_async_callable(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    # callable objects whose __call__ is async count too
    target: Any = fn
    return callable(target) and inspect.iscoroutinefunction(target.__call__)


class BaseActor(BaseModel):
    """Something that can be invoked through an ExecutionEvent.

    Attributes:
        name: identifies the actor in addresses, spans, metrics and the cache key.
        description: free text, shown to people and to LLMs choosing tools.
        input_model: inputs are validated into this model before the handler runs.
        output_model: results are validated into this model, and replayed results are
            re-validated into it on resume.
        handler: ``async def handler(input_data, extra_context, execution_state)``.
        event_type: the kind of call (agent, tool or LLM).
        cacheable: results are cached when True, under a key made of the name, the
            version, the input and the call's extra_context (see ``cache_key``).
        version: part of the cache key; bump it when the handler's behaviour changes.
        cache_key: what identifies the answer of a call, ``fn(input_data,
            extra_context)`` returning JSON-like data (the name and version are added
            to it); None (default): the input and the whole extra_context. Give one when
            the extra_context holds objects without a JSON form (a client, a lock),
            which are refused otherwise, or parts that do not change the answer.
        cache_ttl: seconds a cached result stays valid (None: no expiry).
        preconditions / postconditions: checks run before the handler (on the input) and
            after it (on the result); ``False`` or an exception fails the invocation.
        retry_config: opt-in retries of this actor's handler (None: no retries).

    Assignments are validated like construction (``actor.handler = sync_fn`` is refused).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True)

    name: str
    description: str = ""
    input_model: type[BaseModel] | None = None
    output_model: type[BaseModel] | None = None
    handler: Handler
    event_type: EventType = EventType.AGENT_CALL
    cacheable: bool = False
    version: str = "1.0.0"
    cache_ttl: float | None = None
    cache_key: Callable[[Any, Any], Any] | None = None
    preconditions: list[Condition] = Field(default_factory=list)
    postconditions: list[Condition] = Field(default_factory=list)
    retry_config: RetryConfig | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value or not value.strip():
            raise InvalidArgumentError("An actor needs a non-empty name.")
        bad = sorted(set(value) & set(RESERVED_ADDRESS_CHARS))
        if bad:
            raise InvalidArgumentError(
                f"Actor name {value!r} contains {''.join(bad)!r}; the characters "
                f"{RESERVED_ADDRESS_CHARS!r} structure addresses (a tool named 't#1' would "
                "collide with the second call of 't'). Use letters, digits, '-', '_', '.'."
            )
        return value

    @field_validator("handler", mode="plain")
    @classmethod
    def _check_handler(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.data.get("name", "<unnamed>")
        if not callable(value) or not _is_async_callable(value):
            raise InvalidWorkError(
                f"The handler of actor '{name}' must be an async function "
                f"(`async def handler(input_data, extra_context, execution_state)`), "
                f"got {type(value).__name__} {value!r}."
            )
        return value

    @field_validator("cache_ttl")
    @classmethod
    def _check_ttl(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise InvalidArgumentError(
                f"cache_ttl must be a positive number of seconds or None, got {value!r}."
            )
        return value


class Tool(BaseActor):
    """An actor that performs one action (a search, an API call, a computation)."""

    event_type: EventType = EventType.TOOL_CALL


class LLM(BaseActor):
    """An actor that calls a language model; cacheable by default for an hour.

    Attributes:
        model: the model it requests (e.g. ``"gpt-4o-mini"``), recorded on its spans as
            ``gen_ai.request.model`` and in the span name (``chat gpt-4o-mini``).
        provider: who serves it (e.g. ``"openai"``), recorded as ``gen_ai.provider.name``.
    """

    event_type: EventType = EventType.LLM_CALL
    cacheable: bool = True
    cache_ttl: float | None = 3600.0
    model: str | None = None
    provider: str | None = None


class ToolSet(BaseModel):
    """An ordered collection of tools with lookup by name.

    Example:
        >>> tools = ToolSet(tools=[search_tool])  # doctest: +SKIP
        >>> tools["search"] is search_tool  # doctest: +SKIP
        True
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tools: list[Tool] = Field(default_factory=list)

    @field_validator("tools")
    @classmethod
    def _unique(cls, value: list[Tool]) -> list[Tool]:
        seen: set[str] = set()
        for tool in value:
            if tool.name in seen:
                raise InvalidArgumentError(
                    f"A ToolSet holds two tools named '{tool.name}'; tool names must be unique."
                )
            seen.add(tool.name)
        return value

    @property
    def by_name(self) -> dict[str, Tool]:
        """The tools keyed by name."""
        return {tool.name: tool for tool in self.tools}

    def get(self, name: str, default: Tool | None = None) -> Tool | None:
        """The tool called ``name``, or ``default``."""
        return self.by_name.get(name, default)

    def __getitem__(self, name: str) -> Tool:
        try:
            return self.by_name[name]
        except KeyError:
            known = ", ".join(sorted(self.by_name)) or "none"
            raise KeyError(f"No tool named '{name}' in this ToolSet (tools: {known}).") from None

    def __contains__(self, name: object) -> bool:
        return any(tool.name == name for tool in self.tools)

    def __iter__(self) -> Iterator[Tool]:  # type: ignore[override]
        return iter(self.tools)

    def __len__(self) -> int:
        return len(self.tools)


class Agent(BaseActor):
    """An actor that orchestrates tools and, optionally, an LLM."""

    event_type: EventType = EventType.AGENT_CALL
    tools: ToolSet = Field(default_factory=ToolSet)
    llm: LLM | None = None

    @field_validator("tools", mode="before")
    @classmethod
    def _tool_list(cls, value: Any) -> Any:
        """``Agent(tools=[search, fetch])`` is a ToolSet of those tools."""
        if isinstance(value, list | tuple):
            return ToolSet(tools=list(value))
        return value
