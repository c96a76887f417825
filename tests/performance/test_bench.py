"""The benchmark harness (bench/) runs and writes well-formed results.

Only the shape of the output is checked, never a timing: the machine is shared and
noisy, and the figures belong in bench/results.md, not in assertions. Competitors that
are not installed here (aiometer and anyio live in bench/requirements.txt, not in the dev
environment) must be reported as SKIP rows, not break the run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
IDS = ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10", "P11"]
STATUSES = {"PASS", "MISS", "INFO", "SKIP"}

pytestmark = pytest.mark.slow


def _python(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = _python(*args, timeout=timeout)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def _check_row(row: dict[str, Any]) -> None:
    assert row["case"]
    assert row["status"] in STATUSES, row
    if row["status"] == "SKIP":
        assert row["value"] is None and "not installed" in row["detail"], row
        return
    assert isinstance(row["value"], int | float) and math.isfinite(row["value"]), row
    assert row["unit"], row
    if row["target"]:
        assert row["status"] in {"PASS", "MISS"}, row
    else:
        assert row["status"] == "INFO", row


def test_quick_mode_writes_well_formed_results(tmp_path: Path) -> None:
    proc = _run("-m", "bench", "--quick", "--no-profile", "--out", str(tmp_path))
    for bench_id in IDS:
        assert f"== {bench_id} " in proc.stdout

    document = json.loads((tmp_path / "results.json").read_text())
    assert document["mode"] == "quick"
    env = document["environment"]
    assert env["cores"] >= 1 and env["python"] and env["cpu"]
    assert set(env["packages"]) >= {"rh_agents", "opentelemetry-sdk", "aiometer", "anyio"}
    assert [b["id"] for b in document["benchmarks"]] == IDS
    for bench in document["benchmarks"]:
        assert bench["title"] and bench["measures"] and bench["rows"], bench["id"]
        for row in bench["rows"]:
            _check_row(row)
    rows = [row for bench in document["benchmarks"] for row in bench["rows"]]
    counted = {s: sum(row["status"] == s for row in rows) for s in ("PASS", "MISS", "SKIP")}
    assert document["summary"] == counted
    assert counted["PASS"] + counted["MISS"] > 0

    p1 = {row["case"]: row for row in document["benchmarks"][0]["rows"]}
    for module, label in (("aiometer", "aiometer.run_all"), ("anyio", "anyio TaskGroup")):
        competitor = [row for case, row in p1.items() if label in case]
        assert competitor, label
        expected = "SKIP" if importlib.util.find_spec(module) is None else "PASS/MISS"
        for row in competitor:
            assert (row["status"] == "SKIP") == (expected == "SKIP"), row

    # P8: the process pool always; the Dask rows are SKIP exactly when it is missing
    p8 = document["benchmarks"][IDS.index("P8")]["rows"]
    assert any("ProcessPoolItemExecutor(2)" in row["case"] for row in p8)
    assert any(row["case"].startswith("process path per trivial item") for row in p8)
    dask_rows = [row for row in p8 if "dask" in row["case"].lower() or "submit" in row["case"]]
    assert len(dask_rows) == 5
    no_dask = importlib.util.find_spec("distributed") is None
    assert all((row["status"] == "SKIP") == no_dask for row in dask_rows), dask_rows

    # P11: the rh_agents rows always; LangGraph's are SKIP exactly when it is missing
    p11 = document["benchmarks"][IDS.index("P11")]["rows"]
    assert sum(row["case"].startswith("rh_agents per step") for row in p11) == 3
    langgraph_rows = [row for row in p11 if row["case"].startswith("LangGraph")]
    assert len(langgraph_rows) == 3
    no_langgraph = importlib.util.find_spec("langgraph") is None
    assert all((row["status"] == "SKIP") == no_langgraph for row in langgraph_rows)

    # The collector's share is measured where it matters (P1 at the largest size, P2)
    gc_rows = [row["case"] for row in rows if "garbage collector" in row["case"]]
    assert any("rh_agents' time in the garbage collector" in case for case in gc_rows)
    assert any(case.startswith("rh_agents: time in the garbage collector") for case in gc_rows)

    markdown = (tmp_path / "results.md").read_text()
    assert "| # | Case | Measured | Target | Result |" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| P")]
    assert len(table) == len(rows)
    for bench_id in IDS:
        assert f"### {bench_id} " in markdown


def test_profiles_name_where_the_time_and_memory_go(tmp_path: Path) -> None:
    proc = _run("-m", "bench.profiling", "--quick", "--out", str(tmp_path), "P4", "P5", "P6")
    assert "own time by package/module:" in proc.stdout
    assert "rh_agents." in proc.stdout
    assert "B/item" in proc.stdout  # the P5 memory attribution
    assert "P6 is not profiled" in proc.stdout
    assert (tmp_path / "P4.cprofile.txt").exists()
    assert (tmp_path / "P5.tracemalloc.txt").exists()


def test_the_instruction_counter_runs_every_case(tmp_path: Path) -> None:
    # Unmeasured here (valgrind is a developer tool, and a counted run takes minutes):
    # every case runs, and a case that does not exist is refused by name.
    proc = _run("-m", "bench.instructions", "--dry-run")
    cases = (
        "event group1 empty item nojournal memory sqlite sqlite-nowait sqlite-noencode "
        "sqlite-neither plain metered traced floor bare resume"
    ).split()
    for case in cases:
        assert f"{case:8s} ran (20 calls, not measured)" in proc.stdout
    bad = _python("-m", "bench.instructions", "--dry-run", "nothing")
    assert bad.returncode == 2
    assert f"unknown case(s) nothing; choose from {', '.join(cases)}" in bad.stderr


def test_the_sqlite_ablations_take_out_their_piece_and_put_it_back(tmp_path: Path) -> None:
    # The ablations are what docs/performance.md's P9 breakdown rests on: each must really
    # remove its piece (records stored as a constant text; no wait for the commit), and
    # leave the journal as it was for the next case of the same process.
    code = f"""
