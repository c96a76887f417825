"""The life of one invocation: address, replay, validation, cache, handler, history.

``await ExecutionEvent(...)(input, extra, state)`` lands in :func:`run_event`, the only
place that turns a call into status changes. It talks to the state's collaborators by
name: ``state.recorder`` records every status change (journal, history, bus) and encodes
results, ``state.replayer`` decides whether a call of a restored run returns its recorded
result, ``state.result_cache`` serves cacheable actors, ``state.instrumentation`` gets
the telemetry hooks. This module imports no ExecutionEvent at run time (the events
module imports it), so the import graph has no cycle.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import operator
import time
from collections.abc import Awaitable
from contextvars import Token
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from rh_agents.core._aio import uninterrupted
from rh_agents.core._guarded import (
    give_back,
    guarded_outside,
    hold_permit,
    retry_delay,
    run_attempt,
)
from rh_agents.core._models import assemble, clone
from rh_agents.core._pause import Interrupted, current_state
from rh_agents.core.actors import RESERVED_ADDRESS_CHARS
from rh_agents.core.cache import call_cache_key
from rh_agents.core.context import Frame, current_frame
from rh_agents.core.errors import (
    CircuitOpenError,
    ConditionFailedError,
    InputValidationError,
    InvalidArgumentError,
    OutputValidationError,
    StateError,
)
from rh_agents.core.executors import call_handler
from rh_agents.core.hooks import Outcome
from rh_agents.core.result import ExecutionResult, make_result
from rh_agents.core.state_recovery import ReplayMode
from rh_agents.core.types import EventType, ExecutionStatus
from rh_agents.core.usage import add_usage, current_invocation, usage_from_result

if TYPE_CHECKING:
    from rh_agents.core.actors import BaseActor
    from rh_agents.core.events import ExecutionEvent
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.policy import Policy

__all__ = ["run_event"]

_S = ExecutionStatus


async def run_event(
    template: ExecutionEvent[Any],
    input_data: Any,
    extra: dict[str, Any],
    state: ExecutionState,
) -> ExecutionResult[Any]:
    """Run one call of ``template``'s actor in ``state``: ``await event(input, extra, state)``."""
    actor = template.actor
    assert actor is not None
    parent = state.current_frame()
    frame = parent.child(_address_key(actor, template.tag))
    if parent.parent is None:  # a top-level call: made from another state's run?
        outer = current_frame.get()
        if outer is not None and outer.root is not parent:
            frame.outer = outer
    ev = _working_copy(template, actor, frame.address, parent)
    fields = ev.__dict__
    group_id = parent.group_id

    recorded: ExecutionEvent[Any] | None = None
    replayer = state.replayer
    if replayer.active:
        if state.replay_mode is ReplayMode.VALIDATION:
            recorded = replayer.recorded(actor, frame.address)  # compared after running
        else:
            match, input_hash = replayer.match(
                actor, frame.address, lambda: _validate_input(actor, input_data)
            )
            if match is not None:
                return await _replayed(template, ev, match, state, input_hash)

    token = current_frame.set(frame)
    invocation = current_invocation.set(ev)
    running_in = current_state.set(state)
    recorder = state.recorder
    tel = state.instrumentation
    handle = tel.event_started(ev, None) if tel.enabled else None
    started = time.perf_counter()
    outcome = Outcome.FAILED
    error: BaseException | None = None
    terminal = False  # a terminal status is in the history (appended before publishing)
    try:
        await recorder.record(ev, _S.STARTED)
        try:
            value = await _execute(actor, ev, input_data, extra, state, handle)
        except (asyncio.CancelledError, StateError):
            raise
        except (InputValidationError, CircuitOpenError) as exc:
            outcome, error = Outcome.REJECTED, exc
        except Exception as exc:
            outcome, error = Outcome.FAILED, exc
        else:
            outcome = Outcome.CACHED if fields["from_cache"] else Outcome.COMPLETED
        elapsed = time.perf_counter() - started
        fields["execution_time"] = elapsed
        _settle(fields, value if error is None else None, error)
        terminal = True
        await recorder.record(ev, _S.COMPLETED if error is None else _S.FAILED)
        if recorded is not None:
            await replayer.check(ev, recorded)
        metadata = _parallel_metadata(ev) if group_id is not None else None
        result = _result(ev, value if error is None else None, error, elapsed, metadata)
    except Interrupted as pause:
        outcome = Outcome.AWAITING
        result = await _paused(ev, pause, started, state, invocation.old_value)
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit) as exc:
        outcome, error = Outcome.CANCELLED, exc
        if not terminal:
            await _stopped(ev, exc, started, state)
        raise
    finally:
        current_state.reset(running_in)
        current_invocation.reset(invocation)
        current_frame.reset(token)
        if tel.enabled:
            tel.event_finished(handle, ev, outcome, error, time.perf_counter() - started)
        _copy_back(template, ev)
    return result


