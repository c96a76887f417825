"""Crash, interrupt and resume in real processes, with nested parallel groups and retries.

The pipeline (tests/reliability/_kill_pipeline.py) runs an ``outer`` group of ``section`` agents,
each running an ``inner`` group of ``work`` tool calls; both groups retry, and some work
calls fail their first attempt in every process. It writes its history to SQLite and
one side-file line per handler execution.

* SIGKILL: each run is killed again and again at seeded random points chosen by polling
  the side file (after some work, while an inner group is half done, while an item waits
  for its retry), and resumed in a fresh process each time until it completes.
* SIGINT / SIGTERM: the pipeline's handlers cancel its main task; the process must stop
  promptly and leave a consistent history (every start has an end, the groups that were
  running say cancelled).

After every process, the journal and the side file must agree: an invocation whose
COMPLETED was journaled never runs again, the process that journaled it ran it
successfully exactly once, nothing is lost, and the final results equal an
uninterrupted run's.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rh_agents.core.execution import ExecutionState
from rh_agents.state_backends import InMemoryStateBackend, SQLiteStateBackend

SCRIPT = Path(__file__).with_name("_kill_pipeline.py")
ROOT = Path(__file__).resolve().parents[2]
KILLS_PER_WORKER = 7
WORKERS = 3
BASE_SEED = 20240611

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")


def load_pipeline() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_kill_pipeline", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PIPELINE = load_pipeline()
ADDRESSES: set[str] = PIPELINE.all_addresses()
FLAKY = {
    f"pipeline/parallel:outer[{s}]/section/parallel:inner[{i}]/work"
    for s in range(PIPELINE.SECTIONS)
    for i in range(PIPELINE.ITEMS)
    if PIPELINE.is_flaky(s, i)
}
DONE = ("completed", "recovered")
TERMINAL = ("completed", "failed", "cancelled", "recovered")


@dataclass(frozen=True)
class Line:
    kind: str  # run, ok, fail
    address: str
    pid: int

    @property
    def is_work(self) -> bool:
        return self.address.endswith("/work")


class SideFile:
    """Reads the side file incrementally (polling must stay cheap)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[Line] = []
        self._offset = 0

    def read(self) -> list[Line]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return self.lines
        end = data.rfind(b"\n") + 1  # a line being written right now waits
        for text in data[:end].decode("utf-8").splitlines():
            kind, address, pid = text.split(" ")
            self.lines.append(Line(kind, address, int(pid)))
        self._offset += end
        return self.lines


def read_side(path: Path) -> list[Line]:
    return SideFile(path).read()


def journal(db: Path, state_id: str) -> list[dict[str, Any]]:
    with SQLiteStateBackend(db) as backend:
        return backend.load_events(state_id)


def completed_addresses(records: list[dict[str, Any]]) -> set[str]:
    return {r["address"] for r in records if r["kind"] == "event" and r["status"] in DONE}


def latest_by_address(records: list[dict[str, Any]], kind: str) -> dict[str, str]:
    latest: dict[str, str] = {}
    for record in records:
        if record["kind"] == kind:
            latest[record["address"]] = record["status"]
    return latest


