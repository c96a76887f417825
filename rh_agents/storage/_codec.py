"""The stored form shared by every storage backend: checksummed JSON and id checks.

Every persistent backend stores snapshots and journal records as JSON text through
these functions, so the backends are interchangeable and report damage the same way: a
snapshot or record read back is never trusted, it is parsed and checked
(:class:`~rh_agents.core.errors.StateCorruptedError` when damaged). A new backend calls
:func:`dump_snapshot` / :func:`parse_snapshot` and :func:`dump_record` /
:func:`parse_record` and stores the text as it is. What a record holds (the history
entry it stores) is :func:`rh_agents.core.history.event_to_record`'s business; this
module only makes its text tamper-evident.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, from_json, to_json, to_jsonable_python

from rh_agents.core.errors import (
    InvalidArgumentError,
    ResultSerializationError,
    StateCorruptedError,
)
from rh_agents.core.state_recovery import StateSnapshot, StateStatus

__all__ = [
    "SEAL",
    "check_id",
    "check_snapshot",
    "checked_records",
    "dump_record",
    "dump_snapshot",
    "journal_damage",
    "parse_record",
    "parse_snapshot",
    "seal",
    "snapshot_row",
    "status_filter",
    "unseal",
]


def check_id(value: object, what: str = "state_id") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(
            f"The {what} must be a non-empty string, got {value!r}. Pass the id of the run."
        )
    return value


def check_snapshot(snapshot: object) -> StateSnapshot:
    if not isinstance(snapshot, StateSnapshot):
        raise InvalidArgumentError(
            f"Expected a StateSnapshot, got {type(snapshot).__name__}. Build one with "
            "StateSnapshot(state_id=..., execution_state=...)."
        )
    return snapshot


def status_filter(status: StateStatus | str | None) -> StateStatus | None:
    if status is None:
        return None
    try:
        return StateStatus(status)
    except ValueError:
        allowed = ", ".join(s.value for s in StateStatus)
        raise InvalidArgumentError(
            f"Unknown state status {status!r}. Use one of: {allowed}."
        ) from None


SEAL = '{"_crc":"'
"""Stored JSON objects start with a CRC-32 in hex: ``{"_crc":"89abcdef",...}``.

The checksum covers the object as written *and where it belongs*: the state id, and
for a journal record its position. A flipped byte in a record (disk or file damage that
leaves valid JSON, e.g. one digit of a result), a record moved to another position or
another run, and an edited or removed checksum are all reported as
:class:`StateCorruptedError`. There is no unchecked form: an object without its
checksum is refused. The sealed text is itself a JSON object, read in one pass.
"""

_SEAL_BYTES = SEAL.encode()
_SEAL_KEY = _SEAL_BYTES + b'%08x",'  # the checksum key of an object with keys, to format
_BODY = len(SEAL) + 10  # the object's own keys start after '"_crc":"89abcdef",'
_MOVED = (
    "fails its checksum: it was changed after it was written, or moved from another "
    "position or run (disk or file damage)"
)

_ENCODER = json.JSONEncoder(separators=(",", ":"))
"""Built once: ``json.dumps`` with options builds a new encoder on every call."""


_TEXT = (str, bytes)  # a tuple: `str | bytes` builds a union object at every call

_RUN_SCOPES: dict[str, int] = {}
"""The CRC of each run's id line (a record's scope continues it with its position)."""


def _run_crc(state_id: str) -> int:
    """The CRC of ``"<state_id>\\n"`` (cached: every record of a run starts with it)."""
    run = _RUN_SCOPES.get(state_id)
    if run is None:
        run = zlib.crc32(f"{state_id}\n".encode("utf-8", "surrogatepass"))
        if len(_RUN_SCOPES) < 1024:
            _RUN_SCOPES[state_id] = run
    return run


def _scope(state_id: str, position: int) -> int:
    """The CRC of ``"<state_id>\\n<position>\\n"``, the start of every record's checksum."""
    return zlib.crc32(b"%d\n" % position, _run_crc(state_id))


def _sealed(crc: int, text: str) -> str:
    return f'{SEAL}{crc:08x}"' + ("}" if text == "{}" else "," + text[1:])


def seal(text: str, state_id: str, position: int = 0) -> str:
    """Prefix the JSON object ``text`` with its checksum (one more key, same schema).

    ``position`` is the record's position in the run's journal (0 for a snapshot).
    """
    return _sealed(
        zlib.crc32(text.encode("utf-8", "surrogatepass"), _scope(state_id, position)), text
    )


