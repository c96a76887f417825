"""A pipeline with nested parallel groups, run in real processes by the reliability tests.

``pipeline`` (an agent) runs the group ``outer`` of ``section`` agents; each section
runs the group ``inner`` of ``work`` tool calls. Both groups retry failed items; a
``work`` call whose ``(section, item)`` is flaky fails on its first attempt in every
process, so every process goes through retries. Results depend only on the inputs, so
any interrupted-and-resumed run must end with exactly the results of an uninterrupted
one.

Every handler appends one line per execution to a side file before it does anything
(``run <address> <pid>``) and one when it ends (``ok`` or ``fail``); the side file is
how the tests count executions across processes, and what they poll to choose when to
kill or interrupt a process.

Usage::

    python _kill_pipeline.py --db H.db --side S.txt --state-id ID [--resume] [--signals]

With ``--signals``, SIGINT and SIGTERM cancel the main task: the run stops, records how
it ended and the process exits with 128 + the signal number. Prints
``{"results": [...]}`` as JSON when the pipeline finishes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

from pydantic import BaseModel

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.state_backends import SQLiteStateBackend

SECTIONS = 4
ITEMS = 6
SEED = 23
PIPELINE_NAME = "kill-pipeline"


class PipelineInput(BaseModel):
    seed: int


class SectionInput(BaseModel):
    section: int
    seed: int


class WorkInput(BaseModel):
    section: int
    item: int
    seed: int


class WorkResult(BaseModel):
    value: int


class SectionResult(BaseModel):
    section: int
    values: list[int]


def work_value(section: int, item: int, seed: int) -> int:
    return (seed * 7919 + section * 104_729 + item * item * 31 + 17) % 1_000_003


def is_flaky(section: int, item: int) -> bool:
    return (section * 7 + item) % 4 == 0


def work_seconds(section: int, item: int) -> float:
    return 0.015 + 0.01 * ((section * 5 + item * 3) % 4)


def expected_results(seed: int = SEED) -> list[list[int]]:
    return [[work_value(s, i, seed) for i in range(ITEMS)] for s in range(SECTIONS)]


def all_addresses() -> set[str]:
    """Every invocation address of one run."""
    addresses = {"pipeline"}
    for s in range(SECTIONS):
        section = f"pipeline/parallel:outer[{s}]/section"
        addresses.add(section)
        addresses.update(f"{section}/parallel:inner[{i}]/work" for i in range(ITEMS))
    return addresses


def append_line(path: str, line: str) -> None:
    # Blocking on purpose: the line must reach the OS before the handler goes on.
    with open(path, "a", encoding="utf-8") as side:
        side.write(line + "\n")


def build(side: str) -> Agent:
    attempts: dict[str, int] = {}
    pid = os.getpid()

    def note(kind: str, state: ExecutionState) -> None:
        append_line(side, f"{kind} {state.get_current_address()} {pid}")

    async def work(data: WorkInput, extra: Any, state: ExecutionState) -> WorkResult:
        note("run", state)
        address = state.get_current_address()
        attempts[address] = attempts.get(address, 0) + 1
        await asyncio.sleep(work_seconds(data.section, data.item))
        if is_flaky(data.section, data.item) and attempts[address] == 1:
            note("fail", state)
            raise ConnectionError(f"flaky dependency for {data.section}/{data.item}")
        note("ok", state)
        return WorkResult(value=work_value(data.section, data.item, data.seed))

    work_tool = Tool(name="work", input_model=WorkInput, output_model=WorkResult, handler=work)

    async def section(data: SectionInput, extra: Any, state: ExecutionState) -> SectionResult:
        note("run", state)
        async with state.parallel(
            max_workers=3, name="inner", max_retries=2, retry_delay=0.04
        ) as group:
            for item in range(ITEMS):
                payload = WorkInput(section=data.section, item=item, seed=data.seed)
                group.add(
                    lambda payload=payload: ExecutionEvent(actor=work_tool)(payload, extra, state)
                )
            results = await group.gather()
        failed = [r.error_message for r in results if not r.ok]
        if failed:
            raise RuntimeError(f"section {data.section} failed: {failed}")
        values = [r.result.value for r in results if r.result is not None]
        note("ok", state)
        return SectionResult(section=data.section, values=values)

    section_agent = Agent(
        name="section", input_model=SectionInput, output_model=SectionResult, handler=section
    )

    async def pipeline(data: PipelineInput, extra: Any, state: ExecutionState) -> list[list[int]]:
        note("run", state)
        async with state.parallel(
            max_workers=2, name="outer", max_retries=2, retry_delay=0.04
        ) as group:
            for number in range(SECTIONS):
                payload = SectionInput(section=number, seed=data.seed)
                group.add(
                    lambda payload=payload: ExecutionEvent(actor=section_agent)(
                        payload, extra, state
                    )
                )
            results = await group.gather()
        failed = [r.error_message for r in results if not r.ok]
        if failed:
            raise RuntimeError(f"pipeline failed: {failed}")
        note("ok", state)
        return [r.result.values for r in results if r.result is not None]

    return Agent(name="pipeline", input_model=PipelineInput, handler=pipeline)


async def run_pipeline(state: ExecutionState, side: str, seed: int = SEED) -> list[list[int]]:
    result = await ExecutionEvent(actor=build(side))(PipelineInput(seed=seed), {}, state)
    if not result.ok:
        raise RuntimeError(result.error_message)
    values: list[list[int]] = result.result
    return values


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--side", required=True)
    parser.add_argument("--state-id", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--signals", action="store_true")
    args = parser.parse_args(argv)

    received: list[int] = []
    if args.signals:
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()
        assert main_task is not None

        def stop(signum: int) -> None:
            received.append(signum)
            main_task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop, signum)

    backend = SQLiteStateBackend(args.db)
    try:
        if args.resume:
            state = ExecutionState.load_from_state_id(
                args.state_id, backend, pipeline_name=PIPELINE_NAME
            )
        else:
            from rh_agents.core.state_recovery import StateMetadata

            state = ExecutionState(
                state_id=args.state_id,
                state_backend=backend,
                metadata=StateMetadata(pipeline_name=PIPELINE_NAME),
            )
        try:
            values = await run_pipeline(state, args.side)
        except asyncio.CancelledError:
            if not received:
                raise
            print(json.dumps({"cancelled_by": received[0]}), flush=True)
            return 128 + received[0]
        print(json.dumps({"results": values}), flush=True)
        return 0
    finally:
        backend.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
