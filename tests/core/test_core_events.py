"""ExecutionEvent calls: validation, conditions, outcomes, cancellation, the event object."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from journal_faults import FullDisk
from pydantic import BaseModel

from rh_agents.core.actors import Agent, Tool
from rh_agents.core.errors import InvalidArgumentError, StateError
from rh_agents.core.events import ExecutionEvent, ExecutionResult
from rh_agents.core.execution import ExecutionState
from rh_agents.core.retry import RetryConfig
from rh_agents.core.types import EventType, ExecutionStatus
from rh_agents.state_backends import InMemoryStateBackend
from rh_agents.testing import FakeClock

S = ExecutionStatus


class Query(BaseModel):
    text: str
    limit: int = 3


class Answer(BaseModel):
    answer: str


class Recorder:
    """Counts handler calls and returns a fixed value (or raises)."""

    def __init__(self, value: Any = "ok", error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.calls: list[Any] = []

    async def __call__(self, data: Any, extra: Any, state: Any) -> Any:
        self.calls.append(data)
        if self.error is not None:
            raise self.error
        return self.value


def statuses(state: ExecutionState, address: str | None = None) -> list[str]:
    return [
        e.execution_status.value
        for e in state.history.get_event_list()
        if address is None or e.address == address
    ]


def published(state: ExecutionState) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    state.event_bus.subscribe(lambda e: seen.append((e.address, e.execution_status.value)))
    return seen


# ------------------------------------------------------------------ success / failure


async def test_successful_call_returns_result_and_publishes_started_then_completed() -> None:
    handler = Recorder(Answer(answer="42"))
    tool = Tool(name="search", input_model=Query, output_model=Answer, handler=handler)
    state = ExecutionState()
    seen = published(state)

    result = await ExecutionEvent(actor=tool)(Query(text="q"), {"user": "u"}, state)

    assert result.ok is True
    assert result.result == Answer(answer="42")
    assert result.error_message is None
    assert result.status is S.COMPLETED
    assert result.address == "search"
    assert result.execution_time >= 0
    assert seen == [("search", "started"), ("search", "completed")]
    assert handler.calls == [Query(text="q")]


async def test_handler_receives_extra_context_and_state() -> None:
    received: list[Any] = []

    async def handler(data: Any, extra: Any, state: Any) -> str:
        received.extend([extra, state])
        return "done"

    state = ExecutionState()
    await ExecutionEvent(actor=Tool(name="t", handler=handler))(None, {"k": 1}, state)
    assert received == [{"k": 1}, state]


async def test_dict_input_is_validated_into_input_model() -> None:
    handler = Recorder()
    tool = Tool(name="search", input_model=Query, handler=handler)
    result = await ExecutionEvent(actor=tool)({"text": "x", "limit": "5"}, {}, ExecutionState())
    assert result.ok
    assert handler.calls == [Query(text="x", limit=5)]
    assert isinstance(handler.calls[0], Query)


async def test_invalid_input_fails_without_calling_the_handler() -> None:
    handler = Recorder()
    tool = Tool(name="search", input_model=Query, handler=handler)
    state = ExecutionState()
    seen = published(state)

    result = await ExecutionEvent(actor=tool)({"limit": "many"}, {}, state)

    assert result.ok is False
    assert handler.calls == []
    assert result.error_type == "InputValidationError"
    assert result.error_message is not None
    assert "'search'" in result.error_message
    assert "Query" in result.error_message
    assert "text" in result.error_message  # the pydantic detail: the missing field
    assert seen == [("search", "started"), ("search", "failed")]


async def test_handler_exception_becomes_failed_result() -> None:
    handler = Recorder(error=ConnectionError("upstream timed out"))
    tool = Tool(name="fetch", handler=handler)
    state = ExecutionState()
    seen = published(state)
    event: ExecutionEvent[Any] = ExecutionEvent(actor=tool)

    result = await event(None, {}, state)

    assert result.ok is False
    assert result.error_message == "upstream timed out"
    assert result.error_type == "ConnectionError"
    assert isinstance(result.exception, ConnectionError)
    assert result.status is S.FAILED
    assert seen == [("fetch", "started"), ("fetch", "failed")]
    failed = state.history["fetch"]
    assert failed.execution_status is S.FAILED
    assert failed.message == "upstream timed out"
    assert failed.error_type == "ConnectionError"
    assert event.execution_status is S.FAILED
    assert event.message == "upstream timed out"


async def test_exception_without_text_is_described_by_its_type() -> None:
    tool = Tool(name="t", handler=Recorder(error=RuntimeError()))
    result = await ExecutionEvent(actor=tool)(None, {}, ExecutionState())
    assert result.ok is False
    assert result.error_message == "RuntimeError"


async def test_output_not_matching_output_model_fails_clearly() -> None:
    tool = Tool(name="summarize", output_model=Answer, handler=Recorder(12345))
    state = ExecutionState()
    result = await ExecutionEvent(actor=tool)(None, {}, state)

    assert result.ok is False
    assert result.error_type == "OutputValidationError"
    assert result.error_message is not None
    assert "'summarize' returned a int" in result.error_message
    assert "output_model Answer" in result.error_message
    assert statuses(state) == ["started", "failed"]


async def test_output_data_is_validated_into_output_model() -> None:
    tool = Tool(name="summarize", output_model=Answer, handler=Recorder({"answer": "yes"}))
    result = await ExecutionEvent(actor=tool)(None, {}, ExecutionState())
    assert result.ok
    assert isinstance(result.result, Answer)
    assert result.result.answer == "yes"


# ------------------------------------------------------------------ conditions


def sync_false(value: Any, extra: Any, state: Any) -> bool:
    return False


async def async_false(value: Any, extra: Any, state: Any) -> bool:
    return False


def sync_true(value: Any, extra: Any, state: Any) -> bool:
    return True


async def async_true(value: Any, extra: Any, state: Any) -> bool:
    return True


@pytest.mark.parametrize("check", [sync_false, async_false])
async def test_failing_precondition_does_not_call_the_handler(check: Any) -> None:
    handler = Recorder()
    tool = Tool(name="guarded", handler=handler, preconditions=[sync_true, check])
    state = ExecutionState()
    result = await ExecutionEvent(actor=tool)("in", {}, state)

    assert result.ok is False
    assert handler.calls == []
    assert result.error_type == "ConditionFailedError"
    assert result.error_message is not None
    assert "Precondition 2 of actor 'guarded'" in result.error_message
    assert check.__name__ in result.error_message
    assert "handler was not called" in result.error_message
    assert statuses(state) == ["started", "failed"]


@pytest.mark.parametrize("check", [sync_false, async_false])
async def test_failing_postcondition_fails_the_call(check: Any) -> None:
    handler = Recorder("draft")
    tool = Tool(name="writer", handler=handler, postconditions=[async_true, check])
    result = await ExecutionEvent(actor=tool)("in", {}, ExecutionState())

    assert result.ok is False
    assert len(handler.calls) == 1
    assert result.error_message is not None
    assert "Postcondition 2 of actor 'writer'" in result.error_message
    assert result.result is None


async def test_conditions_receive_input_then_result() -> None:
    checked: list[tuple[str, Any, Any]] = []

    def pre(value: Any, extra: Any, state: Any) -> bool:
        checked.append(("pre", value, extra))
        return True

    async def post(value: Any, extra: Any, state: Any) -> bool:
        checked.append(("post", value, extra))
        return True

    tool = Tool(
        name="t",
        input_model=Query,
        handler=Recorder("out"),
        preconditions=[pre],
        postconditions=[post],
    )
    result = await ExecutionEvent(actor=tool)({"text": "x"}, {"e": 1}, ExecutionState())
    assert result.ok
    assert checked == [("pre", Query(text="x"), {"e": 1}), ("post", "out", {"e": 1})]


async def test_raising_precondition_fails_the_call() -> None:
    def explode(value: Any, extra: Any, state: Any) -> bool:
        raise ValueError("no budget left")

    handler = Recorder()
    tool = Tool(name="t", handler=handler, preconditions=[explode])
    result = await ExecutionEvent(actor=tool)(None, {}, ExecutionState())
    assert result.ok is False
    assert result.error_message == "no budget left"
    assert handler.calls == []


# ------------------------------------------------------------------ cancellation


async def test_cancellation_is_recorded_and_reraised() -> None:
    entered = asyncio.Event()

    async def slow(data: Any, extra: Any, state: Any) -> str:
        entered.set()
        await asyncio.Event().wait()  # never set
        return "unreachable"

    state = ExecutionState()
    seen = published(state)
    event: ExecutionEvent[Any] = ExecutionEvent(actor=Tool(name="slow", handler=slow))
    task = asyncio.create_task(event(None, {}, state))
    await entered.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert statuses(state, "slow") == ["started", "cancelled"]
    assert seen == [("slow", "started"), ("slow", "cancelled")]
    assert state.history["slow"].execution_status is S.CANCELLED
    assert not state.history.has_completed_event("slow")
    assert event.execution_status is S.CANCELLED


async def test_cancelling_an_agent_cancels_its_running_tool_and_records_both() -> None:
    entered = asyncio.Event()

    async def tool_handler(data: Any, extra: Any, state: Any) -> str:
        entered.set()
        await asyncio.Event().wait()
        return "unreachable"

    tool = Tool(name="tool", handler=tool_handler)

    async def agent_handler(data: Any, extra: Any, state: ExecutionState) -> Any:
        result = await ExecutionEvent(actor=tool)(None, extra, state)
        return result.result  # not reached: cancellation is not turned into a result

    state = ExecutionState()
    agent = Agent(name="agent", handler=agent_handler)
    task = asyncio.create_task(ExecutionEvent(actor=agent)(None, {}, state))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(e.address, e.execution_status.value) for e in state.history.get_event_list()] == [
        ("agent", "started"),
        ("agent/tool", "started"),
        ("agent/tool", "cancelled"),
        ("agent", "cancelled"),
    ]


async def test_handler_cancelled_error_is_not_converted_into_a_result() -> None:
    tool = Tool(name="t", handler=Recorder(error=asyncio.CancelledError()))
    state = ExecutionState()
    with pytest.raises(asyncio.CancelledError):
        await ExecutionEvent(actor=tool)(None, {}, state)
    assert statuses(state) == ["started", "cancelled"]


async def test_cancellation_while_publishing_completion_keeps_one_terminal_status() -> None:
    """A call that completed stays completed when cancelled while subscribers are told."""
    in_subscriber = asyncio.Event()

    async def slow_subscriber(event: Any) -> None:
        if event.execution_status is S.COMPLETED:
            in_subscriber.set()
            await asyncio.Event().wait()

    state = ExecutionState()
    state.event_bus.subscribe(slow_subscriber)
    task = asyncio.create_task(
        ExecutionEvent(actor=Tool(name="t", handler=Recorder()))(None, {}, state)
    )
    await in_subscriber.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert statuses(state, "t") == ["started", "completed"]
    assert state.history.has_completed_event("t")


# ------------------------------------------------------------------ the event object


async def test_event_object_reflects_the_call() -> None:
    tool = Tool(name="search", handler=Recorder("r"))
    state = ExecutionState()
    event: ExecutionEvent[Any] = ExecutionEvent(actor=tool, tag="web")
    assert event.address == ""

    await event(None, {}, state)

    assert event.address == "search[web]"
    assert event.execution_status is S.COMPLETED
    assert event.is_replayed is False
    assert event.skip_republish is False
    assert event.result == "r"
    assert event.name == "search"
    assert event.event_type is EventType.TOOL_CALL
    assert event.execution_time is not None


async def test_reused_event_object_does_not_carry_the_previous_outcome() -> None:
    outcomes: list[BaseException | None] = [RuntimeError("boom"), None]

    async def flaky(data: Any, extra: Any, state: Any) -> str:
        error = outcomes.pop(0)
        if error is not None:
            raise error
        return "fine"

    state = ExecutionState()
    received: list[ExecutionEvent[Any]] = []
    state.event_bus.subscribe(received.append)
    event: ExecutionEvent[Any] = ExecutionEvent(actor=Tool(name="flaky", handler=flaky))

    first = await event(None, {}, state)
    second = await event(None, {}, state)

    assert (first.ok, second.ok) == (False, True)
    assert [(e.address, e.execution_status.value, e.message) for e in received] == [
        ("flaky", "started", None),
        ("flaky", "failed", "boom"),
        ("flaky#1", "started", None),
        ("flaky#1", "completed", None),
    ]
    assert event.message is None
    assert event.address == "flaky#1"


async def test_subscripted_event_and_hand_built_fields() -> None:
    tool = Tool(name="t", handler=Recorder("x"))
    event = ExecutionEvent[str](
        actor=tool,
        address="a/b",
        tag="tg",
        metadata={"k": 1},
        execution_time=1.5,
        execution_status=S.FAILED,
        message="m",
        detail="d",
        result="r",
        from_cache=True,
        is_replayed=True,
        skip_republish=True,
        group_id="g-1",
        parallel_index=2,
        is_parallel=True,
        retry_attempt=1,
        is_retry=True,
        original_error="e",
        retry_delay=0.5,
    )
    assert (event.address, event.depth, event.group_id, event.parallel_index) == (
        "a/b",
        1,
        "g-1",
        2,
    )
    assert event.is_parallel and event.is_retry and event.from_cache and event.skip_republish
    result = await event(None, {}, ExecutionState())
    assert result.ok and result.result == "x"
    assert event.address == "t[tg]"
    assert event.is_replayed is False


def test_execution_result_error_message_alias() -> None:
    result: ExecutionResult[int] = ExecutionResult(ok=False, erro_message="bad thing")
    assert result.erro_message == "bad thing"
    assert result.error_message == "bad thing"
    spelled = ExecutionResult[int](ok=False, error_message="other")
    assert spelled.erro_message == "other"
    ok = ExecutionResult[int](result=3, execution_time=0.1)
    assert (ok.ok, ok.result, ok.erro_message) == (True, 3, None)


# ------------------------------------------------------------------ bad calls


async def test_event_without_actor_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=r"no actor.*ExecutionEvent\(actor=\.\.\.\)"):
        await ExecutionEvent()(None, {}, ExecutionState())


async def test_call_without_state_is_rejected() -> None:
    handler = Recorder()
    event: ExecutionEvent[Any] = ExecutionEvent(actor=Tool(name="lonely", handler=handler))
    with pytest.raises(InvalidArgumentError, match="'lonely' needs the ExecutionState"):
        await event(None, {})
    assert handler.calls == []


# ------------------------------------------------------------------ retries, models, journal


async def test_failures_are_not_retried_unless_the_actor_opts_in() -> None:
    handler = Recorder(error=ConnectionError("down"))
    state = ExecutionState()
    result = await ExecutionEvent(actor=Tool(name="t", handler=handler))(None, {}, state)
    assert not result.ok
    assert len(handler.calls) == 1
    assert statuses(state) == ["started", "failed"]


async def test_opt_in_retries_record_each_failed_attempt() -> None:
    failures = [ConnectionError("first"), ConnectionError("second")]

    async def flaky(data: Any, extra: Any, state: Any) -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "third time lucky"

    calls: list[int] = []
    config = RetryConfig(max_attempts=3, initial_delay=2.0, jitter=False)
    tool = Tool(name="flaky", handler=flaky, retry_config=config)
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        seen = published(state)
        result = await ExecutionEvent(actor=tool)(None, {}, state)

    assert result.ok and result.result == "third time lucky"
    assert len(calls) == 3
    assert clock.sleeps == [2.0, 4.0]
    assert seen == [
        ("flaky", "started"),
        ("flaky", "retrying"),
        ("flaky", "retrying"),
        ("flaky", "completed"),
    ]
    retries = [e for e in state.history.get_event_list() if e.is_retry]
    assert [(e.retry_attempt, e.original_error, e.retry_delay) for e in retries] == [
        (1, "first", 2.0),
        (2, "second", 4.0),
    ]
    assert state.history["flaky"].execution_status is S.COMPLETED


async def test_retries_stop_after_max_attempts() -> None:
    handler = Recorder(error=TimeoutError("slow"))
    config = RetryConfig(max_attempts=2, initial_delay=1.0, jitter=False)
    async with FakeClock() as clock:
        state = ExecutionState(clock=clock)
        tool = Tool(name="t", handler=handler, retry_config=config)
        result = await ExecutionEvent(actor=tool)(None, {}, state)
    assert not result.ok and result.error_message == "slow"
    assert len(handler.calls) == 2
    assert statuses(state) == ["started", "retrying", "failed"]


class OtherQuery(BaseModel):
    text: str
    extra_field: int = 0


async def test_other_models_are_validated_by_their_fields() -> None:
    handler = Recorder(OtherQuery(text="as answer"))

    class Reply(BaseModel):
        text: str

    tool = Tool(name="t", input_model=Query, output_model=Reply, handler=handler)
    result = await ExecutionEvent(actor=tool)(OtherQuery(text="q"), {}, ExecutionState())
    assert result.ok, result.error_message
    assert handler.calls == [Query(text="q")]
    assert isinstance(handler.calls[0], Query)
    assert result.result == Reply(text="as answer")


async def test_sync_subscriber_returning_an_awaitable_is_awaited() -> None:
    seen: list[str] = []

    async def record(event: Any) -> None:
        seen.append(event.execution_status.value)

    state = ExecutionState()
    state.event_bus.subscribe(lambda event: record(event))
    await ExecutionEvent(actor=Tool(name="t", handler=Recorder()))(None, {}, state)
    assert seen == ["started", "completed"]


async def test_journal_failure_stops_the_run_with_a_state_error() -> None:
    backend = FullDisk(InMemoryStateBackend(), room=1)
    state = ExecutionState(state_backend=backend)
    tool = Tool(name="t", handler=Recorder())
    with pytest.raises(StateError, match=r"Could not append 't' \(completed\).*No space left"):
        await ExecutionEvent(actor=tool)(None, {}, state)
    # what was recorded before is intact
    assert [r["status"] for r in backend.load_events(state.state_id)] == ["started"]


def test_the_cores_unvalidated_results_equal_validated_ones() -> None:
    from rh_agents.core.events import make_result

    error = ValueError("boom")
    fields: dict[str, Any] = {
        "result": {"a": 1},
        "ok": False,
        "error_message": "boom",
        "error_type": "ValueError",
        "execution_time": 0.5,
        "address": "a/b",
        "index": 3,
        "name": "third",
        "attempts": 2,
        "status": ExecutionStatus.FAILED,
        "from_cache": True,
        "replayed": True,
        "metadata": {"actor": "x"},
        "traceback": "Traceback ...",
        "exception": error,
    }
    # Every field is covered, in declaration order (make_result relies on that order).
    assert list(fields) == list(ExecutionResult.model_fields)
    fast = make_result(**fields)
    assert fast == ExecutionResult(**fields)
    assert fast.model_dump() == ExecutionResult(**fields).model_dump()
    assert make_result() == ExecutionResult()
    fast.ok = True  # still an ordinary, mutable model
    assert fast.ok and fast.model_fields_set == {"ok"}


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
async def test_a_process_stop_inside_a_handler_is_recorded_as_interrupted(
    stop: type[BaseException],
) -> None:
    async def handler(data: Any, extra: Any, state: Any) -> Any:
        raise stop

    state = ExecutionState()
    with pytest.raises(stop):
        await ExecutionEvent(actor=Tool(name="t", handler=handler))(None, {}, state)
    statuses = [e.execution_status for e in state.history.get_event_list()]
    assert statuses == [ExecutionStatus.STARTED, ExecutionStatus.INTERRUPTED]
    assert not state.history.has_completed_event("t")  # a resumed run runs it again


def test_the_state_backend_is_also_readable_as_backend() -> None:
    from rh_agents.state_backends import InMemoryStateBackend

    backend = InMemoryStateBackend()
    assert ExecutionState(state_backend=backend).backend is backend
    assert ExecutionState().backend is None