async def _paused(
    ev: ExecutionEvent[Any],
    pause: Interrupted,
    started: float,
    state: ExecutionState,
    enclosing: Any,
) -> ExecutionResult[Any]:
    """The handler awaits a human (see :mod:`rh_agents.core.interrupts`): the call waits
    too. Only the top-level call (``enclosing``: no invocation, or ``Token.MISSING``)
    returns a result; a nested one passes the pause on to its caller."""
    fields = ev.__dict__
    fields["execution_time"] = time.perf_counter() - started
    fields["message"] = f"awaiting {len(pause.interrupts)} answer(s)"
    await uninterrupted(state.recorder.record(ev, _S.AWAITING))
    if enclosing is not None and enclosing is not Token.MISSING:
        raise pause
    return make_result(
        ok=False,
        error_message=str(pause),
        error_type="Interrupted",
        execution_time=fields["execution_time"],
        address=ev.address,
        status=_S.AWAITING,
        metadata=_parallel_metadata(ev) if ev.group_id is not None else None,
        exception=pause,
    )


async def _stopped(
    ev: ExecutionEvent[Any], stop: BaseException, started: float, state: ExecutionState
) -> None:
    """Cancelled, or the process is being stopped from inside the call: the history says
    so (a resumed run runs it again) instead of leaving a start without an end."""
    fields = ev.__dict__
    fields["execution_time"] = time.perf_counter() - started
    if isinstance(stop, asyncio.CancelledError):
        fields["message"] = "cancelled"
        await uninterrupted(state.recorder.record(ev, _S.CANCELLED))
    else:
        fields["message"] = f"interrupted ({type(stop).__name__})"
        await uninterrupted(state.recorder.record(ev, _S.INTERRUPTED))


def _settle(fields: dict[str, Any], value: Any, error: BaseException | None) -> None:
    """Write the outcome into the working copy's fields before its terminal status."""
    if error is None:
        fields["result"] = value
    else:
        fields["message"] = _describe(error)
        fields["error_type"] = type(error).__name__


def _address_key(actor: BaseActor, tag: str) -> str:
    """The key of a call's address segment: the actor's name, with the tag if any."""
    if tag and any(c in RESERVED_ADDRESS_CHARS for c in tag):
        raise InvalidArgumentError(
            f"Tag {tag!r} of the call of actor '{actor.name}' contains one of "
            f"{RESERVED_ADDRESS_CHARS!r}, which structure addresses; use another tag."
        )
    return f"{actor.name}[{tag}]" if tag else actor.name


_RESET: dict[str, Any] = {
    "execution_status": _S.STARTED,
    "result": None,
    "message": None,
    "error_type": None,
    "execution_time": None,
    "from_cache": False,
    "is_replayed": False,
    # A reused event object must not pass on a previous call's outcome (a replayed call
    # leaves skip_republish=True on it).
    "skip_republish": False,
    "input_hash": None,
    "usage": None,
}
"""What a call's working copy starts with whatever the event object holds."""


def _working_copy(
    template: ExecutionEvent[Any], actor: BaseActor, address: str, parent: Frame
) -> ExecutionEvent[Any]:
    """The working copy of this call; the core writes its fields directly (no validation
    to run: every value is of the right type) and snapshots it at each status change."""
    fields = template.__dict__.copy()
    fields.update(_RESET)
    group_id = parent.group_id
    fields["address"] = address
    fields["actor_name"] = actor.name
    fields["event_type"] = actor.event_type
    fields["group_id"] = group_id
    fields["parallel_index"] = parent.parallel_index
    fields["is_parallel"] = group_id is not None
    fields["timestamp"] = time.time()
    fields_set = set(template.__pydantic_fields_set__)
    ev = assemble(type(template), fields, fields_set, template.__pydantic_private__)
    private = ev.__pydantic_private__
    assert private is not None
    private["_actor_version"] = actor.version  # recorded with the call (replay compares)
    return ev


def _result(
    ev: ExecutionEvent[Any],
    value: Any,
    error: BaseException | None,
    elapsed: float,
    metadata: dict[str, Any] | None,
) -> ExecutionResult[Any]:
    """What the call returns, from its terminal status."""
    if error is None:
        return make_result(
            value,
            execution_time=elapsed,
            address=ev.address,
            status=_S.COMPLETED,
            from_cache=ev.from_cache,
            metadata=metadata,
        )
    return make_result(
        ok=False,
        error_message=ev.message,
        error_type=ev.error_type,
        execution_time=elapsed,
        address=ev.address,
        status=_S.FAILED,
        metadata=metadata,
        exception=error,
    )


