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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
)

from rh_agents.core.errors import InvalidArgumentError, InvalidWorkError
from rh_agents.core.policy import Policy
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
        cacheable: results are cached by (name, version, input) when True.
        version: part of the cache key; bump it when the handler's behaviour changes.
        cache_ttl: seconds a cached result stays valid (None: no expiry).
        preconditions / postconditions: checks run before the handler (on the input) and
            after it (on the result); ``False`` or an exception fails the invocation.
        policy: the resilience guards of each call of the handler
            (:class:`~rh_agents.core.policy.Policy`: retry, circuit breaker, limiter,
            per-attempt timeout); None for none.
        retry_config: opt-in retries of this actor's handler (None: no retries); the
            shortcut for ``policy=Policy(retry=retry_config)``. Give one or the other.

    Assignments are validated like construction (``actor.handler = sync_fn`` is refused).

    Example::

        search = Tool(
            name="search",
            handler=search_web,
            policy=Policy(retry=RetryConfig(max_attempts=3), timeout=10.0),
        )
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
    preconditions: list[Condition] = Field(default_factory=list)
    postconditions: list[Condition] = Field(default_factory=list)
    retry_config: RetryConfig | None = None
    policy: Policy | None = None

    # The policy built from the retry_config shortcut, once per RetryConfig (so its
    # statistics count across calls).
    _shortcut: Policy | None = PrivateAttr(default=None)

    @property
    def effective_policy(self) -> Policy | None:
        """The policy each call runs under: :attr:`policy`, or the one built from the
        :attr:`retry_config` shortcut; None when there is nothing to guard.

        Example::

            Tool(name="t", handler=h, retry_config=RetryConfig()).effective_policy.retry
        """
        policy = self.policy
        if policy is not None:
            return None if policy.is_empty else policy
        retry = self.retry_config
        if retry is None:
            return None
        built = self._shortcut
        if built is None or built.retry is not retry:
            built = self._shortcut = Policy(retry=retry)
        return built

    @field_validator("retry_config", "policy")
    @classmethod
    def _one_way_to_retry(cls, value: Any, info: ValidationInfo) -> Any:
        other = "policy" if info.field_name == "retry_config" else "retry_config"
        if value is not None and info.data.get(other) is not None:
            name = info.data.get("name", "<unnamed>")
            raise InvalidArgumentError(
                f"Actor '{name}' got both retry_config= and policy=; retry_config is the "
                "shortcut for policy=Policy(retry=...). Put the RetryConfig into the "
                "policy (Policy(retry=RetryConfig(...), ...)) and leave retry_config out."
            )
        return value

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
