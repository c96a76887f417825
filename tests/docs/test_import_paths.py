"""Every import path users have been shown keeps working after the layering moves.

The public API contract (shared/RH_AGENTS_API.md), the README, docs/ and examples/ name
module paths such as ``rh_agents.bus_handlers`` and ``rh_agents.core.executors``; the
code behind some of them moved into packages above the core, and the old paths
re-export the same objects.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Every public module of rh_agents before the layering change, with its ``__all__``: each
# of these names must still be importable from that module.
PUBLIC_BEFORE_LAYERING: dict[str, list[str]] = {
    "rh_agents": [
        "Agent",
        "BackoffStrategy",
        "BaseActor",
        "CircuitBreaker",
        "CircuitBreakerRegistry",
        "CircuitOpenError",
        "CircuitState",
        "Clock",
        "ErrorStrategy",
        "EventBus",
        "EventFailedError",
        "EventType",
        "ExecutionEvent",
        "ExecutionResult",
        "ExecutionState",
        "ExecutionStatus",
        "GroupStatus",
        "HistorySet",
        "LLM",
        "Limiter",
        "ParallelDisplayMode",
        "ParallelEventGroup",
        "ParallelExecutionManager",
        "ParallelGroupError",
        "ParallelTimeoutError",
        "ReplayMode",
        "RetryConfig",
        "RhAgentsError",
        "StateError",
        "StateMetadata",
        "StateSnapshot",
        "StateStatus",
        "SystemClock",
        "Tool",
        "ToolSet",
        "UsageError",
        "__version__",
    ],
    "rh_agents.bus_handlers": ["EventPrinter", "ParallelEventPrinter"],
    "rh_agents.cli": ["SpanRecord", "load_spans", "main", "render_traces"],
    "rh_agents.core.actors": [
        "Agent",
        "BaseActor",
        "Condition",
        "Handler",
        "LLM",
        "RESERVED_ADDRESS_CHARS",
        "Tool",
        "ToolSet",
    ],
    "rh_agents.core.cache": [
        "CacheBackend",
        "CacheEntry",
        "InMemoryCacheBackend",
        "ResultCache",
        "SQLiteCacheBackend",
        "SYSTEM_WALL_CLOCK",
        "SystemWallClock",
        "UncacheableInputError",
        "WallClock",
        "make_cache_key",
    ],
    "rh_agents.core.circuit_breaker": [
        "CircuitBreaker",
        "CircuitBreakerRegistry",
        "CircuitBreakerStatistics",
        "CircuitPermit",
        "CircuitState",
        "RejectListener",
        "StateListener",
    ],
    "rh_agents.core.clock": ["Clock", "SYSTEM_CLOCK", "SystemClock"],
    "rh_agents.core.context": ["Frame", "SEPARATOR", "current_frame", "group_id_for"],
    "rh_agents.core.errors": [
        "CircuitOpenError",
        "ConditionFailedError",
        "DuplicateNameError",
        "EventFailedError",
        "ExecutionFailure",
        "ImmutableEventError",
        "InputValidationError",
        "InvalidArgumentError",
        "InvalidWorkError",
        "LifecycleError",
        "OutputValidationError",
        "ResultSerializationError",
        "RhAgentsError",
        "SchemaVersionError",
        "SnapshotMismatchError",
        "StateCorruptedError",
        "StateError",
        "StateNotFoundError",
        "UsageError",
    ],
    "rh_agents.core.events": ["EventKind", "ExecutionEvent", "ExecutionResult"],
    "rh_agents.core.execution": [
        "DEFAULT_MAX_RESULT_BYTES",
        "DEFAULT_SUBSCRIBER_QUEUE_SIZE",
        "DEFAULT_SUBSCRIBER_TIMEOUT",
        "EventBus",
        "EventStream",
        "ExecutionState",
        "HistorySet",
    ],
    "rh_agents.core.executors": [
        "ASYNCIO_EXECUTOR",
        "AsyncioExecutor",
        "ItemExecutor",
        "ProcessPoolItemExecutor",
        "RemoteCall",
        "RemoteCancelledError",
        "RemoteExecutionError",
        "RemoteExecutor",
        "RemoteExecutorBase",
        "RemoteItem",
        "UnpicklableWorkError",
        "WorkItem",
        "WorkerLostError",
        "execute_remote",
        "setup_worker_telemetry",
        "use_worker_telemetry",
    ],
    "rh_agents.core.history": [
        "HistorySet",
        "event_to_record",
        "input_fingerprint",
        "record_to_event",
    ],
    "rh_agents.core.hooks": [
        "GroupInfo",
        "Instrumentation",
        "NOOP",
        "NoopInstrumentation",
        "Outcome",
        "ambient_telemetry",
    ],
    "rh_agents.core.limiter": ["Limiter", "LimiterStatistics"],
    "rh_agents.core.parallel": [
        "ErrorStrategy",
        "GroupStatus",
        "ParallelDisplayMode",
        "ParallelEventGroup",
        "ParallelExecutionManager",
        "ParallelGroupError",
        "ParallelGroupTracker",
        "ParallelTimeoutError",
    ],
    "rh_agents.core.retry": ["BackoffStrategy", "RetryConfig"],
    "rh_agents.core.state_recovery": [
        "ReplayMode",
        "SCHEMA_VERSION",
        "StateMetadata",
        "StateSnapshot",
        "StateStatus",
    ],
    "rh_agents.core.types": ["EventType", "ExecutionStatus"],
    "rh_agents.distributed": ["DaskExecutor", "dask_setup", "dask_teardown", "worker_telemetry"],
    "rh_agents.state_backends": [
        "ArtifactBackend",
        "ArtifactNotFoundError",
        "EventJournal",
        "FileSystemArtifactBackend",
        "FileSystemStateBackend",
        "InMemoryStateBackend",
        "SQLiteStateBackend",
        "StateBackend",
        "StateStorageError",
        "require_state",
    ],
    "rh_agents.telemetry": [
        "DEFAULT_TRACE_FILE",
        "DURATION_BUCKETS",
        "GROUP_DURATION_BUCKETS",
        "JsonLinesSpanExporter",
        "MetricsPortInUseError",
        "RhAgentsMetrics",
        "SEMCONV_VERSION",
        "Telemetry",
        "TelemetryHandle",
        "WAIT_BUCKETS",
        "metrics_for",
        "setup",
        "span_to_dict",
    ],
    "rh_agents.telemetry.metrics": [
        "DEFAULT_MAX_LABEL_VALUES",
        "DURATION_BUCKETS",
        "EventSeries",
        "GROUP_DURATION_BUCKETS",
        "LiveGroup",
        "OTHER",
        "RhAgentsMetrics",
        "WAIT_BUCKETS",
        "metrics_for",
    ],
    "rh_agents.testing": ["FakeClock", "TelemetryCapture", "capture_telemetry"],
    "rh_agents.testing.clock": ["FakeClock"],
    "rh_agents.testing.pytest_plugin": ["fake_clock", "rh_telemetry"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC_BEFORE_LAYERING))
def test_every_public_name_keeps_its_module_path(module: str) -> None:
    imported = importlib.import_module(module)
    missing = [n for n in PUBLIC_BEFORE_LAYERING[module] if not hasattr(imported, n)]
    assert not missing, (module, missing)


# old module path -> (new module path, names that must be the same objects in both)
MOVED = {
    "rh_agents.state_backends": (
        "rh_agents.storage",
        [
            "ArtifactBackend",
            "ArtifactNotFoundError",
            "EventJournal",
            "FileSystemArtifactBackend",
            "FileSystemStateBackend",
            "InMemoryStateBackend",
            "SQLiteStateBackend",
            "StateBackend",
            "StateStorageError",
            "require_state",
        ],
    ),
    "rh_agents.bus_handlers": ("rh_agents.printing", ["EventPrinter", "ParallelEventPrinter"]),
    "rh_agents.distributed": (
        "rh_agents.executors.dask",
        ["DaskExecutor", "dask_setup", "dask_teardown", "worker_telemetry"],
    ),
    "rh_agents.core.executors": (
        "rh_agents.executors",
        [
            "ProcessPoolItemExecutor",
            "RemoteExecutorBase",
            "execute_remote",
            "dumps_task",
            "task_key",
            "unpack_outcome",
        ],
    ),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_re_export_the_moved_objects(old: str) -> None:
    new, names = MOVED[old]
    old_module = importlib.import_module(old)
    new_module = importlib.import_module(new)
    for name in names:
        assert getattr(old_module, name) is getattr(new_module, name), (old, name)


def test_worker_telemetry_helpers_keep_their_core_executors_path() -> None:
    from rh_agents.core.executors import setup_worker_telemetry, use_worker_telemetry
    from rh_agents.telemetry import remote

    assert setup_worker_telemetry is remote.setup_worker_telemetry
    assert use_worker_telemetry is remote.use_worker_telemetry


def test_an_unknown_name_of_core_executors_is_still_an_attribute_error() -> None:
    import rh_agents.core.executors as executors

    with pytest.raises(AttributeError, match="no attribute 'NoSuchExecutor'"):
        executors.NoSuchExecutor  # noqa: B018


def test_the_dask_preload_module_keeps_its_old_name() -> None:
    # `dask worker --preload rh_agents.distributed` imports the module and calls these.
    code = (
        "import sys, rh_agents.distributed as d\n"
        "assert callable(d.dask_setup) and callable(d.dask_teardown)\n"
        "bad = [m for m in ('dask', 'distributed', 'cloudpickle') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ``from rh_agents.x import a, b`` (also over several lines, in parentheses)
_IMPORT = re.compile(r"from (rh_agents[\w.]*) import \(?([\w, \n]+?)\)?(?:\n|$)", re.MULTILINE)
_ATTRIBUTE_PATH = re.compile(r"`(rh_agents(?:\.\w+)+)`")


def _shown_sources() -> list[Path]:
    api = ROOT.parent / "shared" / "RH_AGENTS_API.md"
    found = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found += sorted((ROOT / "examples").glob("*.py"))
    return [*found, api] if api.exists() else found


def _names_a_module(path: str) -> bool:
    """Whether ``path`` starts with a module of rh_agents (span attributes such as
    ``rh_agents.group.name`` look like paths too)."""
    import pkgutil

    import rh_agents

    top = {m.name for m in pkgutil.iter_modules(rh_agents.__path__)}
    return path.split(".")[1] in top


def _resolves(path: str) -> bool:
    """Whether a dotted path is a module, or an attribute of one."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def test_every_import_shown_in_the_docs_and_examples_works() -> None:
    checked = 0
    for source in _shown_sources():
        text = source.read_text()
        for module, names in _IMPORT.findall(text):
            imported = importlib.import_module(module)
            for name in (n.strip() for n in names.replace("\n", ",").split(",")):
                if name and name != "as":
                    assert hasattr(imported, name.split(" as ")[0]), (source.name, module, name)
                    checked += 1
        for path in filter(_names_a_module, _ATTRIBUTE_PATH.findall(text)):
            assert _resolves(path), (source.name, path)
            checked += 1
    assert checked > 50
