"""The stored form every backend shares (``rh_agents.storage._codec``), pinned.

Every persistent backend writes snapshots and journal records through this codec, so a
change in it is a change of the on-disk format of every history: a journal written by
the previous release must still read, and damage must still be reported instead of
half-loaded. These tests pin the sealed text byte for byte (golden values, and the
formula they come from), every way a stored object is refused and the wording of each
refusal, independently of any backend.
"""

from __future__ import annotations

import json
import math
import zlib
from datetime import UTC, datetime
from typing import Any

import pytest

from rh_agents.core.errors import (
    InvalidArgumentError,
    ResultSerializationError,
    StateCorruptedError,
)
from rh_agents.core.state_recovery import StateMetadata, StateSnapshot, StateStatus
from rh_agents.storage._codec import (
    SEAL,
    check_id,
    check_snapshot,
    checked_records,
    dump_record,
    dump_snapshot,
    journal_damage,
    parse_record,
    parse_snapshot,
    seal,
    snapshot_row,
    status_filter,
    unseal,
)

MOVED = (
    "fails its checksum: it was changed after it was written, or moved from another "
    "position or run (disk or file damage)"
)


def crc(scope: str, text: str) -> str:
    """The documented checksum: CRC-32 of ``"<state_id>\\n<position>\\n"`` + the object."""
    return f"{zlib.crc32((scope + text).encode()):08x}"


# ----------------------------------------------------------------- argument checks


@pytest.mark.parametrize("value", ["run-1", "x"])
def test_check_id_returns_a_non_empty_string(value: str) -> None:
    assert check_id(value) is value


@pytest.mark.parametrize("value", ["", None, 3, b"run"])
def test_check_id_refuses_anything_else_naming_what_was_checked(value: object) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_id(value)
    assert str(caught.value) == (
        f"The state_id must be a non-empty string, got {value!r}. Pass the id of the run."
    )
    with pytest.raises(InvalidArgumentError, match=r"^The artifact key must be"):
        check_id(value, "artifact key")


def test_check_snapshot_returns_a_snapshot_and_refuses_anything_else() -> None:
    snapshot = StateSnapshot(state_id="run-1")
    assert check_snapshot(snapshot) is snapshot
    with pytest.raises(InvalidArgumentError) as caught:
        check_snapshot({"state_id": "run-1"})
    assert str(caught.value) == (
        "Expected a StateSnapshot, got dict. Build one with "
        "StateSnapshot(state_id=..., execution_state=...)."
    )


def test_status_filter_takes_statuses_their_values_and_none() -> None:
    assert status_filter(None) is None
    assert status_filter(StateStatus.PAUSED) is StateStatus.PAUSED
    assert status_filter("failed") is StateStatus.FAILED


def test_status_filter_refuses_an_unknown_status_listing_the_known_ones() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        status_filter("done")
    assert str(caught.value) == (
        "Unknown state status 'done'. Use one of: running, paused, completed, failed, cancelled."
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# ----------------------------------------------------------------- the seal


def test_the_sealed_text_is_pinned() -> None:
    # Changing any of these makes every stored history unreadable: a deliberate,
    # versioned decision, never a side effect.
    assert SEAL == '{"_crc":"'
    assert seal('{"a":1}', "run-1", 3) == '{"_crc":"d6832e11","a":1}'
    assert seal("{}", "run-1") == '{"_crc":"5a5c4dfe"}'
    assert seal('{"a":1}', "run-1") == '{"_crc":"ef0e12d4","a":1}'
    assert dump_record("run-1", 2, {"k": "v", "f": math.inf, "t": (1, 2)}) == (
        '{"_crc":"39820d4a","k":"v","f":Infinity,"t":[1,2]}'
    )


@pytest.mark.parametrize(
    "record",
    [{}, {"a": 1}, {"unicode": "ü€😀", "nested": {"x": [1, None]}}, {"seq": 10**12}],
)
@pytest.mark.parametrize(("state_id", "position"), [("run-1", 1), ("rün-2", 123456)])
def test_a_record_is_sealed_like_any_stored_object(
    record: dict[str, Any], state_id: str, position: int
) -> None:
    # dump_record seals the encoded bytes itself (its hot path): the same text as seal()
    # of the record's JSON, so one reader checks both
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    assert dump_record(state_id, position, record) == seal(text, state_id, position)


@pytest.mark.parametrize(
    ("state_id", "position", "text"),
    [
        ("run-1", 3, '{"a":1}'),
        ("run-1", 0, "{}"),
        ("ünï", 12345678901, '{"x":"ü","y":[1,2.5,null]}'),
        ("r", 1, '{"s":"\\ud800"}'),
    ],
)
def test_the_checksum_covers_the_run_the_position_and_the_object(
    state_id: str, position: int, text: str
) -> None:
    sealed = seal(text, state_id, position)
    digest = crc(f"{state_id}\n{position}\n", text)
    expected = f'{SEAL}{digest}"' + ("}" if text == "{}" else "," + text[1:])
    assert sealed == expected
    assert unseal(sealed, state_id, position) == (text, None)
    assert unseal(sealed.encode(), state_id, position) == (text, None)


def test_the_checksum_of_many_runs_stays_right_past_the_scope_cache() -> None:
    # The CRC of each run's id is cached for the first 1024 runs; later runs are
    # computed each time, with the same result.
    for index in range(1100):
        state_id = f"scope-{index}"
        sealed = seal('{"i":1}', state_id, index)
        assert sealed[9:17] == crc(f"{state_id}\n{index}\n", '{"i":1}')
        assert unseal(sealed, state_id, index)[1] is None


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        ('{"a":1}', "has no checksum (every stored record carries one)"),
        ('{"_crc":"D6832E11","a":1}', "has a damaged checksum"),  # not as written
        ('{"_crc":"zz832e11","a":1}', "has a damaged checksum"),
        ('{"_crc":"-6832e11","a":1}', MOVED),  # reads as a number no CRC-32 can be
        ('{"_crc":" 6832e11","a":1}', "has a damaged checksum"),
        ('{"_crc":"d6832e1","a":1}', "has a damaged checksum"),
        ('{"_crc":"d6832e11"x"a":1}', "has a damaged checksum"),
        ('{"_crc":"d6832e11",a":1}', MOVED),
        ('{"_crc":"d6832e11","a":2}', MOVED),  # the object changed
        ('{"_crc":"d6832e11"}', MOVED),  # the object emptied
    ],
)
def test_unseal_reports_what_is_wrong(stored: str, problem: str) -> None:
    assert unseal(stored, "run-1", 3)[1] == problem