async def _execute(
    actor: BaseActor,
    ev: ExecutionEvent[Any],
    input_data: Any,
    extra: dict[str, Any],
    state: ExecutionState,
    handle: Any,
) -> Any:
    data = _validate_input(actor, input_data)
    recorder = state.recorder
    ev.__dict__["input_hash"] = recorder.input_hash(data)
    for position, check in enumerate(actor.preconditions, 1):
        if not await _check(check, data, extra, state):
            raise ConditionFailedError(
                f"Precondition {position} of actor '{actor.name}' "
                f"({_callable_name(check)}) returned False; the handler was not called."
            )

    if not actor.cacheable or state.result_cache is None:
        value = await _run_handler(actor, ev, data, extra, state, handle)
        recorder.encode_result(actor, value, ev)
        return value

    async def compute() -> tuple[Any, bool]:
        value = await _run_handler(actor, ev, data, extra, state, handle)
        # Encoded before it is cached, so a result the history cannot store is never
        # handed to later calls from the cache.
        recorder.encode_result(actor, value, ev)
        return value, True

    key = call_cache_key(actor.name, actor.version, data, extra, actor.cache_key)
    value, hit = await state.result_cache.get_or_compute(key, actor.cache_ttl, compute)
    ev.__dict__["from_cache"] = hit
    if hit:
        # A persistent cache returns the JSON form of the stored result.
        value = _validate_output(actor, value)
        recorder.encode_result(actor, value, ev)
    return value


def _run_handler(
    actor: BaseActor,
    ev: ExecutionEvent[Any],
    data: Any,
    extra: dict[str, Any],
    state: ExecutionState,
    handle: Any,
) -> Awaitable[Any]:
    """The handler's attempt, or attempts under the actor's policy (the awaitable itself:
    an unguarded call costs no extra coroutine)."""
    if actor.policy is None and actor.retry_config is None:
        return _attempt(actor, ev, data, extra, state, 1)
    policy = actor.effective_policy
    if policy is None or guarded_outside(policy):
        return _attempt(actor, ev, data, extra, state, 1)
    return _guarded(policy, actor, ev, data, extra, state, handle)


async def _guarded(
    policy: Policy,
    actor: BaseActor,
    ev: ExecutionEvent[Any],
    data: Any,
    extra: dict[str, Any],
    state: ExecutionState,
    handle: Any,
) -> Any:
    """The handler's attempts under the actor's policy (see :mod:`rh_agents.core._guarded`);
    a failed attempt the retry guard retries is recorded as RETRYING, then backed off in
    place. With a retry guard, each attempt is an ``attempt {n}`` span."""
    retry = policy.retry
    limiter = policy.limiter
    clock = state.clock
    tel = state.instrumentation
    if policy.breaker is not None:
        tel.watch_breaker(policy.breaker)
    if limiter is not None:
        tel.watch_limiter(limiter)
    what = f"actor '{actor.name}'"
    attempt = 1
    first_try = clock.monotonic()
    while True:
        attempt_span = tel.attempt_started(handle, attempt) if retry is not None else None
        try:
            held = await hold_permit(limiter) if limiter is not None else None
            try:
                work = functools.partial(_attempt, actor, ev, data, extra, state, attempt)
                value, rejected = await run_attempt(policy, work, clock, what, attempt)
                if rejected is not None:  # retry_on_result rejected the value
                    raise rejected
            finally:
                if held is not None:
                    give_back(*held)
        except BaseException as exc:
            if retry is not None:
                tel.attempt_finished(attempt_span, exc)
            if not isinstance(exc, Exception):
                raise
            delay = retry_delay(policy, attempt, exc, first_try, clock.monotonic())
            if delay is None:
                raise
            await _retrying(ev, attempt, delay, exc, state, handle)
            await clock.sleep(delay)
            attempt += 1
            continue
        if retry is not None:
            tel.attempt_finished(attempt_span, None)
        return value


async def _retrying(
    ev: ExecutionEvent[Any],
    attempt: int,
    delay: float,
    error: Exception,
    state: ExecutionState,
    handle: Any,
) -> None:
    """Record that ``attempt`` failed and is retried after ``delay`` seconds."""
    retry = clone(
        ev,
        retry_attempt=attempt,
        is_retry=True,
        retry_delay=delay,
        original_error=_describe(error),
        error_type=type(error).__name__,
        usage=None,
    )
    state.instrumentation.event_retrying(handle, ev, attempt, delay, error)
    await state.recorder.record(retry, _S.RETRYING)


