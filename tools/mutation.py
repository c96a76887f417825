"""Mutation testing of the core (``make mutation``): a score per module.

Each module is mutated by mutmut (configured in ``[tool.mutmut]`` of pyproject.toml)
and each mutant runs against the tests of that module only (the table below; mutmut
further narrows it to the tests that call the mutated function). A mutant is
*detected* when a test fails (killed) or the run hangs past mutmut's timeout; it
*survives* when every test passes, or when no selected test reaches it.

Every module runs in its own scratch directory, ``.mutation/<module>/`` (mutmut keeps
its mutants and results there: ``cd .mutation/retry && mutmut show <mutant>`` shows
one), one after the other, with one worker by default: the machine is shared.

Usage::

    python tools/mutation.py                       # every module of the table
    python tools/mutation.py retry circuit_breaker # some of them
    python tools/mutation.py --survivors retry     # also list the survivors
    python tools/mutation.py --jobs 2              # mutmut workers per module
    python tools/mutation.py --keep retry          # re-test only what changed

The scores and the survivors judged equivalent are in docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / ".mutation"


@dataclass(frozen=True)
class Target:
    """One module to mutate and the test files that exercise it."""

    module: str
    tests: tuple[str, ...]


TARGETS: dict[str, Target] = {
    "history": Target(
        "rh_agents/core/history.py",
        (
            "tests/core/test_history_roundtrip.py",
            "tests/core/test_fingerprint_pins.py",
            "tests/core/test_core_history_bus.py",
            "tests/core/test_core_replay.py",
            "tests/telemetry/test_telemetry_usage.py",
        ),
    ),
    "retry": Target(
        "rh_agents/core/retry.py",
        (
            "tests/core/test_retry.py",
            "tests/reliability/test_retry_edges.py",
            "tests/core/test_policy.py",
            "tests/parallel/test_parallel_policy.py",
        ),
    ),
    "circuit_breaker": Target(
        "rh_agents/core/circuit_breaker.py",
        (
            "tests/core/test_circuit_breaker.py",
            "tests/reliability/test_breaker_limiter_edges.py",
            "tests/core/test_policy.py",
        ),
    ),
    "limiter": Target(
        "rh_agents/core/limiter.py",
        (
            "tests/core/test_limiter.py",
            "tests/reliability/test_breaker_limiter_edges.py",
            "tests/core/test_policy.py",
        ),
    ),
    "policy": Target(
        "rh_agents/core/policy.py",
        (
            "tests/core/test_policy.py",
            "tests/parallel/test_parallel_policy.py",
            "tests/parallel/test_item_deadlines.py",
        ),
    ),
    "adaptive_limiter": Target(
        "rh_agents/core/adaptive_limiter.py",
        ("tests/core/test_adaptive_limiter.py",),
    ),
    "usage": Target(
        "rh_agents/core/usage.py",
        (
            "tests/core/test_usage.py",
            "tests/telemetry/test_telemetry_usage.py",
            "tests/core/test_history_roundtrip.py",
        ),
    ),
    "cache": Target(
        "rh_agents/core/cache.py",
        (
            "tests/core/test_cache.py",
            "tests/core/test_cache_key.py",
            "tests/core/test_core_result_cache.py",
        ),
    ),
    "codec": Target(
        "rh_agents/storage/_codec.py",
        (
            "tests/storage/test_codec.py",
            "tests/core/test_history_roundtrip.py",
            "tests/storage/test_state_backends.py",
            "tests/storage/test_journal_integrity.py",
            "tests/storage/test_journal_contract.py",
            "tests/storage/test_storage_error_wording.py",
            "tests/core/test_safe_restore.py",
            "tests/reliability/test_reliability_storage.py",
        ),
    ),
}

# The rest of the core: each module against the unit tests of the core and of groups
# (mutmut runs only the tests that reach the mutated function); the storage side also
# against the storage tests. The crash tests (tests/reliability) are left out: they
# start processes and would make every mutant take seconds.
_CORE = ("tests/core", "tests/parallel")
_STORAGE = (
    *_CORE,
    "tests/storage/test_codec.py",
    "tests/storage/test_state_backends.py",
    "tests/storage/test_journal_contract.py",
    "tests/storage/test_journal_integrity.py",
    "tests/storage/test_sqlite_leases.py",
    "tests/storage/test_filesystem_safety.py",
    "tests/storage/test_storage_error_wording.py",
)
# The group modules also against the in-process telemetry tests: what a group reports
# (item spans, outcomes, queue gauges) is checked there.
_GROUPS = (
    *_CORE,
    "tests/telemetry/test_telemetry.py",
    "tests/telemetry/test_telemetry_outcomes.py",
    "tests/telemetry/test_telemetry_health.py",
    "tests/telemetry/test_telemetry_usage.py",
)
# The hot modules (every test reaches them, so a surviving mutant would run hundreds of
# tests) against the test files written for them.
_EVENTS = (
    "tests/core/test_core_events.py",
    "tests/core/test_core_actors.py",
    "tests/core/test_core_history_bus.py",
    "tests/core/test_result_flags.py",
    "tests/core/test_models_and_pause.py",
    "tests/core/test_history_roundtrip.py",  # what a snapshot keeps reaches the records
    "tests/core/test_core_replay.py",
    "tests/core/test_snapshot_records.py",
    "tests/core/test_event_snapshots.py",
    "tests/executors/test_remote_nested_calls.py",
)
_RUNNER = (
    *_EVENTS,
    "tests/core/test_retry.py",
    "tests/core/test_policy.py",
    "tests/core/test_core_result_cache.py",
    "tests/core/test_interrupts.py",
    "tests/core/test_usage.py",
)
_REPLAY = (
    "tests/core/test_core_replay.py",
    "tests/core/test_safe_restore.py",
    "tests/core/test_interrupts.py",
    "tests/core/test_history_roundtrip.py",
    "tests/parallel/test_parallel_replay.py",
    "tests/core/test_replay_contract.py",
    "tests/reliability/test_reliability_misuse.py",
)
for _name, _tests in {
    "actors": (*_EVENTS, "tests/core/test_cache_key.py", "tests/core/test_usage.py"),
    "bus": (
        *_EVENTS,
        "tests/core/test_bus_contract.py",
        "tests/core/test_bus_under_load.py",
        "tests/printing/test_printer.py",
    ),
    "context": (*_CORE, "tests/executors"),
    "errors": _CORE,
    "events": _EVENTS,
    "execution": (
        *_RUNNER,
        "tests/core/test_core_addresses.py",
        "tests/core/test_safe_restore.py",
        "tests/core/test_state_options.py",
        "tests/telemetry/test_telemetry_defaults.py",  # telemetry resolved per state
        "tests/parallel/test_group_arguments.py",  # state.parallel() passes them on
    ),
    "executors": (*_CORE, "tests/executors", "tests/docs/test_import_paths.py"),
    "hooks": (
        *_CORE,  # tests/core/test_hooks.py among them
        "tests/telemetry/test_telemetry.py",
        "tests/telemetry/test_telemetry_defaults.py",
        "tests/telemetry/test_telemetry_usage.py",
        "tests/telemetry/test_zero_code.py",
        "tests/executors",  # trace propagation into workers
    ),
    "interrupts": _CORE,
    "result": _CORE,
    "result_types": _CORE,
    "types": _CORE,
    "_aio": (*_CORE, "tests/testing"),
    "_guarded": (
        "tests/core/test_policy.py",
        "tests/core/test_retry.py",
        "tests/core/test_adaptive_limiter.py",
        "tests/core/test_circuit_breaker.py",
        "tests/core/test_limiter.py",
        "tests/parallel/test_permit_lending.py",
        "tests/parallel/test_parallel_policy.py",
        "tests/parallel/test_parallel_resilience.py",
        "tests/parallel/test_item_deadlines.py",
    ),
    "_models": _CORE,
    "_runner": (
        *_RUNNER,
        "tests/core/test_result_types.py",
        "tests/core/test_validate.py",
        "tests/core/test_recording_contract.py",
        "tests/core/test_runner_contract.py",
        # an event as a group item: its metadata, pause, cancellation, replay
        "tests/parallel/test_parallel_api.py",
        "tests/parallel/test_parallel_cancellation.py",
        "tests/parallel/test_parallel_replay.py",
        "tests/parallel/test_item_attempts.py",
        "tests/parallel/test_fail_fast_actor_items.py",
        "tests/parallel/test_parallel_structure.py",
    ),
    "_validate": _CORE,
    "_pause": _CORE,
    "clock": _CORE,
    "recording": (
        *_EVENTS,
        "tests/core/test_recording_contract.py",
        "tests/core/test_storage_interfaces.py",
        "tests/storage/test_journal_contract.py",
        "tests/storage/test_storage_error_wording.py",
        "tests/reliability/test_reliability_misuse.py",
    ),
    "replay": _REPLAY,
    "state_recovery": _STORAGE,
    "storage": _STORAGE,
}.items():
    TARGETS[_name] = Target(f"rh_agents/core/{_name}.py", _tests)
for _name in (
    "attempt",
    "config",
    "errors",
    "group",
    "items",
    "lending",
    "models",
    "results",
    "run",
    "scheduler",
):
    telemetry = _name in ("attempt", "group", "results", "run")
    TARGETS[f"parallel_{_name}"] = Target(
        f"rh_agents/core/parallel/{_name}.py", _GROUPS if telemetry else _CORE
    )

# The storage backends against the storage tests (and the core's, which drive them).
# The Postgres modules are left out: their tests start a PostgreSQL cluster, which
# every mutant would start again (see docs/testing.md).
_BACKENDS = (*_STORAGE, "tests/reliability/test_reliability_storage.py")
for _name in ("memory", "sqlite", "_sqlite_runs", "filesystem", "_files", "_file_journal"):
    TARGETS[f"storage_{_name.lstrip('_')}"] = Target(f"rh_agents/storage/{_name}.py", _BACKENDS)
for _name in ("_writer", "_lease"):  # also against the tests that kill writers
    TARGETS[f"storage_{_name.lstrip('_')}"] = Target(
        f"rh_agents/storage/{_name}.py",
        (*_BACKENDS, "tests/storage/test_journal_processes.py"),
    )

DETECTED = {"killed", "timeout", "caught by type check", "segfault"}


def scratch_for(name: str, target: Target, fresh: bool) -> Path:
    """The scratch directory of ``target``: links to the tree, a pyproject of its own."""
    scratch = SCRATCH / name
    scratch.mkdir(parents=True, exist_ok=True)
    for entry in ("rh_agents", "tests", "docs"):  # some tests read the documentation
        link = scratch / entry
        if not link.is_symlink():
            link.symlink_to(ROOT / entry)
    text = (ROOT / "pyproject.toml").read_text()
    base = tomllib.loads(text)["tool"]["mutmut"]
    tests = [path for path in target.tests if (ROOT / path).exists()]
    settings = {
        **base,
        "only_mutate": [target.module],
        "also_copy": ["docs"],
        "pytest_add_cli_args_test_selection": tests,
    }
    block = "[tool.mutmut]\n" + "".join(
        f"{key} = {_toml(value)}\n" for key, value in settings.items()
    )
    text = re.sub(r"\[tool\.mutmut\]\n(?:[^\[\n].*\n|\n)*", block + "\n", text)
    (scratch / "pyproject.toml").write_text(text)
    if fresh:
        # mutmut copies the tree only where its copy is missing: start from scratch so
        # every module and test runs as it is now.
        shutil.rmtree(scratch / "mutants", ignore_errors=True)
    return scratch


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def run(args: argparse.Namespace, name: str, target: Target) -> tuple[int, int, list[str]]:
    """Mutate one module; (mutants, detected, survivor lines), mutants -1 when the clean
    run (the selected tests against the unmutated code) failed."""
    scratch = scratch_for(name, target, fresh=not args.keep)
    mutmut = Path(sys.executable).parent / "mutmut"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    print(f"== {target.module}: mutmut run ({', '.join(target.tests)})", flush=True)
    log = scratch / "run.log"
    with log.open("w") as out:
        finished = subprocess.run(
            [str(mutmut), "run", "--max-children", str(args.jobs)],
            cwd=scratch,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    statuses = _statuses(mutmut, scratch, env)
    if finished.returncode == 0 and not statuses:
        print("   no mutants (mutmut mutates functions; this module has none it mutates)")
        return 0, 0, []
    if finished.returncode != 0 or all(status == "not checked" for _, status in statuses):
        # The clean run (every selected test, unmutated) failed, or mutmut stopped: no
        # mutant was tried, and calling that a score of 0 would mislead.
        print(f"   no score: mutmut exited {finished.returncode}; see {log}", flush=True)
        return -1, 0, []
    detected = sum(1 for _, status in statuses if status in DETECTED)
    lost = [f"{key}: {status}" for key, status in statuses if status not in DETECTED]
    minutes = (time.monotonic() - started) / 60
    print(
        f"   {len(statuses)} mutants, {detected} detected, {len(lost)} survived: "
        f"{100 * detected / len(statuses):.0f} % ({minutes:.1f} min)",
        flush=True,
    )
    if args.survivors:
        for line in lost:
            print(f"     {line}")
    return len(statuses), detected, lost


def _statuses(mutmut: Path, scratch: Path, env: dict[str, str]) -> list[tuple[str, str]]:
    """(mutant, status) of every mutant of the scratch directory's last run."""
    listing = subprocess.run(
        [str(mutmut), "results", "--all", "true"],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return re.findall(r"^\s+(\S+): (.+)$", listing, flags=re.MULTILINE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", choices=[[], *TARGETS], default=[])
    parser.add_argument("--jobs", type=int, default=1, help="mutmut workers (default 1)")
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the previous run's mutants and results (only what changed runs again)",
    )
    args = parser.parse_args()
    names = args.modules or list(TARGETS)
    rows = []
    failed = False
    for name in names:
        total, detected, _ = run(args, name, TARGETS[name])
        rows.append((TARGETS[name].module, total, detected))
        failed = failed or total < 0
    print("\n| module | mutants | detected | score |\n|---|---|---|---|")
    for module, total, detected in rows:
        if total < 0:
            print(f"| {module} | the clean run failed | | |")
            continue
        score = f"{100 * detected / total:.0f} %" if total else "n/a"
        print(f"| {module} | {total} | {detected} | {score} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
