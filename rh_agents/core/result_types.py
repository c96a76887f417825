"""Ready-made result models for the common actors: an LLM's answer and a tool's outcome.

Use them as ``output_model`` when a handler has no model of its own. An LLM actor whose
result is an :class:`LLM_Result` with token counts reports its usage without calling
``record_usage`` (the core reads ``usage``, ``model`` and ``finish_reason`` from it like
from a provider SDK's response).

Example:
    >>> answer = LLM_Result(content="Paris", model_name="gpt-4o", input_tokens=12, output_tokens=3)
    >>> answer.tokens_used
    15
    >>> Tool_Result(output=[1, 2], tool_name="search").success
    True
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

__all__ = ["LLM_Result", "Tool_Result"]


class LLM_Result(BaseModel):
    """What a model call returned.

    Attributes:
        content: the text of the answer.
        tool_calls: the tool calls the model asked for, as the provider sent them.
        tokens_used: total tokens of the call; the sum of ``input_tokens`` and
            ``output_tokens`` when those are given and this is not.
        model_name: the model that answered (``gen_ai.response.model`` on the span).
        input_tokens: prompt tokens, when the provider reported them.
        output_tokens: completion tokens, when the provider reported them.
        finish_reason: why the model stopped (``stop``, ``length``, ``tool_calls``, ...).
    """

    content: str = ""
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    tokens_used: int | None = Field(default=None, ge=0)
    model_name: str | None = None
    input_tokens: int | None = Field(default=None, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)
    finish_reason: str | None = None

    @model_validator(mode="after")
    def _total(self) -> LLM_Result:
        if self.tokens_used is None and (
            self.input_tokens is not None or self.output_tokens is not None
        ):
            self.tokens_used = (self.input_tokens or 0) + (self.output_tokens or 0)
        return self

    @property
    def usage(self) -> dict[str, int] | None:
        """The input/output token counts in the shape the core's usage pickup reads."""
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return {"input_tokens": self.input_tokens or 0, "output_tokens": self.output_tokens or 0}

    @property
    def model(self) -> str | None:
        """The answering model (the same as :attr:`model_name`)."""
        return self.model_name


class Tool_Result(BaseModel):
    """What a tool call returned.

    Attributes:
        output: the tool's value.
        tool_name: which tool produced it.
        success: False when the tool reports a failure without raising.
        error: what went wrong, when ``success`` is False.
    """

    output: Any = None
    tool_name: str | None = None
    success: bool = True
    error: str | None = None
