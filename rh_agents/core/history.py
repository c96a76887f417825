"""HistorySet: the append-only timeline of every status change of a run.

The timeline keeps one entry per status change, in order (a call appears as STARTED,
then COMPLETED), and an index of the latest entry per address. Entries are immutable
snapshots taken by :meth:`ExecutionState.add_event`. Records are the JSON form written
to journals and snapshots; :func:`event_to_record` and :func:`record_to_event` convert.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from rh_agents.core.errors import StateCorruptedError
from rh_agents.core.events import EventKind, ExecutionEvent, seal_snapshot, snapshot_fields
from rh_agents.core.types import EventType, ExecutionStatus
from rh_agents.core.usage import TokenUsage

__all__ = [
    "HistorySet",
    "event_to_record",
    "input_fingerprint",
    "record_is_final",
    "record_to_event",
    "recorded_json",
]

_DONE = (ExecutionStatus.COMPLETED, ExecutionStatus.RECOVERED)


class HistorySet:
    """Every status change of a run, in order, with lookup of the latest by address.

    Example:
        >>> history = state.history  # doctest: +SKIP
        >>> [e.execution_status.value for e in history.get_event_list()]  # doctest: +SKIP
        ['started', 'completed']
        >>> history.has_completed_event("search")  # doctest: +SKIP
        True
    """

    # The index by address is built on the first lookup and kept up to date from then
    # on: a run that never looks entries up by address (the core does not) holds only
    # its entries. It has one entry per address (its latest entry); the completion of an
    # address is that entry, or, when a later status (a retry) came after it, kept
    # aside in _shadowed.
    __slots__ = ("_events", "_latest", "_shadowed")

    def __init__(self, events: Iterable[ExecutionEvent[Any]] = ()) -> None:
        self._events: list[ExecutionEvent[Any]] = []
        self._latest: dict[str, ExecutionEvent[Any]] | None = None
        self._shadowed: dict[str, ExecutionEvent[Any]] = {}
        for event in events:
            self.append(event)

    def append(self, event: ExecutionEvent[Any]) -> None:
        """Add one status change (the core does this; users rarely need to)."""
        self._events.append(event)
        if self._latest is not None:
            self._index_entry(self._latest, event)

    def _index_entry(self, latest: dict[str, ExecutionEvent[Any]], event: Any) -> None:
        if event.kind != EventKind.EVENT:
            return
        address = event.address
        if event.execution_status in _DONE:
            if self._shadowed:
                self._shadowed.pop(address, None)
        else:
            previous = latest.get(address)
            if previous is not None and previous.execution_status in _DONE:
                self._shadowed[address] = previous
        latest[address] = event

    def _index(self) -> dict[str, ExecutionEvent[Any]]:
        latest = self._latest
        if latest is None:
            latest = self._latest = {}
            for event in self._events:
                self._index_entry(latest, event)
        return latest

    @property
    def events(self) -> list[ExecutionEvent[Any]]:
        """The timeline (a copy)."""
        return list(self._events)

    def get_event_list(self) -> list[ExecutionEvent[Any]]:
        """The timeline: one entry per status change, in the order they happened."""
        return list(self._events)

    def has_completed_event(self, address: str) -> bool:
        """Whether the invocation at ``address`` completed (or was recovered)."""
        return self.get_completed_event(address) is not None

    def get_completed_event(self, address: str) -> ExecutionEvent[Any] | None:
        """The completing entry of ``address``, if it completed."""
        latest = self._index().get(address)
        if latest is not None and latest.execution_status in _DONE:
            return latest
        return self._shadowed.get(address)

    def get_event_result(self, address: str) -> Any:
        """The result of the completed invocation at ``address``.

        Raises:
            KeyError: nothing completed at that address.
        """
        event = self.get_completed_event(address)
        if event is None:
            raise KeyError(f"No completed invocation at address '{address}'.")
        return event.result

    def token_usage(self) -> TokenUsage:
        """The tokens of every model call of the run (see ``record_usage``).

        Each invocation's usage is on its terminal entry (completed, failed, cancelled),
        and a replayed call's entry carries none, so the sum counts each call once: for
        a resumed run, the calls it replayed are counted through the entries of the run
        that made them, which the restored history holds.

        Example:
            >>> state.history.token_usage().input_tokens  # doctest: +SKIP
            1840
        """
        total = TokenUsage()
        for event in self._events:
            if event.usage is not None:
                total = total + event.usage
        return total

    def completed_addresses(self) -> list[str]:
        """Addresses of every completed invocation, in the order they first completed."""
        return list(self.completions())

    def completions(self) -> dict[str, ExecutionEvent[Any]]:
        """The completing entry of every completed invocation by address (what
        :meth:`get_completed_event` returns: its latest completion), in the order the
        addresses first completed; one pass over the timeline (a resume indexes its
        history with it)."""
        found: dict[str, ExecutionEvent[Any]] = {}
        for event in self._events:
            if event.execution_status in _DONE and event.kind == EventKind.EVENT:
                found[event.address] = event
        return found

    def __getitem__(self, address: str) -> ExecutionEvent[Any]:
        try:
            return self._index()[address]
        except KeyError:
            raise KeyError(f"No invocation at address '{address}' in this history.") from None

    def __contains__(self, address: object) -> bool:
        return address in self._index()

    def __iter__(self) -> Iterator[tuple[str, ExecutionEvent[Any]]]:
        return iter(list(self._index().items()))

    def __len__(self) -> int:
        return len(self._events)

    def to_records(self) -> list[dict[str, Any]]:
        """The timeline as JSON-able records (see :func:`event_to_record`)."""
        return [event_to_record(event, seq) for seq, event in enumerate(self._events, 1)]

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]]) -> HistorySet:
        """Rebuild a history from records, in their order."""
        return cls(record_to_event(record, position) for position, record in enumerate(records))


# Type tuples for isinstance on the hot paths: `int | float` builds a union object at
# every call (four times the cost of the check itself).
_PRIMITIVES = (str, int, float, bool)
_NUMBERS = (int, float)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, _PRIMITIVES):
        return value
    return to_jsonable_python(value, fallback=repr)


def recorded_json(event: ExecutionEvent[Any]) -> Any:
    """The JSON form of ``event``'s result, as its record stores it.

    A result is encoded once, when its call completes (kept privately on the event);
    primitives and restored results are their own JSON form.
    """
    private = event.__pydantic_private__
    encoded = private.get("_record_result") if private else None
    if encoded is not None:
        return encoded
    return _jsonable(event.__dict__["result"])


_STATUS = {status: status.value for status in ExecutionStatus}
_EVENT_TYPE = {kind: kind.value for kind in EventType}
"""Enum values by member: a dict lookup, not the (slow) ``.value`` descriptor."""


# (record key, field, default): stored only when the value is not the default, so a
# record carries what happened and little else (a STARTED record has about 10 keys).
_OPTIONAL: tuple[tuple[str, str, Any], ...] = (
    ("tag", "tag", ""),
    ("execution_time", "execution_time", None),
    ("message", "message", None),
    ("detail", "detail", None),
    ("error_type", "error_type", None),
    ("from_cache", "from_cache", False),
    ("is_replayed", "is_replayed", False),
    ("group_id", "group_id", None),
    ("parallel_index", "parallel_index", None),
    ("is_parallel", "is_parallel", False),
    ("retry_attempt", "retry_attempt", 0),
    ("retry_delay", "retry_delay", None),
    ("original_error", "original_error", None),
    ("input_hash", "input_hash", None),
)


def event_to_record(event: ExecutionEvent[Any], seq: int) -> dict[str, Any]:
    """The JSON-able record of one history entry (the stored form of the history).

    A record always has ``seq``, ``kind``, ``address``, ``status``, ``actor``,
    ``event_type``, ``timestamp``, ``metadata`` and ``result``; every other key only
    when its value is not the field's default (:func:`record_to_event` restores those),
    e.g. ``version``, the actor's version (the program check of a resumed run compares
    it).
    """
    fields = event.__dict__
    event_type = fields["event_type"]
    metadata = fields["metadata"]
    actor = fields["actor_name"]
    if actor is None and fields["actor"] is not None:
        actor = fields["actor"].name
    record: dict[str, Any] = {
        "seq": seq,
        "kind": fields["kind"],
        "address": fields["address"],
        "status": _STATUS[fields["execution_status"]],
        "actor": actor,
        "event_type": _EVENT_TYPE[event_type] if event_type is not None else None,
        "timestamp": fields["timestamp"],
        "metadata": _jsonable(metadata) if metadata else {},
        "result": recorded_json(event),
    }
    for key, field, default in _OPTIONAL:
        value = fields[field]
        if value is not default and value != default:
            record[key] = value
    private = event.__pydantic_private__
    if private:
        result_type = private.get("_result_type")
        if result_type is not None:
            record["result_type"] = result_type
        version = private.get("_actor_version")
        if version is not None:
            record["version"] = version
    usage = fields["usage"]
    if usage is not None:
        record["usage"] = usage.to_record()
    return record


def record_is_final(event: ExecutionEvent[Any]) -> bool:
    """Whether :func:`event_to_record` of the snapshot ``event`` gives the same record
    whenever it is called: its metadata values are primitives and its result is one, or
    encoded (a snapshot's other fields are immutable). A value the program may still
    change (a list in the metadata, a group's result) makes it False: such a record is
    built at once, so it stores the value as it was."""
    fields = event.__dict__
    metadata = fields["metadata"]
    if metadata:
        for value in metadata.values():
            if value is not None and not isinstance(value, _PRIMITIVES):
                return False
    result = fields["result"]
    if result is None or isinstance(result, _PRIMITIVES):
        return True
    private = event.__pydantic_private__
    return private is not None and private.get("_record_result") is not None


_KINDS = frozenset({EventKind.EVENT, EventKind.GROUP, EventKind.DIVERGENCE})
_FIELDS_SET = frozenset({"address", "execution_status"})


def _text(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    raise TypeError(f"expected text, found a {type(value).__name__}")


def _number(value: Any) -> float | None:
    if value is None or (isinstance(value, _NUMBERS) and not isinstance(value, bool)):
        return value
    raise TypeError(f"expected a number, found a {type(value).__name__}")


def _integer(value: Any) -> int | None:
    if value is None or (type(value) is int):
        return value
    raise TypeError(f"expected an integer, found a {type(value).__name__}")


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is dict:
        return value
    raise TypeError(f"the metadata is a {type(value).__name__}")


_STATUSES = {status.value: status for status in ExecutionStatus}
_EVENT_TYPES = {kind.value: kind for kind in EventType}
_RETRYING = ExecutionStatus.RETRYING


def _entry(record: dict[str, Any], position: int) -> ExecutionEvent[Any]:
    """The entry ``record`` stores, each value checked for its type.

    The hot loop of a resume (one call per record): the snapshot's fields are set in
    a dictionary from :func:`snapshot_fields`, each check's common case inline (the
    checking functions run only for a value of another type, to refuse it or accept a
    subclass). A key the record lacks keeps the field's default.
    """
    get = record.get
    kind = get("kind", "event")
    if kind not in _KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    address = record["address"]
    if type(address) is not str:
        raise TypeError(f"the address is a {type(address).__name__}")
    stored_status = record["status"]
    status = _STATUSES.get(stored_status) if type(stored_status) is str else None
    if status is None:
        raise ValueError(f"{stored_status!r} is not a valid status")
    event_type = get("event_type")
    if event_type:
        try:
            event_type = _EVENT_TYPES[event_type]
        except (KeyError, TypeError):
            raise ValueError(f"{event_type!r} is not a valid event type") from None
    else:
        event_type = None
    tag = get("tag")
    actor = get("actor")
    message = get("message")
    detail = get("detail")
    error_type = get("error_type")
    group_id = get("group_id")
    original_error = get("original_error")
    input_hash = get("input_hash")
    result_type = get("result_type")
    version = get("version")
    for text in (
        tag, actor, message, detail, error_type, group_id, original_error, input_hash,
        result_type, version,
    ):  # fmt: skip
        if text is not None and type(text) is not str:
            _text(text)
    timestamp = get("timestamp")
    execution_time = get("execution_time")
    retry_delay = get("retry_delay")
    for number in (timestamp, execution_time, retry_delay):
        if number is not None and type(number) is not float:
            _number(number)
    metadata = get("metadata")
    if type(metadata) is not dict:
        metadata = _metadata(metadata)
    parallel_index = get("parallel_index")
    retry_attempt = get("retry_attempt")
    for integer in (parallel_index, retry_attempt):
        if integer is not None and type(integer) is not int:
            _integer(integer)
    usage = get("usage")
    values = snapshot_fields()
    # "actor" stays None: the program's own actor runs a resumed call
    values["kind"] = kind
    values["address"] = address
    values["tag"] = tag or ""
    values["actor_name"] = actor
    values["event_type"] = event_type
    values["metadata"] = metadata
    values["timestamp"] = timestamp or 0.0
    values["execution_time"] = execution_time
    values["execution_status"] = status
    values["message"] = message
    values["detail"] = detail
    values["error_type"] = error_type
    values["result"] = get("result")
    values["from_cache"] = bool(get("from_cache"))
    values["is_replayed"] = bool(get("is_replayed"))
    values["group_id"] = group_id
    values["parallel_index"] = parallel_index
    values["is_parallel"] = bool(get("is_parallel"))
    values["retry_attempt"] = retry_attempt or 0
    # not stored: the core sets it on exactly the RETRYING entries
    values["is_retry"] = status is _RETRYING
    values["original_error"] = original_error
    values["retry_delay"] = retry_delay
    values["input_hash"] = input_hash
    if usage is not None:
        values["usage"] = TokenUsage.from_record(usage, position)
    return seal_snapshot(values, _FIELDS_SET, result_type, version)


def record_to_event(record: dict[str, Any], position: int = 0) -> ExecutionEvent[Any]:
    """Rebuild a history entry (an immutable snapshot) from its record; the actor object
    is not restored. Every value is checked for its type, nothing is validated twice.

    Raises:
        StateCorruptedError: the record is not a readable history entry.
    """
    if not isinstance(record, dict):
        raise StateCorruptedError(
            f"History record {position} is a {type(record).__name__}, not an object; the "
            "history was written by another program or is damaged."
        )
    try:
        return _entry(record, position)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise StateCorruptedError(
            f"History record {position} cannot be read ({type(exc).__name__}: {exc}); "
            "the history was written by another program or is damaged."
        ) from exc


def _canonical(value: Any) -> Any:
    """A JSON value that is the same for equal inputs in every process.

    Dict keys are sorted when dumped and sets are sorted here, because their iteration
    order depends on the process's hash seed.
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, BaseModel):
        return _canonical(value.model_dump())
    if isinstance(value, dict):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if isinstance(value, set | frozenset):
        items = [_canonical(item) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    return _canonical(to_jsonable_python(value))


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return _canonical(value)
    if isinstance(value, BaseModel):
        return value.model_dump()
    return to_jsonable_python(value)


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_json_default)
"""Built once: ``json.dumps`` with options builds a new encoder on every call."""


