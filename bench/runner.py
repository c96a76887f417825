"""Runs the benchmarks and writes ``results.md`` and ``results.json``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import (
    p1_group_overhead,
    p2_telemetry,
    p3_io_scaling,
    p4_single_event,
    p5_memory,
    p6_cpu_bound,
    p7_scale,
    p8_distributed,
    p9_storage,
    p10_postgres,
    p11_durable_step,
)
from bench._common import (
    MISS,
    PASS,
    SKIP,
    BenchResult,
    Config,
    environment,
    format_value,
    load_average,
)

BENCHMARKS: tuple[ModuleType, ...] = (
    p1_group_overhead,
    p2_telemetry,
    p3_io_scaling,
    p4_single_event,
    p5_memory,
    p6_cpu_bound,
    p7_scale,
    p8_distributed,
    p9_storage,
    p10_postgres,
    p11_durable_step,
)

DEFAULT_OUT = Path(__file__).resolve().parent


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="rh_agents benchmarks: side-by-side ratios, medians over rounds.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument("--only", default="", help="comma-separated ids, e.g. P1,P4")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    parser.add_argument("--rounds", type=int, default=None, help="rounds for every benchmark")
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument(
        "--profile",
        dest="profile",
        action="store_true",
        default=None,
        help="profile the benchmarks that miss a target (default in full mode)",
    )
    profile.add_argument("--no-profile", dest="profile", action="store_false")
    return parser.parse_args(argv)


def _print_result(result: BenchResult) -> None:
    width = max(len(row.case) for row in result.rows) if result.rows else 0
    for row in result.rows:
        value = format_value(row.value, row.unit) if row.value is not None else row.detail
        target = f"target {row.target}" if row.target else ""
        print(f"  {row.case:<{width}}  {value:>16}  {target:<20} {row.status}", flush=True)
    print(f"  ({result.seconds:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    cfg = Config(quick=args.quick, rounds=args.rounds)
    wanted = {x.strip().upper() for x in args.only.split(",") if x.strip()}
    selected = [m for m in BENCHMARKS if not wanted or m.ID in wanted]
    if wanted - {m.ID for m in BENCHMARKS}:
        print(f"unknown benchmark ids: {sorted(wanted - {m.ID for m in BENCHMARKS})}")
        return 2
    do_profile = (not args.quick) if args.profile is None else args.profile
    env = environment()
    mode = "quick" if cfg.quick else "full"
    print(f"rh_agents benchmarks ({mode}) on {env['cpu']}, {env['cores']} cores, {env['python']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env["packages"].items()))
    started = time.perf_counter()
    results: list[BenchResult] = []
    for module in selected:
        print(f"\n== {module.ID} {module.TITLE}\n   measures: {module.MEASURES}", flush=True)
        begin = time.perf_counter()
        result: BenchResult = module.run(cfg)
        result.seconds = time.perf_counter() - begin
        results.append(result)
        _print_result(result)
    if do_profile:
        from bench.profiling import profile_miss

        for result in results:
            if result.missed:
                print(f"\n== profiling {result.id} (it missed a target)", flush=True)
                result.profile = profile_miss(result.id, cfg, args.out / "profiles")
                print(result.profile, flush=True)
    total = time.perf_counter() - started
    env["load_average_end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "mode": mode,
        "seconds": round(total, 1),
        "environment": env,
        "method": METHOD,
        "benchmarks": [r.to_dict() for r in results],
        "summary": _summary(results),
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    (args.out / "results.md").write_text(render_markdown(document))
    summary = document["summary"]
    print(
        f"\n{summary[PASS]} PASS, {summary[MISS]} MISS, {summary[SKIP]} SKIP in {total:.0f} s; "
        f"wrote {args.out / 'results.md'} and {args.out / 'results.json'}"
    )
    return 0


METHOD = (
    "Every contender of a benchmark runs once per round, in a shuffled order, in the same "
    "process; a ratio is the median over rounds of that round's ratio, an absolute figure "
    "the median over rounds. Set-up (building inputs, telemetry providers, states) is "
    "outside the timed part unless a benchmark says otherwise. Timings are not asserted "
    "anywhere: the machine is shared and noisy, so compare ratios, not absolute times."
)


def _summary(results: list[BenchResult]) -> dict[str, int]:
    counts = {PASS: 0, MISS: 0, SKIP: 0}
    for result in results:
        for row in result.rows:
            if row.status in counts:
                counts[row.status] += 1
    return counts


def _busy(env: dict[str, Any]) -> str:
    """A warning when other processes competed for the cores during the run."""
    try:
        load = max(float(env[key].split()[0]) for key in ("load_average", "load_average_end"))
    except (KeyError, ValueError, IndexError):
        return ""
    if load < 0.5 * env["cores"]:
        return ""
    return (
        " (**busy machine**: other processes competed for the cores, so absolute figures "
        "are inflated and ratios noisier than on a quiet machine)"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(document: dict[str, Any]) -> str:
    env = document["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    revision = env["git_commit"] + (
        " + uncommitted changes in rh_agents/" if env["rh_agents_modified"] else ""
    )
    summary = document["summary"]
    lines = [
        "# rh_agents benchmark results",
        "",
        f"Mode **{document['mode']}**, run {env['date_utc']} UTC in {document['seconds']} s "
        f"(`make bench`; quick: `make bench BENCH_ARGS=--quick`).",
        "",
        f"- Machine: {env['cpu']}, {env['cores']} cores, {env['platform']}; load average "
        f"(1, 5, 15 min) {env['load_average']} at the start, "
        f"{env.get('load_average_end', 'n/a')} at the end{_busy(env)}",
        f"- Python: {env['python']}",
        f"- Versions: {versions}",
        f"- Source: git {revision}",
        f"- Method: {document['method']}",
        f"- Targets: {summary[PASS]} PASS, {summary[MISS]} MISS, {summary[SKIP]} SKIP "
        "(SKIP: a competitor is not installed)",
        "",
        "| # | Case | Measured | Target | Result |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for bench in document["benchmarks"]:
        for row in bench["rows"]:
            value = format_value(row["value"], row["unit"]) if row["value"] is not None else "-"
            lines.append(
                f"| {bench['id']} | {_cell(row['case'])} | {value} | "
                f"{_cell(row['target'] or '')} | {row['status']} |"
            )
    lines += ["", "## Details", ""]
    for bench in document["benchmarks"]:
        lines += [f"### {bench['id']} {bench['title']} ({bench['seconds']:.1f} s)", ""]
        lines += [f"Measures: {bench['measures']}", ""]
        details = [r for r in bench["rows"] if r["detail"]]
        for row in details:
            lines.append(f"- {row['case']}: {row['detail']}")
        if details:
            lines.append("")
        for note in bench["notes"]:
            lines += [note, ""]
        if bench.get("profile"):
            lines += ["Profile (it missed a target):", "", "```", bench["profile"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
