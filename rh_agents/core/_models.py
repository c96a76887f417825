"""Pydantic models copied and built without validation: the core's hot-path constructors.

The core copies an event at each status change and builds one result per invocation
and per group item, always from values of the right types; validating them again would
be most of the cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["assemble", "clone", "set_extra", "set_fields_set", "set_model_dict", "set_private"]

M = TypeVar("M", bound=BaseModel)


def _slot_setter(name: str) -> Callable[[Any, Any], None]:
    """The setter of one of the slots every pydantic model has: ``setter(model, value)``
    is ``object.__setattr__(model, name, value)`` without the generic attribute lookup
    (a third of its cost; the core sets four per model it builds)."""
    setter: Callable[[Any, Any], None] = BaseModel.__dict__[name].__set__
    return setter


set_model_dict = _slot_setter("__dict__")
set_fields_set = _slot_setter("__pydantic_fields_set__")
set_extra = _slot_setter("__pydantic_extra__")
set_private = _slot_setter("__pydantic_private__")


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
    set_model_dict(model, fields)
    set_fields_set(model, fields_set)
    set_extra(model, None)
    set_private(model, None if private is None else dict(private))
    return model
