"""The rh_agents demo: ``python -m rh_agents.demo`` (``make demo``).

An orchestrator agent fans out document agents in a parallel group; each document agent
summarizes its chunks with a simulated LLM (seeded latency and transient errors, absorbed
by group retries) and looks them up with a simulated search API behind a shared circuit
breaker (a seeded outage trips it; it recovers after its cooldown), on simulated time
paced like real time (:class:`PacedClock`), so a seed always gives the same run.
Everything runs
locally: the history in SQLite, spans in a JSON-lines file (or OTLP when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set), Prometheus metrics on 127.0.0.1. See
``docs/demo.md``.
"""

from __future__ import annotations

from rh_agents.demo._app import build_parser, main
from rh_agents.demo._clock import PacedClock
from rh_agents.demo.pipeline import DemoPipeline, Workload, make_corpus, run_pipeline

__all__ = [
    "DemoPipeline",
    "PacedClock",
    "Workload",
    "build_parser",
    "main",
    "make_corpus",
    "run_pipeline",
]