def _intact(data: bytes, position: int, run: int) -> bool:
    """Whether sealed ``data`` at ``position`` of the run whose id line has the CRC
    ``run`` has its checksum, and it matches (the common case: one CRC over the
    object's keys; a record without keys, or a damaged one, answers False)."""
    return (
        data[17:19] == b'",'
        and data.startswith(_SEAL_BYTES)
        and data[9:17]
        == b"%08x" % zlib.crc32(memoryview(data)[_BODY:], zlib.crc32(b"%d\n{" % position, run))
    )


def _check(data: bytes, state_id: str, position: int) -> str | None:
    """What is wrong with sealed ``data`` (None: its checksum matches)."""
    run = _run_crc(state_id)
    if _intact(data, position, run):
        return None
    return _problem(data, zlib.crc32(b"%d\n{" % position, run))  # the scope, then "{"


def _problem(data: bytes, scope: int) -> str | None:
    """What is wrong with sealed ``data`` whose record scope has the CRC ``scope``."""
    if not data.startswith(_SEAL_BYTES):
        return "has no checksum (every stored record carries one)"
    digits, end = data[9:17], data[17:19]
    try:
        stored = int(digits, 16)
    except ValueError:
        return "has a damaged checksum"
    if digits != b"%08x" % stored or end not in (b'",', b'"}'):
        return "has a damaged checksum"
    crc = zlib.crc32(b"}", scope) if end == b'"}' else zlib.crc32(memoryview(data)[_BODY:], scope)
    return None if crc == stored else _MOVED


def _as_bytes(stored: str | bytes) -> bytes:
    return stored.encode("utf-8", "surrogatepass") if isinstance(stored, str) else bytes(stored)


def unseal(stored: str | bytes, state_id: str, position: int = 0) -> tuple[str, str | None]:
    """The JSON object as written, and what is wrong with it (None: the checksum matches)."""
    data = _as_bytes(stored)
    try:
        text = data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return "", "is not UTF-8 text"
    problem = _check(data, state_id, position)
    if problem == "has no checksum (every stored record carries one)":
        return text, problem
    original = "{}" if data[17:19] == b'"}' else "{" + text[_BODY:]
    return original, problem


def dump_snapshot(snapshot: StateSnapshot) -> str:
    try:
        # Not model_dump_json(): it writes infinite and NaN floats as null, so a result
        # of inf would come back as None. JSON readers here accept Infinity and NaN.
        data = snapshot.model_dump(mode="python")
        text = json.dumps(data, default=to_jsonable_python, separators=(",", ":"))
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        raise ResultSerializationError(
            f"The snapshot of state {snapshot.state_id!r} cannot be written to the history "
            f"because it is not JSON-serializable ({exc}). Keep only JSON-serializable "
            "values (or pydantic models) in execution_state; nothing was written."
        ) from exc
    return seal(text, snapshot.state_id)


def snapshot_row(snapshot: StateSnapshot) -> tuple[str, str, str, str | None, str, str]:
    """The ``states`` row of a snapshot (SQL backends): id, sealed text, status,
    pipeline name, created and updated (ISO 8601)."""
    return (
        snapshot.state_id,
        dump_snapshot(snapshot),
        snapshot.status.value,
        snapshot.metadata.pipeline_name,
        snapshot.created_at.isoformat(),
        snapshot.updated_at.isoformat(),
    )


def parse_snapshot(state_id: str, stored: str | bytes, where: str) -> StateSnapshot:
    text, problem = unseal(stored, state_id)
    if problem is not None:
        raise StateCorruptedError(
            f"The stored snapshot of state {state_id!r} in {where} {problem}. Restore it "
            "from a backup, or delete the state with delete_state() to discard it."
        )
    try:
        return StateSnapshot.model_validate_json(text)
    except ValidationError as exc:
        raise StateCorruptedError(
            f"The stored snapshot of state {state_id!r} in {where} is damaged and cannot "
            f"be read ({exc.error_count()} error(s); first: {exc.errors()[0]['msg']}). "
            "Restore it from a backup, or delete the state with delete_state() to discard it."
        ) from exc


