"""Token usage of model calls: what a handler reports, kept with its invocation.

A handler reports what its model call returned with :func:`record_usage` (re-exported as
``rh_agents.telemetry.record_usage``); it is bound to the running invocation through a
context variable, so it works anywhere in the handler and in code the handler awaits
(including tasks it starts, which copy the context). An LLM actor's result that carries
a ``usage`` (OpenAI- and Anthropic-style responses, objects or dicts) is picked up
without any call. The total lands on the invocation's terminal history entry
(``event.usage``), which the journal stores, so a resumed run can count the tokens of
the calls it replays; telemetry turns it into span attributes and metrics.

This module is part of the core: it knows nothing of OpenTelemetry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from rh_agents.core._models import set_extra, set_fields_set, set_model_dict, set_private
from rh_agents.core.errors import InvalidArgumentError, StateCorruptedError

if TYPE_CHECKING:
    from rh_agents.core.events import ExecutionEvent

__all__ = ["TokenUsage", "current_invocation", "record_usage", "usage_from_result"]

logger: logging.Logger = logging.getLogger("rh_agents.usage")


class TokenUsage(BaseModel):
    """Tokens one invocation used, and what the model said about its response.

    Attributes:
        input_tokens: prompt / input tokens, summed over the model calls reported.
        output_tokens: completion / output tokens, summed likewise.
        response_model: the model that answered (the last one reported).
        finish_reasons: why the model stopped, one entry per choice, in report order.

    Example:
        >>> TokenUsage(input_tokens=12, output_tokens=3) + TokenUsage(input_tokens=1)
        TokenUsage(input_tokens=13, output_tokens=3, response_model=None, finish_reasons=())
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    response_model: str | None = None
    finish_reasons: tuple[str, ...] = ()

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return _usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            other.response_model or self.response_model,
            self.finish_reasons + other.finish_reasons,
        )

    def since(self, earlier: TokenUsage | None) -> TokenUsage:
        """What was reported after ``earlier`` (a previous value of the same total)."""
        if earlier is None:
            return self
        return _usage(
            self.input_tokens - earlier.input_tokens,
            self.output_tokens - earlier.output_tokens,
            self.response_model if self.response_model != earlier.response_model else None,
            self.finish_reasons[len(earlier.finish_reasons) :],
        )

    def to_record(self) -> dict[str, Any]:
        """The JSON form stored in history records."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "response_model": self.response_model,
            "finish_reasons": list(self.finish_reasons),
        }

    @classmethod
    def from_record(cls, value: Any, position: int = 0) -> TokenUsage | None:
        """Read the stored form back (None stays None).

        Raises:
            StateCorruptedError: the stored value is not a token usage.
        """
        if value is None:
            return None
        try:
            if not isinstance(value, dict):
                raise TypeError(f"it is a {type(value).__name__}")
            usage = _usage(
                _count(value.get("input_tokens", 0)),
                _count(value.get("output_tokens", 0)),
                _text(value.get("response_model")),
                tuple(_reasons(value.get("finish_reasons") or ())),
            )
        except (TypeError, ValueError) as exc:
            raise StateCorruptedError(
                f"The token usage of history record {position} cannot be read ({exc}); the "
                "history was written by another program or is damaged."
            ) from exc
        return usage


_new_usage = TokenUsage.__new__


def _usage(
    input_tokens: int,
    output_tokens: int,
    response_model: str | None,
    finish_reasons: tuple[str, ...],
) -> TokenUsage:
    # Values already checked: skip validation (a usage is built per reported call).
    usage = _new_usage(TokenUsage)
    set_model_dict(
        usage,
        {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "response_model": response_model,
            "finish_reasons": finish_reasons,
        },
    )
    set_fields_set(usage, set())
    set_extra(usage, None)
    set_private(usage, None)
    return usage


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"token counts must be non-negative integers, got {value!r}")
    return value


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"response_model must be a string, got {type(value).__name__}")
    return value


def _reasons(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        return (value,)
    reasons = tuple(value)
    for reason in reasons:
        if not isinstance(reason, str):
            raise TypeError(f"finish reasons must be strings, got {type(reason).__name__}")
    return reasons


current_invocation: ContextVar[ExecutionEvent[Any] | None] = ContextVar(
    "rh_agents_current_invocation", default=None
)
"""The working copy of the invocation whose handler runs here (set by the runner)."""

_lock = threading.Lock()
_warned_outside = False


def record_usage(
    input_tokens: int,
    output_tokens: int,
    *,
    response_model: str | None = None,
    finish_reasons: Iterable[str] | str = (),
) -> None:
    """Report the tokens a model call used, for the invocation running here.

    Call it in a handler (or code it awaits) after each model call; the reports of one
    invocation add up. The total goes on the invocation's span
    (``gen_ai.usage.input_tokens`` / ``output_tokens``, ``gen_ai.response.model``,
    ``gen_ai.response.finish_reasons``; with actor retries each ``attempt {n}`` span
    gets its own), into the metrics (``rh_agents_tokens_total``,
    ``gen_ai.client.token.usage``) and onto the history entry (``event.usage``).

    Outside any invocation nothing is recorded (a warning is logged once), so shared
    model-client code can call it unconditionally. Handlers run by a process-pool or
    Dask executor run in another process: return the provider's response (its
    ``usage`` is picked up for LLM actors) instead.

    Args:
        input_tokens: prompt / input tokens (non-negative).
        output_tokens: completion / output tokens (non-negative).
        response_model: the model named in the response, e.g. ``gpt-4o-mini-2024-07-18``.
        finish_reasons: why generation stopped, e.g. ``["stop"]``.

    Raises:
        InvalidArgumentError: a count is negative or not an integer, or a reason is not
            a string.

    Example:
        >>> async def answer(prompt, extra, state):  # doctest: +SKIP
        ...     response = await client.chat.completions.create(...)
        ...     record_usage(response.usage.prompt_tokens, response.usage.completion_tokens,
        ...                  response_model=response.model, finish_reasons=["stop"])
        ...     return response.choices[0].message.content
    """
    try:
        usage = _usage(
            _count(input_tokens),
            _count(output_tokens),
            _text(response_model),
            tuple(_reasons(finish_reasons)),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"record_usage() got an invalid value: {exc}.") from None
    event = current_invocation.get()
    if event is None:
        global _warned_outside
        if not _warned_outside:
            _warned_outside = True
            logger.warning(
                "record_usage() was called outside an rh_agents invocation; the tokens "
                "were not recorded. Call it inside an actor's handler (or code it awaits)."
            )
        return
    add_usage(event, usage)


def add_usage(event: ExecutionEvent[Any], usage: TokenUsage) -> None:
    """Add ``usage`` to the running invocation ``event`` (its working copy)."""
    fields = event.__dict__
    with _lock:  # a handler may report from threads it started
        previous = fields["usage"]
        fields["usage"] = usage if previous is None else previous + usage


# --------------------------------------------------------------- automatic pickup

_INPUT_KEYS = ("input_tokens", "prompt_tokens")
_OUTPUT_KEYS = ("output_tokens", "completion_tokens")


def _get(value: Any, name: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def _first_count(usage: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        found = _get(usage, name)
        if isinstance(found, int) and not isinstance(found, bool) and found >= 0:
            return found
    return None


def usage_from_result(value: Any) -> TokenUsage | None:
    """The usage a model response carries, or None.

    Understands the shapes of the common provider SDKs, as objects or dicts: a
    ``usage`` with ``input_tokens`` / ``output_tokens`` (Anthropic, OpenAI Responses)
    or ``prompt_tokens`` / ``completion_tokens`` (OpenAI Chat Completions and the many
    APIs compatible with it); the response's ``model``; finish reasons from
    ``choices[*].finish_reason``, ``stop_reason`` or ``finish_reason``.

    Example:
        >>> usage_from_result({"model": "m", "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
        TokenUsage(input_tokens=5, output_tokens=2, response_model='m', finish_reasons=())
    """
    if value is None or isinstance(value, str | bytes | int | float | list | tuple):
        return None
    try:
        usage = _get(value, "usage")
        if usage is None:
            return None
        input_tokens = _first_count(usage, _INPUT_KEYS)
        output_tokens = _first_count(usage, _OUTPUT_KEYS)
        if input_tokens is None and output_tokens is None:
            return None
        model = _get(value, "model")
        reasons: list[str] = []
        choices = _get(value, "choices")
        if isinstance(choices, list | tuple):
            for choice in choices:
                reason = _get(choice, "finish_reason")
                if isinstance(reason, str) and reason:
                    reasons.append(reason)
        for name in ("stop_reason", "finish_reason"):
            reason = _get(value, name)
            if isinstance(reason, str) and reason:
                reasons.append(reason)
        return _usage(
            input_tokens or 0,
            output_tokens or 0,
            model if isinstance(model, str) and model else None,
            tuple(reasons),
        )
    except Exception:  # an exotic object whose attributes raise: no usage
        logger.debug("Could not read a usage from a %s", type(value).__name__, exc_info=True)
        return None
