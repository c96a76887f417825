"""Pause for a human: ``answer = await interrupt(payload)`` inside a handler.

The first time a run reaches an ``interrupt()``, it records the interrupt as AWAITING
(with its payload) at an address of its own under the calling invocation
(``.../approve/interrupt``) and raises :class:`Interrupted`, which unwinds every
enclosing handler: each enclosing invocation is recorded as AWAITING too, and the
top-level call returns ``ok=False`` with status AWAITING instead of raising. Inside a
parallel group only the item that waits stops: the others run to their end, then
``gather()`` (or the end of ``stream()``) raises the pause on to the enclosing handler.

``state.pending_interrupts`` lists what waits, from the history, so it works on a state
loaded in another process. ``state.resume_with(answer)`` (or ``{address: answer}``)
provides the answers; calling the same top-level call again replays everything that
completed, ``interrupt()`` returns the answer (recorded as the interrupt's completion,
so a later resume replays it too), and the run goes on.

An interrupt's address is derived like a call's (the calling frame and an ordinal), so
a resumed run reaches the same interrupt at the same address. Payloads and answers are
stored as JSON; pass JSON-able values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rh_agents.core._pause import Interrupted, PendingInterrupt, current_state
from rh_agents.core.context import current_frame
from rh_agents.core.errors import InvalidArgumentError, LifecycleError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.parallel.results import placeholder_actor
from rh_agents.core.types import ExecutionStatus

if TYPE_CHECKING:
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.history import HistorySet

__all__ = [
    "INTERRUPT_KEY",
    "Interrupted",
    "PendingInterrupt",
    "current_state",
    "interrupt",
    "pending_in",
    "resolve_answers",
]

INTERRUPT_KEY = "interrupt"
"""The address segment of an interrupt under the calling frame (``.../interrupt#1``
for the second one of the same call)."""

_MARK = "interrupt"
"""The metadata key of an interrupt's history entries (its payload)."""


async def interrupt(payload: Any = None, *, state: ExecutionState | None = None) -> Any:
    """Pause the run until a human answers; returns the answer once resumed.

    Args:
        payload: what the human needs to decide (JSON-able), e.g. a draft to approve.
        state: the run's state; found by itself inside a handler (pass it only from a
            parallel group's item opened outside any handler).

    Returns:
        The answer given with ``state.resume_with(...)``, when the run is resumed.

    Raises:
        Interrupted: (the first time) the run pauses here; let it propagate.
        LifecycleError: called outside a handler without ``state``.

    Example::

        async def publish(draft: Draft, extra, state) -> str:
            verdict = await interrupt({"draft": draft.text, "question": "Publish?"})
            return "published" if verdict == "yes" else "dropped"
    """
    state = state if state is not None else current_state.get()
    frame = current_frame.get()
    if state is None or frame is None:
        raise LifecycleError(
            "interrupt() must be awaited inside a handler (or a parallel group's item) "
            "of a running call; outside one there is no run to pause. Pass state= from "
            "an item of a group opened outside any handler."
        )
    address = frame.join(frame.next_segment(INTERRUPT_KEY))
    recorded = state.history.get_completed_event(address)
    if recorded is not None:  # answered, and recorded, when the run was resumed before
        return recorded.result
    answers = state._interrupt_answers
    if address in answers:
        answer = answers.pop(address)
        await state.recorder.record(
            _entry(address, frame, payload, ExecutionStatus.COMPLETED, answer)
        )
        return answer
    await state.recorder.record(_entry(address, frame, payload, ExecutionStatus.AWAITING))
    raise Interrupted((PendingInterrupt(address, payload),))


def _entry(
    address: str, frame: Any, payload: Any, status: ExecutionStatus, answer: Any = None
) -> ExecutionEvent[Any]:
    group_id = frame.group_id
    return ExecutionEvent(
        actor=placeholder_actor(INTERRUPT_KEY),
        actor_name=INTERRUPT_KEY,
        address=address,
        execution_status=status,
        group_id=group_id,
        parallel_index=frame.parallel_index,
        is_parallel=group_id is not None,
        message="awaiting an answer" if status is ExecutionStatus.AWAITING else "answered",
        metadata={_MARK: payload},
        result=answer,
    )


def pending_in(history: HistorySet) -> list[PendingInterrupt]:
    """The interrupts of ``history`` that wait for an answer, in the order reached."""
    pending = []
    for address, event in history:
        if event.execution_status is ExecutionStatus.AWAITING and _MARK in event.metadata:
            pending.append(PendingInterrupt(address, event.metadata[_MARK]))
    return pending


def resolve_answers(pending: list[PendingInterrupt], answer: Any) -> dict[str, Any]:
    """The answer of each pending interrupt: ``answer`` itself for the only one, or the
    values of a mapping keyed by pending addresses.

    Raises:
        LifecycleError: nothing is pending.
        InvalidArgumentError: several are pending and ``answer`` does not map their
            addresses, or a key is not a pending address.
    """
    if not pending:
        raise LifecycleError(
            "resume_with() found no pending interrupt in this state: the run is not "
            "waiting for an answer (state.pending_interrupts is empty)."
        )
    addresses = [p.address for p in pending]
    if isinstance(answer, dict) and answer and all(key in addresses for key in answer):
        return dict(answer)
    if len(pending) == 1:
        return {addresses[0]: answer}
    raise InvalidArgumentError(
        f"{len(pending)} interrupts are pending ({', '.join(addresses)}); answer them "
        "with a dict keyed by their addresses: state.resume_with({address: answer, ...}) "
        "(the addresses are in state.pending_interrupts)."
    )
