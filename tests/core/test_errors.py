"""The error classes: what ``except`` clauses, attributes and messages promise.

The exception classes of causes are made inside each test: the classes that
``EventFailedError.caused_by`` builds are cached per cause class, and a class shared
with other tests would come from the cache instead of being built here.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from rh_agents.core import errors
from rh_agents.core.errors import (
    AttemptTimeoutError,
    CircuitOpenError,
    EventFailedError,
    RejectedResultError,
    StateLockedError,
    StateNotFoundError,
)


def test_a_failure_keeps_its_result() -> None:
    result = object()
    assert EventFailedError("failed", result).result is result
    assert EventFailedError("failed").result is None


def test_a_failure_caused_by_an_exception_is_also_of_its_class() -> None:
    class QuotaError(ValueError):
        def __str__(self) -> str:
            return "the cause's own text"

    cause = QuotaError("quota")
    cause.code = 429  # type: ignore[attr-defined]
    cause.add_note("a note of the cause")
    result = object()
    failure = EventFailedError.caused_by("Item 0 ('a') failed: quota", result, cause)
    assert isinstance(failure, EventFailedError)
    assert isinstance(failure, QuotaError) and isinstance(failure, ValueError)
    assert type(failure).__name__ == "EventFailedError[QuotaError]"
    assert type(failure).__module__ == "rh_agents.core.errors"
    assert str(failure) == "Item 0 ('a') failed: quota"  # not the cause's __str__
    assert failure.args == ("Item 0 ('a') failed: quota",)
    assert failure.code == 429  # type: ignore[attr-defined]  # attributes are copied
    assert getattr(failure, "__notes__", []) == []  # the notes stay with the cause
    assert failure.__cause__ is cause
    assert failure.result is result
    # one class per cause class: the same class for the next failure of that kind
    again = EventFailedError.caused_by("again", None, QuotaError("q"))
    assert type(again) is type(failure)


def test_a_cause_whose_new_needs_its_message_is_given_it() -> None:
    class Strict(ValueError):
        def __new__(cls, message: str) -> Strict:
            if not isinstance(message, str):
                raise TypeError("a message is required")
            return super().__new__(cls, message)

    failure = EventFailedError.caused_by("failed: strict", None, Strict("x"))
    assert type(failure).__name__ == "EventFailedError[Strict]"
    assert str(failure) == "failed: strict"


def test_a_class_that_cannot_be_mixed_in_is_stood_in_for_by_its_nearest_base() -> None:
    class NeedsTwo(ValueError):  # like pydantic's ValidationError: __new__ takes more
        def __new__(cls, a: Any, b: Any) -> NeedsTwo:
            return super().__new__(cls, a, b)

    failure = EventFailedError.caused_by("failed", None, NeedsTwo(1, 2))
    assert type(failure).__name__ == "EventFailedError[ValueError]"
    assert isinstance(failure, ValueError) and not isinstance(failure, NeedsTwo)
    assert failure.__cause__ is not None


def test_plain_causes_give_a_plain_event_failed_error() -> None:
    for cause in (Exception("plain"), EventFailedError("already one"), None):
        failure = EventFailedError.caused_by("failed", None, cause)
        assert type(failure) is EventFailedError, cause
        assert str(failure) == "failed"
        assert failure.__cause__ is cause


def test_causes_with_nothing_to_mix_in_give_a_plain_event_failed_error() -> None:
    class Odd(Exception):  # no base between it and Exception that can be mixed in
        def __new__(cls, a: Any, b: Any) -> Odd:
            return super().__new__(cls, a, b)

    class Mine(EventFailedError):  # already one
        pass

    for cause in (Odd(1, 2), Mine("mine")):
        failure = EventFailedError.caused_by("failed", None, cause)
        assert type(failure) is EventFailedError, cause
        assert failure.__cause__ is cause


def test_a_base_exception_cause_is_chained_but_not_mixed_in_or_copied() -> None:
    class Stop(BaseException):
        pass

    cause = Stop("stop")
    cause.code = 1  # type: ignore[attr-defined]
    failure = EventFailedError.caused_by("failed", None, cause)
    assert type(failure) is EventFailedError
    assert not hasattr(failure, "code")
    assert failure.__cause__ is cause


def test_an_execution_failure_cause_is_mixed_in_like_any_other() -> None:
    failure = EventFailedError.caused_by("failed", None, CircuitOpenError("llm"))
    assert isinstance(failure, CircuitOpenError)
    assert failure.breaker == "llm"


def test_the_classes_made_for_causes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "_failure_classes", {})  # the other tests keep theirs
    for n in range(300):
        kind = type(f"Error{n}", (ValueError,), {})
        EventFailedError.caused_by("failed", None, kind())
    assert len(errors._failure_classes) == 256


def test_circuit_open_error_says_when_to_retry() -> None:
    later = CircuitOpenError("llm")
    assert str(later) == (
        "Circuit breaker 'llm' is open after repeated failures; the call was rejected "
        "without running. Retry later, or raise the breaker's threshold."
    )
    assert (later.breaker, later.retry_after) == ("llm", None)
    soon = CircuitOpenError("llm", retry_after=2.5)
    assert "rejected without running. Retry in 2.5s, or raise" in str(soon)
    assert soon.retry_after == 2.5


def test_attempt_errors_keep_their_fields_through_pickle() -> None:
    timeout = AttemptTimeoutError("actor 'search'", 1.5, 2)
    assert (timeout.what, timeout.timeout, timeout.attempt) == ("actor 'search'", 1.5, 2)
    assert isinstance(timeout, TimeoutError)
    rejected = RejectedResultError("actor 'writer'", 3, {"status": "overloaded"})
    assert (rejected.what, rejected.attempt, rejected.result) == (
        "actor 'writer'",
        3,
        {"status": "overloaded"},
    )
    for error in (timeout, rejected):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert vars(copy) == vars(error) and str(copy) == str(error)


def test_state_not_found_prints_its_message_as_is() -> None:
    # KeyError would print it quoted
    assert str(StateNotFoundError("No saved state 'x'")) == "No saved state 'x'"
    assert str(StateNotFoundError()) == ""
    with pytest.raises(KeyError):
        raise StateNotFoundError("missing")


def test_state_locked_error_names_the_run_and_holder() -> None:
    error = StateLockedError("held", state_id="run-1", holder="host:1")
    assert (str(error), error.state_id, error.holder) == ("held", "run-1", "host:1")
    bare = StateLockedError("held")
    assert (bare.state_id, bare.holder) == (None, None)
