"""``rh-agents trace show``: span files rendered as trees."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rh_agents.cli import load_spans, main, render_traces


@pytest.fixture(scope="module")
def span_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The span file of a real (small, fast) demo run."""
    state_dir = tmp_path_factory.mktemp("cli") / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rh_agents.demo",
            "--state-dir",
            str(state_dir),
            "--speed",
            "0.02",
            "--documents",
            "3",
            "--chunks",
            "3",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = state_dir / "spans.jsonl"
    assert path.stat().st_size > 0
    return path


def _show(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["trace", "show", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def test_trace_show_renders_the_demo_run_as_a_tree(
    span_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _show(capsys, str(span_file))
    assert code == 0, err
    lines = out.splitlines()
    assert re.match(r"trace [0-9a-f]{32}  rh-agents-demo  .* UTC  \d+ spans, ", lines[0])
    root = lines[1]
    assert root.lstrip().startswith("invoke_agent orchestrator")
    assert re.search(r"\d[\d,]*\.\d ms  completed$", root)
    documents = next(line for line in lines if line.lstrip().startswith("parallel documents"))
    assert _indent(documents) == _indent(root) + 2
    doc_lines = [line for line in lines if "invoke_agent document [doc-" in line]
    assert [re.search(r"doc-\d", line).group() for line in doc_lines] == [  # type: ignore[union-attr]
        "doc-1",
        "doc-2",
        "doc-3",
    ]
    assert all(_indent(line) == _indent(documents) + 2 for line in doc_lines)
    chat = [line for line in lines if "chat stub-llm [chunk-" in line]
    assert chat and all(_indent(line) == _indent(documents) + 6 for line in chat)
    # A failed call shows its error type and message; retries appear as span events.
    assert any(
        "failed  ERROR ModelOverloadedError: The model provider is overloaded" in line
        for line in chat
    )
    assert any("events: retry" in line for line in lines if "parallel chunks" in line)
    assert re.search(r"^1 of 1 trace\(s\), \d+ span\(s\) in ", lines[-1])


def test_trace_show_children_are_sorted_by_start_time(span_file: Path) -> None:
    spans, bad = load_spans(span_file)
    assert not bad
    _, count = render_traces(spans)
    assert count == 1
    assert sum(len(span.children) for span in spans) == len(spans) - 1
    # Rendering linked each span to its parent, children sorted by start time.
    for span in spans:
        assert [c.start for c in span.children] == sorted(c.start for c in span.children)


def test_trace_show_max_depth_folds_deeper_spans(
    span_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _show(capsys, str(span_file), "--max-depth", "1")
    assert code == 0
    body = [line for line in out.splitlines()[1:] if line.startswith("  ")]
    assert [line.split()[0:2] for line in body] == [
        ["invoke_agent", "orchestrator"],
        ["parallel", "documents"],
    ]
    assert re.search(r"\(\+\d+ spans below --max-depth 1\)", body[1])

    code, out, _ = _show(capsys, str(span_file), "--max-depth", "0")
    assert code == 0
    assert "parallel documents" not in out


def test_trace_show_marks_spans_whose_parent_is_missing(
    span_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = [json.loads(line) for line in span_file.read_text().splitlines()]
    for request in requests:
        for resource in request["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                scope["spans"] = [s for s in scope["spans"] if s["name"] != "parallel documents"]
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(json.dumps(r) + "\n" for r in requests))
    code, out, _ = _show(capsys, str(partial))
    assert code == 0
    orphans = [line for line in out.splitlines() if "is not in the file" in line]
    assert len(orphans) == 3
    assert all("invoke_agent document" in line for line in orphans)
    # Orphans are shown as roots, next to the real root.
    root_indent = _indent(out.splitlines()[1])
    assert all(_indent(line) == root_indent for line in orphans)


def test_trace_show_of_a_file_without_spans_says_so_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "spans.jsonl"
    empty.write_text("")
    code, out, err = _show(capsys, str(empty))
    assert code == 1  # a script `rh-agents trace show f && ...` must not go on
    assert not out
    assert f"No spans in {empty}" in err
    garbage = tmp_path / "other.jsonl"
    garbage.write_text("not a span\n")
    code, out, err = _show(capsys, str(garbage))
    assert code == 1
    assert f"No spans in {garbage}" in err


def test_trace_show_of_a_bad_path_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.jsonl"
    code, out, err = _show(capsys, str(missing))
    assert code == 2
    assert not out
    assert f"rh-agents: error: no such file: {missing}" in err

    code, _, err = _show(capsys, str(tmp_path))
    assert code == 2
    assert "is a directory" in err


def test_trace_show_skips_malformed_lines_with_a_warning(
    span_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "damaged.jsonl"
    text = span_file.read_text()
    damaged.write_text("not json\n" + text + '{"name": "cut sho')
    code, out, err = _show(capsys, str(damaged))
    assert code == 0
    assert "invoke_agent orchestrator" in out
    assert "skipped 2 line(s)" in err
    assert "line 1, " in err


def _span(name: str, span_id: str, parent: str | None, start: int, **extra: Any) -> str:
    record = {
        "name": name,
        "trace_id": "ab" * 16,
        "span_id": span_id,
        "parent_span_id": parent,
        "start_time_unix_nano": start,
        "end_time_unix_nano": start + 2_500_000,
        "status": "UNSET",
        "attributes": {},
        "events": [],
        "service_name": "svc",
        **extra,
    }
    return json.dumps(record) + "\n"


def test_trace_show_of_hand_written_spans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spans.jsonl"
    path.write_text(
        _span("child b", "02", "01", 3_000)
        + _span(
            "child a",
            "03",
            "01",
            2_000,
            status="ERROR",
            status_description="boom\nsecond line",
            attributes={"error.type": "ValueError", "rh_agents.outcome": "failed"},
            events=[{"name": "exception"}, {"name": "retry"}, {"name": "retry"}],
        )
        + _span("root", "01", None, 1_000)
        + _span("loop", "04", "04", 5_000)  # its own parent: shown as a root
    )
    code, out, _ = _show(capsys, str(path))
    assert code == 0
    body = out.splitlines()
    assert body[0].startswith(f"trace {'ab' * 16}  svc  ")
    assert "4 spans" in body[0] and "1 with errors" in body[0]
    assert [line.strip().split("  ")[0] for line in body[1:5]] == [
        "root",
        "child a",
        "child b",
        "loop",
    ]
    assert [_indent(line) for line in body[1:5]] == [2, 4, 4, 2]
    child_a = body[2]
    assert "2.5 ms" in child_a
    assert "failed  ERROR ValueError: boom  events: retry x2" in child_a
    assert "second line" not in out


def test_trace_show_filters_by_trace_id_and_last(
    span_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two = tmp_path / "two.jsonl"
    two.write_text(span_file.read_text() + _span("later", "0a", None, 2**62, trace_id="cd" * 16))
    code, out, _ = _show(capsys, str(two), "--last", "1")
    assert code == 0
    assert "later" in out and "orchestrator" not in out
    assert "1 of 2 trace(s)" in out

    code, out, _ = _show(capsys, str(two), "--trace", "CDCD")
    assert code == 0
    assert "later" in out

    code, _, err = _show(capsys, str(two), "--trace", "ffff")
    assert code == 1
    assert "No trace in" in err and "2 trace(s)" in err


def test_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "trace" in out and "demo" in out

    assert main([]) == 2
    assert "usage: rh-agents" in capsys.readouterr().err
    assert main(["trace"]) == 2
    assert "show" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["trace", "show"])
    assert exc.value.code == 2


def test_console_script_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rh_agents.cli", "trace", "show", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0
    assert "--max-depth" in proc.stdout


def test_trace_show_of_unusual_spans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "odd.jsonl"
    no_end = json.loads(_span("no end", "10", None, 1_000))
    del no_end["end_time_unix_nano"]
    no_end["duration_s"] = 12.5
    path.write_text(
        "[1, 2]\n"
        + json.dumps({"name": "no ids"})
        + "\n"
        + json.dumps(no_end)
        + "\n"
        + _span(
            "again",
            "11",
            "10",
            2_000,
            attributes={"rh_agents.event.address": "a/search#1", "rh_agents.replayed": True},
        )
        + _span(
            "cached",
            "12",
            "10",
            3_000,
            attributes={"rh_agents.outcome": "completed", "rh_agents.cached": True},
            status="ERROR",
            status_description="x" * 200,
        )
        + _span("cycle a", "20", "21", 4_000)
        + _span("cycle b", "21", "20", 5_000)
    )
    code, out, err = _show(capsys, str(path))
    assert code == 0
    assert "skipped 2 line(s)" in err and "line 1, 2" in err
    lines = out.splitlines()
    assert "12.50 s" in lines[1]  # duration from duration_s, in seconds above 10 s
    assert "again #1" in out and "replayed" in out
    cached = next(line for line in lines if "cached" in line)
    assert "completed  cached  ERROR: " + "x" * 87 + "..." in cached
    # Spans whose parents form a cycle are still shown, marked.
    assert "cycle a" in out and "cycle b" in out
    cycle = [line for line in lines if "cycle " in line]
    assert [line.strip().split("  ")[0] for line in cycle] == ["cycle a", "cycle b"]
    assert "(parent span 21 is its own ancestor: broken file)" in cycle[0]


def test_option_errors_and_the_demo_passthrough(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (["--max-depth", "-1"], ["--max-depth", "x"], ["--last", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(["trace", "show", "f.jsonl", *bad])
        assert exc.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    assert "python -m rh_agents.demo" in capsys.readouterr().out
