"""Fixtures shared by the test folders (one folder per concern of rh_agents).

The rh_agents pytest plugin adds ``fake_clock`` and ``telemetry_capture``; these are
the project's own: every state backend, and an in-memory tracer provider for the
``remote ...`` spans of executor workers running in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rh_agents.storage import (
    FileSystemStateBackend,
    InMemoryStateBackend,
    PostgresStateBackend,
    SQLiteStateBackend,
)
from rh_agents.telemetry.remote import use_worker_telemetry

Backend = InMemoryStateBackend | SQLiteStateBackend | FileSystemStateBackend | PostgresStateBackend

ROOT = Path(__file__).resolve().parents[1]


def outputs_under_hash_seeds(code: str, seeds: Iterable[str]) -> set[str]:
    """What ``python -c code`` prints (stripped) under each ``PYTHONHASHSEED``: set and
    str hash order changes with the seed, keys and fingerprints must not."""
    return {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)},
        ).stdout.strip()
        for seed in seeds
    }


BACKEND_KINDS = ["memory", "sqlite", "filesystem", "postgres"]
"""Every state backend; a new backend is added here (and in open_backend)."""


def open_backend(kind: str, tmp_path: Path, postgres_dsn: str | None = None) -> Backend:
    """A new, empty backend of ``kind`` (one of BACKEND_KINDS) under ``tmp_path``
    (Postgres: in a new schema of the database ``postgres_dsn``)."""
    if kind == "memory":
        return InMemoryStateBackend()
    if kind == "sqlite":
        return SQLiteStateBackend(tmp_path / "history.db")
    if kind == "postgres":
        assert postgres_dsn is not None
        return PostgresStateBackend(postgres_dsn, schema=f"t_{uuid.uuid4().hex[:12]}")
    return FileSystemStateBackend(tmp_path / "history")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Any]:
    """A private PostgreSQL cluster for the whole session (tests/postgres_server.py).

    Without PostgreSQL (or the ``postgres`` extra) the tests that need it are skipped
    with one clear message; under CI it is a failure."""
    from ci_env import missing

    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing("psycopg is not installed; pip install 'rh_agents[postgres]'")
    from postgres_server import PostgresCluster, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        missing(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); install "
            "Debian's postgresql package"
        )
    with PostgresCluster(bin_dir).start() as cluster:
        yield cluster


@pytest.fixture
def postgres_dsn(postgres_cluster: Any) -> str:
    """The DSN of a new, empty database of the private cluster."""
    return str(postgres_cluster.new_database())


@pytest.fixture(params=BACKEND_KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each state backend in turn (also an event journal), closed after the test."""
    dsn = None
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_cluster").dsn()
    opened = open_backend(request.param, tmp_path, dsn)
    yield opened
    opened.close()


@pytest.fixture
def worker_spans() -> Iterator[InMemorySpanExporter]:
    """The ``remote ...`` spans of workers in this process (threads, an in-process Dask
    worker), in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_worker_telemetry(provider)
    try:
        yield exporter
    finally:
        use_worker_telemetry(None)
        provider.shutdown()
