"""A group that grew while it ran, killed with SIGKILL and resumed in a new process:
the resumed run re-adds the same items under the same addresses, replays what completed
and runs only the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rh_agents.storage import SQLiteStateBackend

SCRIPT = Path(__file__).with_name("_grow_pipeline.py")
ROOT = Path(__file__).resolve().parents[2]
LINKS = 8


def _lines(side: Path) -> list[tuple[str, str, int]]:
    if not side.exists():
        return []
    text = side.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    return [
        (kind, address, int(pid))
        for kind, address, pid in (line.split(" ") for line in complete.splitlines())
    ]


def _start(db: Path, side: Path, resume: bool) -> subprocess.Popen[str]:
    command = [sys.executable, str(SCRIPT), "--db", str(db), "--side", str(side)]
    command += ["--state-id", "grow-1"] + (["--resume"] if resume else [])
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_grown_group_resumed_after_sigkill_reruns_only_unfinished_items(
    tmp_path: Path,
) -> None:
    db, side = tmp_path / "history.db", tmp_path / "side.txt"
    first = _start(db, side, resume=False)
    # Wait (on the side file, not on time) until some of the added pages are fetched.
    deadline = time.monotonic() + 60
    while sum(1 for kind, a, _ in _lines(side) if kind == "ok" and "[0." in a) < 3:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, _lines(side)
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL

    with SQLiteStateBackend(db) as backend:
        records = backend.load_events("grow-1")
    completed = {
        r["address"]
        for r in records
        if r["kind"] == "event" and r["status"] == "completed" and r["address"].endswith("fetch")
    }
    assert "crawl/parallel:pages[0]/fetch" in completed
    assert len(completed) >= 2  # the root and at least one added page

    second = _start(db, side, resume=True)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["ok"] is True
    assert report["results"] == ["page /"] + [f"page /{n}" for n in range(LINKS)]

    rerun = {a for kind, a, pid in _lines(side) if kind == "run" and pid == second.pid}
    expected = {"crawl/parallel:pages[0]/fetch"} | {
        f"crawl/parallel:pages[0.{n}]/fetch" for n in range(LINKS)
    }
    assert not rerun & completed, "a completed page was fetched again"
    assert rerun == expected - completed
