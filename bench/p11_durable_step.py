"""P11: one durable step, rh_agents against LangGraph."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, TypedDict

from bench._common import (
    BenchResult,
    Config,
    Contender,
    installed,
    measured,
    median,
    paired_ratio,
    side_by_side,
    skipped,
)
from rh_agents import ExecutionEvent, ExecutionState, Tool
from rh_agents.storage.memory import InMemoryStateBackend
from rh_agents.storage.sqlite import SQLiteStateBackend


def _distribution(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


ID = "P11"
TITLE = "Durable step vs LangGraph"
MEASURES = (
    "Wall time per step of a two-step pipeline (add one, then double), run many times on "
    "fresh threads: a two-node LangGraph graph without a checkpointer, with InMemorySaver "
    "and with SqliteSaver, vs the same two steps as rh_agents ExecutionEvents without a "
    "journal, with the in-memory and with the SQLite journal (telemetry off on both sides)."
)

# find_spec of a submodule would import langgraph here, into every benchmark's heap.
HAVE_LANGGRAPH = installed("langgraph") and _distribution("langgraph-checkpoint-sqlite")
KINDS = ("no persistence", "in-memory", "SQLite file")
_files = itertools.count()


async def _add_one(x: int, extra: Any, state: Any) -> int:
    return x + 1


async def _double(x: int, extra: Any, state: Any) -> int:
    return x * 2


ADD = Tool(name="add_one", description="adds one", handler=_add_one)
DOUBLE = Tool(name="double", description="doubles", handler=_double)


def _rh(kind: str, runs: int, tmp: Path) -> Contender:
    async def run() -> float:
        if kind == "in-memory":
            backend: Any = InMemoryStateBackend()
        elif kind == "SQLite file":
            backend = SQLiteStateBackend(tmp / f"rh-{next(_files)}.db")
        else:
            backend = None
        states = [
            ExecutionState(telemetry=False, state_backend=backend, state_id=f"run-{i}")
            for i in range(runs)
        ]
        start = time.perf_counter()
        for i, state in enumerate(states):
            first = await ExecutionEvent(actor=ADD)(i, None, state)
            second = await ExecutionEvent(actor=DOUBLE)(first.result, None, state)
        took = time.perf_counter() - start
        assert second.result == runs * 2
        if backend is not None:
            assert len(backend.load_events(f"run-{runs - 1}")) == 4  # started + completed x2
            backend.close()
        return took

    return run


def _langgraph(kind: str, runs: int, tmp: Path) -> Contender:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph

    class Pipeline(TypedDict):
        x: int

    def add_one(state: Pipeline) -> dict[str, int]:
        return {"x": state["x"] + 1}

    def double(state: Pipeline) -> dict[str, int]:
        return {"x": state["x"] * 2}

    builder = StateGraph(Pipeline)
    builder.add_node("add_one", add_one)
    builder.add_node("double", double)
    builder.add_edge(START, "add_one")
    builder.add_edge("add_one", "double")
    builder.add_edge("double", END)

    async def run() -> float:
        conn = None
        if kind == "in-memory":
            saver: Any = InMemorySaver()
        elif kind == "SQLite file":
            conn = sqlite3.connect(tmp / f"lg-{next(_files)}.db", check_same_thread=False)
            saver = SqliteSaver(conn)
            saver.setup()
        else:
            saver = None
        graph = builder.compile(checkpointer=saver)
        configs = [{"configurable": {"thread_id": f"run-{i}"}} for i in range(runs)]
        start = time.perf_counter()
        for i, config in enumerate(configs):
            out = graph.invoke({"x": i}, config)
        took = time.perf_counter() - start
        assert out["x"] == runs * 2
        if conn is not None:
            conn.close()
        return took

    return run


def run(cfg: Config) -> BenchResult:
    result = BenchResult(ID, TITLE, MEASURES)
    runs = cfg.pick(30, 200)
    rounds = cfg.n_rounds(3, 7)
    steps = 2 * runs
    with tempfile.TemporaryDirectory() as tmp:
        contenders = {f"rh_agents, {kind}": _rh(kind, runs, Path(tmp)) for kind in KINDS}
        if HAVE_LANGGRAPH:
            contenders.update(
                {f"LangGraph, {kind}": _langgraph(kind, runs, Path(tmp)) for kind in KINDS}
            )
        times = asyncio.run(side_by_side(contenders, rounds))
    per_step = {name: median(t) / steps * 1e6 for name, t in times.items()}
    result.data = {"runs": runs, "seconds": times, "us_per_step": per_step}
    savers = dict(zip(KINDS, ("no checkpointer", "InMemorySaver", "SqliteSaver"), strict=True))
    journals = dict(zip(KINDS, ("no journal", "in-memory journal", "SQLite journal"), strict=True))
    for kind in KINDS:
        rh = f"rh_agents, {kind}"
        result.rows.append(measured(f"rh_agents per step, {journals[kind]}", per_step[rh], "µs"))
        case = f"LangGraph ({savers[kind]}) / rh_agents ({journals[kind]}), per step"
        lg = f"LangGraph, {kind}"
        if lg in times:
            result.rows.append(
                measured(
                    case,
                    paired_ratio(times[lg], times[rh]),
                    "x",
                    None,
                    f"LangGraph {per_step[lg]:.1f} µs/step, rh_agents {per_step[rh]:.1f} µs/step",
                )
            )
        else:
            result.rows.append(skipped(case, "langgraph not installed"))
    result.notes.append(
        f"{runs} pipelines of two steps per measurement, each on its own thread (LangGraph "
        "thread_id, rh_agents state_id) of one fresh checkpointer/journal built outside the "
        "timed part. LangGraph runs through its synchronous invoke(), its cheapest path; "
        "rh_agents awaits two ExecutionEvents. Both journals commit every step to the "
        "SQLite file before going on (rh_agents appends STARTED and COMPLETED, LangGraph "
        "writes a checkpoint per super-step)."
    )
    return result