def test_unseal_gives_back_the_object_even_when_damaged() -> None:
    # The object comes back as stored next to what is wrong with it.
    assert unseal('{"a":1}', "run-1", 3) == (
        '{"a":1}',
        "has no checksum (every stored record carries one)",
    )
    assert unseal('{"_crc":"d6832e11","a":2}', "run-1", 3) == ('{"a":2}', MOVED)
    assert unseal('{"_crc":"d6832e11"}', "run-1", 3) == ("{}", MOVED)


@pytest.mark.parametrize(("state_id", "position"), [("run-2", 3), ("run-1", 4), ("run-1", 0)])
def test_an_object_moved_to_another_run_or_position_fails_its_checksum(
    state_id: str, position: int
) -> None:
    sealed = seal('{"a":1}', "run-1", 3)
    assert unseal(sealed, state_id, position) == ('{"a":1}', MOVED)


def test_unseal_refuses_bytes_that_are_not_utf8() -> None:
    assert unseal(b'{"_crc":"\xff', "run-1") == ("", "is not UTF-8 text")


# ----------------------------------------------------------------- snapshots


def snapshot() -> StateSnapshot:
    return StateSnapshot(
        state_id="run-1",
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        updated_at=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
        status=StateStatus.PAUSED,
        metadata=StateMetadata(pipeline_name="pipe", tags=["a"]),
        execution_state={"inf": math.inf, "nan": math.nan, "nested": {"k": [1, 2]}},
        artifact_refs={"doc": "sha"},
    )


def test_a_snapshot_round_trips_with_infinities_and_nan() -> None:
    stored = dump_snapshot(snapshot())
    text, problem = unseal(stored, "run-1")
    assert problem is None
    assert json.loads(text)["execution_state"]["inf"] == math.inf  # not null
    loaded = parse_snapshot("run-1", stored, "here")
    assert loaded.execution_state["inf"] == math.inf
    assert math.isnan(loaded.execution_state["nan"])
    assert loaded.model_dump(exclude={"execution_state"}) == snapshot().model_dump(
        exclude={"execution_state"}
    )
    assert loaded.execution_state["nested"] == {"k": [1, 2]}


def test_the_row_of_a_snapshot() -> None:
    row = snapshot_row(snapshot())
    assert row[0] == "run-1"
    assert parse_snapshot("run-1", row[1], "here").status is StateStatus.PAUSED
    assert row[2:] == ("paused", "pipe", "2026-01-02T03:04:05+00:00", "2026-01-02T03:04:06+00:00")
    assert snapshot_row(StateSnapshot(state_id="x"))[3] is None


def test_a_snapshot_that_is_not_json_is_refused_with_nothing_written() -> None:
    bad = StateSnapshot(state_id="run-1", execution_state={"handle": object()})
    with pytest.raises(ResultSerializationError) as caught:
        dump_snapshot(bad)
    message = str(caught.value)
    assert message.startswith(
        "The snapshot of state 'run-1' cannot be written to the history because it is "
        "not JSON-serializable ("
    )
    assert message.endswith(
        "Keep only JSON-serializable values (or pydantic models) in execution_state; "
        "nothing was written."
    )
    assert caught.value.__cause__ is not None