@dataclass
class Run:
    """One pipeline run (one state id) taken through any number of processes."""

    directory: Path
    state_id: str
    db: Path = field(init=False)
    side: Path = field(init=False)
    completed: set[str] = field(default_factory=set)
    processes: int = 0
    kill_points: Counter[str] = field(default_factory=Counter)
    unacknowledged: int = 0  # successful executions killed before their COMPLETED

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.db = self.directory / "history.db"
        self.side = self.directory / "side.txt"
        self.reader = SideFile(self.side)

    def lines_of(self, pid: int) -> list[Line]:
        return [line for line in self.reader.read() if line.pid == pid]

    def start(self, signals: bool = False) -> subprocess.Popen[str]:
        command = [sys.executable, str(SCRIPT), "--db", str(self.db), "--side", str(self.side)]
        command += ["--state-id", self.state_id]
        if self.processes:
            command.append("--resume")
        if signals:
            command.append("--signals")
        self.processes += 1
        return subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def wait_until(
        self,
        proc: subprocess.Popen[str],
        condition: Callable[[list[Line]], bool],
        timeout: float = 30.0,
    ) -> bool:
        """Poll the side file until ``condition`` holds for this process's lines.

        Returns False when the process exited first (the run completed).
        """
        deadline = time.monotonic() + timeout
        mine: list[Line] = []
        while True:
            seen = len(self.reader.lines)
            mine += [line for line in self.reader.read()[seen:] if line.pid == proc.pid]
            if condition(mine):
                return True
            if proc.poll() is not None:
                return False
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"no kill point reached in {timeout}s; lines: {mine}")
            time.sleep(0.002)

    def check_process(self, pid: int) -> set[str]:
        """Check one finished (or killed) process against the journal; returns what it
        newly completed."""
        records = journal(self.db, self.state_id)
        completed = completed_addresses(records)
        assert completed >= self.completed, "a completed invocation disappeared"
        assert completed <= ADDRESSES, completed - ADDRESSES
        mine = self.lines_of(pid)
        ran = {line.address for line in mine if line.kind == "run"}
        # never re-run after its COMPLETED was journaled
        rerun = ran & self.completed
        assert not rerun, f"process {pid} re-ran completed invocations: {sorted(rerun)}"
        # the process that journaled a completion ran it successfully exactly once
        successes = Counter(line.address for line in mine if line.kind == "ok")
        new = completed - self.completed
        for address in new:
            assert successes[address] == 1, (address, successes[address], pid)
        self.unacknowledged += sum(n for a, n in successes.items() if a not in completed)
        self.completed = completed
        return new

    def classify_kill(self) -> None:
        records = journal(self.db, self.state_id)
        groups = latest_by_address(records, "group")
        events = latest_by_address(records, "event")
        if any(status == "started" for status in groups.values()):
            self.kill_points["mid-group"] += 1
        if any(status == "retrying" for status in events.values()):
            self.kill_points["mid-retry"] += 1
        if any(status == "started" and a.endswith("/work") for a, status in events.items()):
            self.kill_points["in-handler"] += 1

    def finish(self) -> list[list[int]]:
        proc = self.start()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        self.check_process(proc.pid)
        values: list[list[int]] = json.loads(out)["results"]
        return values


# ----------------------------------------------------------------- kill conditions


def after_work_lines(count: int) -> Callable[[list[Line]], bool]:
    return lambda mine: sum(1 for line in mine if line.is_work) >= count


def mid_retry(mine: list[Line]) -> bool:
    """An item failed in this process and waits for its retry."""
    last: dict[str, str] = {}
    for line in mine:
        last[line.address] = line.kind
    return any(kind == "fail" for kind in last.values())


def mid_inner_group(mine: list[Line]) -> bool:
    """A section is running its inner group, with some of its work already done."""
    running = {
        line.address for line in mine if line.kind == "run" and line.address.endswith("section")
    }
    finished = {line.address for line in mine if line.kind == "ok"}
    for section in running - finished:
        if any(a.startswith(section + "/") for a in finished):
            return True
    return False


def choose_condition(rng: random.Random, run: Run) -> tuple[str, Callable[[list[Line]], bool]]:
    options: list[str] = ["lines"]
    if FLAKY - run.completed:
        options += ["retry", "retry"]
    sections = {a for a in ADDRESSES if a.endswith("section")}
    if sections - run.completed:
        options += ["group", "group"]
    kind = rng.choice(options)
    if kind == "retry":
        return kind, mid_retry
    if kind == "group":
        return kind, mid_inner_group
    return kind, after_work_lines(rng.randint(1, 6))


def kill_and_resume(directory: Path, worker: int) -> tuple[list[Run], list[list[list[int]]]]:
    """Runs of one worker: kill each run at seeded random points, then resume it to the
    end, until KILLS_PER_WORKER kills happened."""
    rng = random.Random(BASE_SEED + worker)
    runs: list[Run] = []
    finals: list[list[list[int]]] = []
    kills = 0
    while kills < KILLS_PER_WORKER:
        run = Run(directory / f"w{worker}-run{len(runs)}", f"kill-{worker}-{len(runs)}")
        runs.append(run)
        while kills < KILLS_PER_WORKER:
            kind, condition = choose_condition(rng, run)
            proc = run.start()
            if not run.wait_until(proc, condition):
                out, err = proc.communicate()
                assert proc.returncode == 0, err
                run.check_process(proc.pid)
                finals.append(json.loads(out)["results"])
                break
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
            assert proc.returncode == -signal.SIGKILL
            kills += 1
            run.kill_points[f"chosen:{kind}"] += 1
            run.check_process(proc.pid)
            run.classify_kill()
        else:
            finals.append(run.finish())
    return runs, finals


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> list[list[int]]:
    side = tmp_path_factory.mktemp("reference") / "side.txt"
    state = ExecutionState(state_backend=InMemoryStateBackend())
    values: list[list[int]] = asyncio.run(PIPELINE.run_pipeline(state, str(side)))
    assert values == PIPELINE.expected_results()
    lines = read_side(side)
    assert {line.address for line in lines if line.kind == "ok"} == ADDRESSES
    return values


