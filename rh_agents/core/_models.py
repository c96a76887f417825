"""Pydantic models copied and built without validation: the core's hot-path constructors.

The core copies an event at each status change and builds one result per invocation
and per group item, always from values of the right types; validating them again would
be most of the cost.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["assemble", "clone"]

M = TypeVar("M", bound=BaseModel)

_setattr = object.__setattr__


def clone(model: M, **changes: Any) -> M:
    """A shallow copy of ``model`` with ``changes``, without validation.

    What ``model.model_copy(update=changes)`` does, at half the cost: the core copies an
    event at each status change (its working copy, the immutable snapshots the history and
    subscribers receive), and only ever with values of the right types.
    """
    fields = model.__dict__.copy()
    if changes:
        fields.update(changes)
    return assemble(
        type(model), fields, set(model.__pydantic_fields_set__), model.__pydantic_private__
    )


def assemble(
    cls: type[M],
    fields: dict[str, Any],
    fields_set: set[str] | frozenset[str],
    private: dict[str, Any] | None,
) -> M:
    """A ``cls`` instance made of these parts (copying ``private``), without validation."""
    model = cls.__new__(cls)
    _setattr(model, "__dict__", fields)
    _setattr(model, "__pydantic_fields_set__", fields_set)
    _setattr(model, "__pydantic_extra__", None)
    _setattr(model, "__pydantic_private__", None if private is None else dict(private))
    return model
