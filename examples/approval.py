"""Approval step: pause a run for a human, resume it later in another process.

    python examples/approval.py --db /tmp/approval.db
    python examples/approval.py --db /tmp/approval.db --resume <state id> --answer yes

A publishing agent writes a draft, then checks it in a parallel group: the spelling and
link checks run by themselves, the legal check asks a human with
``await interrupt(payload)``. The first command runs until the legal check waits: the
other checks finish, the run stops with ``ok=False`` and status AWAITING, and the
script prints what waits (``state.pending_interrupts``) and how to answer. The second
command, in a new process, loads the run from the SQLite history, answers with
``state.resume_with(answer)`` and makes the same call again: the draft and the finished
checks are replayed (their handlers do not run again), ``interrupt()`` returns the
answer and the post is published (or not). No network is used.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any

from rh_agents import Agent, ExecutionEvent, ExecutionState, Tool, interrupt
from rh_agents.core.state_recovery import StateMetadata
from rh_agents.storage import SQLiteStateBackend

PIPELINE = "approval-example"


async def write_draft(topic: str, extra: Any, state: ExecutionState) -> str:
    print(f"  (writing the draft about {topic})")
    return f"Owls can turn their heads 270 degrees. A post about {topic}."


async def check(kind: str, extra: Any, state: ExecutionState) -> str:
    draft = extra["draft"]
    if kind == "legal":
        print("  (legal check: asking a human)")
        verdict = await interrupt({"check": "legal", "draft": draft, "question": "Publish?"})
        return f"legal: {verdict}"
    print(f"  ({kind} check running)")
    await asyncio.sleep(0.01)
    return f"{kind}: ok"


writer = Tool(name="write_draft", handler=write_draft)
checker = Tool(name="check", handler=check)


async def publish(topic: str, extra: Any, state: ExecutionState) -> str:
    draft = await ExecutionEvent(actor=writer)(topic, extra, state)
    async with state.parallel(max_workers=3, name="checks") as p:
        for kind in ("spelling", "links", "legal"):
            p.add(
                lambda kind=kind: ExecutionEvent(actor=checker, tag=kind)(
                    kind, {"draft": draft.result}, state
                )
            )
        checks = [r.result for r in await p.gather()]
    approved = all(c.endswith(("ok", "yes")) for c in checks)
    return f"{'published' if approved else 'not published'} ({', '.join(checks)})"


publisher = Agent(name="publish", handler=publish)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="the SQLite history file")
    parser.add_argument("--resume", metavar="STATE_ID", help="resume this paused run")
    parser.add_argument("--answer", default="yes", help="the human's answer (resume)")
    args = parser.parse_args()

    with SQLiteStateBackend(args.db) as backend:
        if args.resume is None:
            state = ExecutionState(
                state_id=f"approval-{uuid.uuid4().hex[:8]}",
                state_backend=backend,
                metadata=StateMetadata(pipeline_name=PIPELINE),
            )
            print(f"run {state.state_id}")
        else:
            state = ExecutionState.load_from_state_id(args.resume, backend, pipeline_name=PIPELINE)
            for pending in state.pending_interrupts:
                print(f"answering {pending.address}: {args.answer!r}")
            state.resume_with(args.answer)

        result = await ExecutionEvent(actor=publisher)("owls", {}, state)
        if result.ok:
            print(f"done: {result.result}")
            return
        status = result.status.value if result.status is not None else "unknown"
        print(f"paused ({status}): the run waits for a human")
        for pending in state.pending_interrupts:
            print(f"  waiting at {pending.address}")
            print(f"  question: {pending.payload['question']}")
        print(f"resume with: --resume {state.state_id} --answer yes")


if __name__ == "__main__":
    asyncio.run(main())
