"""The items of a group: what ``p.add`` accepts, their names, and how each one starts."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from types import CoroutineType, FunctionType, MethodType
from typing import Any

from rh_agents.core.errors import DuplicateNameError, InvalidArgumentError, InvalidWorkError
from rh_agents.core.parallel.models import ParallelEventGroup, label_of

__all__ = ["Item", "ItemList"]

_FACTORY_TYPES = (FunctionType, MethodType, functools.partial)
"""Callable types that are never awaitable themselves (the common factories)."""


class Item:
    """One item of a group: its work, name, position and attempts so far."""

    __slots__ = (
        "_name",
        "adds",
        "attempts",
        "coro",
        "factory",
        "first_started",
        "index",
        "key",
        "priority",
        "ready_at",
        "started",
    )

    def __init__(
        self,
        index: int,
        name: str | None,
        factory: Callable[[], Awaitable[Any]] | None,
        coro: Awaitable[Any] | None,
        priority: int = 0,
        key: str | None = None,
    ) -> None:
        self.index: int = index
        self.priority: int = priority
        # The item's address segment ``[key]``: its index, for an item added before the
        # group ran; for one added while it runs, who added it and the how-manieth
        # (``3.0``: item 3's first; ``+0``: the body's first), which, unlike the index,
        # does not depend on which concurrent item added first.
        self.key: str | None = key
        self.adds: int = 0  # items this item added while the group ran
        self._name = name
        self.factory: Callable[[], Awaitable[Any]] | None = factory
        self.coro: Awaitable[Any] | None = coro
        self.attempts: int = 0
        self.started: bool = False
        self.ready_at: float = 0.0
        self.first_started: float = 0.0  # clock time of the first attempt, for a retry budget

    @property
    def name(self) -> str:
        """The item's name; unnamed items are ``item_<index>`` (see ``add``)."""
        name = self._name
        return f"item_{self.index}" if name is None else name

    def awaitable(self) -> Awaitable[Any]:
        if self.factory is None:
            coro, self.coro = self.coro, None
            if coro is None:
                raise InvalidWorkError(
                    f"Item {self.index} ('{self.name}') is a coroutine object and was already "
                    "awaited; pass a factory (e.g. `lambda: work(x)`) to run it again."
                )
            return coro
        try:
            work = self.factory()
        except TypeError as exc:
            tb = exc.__traceback__
            if tb is not None and tb.tb_next is None:
                # Raised by the call itself, not inside the factory: it needs arguments.
                # That fails the same way on every attempt, so it is a usage error.
                raise InvalidWorkError(
                    f"The factory of item {self.index} ('{self.name}') cannot be called "
                    f"without arguments ({exc}); p.add() calls it with none. Bind the "
                    "arguments first: p.add(lambda: work(x)) or functools.partial(work, x)."
                ) from exc
            raise
        if type(work) is not CoroutineType and not inspect.isawaitable(work):
            raise InvalidWorkError(
                f"The factory of item {self.index} ('{self.name}') returned "
                f"{type(work).__name__}, not an awaitable; pass a zero-argument callable "
                "returning a coroutine, e.g. `lambda: work(x)`."
            )
        return work

    def close(self) -> None:
        coro, self.coro = self.coro, None
        close = getattr(coro, "close", None)
        if close is not None:
            close()


