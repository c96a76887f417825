"""Every span attribute, span event and metric name rh_agents emits, in one place.

The ``gen_ai.*`` names follow the OpenTelemetry GenAI semantic conventions as last
released with the semantic conventions (:data:`SEMCONV_VERSION`; from 1.42.0 on they
are developed in the separate ``semantic-conventions-genai`` repository, which has not
published a release). ``rh_agents.*`` names are this library's own. docs/telemetry.md
documents each one; a test checks that every name used by the instrumentation is here.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ATTR_AGENT_NAME",
    "ATTR_CONVERSATION_ID",
    "ATTR_ERROR_TYPE",
    "ATTR_EXCEPTION_MESSAGE",
    "ATTR_EXCEPTION_STACKTRACE",
    "ATTR_EXCEPTION_TYPE",
    "ATTR_OPERATION_NAME",
    "ATTR_PROVIDER_NAME",
    "ATTR_REQUEST_MODEL",
    "ATTR_RESPONSE_FINISH_REASONS",
    "ATTR_RESPONSE_MODEL",
    "ATTR_TOKEN_TYPE",
    "ATTR_TOOL_NAME",
    "ATTR_USAGE_INPUT_TOKENS",
    "ATTR_USAGE_OUTPUT_TOKENS",
    "ERROR_TYPE_PARTIAL_FAILURE",
    "EVENT_EXCEPTION",
    "METRIC_OPERATION_DURATION",
    "METRIC_TOKEN_USAGE",
    "OPERATION_DURATION_BUCKETS",
    "SCHEMA_URL",
    "SEMCONV_VERSION",
    "TOKEN_USAGE_BUCKETS",
    "Op",
    "Rh",
    "TokenType",
]

SEMCONV_VERSION: Final = "1.41.0"
"""The semantic conventions release whose GenAI conventions the telemetry follows."""

SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
"""The schema URL of the tracer and meter."""

# ----------------------------------------------------------- GenAI conventions

ATTR_OPERATION_NAME: Final = "gen_ai.operation.name"
ATTR_AGENT_NAME: Final = "gen_ai.agent.name"
ATTR_TOOL_NAME: Final = "gen_ai.tool.name"
ATTR_PROVIDER_NAME: Final = "gen_ai.provider.name"
ATTR_REQUEST_MODEL: Final = "gen_ai.request.model"
ATTR_RESPONSE_MODEL: Final = "gen_ai.response.model"
ATTR_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
ATTR_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
ATTR_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
ATTR_CONVERSATION_ID: Final = "gen_ai.conversation.id"
ATTR_TOKEN_TYPE: Final = "gen_ai.token.type"
ATTR_ERROR_TYPE: Final = "error.type"
ATTR_EXCEPTION_MESSAGE: Final = "exception.message"
ATTR_EXCEPTION_TYPE: Final = "exception.type"
ATTR_EXCEPTION_STACKTRACE: Final = "exception.stacktrace"
EVENT_EXCEPTION: Final = "exception"
"""The span event of a recorded exception (messages and stack traces are bounded)."""

ERROR_TYPE_PARTIAL_FAILURE: Final = "_partial_failure"
"""``error.type`` of a group span whose group returned its results with failed items
(nothing was raised, so no single exception type describes it)."""


class Op:
    """Values of ``gen_ai.operation.name`` (and the ``operation`` metric label)."""

    INVOKE_AGENT: Final = "invoke_agent"
    EXECUTE_TOOL: Final = "execute_tool"
    CHAT: Final = "chat"
    PARALLEL_ITEM: Final = "parallel_item"
    """rh_agents' own: a retried group item that never reached an actor."""


class TokenType:
    """Values of ``gen_ai.token.type`` (and the ``token_type`` metric label)."""

    INPUT: Final = "input"
    OUTPUT: Final = "output"


METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
"""Histogram of tokens per operation and token type, unit ``{token}``."""

METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
"""Histogram of GenAI operation durations, unit ``s``."""

TOKEN_USAGE_BUCKETS: Final = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
"""The conventions' explicit bucket boundaries of ``gen_ai.client.token.usage``."""

OPERATION_DURATION_BUCKETS: Final = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
"""The conventions' explicit bucket boundaries of ``gen_ai.client.operation.duration``."""


