"""The shared argument check of exception classes (retry_on, non_retryable, ...)."""

from __future__ import annotations

import pytest

from rh_agents.core._validate import exception_classes
from rh_agents.core.errors import InvalidArgumentError


def test_classes_come_back_as_a_tuple_and_a_set_in_name_order() -> None:
    assert exception_classes(ValueError, "retry_on") == (ValueError,)
    assert exception_classes([KeyError, OSError], "retry_on") == (KeyError, OSError)
    assert exception_classes({TimeoutError, ConnectionError, KeyError}, "retry_on") == (
        ConnectionError,
        KeyError,
        TimeoutError,
    )


@pytest.mark.parametrize(
    ("value", "bad", "what"),
    [
        (ValueError("x"), "ValueError('x')", "instances"),
        ((TimeoutError, KeyError("k")), "KeyError('k')", "instances"),
        ("ValueError", "'ValueError'", "names or other objects"),
        ([ValueError, int], "<class 'int'>", "names or other objects"),
    ],
)
def test_anything_but_exception_classes_is_refused_saying_what_to_pass(
    value: object, bad: str, what: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        exception_classes(value, "non_retryable")
    assert str(caught.value) == (
        "non_retryable takes an exception class or a tuple (or list, or set) of exception "
        f"classes, got {value!r}: {bad} is not one. Pass classes, not {what}, e.g. "
        "ConnectionError or (TimeoutError, ConnectionError)."
    )
