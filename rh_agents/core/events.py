"""ExecutionEvent: one invocation of an actor (and ExecutionResult, what it returned).

``await ExecutionEvent(actor=tool)(input_data, extra_context, state)`` runs the actor:
it takes a context-local address, validates the input, runs preconditions, the handler
(through the cache for cacheable actors, with the actor's opt-in retries) and
postconditions, publishes STARTED then exactly one terminal status, and returns an
:class:`ExecutionResult`. A handler exception becomes ``ok=False``; cancellation is never
turned into a result: it is recorded as CANCELLED and re-raised.

In a state restored from a snapshot or backend, an invocation whose address completed in
the restored history returns the recorded result without calling the handler
(``is_replayed``, status RECOVERED).
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any, ClassVar, Generic

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from typing_extensions import TypeVar

from rh_agents.core._models import (
    assemble,
    clone,
    set_extra,
    set_fields_set,
    set_model_dict,
    set_private,
)
from rh_agents.core._runner import run_event
from rh_agents.core.actors import BaseActor
from rh_agents.core.errors import ImmutableEventError, InvalidArgumentError
from rh_agents.core.executors import remote_call_error
from rh_agents.core.result import ExecutionResult, make_result
from rh_agents.core.types import EventType, ExecutionStatus
from rh_agents.core.usage import TokenUsage

if TYPE_CHECKING:
    from rh_agents.core.execution import ExecutionState

__all__ = ["EventKind", "ExecutionEvent", "ExecutionResult", "clone", "make_result"]

T = TypeVar("T", default=Any)


class EventKind:
    """Values of :attr:`ExecutionEvent.kind`: what a bus message describes."""

    EVENT = "event"
    GROUP = "group"
    DIVERGENCE = "divergence"


class ExecutionEvent(BaseModel, Generic[T]):
    """One invocation of an actor, and each status change of it on the event bus.

    Build one with the actor (and optionally a ``tag`` that becomes part of the address),
    then call it. After the call the object reflects what happened (``address``,
    ``execution_status``, ``is_replayed``, ...). What subscribers and the history receive
    are immutable copies taken at each status change, so a later change never alters what
    a subscriber already saw.

    Type checkers infer ``T`` from the actor: built with a ``Tool[Query, list[str]]``,
    the event is an ``ExecutionEvent[list[str]]`` and calling it returns an
    ``ExecutionResult[list[str]]``.

    Example:
        >>> event = ExecutionEvent(actor=search_tool, tag="first")  # doctest: +SKIP
        >>> result = await event(Query(text="x"), {}, state)  # doctest: +SKIP
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    if TYPE_CHECKING:
        # Type checkers infer T from the actor: ExecutionEvent(actor=Tool[Q, A](...)) is
        # an ExecutionEvent[A], and calling it returns an ExecutionResult[A].
        actor: BaseActor[Any, T] | None = None
    else:
        actor: BaseActor | None = None
    kind: str = EventKind.EVENT
    address: str = ""
    tag: str = ""
    actor_name: str | None = None
    event_type: EventType | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    timestamp: float = Field(default_factory=time.time)
    execution_time: float | None = None
    execution_status: ExecutionStatus = ExecutionStatus.STARTED
    message: str | None = None
    detail: str | None = None
    error_type: str | None = None
    result: Any = None
    from_cache: bool = False
    is_replayed: bool = False
    skip_republish: bool = False
    group_id: str | None = None
    parallel_index: int | None = None
    is_parallel: bool = False
    retry_attempt: int = 0
    is_retry: bool = False
    original_error: str | None = None
    retry_delay: float | None = None
    input_hash: str | None = None
    """Fingerprint of the validated input, recorded when the history can be resumed; a
    resumed run refuses to replay a result recorded for a different input."""
    usage: TokenUsage | None = None
    """Tokens the invocation's model calls used (``record_usage``, or the ``usage`` of an
    LLM actor's result); set on its terminal entry, None when nothing was reported."""

    # The JSON form of ``result`` once computed (shared by the journal and snapshots).
    _record_result: Any = PrivateAttr(default=None)
    _result_type: str | None = PrivateAttr(default=None)
    # The version of the actor that ran it (recorded; a resumed run compares it).
    _actor_version: str | None = PrivateAttr(default=None)

    if not TYPE_CHECKING:  # type checkers keep pydantic's signature (the fields)

        def __init__(self, /, **data: Any) -> None:
            # The common construction, ExecutionEvent(actor=a) or (actor=a, tag="t"),
            # is built without validation (see _fast_init); anything else is validated.
            if type(self) is not ExecutionEvent or not _fast_init(self, data):
                BaseModel.__init__(self, **data)

        # pydantic's marker of its own __init__: validating an ExecutionEvent (as a
        # field of a model, model_validate) keeps going through pydantic-core.
        __init__.__pydantic_base_init__ = True

    @property
    def name(self) -> str | None:
        """The actor's name (also for restored events that carry no actor object)."""
        if self.actor_name is not None:
            return self.actor_name
        return self.actor.name if self.actor is not None else None

    @property
    def depth(self) -> int:
        """How deep in the call tree this invocation is (0 for a top-level call)."""
        return self.address.count("/") if self.address else 0

    async def __call__(
        self,
        input_data: Any = None,
        extra_context: dict[str, Any] | None = None,
        execution_state: ExecutionState | None = None,
    ) -> ExecutionResult[T]:
        """Run the actor and return its result (see the module docstring)."""
        if self.actor is None:
            raise InvalidArgumentError(
                "This ExecutionEvent has no actor; build it as ExecutionEvent(actor=...)."
            )
        shipped = remote_call_error(self.actor.name)
        if shipped is not None:
            raise shipped
        if execution_state is None:
            raise InvalidArgumentError(
                f"Calling the event for actor '{self.actor.name}' needs the ExecutionState: "
                "await event(input_data, extra_context, execution_state)."
            )
        return await run_event(self, input_data, extra_context or {}, execution_state)