def test_a_snapshot_that_fails_its_checksum_is_reported() -> None:
    stored = dump_snapshot(snapshot()).replace('"pipe"', '"pipo"')
    with pytest.raises(StateCorruptedError) as caught:
        parse_snapshot("run-1", stored, "the file h.db")
    assert str(caught.value) == (
        f"The stored snapshot of state 'run-1' in the file h.db {MOVED}. Restore it from a "
        "backup, or delete the state with delete_state() to discard it."
    )
    with pytest.raises(StateCorruptedError, match="has no checksum"):
        parse_snapshot("run-1", '{"state_id":"run-1"}', "here")


def test_a_sealed_snapshot_that_does_not_validate_is_reported() -> None:
    stored = seal('{"state_id":"run-1","status":"gone"}', "run-1")
    with pytest.raises(StateCorruptedError) as caught:
        parse_snapshot("run-1", stored, "the file h.db")
    message = str(caught.value)
    assert message.startswith(
        "The stored snapshot of state 'run-1' in the file h.db is damaged and cannot be "
        "read (1 error(s); first: Input should be "
    )
    assert message.endswith(
        "Restore it from a backup, or delete the state with delete_state() to discard it."
    )


# ----------------------------------------------------------------- journal records


def test_a_record_round_trips_in_its_json_form() -> None:
    record = {
        "tag": "t",
        "n": 3,
        "x": 2.5,
        "inf": -math.inf,
        "none": None,
        "tuple": (1, "a"),
        "when": datetime(2026, 1, 2, tzinfo=UTC),
        "unicode": "ü€😀",
    }
    stored = dump_record("run-1", 7, record)
    assert parse_record("run-1", 7, stored, "here") == {
        **record,
        "tuple": [1, "a"],
        "when": "2026-01-02T00:00:00Z",
    }
    assert parse_record("run-1", 7, stored.encode(), "here")["unicode"] == "ü€😀"
    assert "_crc" not in parse_record("run-1", 7, stored, "here")


def test_a_record_pydantic_refuses_is_written_and_read_by_json() -> None:
    # A lone surrogate (from a surrogateescape-decoded file name, say): pydantic's
    # encoder and reader refuse it, json's do not; the checksum still holds.
    record = {"path": "caf\udce9"}
    stored = dump_record("run-1", 1, record)
    assert stored == seal(json.dumps(record, separators=(",", ":")), "run-1", 1)
    assert "caf\\udce9" in stored  # escaped: the stored text itself is valid UTF-8
    assert parse_record("run-1", 1, stored, "here") == record
    assert parse_record("run-1", 1, stored.encode("utf-8", "surrogatepass"), "here") == record


@pytest.mark.parametrize("record", [["a"], "text", None])
def test_a_record_must_be_a_dict(record: Any) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        dump_record("run-1", 1, record)
    assert str(caught.value) == (
        f"An event record must be a dict, got {type(record).__name__} for state 'run-1'. "
        "Pass the record as a JSON-serializable dict."
    )


@pytest.mark.parametrize("value", [object(), 1j, {"k": object()}])
def test_a_record_that_is_not_json_is_refused(value: Any) -> None:
    with pytest.raises(ResultSerializationError) as caught:
        dump_record("run-1", 1, {"path": "caf\udce9", "value": value})
    message = str(caught.value)
    assert message.startswith(
        "An event record of state 'run-1' cannot be written to the history because it "
        "is not JSON-serializable ("
    )
    assert message.endswith(
        "Convert the value to JSON-serializable data before recording it; nothing was written."
    )
    assert caught.value.__cause__ is not None


def test_a_record_pydantic_cannot_encode_and_json_neither_is_refused() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ResultSerializationError, match="not JSON-serializable"):
        dump_record("run-1", 1, {"cycle": cyclic})


def _refusal(stored: object, position: int = 4, state_id: str = "run-1") -> str:
    with pytest.raises(StateCorruptedError) as caught:
        parse_record(state_id, position, stored, "the file h.db")
    return str(caught.value)


def test_a_damaged_record_is_reported_with_its_position_and_run() -> None:
    good = dump_record("run-1", 4, {"a": 1})
    assert _refusal(good.replace('"a":1', '"a":2')) == (
        f"Event record 4 of state 'run-1' in the file h.db {MOVED}. The journal is damaged: "
        "restore it from a backup, or delete the state with delete_state() to discard it."
    )
    assert MOVED in _refusal(good, position=5)
    assert MOVED in _refusal(good, state_id="run-2")


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        (42, "is not text (a stored int)"),
        (None, "is not text (a stored NoneType)"),
        ('{"a":1}', "has no checksum (every stored record carries one)"),
        (b'{"_crc":"\xff', "has a damaged checksum"),
    ],
)
def test_what_is_not_a_sealed_object_is_reported(stored: object, problem: str) -> None:
    assert f"Event record 4 of state 'run-1' in the file h.db {problem}. " in _refusal(stored)


