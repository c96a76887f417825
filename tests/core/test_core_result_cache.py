"""The result cache as actors see it: keys, TTL, single flight, versions, from_cache."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from rh_agents.core.actors import LLM, Tool
from rh_agents.core.cache import InMemoryCacheBackend, SQLiteCacheBackend
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.types import ExecutionStatus
from rh_agents.testing import FakeClock


class Prompt(BaseModel):
    text: str
    options: dict[str, Any] = {}


class Completion(BaseModel):
    content: str


class Model:
    """An LLM stub counting its calls; optionally waits on a gate before answering."""

    def __init__(self, gate: asyncio.Event | None = None, fail_first: bool = False) -> None:
        self.calls: list[Prompt] = []
        self.gate = gate
        self.fail_first = fail_first
        self.entered = asyncio.Event()

    async def __call__(self, data: Prompt, extra: Any, state: Any) -> Completion:
        self.calls.append(data)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_first and len(self.calls) == 1:
            raise TimeoutError("model overloaded")
        return Completion(content=f"reply to {data.text} #{len(self.calls)}")


def llm(model: Model, name: str = "gpt", version: str = "1.0.0", **kw: Any) -> LLM:
    return LLM(
        name=name,
        version=version,
        input_model=Prompt,
        output_model=Completion,
        handler=model,
        **kw,
    )


async def call(actor: Any, data: Any, state: ExecutionState) -> ExecutionEvent[Any]:
    event: ExecutionEvent[Any] = ExecutionEvent(actor=actor)
    result = await event(data, {}, state)
    assert result.ok, result.error_message
    return event


async def test_identical_input_is_served_from_cache() -> None:
    model = Model()
    actor = llm(model)
    state = ExecutionState()

    first = await call(actor, Prompt(text="hi", options={"a": 1, "b": 2}), state)
    # same input (dict order does not matter, a dict validates into the same Prompt)
    second = await call(actor, {"text": "hi", "options": {"b": 2, "a": 1}}, state)
    other = await call(actor, Prompt(text="bye"), state)

    assert len(model.calls) == 2
    assert (first.from_cache, second.from_cache, other.from_cache) == (False, True, False)
    assert second.result == first.result == Completion(content="reply to hi #1")
    assert isinstance(second.result, Completion)
    assert (first.address, second.address) == ("gpt", "gpt#1")
    assert state.history["gpt#1"].from_cache is True
    assert state.history["gpt#1"].execution_status is ExecutionStatus.COMPLETED


async def test_non_cacheable_actor_always_runs() -> None:
    model = Model()
    tool = Tool(name="t", input_model=Prompt, handler=model)
    state = ExecutionState()
    for _ in range(2):
        event = await call(tool, Prompt(text="x"), state)
        assert event.from_cache is False
    assert len(model.calls) == 2


async def test_entries_expire_after_the_ttl() -> None:
    clock = FakeClock(autojump=False)
    model = Model()
    actor = llm(model)  # LLM default TTL: one hour
    state = ExecutionState(clock=clock)

    await call(actor, Prompt(text="x"), state)
    clock.advance(3599)
    assert (await call(actor, Prompt(text="x"), state)).from_cache is True
    clock.advance(2)
    assert (await call(actor, Prompt(text="x"), state)).from_cache is False
    assert len(model.calls) == 2

    short = llm(Model(), name="short", cache_ttl=10)
    await call(short, Prompt(text="x"), state)
    clock.advance(11)
    assert (await call(short, Prompt(text="x"), state)).from_cache is False


async def test_concurrent_identical_calls_coalesce_into_one_handler_call() -> None:
    gate = asyncio.Event()
    model = Model(gate=gate)
    actor = llm(model)
    state = ExecutionState()
    events: list[ExecutionEvent[Any]] = [ExecutionEvent(actor=actor) for _ in range(5)]
    tasks = [asyncio.create_task(e(Prompt(text="same"), {}, state)) for e in events]
    await model.entered.wait()
    gate.set()
    results = await asyncio.gather(*tasks)

    assert len(model.calls) == 1
    assert all(r.ok for r in results)
    assert {r.result.content for r in results} == {"reply to same #1"}
    assert sorted(e.from_cache for e in events) == [False, True, True, True, True]
    assert len({r.address for r in results}) == 5  # each call still has its own address


async def test_failed_result_is_not_cached() -> None:
    model = Model(fail_first=True)
    actor = llm(model)
    state = ExecutionState()
    failed = await ExecutionEvent(actor=actor)(Prompt(text="x"), {}, state)
    assert not failed.ok and failed.error_type == "TimeoutError"
    event = await call(actor, Prompt(text="x"), state)
    assert event.from_cache is False
    assert len(model.calls) == 2


async def test_version_bump_and_other_names_miss() -> None:
    model = Model()
    backend = InMemoryCacheBackend()
    state = ExecutionState(cache_backend=backend)
    await call(llm(model, version="1"), Prompt(text="x"), state)
    assert (await call(llm(model, version="1"), Prompt(text="x"), state)).from_cache
    assert not (await call(llm(model, version="2"), Prompt(text="x"), state)).from_cache
    assert not (
        await call(llm(model, name="other", version="1"), Prompt(text="x"), state)
    ).from_cache
    assert len(model.calls) == 3


async def test_cache_backend_shared_between_states() -> None:
    model = Model()
    backend = InMemoryCacheBackend()
    await call(llm(model), Prompt(text="x"), ExecutionState(cache_backend=backend))
    event = await call(llm(model), Prompt(text="x"), ExecutionState(cache_backend=backend))
    assert event.from_cache is True
    assert len(model.calls) == 1
    # separate states have separate caches by default
    assert not (await call(llm(model), Prompt(text="x"), ExecutionState())).from_cache


async def test_persistent_cache_hit_is_revalidated_into_the_output_model() -> None:
    model = Model()
    with SQLiteCacheBackend(":memory:") as backend:
        state = ExecutionState(cache_backend=backend)
        await call(llm(model), Prompt(text="x"), state)
        event = await call(llm(model), Prompt(text="x"), state)
    assert event.from_cache is True
    assert isinstance(event.result, Completion)
    assert event.result == Completion(content="reply to x #1")
    assert len(model.calls) == 1


async def test_cached_result_is_replayed_with_its_cache_flag() -> None:
    model = Model()
    state = ExecutionState()
    await call(llm(model), Prompt(text="x"), state)
    await call(llm(model), Prompt(text="x"), state)
    restored = ExecutionState.from_snapshot(state.to_snapshot())
    await call(llm(model), Prompt(text="x"), restored)
    replayed = await call(llm(model), Prompt(text="x"), restored)
    assert replayed.is_replayed and replayed.from_cache
    assert isinstance(replayed.result, Completion)
    assert len(model.calls) == 1
