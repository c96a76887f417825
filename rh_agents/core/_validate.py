"""Shared argument checks (private).

The predicates leave the error message to their caller; :func:`exception_classes` is the
one place that turns "an exception class, or a tuple, list or set of them" into a tuple,
for every argument that takes exception classes (``retry_on``, ``non_retryable``,
``RetryConfig.retry_on_exceptions`` and ``exclude_exceptions``).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import TypeAlias

from rh_agents.core.errors import InvalidArgumentError

__all__ = [
    "ExceptionClasses",
    "exception_classes",
    "has_methods",
    "is_finite_at_least",
    "is_int_at_least",
]

ExceptionClasses: TypeAlias = type[BaseException] | Collection[type[BaseException]]
"""One exception class, or a tuple, list or set of them."""

_COLLECTIONS = (tuple, list, set, frozenset)


def exception_classes(value: object, name: str) -> tuple[type[BaseException], ...]:
    """``value`` (a class, or a tuple, list or set of classes) as a tuple of classes.

    A set comes out sorted by qualified name, so the result does not depend on hashing.

    Raises:
        InvalidArgumentError: ``value`` is something else, or holds something that is not
            an exception class (an instance, a name); the message names ``name``.
    """
    items = value if isinstance(value, _COLLECTIONS) else (value,)
    bad = [item for item in items if not _is_exception_class(item)]
    if bad:
        what = "instances" if isinstance(bad[0], BaseException) else "names or other objects"
        raise InvalidArgumentError(
            f"{name} takes an exception class or a tuple (or list, or set) of exception "
            f"classes, got {value!r}: {bad[0]!r} is not one. Pass classes, not {what}, "
            "e.g. ConnectionError or (TimeoutError, ConnectionError)."
        )
    if isinstance(value, set | frozenset):
        return tuple(sorted(value, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}"))
    return tuple(items)


def _is_exception_class(item: object) -> bool:
    return isinstance(item, type) and issubclass(item, BaseException)


def has_methods(value: object, *names: str) -> bool:
    """Whether ``value`` has a callable attribute for each of ``names``.

    The library's test for "does this backend offer that interface", instead of
    ``isinstance`` with a runtime-checkable protocol: from Python 3.12 on, ``isinstance``
    looks members up statically, so a proxy that forwards them with ``__getattr__`` (a
    wrapper adding logging or faults around a backend) would be taken for a plainer
    backend on 3.12 and 3.13 and for the full one on 3.11. ``getattr`` answers the same
    on every version and sees what a call would reach.
    """
    return all(callable(getattr(value, name, None)) for name in names)


def is_int_at_least(value: object, minimum: int) -> bool:
    """Whether ``value`` is an int (not a bool) and ``>= minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_finite_at_least(value: object, minimum: float, *, strict: bool = False) -> bool:
    """Whether ``value`` is a finite real number ``>= minimum`` (``> minimum`` if strict)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return value > minimum if strict else value >= minimum