def test_a_sealed_text_that_is_not_json_is_reported() -> None:
    # The checksum matches (written that way), the text is no JSON at all.
    message = _refusal(seal("{not json", "run-1", 4))
    assert "Event record 4 of state 'run-1' in the file h.db is not valid JSON (" in message


# ----------------------------------------------------------------- whole journals


def rows(count: int, state_id: str = "run-1") -> list[tuple[int, str]]:
    return [(p, dump_record(state_id, p, {"seq": p})) for p in range(1, count + 1)]


def test_a_whole_journal_reads_in_order() -> None:
    assert list(checked_records("run-1", "here", 3, rows(3))) == [
        {"seq": 1},
        {"seq": 2},
        {"seq": 3},
    ]
    assert list(checked_records("run-1", "here", 0, [])) == []


def _damage(mark: int, stored: list[tuple[Any, Any]]) -> str:
    with pytest.raises(StateCorruptedError) as caught:
        list(checked_records("run-1", "the file h.db", mark, stored))
    return str(caught.value)


def test_a_journal_with_a_gap_is_reported() -> None:
    journal = rows(4)
    del journal[1]
    assert _damage(4, journal) == (
        "The journal of state 'run-1' in the file h.db is damaged: record 2 is missing "
        "(the next stored one is 3). Completed work may be missing from it, so it is not "
        "resumed. Restore it from a backup, or delete the state with delete_state() to "
        "discard it."
    )


@pytest.mark.parametrize("position", [1, 0, "2", None])
def test_a_record_stored_at_a_wrong_position_is_reported(position: Any) -> None:
    journal = rows(3)
    journal[1] = (position, journal[1][1])
    assert f"record 2 is stored as position {position!r}." in _damage(3, journal)


def test_a_journal_shorter_or_longer_than_its_mark_is_reported() -> None:
    assert "it ends after record 2, but 3 were committed (a missing tail)" in _damage(3, rows(2))
    assert "it ends after record 0, but 1 were committed (a missing tail)" in _damage(1, [])
    assert "it holds 3 records, but only 2 were committed" in _damage(2, rows(3))


def test_records_are_checked_as_they_come() -> None:
    journal = rows(3)
    journal[2] = (3, journal[2][1].replace('"seq":3', '"seq":4'))
    records = checked_records("run-1", "here", 3, journal)
    assert next(records) == {"seq": 1}
    assert next(records) == {"seq": 2}
    with pytest.raises(StateCorruptedError, match="Event record 3 of state 'run-1'"):
        next(records)


def test_journal_damage_wording() -> None:
    error = journal_damage("run-1", "the database", "something is off")
    assert isinstance(error, StateCorruptedError)
    assert str(error) == (
        "The journal of state 'run-1' in the database is damaged: something is off. "
        "Completed work may be missing from it, so it is not resumed. Restore it from a "
        "backup, or delete the state with delete_state() to discard it."
    )


def test_ids_and_text_with_lone_surrogates_seal_and_unseal() -> None:
    # A run id or a text decoded from a file name with surrogateescape can hold a lone
    # surrogate: it is checksummed as its surrogatepass bytes, never refused.
    state_id, text = "run-\udce9", '{"p":"caf\udce9"}'
    sealed = seal(text, state_id, 2)
    scope = f"{state_id}\n2\n".encode("utf-8", "surrogatepass")
    assert sealed[9:17] == f"{zlib.crc32(scope + text.encode('utf-8', 'surrogatepass')):08x}"
    assert unseal(sealed, state_id, 2) == (text, None)
    assert unseal(sealed.encode("utf-8", "surrogatepass"), state_id, 2) == (text, None)
    assert unseal(sealed, "run-\udce8", 2)[1] == MOVED
    record = dump_record(state_id, 3, {"p": "x"})
    assert parse_record(state_id, 3, record, "here") == {"p": "x"}


def test_the_checksum_key_is_reserved() -> None:
    # Found by the property test of every backend: a record holding "_crc" was stored
    # with two "_crc" keys and read back without its own.
    with pytest.raises(InvalidArgumentError) as caught:
        dump_record("run-1", 1, {"_crc": None, "tag": "t"})
    assert str(caught.value) == (
        "An event record of state 'run-1' has the key '_crc', which the history reserves "
        "for its checksum. Rename that key."
    )
    nested = {"metadata": {"_crc": 1}}  # only the top level is the stored object's
    assert parse_record("run-1", 1, dump_record("run-1", 1, nested), "here") == nested