# --------------------------------------------------------------- rh_agents' own


class Rh:
    """rh_agents' own span attributes, span events and Prometheus metric names."""

    # span attributes
    ACTOR_NAME: Final = "rh_agents.actor.name"
    ADDRESS: Final = "rh_agents.event.address"
    OUTCOME: Final = "rh_agents.outcome"
    REPLAYED: Final = "rh_agents.replayed"
    CACHED: Final = "rh_agents.cached"
    GROUP_ID: Final = "rh_agents.parallel.group_id"
    INDEX: Final = "rh_agents.parallel.index"
    WAIT: Final = "rh_agents.parallel.wait.duration"
    GROUP_NAME: Final = "rh_agents.parallel.name"
    MAX_WORKERS: Final = "rh_agents.parallel.max_workers"
    SIZE: Final = "rh_agents.parallel.size"
    ERROR_STRATEGY: Final = "rh_agents.parallel.error_strategy"
    TIMEOUT: Final = "rh_agents.parallel.timeout"
    COMPLETED: Final = "rh_agents.parallel.completed"
    FAILED: Final = "rh_agents.parallel.failed"
    CANCELLED: Final = "rh_agents.parallel.cancelled"
    STATUS: Final = "rh_agents.parallel.status"
    TIMED_OUT: Final = "rh_agents.parallel.timed_out"
    ITEM: Final = "rh_agents.parallel.item"
    ATTEMPT: Final = "rh_agents.attempt"
    """On the event span of a group item: which attempt of the item it runs (1-based)."""
    RETRY_ATTEMPT: Final = "rh_agents.retry.attempt"
    RETRY_DELAY: Final = "rh_agents.retry.delay"
    BREAKER_NAME: Final = "rh_agents.circuit_breaker.name"
    BREAKER_FROM: Final = "rh_agents.circuit_breaker.from"
    BREAKER_TO: Final = "rh_agents.circuit_breaker.to"

    # span events
    EVENT_RETRY: Final = "retry"
    EVENT_REJECTED: Final = "circuit_breaker.rejected"
    EVENT_STATE_CHANGE: Final = "circuit_breaker.state_change"
    EVENT_TIMEOUT: Final = "timeout"

    # Prometheus metrics (counters get ``_total`` in the exposition)
    EVENTS: Final = "rh_agents_events"
    EVENT_ERRORS: Final = "rh_agents_event_errors"
    EVENT_DURATION: Final = "rh_agents_event_duration_seconds"
    RETRIES: Final = "rh_agents_retries"
    TOKENS: Final = "rh_agents_tokens"
    BREAKER_TRIPS: Final = "rh_agents_circuit_breaker_trips"
    BREAKER_REJECTIONS: Final = "rh_agents_circuit_breaker_rejections"
    BREAKER_STATE: Final = "rh_agents_circuit_breaker_state"
    BREAKER_TRANSITIONS: Final = "rh_agents_circuit_breaker_transitions"
    BREAKER_OPEN_SECONDS: Final = "rh_agents_circuit_breaker_open_seconds"
    FINAL_OUTCOMES: Final = "rh_agents_final_outcomes"
    FINAL_ERRORS: Final = "rh_agents_final_errors"
    WORKFLOWS: Final = "rh_agents_workflows"
    MODEL_DURATION: Final = "rh_agents_model_duration_seconds"
    JOURNAL_WRITE: Final = "rh_agents_journal_write_duration_seconds"
    EVENT_LOOP_LAG: Final = "rh_agents_event_loop_lag_seconds"
    SPANS_EXPORTED: Final = "rh_agents_spans_exported"
    SPANS_EXPORT_FAILED: Final = "rh_agents_spans_export_failed"
    SPANS_DROPPED: Final = "rh_agents_spans_dropped"
    SEMAPHORE_WAIT: Final = "rh_agents_semaphore_wait_seconds"
    GROUPS: Final = "rh_agents_parallel_groups"
    GROUP_DURATION: Final = "rh_agents_parallel_group_duration_seconds"
    IN_FLIGHT: Final = "rh_agents_parallel_in_flight"
    QUEUED: Final = "rh_agents_parallel_queued"
    MAX_WORKERS_GAUGE: Final = "rh_agents_parallel_max_workers"