class ItemList:
    """The items of one group in add order, with the checks ``p.add`` makes.

    Args:
        group: the group's model (its name is in the error messages).
        max_retries: the group's retries; a group that retries refuses coroutine
            objects, which can run only once.
    """

    __slots__ = ("_all_named", "_coros", "_group", "_max_retries", "_names", "items")

    def __init__(self, group: ParallelEventGroup, max_retries: int) -> None:
        self._group = group
        self._max_retries = max_retries
        self.items: list[Item] = []
        self._names: set[str] = set()  # explicit names (all names once _all_named)
        self._all_named = False
        self._coros: dict[Any, int] = {}  # coroutine object -> index, while adding

    def __len__(self) -> int:
        return len(self.items)

    def add(self, work: Any, name: str | None, priority: int = 0, key: str | None = None) -> int:
        """Add one item (see :meth:`ParallelExecutionManager.add`); returns its index."""
        if not isinstance(priority, int) or isinstance(priority, bool):
            close_rejected(work)
            raise InvalidArgumentError(
                f"An item's priority must be an integer (higher starts first), got {priority!r}."
            )
        index = len(self.items)
        if name is not None:
            self._check_name(work, name)
        elif self._all_named:
            name = self._automatic_name(index)
        # Most items are functions or partials; the awaitable check is for the others.
        kind = type(work)
        if kind is CoroutineType or (kind not in _FACTORY_TYPES and inspect.isawaitable(work)):
            self._check_awaitable(work, name or f"item_{index}", index)
            item = Item(index, name, None, work, priority, key)
        elif callable(work):
            item = Item(index, name, work, None, priority, key)
        else:
            raise InvalidWorkError(
                f"p.add() takes a coroutine object or a zero-argument callable returning "
                f"an awaitable, got {type(work).__name__} {work!r:.60}."
            )
        if name is not None:
            self._names.add(name)
        self.items.append(item)
        return index

    def _check_name(self, work: Any, name: Any) -> None:
        if not isinstance(name, str) or not name:
            close_rejected(work)
            raise InvalidArgumentError(f"An item name must be a non-empty string, got {name!r}.")
        if not self._all_named and name.startswith("item_"):
            self._name_all()  # it may be an automatic name: check against all of them
        if name in self._names:
            close_rejected(work)
            raise DuplicateNameError(
                f"Parallel group '{label_of(self._group)}' already has an item named "
                f"'{name}'; item names must be unique: choose another name, or leave name= "
                "out for an automatic one."
            )

    def _automatic_name(self, index: int) -> str:
        name = f"item_{index}"
        suffix = 1
        while name in self._names:  # a caller already chose this name for another item
            name = f"item_{index}#{suffix}"
            suffix += 1
        return name

    def _check_awaitable(self, work: Any, name: str, index: int) -> None:
        label = label_of(self._group)
        coroutine = type(work) is CoroutineType
        if not coroutine and isinstance(work, asyncio.Future):
            # A Task already runs: the group could neither limit, time out nor cancel
            # it, and it would outlive the block. Not ours to cancel either.
            raise InvalidWorkError(
                f"Item '{name}' is an asyncio {type(work).__name__}, which is already "
                f"running outside the control of group '{label}' (max_workers, timeout and "
                "cancellation cannot apply to it). Pass a factory that starts the work "
                "instead: p.add(lambda: work(x))."
            )
        if self._max_retries:
            close_rejected(work)
            raise InvalidWorkError(
                f"Item '{name}' is a coroutine object, which can run only once, but group "
                f"'{label}' retries failed items (max_retries={self._max_retries}). Pass a "
                "factory instead: p.add(lambda: work(x))."
            )
        # Only coroutine objects: another awaitable may well be awaitable again.
        first = self._coros.setdefault(work, index) if coroutine else index
        if first != index:
            raise InvalidWorkError(
                f"Item '{name}' is the same coroutine object as item {first} of group "
                f"'{label}'; a coroutine object can run only once. Create one per item, or "
                "pass a factory: p.add(lambda: work(x))."
            )

    def _name_all(self) -> None:
        """Give every unnamed item its automatic name now, and name new ones at once.

        Automatic names (``item_<index>``) are derived on demand, so a group of unnamed
        items keeps no name per item; an explicit name of that form is the only one
        that can clash with them, and from then on every name is recorded when added.
        """
        self._all_named = True
        for item in self.items:
            if item._name is None:
                item._name = item.name
                self._names.add(item._name)

    def forget_coroutines(self) -> None:
        """Drop the duplicate check's references to coroutine objects (adding is over)."""
        self._coros.clear()

    def close(self) -> None:
        """Close the coroutine objects of items that never ran."""
        for item in self.items:
            item.close()


def close_rejected(work: Any) -> None:
    """Close ``work`` if it is a coroutine object that will never run."""
    if inspect.iscoroutine(work):
        work.close()
