"""A sequential pipeline run in a real process by tests/reliability/test_core_crash_resume.py.

An agent calls the ``step`` tool STEPS times in sequence; each step's input is the
previous step's result, so a wrong replayed value would change every later result. Every
execution of the step handler appends ``"<index> <address> <pid>"`` to a side file
before returning, which is how the test counts executions across processes.

Usage::

    python _crash_pipeline.py --db H.db --side S.txt --state-id ID
        [--resume] [--hang-in-handler K | --hang-after-completed K]

``--hang-in-handler K`` blocks forever inside the handler of step K (after its line was
written); ``--hang-after-completed K`` blocks forever in an event subscriber right after
step K's COMPLETED status was recorded. The test SIGKILLs the process while it hangs.
Prints ``{"results": [...], "statuses": {...}}`` as JSON when the pipeline finishes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from typing import Any

from pydantic import BaseModel

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.types import ExecutionStatus
from rh_agents.state_backends import SQLiteStateBackend

STEPS = 30


class StepInput(BaseModel):
    index: int
    acc: int


class StepResult(BaseModel):
    index: int
    value: int


class PipelineInput(BaseModel):
    seed: int


def step_value(index: int, acc: int) -> int:
    return (acc * 31 + index * index + 7) % 1_000_003


def append_line(path: str, line: str) -> None:
    # Blocking on purpose: the line must reach the OS before the pipeline goes on.
    with open(path, "a", encoding="utf-8") as side:
        side.write(line + "\n")


def build_agent(side_path: str, hang_in_handler: int | None) -> Agent:
    async def step_handler(data: StepInput, extra: Any, state: ExecutionState) -> StepResult:
        append_line(side_path, f"{data.index} {state.get_current_address()} {os.getpid()}")
        if data.index == hang_in_handler:
            await asyncio.Event().wait()  # killed here
        return StepResult(index=data.index, value=step_value(data.index, data.acc))

    step = Tool(name="step", input_model=StepInput, output_model=StepResult, handler=step_handler)

    async def pipeline(data: PipelineInput, extra: Any, state: ExecutionState) -> list[int]:
        acc = data.seed
        values = []
        for index in range(STEPS):
            result = await ExecutionEvent(actor=step)(StepInput(index=index, acc=acc), extra, state)
            if not result.ok:
                raise RuntimeError(f"step {index} failed: {result.error_message}")
            assert isinstance(result.result, StepResult)
            acc = result.result.value
            values.append(acc)
        return values

    return Agent(name="pipeline", input_model=PipelineInput, handler=pipeline)


async def run_pipeline(
    state: ExecutionState, side_path: str, hang_in_handler: int | None = None
) -> list[int]:
    agent = build_agent(side_path, hang_in_handler)
    result = await ExecutionEvent(actor=agent)(PipelineInput(seed=11), {}, state)
    if not result.ok:
        raise RuntimeError(result.error_message)
    values: list[int] = result.result
    return values


def hang_after_completed(state: ExecutionState, side_path: str, index: int) -> None:
    target = "pipeline/step" if index == 0 else f"pipeline/step#{index}"

    async def subscriber(event: Any) -> None:
        if event.address == target and event.execution_status is ExecutionStatus.COMPLETED:
            append_line(side_path, "hang")
            await asyncio.Event().wait()  # killed here

    state.event_bus.subscribe(subscriber)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--side", required=True)
    parser.add_argument("--state-id", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hang-in-handler", type=int)
    parser.add_argument("--hang-after-completed", type=int)
    args = parser.parse_args(argv)

    backend = SQLiteStateBackend(args.db)
    if args.resume:
        state = ExecutionState.load_from_state_id(args.state_id, backend)
    else:
        state = ExecutionState(state_id=args.state_id, state_backend=backend)
    if args.hang_after_completed is not None:
        hang_after_completed(state, args.side, args.hang_after_completed)
    values = await run_pipeline(state, args.side, args.hang_in_handler)
    statuses = Counter(
        e.execution_status.value
        for e in state.history.get_event_list()
        if e.address.startswith("pipeline/")
    )
    print(json.dumps({"results": values, "statuses": dict(statuses)}))
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
