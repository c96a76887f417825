"""The parallel examples run as scripts and print what their docstrings promise."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str) -> str:
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr
    assert time.monotonic() - started < 20
    return completed.stdout


@pytest.mark.parametrize(
    "name", ["parallel_basic.py", "parallel_streaming.py", "parallel_error_handling.py"]
)
def test_example_has_a_docstring_with_its_command(name: str) -> None:
    source = (EXAMPLES / name).read_text()
    assert source.startswith('"""')
    assert f"python examples/{name}" in source


def test_parallel_basic() -> None:
    out = run_example("parallel_basic.py")
    assert "fetched 6 pages in" in out
    assert "gather() returns add order:" in out
    for i in range(6):
        assert f"  [{i}] researcher/parallel:fetch[{i}]/fetch_page" in out
    assert "group 'summaries': 6/6 completed, status completed, id g-" in out
    assert "  a: https://example.org/a has 100 words" in out
    assert "  f: https://example.org/f has 600 words" in out
    assert "  started   researcher/parallel:fetch " in out
    assert "  completed researcher/parallel:summaries  completed=6 failed=0 total=6" in out
    assert "13 completed invocations" in out


def test_parallel_streaming() -> None:
    out = run_example("parallel_streaming.py")
    scene1 = out.split("2. ")[0]
    progress = [line for line in scene1.splitlines() if "/5  " in line]
    assert len(progress) == 5
    assert progress[0].strip().startswith("1/5  2 + 2")
    assert any("FAILED (the model refused to divide by zero)" in line for line in progress)
    assert "p.results is in add order: ['capital of France', '2 + 2']" in out
    assert "kept: ['2 + 2', 'largest planet']" in out
    assert "still running after the break: 0" in out
    assert "group status: cancelled" in out
    assert "in time: 2 + 2" in out
    assert (
        "Parallel group 'deadline' timed out after 0.08s. Completed 1/5 events. "
        "Consider increasing timeout or max_workers."
    ) in out
    assert "did not finish: ['capital of France', 'largest planet', 'speed of light']" in out


def test_parallel_error_handling() -> None:
    out = run_example("parallel_error_handling.py")
    assert "[2] failed with ConnectionError: refused" in out
    assert "[6] failed with TimeoutError\n" in out
    assert (
        "summary: 3 of 8 events failed with 2 error types: ConnectionError 'refused' (2), "
        "TimeoutError (1)"
    ) in out
    assert "except* ConnectionError caught 2" in out
    assert "except* TimeoutError caught 1" in out
    assert "raised ValueError: record 1 has no id" in out
    assert "cancelled ['item_2', 'item_3', 'item_4', 'item_5']" in out
    assert "never started: 3; group status: failed" in out
    assert out.count("RETRYING parallel:search[0]/search") == 2
    assert "results for flaky after 3 attempt(s)" in out
    assert "batch-1: 3 calls made, breaker open" in out
    assert "rejected: Circuit breaker 'search-api' is open" in out
    assert "batch-2 (shares the breaker): 3 calls made, CircuitOpenError" in out
    assert "after the cooldown the breaker is half_open" in out
    assert "batch-3: 3/3 ok, breaker closed, trips so far: 1" in out
    assert "answer to 'hello', after attempt 1 failed: AttemptTimeoutError" in out
    assert ("group with the same policy: [(\"answer to 'a'\", 2), (\"answer to 'b'\", 2)]") in out
    assert "policy statistics: 6 attempts, 3 retries, 3 timed out" in out
