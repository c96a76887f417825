"""The README's runnable snippet runs and prints what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_core_concepts_snippet_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    runnable = [b for b in blocks if "asyncio.run(" in b]
    assert runnable, "the README has no runnable snippet"
    script = tmp_path / "snippet.py"
    script.write_text(runnable[0].replace("/tmp/rh_agents_readme.db", str(tmp_path / "h.db")))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "True text=\"An answer to 'otel'\" sources=['doc about otel']"
    assert "researcher started" in lines
    assert "researcher/search completed" in lines
    assert lines[-1] == "True True"
