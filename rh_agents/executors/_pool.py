"""The worker processes behind :class:`~rh_agents.executors.ProcessPoolItemExecutor`.

Why not :class:`concurrent.futures.ProcessPoolExecutor`: it cannot stop one running call.
An item abandoned by its group (a timeout, FAIL_FAST, a cancelled gather) would keep its
process busy until it finished on its own, and every item queued behind it would wait;
killing that process by hand breaks the whole pool, failing the other running items.

Here each worker is one process with its own pipe, fed one call at a time by its own
thread in the coordinator. Abandoning a running call retires just that worker: its
process is asked to exit (SIGTERM, which runs its exit handlers so its spans are
flushed; SIGKILL after a grace period) and a fresh worker takes its place at once, so
the next item does not wait, and the other workers' items are untouched. A process that
dies on its own fails only the call it was running.

Calls travel as bytes (the executor pickles them) and come back as bytes; an empty
message tells a worker to exit.
"""

from __future__ import annotations

import atexit
import queue
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from multiprocessing import connection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

__all__ = ["ProcessPool", "WorkerDied"]

_STOP = b""
TERMINATE_GRACE = 2.0
"""Seconds a retired worker gets to exit on SIGTERM before it is killed."""


class WorkerDied(Exception):
    """The process running a call exited before it answered (internal; the executor
    turns it into WorkerLostError)."""

    def __init__(self, exitcode: int | None) -> None:
        super().__init__(exitcode)
        self.exitcode = exitcode


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # Raised in the worker's main thread, wherever it is (a sleep, a pipe read, Python
    # code): the process unwinds and runs its exit handlers, flushing its spans.
    sys.exit(128 + signum)


