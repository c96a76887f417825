"""Without the dask extra (or PostgreSQL) the Dask (Postgres) tests are skipped locally
and fail in CI.

pytest runs tests/executors/test_distributed.py in a subprocess where ``dask`` and ``distributed``
cannot be imported (their ``sys.modules`` entries are None), as on an install without
the extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

WITHOUT_DASK = """
import sys
sys.modules["dask"] = None
sys.modules["distributed"] = None
import pytest
raise SystemExit(pytest.main(["-rs", "-p", "no:cacheprovider", sys.argv[1]]))
"""


def run_without_dask(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_DASK, str(TESTS / "executors" / "test_distributed.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS.parent,
        env=env,
    )


@pytest.mark.parametrize("ci", [None, "0"])
def test_dask_tests_skip_without_the_extra(ci: str | None) -> None:
    done = run_without_dask(ci)
    # Alone, the skipped module leaves nothing to run (exit 5); in the suite it is a skip.
    assert done.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, done.stdout + done.stderr
    assert "1 skipped" in done.stdout
    assert "`dask` is not installed" in done.stdout
    assert "pip install 'rh_agents[dask]'" in done.stdout
    assert " passed" not in done.stdout


@pytest.mark.parametrize("ci", ["true", "Yes"])
def test_dask_tests_fail_without_the_extra_in_ci(ci: str) -> None:
    done = run_without_dask(ci)
    assert done.returncode == pytest.ExitCode.INTERRUPTED, done.stdout + done.stderr
    assert f"CI={ci!r} and `dask` is not installed" in done.stdout
    assert "1 error" in done.stdout


TEST = "test_artifacts_keep_their_kind"


def run_without_postgres(ci: str | None, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """A Postgres test where no PostgreSQL is installed (the binaries' folder is empty)."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["RH_AGENTS_TEST_PG_BIN"] = str(tmp_path)
    if ci is not None:
        env["CI"] = ci
    test = TESTS / "storage" / "test_postgres.py"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", f"{test}::{TEST}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS.parent,
        env=env,
    )


def test_postgres_tests_skip_with_one_clear_message_without_the_server(tmp_path: Path) -> None:
    done = run_without_postgres(None, tmp_path)
    assert done.returncode == pytest.ExitCode.OK, done.stdout + done.stderr
    assert "1 skipped" in done.stdout
    assert "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)" in done.stdout
    assert "install Debian's postgresql package" in done.stdout


def test_postgres_tests_fail_without_the_server_in_ci(tmp_path: Path) -> None:
    done = run_without_postgres("true", tmp_path)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert "CI='true' and PostgreSQL is not installed" in done.stdout
    assert "1 error" in done.stdout
