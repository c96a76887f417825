"""The storage interfaces of the core: how a backend is recognized, and the errors every
backend words the same way."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from journal_faults import Forwarding

from rh_agents.core.errors import StateLockedError, StateNotFoundError
from rh_agents.core.state_recovery import StateSnapshot
from rh_agents.core.storage import (
    LeaseHolder,
    history_exists,
    journal_conflict,
    keeps_journal,
    lease_lost,
    records_runs,
    require_state,
)
from rh_agents.storage import InMemoryStateBackend

JOURNAL = ("append_event", "load_events", "list_journals")
RUNS = ("open_run", "iter_events", "journal_length")


def backend_with(*methods: str) -> Any:
    return type("Partial", (), {name: lambda self, *args: None for name in methods})()


def test_a_backend_is_recognized_by_every_method_of_the_interface() -> None:
    assert keeps_journal(backend_with(*JOURNAL))
    assert records_runs(backend_with(*JOURNAL, *RUNS))
    for missing in JOURNAL:
        partial = backend_with(*(m for m in JOURNAL if m != missing), *RUNS)
        assert not keeps_journal(partial), missing
        assert not records_runs(partial), missing
    for missing in RUNS:
        assert not records_runs(backend_with(*JOURNAL, *(m for m in RUNS if m != missing)))
    assert not records_runs(backend_with(*RUNS))  # a run writer must also be a journal
    assert not keeps_journal(type("NotCallable", (), dict.fromkeys(JOURNAL, 1))())


def test_a_forwarding_wrapper_is_recognized_like_what_it_wraps() -> None:
    # isinstance() with the protocols would say no on Python 3.12 and 3.13
    backend = InMemoryStateBackend()
    assert keeps_journal(Forwarding(backend)) and records_runs(Forwarding(backend))


HOLDER = LeaseHolder(
    owner="b", host="elsewhere", pid=7, since=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
)


def test_lease_lost_says_who_took_it_and_what_to_do() -> None:
    error = lease_lost("run-1", HOLDER)
    assert isinstance(error, StateLockedError)
    assert (error.state_id, error.holder) == ("run-1", HOLDER)
    assert str(error) == (
        "This run lost the lease of state 'run-1' to another writer (host elsewhere, pid 7, "
        "since 2030-01-02 03:04:05 UTC): its heartbeat was older than the lease timeout, so "
        "the lease was taken over. Records queued since were not written. Let the other "
        "writer finish, or stop it, then resume; raise the backend's lease timeout if this "
        "process stalls for long."
    )


def test_history_exists_and_journal_conflict_say_how_to_go_on() -> None:
    assert str(history_exists(InMemoryStateBackend(), "run-1")) == (
        "InMemoryStateBackend already holds a history for state 'run-1'. Resume it with "
        "ExecutionState.load_from_state_id('run-1', backend), or start a new run with "
        "another state_id (or none, for a fresh one)."
    )
    conflict = journal_conflict("run-1", 12, 10)
    assert (conflict.state_id, conflict.holder) == ("run-1", None)
    assert str(conflict) == (
        "The journal of state 'run-1' holds 12 record(s), but this state was loaded with "
        "10: another writer recorded into the run after it was loaded (or it was restored "
        "from an older snapshot). Nothing was recorded; load it again with "
        "ExecutionState.load_from_state_id('run-1', backend)."
    )


def test_a_missing_state_is_reported_with_the_ids_that_exist() -> None:
    backend = InMemoryStateBackend()
    with pytest.raises(StateNotFoundError) as info:
        require_state(backend, "nope")
    assert str(info.value) == (
        f"No saved state with id 'nope' exists in {backend!r}. The backend holds no states "
        "at all. Check the id (and the storage path), or start a new run."
    )
    backend.append_event("journal-only", {"status": "started"})  # a journal, no snapshot
    for n in range(19):
        backend.save_state(StateSnapshot(state_id=f"run-{n:02d}"))
    with pytest.raises(StateNotFoundError) as info:
        require_state(backend, "nope")
    twenty = ", ".join([repr("journal-only"), *(repr(f"run-{n:02d}") for n in range(19))])
    assert f"Known state ids: {twenty}. Check the id" in str(info.value)
    backend.save_state(StateSnapshot(state_id="run-19"))
    with pytest.raises(StateNotFoundError) as info:
        require_state(backend, "nope")
    assert f"Known state ids: {twenty} and 1 more. Check the id" in str(info.value)
    for n in range(20, 25):
        backend.save_state(StateSnapshot(state_id=f"run-{n:02d}"))
    with pytest.raises(StateNotFoundError) as info:
        require_state(backend, "nope")
    assert f"Known state ids: {twenty} and 6 more. Check the id" in str(info.value)
