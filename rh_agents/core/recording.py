"""Recording a run: every status change to the journal, the history and the bus.

:class:`Recorder` is the one way a status change enters a run's record: the journal of
a resumable state backend first (so the in-memory history never holds an entry the
journal refused), then the history, then the event bus. It numbers the records, encodes
each result once (the JSON form the journal and snapshots share, with its type so a
resumed run gets the same Python type back) and fingerprints inputs.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import AsyncIterator, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_jsonable_python

from rh_agents.core.errors import LifecycleError, ResultSerializationError, StateError
from rh_agents.core.events import ExecutionEvent, freeze, is_snapshot, thaw
from rh_agents.core.history import event_to_record, input_fingerprint
from rh_agents.core.types import ExecutionStatus

if TYPE_CHECKING:
    from rh_agents.core.actors import BaseActor
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.storage import EventJournal

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "Recorder",
    "container_type",
    "import_model",
    "model_path",
    "restore_container",
]

DEFAULT_MAX_RESULT_BYTES = 16 * 1024 * 1024
"""The default largest JSON-encoded result a journal accepts (16 MiB)."""


class Recorder:
    """Records the status changes of one state, in order.

    Args:
        state: the state recorded (its ``history``, ``event_bus``, ``state_backend``,
            ``max_result_bytes`` and ``record_input_hashes``). When its state backend is
            also an event journal, every status change is appended to it as it happens.

    Raises:
        LifecycleError: the journal already holds another run under this state id.
    """

    __slots__ = ("_journal", "_seq", "_state")

    def __init__(self, state: ExecutionState) -> None:
        self._state = state
        self._seq = len(state.history)
        self._journal = _open_journal(state)

    @property
    def journal(self) -> EventJournal | None:
        """The journal status changes are appended to (None: not resumable)."""
        return self._journal

    async def record(
        self, event: ExecutionEvent[Any], status: ExecutionStatus | None = None
    ) -> None:
        """Record a status change: journal, history, then the event bus.

        The history and the bus receive one immutable copy of ``event``.

        Raises:
            StateError: the journal could not store the entry (e.g. disk full); what was
                recorded before is intact, and the entry is not in the history either.
        """
        if status is not None and event.execution_status is not status:
            if is_snapshot(event):
                event = thaw(event)  # record a new status of a copy, never of the entry
            event.__dict__["execution_status"] = status
        snapshot = freeze(event)
        seq = self._seq + 1
        if self._journal is not None:
            self._append(snapshot, seq)
        self._seq = seq
        state = self._state
        state.history.append(snapshot)
        bus = state.event_bus
        if not snapshot.skip_republish and bus.has_listeners():
            await bus.publish(snapshot)

    def _append(self, snapshot: ExecutionEvent[Any], seq: int) -> None:
        journal = self._journal
        assert journal is not None
        state_id = self._state.state_id
        started = perf_counter()
        try:
            journal.append_event(state_id, event_to_record(snapshot, seq))
        except StateError:
            raise
        except Exception as exc:
            raise StateError(
                f"Could not append '{snapshot.address}' ({snapshot.execution_status.value}) "
                f"to the history of state {state_id}: {type(exc).__name__}: {exc}. "
                "Everything recorded before is intact; fix the backend (e.g. free disk "
                "space) and resume the run."
            ) from exc
        tel = self._state.instrumentation
        if tel.enabled:
            tel.journal_written(journal, perf_counter() - started)

    def input_hash(self, data: Any) -> str | None:
        """The input fingerprint to record, or None when this state records none."""
        if self._state.record_input_hashes is False:
            return None
        return input_fingerprint(data)

    def encode_result(self, actor: BaseActor, value: Any, event: ExecutionEvent[Any]) -> None:
        """Encode ``value`` into ``event``'s record once, for the journal and snapshots.

        Raises:
            ResultSerializationError: the value cannot be stored in the history (not
                JSON-serializable, a generator, a cycle, over ``max_result_bytes``).
        """
        limit = self._state.max_result_bytes if self._journal is not None else None
        private = event.__pydantic_private__
        assert private is not None
        if value is None or isinstance(value, int | float | bool):
            private["_record_result"] = value
            private["_result_type"] = None
            return
        if isinstance(value, str):
            # JSON escapes a character into at most 6 bytes; measure only when it matters.
            if limit is not None and len(value) * 6 + 2 > limit:
                _check_size(actor, value, len(json.dumps(value)), limit)
            private["_record_result"] = value
            private["_result_type"] = None
            return
        try:
            if isinstance(value, BaseModel):
                encoded = value.model_dump(mode="json")
                result_type: str | None = model_path(type(value))
            else:
                if isinstance(value, Iterator | AsyncIterator) or inspect.isawaitable(value):
                    raise ResultSerializationError(
                        f"The result of actor '{actor.name}' is a {type(value).__name__}, "
                        "which storing in the history would consume (and a resumed run "
                        "could not replay); return a list (or another value) instead."
                    )
                encoded = to_jsonable_python(value)
                result_type = container_type(value)
            if self._journal is not None:
                size = len(json.dumps(encoded))
                if limit is not None:
                    _check_size(actor, value, size, limit)
        except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
            circular = "circular" in str(exc).lower() or isinstance(exc, RecursionError)
            hint = (
                "It refers to itself (a cycle); return a copy without the back-reference."
                if circular
                else "Return a pydantic model, primitives, lists or dicts."
            )
            raise ResultSerializationError(
                f"The result of actor '{actor.name}' is a {type(value).__name__} that "
                f"cannot be stored in the history ({type(exc).__name__}: {exc}), so the run "
                f"could not be resumed. {hint}"
            ) from exc
        private["_record_result"] = encoded
        private["_result_type"] = result_type


def _check_size(actor: BaseActor, value: Any, size: int, limit: int) -> None:
    if size > limit:
        raise ResultSerializationError(
            f"The result of actor '{actor.name}' is {_mib(size)} when encoded for the "
            f"history, over max_result_bytes={limit} ({_mib(limit)}). Store large data "
            "in an artifact (ExecutionState(artifact_backend=...)) and return its "
            "reference, or raise ExecutionState(max_result_bytes=...)."
        )


def _open_journal(state: ExecutionState) -> EventJournal | None:
    """The state backend as a journal, ready to receive this state's records."""
    backend = state.state_backend
    if backend is None or not callable(getattr(backend, "append_event", None)):
        return None
    journal: EventJournal = backend  # type: ignore[assignment]
    state_id = state.state_id
    if not backend.exists(state_id):
        backend.save_state(state.to_snapshot())
    elif not len(state.history) and journal.load_events(state_id):
        # A fresh state under the id of a stored run would append a second history
        # to it, and a later resume would mix the two runs.
        raise LifecycleError(
            f"{type(backend).__name__} already holds a history for state "
            f"'{state_id}'. Resume it with ExecutionState.load_from_state_id("
            f"{state_id!r}, backend), or start a new run with another "
            "state_id (or none, for a fresh one)."
        )
    if len(state.history) and not journal.load_events(state_id):
        # A restored history entering a journal that does not hold it yet (a
        # snapshot moved to another backend, or saved without its journal): the
        # journal is what load_from_state_id reads, so it must start with it.
        for record in state.history.to_records():
            journal.append_event(state_id, record)
    return journal