def dump_record(state_id: str, position: int, record: dict[str, Any]) -> str:
    """The stored text of the record at ``position`` (1-based) of ``state_id``'s journal.

    Values are stored in their JSON form (a tuple or a set as a list, a datetime as its
    ISO text), as pydantic encodes them; what has no JSON form is refused.

    Raises:
        InvalidArgumentError: ``record`` is not a dict, or has the reserved key ``_crc``.
        ResultSerializationError: it is not JSON-serializable; nothing was written.
    """
    if not isinstance(record, dict):
        raise InvalidArgumentError(
            f"An event record must be a dict, got {type(record).__name__} for state "
            f"{state_id!r}. Pass the record as a JSON-serializable dict."
        )
    if "_crc" in record:
        # the stored object's first key is its checksum: a second "_crc" would replace
        # it when read back, and the record would come back without its own
        raise InvalidArgumentError(
            f"An event record of state {state_id!r} has the key '_crc', which the history "
            "reserves for its checksum. Rename that key."
        )
    try:
        # pydantic's encoder: about five times faster than json's for a record
        data = to_json(record, inf_nan_mode="constants")
    except PydanticSerializationError:
        return seal(_json_text(state_id, record), state_id, position)
    # seal()'s work on the encoded bytes (two records per call pass here): the checksum
    # key is put in front of the bytes, decoded once
    crc = zlib.crc32(data, _scope(state_id, position))
    if data == b"{}":
        return _sealed(crc, "{}")
    return (_SEAL_KEY % crc + data[1:]).decode("utf-8")


def _json_text(state_id: str, record: dict[str, Any]) -> str:
    """The record as json writes it (text pydantic refuses: lone surrogates, ...)."""
    try:
        return _ENCODER.encode(record)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ResultSerializationError(
            f"An event record of state {state_id!r} cannot be written to the history because "
            f"it is not JSON-serializable ({exc}). Convert the value to JSON-serializable "
            "data before recording it; nothing was written."
        ) from exc


def parse_record(state_id: str, position: int, stored: object, where: str) -> dict[str, Any]:
    """The record stored at ``position`` of ``state_id``'s journal, checked.

    Raises:
        StateCorruptedError: the stored value is damaged, misplaced or unchecked.
    """
    problem: str | None
    if not isinstance(stored, _TEXT):
        problem = f"is not text (a stored {type(stored).__name__})"
    else:
        data = _as_bytes(stored)
        problem = _check(data, state_id, position)
        if problem is None:
            try:
                value = from_json(data, allow_inf_nan=True)
            except ValueError:  # what pydantic's reader refuses (a lone surrogate escape)
                try:
                    value = json.loads(data)
                except ValueError as exc:
                    problem = f"is not valid JSON ({exc})"
            if problem is None:
                # valid JSON that starts with the seal is an object holding the checksum
                del value["_crc"]
                record: dict[str, Any] = value
                return record
    raise StateCorruptedError(
        f"Event record {position} of state {state_id!r} in {where} {problem}. The journal "
        "is damaged: restore it from a backup, or delete the state with delete_state() "
        "to discard it."
    )


def journal_damage(state_id: str, where: str, problem: str) -> StateCorruptedError:
    """The error for a journal whose records are not all there (a gap, a missing tail)."""
    return StateCorruptedError(
        f"The journal of state {state_id!r} in {where} is damaged: {problem}. Completed "
        "work may be missing from it, so it is not resumed. Restore it from a backup, or "
        "delete the state with delete_state() to discard it."
    )


def checked_records(
    state_id: str, where: str, mark: int, rows: Iterable[tuple[Any, Any]]
) -> Iterator[dict[str, Any]]:
    """The records of ``rows`` (``(position, stored text)`` in position order), parsed
    and checked as they come: positions 1, 2, ... without a gap, ending at the run's
    high-water mark ``mark``.

    Raises (while iterating):
        StateCorruptedError: a gap, a missing tail, rows past the mark, a damaged record.
    """
    expected = 1
    run = _run_crc(state_id)
    for position, text in rows:
        if position != expected:
            problem = (
                f"record {expected} is missing (the next stored one is {position})"
                if isinstance(position, int) and position > expected
                else f"record {expected} is stored as position {position!r}"
            )
            raise journal_damage(state_id, where, problem)
        # parse_record's common case inline (the hot loop of a resume): stored bytes
        # whose checksum matches, parsed by pydantic-core; anything else goes through
        # parse_record, which reads it the same way or says what is wrong.
        if type(text) is bytes and _intact(text, position, run):
            try:
                record = from_json(text, allow_inf_nan=True)
            except ValueError:
                record = parse_record(state_id, position, text, where)
            else:
                del record["_crc"]
        else:
            record = parse_record(state_id, position, text, where)
        yield record
        expected += 1
    count = expected - 1
    if count != mark:
        problem = (
            f"it ends after record {count}, but {mark} were committed (a missing tail)"
            if count < mark
            else f"it holds {count} records, but only {mark} were committed"
        )
        raise journal_damage(state_id, where, problem)
