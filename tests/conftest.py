"""Fixtures shared by the test folders (one folder per concern of rh_agents).

The rh_agents pytest plugin adds ``fake_clock`` and ``telemetry_capture``; these are
the project's own: every state backend, and an in-memory tracer provider for the
``remote ...`` spans of executor workers running in this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rh_agents.storage import FileSystemStateBackend, InMemoryStateBackend, SQLiteStateBackend
from rh_agents.telemetry.remote import use_worker_telemetry

Backend = InMemoryStateBackend | SQLiteStateBackend | FileSystemStateBackend

BACKEND_KINDS = ["memory", "sqlite", "filesystem"]
"""Every state backend; a new backend is added here (and in open_backend)."""


def open_backend(kind: str, tmp_path: Path) -> Backend:
    """A new, empty backend of ``kind`` (one of BACKEND_KINDS) under ``tmp_path``."""
    if kind == "memory":
        return InMemoryStateBackend()
    if kind == "sqlite":
        return SQLiteStateBackend(tmp_path / "history.db")
    return FileSystemStateBackend(tmp_path / "history")


@pytest.fixture(params=BACKEND_KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each state backend in turn (also an event journal), closed after the test."""
    opened = open_backend(request.param, tmp_path)
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
