"""rh_agents: an OpenTelemetry-instrumented execution core for agent workflows.

The common names are re-exported here; the module paths under ``rh_agents.core`` are
the stable contract.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from rh_agents.core import executors as _core_executors
from rh_agents.core import hooks as _hooks
from rh_agents.core.actors import LLM, Agent, BaseActor, Tool, ToolSet
from rh_agents.core.circuit_breaker import CircuitBreaker, CircuitBreakerRegistry, CircuitState
from rh_agents.core.clock import Clock, SystemClock
from rh_agents.core.errors import (
    AttemptTimeoutError,
    CircuitOpenError,
    EventFailedError,
    RhAgentsError,
    StateError,
    UsageError,
)
from rh_agents.core.events import ExecutionEvent, ExecutionResult
from rh_agents.core.execution import EventBus, ExecutionState, HistorySet
from rh_agents.core.limiter import Limiter
from rh_agents.core.parallel import (
    ErrorStrategy,
    GroupStatus,
    ParallelDisplayMode,
    ParallelEventGroup,
    ParallelExecutionManager,
    ParallelGroupError,
    ParallelTimeoutError,
)
from rh_agents.core.policy import Policy
from rh_agents.core.retry import BackoffStrategy, RetryConfig
from rh_agents.core.state_recovery import ReplayMode, StateMetadata, StateSnapshot, StateStatus
from rh_agents.core.types import EventType, ExecutionStatus

__version__ = "0.1.0"


def _default_telemetry() -> object:
    # Imported on the first state created without telemetry=, so importing rh_agents
    # stays cheap and sets nothing global.
    from rh_agents.telemetry import default_telemetry

    return default_telemetry()


_hooks.set_default_telemetry_factory(_default_telemetry)

# A library logs but never configures logging: without this, warnings (a failed group,
# an isolated subscriber error) would go to stderr of applications that set up nothing.
logging.getLogger("rh_agents").addHandler(logging.NullHandler())


def _inject_trace_context() -> dict[str, str]:
    # Imported on first use: importing rh_agents imports no OpenTelemetry.
    from rh_agents.telemetry.remote import inject_trace_context

    return inject_trace_context()


# The core ships the trace context of the current span with remote work through this
# hook (it never imports OpenTelemetry itself).
_hooks.set_trace_propagation(_inject_trace_context)


def _loader(module: str, name: str) -> Callable[[], Any]:
    return lambda: getattr(importlib.import_module(module), name)


# Names that moved from rh_agents.core.executors to the layers above the core stay
# importable from there (see rh_agents.core.executors.serve_moved); loaded on first use.
_MOVED_FROM_CORE_EXECUTORS = {
    "ProcessPoolItemExecutor": "rh_agents.executors.process",
    "RemoteExecutorBase": "rh_agents.executors.remote",
    "dumps_task": "rh_agents.executors.remote",
    "task_key": "rh_agents.executors.remote",
    "execute_remote": "rh_agents.executors.worker",
    "unpack_outcome": "rh_agents.executors.worker",
    "setup_worker_telemetry": "rh_agents.telemetry.remote",
    "use_worker_telemetry": "rh_agents.telemetry.remote",
}
for _name, _module in _MOVED_FROM_CORE_EXECUTORS.items():
    _core_executors.serve_moved(_name, _loader(_module, _name))
del _name, _module

__all__ = [
    "LLM",
    "Agent",
    "AttemptTimeoutError",
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
    "Limiter",
    "ParallelDisplayMode",
    "ParallelEventGroup",
    "ParallelExecutionManager",
    "ParallelGroupError",
    "ParallelTimeoutError",
    "Policy",
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
]
