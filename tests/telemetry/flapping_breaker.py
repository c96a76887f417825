"""A process whose circuit breaker opens for one second when told to (for a real scrape).

``python tests/telemetry/flapping_breaker.py PORT SPAN_FILE`` serves /metrics on 127.0.0.1:PORT
through ``rh_agents.telemetry.setup()`` and reads commands, one per line, from stdin;
it answers each with one line on stdout:

* ``watch``: runs a parallel group through breaker ``flappy`` (1 failure trips it, 1 s
  cooldown, real clock) whose item succeeds, so the breaker's series exist (at 0);
  answers ``watching``.
* ``flap``: an item fails (the breaker opens), the process waits out the cooldown, and
  the next item is the probe that succeeds (half-open, then closed): the breaker is
  open for about a second. Answers ``flapped <opened> <closed>`` (``time.time()``).
* ``quit`` (or end of input): shuts the telemetry down and exits.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from rh_agents.core.execution import ExecutionState
from rh_agents.telemetry import setup

BREAKER = "flappy"
COOLDOWN = 1.0


async def through_breaker(state: ExecutionState, ok: bool) -> None:
    async def call() -> str:
        if not ok:
            raise ConnectionError("the dependency is down")
        return "ok"

    async with state.parallel(
        name="calls",
        circuit_breaker=BREAKER,
        circuit_breaker_threshold=1,
        circuit_breaker_timeout=COOLDOWN,
    ) as group:
        group.add(call)


async def serve(handle: Any) -> None:
    state = ExecutionState(telemetry=handle.telemetry)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line in ("", "quit"):
            return
        if line == "watch":
            await through_breaker(state, ok=True)
            answer = "watching"
        elif line == "flap":
            opened = time.time()
            await through_breaker(state, ok=False)
            await asyncio.sleep(COOLDOWN)  # the breaker's cooldown, on the real clock
            await through_breaker(state, ok=True)
            answer = f"flapped {opened:.3f} {time.time():.3f}"
        else:
            answer = f"unknown command {line!r}"
        print(answer, flush=True)


def main() -> None:
    port, span_file = int(sys.argv[1]), sys.argv[2]
    handle = setup(
        service_name="flapping-breaker",
        metrics_port=port,
        trace_file=span_file,
        loop_lag_interval=None,
    )
    try:
        print("ready", flush=True)
        asyncio.run(serve(handle))
    finally:
        handle.shutdown()


if __name__ == "__main__":
    main()
