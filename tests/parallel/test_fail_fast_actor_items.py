"""FAIL_FAST with ExecutionEvent items raises what the docs say (issue 15, item 4).

The docs (README, docs/parallel.md, docs/parallel_best_practices.md, the seed) promise that
FAIL_FAST re-raises the first failure with its own type, so ``except ValueError`` works.
For an item that is an ExecutionEvent call, whose handler raised, the error is an
``EventFailedError`` naming the item and the group, with the handler's exception as
``__cause__`` and the failed result as ``.result``, and it is also an instance of the
handler's exception class.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from rh_agents import ErrorStrategy, ExecutionEvent, ExecutionState, Tool
from rh_agents.core.errors import EventFailedError, InputValidationError


class QuotaError(Exception):
    """An application's exception with its own constructor and attributes."""

    def __init__(self, code: int) -> None:
        super().__init__(f"quota exceeded (HTTP {code})")
        self.code = code


class Strict(BaseModel):
    n: int


async def _handler(data: Any, extra: Any, state: Any) -> str:
    if data == "value":
        raise ValueError("cannot parse 'value'")
    if data == "quota":
        raise QuotaError(429)
    if data == "key":
        raise KeyError("missing")
    if data == "model":
        Strict.model_validate({"n": "not a number"})
    return "ok"


async def _fail_fast(state: ExecutionState, bad: str) -> None:
    tool = Tool(name="parse", handler=_handler)
    async with state.parallel(error_strategy=ErrorStrategy.FAIL_FAST, name="docs") as p:
        p.add(lambda: ExecutionEvent(actor=tool)("good", {}, state), name="good")
        p.add(lambda: ExecutionEvent(actor=tool)(bad, {}, state), name="bad")


async def test_the_documented_except_catches_an_actor_items_failure() -> None:
    state = ExecutionState()
    try:
        await _fail_fast(state, "value")
    except ValueError as exc:
        caught: BaseException = exc
    else:  # pragma: no cover - the assertion below reports it
        pytest.fail("FAIL_FAST did not raise")
    assert isinstance(caught, EventFailedError)
    assert str(caught) == "Item 1 ('bad') of parallel group 'docs' failed: cannot parse 'value'"
    assert isinstance(caught.__cause__, ValueError)
    assert str(caught.__cause__) == "cannot parse 'value'"
    assert caught.result.exception is caught.__cause__
    assert caught.result.metadata["address"] == "parallel:docs[1]/parse"
    assert not caught.result.ok


async def test_an_application_exception_with_its_own_constructor_is_catchable() -> None:
    state = ExecutionState()
    with pytest.raises(QuotaError) as info:
        await _fail_fast(state, "quota")
    assert isinstance(info.value, EventFailedError)
    assert info.value.code == 429  # the attributes of the handler's exception
    assert isinstance(info.value.__cause__, QuotaError)
    assert str(info.value).endswith("failed: quota exceeded (HTTP 429)")


async def test_the_message_is_not_quoted_for_a_key_error() -> None:
    state = ExecutionState()
    with pytest.raises(KeyError) as info:
        await _fail_fast(state, "key")
    assert str(info.value) == "Item 1 ('bad') of parallel group 'docs' failed: 'missing'"


async def test_a_final_exception_class_is_caught_by_its_nearest_base() -> None:
    # pydantic's ValidationError cannot be subclassed; it is a ValueError.
    state = ExecutionState()
    with pytest.raises(ValueError) as info:
        await _fail_fast(state, "model")
    assert isinstance(info.value, EventFailedError)
    assert isinstance(info.value.__cause__, ValidationError)


async def test_an_input_that_does_not_validate_is_caught_as_a_value_error() -> None:
    class Query(BaseModel):
        text: str

    state = ExecutionState()
    tool = Tool(name="search", input_model=Query, handler=_handler)
    with pytest.raises(InputValidationError) as info:
        async with state.parallel(error_strategy="fail_fast", name="q") as p:
            p.add(lambda: ExecutionEvent(actor=tool)({"txt": "x"}, {}, state))
    assert isinstance(info.value, EventFailedError)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value.__cause__, InputValidationError)


async def test_the_same_class_is_reused_for_the_same_handler_exception() -> None:
    errors = []
    for _ in range(2):
        with pytest.raises(ValueError) as info:
            await _fail_fast(ExecutionState(), "value")
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1])
    assert type(errors[0]).__name__ == "EventFailedError[ValueError]"
