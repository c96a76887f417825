"""Run group items in worker processes of this machine, for CPU-bound work."""

from __future__ import annotations

import asyncio
import os
import pickle
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rh_agents.core.errors import InvalidArgumentError, LifecycleError
from rh_agents.core.executors import RemoteTask, WorkerLostError
from rh_agents.executors._pool import ProcessPool, WorkerDied
from rh_agents.executors.remote import RemoteExecutorBase, dumps_task
from rh_agents.executors.worker import execute_remote, unpack_outcome

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

__all__ = ["ProcessPoolItemExecutor"]


def _process_entry(payload: bytes) -> bytes:
    return execute_remote(
        payload, dumps=pickle.dumps, executor="process", worker=f"pid {os.getpid()}"
    )


class ProcessPoolItemExecutor(RemoteExecutorBase):
    """Runs group items in worker processes of this machine, for CPU-bound work.

    What is shipped must be picklable with the standard :mod:`pickle`: for a plain item
    its factory (``functools.partial(top_level_async_fn, arg)``, not a lambda), for an
    ExecutionEvent call the actor's handler (a top-level ``async def``), input and
    extra_context. Each shipped coroutine runs to completion in the worker's event loop
    (tasks it leaves running are cancelled, as with ``asyncio.run``).

    Each worker process runs one item at a time; processes start on first use and stop
    in :meth:`shutdown` (or ``with`` / ``async with``).

    **Cancelling an item** (FAIL_FAST, a group timeout, leaving a stream, cancelling the
    gather) drops it if it is still queued. If it is already running, its worker process
    is terminated (SIGTERM, so it exits through its exit handlers and flushes its spans;
    SIGKILL if it has not exited two seconds later) and a fresh worker takes its place
    at once: the abandoned item never delays the next one, and the items of the other
    workers keep running. Side effects the item had already made stay made.

    A worker process that dies (killed, out of memory, crashed) fails the item it was
    running with :class:`WorkerLostError` (retried under the group's ``max_retries``); a
    new process takes over its next item.

    Args:
        max_workers: worker processes (default: the number of CPUs).
        mp_context: multiprocessing start method or context; "spawn" by default, which
            is safe with the threads telemetry and other libraries start.
        initializer: run in each worker process when it starts, e.g.
            ``functools.partial(setup_worker_telemetry, trace_file="w-{pid}.jsonl")``.
        initargs: the arguments of ``initializer``.

    Example::

        async with ProcessPoolItemExecutor(4) as pool:
            async with state.parallel(max_workers=4, executor=pool) as p:
                for doc in docs:
                    p.add(functools.partial(score, doc))
    """

    executor_name = "process"

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        mp_context: str | BaseContext | None = "spawn",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise InvalidArgumentError(
                f"max_workers must be a positive integer or None (one per CPU), got "
                f"{max_workers!r}."
            )
        self.max_workers: int = max_workers or os.cpu_count() or 1
        self._mp_context = mp_context
        self._initializer = initializer
        self._initargs = initargs
        self._pool: ProcessPool | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"ProcessPoolItemExecutor(max_workers={self.max_workers})"

    def _get_pool(self) -> ProcessPool:
        with self._lock:
            if self._closed:
                raise LifecycleError(
                    "This ProcessPoolItemExecutor was shut down; create a new one."
                )
            if self._pool is None:
                import multiprocessing

                context = self._mp_context
                if context is None or isinstance(context, str):
                    context = multiprocessing.get_context(context)
                self._pool = ProcessPool(
                    self.max_workers,
                    context,
                    _process_entry,
                    initializer=self._initializer,
                    initargs=self._initargs,
                )
            return self._pool

    async def _ship(self, task: RemoteTask) -> Any:
        payload = dumps_task(task, pickle.dumps, "a worker process")
        pool = self._get_pool()
        job = pool.submit(payload)
        try:
            data = await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            pool.abandon(job)
            raise
        except WorkerDied as exc:
            code = f" (exit code {exc.exitcode})" if exc.exitcode is not None else ""
            raise WorkerLostError(
                f"The worker process running '{task.name}' died{code}: killed, out of "
                "memory, or crashed. A new process takes its place; the group retries "
                "the item if it has max_retries."
            ) from None
        return unpack_outcome(data)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = True) -> None:
        """Stop the worker processes (idempotent); items not started are cancelled.

        With ``wait``, returns once every process has exited (after the item it is
        running, if any).
        """
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    async def aclose(self) -> None:
        """:meth:`shutdown` without blocking the event loop."""
        await asyncio.to_thread(self.shutdown)

    def __enter__(self) -> ProcessPoolItemExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    async def __aenter__(self) -> ProcessPoolItemExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
