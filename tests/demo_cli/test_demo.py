"""``python -m rh_agents.demo`` end to end, as a user runs it (in a subprocess)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from span_file import read_spans

from rh_agents.state_backends import SQLiteStateBackend

TINY_SPEED = "0.02"
"""Latencies, retry delays and the breaker cooldown scaled down 50x."""


def _env() -> dict[str, str]:
    """The environment without OTEL_* variables, so traces go to the local span file."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def _command(state_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "rh_agents.demo", "--state-dir", str(state_dir), *args]


def _run(state_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(state_dir, *args),
        capture_output=True,
        text=True,
        env=_env(),
        cwd=state_dir.parent,
        timeout=timeout,
    )


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in:\n{text}"
    return int(match.group(1))


def _spans(path: Path) -> list[dict[str, Any]]:
    return read_spans(path)


def _tokens(record: dict[str, Any]) -> int:
    usage = record.get("usage") or {}
    return int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))


def _events(state_dir: Path) -> list[dict[str, Any]]:
    last = json.loads((state_dir / "last_run").read_text())
    with SQLiteStateBackend(state_dir / "history.db", integrity_check=False) as backend:
        return backend.load_events(last["state_id"])


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    state_dir = tmp_path_factory.mktemp("demo") / "state"
    return state_dir, _run(state_dir, "--speed", TINY_SPEED)


