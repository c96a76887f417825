"""A group that grows while it runs, in a real process the crash test kills.

``crawl`` (an agent) opens the group ``pages`` with one item, the root page; the root
fetches ``/`` and then adds one item per link it found, from inside its own work. Every
``fetch`` appends ``run <address> <pid>`` to a side file before it works and ``ok
<address> <pid>`` after; the test reads it to know when to kill, and what ran where.

Usage::

    python _grow_pipeline.py --db H.db --side S.txt --state-id ID [--resume]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from rh_agents import Agent, ExecutionEvent, ExecutionState, Tool
from rh_agents.core.state_recovery import StateMetadata
from rh_agents.storage import SQLiteStateBackend

LINKS = 8
PIPELINE_NAME = "grow-pipeline"


def page_text(url: str) -> str:
    return f"page {url}"


def build(side: str) -> Agent[str, list[str]]:
    pid = os.getpid()

    def note(kind: str, state: ExecutionState) -> None:
        with open(side, "a", encoding="utf-8") as handle:
            handle.write(f"{kind} {state.get_current_address()} {pid}\n")

    async def fetch(url: str, extra: Any, state: ExecutionState) -> str:
        note("run", state)
        await asyncio.sleep(0.05)
        note("ok", state)
        return page_text(url)

    fetch_tool = Tool(name="fetch", handler=fetch)

    async def crawl(start: str, extra: Any, state: ExecutionState) -> list[str]:
        async with state.parallel(max_workers=2, name="pages") as p:

            async def page(url: str, links: int) -> Any:
                result = await ExecutionEvent(actor=fetch_tool)(url, extra, state)
                for n in range(links):
                    link = f"{url}{n}"
                    p.add(lambda link=link: page(link, 0), name=link)
                return result

            p.add(lambda: page(start, LINKS), name=start)
            results = await p.gather()
        return [str(r.result) for r in results]

    return Agent(name="crawl", handler=crawl)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--side", required=True)
    parser.add_argument("--state-id", required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    with SQLiteStateBackend(args.db) as backend:
        if args.resume:
            state = ExecutionState.load_from_state_id(
                args.state_id, backend, pipeline_name=PIPELINE_NAME
            )
        else:
            state = ExecutionState(
                state_id=args.state_id,
                state_backend=backend,
                metadata=StateMetadata(pipeline_name=PIPELINE_NAME),
            )
        result = await ExecutionEvent(actor=build(args.side))("/", {}, state)
        print(json.dumps({"ok": result.ok, "results": result.result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