def _refuse_change(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise ImmutableEventError(
        "The metadata of a history entry (the event subscribers receive) cannot be "
        "changed; copy it with dict(event.metadata) and change the copy."
    )


class _ReadOnlyDict(dict[str, Any]):
    """The metadata of an event snapshot: a dict for reading, refusing every change."""

    __slots__ = ()

    __setitem__ = __delitem__ = __ior__ = _refuse_change
    clear = pop = popitem = setdefault = update = _refuse_change

    def copy(self) -> dict[str, Any]:
        return dict(self)

    def __copy__(self) -> _ReadOnlyDict:
        return self  # immutable: a copy can be the same object

    def __deepcopy__(self, memo: dict[int, Any]) -> _ReadOnlyDict:
        return _ReadOnlyDict(copy.deepcopy(dict(self), memo))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_ReadOnlyDict, (dict(self),))


_NO_METADATA = _ReadOnlyDict()
_fields_sets: dict[frozenset[str], frozenset[str]] = {}
_NO_PRIVATE: dict[str, Any] = {
    name: attribute.get_default()
    for name, attribute in ExecutionEvent.__private_attributes__.items()
}
"""The private attributes at their declared defaults (no encoded result): shared by most
snapshots (they never change theirs, and copies (:func:`thaw`) copy it); a new event
gets a copy of it (see ``_post_init``)."""
_VERSIONED: dict[str, dict[str, Any]] = {}  # the same, per actor version


def _shared_private(private: dict[str, Any] | None) -> dict[str, Any]:
    """The private attributes a snapshot keeps: a shared dict when no result is encoded."""
    if private is None:
        return _NO_PRIVATE
    if private.get("_record_result") is not None:
        return dict(private)
    return _private_for(private.get("_result_type"), private.get("_actor_version"))


def _private_for(result_type: str | None, version: str | None) -> dict[str, Any]:
    """The private attributes of a snapshot with no encoded result (shared when possible)."""
    if result_type is not None:
        return {"_record_result": None, "_result_type": result_type, "_actor_version": version}
    if version is None:
        return _NO_PRIVATE
    shared = _VERSIONED.get(version)
    if shared is None:
        shared = {"_record_result": None, "_result_type": None, "_actor_version": version}
        if len(_VERSIONED) < 1024:
            _VERSIONED[version] = shared
    return shared