def test_sigkill_at_random_points_then_resume_loses_and_repeats_nothing(
    tmp_path: Path, uninterrupted: list[list[int]]
) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(lambda w: kill_and_resume(tmp_path, w), range(WORKERS)))
    runs = [run for worker_runs, _ in outcomes for run in worker_runs]
    finals = [final for _, worker_finals in outcomes for final in worker_finals]

    # every run completed, with exactly the uninterrupted results, nothing lost
    assert len(finals) == len(runs)
    assert all(final == uninterrupted for final in finals)
    for run in runs:
        assert run.completed == ADDRESSES
        records = journal(run.db, run.state_id)
        done = {
            r["address"] for r in records if r["kind"] == "event" and r["status"] == "completed"
        }
        assert done == ADDRESSES

    points: Counter[str] = Counter()
    for run in runs:
        points.update(run.kill_points)
    kills = sum(n for kind, n in points.items() if kind.startswith("chosen:"))
    summary = (
        f"{kills} SIGKILLs over {len(runs)} runs ({sum(r.processes for r in runs)} "
        f"processes) in {time.monotonic() - started:.1f}s; kill points: {dict(points)}; "
        f"successful executions killed before their COMPLETED was journaled: "
        f"{sum(r.unacknowledged for r in runs)}"
    )
    print(summary)
    assert kills >= 20, summary
    # the journal confirms where the kills landed
    assert points["mid-group"] >= 10, summary
    assert points["mid-retry"] >= 2, summary
    assert points["in-handler"] >= 5, summary


def check_consistent(records: list[dict[str, Any]]) -> None:
    """Every STARTED of an invocation or group is followed by one terminal status."""
    open_: dict[tuple[str, str], int] = Counter()
    for record in records:
        key = (record["kind"], record["address"])
        status = record["status"]
        if status == "started":
            assert open_[key] == 0, f"{key} started twice without ending"
            open_[key] = 1
        elif status in TERMINAL and record["kind"] in ("event", "group"):
            if status != "recovered":
                assert open_[key] == 1, f"{key} ended ({status}) without starting"
            open_[key] = 0
    dangling = [key for key, n in open_.items() if n]
    assert not dangling, f"started without a terminal status: {dangling}"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_stop_promptly_and_leave_a_consistent_history(
    tmp_path: Path, uninterrupted: list[list[int]], signum: int
) -> None:
    run = Run(tmp_path, f"signal-{signum}")
    proc = run.start(signals=True)
    assert run.wait_until(proc, lambda mine: mid_inner_group(mine) and mid_retry(mine))
    sent = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)  # a bound for a hung process, not a speed
    stopped = time.monotonic() - sent
    assert proc.returncode == 128 + signum, err
    assert json.loads(out) == {"cancelled_by": signum}
    print(f"{signal.Signals(signum).name}: process exited {stopped * 1000:.0f} ms after it")
    run.check_process(proc.pid)

    records = journal(run.db, run.state_id)
    # Promptly: it stopped the run where it was instead of finishing the work first.
    assert completed_addresses(records) < ADDRESSES
    check_consistent(records)
    groups = [r for r in records if r["kind"] == "group"]
    latest = latest_by_address(records, "group")
    # the outer group and every inner group that had not finished say cancelled
    assert latest["pipeline/parallel:outer"] == "cancelled"
    unfinished = [a for a, status in latest.items() if status != "completed"]
    assert unfinished and all(latest[a] == "cancelled" for a in unfinished)
    for record in groups:
        if record["status"] == "cancelled":
            assert record["metadata"]["status"] == "cancelled"
    assert latest_by_address(records, "event")["pipeline"] == "cancelled"
    assert "retrying" in {r["status"] for r in records}

    # the interrupted run resumes to the uninterrupted results
    assert run.finish() == uninterrupted
    assert run.completed == ADDRESSES
    check_consistent(journal(run.db, run.state_id))