def _fingerprint_encoder() -> Callable[[Any], str]:
    """``_ENCODER.encode``, without the C encoder ``encode`` builds on every call.

    The same C encoder with the same options, so the same text (fingerprints recorded by
    earlier versions still match); built once, without the circular-reference markers a
    shared encoder could not keep (a cyclic input fails on the recursion limit instead,
    and has no fingerprint either way). ``_ENCODER.encode`` where the C encoder is
    missing.
    """
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return _ENCODER.encode
    one_shot = c_make_encoder(
        None, _json_default, encode_basestring_ascii, None, ":", ",", True, False, True
    )

    def encode(data: Any) -> str:
        if type(data) is str:
            return encode_basestring_ascii(data)
        return "".join(one_shot(data, 0))

    return encode


_encode = _fingerprint_encoder()


def input_fingerprint(value: Any) -> str | None:
    """A short stable hash of an (already validated) input; None when it has no JSON form.

    Equal inputs give equal fingerprints across processes and runs: pydantic models
    hash by their field values, dict key order and set order do not matter.

    Example:
        >>> input_fingerprint({"b": 1, "a": [1, 2]}) == input_fingerprint({"a": [1, 2], "b": 1})
        True
    """
    data = value.model_dump() if isinstance(value, BaseModel) else value
    try:
        text = _encode(data)
    except TypeError:  # e.g. dict keys of mixed types, which sort_keys cannot order
        try:
            text = _ENCODER.encode(_canonical(value))
        except Exception:  # no JSON form (unusual objects, cycles): nothing to compare
            return None
    except Exception:
        return None
    # 96 bits in 16 characters of URL-safe base64 (a short string: the history keeps
    # one per call); base64.urlsafe_b64encode's result, without its two Python calls
    digest = hashlib.blake2b(text.encode("ascii"), digest_size=12).digest()
    return binascii.b2a_base64(digest, newline=False).translate(_URL_SAFE).decode("ascii")


_URL_SAFE = bytes.maketrans(b"+/", b"-_")