class _EventSnapshot(ExecutionEvent[Any]):
    """An immutable copy of an ExecutionEvent at one status change.

    The history keeps these and every subscriber receives the same one, so nothing can
    change what another part of the program has seen: setting an attribute or changing
    the metadata raises :class:`~rh_agents.core.errors.ImmutableEventError`. Its
    ``result`` is the value itself, shared with the caller (not copied): treat it as
    read-only. ``model_copy()`` returns an ordinary, mutable ExecutionEvent.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        raise ImmutableEventError(
            f"Cannot set {name!r} on the event of '{self.address}' "
            f"({self.execution_status.value}): history entries and the events subscribers "
            "receive are immutable snapshots. Change a copy: "
            "event.model_copy(update={...})."
        )

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __copy__(self) -> ExecutionEvent[Any]:  # type: ignore[override]
        return thaw(self)

    def __deepcopy__(  # type: ignore[override]
        self, memo: dict[int, Any] | None = None
    ) -> ExecutionEvent[Any]:
        fields = copy.deepcopy(self.__dict__, memo)
        fields["metadata"] = dict(fields["metadata"])
        fields_set = set(self.__pydantic_fields_set__)
        return assemble(ExecutionEvent, fields, fields_set, self.__pydantic_private__)

    def __reduce__(self) -> Any:
        return (
            _unpickle_snapshot,
            (self.__dict__, self.__pydantic_private__, self.__pydantic_fields_set__),
        )

    def __repr_name__(self) -> str:
        return "ExecutionEvent"


def _unpickle_snapshot(
    fields: dict[str, Any], private: dict[str, Any] | None, fields_set: frozenset[str]
) -> ExecutionEvent[Any]:
    fields = dict(fields)
    fields["metadata"] = _ReadOnlyDict(fields["metadata"])
    return assemble(_EventSnapshot, fields, frozenset(fields_set), private)


# A validated ExecutionEvent gets its private attributes' defaults from pydantic's
# ``model_post_init``, which asks each attribute for its default on every construction:
# a fifth of building the event a program makes for every call. The event's own are
# fixed (all None, ``_NO_PRIVATE``), so a copy of them is set instead. pydantic calls
# ``model_post_init`` by name on the new instance (``__pydantic_post_init__``; a test
# pins both), so replacing it on the class is enough; a subclass or a parametrized
# ``ExecutionEvent[T]`` (its own private attributes, maybe) keeps pydantic's.
_pydantic_post_init = ExecutionEvent.model_post_init


def _post_init(self: ExecutionEvent[Any], context: Any, /) -> None:
    if type(self) is ExecutionEvent and getattr(self, "__pydantic_private__", None) is None:
        set_private(self, _NO_PRIVATE.copy())
    else:
        _pydantic_post_init(self, context)


ExecutionEvent.model_post_init = _post_init  # type: ignore[method-assign,assignment]

# ``ExecutionEvent(actor=a)`` is the construction a program makes for every call, and
# validating it cost more than the rest of building it: pydantic-core looks up each of
# the 26 fields in the input and takes its default. When only the actor (and a tag) are
# given, with the types validation would accept unchanged, the event is assembled from
# its fields' declared defaults instead: the same fields, fields set and private
# attributes (a test compares the two ways over the accepted inputs).
_NEW_EVENT: dict[str, Any] = {
    name: None if field.default_factory is not None else field.default
    for name, field in ExecutionEvent.model_fields.items()
}
_FACTORIES = {
    name: field.default_factory
    for name, field in ExecutionEvent.model_fields.items()
    if field.default_factory is not None
}
# The two default factories are called inline below; were the fields to change, every
# construction would be validated instead.
_FAST_KEYS = (
    frozenset({"actor", "tag"})
    if _FACTORIES == {"metadata": dict, "timestamp": time.time}
    else frozenset()
)


def _fast_init(event: ExecutionEvent[Any], data: dict[str, Any]) -> bool:
    """Fill ``event`` as validating ``data`` would, if ``data`` is the actor (a
    BaseActor, which validation keeps as it is) and maybe a tag (a str); False (nothing
    done) for anything else."""
    if not data.keys() <= _FAST_KEYS or not isinstance(data.get("actor"), BaseActor):
        return False
    fields = _NEW_EVENT.copy()
    if "tag" in data:
        if type(data["tag"]) is not str:
            return False
        fields["tag"] = data["tag"]
    fields["actor"] = data["actor"]
    fields["metadata"] = {}
    fields["timestamp"] = time.time()
    set_model_dict(event, fields)
    set_fields_set(event, set(data))
    set_extra(event, None)
    set_private(event, _NO_PRIVATE.copy())
    return True


def freeze(event: ExecutionEvent[Any]) -> ExecutionEvent[Any]:
    """An immutable snapshot of ``event`` as it is now (the event itself if it is one).

    One snapshot is taken per status change and shared by the history, the journal and
    every subscriber; it holds no mutable container of its own (the metadata is a
    read-only copy), so a later change of the event never alters it.
    """
    if type(event) is _EventSnapshot:
        return event
    # Snapshots never change, so equal field sets can be one shared object.
    key = frozenset(event.__pydantic_fields_set__)
    fields_set = _fields_sets.setdefault(key, key) if len(_fields_sets) < 1024 else key
    return snapshot_of(event.__dict__, fields_set, event.__pydantic_private__)


_new_snapshot = _EventSnapshot.__new__


def _blank_fields() -> dict[str, Any]:
    """Every field at its default (no metadata, time 0.0), set in declaration order into
    a snapshot's own dictionary: CPython gives it the key table shared by the class's
    instances (a split dictionary), and so does every copy of it."""
    values: dict[str, Any] = _new_snapshot(_EventSnapshot).__dict__
    for name, info in ExecutionEvent.model_fields.items():
        values[name] = info.get_default(call_default_factory=True)
    values["metadata"] = _NO_METADATA
    values["timestamp"] = 0.0
    return values


_copy_blank = _blank_fields().copy


def snapshot_of(
    fields: dict[str, Any],
    fields_set: frozenset[str],
    private: dict[str, Any] | None,
) -> ExecutionEvent[Any]:
    """An immutable snapshot with these field values (``fields`` has every field),
    without validation: the history's entries are made here, live ones and restored ones.

    The snapshot's dictionary is a copy of one with every field (see
    :func:`snapshot_fields`) updated with ``fields``: two calls in C instead of a store
    per field, and it keeps the key table all snapshots share (a split dictionary of
    about 280 bytes instead of 830: the history of a long run holds two per call).
    """
    values = _copy_blank()
    values.update(fields)
    snapshot = _new_snapshot(_EventSnapshot)
    set_model_dict(snapshot, values)
    return _sealed(snapshot, fields_set, _shared_private(private))


def snapshot_fields() -> dict[str, Any]:
    """The fields of a new snapshot, each at its default (no metadata, time 0.0): the
    caller sets those it has, then passes them to :func:`seal_snapshot`. For builders
    that make many entries from other data (a resume reads every record of a history
    this way); the dictionary shares its key table (see :func:`snapshot_of`)."""
    return _copy_blank()


def seal_snapshot(
    values: dict[str, Any],
    fields_set: frozenset[str],
    result_type: str | None,
    version: str | None,
) -> ExecutionEvent[Any]:
    """The snapshot with the fields ``values`` from :func:`snapshot_fields` (no encoded
    result: ``result`` is its own JSON form, a restored entry's)."""
    snapshot = _new_snapshot(_EventSnapshot)
    set_model_dict(snapshot, values)
    return _sealed(snapshot, fields_set, _private_for(result_type, version))


def _sealed(
    snapshot: ExecutionEvent[Any], fields_set: frozenset[str], private: dict[str, Any]
) -> ExecutionEvent[Any]:
    values = snapshot.__dict__
    metadata = values["metadata"]
    if type(metadata) is not _ReadOnlyDict:
        values["metadata"] = _ReadOnlyDict(metadata) if metadata else _NO_METADATA
    set_fields_set(snapshot, fields_set)
    set_extra(snapshot, None)
    set_private(snapshot, private)
    return snapshot


def thaw(event: ExecutionEvent[Any]) -> ExecutionEvent[Any]:
    """An ordinary (mutable) ExecutionEvent with the fields of ``event``."""
    fields = event.__dict__.copy()
    fields["metadata"] = dict(fields["metadata"])
    fields_set = set(event.__pydantic_fields_set__)
    return assemble(ExecutionEvent, fields, fields_set, event.__pydantic_private__)


def is_snapshot(event: Any) -> bool:
    """Whether ``event`` is an immutable snapshot (a history entry or published event)."""
    return type(event) is _EventSnapshot
