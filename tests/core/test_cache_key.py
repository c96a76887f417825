"""The cache key covers everything that can change the answer (issue 15, item 1): the
input, the extra_context, the actor's name and its version; or what the actor's own
``cache_key`` says identifies the answer."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

from rh_agents import LLM, ExecutionEvent, ExecutionState
from rh_agents.core.cache import UncacheableInputError, make_cache_key


async def _persona(prompt: str, extra: dict[str, Any], state: Any) -> str:
    return f"[{extra.get('persona', 'plain')}] {prompt}"


async def test_the_same_prompt_with_another_extra_context_is_not_a_cache_hit() -> None:
    state = ExecutionState()
    llm = LLM(name="llm", handler=_persona)

    pirate = await ExecutionEvent(actor=llm)("hello", {"persona": "pirate"}, state)
    lawyer = await ExecutionEvent(actor=llm)("hello", {"persona": "lawyer"}, state)
    pirate_again = await ExecutionEvent(actor=llm)("hello", {"persona": "pirate"}, state)

    assert (pirate.result, pirate.from_cache) == ("[pirate] hello", False)
    assert (lawyer.result, lawyer.from_cache) == ("[lawyer] hello", False)
    assert (pirate_again.result, pirate_again.from_cache) == ("[pirate] hello", True)


async def test_the_order_of_the_extra_contexts_keys_does_not_matter() -> None:
    state = ExecutionState()
    llm = LLM(name="llm", handler=_persona)
    await ExecutionEvent(actor=llm)("hi", {"persona": "pirate", "tone": "dry"}, state)
    again = await ExecutionEvent(actor=llm)("hi", {"tone": "dry", "persona": "pirate"}, state)
    assert again.from_cache


async def test_another_actor_or_version_with_the_same_input_is_not_a_hit() -> None:
    state = ExecutionState()
    first = LLM(name="llm", handler=_persona)
    renamed = LLM(name="other-llm", handler=_persona)
    bumped = LLM(name="llm", version="2", handler=_persona)
    await ExecutionEvent(actor=first)("hi", {}, state)
    assert not (await ExecutionEvent(actor=renamed)("hi", {}, state)).from_cache
    assert not (await ExecutionEvent(actor=bumped)("hi", {}, state)).from_cache
    assert (await ExecutionEvent(actor=first)("hi", {}, state)).from_cache


def test_make_cache_key_covers_the_extra_context() -> None:
    plain = make_cache_key("llm", "1", "hi", {})
    assert make_cache_key("llm", "1", "hi", {"persona": "pirate"}) != plain
    assert make_cache_key("llm", "1", "hi", {"a": 1, "b": [1, 2]}) == make_cache_key(
        "llm", "1", "hi", {"b": [1, 2], "a": 1}
    )


class _Client:
    """Something applications put in extra_context: no stable JSON form."""


async def test_an_extra_context_without_a_stable_form_is_refused_clearly() -> None:
    state = ExecutionState()
    llm = LLM(name="llm", handler=_persona)
    result = await ExecutionEvent(actor=llm)("hi", {"client": _Client(), "persona": "x"}, state)
    assert not result.ok
    assert result.error_type == "UncacheableInputError"
    message = result.error_message or ""
    assert "The extra_context of actor 'llm'" in message
    assert "'client'" in message  # the key that cannot be hashed
    assert "cache_key=" in message and "cacheable=False" in message
    with pytest.raises(UncacheableInputError, match="extra_context"):
        make_cache_key("llm", "1", "hi", {"lock": threading.Lock()})


async def test_the_actor_can_say_what_identifies_the_answer() -> None:
    calls: list[str] = []

    async def answer(prompt: str, extra: dict[str, Any], state: Any) -> str:
        calls.append(extra["persona"])
        return f"[{extra['persona']}] {prompt}"

    def key(prompt: str, extra: dict[str, Any]) -> Any:
        return [prompt, extra["persona"]]  # the client does not change the answer

    state = ExecutionState()
    llm = LLM(name="llm", handler=answer, cache_key=key)
    first = await ExecutionEvent(actor=llm)("hi", {"persona": "pirate", "client": _Client()}, state)
    again = await ExecutionEvent(actor=llm)("hi", {"persona": "pirate", "client": _Client()}, state)
    other = await ExecutionEvent(actor=llm)("hi", {"persona": "lawyer", "client": _Client()}, state)

    assert first.ok and again.from_cache and not other.from_cache
    assert calls == ["pirate", "lawyer"]


async def test_a_cache_key_function_returning_no_stable_form_is_refused() -> None:
    state = ExecutionState()
    llm = LLM(name="llm", handler=_persona, cache_key=lambda data, extra: _Client())
    result = await ExecutionEvent(actor=llm)("hi", {}, state)
    assert not result.ok
    assert result.error_type == "UncacheableInputError"
    assert "cache_key of actor 'llm' returned a _Client" in (result.error_message or "")


@dataclass
class _Options:
    temperature: float


class _Persona(BaseModel):
    name: str


async def test_models_dataclasses_and_sets_in_extra_context_have_stable_keys() -> None:
    state = ExecutionState()
    llm = LLM(name="llm", handler=_persona)
    extra = {"persona": "x", "model": _Persona(name="p"), "opts": _Options(0.2), "tags": {"b", "a"}}
    await ExecutionEvent(actor=llm)("hi", extra, state)
    same = dict(extra, tags={"a", "b"}, model=_Persona(name="p"))
    assert (await ExecutionEvent(actor=llm)("hi", same, state)).from_cache
    warmer = dict(extra, opts=_Options(0.9))
    assert not (await ExecutionEvent(actor=llm)("hi", warmer, state)).from_cache