def _worker_main(
    conn: Connection,
    entry: Callable[[bytes], bytes],
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> None:
    """The loop of a worker process: run each call received, answer, until told to stop."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Ctrl-C in a terminal reaches the whole process group; the coordinator decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if payload == _STOP:
            return
        conn.send_bytes(entry(payload))


@dataclass(eq=False)
class _Job:
    payload: bytes
    future: Future[bytes]
    worker: _Worker | None = None  # set while a worker runs it
    abandoned: bool = False


class _Worker:
    """One worker process (started on its first call) and the thread that feeds it."""

    def __init__(self, pool: ProcessPool, number: int) -> None:
        self.pool = pool
        self.retired = False  # set (under the pool's lock) when it must stop
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.thread = threading.Thread(
            target=self._loop, name=f"rh_agents-process-worker-{number}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        try:
            while not self.retired:
                job = self.pool.jobs.get()
                if job is None:  # shutdown
                    break
                if self.retired:  # replaced meanwhile: hand the job on
                    self.pool.jobs.put(job)
                    break
                if job.future.set_running_or_notify_cancel():
                    self._run(job)
        finally:
            self._stop_process()
            self.pool.thread_done(self)

    def _ensure_process(self) -> Connection:
        if self.process is not None and not self.process.is_alive():
            self._reap()  # died while idle: the next call gets a fresh process
        if self.conn is not None:
            return self.conn
        pool = self.pool
        parent: Connection
        parent, child = pool.context.Pipe()
        process: BaseProcess = pool.context.Process(
            target=_worker_main,
            args=(child, pool.entry, pool.initializer, pool.initargs),
            name=self.thread.name,
        )
        process.start()
        child.close()  # the worker holds the only other end: its death is seen here
        self.process, self.conn = process, parent
        return parent

    def _run(self, job: _Job) -> None:
        try:
            conn = self._ensure_process()
        except BaseException as exc:  # e.g. OSError: cannot start a process
            job.future.set_exception(exc)
            return
        with self.pool.lock:
            if job.abandoned:  # pragma: no cover - abandoned while being dequeued
                job.future.set_exception(CancelledError())
                return
            job.worker = self
        process = self.process
        assert process is not None
        data: bytes | None = None
        try:
            conn.send_bytes(job.payload)
            while data is None:
                ready = connection.wait([conn, process.sentinel], timeout=TERMINATE_GRACE)
                if conn in ready:
                    data = conn.recv_bytes()
                elif process.sentinel in ready:
                    break
                elif self.retired:
                    process.kill()  # it did not exit on SIGTERM
        except (EOFError, OSError):
            data = None
        with self.pool.lock:
            job.worker = None
        if data is None:
            self._reap()
            job.future.set_exception(WorkerDied(process.exitcode))
        else:
            job.future.set_result(data)

    def _reap(self) -> None:
        conn, process = self.conn, self.process
        self.conn = self.process = None
        if conn is not None:
            conn.close()
        if process is not None:
            process.join(TERMINATE_GRACE)
            if process.exitcode is None:
                process.kill()
                process.join()

    def _stop_process(self) -> None:
        conn, process = self.conn, self.process
        if conn is None or process is None:
            return
        if not self.retired:
            try:
                conn.send_bytes(_STOP)  # exit normally (exit handlers flush spans)
            except OSError:
                pass
        self._reap()

    def terminate(self) -> None:
        """Ask the process to exit now (SIGTERM); the thread kills it after the grace."""
        process = self.process
        if process is not None and process.exitcode is None:
            try:
                process.terminate()
            except OSError:  # pragma: no cover - exited meanwhile
                pass


class ProcessPool:
    """``max_workers`` worker processes, each running one call at a time.

    Args:
        max_workers: the number of workers.
        context: the multiprocessing context that starts them.
        entry: what a worker runs for each call: ``entry(payload) -> answer``
            (picklable: a top-level function).
        initializer / initargs: run once in each worker process when it starts.
    """

    def __init__(
        self,
        max_workers: int,
        context: BaseContext | Any,
        entry: Callable[[bytes], bytes],
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self.context: Any = context  # typeshed's BaseContext lacks Process and Pipe
        self.entry = entry
        self.initializer = initializer
        self.initargs = initargs
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self._numbers = iter(range(1, sys.maxsize))
        self._workers: list[_Worker] = []  # the current ones
        self._threads: set[_Worker] = set()  # every worker whose thread still runs
        self._closed = False
        with self.lock:
            for _ in range(max_workers):
                self._add_worker()
        _POOLS.add(self)

    def _add_worker(self) -> None:
        worker = _Worker(self, next(self._numbers))
        self._workers.append(worker)
        self._threads.add(worker)
        worker.start()

    def submit(self, payload: bytes) -> _Job:
        """Queue one call; its future resolves to the worker's answer, or fails with
        :class:`WorkerDied`."""
        job = _Job(payload, Future())
        with self.lock:
            if self._closed:
                raise RuntimeError("the process pool is shut down")
            self.jobs.put(job)
        return job

    def abandon(self, job: _Job) -> None:
        """Give up on ``job``: drop it if it is still queued; if a worker runs it, retire
        that worker (its process is terminated) and start a fresh one in its place."""
        if job.future.cancel():
            return
        with self.lock:
            job.abandoned = True
            worker = job.worker
            if worker is None or worker.retired:
                return
            worker.retired = True
            self._workers.remove(worker)
            if not self._closed:
                self._add_worker()
        worker.terminate()

    def thread_done(self, worker: _Worker) -> None:
        with self.lock:
            self._threads.discard(worker)

    @property
    def processes(self) -> list[int]:
        """The process ids of the current workers that have started a process."""
        with self.lock:
            return [w.process.pid for w in self._workers if w.process and w.process.pid]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = True) -> None:
        """Stop every worker after the call it is running (idempotent); queued calls are
        cancelled with ``cancel_futures``, otherwise they run first."""
        with self.lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    while True:
                        try:
                            job = self.jobs.get_nowait()
                        except queue.Empty:
                            break
                        if job is not None:
                            job.future.cancel()
                for _ in self._workers:
                    self.jobs.put(None)
            threads = list(self._threads)
        _POOLS.discard(self)
        if wait:
            for worker in threads:
                worker.thread.join()

    def kill(self) -> None:
        """At interpreter exit: terminate every worker process, busy or not."""
        self.shutdown(wait=False)
        with self.lock:
            workers = list(self._threads)
        for worker in workers:
            worker.retired = True
            worker.terminate()


_POOLS: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


@atexit.register
def _kill_pools() -> None:  # pragma: no cover - runs at interpreter exit
    # Registered after multiprocessing's own exit handler, so it runs before it: that
    # one joins every child process, which would wait for a busy worker's call to end.
    for pool in list(_POOLS):
        pool.kill()
    for pool_process in _children():
        pool_process.join(TERMINATE_GRACE)


def _children() -> list[Any]:
    import multiprocessing

    return [p for p in multiprocessing.active_children() if p.name.startswith("rh_agents-")]
