"""Run the suite and the wheel smoke check on every Python from 3.11 up (`make matrix`).

Interpreters are looked for as ``python3.N`` on PATH (N from 11 to 19) and under
``~/.pyenv/versions/*/bin``; the first one found for each minor version is used (a pyenv
shim that has no such version behind it is passed over). Each runs
``make -k VENV=.venv-3.N PYTHON=<it> suite smoke`` in its own venv, one after the other.
``--skip-default`` leaves out the minor version of the interpreter running this script
(`make test` already runs the suite there, with coverage).

Prints a summary (version, interpreter, outcome, minutes) and exits non-zero when a run
failed or no interpreter was found at all.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOWEST = (3, 11)
TARGETS = ("suite", "smoke")
PROBE = "import sys; print('%d.%d' % sys.version_info[:2], sys.executable)"


def candidates() -> list[str]:
    found = [shutil.which(f"python3.{minor}") for minor in range(LOWEST[1], 20)]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found += sorted(str(p) for p in pyenv.glob("*/bin/python3"))
    return [c for c in found if c]


def interpreters() -> dict[str, str]:
    """``{"3.12": "/path/to/python3.12", ...}`` for every usable version from 3.11 up."""
    by_version: dict[str, str] = {}
    for candidate in candidates():
        try:
            probe = subprocess.run(
                [candidate, "-c", PROBE], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode != 0 or not probe.stdout.strip():
            continue
        version, _, executable = probe.stdout.strip().partition(" ")
        major, minor = (int(part) for part in version.split("."))
        if (major, minor) >= LOWEST and version not in by_version:
            by_version[version] = executable
    return dict(sorted(by_version.items(), key=lambda item: tuple(map(int, item[0].split(".")))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skip-default",
        action="store_true",
        help="leave out the minor version of the Python running this script",
    )
    args = parser.parse_args()
    found = interpreters()
    if not found:
        print("matrix: no Python 3.11 or newer found", file=sys.stderr)
        return 1
    print("matrix: found " + ", ".join(f"{v} ({p})" for v, p in found.items()), flush=True)
    if args.skip_default:
        default = "{}.{}".format(*sys.version_info[:2])
        if found.pop(default, None):
            print(f"matrix: leaving out {default}, the default interpreter (make test)")
        if not found:
            print("matrix: no other interpreter to run on")
            return 0
    outcomes = []
    for version, python in found.items():
        print(f"\nmatrix: ===== Python {version} ({python}) =====", flush=True)
        started = time.monotonic()
        done = subprocess.run(
            [
                "make",
                "-k",
                "--no-print-directory",
                f"VENV=.venv-{version}",
                f"PYTHON={python}",
                *TARGETS,
            ],
            cwd=ROOT,
        )
        minutes = (time.monotonic() - started) / 60
        outcomes.append((version, python, done.returncode == 0, minutes))
    print("\nmatrix: summary")
    for version, python, ok, minutes in outcomes:
        outcome = "passed" if ok else "FAILED"
        print(f"  Python {version:<5} {outcome:<7} {minutes:5.1f} min  {python}")
    return 0 if all(ok for *_, ok, _ in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
