"""What ExecutionState keeps of the options it is given, and what a restored state
(``load_from_state_id`` / ``from_snapshot``) takes over from its caller and its snapshot."""

from __future__ import annotations

from typing import Any

import pytest

from rh_agents import ExecutionEvent, ExecutionState, Tool
from rh_agents.core.bus import EventBus
from rh_agents.core.circuit_breaker import CircuitBreakerRegistry
from rh_agents.core.errors import InvalidArgumentError, LifecycleError, SnapshotMismatchError
from rh_agents.core.limiter import Limiter
from rh_agents.core.parallel import ErrorStrategy
from rh_agents.core.replay import ReplayMode
from rh_agents.core.state_recovery import StateMetadata, StateStatus
from rh_agents.state_backends import InMemoryStateBackend
from rh_agents.testing.clock import FakeClock


async def echo(data: Any, extra: Any, state: Any) -> Any:
    return data


class Unencodable:
    def __repr__(self) -> str:
        return "<Unencodable 7>"


async def recorded_run(version: str = "1") -> tuple[InMemoryStateBackend, ExecutionState]:
    backend = InMemoryStateBackend()
    state = ExecutionState(state_id="run-1", state_backend=backend, telemetry=False)
    await ExecutionEvent(actor=Tool(name="echo", handler=echo, version=version))(1, {}, state)
    return backend, state


def test_the_state_keeps_the_backends_and_registries_it_is_given() -> None:
    artifacts, breakers = object(), CircuitBreakerRegistry()
    state = ExecutionState(artifact_backend=artifacts, circuit_breakers=breakers)  # type: ignore[arg-type]
    assert state.artifact_backend is artifacts
    assert state.circuit_breakers is breakers
    default = ExecutionState()
    assert default.artifact_backend is None
    assert isinstance(default.circuit_breakers, CircuitBreakerRegistry)
    assert default.circuit_breakers is not ExecutionState().circuit_breakers  # one each


def test_state_ids_are_unique_by_default() -> None:
    ids = {ExecutionState().state_id for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == 36 for i in ids)  # UUIDs


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "100"])
def test_max_result_bytes_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        ExecutionState(max_result_bytes=value)
    assert str(refused.value) == (
        "max_result_bytes must be a positive integer (bytes) or None for no limit, "
        f"got {value!r}. The default is 16777216 (16 MiB)."
    )


@pytest.mark.parametrize("value", [1, 2, None])
def test_max_result_bytes_accepts_any_positive_size_or_none(value: int | None) -> None:
    assert ExecutionState(max_result_bytes=value).max_result_bytes == value


def test_record_input_hashes_and_replay_mode_name_what_they_accept() -> None:
    with pytest.raises(InvalidArgumentError) as hashes:
        ExecutionState(record_input_hashes="yes")  # type: ignore[arg-type]
    assert str(hashes.value) == (
        "record_input_hashes must be True, False or None (automatic), got 'yes'."
    )
    with pytest.raises(InvalidArgumentError) as mode:
        ExecutionState(replay_mode="fast")
    assert str(mode.value) == (
        "Unknown replay_mode 'fast'; use one of: normal, republish_all, validation."
    )


def test_context_misuse_is_explained() -> None:
    state = ExecutionState()
    with pytest.raises(InvalidArgumentError) as empty:
        state.push_context("")
    assert str(empty.value) == "push_context() needs a non-empty name."
    with pytest.raises(LifecycleError) as unbalanced:
        state.pop_context()
    assert str(unbalanced.value) == (
        "pop_context() was called more often than push_context() (here, in '<root>'); "
        "pop only what this task pushed."
    )
    with pytest.raises(LifecycleError) as without_backend:
        state.save_checkpoint()
    assert str(without_backend.value) == (
        "save_checkpoint() needs a state_backend; pass one to ExecutionState(...)."
    )


async def test_a_checkpoint_saves_the_status_and_metadata_given() -> None:
    backend, state = await recorded_run()
    assert state.save_checkpoint(StateStatus.COMPLETED, StateMetadata(pipeline_name="p"))
    stored = backend.load_state("run-1")
    assert stored is not None
    assert stored.status is StateStatus.COMPLETED
    assert stored.metadata.pipeline_name == "p"
    assert backend.list_states(status="completed") == ["run-1"]


async def test_a_snapshot_keeps_artifact_references_and_shows_unencodable_storage() -> None:
    _, state = await recorded_run()
    state.artifact_refs["report"] = "artifacts/report-1"
    state.storage["odd"] = Unencodable()
    snapshot = state.to_snapshot()
    assert snapshot.artifact_refs == {"report": "artifacts/report-1"}
    assert snapshot.execution_state["storage"] == {"odd": "<Unencodable 7>"}
    restored = ExecutionState.from_snapshot(snapshot)
    assert restored.artifact_refs == {"report": "artifacts/report-1"}


def _load(backend: InMemoryStateBackend, state: ExecutionState, **options: Any) -> ExecutionState:
    return ExecutionState.load_from_state_id(state.state_id, backend, **options)


def _from_snapshot(
    backend: InMemoryStateBackend, state: ExecutionState, **options: Any
) -> ExecutionState:
    return ExecutionState.from_snapshot(state.to_snapshot(), **options)


@pytest.mark.parametrize(
    ("restore", "mode", "expected"),
    [
        (_load, ReplayMode.VALIDATION, ReplayMode.VALIDATION),
        (_from_snapshot, "republish_all", ReplayMode.REPUBLISH_ALL),
    ],
    ids=["load_from_state_id", "from_snapshot"],
)
async def test_a_restored_state_takes_the_callers_options(
    restore: Any, mode: Any, expected: ReplayMode
) -> None:
    backend, state = await recorded_run()
    artifacts, bus, clock = object(), EventBus(), FakeClock()
    restored = restore(
        backend,
        state,
        artifact_backend=artifacts,
        event_bus=bus,
        replay_mode=mode,
        pipeline_name="triage",
        clock=clock,
    )
    assert restored.artifact_backend is artifacts
    assert restored.event_bus is bus
    assert restored.replay_mode is expected
    assert restored.clock is clock
    assert restored.metadata.pipeline_name == "triage"  # adopted: the run recorded none


async def test_a_state_from_a_snapshot_checks_the_program_that_resumes_it() -> None:
    _, state = await recorded_run(version="1")
    restored = ExecutionState.from_snapshot(state.to_snapshot())
    newer = Tool(name="echo", handler=echo, version="2")
    with pytest.raises(SnapshotMismatchError, match=r"version"):
        await ExecutionEvent(actor=newer)(1, {}, restored)


def test_state_parallel_has_the_documented_defaults_and_passes_arguments_on() -> None:
    state = ExecutionState(telemetry=False)
    default = state.parallel()
    assert default.max_workers == 5
    assert default.timeout is None and default.limiter is None
    assert default.error_strategy is ErrorStrategy.FAIL_SLOW
    assert default.policy is None  # no retries, breaker, limiter or item timeout

    limiter = Limiter("api", max_concurrency=2)
    group = state.parallel(
        max_workers=3, error_strategy="fail_fast", timeout=2.5, limiter=limiter, max_retries=1
    )
    assert group.max_workers == 3 and group.timeout == 2.5 and group.limiter is limiter
    assert group.error_strategy is ErrorStrategy.FAIL_FAST
    assert group.policy is not None and group.policy.retry is not None
    assert group.policy.retry.max_attempts == 2
    assert group.policy.retry.initial_delay == 1.0  # retry_delay's default
