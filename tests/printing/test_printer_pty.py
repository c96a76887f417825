"""ParallelEventPrinter on a real pseudo-terminal and on a real pipe.

A small script runs in a subprocess whose stdout (and stderr) is the slave side of a pty;
the test reads the master side until EOF, then replays the bytes through a minimal
terminal model (carriage return, newline, cursor up, erase line, autowrap) to check what
a user is left with on screen.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pty = pytest.importorskip("pty")
fcntl = pytest.importorskip("fcntl")
termios = pytest.importorskip("termios")

import struct  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")

SCRIPT = textwrap.dedent(
    """
    import asyncio
    import logging
    from typing import Any

    from pydantic import BaseModel

    from rh_agents.bus_handlers import ParallelEventPrinter
    from rh_agents.core.actors import Tool
    from rh_agents.core.events import ExecutionEvent
    from rh_agents.core.execution import EventBus, ExecutionState


    class Doc(BaseModel):
        text: str


    async def handler(data: Doc, extra: Any, state: Any) -> str:
        await asyncio.sleep(0.03)
        if data.text == "7":
            raise ConnectionError("refused by server 7")
        return data.text.upper()


    async def main() -> None:
        printer = ParallelEventPrinter("progress", refresh_per_second=30)
        bus = EventBus()
        bus.subscribe(printer)
        state = ExecutionState(event_bus=bus)
        tool = Tool(name="summarize", input_model=Doc, handler=handler)
        await ExecutionEvent(actor=tool)(Doc(text="intro"), {}, state)
        async with state.parallel(max_workers=3, name="Processing Docs") as p:
            for i in range(10):
                p.add(lambda i=i: ExecutionEvent(actor=tool)(Doc(text=str(i)), {}, state))
            await p.gather()
        printer.print_summary()
        printer.close()


    logging.disable(logging.WARNING)  # only the printer writes to the terminal
    asyncio.run(main())
    """
)


class Terminal:
    """Just enough of a VT100 to replay what rich and the printer write."""

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.lines: list[list[str]] = [[]]
        self.row = 0
        self.col = 0
        self.wrapped = 0  # characters that hit the right margin (lines too wide)
        self.cursor_visible = True

    def _line(self) -> list[str]:
        while len(self.lines) <= self.row:
            self.lines.append([])
        return self.lines[self.row]

    def feed(self, data: str) -> None:
        pos = 0
        while pos < len(data):
            match = CSI.match(data, pos)
            if match:
                self._csi(match.group(1), match.group(2))
                pos = match.end()
                continue
            char = data[pos]
            pos += 1
            if char == "\r":
                self.col = 0
            elif char == "\n":
                self.row += 1
                self._line()
            elif char == "\x1b":
                continue
            else:
                if self.col >= self.columns:
                    self.wrapped += 1
                    self.row += 1
                    self.col = 0
                line = self._line()
                line.extend(" " * (self.col + 1 - len(line)))
                line[self.col] = char
                self.col += 1

    def _csi(self, args: str, command: str) -> None:
        if command == "A":
            self.row = max(0, self.row - int(args or 1))
        elif command == "K":
            line = self._line()
            if args in ("2", ""):
                del line[self.col if args == "" else 0 :]
        elif command in ("h", "l") and args == "?25":
            self.cursor_visible = command == "h"

    @property
    def screen(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.lines]


def run_on_pty(
    script: Path | list[str], columns: int, timeout: float = 60.0, cwd: Path = ROOT
) -> tuple[int, str]:
    """Run a script (or a command line) with a pty of ``columns`` as its terminal."""
    command = [sys.executable, str(script)] if isinstance(script, Path) else script
    name = script.name if isinstance(script, Path) else " ".join(script)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NO_COLOR", "COLUMNS", "LINES") and not k.startswith("OTEL_")
    }
    env.update(TERM="xterm-256color", PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8")
    proc = subprocess.Popen(
        command,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=cwd,
        close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                pytest.fail(f"{name} did not finish within {timeout}s on the pty")
            ready, _, _ = select.select([master], [], [], remaining)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave end is closed (the child exited)
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=10), b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "progress_run.py"
    path.write_text(SCRIPT)
    return path


def test_progress_bars_on_a_real_terminal(script: Path) -> None:
    code, output = run_on_pty(script, columns=100)
    assert code == 0, output
    assert "\x1b[" in output  # a terminal: colours and cursor control
    plain = CSI.sub("", output)
    # a live bar was drawn and reached 100% before making way for the summary
    assert re.search(r"Processing Docs [█░]+ +\d+%  \d+/10 · \d+ in flight", plain)
    # its last frame: zero counts ("0 in flight") are left out
    assert re.search(r"Processing Docs █+ 100%  10/10 · 1 failed · [\d.]+m?s · ETA --", plain)
    assert "ETA" in plain
    # what is left on screen: the plain events, the group summary, the run summary,
    # and no bar (the live display was erased), with the cursor visible again
    term = Terminal(100)
    term.feed(output)
    screen = [line for line in term.screen if line]
    assert term.cursor_visible
    assert term.wrapped == 0  # no line was wider than the terminal
    assert not any("in flight" in line for line in screen), screen
    summary = [line for line in screen if "group 'Processing Docs'" in line]
    assert len(summary) == 1
    assert (
        "✖ group 'Processing Docs' failed ██████████ 100%  9/10 completed, 1 failed" in (summary[0])
    )
    errors = screen[screen.index(summary[0]) + 1]
    assert "errors: 1 of 10 events failed with 1 error type: ConnectionError" in errors
    assert any(line.startswith("Summary: 22 events") for line in screen)
    assert any("✔ completed summarize" in line and "@ summarize" in line for line in screen)


def test_narrow_terminal_lines_are_cut_to_the_width(script: Path) -> None:
    code, output = run_on_pty(script, columns=50)
    assert code == 0, output
    term = Terminal(50)
    term.feed(output)
    assert term.wrapped == 0
    assert term.cursor_visible
    plain = CSI.sub("", output)
    assert "100%" in plain
    assert any(line.endswith("…") for line in term.screen)


def bar_frames(output: str) -> list[str]:
    """Every drawing of a live bar in the raw output (rich redraws them in place)."""
    plain = CSI.sub("", output)
    return [
        frame
        for frame in re.split(r"[\r\n]", plain)
        if re.search(r"[█░▒]+ +\d+%  \d+/", frame) and "group '" not in frame
    ]


def test_on_80_columns_bars_keep_their_eta_and_summaries_wrap(script: Path) -> None:
    code, output = run_on_pty(script, columns=80)
    assert code == 0, output
    frames = bar_frames(output)
    assert len(frames) >= 3
    # every frame fits, keeps its ETA and is not cut; zero counts are left out
    assert all(len(frame) <= 80 and "ETA" in frame and "…" not in frame for frame in frames)
    assert not any(" 0 failed" in frame or " 0 retrying" in frame for frame in frames)
    term = Terminal(80)
    term.feed(output)
    assert term.wrapped == 0
    screen = [line for line in term.screen if line]
    # the group summary wraps onto an indented line instead of losing its counts
    [at] = [n for n, line in enumerate(screen) if "✖ group 'Processing Docs' failed" in line]
    summary = " ".join(line.strip() for line in screen[at : at + 3])
    assert re.search(r"100%  9/10 completed, 1 failed in [\d.]+m?s", summary), summary
    assert screen[at + 1].startswith("    ") and not any("…" in line for line in screen[at:])


def test_the_demo_on_a_real_terminal(tmp_path: Path) -> None:
    """The demo as a user sees it in an 80-column terminal: bars that reach 100%, nested
    groups named after their document, document and breaker lines and warnings above
    the bars (none drawn across them), then the summary."""
    command = [sys.executable, "-m", "rh_agents.demo", "--state-dir", str(tmp_path / "s")]
    command += ["--documents", "3", "--speed", "0.05", "--verbose"]
    code, output = run_on_pty(command, columns=80, cwd=tmp_path)
    assert code == 0, output
    frames = bar_frames(output)
    assert any(re.match(r"documents █+ 100%  3/3", frame) for frame in frames), frames
    assert any(re.match(r"  doc-\d › chunks [█░]+ ", frame) for frame in frames), frames
    assert all(len(frame) <= 80 and "ETA" in frame and "…" not in frame for frame in frames)
    term = Terminal(80)
    term.feed(output)
    screen = [line for line in term.screen if line]
    assert term.cursor_visible
    assert not any("ETA" in line or "in flight" in line for line in screen), screen
    text = "\n".join(screen)
    for doc in ("doc-1", "doc-2", "doc-3"):
        assert f"✔ group '{doc} › chunks' complete" in text
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3} document \[3/3\] doc-\d completed", text)
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3} breaker  search-api: closed -> open", text)
    warnings = [line for line in screen if line.startswith("WARNING rh_agents.parallel:")]
    assert warnings, text  # -v: degraded groups are logged while the bars are up
    assert not any(char in line for line in screen for char in "█░" if "group '" not in line)
    assert re.search(r"Run [0-9a-f-]{36} completed in", text)
    assert "documents  3 of 3 completed" in text


def test_piped_output_has_no_escape_codes(script: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(TERM="xterm-256color", PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    out = proc.stdout.decode()
    assert "\x1b" not in out and "\x1b" not in proc.stderr.decode()
    lines = out.splitlines()
    steps = [line for line in lines if re.search(r"Processing Docs [█░]+ \d+%", line)]
    assert 1 <= len(steps) <= 3  # coarse: one line per 25% step at most
    assert any("✖ group 'Processing Docs' failed ██████████ 100%" in line for line in lines)
    assert not any("[Processing Docs" in line for line in lines)  # items folded


def test_example_runs_on_a_terminal_and_on_a_pipe() -> None:
    example = ROOT / "examples" / "parallel_with_printer.py"
    code, output = run_on_pty(example, columns=120)
    assert code == 0, output
    plain = CSI.sub("", output)
    assert "doc-5 › Reviews" in plain  # the nested group, named after its item
    assert "100%" in plain and "[Translate 1/" in plain
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(example)], capture_output=True, env=env, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert "\x1b" not in proc.stdout.decode()