def model_path(cls: type[BaseModel]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


_CONTAINERS: dict[type, str] = {tuple: "tuple", set: "set", frozenset: "frozenset"}


def container_type(value: Any) -> str | None:
    """How to give a result without output_model back its Python type on replay.

    JSON has lists and string-keyed objects only: a tuple or a set, or a list or dict of
    one pydantic model, would replay as lists and plain dicts. Only the outer container
    is recorded (e.g. ``"list[app.models:Doc]"``); inside it, values come back in their
    JSON form, so declare an output_model for anything deeper.
    """
    kind = _CONTAINERS.get(type(value))
    if isinstance(value, list | tuple) and value:
        first = type(value[0])
        if issubclass(first, BaseModel) and all(type(v) is first for v in value):
            return f"{kind or 'list'}[{model_path(first)}]"
    elif isinstance(value, dict) and value:
        first = type(next(iter(value.values())))
        if (
            issubclass(first, BaseModel)
            and all(type(k) is str for k in value)
            and all(type(v) is first for v in value.values())
        ):
            return f"dict[{model_path(first)}]"
    return kind


def restore_container(kind: str, raw: Any) -> Any:
    """The inverse of :func:`container_type` (raw is the recorded JSON form)."""
    outer, _, inner = kind.partition("[")
    model = import_model(inner[:-1]) if inner else None
    if outer == "dict" and isinstance(raw, dict):
        return {k: model.model_validate(v) for k, v in raw.items()} if model else raw
    if not isinstance(raw, list):
        return raw
    items = [model.model_validate(v) for v in raw] if model else raw
    if outer == "tuple":
        return tuple(items)
    if outer == "set":
        return set(items)
    if outer == "frozenset":
        return frozenset(items)
    return items


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB" if size >= 1024 * 1024 else f"{size} bytes"


def import_model(path: str) -> type[BaseModel] | None:
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) and issubclass(obj, BaseModel) else None
