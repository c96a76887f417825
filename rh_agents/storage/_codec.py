"""The stored form shared by every storage backend: checksummed JSON and id checks.

Every backend stores snapshots and journal records as JSON text through these
functions, so the backends are interchangeable and report damage the same way: a
snapshot or record read back is never trusted, it is parsed and checked
(:class:`~rh_agents.core.errors.StateCorruptedError` when damaged). A new backend calls
:func:`dump_snapshot` / :func:`parse_snapshot` and :func:`dump_record` /
:func:`parse_record` and stores the text as it is.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

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
    "dump_record",
    "dump_snapshot",
    "parse_record",
    "parse_snapshot",
    "seal",
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


SEAL = '{"_crc":'
"""Stored JSON objects start with a CRC-32 of the object as written: ``{"_crc":N,...}``.

A flipped byte in a record (disk or file damage that leaves valid JSON, e.g. one digit
of a result) would otherwise load as a different value; with the checksum it is
reported as :class:`StateCorruptedError`. Objects stored without one (by earlier
releases) load unchecked.
"""


def seal(text: str) -> str:
    """Prefix the JSON object ``text`` with its checksum (same schema, one more key)."""
    crc = zlib.crc32(text.encode("utf-8", "surrogatepass"))
    body = text[1:]
    return f"{SEAL}{crc:010d}{'' if body == '}' else ','}{body}"


def unseal(text: str | bytes) -> tuple[str | bytes, bool]:
    """The JSON object as written, and whether its checksum matches (True if none)."""
    if isinstance(text, bytes):
        if not text.startswith(SEAL.encode()):
            return text, True
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return text, False
    elif not text.startswith(SEAL):
        return text, True
    digits, separator, body = text[8:18], text[18:19], text[19:]
    original = "{}" if separator == "}" else "{" + body
    if not digits.isdigit() or separator not in (",", "}"):
        return original, False
    return original, int(digits) == zlib.crc32(original.encode("utf-8", "surrogatepass"))


def dump_snapshot(snapshot: StateSnapshot) -> str:
    try:
        # Not model_dump_json(): it writes infinite and NaN floats as null, so a result
        # of inf would come back as None. JSON readers here accept Infinity and NaN.
        data = snapshot.model_dump(mode="python")
        return seal(json.dumps(data, default=to_jsonable_python, separators=(",", ":")))
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        raise ResultSerializationError(
            f"The snapshot of state {snapshot.state_id!r} cannot be written to the history "
            f"because it is not JSON-serializable ({exc}). Keep only JSON-serializable "
            "values (or pydantic models) in execution_state; nothing was written."
        ) from exc


def parse_snapshot(state_id: str, text: str | bytes, where: str) -> StateSnapshot:
    text, intact = unseal(text)
    if not intact:
        raise StateCorruptedError(
            f"The stored snapshot of state {state_id!r} in {where} fails its checksum: it "
            "was changed after it was written (disk or file damage). Restore it from a "
            "backup, or delete the state with delete_state() to discard it."
        )
    try:
        return StateSnapshot.model_validate_json(text)
    except ValidationError as exc:
        raise StateCorruptedError(
            f"The stored snapshot of state {state_id!r} in {where} is damaged and cannot "
            f"be read ({exc.error_count()} error(s); first: {exc.errors()[0]['msg']}). "
            "Restore it from a backup, or delete the state with delete_state() to discard it."
        ) from exc


def dump_record(state_id: str, record: dict[str, Any]) -> str:
    if not isinstance(record, dict):
        raise InvalidArgumentError(
            f"An event record must be a dict, got {type(record).__name__} for state "
            f"{state_id!r}. Pass the record as a JSON-serializable dict."
        )
    try:
        return seal(json.dumps(record, separators=(",", ":")))
    except (TypeError, ValueError) as exc:
        raise ResultSerializationError(
            f"An event record of state {state_id!r} cannot be written to the history because "
            f"it is not JSON-serializable ({exc}). Convert the value to JSON-serializable "
            "data before recording it; nothing was written."
        ) from exc


def parse_record(state_id: str, text: object, position: str, where: str) -> dict[str, Any]:
    problem: str
    try:
        if not isinstance(text, str | bytes):
            raise TypeError(f"stored value has type {type(text).__name__}")
        text, intact = unseal(text)
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        problem = f"is not valid JSON ({exc})"
    else:
        if not intact:
            problem = "fails its checksum: it was changed after it was written (disk damage)"
        elif isinstance(value, dict):
            return value
        else:
            problem = f"is a JSON {type(value).__name__}, not an object"
    raise StateCorruptedError(
        f"Event record {position} of state {state_id!r} in {where} {problem}. The journal "
        "is damaged: restore it from a backup, or delete the state with delete_state() "
        "to discard it."
    )
