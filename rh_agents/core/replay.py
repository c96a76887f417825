"""Replay: a restored run returns what it recorded instead of running it again.

Everything that makes resuming correct lives here: restoring a state from a snapshot or
from a backend's journal (refusing another pipeline's history, reporting damage),
indexing the completions of the restored history, checking that the program resuming is
the one that recorded it (its top-level actors and the versions of its actors), deciding
which recorded completion a call returns (:meth:`Replayer.match`: same address and
input, or a sibling call's with the same input), giving back the recorded value with its
type, and, in VALIDATION mode, comparing what a re-run produced with what was recorded.

Nothing read from storage chooses code: a recorded result gets its Python type from
the actor's ``output_model`` or from the types the program registered
(``ExecutionState(result_types=[...])``), never from a module named in the record;
otherwise it is returned as the JSON value that was stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from rh_agents.core.errors import (
    InputValidationError,
    InvalidArgumentError,
    SnapshotMismatchError,
    StateCorruptedError,
    StateNotFoundError,
)
from rh_agents.core.events import EventKind, ExecutionEvent
from rh_agents.core.history import HistorySet, input_fingerprint, record_to_event, recorded_json
from rh_agents.core.recording import model_path
from rh_agents.core.result_types import LLM_Result, Tool_Result
from rh_agents.core.state_recovery import ReplayMode, StateMetadata, StateSnapshot
from rh_agents.core.types import ExecutionStatus

if TYPE_CHECKING:
    from rh_agents.core.actors import BaseActor
    from rh_agents.core.execution import ExecutionState
    from rh_agents.core.storage import StateBackend

__all__ = [
    "RecordedProgram",
    "Replayer",
    "load_state_history",
    "restored_history",
    "restored_metadata",
]

# The logger keeps the name of the module replay came from (users configure it).
logger: logging.Logger = logging.getLogger("rh_agents.execution")


class Replayer:
    """Decides, for each call of a restored run, whether it returns a recorded result.

    Args:
        state: the state whose restored history is replayed (its ``replay_mode``, its
            ``divergences`` and its ``recorder`` for divergence warnings).

    Attributes:
        active: whether the state has completions to replay (it was restored).
    """

    __slots__ = (
        "_claimed",
        "_index",
        "_more_siblings",
        "_program",
        "_siblings",
        "_state",
        "_types",
        "active",
    )

    def __init__(self, state: ExecutionState, result_types: Iterable[type[BaseModel]] = ()) -> None:
        self._state = state
        self._index: dict[str, ExecutionEvent[Any]] = {}
        # Completions by sibling key (see _sibling_key): the first one recorded, the
        # others (few keys have any: one list per key would cost a resume a list and a
        # tuple per completion); and those already replayed.
        self._siblings: dict[str, ExecutionEvent[Any]] = {}
        self._more_siblings: dict[str, list[ExecutionEvent[Any]]] = {}
        self._claimed: set[str] = set()
        self._program = RecordedProgram()
        self._types = _known_types(result_types)
        self.active: bool = False

    def load(self, history: HistorySet, program: RecordedProgram | None = None) -> None:
        """Index the completions of a restored ``history``; calls at their addresses
        return the recorded results from now on. ``program`` is what the history says
        about the program that recorded it (checked at every call)."""
        self._index = index = history.completions()  # a new dict: this index's own
        siblings: dict[str, ExecutionEvent[Any]] = {}
        more: dict[str, list[ExecutionEvent[Any]]] = {}
        self._siblings, self._more_siblings = siblings, more
        self._claimed = set()
        self._program = program if program is not None else RecordedProgram()
        for address, event in index.items():
            if event.input_hash is not None:
                key = _sibling_key(address)
                if siblings.setdefault(key, event) is not event:
                    more.setdefault(key, []).append(event)
        self.active = bool(index)

    def recorded(self, actor: BaseActor, address: str) -> ExecutionEvent[Any] | None:
        """The completion recorded at ``address`` (VALIDATION mode compares with it).

        Raises:
            SnapshotMismatchError: the stored run was recorded by a different program.
        """
        self._check_program(actor, address)
        return self._index.get(address)

    def reload(self, history: HistorySet) -> None:
        """Index ``history`` again (a run resumed in place), keeping the recorded
        program that :meth:`load` was given."""
        self.load(history, self._program)

    def _check_program(self, actor: BaseActor, address: str) -> None:
        """Refuse a call the recorded program would not have made: a top-level actor it
        never called, or an actor of another version."""
        if not self._state.check_program:
            return
        program = self._program
        fix = (
            "Start a fresh run (a new state_id), resume it with the program that wrote it, "
            "or pass check_program=False to resume anyway."
        )
        recorded = program.versions.get(actor.name)
        if recorded is not None and recorded != actor.version:
            raise SnapshotMismatchError(
                f"The stored history of state '{self._state.state_id}' was recorded with "
                f"version {recorded} of actor '{actor.name}', but this program has version "
                f"{actor.version}: its recorded results may not be what this version "
                f"returns. {fix}"
            )
        if program.roots and "/" not in address and actor.name not in program.roots:
            names = ", ".join(f"'{name}'" for name in sorted(program.roots))
            raise SnapshotMismatchError(
                f"The stored history of state '{self._state.state_id}' was recorded by a "
                f"program whose top-level calls are {names}, but this program calls actor "
                f"'{actor.name}' at the top level: it belongs to another program, and "
                f"recording into it would mix two runs. {fix}"
            )

    def match(
        self, actor: BaseActor, address: str, validate: Callable[[], Any]
    ) -> tuple[ExecutionEvent[Any] | None, str | None]:
        """The recorded completion this call replays (None: run it), and its fingerprint.

        A call replays the completion recorded at its own address when the input is the
        same. Calls of one actor under one parent take their ordinals when they start, so
        siblings started concurrently (``asyncio.gather`` of branches that await first)
        may get each other's addresses in another run: a call whose input differs from
        its own address's record replays the sibling completion (same parent, actor and
        tag) recorded with its input instead. Each completion is replayed at most once.
        ``validate`` returns the validated input (called only when fingerprints matter).

        Raises:
            SnapshotMismatchError: the stored run was recorded by a different program.
        """
        self._check_program(actor, address)
        own = self._index.get(address)
        if own is not None and own.address in self._claimed:
            own = None  # a sibling call replayed it already
        key = _sibling_key(address)
        first = self._siblings.get(key)
        if own is None and first is None:
            return None, None
        where = f"'{address}'"
        fix = (
            "Start a fresh run (a new state_id), or resume this one with the program and "
            "inputs that wrote it."
        )
        if own is not None:
            if own.actor_name is not None and own.actor_name != actor.name:
                raise SnapshotMismatchError(
                    f"The stored history has actor '{own.actor_name}' at {where}, but this "
                    f"program calls actor '{actor.name}' there: the history was written by "
                    f"a different program, so its result cannot be replayed. {fix}"
                )
            if own.event_type is not None and own.event_type is not actor.event_type:
                raise SnapshotMismatchError(
                    f"The stored history has a {own.event_type.value} at {where}, but this "
                    f"program makes a {actor.event_type.value} there (actor '{actor.name}'): "
                    f"the history was written by a different program. {fix}"
                )
            if own.input_hash is None:
                self._claimed.add(own.address)
                return own, None
        try:
            data = validate()
        except InputValidationError as exc:
            if own is None:
                return None, None  # the call itself reports the invalid input
            raise SnapshotMismatchError(
                f"Actor '{actor.name}' completed at {where} in the stored history, but the "
                f"input it is called with now does not validate into its input_model: the "
                f"history was written by a different program. {fix}"
            ) from exc
        current = input_fingerprint(data)
        if own is not None and own.input_hash == current:
            self._claimed.add(own.address)
            return own, current
        for sibling in () if first is None else (first, *self._more_siblings.get(key, ())):
            if sibling.input_hash == current and sibling.address not in self._claimed:
                self._claimed.add(sibling.address)
                return sibling, current
        if own is not None:
            raise SnapshotMismatchError(
                f"Actor '{actor.name}' completed at {where} in the stored history with a "
                f"different input (fingerprint {own.input_hash}, now {current}), and no "
                f"sibling call of it completed with this input, so its recorded result "
                f"would be wrong for this call. {fix}"
            )
        return None, current

    def recorded_value(self, actor: BaseActor, recorded: ExecutionEvent[Any]) -> Any:
        """The recorded result as the value the program gets: validated into the actor's
        output_model (or into the registered type the record names) again; otherwise the
        stored JSON value.

        Raises:
            SnapshotMismatchError: it no longer validates (another program version).
        """
        raw = recorded_json(recorded)
        kind = recorded._result_type
        model: type[BaseModel] | None = actor.output_model
        if raw is None or (model is None and not kind):
            return raw
        try:
            if model is not None:
                return model.model_validate(raw)
            return _restore(kind or "", raw, self._types)
        except ValidationError as exc:
            target = model.__name__ if model is not None else kind
            raise SnapshotMismatchError(
                f"The recorded result at '{recorded.address}' no longer validates into "
                f"{target} ({exc.error_count()} error(s)); the history was written "
                "by a different version of the program. Start a fresh run instead of "
                "resuming this one."
            ) from exc

    def replay_into(
        self,
        actor: BaseActor,
        event: ExecutionEvent[Any],
        recorded: ExecutionEvent[Any],
        input_hash: str | None,
    ) -> Any:
        """Make ``event`` (the call's working copy) the replay of ``recorded``; returns
        the value the call gives back."""
        event.input_hash = input_hash
        value = self.recorded_value(actor, recorded)
        event.result = value
        event.is_replayed = True
        event.from_cache = recorded.from_cache
        event.execution_time = recorded.execution_time
        event.skip_republish = self._state.replay_mode is ReplayMode.NORMAL
        if not isinstance(value, str | int | float | bool):
            event._record_result = recorded_json(recorded)
        event._result_type = recorded._result_type
        return value

    async def check(self, event: ExecutionEvent[Any], recorded: ExecutionEvent[Any]) -> None:
        expected = recorded_json(recorded)
        failed = event.execution_status is not ExecutionStatus.COMPLETED
        actual = None if failed else recorded_json(event)
        input_changed = (
            recorded.input_hash is not None
            and event.input_hash is not None
            and recorded.input_hash != event.input_hash
        )
        if not failed and expected == actual and not input_changed:
            return
        info = {
            "address": event.address,
            "expected": expected,
            "actual": actual,
            "expected_status": ExecutionStatus.COMPLETED.value,
            "actual_status": event.execution_status.value,
        }
        if input_changed:
            info["input_changed"] = True
        if failed:
            info["error"] = event.message
        self._state.divergences.append(info)
        logger.warning(
            "Replay divergence at %s: recorded %r, now %r (%s)",
            event.address,
            expected,
            actual,
            event.execution_status.value,
        )
        warning: ExecutionEvent[Any] = ExecutionEvent(
            kind=EventKind.DIVERGENCE,
            address=event.address,
            actor_name=event.actor_name,
            event_type=event.event_type,
            execution_status=ExecutionStatus.COMPLETED,
            message=f"Result at '{event.address}' differs from the recorded history.",
            metadata={"replay_divergence": info},
        )
        await self._state.recorder.record(warning)


def _sibling_key(address: str) -> str:
    """The address of an invocation without its ordinal (``a/b#2`` -> ``a/b``): the
    parent address and the actor key, which its siblings share. An address without
    any ``#`` (most) is its own key."""
    if "#" not in address:
        return address
    parent, separator, segment = address.rpartition("/")
    return parent + separator + segment.partition("#")[0]


# ----------------------------------------------------------------------- restoring


def restored_metadata(snapshot: StateSnapshot, pipeline_name: str | None) -> StateMetadata:
    """The metadata a state restored from ``snapshot`` by ``pipeline_name`` gets.

    Raises:
        SnapshotMismatchError: the snapshot belongs to another pipeline.
    """
    metadata = snapshot.metadata
    if pipeline_name is None:
        return metadata
    recorded = metadata.pipeline_name
    if recorded is not None and recorded != pipeline_name:
        raise SnapshotMismatchError(
            f"State '{snapshot.state_id}' was written by pipeline '{recorded}', not "
            f"by '{pipeline_name}' which tries to resume it; replaying its results "
            "would give wrong answers. Resume it with pipeline "
            f"'{recorded}', or start a fresh run (a new state_id)."
        )
    if recorded is None:
        metadata = metadata.model_copy(update={"pipeline_name": pipeline_name})
    return metadata


@dataclass
class RecordedProgram:
    """What a restored history says about the program that recorded it.

    Attributes:
        versions: the version each actor had (the last one its calls recorded).
        roots: the names of the actors it called at the top level.
    """

    versions: dict[str, str] = field(default_factory=dict)
    roots: set[str] = field(default_factory=set)


def _fill(history: HistorySet, records: Iterator[Any]) -> RecordedProgram:
    """Restore ``records`` into ``history`` (one entry each, checked); what they say
    about the program."""
    program = RecordedProgram()
    versions, roots = program.versions, program.roots
    append = history.append
    for position, record in enumerate(records):
        event = record_to_event(record, position)
        append(event)
        name = event.actor_name
        if name is None or event.kind != EventKind.EVENT:
            continue
        version = event.__pydantic_private__.get("_actor_version")  # type: ignore[union-attr]
        if version is not None:
            versions[name] = version
        if "/" not in event.address:
            roots.add(name)
    return program


def restored_history(snapshot: StateSnapshot) -> tuple[HistorySet, dict[str, Any], RecordedProgram]:
    """The history and the storage of ``snapshot``, and what it says about its program.

    Raises:
        StateCorruptedError: the snapshot's history cannot be read.
    """
    body = snapshot.execution_state
    events = body.get("events", [])
    storage = body.get("storage") or {}
    if not isinstance(events, list) or not isinstance(storage, dict):
        raise StateCorruptedError(
            f"The snapshot of state '{snapshot.state_id}' has no readable history (events "
            f"is a {type(events).__name__}, storage a {type(storage).__name__}); it was "
            "written by another program or is damaged. Start a fresh run."
        )
    history = HistorySet()
    program = _fill(history, iter(events))
    return history, dict(storage), program


def load_state_history(
    state_id: str, backend: StateBackend
) -> tuple[StateSnapshot, HistorySet, RecordedProgram]:
    """The stored snapshot of ``state_id`` and its history: the journal's records when
    the backend has any (read once, as they come, into the history), else the
    snapshot's.

    Raises:
        StateNotFoundError: the backend has no such state.
        StateCorruptedError: a record is damaged or missing.
    """
    snapshot = backend.load_state(state_id)
    history = HistorySet()
    program = RecordedProgram()
    read = getattr(backend, "iter_events", None) or getattr(backend, "load_events", None)
    if callable(read):
        program = _fill(history, iter(read(state_id)))
    if snapshot is None and not len(history):
        known = ", ".join(backend.list_states()[:10]) or "none"
        raise StateNotFoundError(
            f"No state '{state_id}' in {type(backend).__name__}; known states: "
            f"{known}. Start a fresh run, or pass the id of an existing state."
        )
    if snapshot is None:
        snapshot = StateSnapshot(state_id=state_id, execution_state={})
    if not len(history):
        history, _, program = restored_history(snapshot)
    return snapshot, history, program


# ------------------------------------------------------------- result types

_BUILTIN_TYPES: tuple[type[BaseModel], ...] = (LLM_Result, Tool_Result)


def _known_types(result_types: Iterable[type[BaseModel]]) -> dict[str, type[BaseModel]]:
    """The types a record may name, by the name records use ("module:qualname")."""
    known: dict[str, type[BaseModel]] = {}
    for cls in (*_BUILTIN_TYPES, *result_types):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            raise InvalidArgumentError(
                f"result_types must be pydantic model classes, got {cls!r}. Pass the "
                "models your actors return without declaring an output_model."
            )
        known[model_path(cls)] = cls
    return known


_CONTAINERS: dict[str, Callable[[list[Any]], Any]] = {
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
}


def _restore(kind: str, raw: Any, types: dict[str, type[BaseModel]]) -> Any:
    """The recorded value of a result without output_model, given back its recorded
    type: a registered model, or an outer container (see ``container_type``) of them.
    A model the program did not register is not looked up: the JSON value stays."""
    outer, _, inner = kind.partition("[")
    if not inner:
        model = types.get(kind)
        if model is not None:
            return model.model_validate(raw)
        make = _CONTAINERS.get(kind)
        return _container(make, raw) if make is not None else raw
    model = types.get(inner[:-1])
    if model is None:
        return raw
    if outer == "dict" and isinstance(raw, dict):
        return {k: model.model_validate(v) for k, v in raw.items()}
    if not isinstance(raw, list):
        return raw
    items = [model.model_validate(v) for v in raw]
    make = _CONTAINERS.get(outer)
    return make(items) if make is not None else items


def _container(make: Callable[[list[Any]], Any], raw: Any) -> Any:
    if not isinstance(raw, list):
        return raw
    try:
        return make(raw)
    except TypeError:  # unhashable members (a set of lists): the JSON value stays
        return raw
