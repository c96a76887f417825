"""Streaming: handle each result the moment its item finishes.

    python examples/parallel_streaming.py

Three short scenes with a stub LLM that answers after a few milliseconds:

1. ``async for result in p.stream()`` yields results in completion order, failures
   included, so a progress line can be printed per answer.
2. Leaving the loop early (``break``) once enough answers arrived: the rest of the work is
   cancelled at once and recorded as cancelled (``contextlib.aclosing`` also waits until
   it has stopped; otherwise the ``async with`` block's exit waits for it).
3. With a group ``timeout``, completed results are still streamed first, then
   ``ParallelTimeoutError`` (a ``TimeoutError``) reports what did not finish.

No network is used; the run takes about half a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from pydantic import BaseModel

from rh_agents import LLM, ExecutionEvent, ExecutionState, ParallelTimeoutError


class Question(BaseModel):
    text: str
    thinking: float  # seconds the stub "thinks"


async def answer(data: Question, extra: dict[str, Any], state: ExecutionState) -> str:
    await asyncio.sleep(data.thinking)
    if "divide by zero" in data.text:
        raise ZeroDivisionError("the model refused to divide by zero")
    return f"answer to {data.text!r}"


llm = LLM(name="stub_llm", input_model=Question, handler=answer, cacheable=False)

QUESTIONS = [
    Question(text="capital of France", thinking=0.16),
    Question(text="2 + 2", thinking=0.01),
    Question(text="divide by zero", thinking=0.04),
    Question(text="largest planet", thinking=0.12),
    Question(text="speed of light", thinking=0.20),
]


def ask(state: ExecutionState, question: Question) -> Any:
    return lambda: ExecutionEvent(actor=llm)(question, {}, state)


async def stream_everything(state: ExecutionState) -> None:
    print("1. results in completion order:")
    start = time.perf_counter()
    async with state.parallel(max_workers=5, name="questions") as p:
        for q in QUESTIONS:
            p.add(ask(state, q), name=q.text)
        done = 0
        async for result in p.stream():
            done += 1
            status = result.result if result.ok else f"FAILED ({result.error_message})"
            print(f"   {done}/{len(QUESTIONS)}  {result.name:<18} {status}")
    print(
        f"   all done in {time.perf_counter() - start:.2f}s; "
        f"p.results is in add order: {[r.name for r in p.results][:2]}..."
    )


async def stop_early(state: ExecutionState) -> None:
    print("2. stop after the first two good answers:")
    async with state.parallel(max_workers=5, name="race") as p:
        for q in QUESTIONS:
            p.add(ask(state, q), name=q.text)
        good = []
        async with contextlib.aclosing(p.stream()) as results:
            async for result in results:
                if result.ok:
                    good.append(result.name)
                if len(good) == 2:
                    break
        print(f"   kept: {good}")
        print(f"   still running after the break: {p.statistics()['in_flight']}")
    cancelled = [r.name for r in p.results if r.status and r.status.value == "cancelled"]
    print(f"   cancelled: {cancelled}; group status: {p.group.status.value}")


async def stream_with_timeout(state: ExecutionState) -> None:
    print("3. a 0.08 s deadline:")
    try:
        async with state.parallel(max_workers=5, name="deadline", timeout=0.08) as p:
            for q in QUESTIONS:
                p.add(ask(state, q), name=q.text)
            async for result in p.stream():
                print(f"   in time: {result.name}")
    except ParallelTimeoutError as exc:
        print(f"   {exc}")
        late = [r.name for r in exc.results if r.error_type == "TimeoutError"]
        print(f"   did not finish: {late}")


async def main() -> None:
    state = ExecutionState()
    await stream_everything(state)
    await stop_early(state)
    await stream_with_timeout(state)


if __name__ == "__main__":
    asyncio.run(main())
