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
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypedDict, overload

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator
from typing_extensions import TypeVar, Unpack

from rh_agents.core.errors import InvalidArgumentError, InvalidWorkError
from rh_agents.core.policy import Policy
from rh_agents.core.retry import RetryConfig
from rh_agents.core.types import EventType

__all__ = [
    "LLM",
    "RESERVED_ADDRESS_CHARS",
    "ActorOptions",
    "Agent",
    "AgentOptions",
    "BaseActor",
    "Condition",
    "Handler",
    "InT",
    "LLMOptions",
    "OutT",
    "Tool",
    "ToolSet",
]

RESERVED_ADDRESS_CHARS = "/#[]"
"""Characters that structure addresses; not allowed in actor names and tags."""

Handler = Callable[..., Awaitable[Any]]
"""``async def handler(input_data, extra_context, execution_state) -> result``."""

Condition = Callable[..., Any]
"""A sync or async check; returning ``False`` (or raising) fails the invocation."""

InT = TypeVar("InT", default=Any)
"""What an actor's handler takes: its ``input_model``, or the handler's first parameter."""

OutT = TypeVar("OutT", default=Any)
"""What an actor's call returns: its ``output_model``, or what its handler returns."""


class ActorOptions(TypedDict, total=False):
    """The keyword arguments every actor takes besides ``name``, ``handler`` and the
    models (for type checkers; see :class:`BaseActor` for what each means)."""

    description: str
    event_type: EventType
    cacheable: bool
    version: str
    cache_ttl: float | None
    cache_key: Callable[[Any, Any], Any] | None
    preconditions: list[Condition]
    postconditions: list[Condition]
    retry_config: RetryConfig | None
    policy: Policy | None


class LLMOptions(ActorOptions, total=False):
    """The keyword arguments of :class:`LLM` besides those of every actor."""

    model: str | None
    provider: str | None


def _is_async_callable(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    # callable objects whose __call__ is async count too
    target: Any = fn
    return callable(target) and inspect.iscoroutinefunction(target.__call__)


class BaseActor(BaseModel, Generic[InT, OutT]):
    """Something that can be invoked through an ExecutionEvent.

    Actors are generic in what they take and what a call returns (``Tool[Query,
    list[str]]``), and type checkers infer both when the actor is built: the output type
    is ``output_model`` when one is given, else the return type of the handler; the
    input type is ``input_model``, else the handler's first parameter. An
    ``ExecutionEvent(actor=...)`` call then returns an ``ExecutionResult`` of that output
    type, so ``result.result`` is typed without annotations.

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
        policy: the resilience guards of each call of the handler
            (:class:`~rh_agents.core.policy.Policy`: retry, circuit breaker, limiter,
            per-attempt timeout); None for none.
        retry_config: opt-in retries of this actor's handler (None: no retries); the
            shortcut for ``policy=Policy(retry=retry_config)``. Give one or the other.

    Assignments are validated like construction (``actor.handler = sync_fn`` is refused).

    Example:
        >>> async def search(query: str, extra_context, state) -> list[str]:
        ...     return [query]
        >>> tool = Tool(name="search", handler=search)  # a Tool[str, list[str]]
        >>> guarded = Tool(
        ...     name="search",
        ...     handler=search,
        ...     policy=Policy(retry=RetryConfig(max_attempts=3), timeout=10.0),
        ... )
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(
        arbitrary_types_allowed=True, validate_assignment=True, extra="forbid"
    )

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

    if TYPE_CHECKING:

        @overload
        def __init__(
            self,
            *,
            name: str,
            handler: Callable[..., Awaitable[Any]],
            output_model: type[OutT],
            input_model: type[InT] | None = None,
            **options: Unpack[ActorOptions],
        ) -> None: ...

        @overload
        def __init__(
            self,
            *,
            name: str,
            handler: Callable[[InT, Any, Any], Awaitable[OutT]],
            output_model: None = None,
            input_model: type[InT] | None = None,
            **options: Unpack[ActorOptions],
        ) -> None: ...

        def __init__(self, **data: Any) -> None: ...

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


class Tool(BaseActor[InT, OutT]):
    """An actor that performs one action (a search, an API call, a computation).

    Example:
        >>> async def add_one(n: int, extra_context, state) -> int:
        ...     return n + 1
        >>> tool = Tool(name="add-one", handler=add_one)  # a Tool[int, int]
    """

    event_type: EventType = EventType.TOOL_CALL

    if TYPE_CHECKING:

        @overload
        def __init__(
            self,
            *,
            name: str,
            handler: Callable[..., Awaitable[Any]],
            output_model: type[OutT],
            input_model: type[InT] | None = None,
            **options: Unpack[ActorOptions],
        ) -> None: ...

        @overload
        def __init__(
            self,
            *,
            name: str,
            handler: Callable[[InT, Any, Any], Awaitable[OutT]],
            output_model: None = None,
            input_model: type[InT] | None = None,
            **options: Unpack[ActorOptions],
        ) -> None: ...

        def __init__(self, **data: Any) -> None: ...


class LLM(BaseActor[InT, OutT]):
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

    if TYPE_CHECKING:

        @overload
        def __init__(
            self,
            *,
            name: str,
            handler: Callable[..., Awaitable[Any]],
            output_model: type[OutT],
            input_model: type[InT] | None = None,
            **options: Unpack[LLMOptions],
        ) -> None: ...

        @overload
        def __init__(
            self,
            *,
            name: str,
            handler: Callable[[InT, Any, Any], Awaitable[OutT]],
            output_model: None = None,
            input_model: type[InT] | None = None,
            **options: Unpack[LLMOptions],
        ) -> None: ...

        def __init__(self, **data: Any) -> None: ...


class ToolSet(BaseModel):
    """An ordered collection of tools with lookup by name.

    Example:
        >>> tools = ToolSet(tools=[search_tool])  # doctest: +SKIP
        >>> tools["search"] is search_tool  # doctest: +SKIP
        True
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

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


class AgentOptions(ActorOptions, total=False):
    """The keyword arguments of :class:`Agent` besides those of every actor."""

    tools: ToolSet | list[Tool] | tuple[Tool, ...]
    llm: LLM | None


class Agent(BaseActor[InT, OutT]):
    """An actor that orchestrates tools and, optionally, an LLM."""

    event_type: EventType = EventType.AGENT_CALL
    tools: ToolSet = Field(default_factory=ToolSet)
    llm: LLM | None = None

    if TYPE_CHECKING:

        @overload
        def __init__(
            self,
            *,
            name: str,
            handler: Callable[..., Awaitable[Any]],
            output_model: type[OutT],
            input_model: type[InT] | None = None,
            **options: Unpack[AgentOptions],
        ) -> None: ...

        @overload
        def __init__(
            self,
            *,
            name: str,
            handler: Callable[[InT, Any, Any], Awaitable[OutT]],
            output_model: None = None,
            input_model: type[InT] | None = None,
            **options: Unpack[AgentOptions],
        ) -> None: ...

        def __init__(self, **data: Any) -> None: ...

    @field_validator("tools", mode="before")
    @classmethod
    def _tool_list(cls, value: Any) -> Any:
        """``Agent(tools=[search, fetch])`` is a ToolSet of those tools."""
        if isinstance(value, list | tuple):
            return ToolSet(tools=list(value))
        return value
