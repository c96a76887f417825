"""Shared argument predicates (private); each caller words its own error message."""

from __future__ import annotations

import math

__all__ = ["is_finite_at_least", "is_int_at_least"]


def is_int_at_least(value: object, minimum: int) -> bool:
    """Whether ``value`` is an int (not a bool) and ``>= minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_finite_at_least(value: object, minimum: float, *, strict: bool = False) -> bool:
    """Whether ``value`` is a finite real number ``>= minimum`` (``> minimum`` if strict)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return value > minimum if strict else value >= minimum
