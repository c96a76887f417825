"""Crash and resume in real processes: SIGKILL part-way, resume in a fresh process.

The pipeline (tests/reliability/_crash_pipeline.py) runs 30 sequential tool calls with a SQLite
history and writes one side-file line per handler execution. The first process is killed
with SIGKILL while it is blocked at a chosen point; a second process resumes it with
``ExecutionState.load_from_state_id``. What the journal held at the moment of the kill
decides exactly which executions may repeat.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from rh_agents.core.execution import ExecutionState
from rh_agents.state_backends import InMemoryStateBackend, SQLiteStateBackend

SCRIPT = Path(__file__).with_name("_crash_pipeline.py")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


def load_pipeline() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_crash_pipeline", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def side_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return path.read_text(encoding="utf-8").splitlines()


def wait_for(proc: subprocess.Popen[str], path: Path, done: str, timeout: float = 30.0) -> None:
    """Poll the side file until its last line is ``done`` (the process is then blocked)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = side_lines(path)
        if lines and lines[-1] == done:
            return
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"pipeline exited early with {proc.returncode}: {err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"pipeline did not reach {done!r}; side file: {lines}")
        time.sleep(0.005)


def parse(lines: list[str]) -> list[tuple[int, str, int]]:
    executions = []
    for line in lines:
        if line == "hang":
            continue
        index, address, pid = line.split()
        executions.append((int(index), address, int(pid)))
    return executions


@pytest.fixture(scope="module")
def pipeline() -> ModuleType:
    return load_pipeline()


@pytest.fixture(scope="module")
def uninterrupted(pipeline: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> list[int]:
    side = tmp_path_factory.mktemp("reference") / "side.txt"
    state = ExecutionState(state_backend=InMemoryStateBackend())
    values: list[int] = asyncio.run(pipeline.run_pipeline(state, str(side)))
    assert len(side_lines(side)) == pipeline.STEPS
    return values


@pytest.mark.parametrize(
    ("hang", "index"),
    [("--hang-in-handler", 12), ("--hang-after-completed", 20)],
    ids=["killed-inside-a-handler", "killed-after-a-completion"],
)
def test_sigkill_then_resume_runs_each_completed_call_once(
    tmp_path: Path, pipeline: ModuleType, uninterrupted: list[int], hang: str, index: int
) -> None:
    db, side, state_id = tmp_path / "history.db", tmp_path / "side.txt", "crash-run"
    base = [sys.executable, str(SCRIPT), "--db", str(db), "--side", str(side)]
    base += ["--state-id", state_id]

    # ---- first process: killed while blocked at the chosen point
    first = subprocess.Popen(
        [*base, hang, str(index)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    in_handler = hang == "--hang-in-handler"
    expected_last = f"{index} pipeline/step#{index} {first.pid}" if in_handler else "hang"
    wait_for(first, side, expected_last)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL

    before = parse(side_lines(side))
    with SQLiteStateBackend(db) as backend:
        records = backend.load_events(state_id)
    completed = {r["address"] for r in records if r["status"] == "completed"}
    started = {r["address"] for r in records if r["status"] == "started"}
    in_flight = started - completed - {"pipeline"}
    completed_steps = completed - {"pipeline"}
    assert "pipeline" not in completed

    # the kill point is where the test put it
    if in_handler:
        assert len(completed_steps) == index
        assert in_flight == {f"pipeline/step#{index}"}
    else:
        assert len(completed_steps) == index + 1
        assert in_flight == set()
    assert {address for _, address, _ in before} == completed_steps | in_flight

    # ---- second process: resumes from the journal
    second = subprocess.run(
        [*base, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert second.returncode == 0, second.stderr
    output = json.loads(second.stdout)

    executions = parse(side_lines(side))
    after = executions[len(before) :]
    assert {pid for _, _, pid in before} == {first.pid}
    assert len({pid for _, _, pid in after}) == 1
    assert first.pid not in {pid for _, _, pid in after}
    runs = Counter(address for _, address, _ in executions)
    all_steps = {"pipeline/step"} | {f"pipeline/step#{i}" for i in range(1, pipeline.STEPS)}

    # nothing lost: every step ran at least once
    assert set(runs) == all_steps
    # a call completed in the history before the kill never runs again
    for address in completed_steps:
        assert runs[address] == 1, address
    assert not completed_steps & {address for _, address, _ in after}
    # the only call that may run twice is the one in flight at the kill
    twice = {address for address, n in runs.items() if n > 1}
    assert twice == in_flight
    assert all(n <= 2 for n in runs.values())
    # the second process ran exactly what had not completed, in order, once each
    assert [i for i, _, _ in after] == sorted(
        i
        for i in range(pipeline.STEPS)
        if (f"pipeline/step#{i}" if i else "pipeline/step") not in completed_steps
    )
    assert output["statuses"]["recovered"] == len(completed_steps)

    # the resumed run ends with exactly the results of an uninterrupted run
    assert output["results"] == uninterrupted
    with SQLiteStateBackend(db) as backend:
        final = ExecutionState.load_from_state_id(state_id, backend)
    assert final.history.has_completed_event("pipeline")
    assert final.history.get_event_result("pipeline") == uninterrupted
