"""examples/approval.py: a run paused by interrupt() and resumed in a new process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "approval.py"


def run(*args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr
    return completed.stdout


def test_the_approval_example_pauses_then_resumes_in_another_process(tmp_path: Path) -> None:
    source = EXAMPLE.read_text()
    assert source.startswith('"""') and "python examples/approval.py" in source
    db = str(tmp_path / "approval.db")

    first = run("--db", db)
    state_id = re.search(r"^run (approval-[0-9a-f]{8})$", first, re.MULTILINE)
    assert state_id is not None, first
    assert "  (writing the draft about owls)" in first
    assert "  (spelling check running)" in first and "  (links check running)" in first
    assert "paused (awaiting): the run waits for a human" in first
    assert "  waiting at publish/parallel:checks[2]/check[legal]/interrupt" in first
    assert f"resume with: --resume {state_id.group(1)} --answer yes" in first

    second = run("--db", db, "--resume", state_id.group(1), "--answer", "yes")
    assert second.splitlines() == [
        "answering publish/parallel:checks[2]/check[legal]/interrupt: 'yes'",
        "  (legal check: asking a human)",
        "done: published (spelling: ok, links: ok, legal: yes)",
    ]


def test_a_no_from_the_human_is_respected(tmp_path: Path) -> None:
    db = str(tmp_path / "approval.db")
    first = run("--db", db)
    state_id = re.search(r"^run (approval-[0-9a-f]{8})$", first, re.MULTILINE)
    assert state_id is not None
    second = run("--db", db, "--resume", state_id.group(1), "--answer", "no")
    assert second.splitlines()[-1] == "done: not published (spelling: ok, links: ok, legal: no)"
