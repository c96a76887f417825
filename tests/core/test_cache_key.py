"""The cache key covers everything that can change the answer (issue 15, item 1): the
input, the extra_context, the actor's name and its version; or what the actor's own
``cache_key`` says identifies the answer."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import outputs_under_hash_seeds
from pydantic import BaseModel

from rh_agents import LLM, ExecutionEvent, ExecutionState
from rh_agents.core.cache import UncacheableInputError, make_cache_key
from rh_agents.core.errors import InvalidArgumentError


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


# ------------------------------------------------------------------ golden keys


@dataclass(frozen=True)
class FieldsOutOfOrder:
    b: int
    a: int


class Tagged(BaseModel):
    name: str
    tags: set[str]


GOLDEN_KEYS = [
    # (actor, version, input, extra_context, the canonical JSON the key is the SHA-256 of)
    ("llm", "1", "héllo ✓", None, '["llm","1","h\\u00e9llo \\u2713"]'),
    ("a", "1", b"hi\xff", None, '["a","1","aGn_"]'),  # bytes as URL-safe base64
    # set items sorted by their canonical JSON: strings before numbers, "10" before "9"
    ("a", "1", {"b", "a", 10, 9}, None, '["a","1",["a","b",10,9]]'),
    ("a", "1", {(1, 2), (10,)}, None, '["a","1",[[1,2],[10]]]'),  # "," sorts before "0"
    (
        "a",
        "1",
        {FieldsOutOfOrder(1, 2), FieldsOutOfOrder(2, 1)},
        None,
        '["a","1",[{"a":1,"b":2},{"a":2,"b":1}]]',  # sorted by their sorted-key form
    ),
    ("a", "1", {"é", "z"}, None, '["a","1",["\\u00e9","z"]]'),  # escaped, then sorted
    ("a", "1", {b"\xff", b"a"}, None, '["a","1",["YQ==","_w=="]]'),
    ("a", "1", Tagged(name="x", tags={"q", "p"}), None, '["a","1",{"name":"x","tags":["p","q"]}]'),
    (
        "llm",
        "2",
        "hi",
        {"persona": "pirate", "n": 1.5},
        '["llm","2","hi",{"n":1.5,"persona":"pirate"}]',
    ),
]


@pytest.mark.parametrize(
    ("actor", "version", "input_data", "extra", "canonical"),
    GOLDEN_KEYS,
    ids=[case[-1] for case in GOLDEN_KEYS],
)
def test_golden_cache_keys(
    actor: str, version: str, input_data: Any, extra: Any, canonical: str
) -> None:
    # Persistent caches (SQLite, PostgreSQL) outlive releases: changing how a key is
    # encoded silently turns every stored result into a miss. It must be deliberate.
    expected = hashlib.sha256(canonical.encode("ascii")).hexdigest()
    assert make_cache_key(actor, version, input_data, extra) == expected


def test_sets_inside_dataclasses_and_models_have_one_key_in_every_process() -> None:
    script = (
        "import dataclasses\n"
        "from rh_agents.core.cache import make_cache_key\n"
        "@dataclasses.dataclass\n"
        "class Box:\n"
        "    tags: set\n"
        "print(make_cache_key('a', '1', Box({'x', 'y', 'z', 'w', 'v'})))"
    )
    keys = outputs_under_hash_seeds(script, ("1", "2", "3", "4"))
    assert keys == {make_cache_key("a", "1", {"tags": ["v", "w", "x", "y", "z"]})}


@pytest.mark.parametrize(
    ("actor", "version", "message"),
    [
        ("", "1", "The actor name of a cache key must be a non-empty string, got ''."),
        (3, "1", "The actor name of a cache key must be a non-empty string, got 3."),
        (
            "a",
            1,
            "The actor version of a cache key must be a string, got 1. Pass it as text, "
            "for example '1' or '2024-06-01'.",
        ),
    ],
)
def test_bad_names_are_refused_with_what_to_pass(actor: Any, version: Any, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        make_cache_key(actor, version, 1)
    assert str(caught.value) == message


def test_an_unserializable_input_says_what_to_do() -> None:
    with pytest.raises(UncacheableInputError) as caught:
        make_cache_key("a", "1", object())
    message = str(caught.value)
    assert message.startswith(
        "The input of actor 'a' cannot be used as a cache key because it is not JSON-serializable ("
    )
    assert message.endswith(
        "Make the input a pydantic model or plain JSON-like data, or mark the actor as not "
        "cacheable."
    )


def test_the_refusal_of_an_extra_context_names_the_value_its_type_and_the_cause() -> None:
    with pytest.raises(UncacheableInputError) as caught:
        make_cache_key("llm", "1", "hi", {"persona": "x", "lock": threading.Lock()})
    message = str(caught.value)
    assert message.startswith(
        "The extra_context of actor 'llm' cannot be part of its cache key: the value under "
        "'lock' (lock) has no stable JSON form ("
    )
    assert message.endswith(
        "). A cacheable actor's key covers the extra_context of the call, because it can "
        "change the answer. Give the actor a cache_key=lambda input_data, extra_context: "
        "... that returns what identifies the answer (for example (input_data, "
        "extra_context['persona'])), or make it cacheable=False."
    )
    assert caught.value.__cause__ is not None
    assert str(caught.value.__cause__) in message


def test_a_cache_key_function_gets_the_input_and_the_extra_context() -> None:
    from rh_agents.core.cache import call_cache_key

    seen: list[tuple[Any, Any]] = []

    def key(data: Any, extra: Any) -> Any:
        seen.append((data, extra))
        return [data, extra["persona"]]

    assert call_cache_key("llm", "1", "hi", {"persona": "p"}, key) == make_cache_key(
        "llm", "1", ["hi", "p"]
    )
    assert seen == [("hi", {"persona": "p"})]
    with pytest.raises(UncacheableInputError) as caught:
        call_cache_key("llm", "1", "hi", {}, lambda data, extra: object())
    message = str(caught.value)
    assert message.startswith("The cache_key of actor 'llm' returned a object, which has no ")
    assert message.endswith(
        "Return JSON-like data that identifies the answer: strings, numbers, lists, dicts "
        "or pydantic models."
    )


def test_an_extra_context_whose_key_has_no_stable_form_says_so() -> None:
    with pytest.raises(UncacheableInputError) as caught:
        make_cache_key("llm", "1", "hi", {object(): 1})
    assert str(caught.value).startswith(
        "The extra_context of actor 'llm' cannot be part of its cache key: its keys have no "
        "stable JSON form (Unable to serialize unknown type: <class 'object'>). "
    )