async def _attempt(
    actor: BaseActor,
    ev: ExecutionEvent[Any],
    data: Any,
    extra: dict[str, Any],
    state: ExecutionState,
    attempt: int,
) -> Any:
    """One attempt: the handler, the usage it reported, its output and postconditions."""
    fields = ev.__dict__
    reported = fields["usage"]
    value = await call_handler(actor, ev.address, data, extra, state, attempt)
    if fields["usage"] is reported and actor.event_type is EventType.LLM_CALL:
        # Nothing reported with record_usage: read the provider's response.
        picked = usage_from_result(value)
        if picked is not None:
            add_usage(ev, picked)
    value = _validate_output(actor, value)
    for position, check in enumerate(actor.postconditions, 1):
        if not await _check(check, value, extra, state):
            raise ConditionFailedError(
                f"Postcondition {position} of actor '{actor.name}' "
                f"({_callable_name(check)}) returned False for its result."
            )
    return value


def _coerce(model: type[BaseModel] | None, value: Any) -> Any:
    """``value`` as an instance of ``model`` (unchanged without a model or when it is one)."""
    if model is None or isinstance(value, model):
        return value
    if isinstance(value, BaseModel):
        return model.model_validate(value.model_dump())
    return model.model_validate(value)


def _validate_input(actor: BaseActor, input_data: Any) -> Any:
    model = actor.input_model
    try:
        return _coerce(model, input_data)
    except ValidationError as exc:
        assert model is not None
        raise InputValidationError(
            f"Input for actor '{actor.name}' does not match its input_model "
            f"{model.__name__}; the handler was not called. Pass a {model.__name__} or data "
            f"that validates into it: {exc}"
        ) from exc


def _validate_output(actor: BaseActor, value: Any) -> Any:
    model = actor.output_model
    try:
        return _coerce(model, value)
    except ValidationError as exc:
        assert model is not None
        raise OutputValidationError(
            f"Actor '{actor.name}' returned a {type(value).__name__} that does not match "
            f"its output_model {model.__name__}: {exc.error_count()} validation error(s): "
            f"{exc.errors(include_url=False)}. Return a {model.__name__} or data that "
            "validates into it."
        ) from exc


async def _check(check: Any, value: Any, extra: dict[str, Any], state: ExecutionState) -> bool:
    verdict = check(value, extra, state)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return bool(verdict)


def _callable_name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def _describe(error: BaseException) -> str:
    text = str(error)
    return text if text else type(error).__name__


async def _replayed(
    template: ExecutionEvent[Any],
    ev: ExecutionEvent[Any],
    recorded: ExecutionEvent[Any],
    state: ExecutionState,
    input_hash: str | None,
) -> ExecutionResult[Any]:
    """The call returns ``recorded``'s result without running (status RECOVERED)."""
    actor = template.actor
    assert actor is not None
    value = state.replayer.replay_into(actor, ev, recorded, input_hash)
    tel = state.instrumentation
    handle = tel.event_started(ev, None)
    try:
        await state.recorder.record(ev, _S.RECOVERED)
    finally:
        tel.event_finished(handle, ev, Outcome.REPLAYED, None, 0.0)
        _copy_back(template, ev)
    return make_result(
        value,
        execution_time=recorded.execution_time or 0.0,
        address=ev.address,
        status=_S.RECOVERED,
        replayed=True,
        metadata=_parallel_metadata(ev) if ev.is_parallel else None,
    )


_COPIED_BACK = (
    "address",
    "actor_name",
    "event_type",
    "execution_status",
    "execution_time",
    "message",
    "error_type",
    "result",
    "from_cache",
    "is_replayed",
    "skip_republish",
    "group_id",
    "parallel_index",
    "is_parallel",
    "usage",
)


_copied_back = operator.itemgetter(*_COPIED_BACK)


def _copy_back(template: ExecutionEvent[Any], ev: ExecutionEvent[Any]) -> None:
    # Callers read the event object after the call; concurrent calls of one template
    # each leave their own outcome, the last one to finish wins.
    template.__dict__.update(zip(_COPIED_BACK, _copied_back(ev.__dict__), strict=True))


def _parallel_metadata(ev: ExecutionEvent[Any]) -> dict[str, Any]:
    fields = ev.__dict__
    event_type = fields["event_type"]
    return {
        "address": fields["address"],
        "actor": fields["actor_name"],
        # an enum's _value_, not .value (a Python-level property on Python 3.11)
        "event_type": event_type._value_ if event_type is not None else None,
        "group_id": fields["group_id"],
        "parallel_index": fields["parallel_index"],
        "from_cache": fields["from_cache"],
        "is_replayed": fields["is_replayed"],
        "status": fields["execution_status"]._value_,
    }
