"""The history record round trip: every field of every entry survives every backend.

A resumed or restored run sees its history only as it was written and read back, so a
field dropped on either side is lost without a sound. Any entry, with any combination
of fields set, is recorded through a state whose backend journals it, read back
(``load_from_state_id``), snapshotted, stored, loaded and restored again, and compared
field by field at each step. The record format itself (its keys and their encoding) is
pinned: old journals must stay readable.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import pytest
from conftest import Backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rh_agents.core.actors import Tool
from rh_agents.core.errors import StateCorruptedError
from rh_agents.core.events import EventKind, ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.history import HistorySet, event_to_record, record_to_event
from rh_agents.core.policy import Policy
from rh_agents.core.retry import RetryConfig
from rh_agents.core.types import EventType, ExecutionStatus
from rh_agents.core.usage import TokenUsage, record_usage
from rh_agents.testing.clock import FakeClock

FIELDS = (
    "kind",
    "address",
    "tag",
    "actor_name",
    "event_type",
    "execution_status",
    "timestamp",
    "execution_time",
    "message",
    "detail",
    "error_type",
    "from_cache",
    "is_replayed",
    "group_id",
    "parallel_index",
    "is_parallel",
    "retry_attempt",
    "retry_delay",
    "original_error",
    "metadata",
    "result",
    "input_hash",
    "usage",
)
"""Every field of an entry that its record carries (``actor`` is not restored; ``is_retry``
and ``skip_republish`` are not part of the record)."""

_ids = itertools.count()

texts = st.text(max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
usages = st.builds(
    TokenUsage,
    input_tokens=st.integers(0, 10**9),
    output_tokens=st.integers(0, 10**9),
    # "" reads back as None: a model without a name is no model (usage.py normalizes it)
    response_model=st.none() | st.text(min_size=1, max_size=12),
    finish_reasons=st.lists(texts, max_size=3).map(tuple),
)


@st.composite
def entries(draw: st.DrawFn) -> ExecutionEvent[Any]:
    """An entry with any combination of its recorded fields set."""
    return ExecutionEvent(
        kind=draw(st.sampled_from([EventKind.EVENT, EventKind.GROUP, EventKind.DIVERGENCE])),
        address=draw(texts),
        tag=draw(texts),
        actor_name=draw(st.none() | texts),
        event_type=draw(st.none() | st.sampled_from(EventType)),
        # RECOVERED marks a replayed call in the live history only: a resume never
        # journals it again (tests/storage covers that), so it has no round trip.
        execution_status=draw(
            st.sampled_from([s for s in ExecutionStatus if s is not ExecutionStatus.RECOVERED])
        ),
        timestamp=draw(finite),
        execution_time=draw(st.none() | finite),
        message=draw(st.none() | texts),
        detail=draw(st.none() | texts),
        error_type=draw(st.none() | texts),
        from_cache=draw(st.booleans()),
        is_replayed=draw(st.booleans()),
        group_id=draw(st.none() | texts),
        parallel_index=draw(st.none() | st.integers(0, 10**6)),
        is_parallel=draw(st.booleans()),
        retry_attempt=draw(st.integers(0, 100)),
        retry_delay=draw(st.none() | st.floats(0, 1e6)),
        original_error=draw(st.none() | texts),
        metadata=draw(st.dictionaries(texts, json_values, max_size=3)),
        result=draw(json_values),
        input_hash=draw(st.none() | st.text("0123456789abcdef", min_size=24, max_size=24)),
        usage=draw(st.none() | usages),
    )


def assert_same_entries(restored: HistorySet, written: list[ExecutionEvent[Any]]) -> None:
    """Every recorded field of every entry, in order; and the records themselves."""
    assert len(restored) == len(written)
    for position, (got, expected) in enumerate(zip(restored.events, written, strict=True)):
        for field in FIELDS:
            assert getattr(got, field) == getattr(expected, field), (position, field)
        assert got.name == expected.actor_name
        assert got.actor is None
    assert restored.to_records() == HistorySet(written).to_records()


async def record(state: ExecutionState, written: list[ExecutionEvent[Any]]) -> None:
    for entry in written:
        await state.add_event(entry)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(written=st.lists(entries(), min_size=1, max_size=3))
def test_every_field_survives_journal_snapshot_and_restore(
    backend: Backend, written: list[ExecutionEvent[Any]]
) -> None:
    state_id = f"run-{next(_ids)}"
    asyncio.run(record(ExecutionState(state_id=state_id, state_backend=backend), written))

    journal = backend.load_events(state_id)
    assert [r["seq"] for r in journal] == list(range(1, len(written) + 1))

    resumed = ExecutionState.load_from_state_id(state_id, backend)
    assert_same_entries(resumed.history, written)

    assert backend.save_state(resumed.to_snapshot())
    stored = backend.load_state(state_id)
    assert stored is not None
    assert_same_entries(ExecutionState.from_snapshot(stored).history, written)


@given(written=st.lists(entries(), max_size=4))
@settings(max_examples=30, deadline=None)
def test_records_read_back_as_the_entries_they_were_written_from(
    written: list[ExecutionEvent[Any]],
) -> None:
    records = HistorySet(written).to_records()
    assert [r["seq"] for r in records] == list(range(1, len(written) + 1))
    assert_same_entries(HistorySet.from_records(records), written)


def full_entry() -> ExecutionEvent[Any]:
    return ExecutionEvent(
        kind=EventKind.EVENT,
        address="pipeline/search::first",
        tag="first",
        actor_name="search",
        event_type=EventType.TOOL_CALL,
        execution_status=ExecutionStatus.RETRYING,
        timestamp=1767225600.25,
        execution_time=0.5,
        message="attempt 1 failed",
        detail="Traceback ...",
        error_type="TimeoutError",
        from_cache=True,
        is_replayed=True,
        group_id="group-7",
        parallel_index=3,
        is_parallel=True,
        retry_attempt=2,
        retry_delay=1.5,
        original_error="TimeoutError: slow",
        metadata={"k": [1, "two"]},
        result={"answer": "ü", "score": 0.5},
        input_hash="0123456789abcdef01234567",
        usage=TokenUsage(
            input_tokens=12, output_tokens=3, response_model="m", finish_reasons=("stop",)
        ),
    )


GOLDEN_RECORD = {
    "seq": 7,
    "kind": "event",
    "address": "pipeline/search::first",
    "status": "retrying",
    "actor": "search",
    "event_type": "tool_call",
    "tag": "first",
    "timestamp": 1767225600.25,
    "execution_time": 0.5,
    "message": "attempt 1 failed",
    "detail": "Traceback ...",
    "error_type": "TimeoutError",
    "from_cache": True,
    "is_replayed": True,
    "group_id": "group-7",
    "parallel_index": 3,
    "is_parallel": True,
    "retry_attempt": 2,
    "retry_delay": 1.5,
    "original_error": "TimeoutError: slow",
    "metadata": {"k": [1, "two"]},
    "result": {"answer": "ü", "score": 0.5},
    "input_hash": "0123456789abcdef01234567",
    "usage": {
        "input_tokens": 12,
        "output_tokens": 3,
        "response_model": "m",
        "finish_reasons": ["stop"],
    },
}
"""The stored form of an entry with every field set (format version 2: optional keys are
stored only when set, so a ``result_type`` of None is left out). Journals hold exactly
this, so a change of a key or an encoding is a deliberate, versioned decision (with a
reader for the old form), never an accident."""


def test_the_record_format_is_pinned() -> None:
    assert event_to_record(full_entry(), 7) == GOLDEN_RECORD
    read = record_to_event(GOLDEN_RECORD)
    for field in FIELDS:
        assert getattr(read, field) == getattr(full_entry(), field), field
    assert read.is_retry is True  # not stored: a RETRYING entry is a retry


def test_an_old_record_with_only_the_required_keys_reads_with_defaults() -> None:
    """Records of the earliest journals carry only address and status."""
    read = record_to_event({"address": "a", "status": "completed"})
    assert (read.kind, read.address, read.execution_status) == (
        "event",
        "a",
        ExecutionStatus.COMPLETED,
    )
    assert (read.tag, read.timestamp, read.retry_attempt) == ("", 0.0, 0)
    assert (read.from_cache, read.is_replayed, read.is_parallel) == (False, False, False)
    assert read.actor_name is read.event_type is read.usage is read.result is None
    assert read.metadata == {} and read.is_retry is False


def test_an_entry_with_a_non_json_result_records_its_json_form() -> None:
    """What is recorded is the JSON form (a tuple is a list, an object its repr)."""

    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    tuple_entry = ExecutionEvent(address="a", result=(1, 2), metadata={"when": (3,)})
    assert event_to_record(tuple_entry, 1)["result"] == [1, 2]
    assert event_to_record(tuple_entry, 1)["metadata"] == {"when": [3]}
    assert event_to_record(ExecutionEvent(address="a", result=Opaque()), 1)["result"] == "<opaque>"
    assert event_to_record(ExecutionEvent(address="a", result=False), 1)["result"] is False
    assert event_to_record(ExecutionEvent(address="a", result=0), 1)["result"] == 0


@pytest.mark.parametrize("value", [math.inf, -math.inf, 1e308, -0.0, 5e-324])
async def test_extreme_floats_survive_every_backend(backend: Backend, value: float) -> None:
    state_id = f"floats-{next(_ids)}"
    entry = ExecutionEvent(
        address="a", result={"x": value}, execution_time=value, retry_delay=value
    )
    await record(ExecutionState(state_id=state_id, state_backend=backend), [entry])
    (got,) = ExecutionState.load_from_state_id(state_id, backend).history.events
    assert got.result == {"x": value} and math.copysign(1, got.result["x"]) == math.copysign(
        1, value
    )
    assert got.execution_time == value and got.retry_delay == value


async def test_a_nan_result_survives_every_backend(backend: Backend) -> None:
    state_id = f"nan-{next(_ids)}"
    await record(
        ExecutionState(state_id=state_id, state_backend=backend),
        [
            ExecutionEvent(
                address="a", result=[math.nan], execution_status=ExecutionStatus.COMPLETED
            )
        ],
    )
    (got,) = ExecutionState.load_from_state_id(state_id, backend).history.events
    assert math.isnan(got.result[0])


def test_history_set_views() -> None:
    """``events`` and ``get_event_list()`` are copies of the timeline; the index holds the
    latest invocation entry per address, and group or divergence entries are not
    invocations."""
    started = ExecutionEvent(address="a", execution_status=ExecutionStatus.STARTED)
    done = ExecutionEvent(address="a", execution_status=ExecutionStatus.COMPLETED, result=1)
    group = ExecutionEvent(
        kind=EventKind.GROUP, address="g", execution_status=ExecutionStatus.COMPLETED
    )
    recovered = ExecutionEvent(address="b", execution_status=ExecutionStatus.RECOVERED, result=2)
    history = HistorySet([started, done, group, recovered])

    assert history.events == [started, done, group, recovered]
    history.events.clear()
    history.get_event_list().clear()
    assert len(history) == 4
    assert history["a"] is done and "g" not in history and "b" in history
    assert history.completed_addresses() == ["a", "b"]
    assert history.get_event_result("b") == 2
    assert history.get_completed_event("g") is None
    assert [address for address, _ in history] == ["a", "b"]
    with pytest.raises(KeyError, match="No invocation at address 'zz' in this history"):
        history["zz"]
    with pytest.raises(KeyError, match="No completed invocation at address 'g'"):
        history.get_event_result("g")


_TIMELINE = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "a/x", "g"]),
        st.sampled_from(list(ExecutionStatus)),
        st.sampled_from([EventKind.EVENT, EventKind.EVENT, EventKind.GROUP]),
    ),
    max_size=30,
)


@given(_TIMELINE)
@settings(max_examples=300, deadline=None)
def test_completions_agree_with_the_index_for_any_timeline(
    timeline: list[tuple[str, ExecutionStatus, EventKind]],
) -> None:
    """A resume indexes its history with ``completions()`` (one pass); it must give what
    the per-address lookups give, in the order of ``completed_addresses()``: retries,
    failures after a completion and group entries included."""
    history = HistorySet(
        ExecutionEvent(address=address, execution_status=status, kind=kind, result=n)
        for n, (address, status, kind) in enumerate(timeline)
    )
    completions = history.completions()
    addresses = history.completed_addresses()
    assert list(completions) == addresses
    for address in ["a", "b", "a/x", "g"]:
        assert completions.get(address) is history.get_completed_event(address)
    # first completion order, computed independently
    first: list[str] = []
    for address, status, kind in timeline:
        done = status in (ExecutionStatus.COMPLETED, ExecutionStatus.RECOVERED)
        if done and kind == EventKind.EVENT and address not in first:
            first.append(address)
    assert addresses == first


async def test_a_real_run_with_retries_and_a_group_survives_every_backend(
    backend: Backend,
) -> None:
    """The entries the core writes itself (retries of an actor and of a group item,
    group lifecycle, usage) read back with every field, ``is_retry`` included."""
    failures = [ConnectionError("reset")]
    item_failures = [TimeoutError("slow")]

    async def flaky(data: Any, extra: Any, state: Any) -> dict[str, Any]:
        if failures:
            raise failures.pop(0)
        record_usage(input_tokens=5, output_tokens=2, response_model="m")
        return {"echo": data}

    async def item() -> int:
        if item_failures:
            raise item_failures.pop(0)
        return 7

    tool = Tool(
        name="flaky",
        handler=flaky,
        policy=Policy(retry=RetryConfig(max_attempts=2, initial_delay=0.5, jitter=False)),
    )
    state_id = f"real-{next(_ids)}"
    async with FakeClock() as clock:
        state = ExecutionState(state_id=state_id, state_backend=backend, clock=clock)
        assert (await ExecutionEvent(actor=tool, tag="t")("hi", {}, state)).ok
        async with state.parallel(name="batch", max_retries=1, retry_delay=0.25) as group:
            group.add(item, name="item")
    written = state.history.events
    retries = [e for e in written if e.execution_status is ExecutionStatus.RETRYING]
    assert len(retries) == 2 and all(e.is_retry and e.retry_attempt == 1 for e in retries)
    assert {e.kind for e in written} == {EventKind.EVENT, EventKind.GROUP}

    resumed = ExecutionState.load_from_state_id(state_id, backend)
    assert_same_entries(resumed.history, written)
    for got, expected in zip(resumed.history.events, written, strict=True):
        assert got.is_retry == expected.is_retry, got.address
    assert resumed.history.token_usage() == TokenUsage(
        input_tokens=5, output_tokens=2, response_model="m"
    )


@pytest.mark.parametrize(
    ("damaged", "message"),
    [
        (
            ["not", "a", "record"],
            "History record 1 is a list, not an object; the history was written by another "
            "program or is damaged.",
        ),
        (
            {"status": "completed"},
            "History record 1 cannot be read (KeyError: 'address'); the history was written "
            "by another program or is damaged.",
        ),
        (
            {"address": "a", "status": "finished"},
            "History record 1 cannot be read (ValueError: 'finished' is not a valid "
            "status); the history was written by another program or is damaged.",
        ),
        (
            {"address": "a", "status": "completed", "usage": "many"},
            "The token usage of history record 1 cannot be read (it is a str); the history "
            "was written by another program or is damaged.",
        ),
        (
            {"address": "a", "status": "completed", "event_type": "phone_call"},
            "History record 1 cannot be read (ValueError: 'phone_call' is not a valid "
            "event type); the history was written by another program or is damaged.",
        ),
    ],
)
def test_a_damaged_record_is_reported_with_its_position(damaged: Any, message: str) -> None:
    good = {"address": "a", "status": "completed"}
    with pytest.raises(StateCorruptedError) as raised:
        HistorySet.from_records([good, damaged])
    assert str(raised.value) == message


def test_a_single_damaged_record_is_record_zero() -> None:
    with pytest.raises(StateCorruptedError, match=r"^History record 0 is a str, not an object"):
        record_to_event("x")  # type: ignore[arg-type]
