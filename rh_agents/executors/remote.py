"""The coordinator side of remote executors: what is shipped, and how.

:class:`RemoteExecutorBase` gives a remote executor the split every one of them makes:
an item that is an ExecutionEvent call runs here and ships only its handler (as a
:class:`~rh_agents.core.executors.RemoteCall`), any other item ships its factory (a
:class:`~rh_agents.core.executors.RemoteItem`). A subclass implements ``_ship(task)``:
serialize the task (:func:`dumps_task`), run it through
:func:`rh_agents.executors.worker.execute_remote` on a worker, and hand the returned bytes
to :func:`rh_agents.executors.worker.unpack_outcome`.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from rh_agents.core.errors import InvalidWorkError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.executors import (
    RemoteCall,
    RemoteItem,
    RemoteTask,
    UnpicklableWorkError,
    WorkItem,
)
from rh_agents.core.hooks import trace_carrier

__all__ = ["RemoteExecutorBase", "dumps_task", "task_key"]


_EVENT_CALL_CODE = ExecutionEvent.__call__.__code__


def _is_event_call(work: Any) -> bool:
    return getattr(work, "cr_code", None) is _EVENT_CALL_CODE


def _close(work: Any) -> None:
    close = getattr(work, "close", None)
    if inspect.iscoroutine(work) and close is not None:
        close()


_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.]+")


def task_key(task: RemoteTask, prefix: str = "rh_agents") -> str:
    """A compact key for a remote task: ``{prefix}-{name}-{hash of task.key}``."""
    name = _KEY_CHARS.sub("_", task.name or task.kind)[:48].strip("_") or task.kind
    digest = hashlib.blake2b(task.key.encode(), digest_size=12).hexdigest()
    return f"{prefix}-{name}-{digest}"


class RemoteExecutorBase:
    """Shared logic of remote executors; a subclass implements :meth:`_ship`.

    ``run(item)`` calls the item's factory once in the coordinator to see what it is:
    an ExecutionEvent call is awaited here (its handler is shipped through
    :meth:`run_handler`); anything else is closed and the factory itself is shipped.
    Factories must therefore be cheap and free of side effects (``lambda: fn(x)``).
    """

    executor_name = "remote"

    async def run(self, item: WorkItem) -> Any:
        work = item.factory()
        if _is_event_call(work):
            return await work
        _close(work)
        if item.work is None:
            raise InvalidWorkError(
                f"Item {item.index} ('{item.name}') is a coroutine object, which cannot be "
                f"shipped to a {self.executor_name} worker; add a picklable factory "
                "instead, e.g. p.add(functools.partial(work, x))."
            )
        key = item.key or f"{item.group_id}[{item.index}]@{item.attempt}"
        return await self._ship(RemoteItem(item.work, trace_carrier(), key, item.name))

    async def run_handler(self, call: RemoteCall) -> Any:
        return await self._ship(call)

    async def _ship(self, task: RemoteTask) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


def dumps_task(task: RemoteTask, dumps: Callable[[Any], bytes], where: str) -> bytes:
    """Serialize ``task`` for a worker, with an error that says what to change."""
    try:
        return dumps(task)
    except Exception as exc:
        if isinstance(task, RemoteCall):
            what = (
                f"The handler of actor '{task.name}' (with its input and extra_context)"
                " cannot be serialized"
            )
            fix = (
                "Define the handler as a top-level `async def` (not a lambda, closure or "
                "method of a local class) and pass picklable input and extra_context."
            )
        else:
            what = f"Item '{task.name}' cannot be serialized"
            fix = (
                "Add a picklable factory, e.g. functools.partial(top_level_async_fn, arg); "
                "an item that needs the ExecutionState must be an ExecutionEvent call "
                "itself (p.add(lambda: event(x, {}, state))), whose handler alone is shipped."
            )
        raise UnpicklableWorkError(
            f"{what} to run it on {where}: {type(exc).__name__}: {exc}. {fix}"
        ) from exc