def test_demo_prints_a_summary_of_outcomes_retries_and_breaker_trips(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    state_dir, proc = demo_run
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr

    assert "rh_agents demo: 6 documents x 4 chunks, seed 7" in out
    assert re.search(r"Run [0-9a-f-]{36} completed in", out)
    assert "6 of 6 completed" in out
    completed = _number(r"calls\s+(\d+) completed", out)
    failed = _number(r"calls\s+\d+ completed, (\d+) failed attempts?", out)
    assert completed > 1 + 6 + 24  # the agents, every chunk summary and some searches
    assert failed > 0  # transient LLM errors and the search outage
    assert _number(r"retries\s+(\d+)", out) > 0
    assert _number(r"breaker\s+search-api: (\d+) trips?", out) >= 1
    assert _number(r"search-api: \d+ trips?, (\d+) calls? rejected", out) >= 1
    assert "slowest    actor" in out
    assert re.search(r"replayed\s+0 items from the history", out)
    spans = state_dir / "spans.jsonl"
    assert f"traces  -> {spans}" in out
    assert re.search(r"metrics -> http://127\.0\.0\.1:\d+/metrics", out)
    assert f"history    {state_dir / 'history.db'}" in out

    # Piped output: plain lines, no escape codes; progress lines came before the summary.
    assert "\x1b" not in out
    assert re.search(r"breaker\s+search-api: closed -> open", out)
    assert re.search(r"document\s+\[6/6\] doc-\d+ completed", out)


def test_demo_writes_spans_with_the_expected_tree(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    state_dir, proc = demo_run
    assert proc.returncode == 0, proc.stderr
    spans = _spans(state_dir / "spans.jsonl")
    names = {s["name"] for s in spans}
    assert {
        "invoke_agent orchestrator",
        "parallel documents",
        "invoke_agent document",
        "parallel chunks",
        "parallel search",
        "execute_tool search",
    } <= names
    assert any(n.startswith("chat ") for n in names), names

    by_id = {s["span_id"]: s for s in spans}

    def parent_name(span: dict[str, Any]) -> str | None:
        parent = by_id.get(span["parent_span_id"] or "")
        return parent["name"] if parent else None

    (root,) = [s for s in spans if s["name"] == "invoke_agent orchestrator"]
    assert root["parent_span_id"] is None
    assert {parent_name(s) for s in spans if s["name"] == "parallel documents"} == {
        "invoke_agent orchestrator"
    }
    assert {parent_name(s) for s in spans if s["name"].startswith("chat ")} == {"parallel chunks"}
    assert {parent_name(s) for s in spans if s["name"] == "execute_tool search"} == {
        "parallel search"
    }
    assert len({s["trace_id"] for s in spans}) == 1
    errors = {s["attributes"].get("error.type") for s in spans if s["status"] == "ERROR"}
    assert {"ModelOverloadedError", "SearchUnavailableError"} <= errors


def test_demo_keeps_a_completed_history_in_sqlite(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    state_dir, proc = demo_run
    assert proc.returncode == 0, proc.stderr
    last = json.loads((state_dir / "last_run").read_text())
    assert last["status"] == "completed"
    assert last["workload"] == {"documents": 6, "chunks": 4, "seed": 7}
    with SQLiteStateBackend(state_dir / "history.db") as backend:
        snapshot = backend.load_state(last["state_id"])
        events = backend.load_events(last["state_id"])
    assert snapshot is not None and snapshot.status.value == "completed"
    completed = {e["address"] for e in events if e["status"] == "completed"}
    assert "orchestrator" in completed
    documents = re.compile(r"orchestrator/parallel:documents\[\d\]/document\[doc-\d\]")
    assert sum(1 for address in completed if documents.fullmatch(address)) == 6


def test_realtime_printer_prints_every_call_as_plain_lines(tmp_path: Path) -> None:
    proc = _run(
        tmp_path / "state",
        "--speed",
        TINY_SPEED,
        "--documents",
        "2",
        "--chunks",
        "2",
        "--printer",
        "realtime",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "\x1b" not in proc.stdout
    assert re.search(r"call\s+stub-llm doc-1 chunk-0 completed in \d+ ms", proc.stdout)
    # nested groups are named after the document they run in
    assert re.search(r"group\s+doc-2 › chunks: 2/2 completed", proc.stdout)


def test_no_progress_prints_only_the_summary(tmp_path: Path) -> None:
    proc = _run(
        tmp_path / "state",
        "--speed",
        TINY_SPEED,
        "--documents",
        "1",
        "--chunks",
        "1",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not re.search(r"^\s+\d+\.\d+s\s", proc.stdout, re.MULTILINE)
    assert "1 of 1 completed" in proc.stdout


def test_interrupted_run_can_be_resumed_and_replays_completed_work(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    # Slow enough that the run is still going when the first calls have completed, also
    # on a loaded machine (at 0.5 a whole run took 2.4 s and once ended before the signal).
    proc = subprocess.Popen(
        _command(state_dir, "--speed", "2", "--documents", "8", "--no-progress"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        _wait_for(lambda: (state_dir / "last_run").exists(), 30, "the run to start")

        def some_calls_completed() -> bool:
            done = [e for e in _events(state_dir) if e["status"] == "completed"]
            return len(done) >= 3

        _wait_for(some_calls_completed, 30, "completed events in the history")
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 130, out + err
    # It stopped the run instead of finishing it first.
    assert _number(r"(\d+) of 8 completed before the run stopped", out) < 8
    assert "Interrupted (SIGINT)" in out
    assert f"Resume with: python -m rh_agents.demo --resume --state-dir {state_dir}" in out
    assert "Traceback" not in err, err
    assert "\x1b" not in out

    # The history is consistent: every invocation that started has ended.
    events = _events(state_dir)
    open_calls = {e["address"] for e in events if e["kind"] == "event"}
    ended = {
        e["address"]
        for e in events
        if e["kind"] == "event" and e["status"] in {"completed", "failed", "cancelled"}
    }
    assert open_calls == ended
    assert any(e["status"] == "cancelled" for e in events)
    assert json.loads((state_dir / "last_run").read_text())["status"] == "interrupted"
    spans = _spans(state_dir / "spans.jsonl")
    assert any(s["name"] == "invoke_agent orchestrator" for s in spans), "spans not flushed"
    tokens_before = sum(_tokens(e) for e in events)
    assert tokens_before > 0  # the LLM calls that completed reported their usage

    resumed = _run(state_dir, "--resume", "--speed", TINY_SPEED)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # The summary's tokens come from the history: those of the calls replayed from the
    # interrupted run are counted (through that run's entries), plus the new ones.
    total = _number(r"(\d+) tokens \(\d+ in, \d+ out\)", resumed.stdout)
    assert total == sum(_tokens(e) for e in _events(state_dir)) > tokens_before
    assert "resuming" in resumed.stdout
    assert re.search(r"Resumed run [0-9a-f-]{36} completed", resumed.stdout)
    assert "8 of 8 completed" in resumed.stdout
    assert _number(r"replayed\s+(\d+) items? from the history", resumed.stdout) > 0
    events = _events(state_dir)
    # the replayed calls are not written again: the journal holds what ran, once
    assert not any(e["status"] == "recovered" for e in events)
    assert events[-1]["address"] == "orchestrator" and events[-1]["status"] == "completed"


def test_resume_without_a_previous_run_says_what_to_do(tmp_path: Path) -> None:
    proc = _run(tmp_path / "state", "--resume")
    assert proc.returncode == 2
    assert "There is no run to resume" in proc.stderr
    assert "python -m rh_agents.demo" in proc.stderr


def test_serve_runs_rounds_until_terminated(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    proc = subprocess.Popen(
        _command(
            state_dir,
            "--serve",
            "--speed",
            TINY_SPEED,
            "--documents",
            "2",
            "--chunks",
            "2",
            "--pause",
            "0",
            "--no-progress",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    seen: set[str] = set()

    def two_rounds_started() -> bool:
        if (state_dir / "last_run").exists():
            try:
                seen.add(json.loads((state_dir / "last_run").read_text())["state_id"])
            except ValueError:  # pragma: no cover - read while being replaced
                pass
        return len(seen) >= 2

    try:
        _wait_for(two_rounds_started, 30, "a second round")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, out + err
    assert re.search(
        r"^round 1: completed in .*; calls \d+ completed, \d+ failed attempts", out, re.M
    )
    assert re.search(r"Stopped \(SIGTERM\) after \d+ round\(s\)", out)
    # served, the span file is the rotating one, and says so
    assert re.search(r"traces   \S+spans\.jsonl \(rotated at 8 MiB, one previous file kept\)", out)
    assert any(s["name"] == "invoke_agent orchestrator" for s in _spans(state_dir / "spans.jsonl"))


def _outcome_lines(out: str) -> list[str]:
    """What a run did, without ids and times: the summary's counts and the progress
    lines in order (their elapsed-time prefix and durations removed)."""
    counts = re.findall(r"^  (?:documents|calls|retries|breaker|replayed) .*$", out, re.M)
    progress = [
        re.sub(r"(in \d+ ms|next in [\d.]+s)", "", line.split("s  ", 1)[1])
        for line in out.splitlines()
        if re.match(r"^ +\d+\.\d\ds  ", line)
    ]
    return counts + progress


def test_seeded_runs_do_the_same_work_whatever_the_speed(tmp_path: Path) -> None:
    """Same seed, same run: every outcome (LLM errors, the outage, which calls meet the
    open breaker, every retry) and the order of the progress lines, at two speeds."""
    runs = [
        _run(tmp_path / f"state-{n}", "--speed", speed, "--seed", "11")
        for n, speed in enumerate([TINY_SPEED, TINY_SPEED, "0.05"])
    ]
    for proc in runs:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    first, *others = (_outcome_lines(proc.stdout) for proc in runs)
    assert any(line.startswith("  breaker    search-api:") for line in first), first
    assert any("rejected (CircuitOpenError)" in line for line in first), first
    assert all(lines == first for lines in others)
    other_seed = _run(tmp_path / "state-x", "--speed", TINY_SPEED, "--seed", "12")
    assert _outcome_lines(other_seed.stdout) != first


def test_resuming_a_completed_run_replays_it_and_says_so(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    done = _run(state_dir, "--speed", TINY_SPEED, "--documents", "1", "--chunks", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    resumed = _run(state_dir, "--resume", "--speed", TINY_SPEED)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    out = resumed.stdout
    # The whole run comes back from the history as one replayed orchestrator call.
    assert re.search(r"replayed\s+1 item from the history", out), out
    assert "calls      0 completed, 0 failed attempts, 0 cancelled, 1 replayed" in out
    assert "breaker    not called: the work behind it was replayed from the history" in out
    assert "no circuit breaker was used" not in out


def test_the_served_span_file_rotates_instead_of_growing(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from rh_agents.telemetry import JsonLinesSpanExporter

    path = tmp_path / "spans.jsonl"
    exporter = JsonLinesSpanExporter(path, max_bytes=4_000)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for n in range(200):
        with tracer.start_as_current_span(f"span {n}"):
            pass
    provider.shutdown()
    current = _spans(path)
    previous = _spans(path.with_name("spans.jsonl.1"))
    assert exporter.rotations > 5
    # at most one export past the limit per file, and only two files
    assert path.stat().st_size < 4_000 + 1_000
    assert path.with_name("spans.jsonl.1").stat().st_size < 4_000 + 1_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spans.jsonl", "spans.jsonl.1"]
    # the newest spans, in order, end to end across the two files
    names = [s["name"] for s in previous + current]
    assert names == [f"span {n}" for n in range(200 - len(names), 200)]


async def test_the_paced_clock_moves_only_when_everybody_waits() -> None:
    from rh_agents.demo import PacedClock

    woken: list[tuple[str, float]] = []
    async with PacedClock(speed=0) as clock:  # no real waiting

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woken.append((name, clock.monotonic()))

        async def busy_then_sleep() -> None:
            for _ in range(50):  # work that takes many loop iterations: time waits for it
                await asyncio.sleep(0)
            woken.append(("busy", clock.monotonic()))
            await sleeper("after busy", 0.5)

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(sleeper("b", 2.0))
            tasks.create_task(sleeper("a", 1.0))
            tasks.create_task(sleeper("tie-1", 2.0))
            tasks.create_task(busy_then_sleep())
            cancelled = tasks.create_task(sleeper("never", 1.5))
            await asyncio.sleep(0)
            cancelled.cancel()
    # deadline order, ties in the order they started waiting; the busy task ran before
    # any time passed; a cancelled sleeper is forgotten
    assert woken == [("busy", 0.0), ("after busy", 0.5), ("a", 1.0), ("b", 2.0), ("tie-1", 2.0)]
    assert clock.monotonic() == 2.0
    with pytest.raises(RuntimeError, match="async with"):
        await clock.sleep(1)


async def test_an_interruption_reads_the_time_reached_so_far() -> None:
    from rh_agents.demo import PacedClock

    seen: list[float] = []
    async with PacedClock(speed=1.0) as clock:
        long_wait = asyncio.create_task(clock.sleep(3600))

        async def from_outside() -> None:
            # A real timer stands in for Ctrl-C: it fires while time moves towards the
            # one-hour deadline, at the pace of real time.
            await asyncio.sleep(0.05)
            seen.append(clock.monotonic())
            long_wait.cancel()

        await from_outside()
        with pytest.raises(asyncio.CancelledError):
            await long_wait
    assert 0 < seen[0] < 3600
    assert clock.monotonic() >= seen[0]


def test_the_history_can_live_in_postgres_and_a_run_resumes_from_it(
    tmp_path: Path, postgres_cluster: Any
) -> None:
    dsn = postgres_cluster.new_database()
    where = f"PostgreSQL database '{dsn.rsplit('/', 1)[1]}' at 127.0.0.1:{postgres_cluster.port}"
    state_dir = tmp_path / "state"
    tiny = ("--speed", TINY_SPEED, "--documents", "1", "--chunks", "3", "--history", dsn)
    done = _run(state_dir, *tiny)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"  history  {where}, schema rh_agents\n" in done.stdout
    state_id = json.loads((state_dir / "last_run").read_text())["state_id"]
    assert f"{where}, schema rh_agents (state {state_id})" in done.stdout
    assert not (state_dir / "history.db").exists()
    from rh_agents.state_backends import PostgresStateBackend

    with PostgresStateBackend(dsn) as backend:
        statuses = {r["address"]: r["status"] for r in backend.load_events(state_id)}
    assert statuses["orchestrator"] == "completed"

    resumed = _run(state_dir, "--resume", *tiny)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "calls      0 completed, 0 failed attempts, 0 cancelled, 1 replayed" in resumed.stdout
