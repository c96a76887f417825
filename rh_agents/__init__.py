"""rh_agents: an OpenTelemetry-instrumented execution core for agent workflows.

The common names are re-exported here; the module paths under ``rh_agents.core`` are
the stable contract.
"""

from __future__ import annotations

import logging

from rh_agents.core import hooks as _hooks
from rh_agents.core.actors import LLM, Agent, BaseActor, Tool, ToolSet
from rh_agents.core.circuit_breaker import CircuitBreaker, CircuitBreakerRegistry, CircuitState
from rh_agents.core.clock import Clock, SystemClock
from rh_agents.core.errors import (
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

__all__ = [
    "LLM",
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
]
