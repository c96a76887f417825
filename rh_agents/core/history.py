"""HistorySet: the append-only timeline of every status change of a run.

The timeline keeps one entry per status change, in order (a call appears as STARTED,
then COMPLETED), and an index of the latest entry per address. Entries are immutable
snapshots taken by :meth:`ExecutionState.add_event`. Records are the JSON form written
to journals and snapshots; :func:`event_to_record` and :func:`record_to_event` convert.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from rh_agents.core.errors import StateCorruptedError
from rh_agents.core.events import EventKind, ExecutionEvent
from rh_agents.core.types import EventType, ExecutionStatus
from rh_agents.core.usage import TokenUsage

__all__ = ["HistorySet", "event_to_record", "input_fingerprint", "record_to_event"]

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

    __slots__ = ("_completed", "_events", "_latest")

    def __init__(self, events: Iterable[ExecutionEvent[Any]] = ()) -> None:
        self._events: list[ExecutionEvent[Any]] = []
        self._latest: dict[str, ExecutionEvent[Any]] = {}
        self._completed: dict[str, ExecutionEvent[Any]] = {}
        for event in events:
            self.append(event)

    def append(self, event: ExecutionEvent[Any]) -> None:
        """Add one status change (the core does this; users rarely need to)."""
        self._events.append(event)
        if event.kind != EventKind.EVENT:
            return
        address = event.address
        self._latest[address] = event
        if event.execution_status in _DONE:
            self._completed[address] = event

    @property
    def events(self) -> list[ExecutionEvent[Any]]:
        """The timeline (a copy)."""
        return list(self._events)

    def get_event_list(self) -> list[ExecutionEvent[Any]]:
        """The timeline: one entry per status change, in the order they happened."""
        return list(self._events)

    def has_completed_event(self, address: str) -> bool:
        """Whether the invocation at ``address`` completed (or was recovered)."""
        return address in self._completed

    def get_completed_event(self, address: str) -> ExecutionEvent[Any] | None:
        """The completing entry of ``address``, if it completed."""
        return self._completed.get(address)

    def get_event_result(self, address: str) -> Any:
        """The result of the completed invocation at ``address``.

        Raises:
            KeyError: nothing completed at that address.
        """
        event = self._completed.get(address)
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
        """Addresses of every completed invocation, in completion order."""
        return list(self._completed)

    def __getitem__(self, address: str) -> ExecutionEvent[Any]:
        try:
            return self._latest[address]
        except KeyError:
            raise KeyError(f"No invocation at address '{address}' in this history.") from None

    def __contains__(self, address: object) -> bool:
        return address in self._latest

    def __iter__(self) -> Iterator[tuple[str, ExecutionEvent[Any]]]:
        return iter(list(self._latest.items()))

    def __len__(self) -> int:
        return len(self._events)

    def to_records(self) -> list[dict[str, Any]]:
        """The timeline as JSON-able records (see :func:`event_to_record`)."""
        return [event_to_record(event, seq) for seq, event in enumerate(self._events, 1)]

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]]) -> HistorySet:
        """Rebuild a history from records, in their order."""
        return cls(record_to_event(record, position) for position, record in enumerate(records))


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return to_jsonable_python(value, fallback=repr)


def event_to_record(event: ExecutionEvent[Any], seq: int) -> dict[str, Any]:
    """The JSON-able record of one history entry."""
    result = event._record_result
    if result is None and event.result is not None:
        result = _jsonable(event.result)
    return {
        "seq": seq,
        "kind": event.kind,
        "address": event.address,
        "status": event.execution_status.value,
        "actor": event.name,
        "event_type": event.event_type.value if event.event_type else None,
        "tag": event.tag,
        "timestamp": event.timestamp,
        "execution_time": event.execution_time,
        "message": event.message,
        "detail": event.detail,
        "error_type": event.error_type,
        "from_cache": event.from_cache,
        "is_replayed": event.is_replayed,
        "group_id": event.group_id,
        "parallel_index": event.parallel_index,
        "is_parallel": event.is_parallel,
        "retry_attempt": event.retry_attempt,
        "retry_delay": event.retry_delay,
        "original_error": event.original_error,
        "metadata": _jsonable(event.metadata) if event.metadata else {},
        "result": result,
        "result_type": event._result_type,
        "input_hash": event.input_hash,
        "usage": event.usage.to_record() if event.usage is not None else None,
    }


def record_to_event(record: dict[str, Any], position: int = 0) -> ExecutionEvent[Any]:
    """Rebuild a history entry from its record (the actor object is not restored).

    Raises:
        StateCorruptedError: the record is not a readable history entry.
    """
    if not isinstance(record, dict):
        raise StateCorruptedError(
            f"History record {position} is a {type(record).__name__}, not an object; the "
            "history was written by another program or is damaged."
        )
    try:
        event: ExecutionEvent[Any] = ExecutionEvent(
            kind=record.get("kind", EventKind.EVENT),
            address=record["address"],
            execution_status=ExecutionStatus(record["status"]),
            actor_name=record.get("actor"),
            event_type=EventType(record["event_type"]) if record.get("event_type") else None,
            tag=record.get("tag") or "",
            timestamp=record.get("timestamp") or 0.0,
            execution_time=record.get("execution_time"),
            message=record.get("message"),
            detail=record.get("detail"),
            error_type=record.get("error_type"),
            from_cache=bool(record.get("from_cache")),
            is_replayed=bool(record.get("is_replayed")),
            group_id=record.get("group_id"),
            parallel_index=record.get("parallel_index"),
            is_parallel=bool(record.get("is_parallel")),
            retry_attempt=record.get("retry_attempt") or 0,
            # not stored: the core sets it on exactly the RETRYING entries
            is_retry=record["status"] == ExecutionStatus.RETRYING.value,
            retry_delay=record.get("retry_delay"),
            original_error=record.get("original_error"),
            metadata=record.get("metadata") or {},
            result=record.get("result"),
            input_hash=record.get("input_hash"),
            usage=TokenUsage.from_record(record.get("usage"), position),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise StateCorruptedError(
            f"History record {position} cannot be read ({type(exc).__name__}: {exc}); "
            "the history was written by another program or is damaged."
        ) from exc
    event._record_result = record.get("result")
    event._result_type = record.get("result_type")
    return event


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
        text = _ENCODER.encode(data)
    except TypeError:  # e.g. dict keys of mixed types, which sort_keys cannot order
        try:
            text = _ENCODER.encode(_canonical(value))
        except Exception:  # no JSON form (unusual objects, cycles): nothing to compare
            return None
    except Exception:
        return None
    return hashlib.blake2b(text.encode("ascii"), digest_size=12).hexdigest()
