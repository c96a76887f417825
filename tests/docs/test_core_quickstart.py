"""examples/quickstart.py runs on its own and prints what a new user expects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_runs_and_prints_results_and_history() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout.splitlines()
    assert "result: ok=True value='Summary: Lisbon is 21.5 C (70.7 F)'" in out
    assert "llm handler calls: 1" in out  # the second LLM call came from the cache

    history = out[out.index("history:") + 1 :]
    rows = [line.split() for line in history]
    assert rows == [
        ["travel_agent", "started"],
        ["travel_agent/get_weather", "started"],
        ["travel_agent/get_weather", "completed"],
        ["travel_agent/to_fahrenheit", "started"],
        ["travel_agent/to_fahrenheit", "completed"],
        ["travel_agent/stub_llm", "started"],
        ["travel_agent/stub_llm", "completed"],
        ["travel_agent/stub_llm#1", "started"],
        ["travel_agent/stub_llm#1", "completed", "(from", "cache)"],
        ["travel_agent", "completed"],
    ]
    # the live subscriber printed every status change as it happened
    assert sum(line.startswith("  event: ") for line in out) == len(rows)
