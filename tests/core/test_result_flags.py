"""A result says whether it came from the cache or was replayed (issue 15, item 3)."""

from __future__ import annotations

from typing import Any

from rh_agents import LLM, ExecutionEvent, ExecutionState, Tool
from rh_agents.core.types import ExecutionStatus
from rh_agents.storage import InMemoryStateBackend


async def _complete(prompt: str, extra: dict[str, Any], state: Any) -> str:
    return f"an answer to {prompt}"


async def test_a_cache_hit_says_from_cache_and_a_first_call_does_not() -> None:
    state = ExecutionState()
    llm = LLM(name="llm", handler=_complete)

    first = await ExecutionEvent(actor=llm)("hi", {}, state)
    second = await ExecutionEvent(actor=llm)("hi", {}, state)

    assert (first.from_cache, first.replayed) == (False, False)
    assert (second.from_cache, second.replayed) == (True, False)
    assert second.result == first.result == "an answer to hi"
    assert second.status is ExecutionStatus.COMPLETED


async def test_the_metadata_of_a_parallel_cache_hit_shows_its_terminal_status() -> None:
    state = ExecutionState()
    llm = LLM(name="llm", handler=_complete)
    await ExecutionEvent(actor=llm)("hi", {}, state)

    async with state.parallel(name="calls") as p:
        p.add(lambda: ExecutionEvent(actor=llm)("hi", {}, state), name="cached")
        p.add(lambda: ExecutionEvent(actor=llm)("other", {}, state), name="computed")
    cached, computed = p.results

    assert cached.from_cache and not computed.from_cache
    assert cached.metadata["status"] == "completed"
    assert computed.metadata["status"] == "completed"
    assert cached.metadata["from_cache"] is True


async def test_a_failed_call_in_a_group_shows_failed_in_its_metadata() -> None:
    async def broken(data: Any, extra: Any, state: Any) -> None:
        raise ValueError("no")

    state = ExecutionState()
    tool = Tool(name="broken", handler=broken)
    async with state.parallel(name="calls") as p:
        p.add(lambda: ExecutionEvent(actor=tool)(None, {}, state))
    assert p.results[0].metadata["status"] == "failed"
    assert not p.results[0].from_cache


async def test_a_replayed_call_says_replayed() -> None:
    backend = InMemoryStateBackend()
    state = ExecutionState(state_backend=backend)
    tool = Tool(name="t", handler=_complete)
    await ExecutionEvent(actor=tool)("x", {}, state)

    resumed = ExecutionState.load_from_state_id(state.state_id, backend)
    again = await ExecutionEvent(actor=tool)("x", {}, resumed)

    assert (again.replayed, again.from_cache) == (True, False)
    assert again.status is ExecutionStatus.RECOVERED
    assert again.result == "an answer to x"