import asyncio
import sqlite3
from pathlib import Path
from bench.instructions import _ablated, run_case
from rh_agents.storage import _writer

def stored(case):
    run_case(case, 3, Path({str(tmp_path)!r}))
    db = sqlite3.connect(Path({str(tmp_path)!r}) / f"journal-{{case}}-3.db")
    return [text for (text,) in db.execute("SELECT record FROM events ORDER BY position")]

flush = _writer.ThreadedJournal.flush
with _ablated("sqlite-nowait"):  # returns at once (the real one needs a journal)
    print("nowait", asyncio.run(_writer.ThreadedJournal.flush(None)))
print("neither", sorted(set(stored("sqlite-neither"))))
print("restored", _writer.ThreadedJournal.flush is flush)
real = stored("sqlite")
print("sqlite", len(real), all('"seq":' in text for text in real))
"""
    proc = _run("-c", code)
    assert "nowait None" in proc.stdout
    assert 'neither [\'{"_crc":"00000000"}\']' in proc.stdout
    assert "restored True" in proc.stdout
    assert "sqlite 8 True" in proc.stdout  # a group and three events, two entries each


def test_the_collector_tuning_benchmark_compares_both_settings() -> None:
    # Unmeasured here (a few hundred events): both settings run, with and without
    # telemetry (every span exported, asserted inside), and bad arguments are refused.
    proc = _run("-m", "bench.gc_tuning", "--events", "300", "--rounds", "1")
    # the interpreter's default (700 before CPython 3.13, 2000 since) against 10 000
    assert re.search(r"collector thresholds \((\d+), 10, 10\) vs \(10000, 10, 10\)", proc.stdout)
    for label in ("no telemetry", "full telemetry"):
        line = next(line for line in proc.stdout.splitlines() if line.startswith(label))
        assert "default" in line and "tuned / default" in line
    bad = _python("-m", "bench.gc_tuning", "--events", "0")
    assert bad.returncode == 2
    assert "--events, --rounds and --threshold must be at least 1" in bad.stderr
