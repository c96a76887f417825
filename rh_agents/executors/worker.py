"""The worker side of remote executors: run shipped work, send back its outcome.

:func:`execute_remote` is the entry point a worker process (a process pool's, a Dask
worker's) calls with the serialized task: it opens the ``remote {name}`` span under the
shipped trace context (:mod:`rh_agents.telemetry.remote`), runs the coroutine to
completion in the thread's own event loop and returns the serialized outcome.
:func:`unpack_outcome` turns it back into the value, or raises the exception with the
remote traceback attached.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import threading
import traceback
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rh_agents.core.executors import (
    RemoteCall,
    RemoteExecutionError,
    RemoteTask,
    running_shipped_work,
)

__all__ = ["execute_remote", "unpack_outcome"]


@dataclass(slots=True)
class _Outcome:
    ok: bool
    value: Any = None
    error: BaseException | None = None
    traceback: str | None = None
    worker: str = ""


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


_thread_loops = threading.local()


def _run_to_completion(awaitable: Awaitable[Any]) -> Any:
    """Run ``awaitable`` in this thread's own event loop, like ``asyncio.run`` (tasks
    it leaves running are cancelled) but reusing the loop from one item to the next."""
    loop: asyncio.AbstractEventLoop | None = getattr(_thread_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _thread_loops.loop = loop
        weakref.finalize(threading.current_thread(), loop.close)
    task = loop.create_task(_await(awaitable))
    try:
        value = loop.run_until_complete(task)
    except (SystemExit, KeyboardInterrupt):
        # The process is exiting (a terminated pool worker): no "exception was never
        # retrieved" noise for the task the exit interrupted, and nothing more to run.
        if task.done() and not task.cancelled():
            task.exception()
        raise
    except BaseException:
        _cancel_leftovers(loop)
        raise
    _cancel_leftovers(loop)
    return value


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in leftover:
        t.cancel()
    if leftover:
        loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))


def _format_remote(exc: BaseException) -> str:
    """The traceback of ``exc`` from the shipped code down (the worker's own frames
    that ran it are left out)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code is not _await.__code__:
        tb = tb.tb_next
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    else:
        tb = exc.__traceback__
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _portable_error(exc: BaseException, dumps: Callable[[Any], bytes]) -> BaseException:
    """``exc`` if it survives pickling, else a RemoteExecutionError naming it."""
    try:
        pickle.loads(dumps(exc))
        return exc
    except Exception:
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        return RemoteExecutionError(
            f"{type(exc).__name__}: {exc} (the remote {kind} could not be pickled, so it "
            "is reported as a RemoteExecutionError)",
            remote_type=kind,
        )


def execute_remote(
    payload: bytes, *, dumps: Callable[[Any], bytes], executor: str, worker: str
) -> bytes:
    """Run a serialized :class:`RemoteCall` or :class:`RemoteItem` in this process.

    The entry point of workers: opens a ``remote {name}`` span under the shipped trace
    context, runs the coroutine to completion in this thread's event loop and returns the
    serialized outcome (value, or exception and traceback). Never raises for a failure
    of the work itself.
    """
    try:
        task: RemoteTask = pickle.loads(payload)
    except Exception as exc:
        error = RemoteExecutionError(
            f"The worker ({worker}) could not load the work shipped to it: "
            f"{type(exc).__name__}: {exc}. Its code must be importable on the worker "
            "(install the same packages there).",
            remote_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        )
        return dumps(_Outcome(False, error=error, traceback=traceback.format_exc(), worker=worker))
    # Imported here: a coordinator that only unpacks outcomes needs no OpenTelemetry.
    from rh_agents.telemetry.remote import remote_span

    attributes: dict[str, Any] = {
        "rh_agents.remote.executor": executor,
        "rh_agents.remote.worker": worker,
        "rh_agents.remote.kind": task.kind,
        "rh_agents.remote.key": task.key,
        "process.pid": os.getpid(),
    }
    if isinstance(task, RemoteCall) and task.address:
        attributes["rh_agents.event.address"] = task.address
    what = (
        f"the handler of '{task.name}'" if isinstance(task, RemoteCall) else f"item '{task.name}'"
    )
    with remote_span(f"remote {task.name or task.kind}", task.carrier, attributes) as span:
        try:
            with running_shipped_work(what, f"{executor} worker {worker}"):
                value = _run_to_completion(task.start())
        except (Exception, asyncio.CancelledError) as exc:
            text = _format_remote(exc)
            span.raised(exc)
            portable = _portable_error(exc, dumps)
            return dumps(_Outcome(False, error=portable, traceback=text, worker=worker))
        try:
            data = dumps(_Outcome(True, value=value, worker=worker))
        except Exception as exc:
            message = (
                f"The result of '{task.name}' ({type(value).__name__}) cannot be pickled to "
                f"send it back from the worker: {type(exc).__name__}: {exc}. Return "
                "picklable values (plain data, pydantic models of importable classes)."
            )
            span.refused(message)
            failure = RemoteExecutionError(message)
            return dumps(
                _Outcome(False, error=failure, traceback=traceback.format_exc(), worker=worker)
            )
        span.completed()
        return data


def unpack_outcome(data: bytes) -> Any:
    """The value of a serialized outcome, or raise its exception with the remote
    traceback attached (``remote_traceback`` and a note)."""
    try:
        outcome: _Outcome = pickle.loads(data)
    except Exception as exc:
        raise RemoteExecutionError(
            f"The outcome sent back by the worker cannot be loaded here: "
            f"{type(exc).__name__}: {exc}. Its classes must be importable in the coordinator."
        ) from exc
    if outcome.ok:
        return outcome.value
    error = outcome.error
    assert error is not None
    if outcome.traceback:
        try:
            error.remote_traceback = outcome.traceback  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - exceptions with __slots__ only
            pass
        error.add_note(f"Remote traceback (worker {outcome.worker}):\n{outcome.traceback}")
    raise error
