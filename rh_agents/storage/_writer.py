"""The thread adapter of the embedded backends: run journals off the event loop.

An embedded backend (SQLite, the file system) stores synchronously. A :class:`Writer`
gives it the asynchronous :class:`~rh_agents.core.storage.RunJournal` of the core: one
thread per backend takes the records the runs queued and commits each run's batch in
one transaction (**group commit**: every completion that queued while the previous
commit ran shares the next one), then wakes the tasks waiting in
:meth:`ThreadedJournal.flush`. The event loop never waits for the disk, a lock held by
another process or a lease; a task waits for its own records only, and cancelling it
cancels only that wait.

What the backend provides is a :class:`JournalStore`: open a run under its lease, commit
a batch at the next positions, renew and release leases. Queued records that no flush
waits for are committed within :data:`LINGER` seconds.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import time
import weakref
from typing import Any, Protocol

from rh_agents.core._aio import outside
from rh_agents.core.errors import LifecycleError, StateError, StateStorageError
from rh_agents.core.storage import JournalOpening, JournalStatistics, LeaseHolder
from rh_agents.storage._codec import dump_record
from rh_agents.storage._lease import new_holder

__all__ = ["LINGER", "JournalStore", "ThreadedJournal", "Writer"]

_log = logging.getLogger("rh_agents.state_backends")

LINGER = 0.2
"""Seconds a queued record waits at most for a flush before it is committed anyway."""


class JournalStore(Protocol):
    """What an embedded backend does on its writer thread (synchronously)."""

    @property
    def lease_timeout(self) -> float | None:
        """Seconds without a heartbeat after which another host takes a lease over;
        None: the lease needs no heartbeat (an operating-system lock)."""
        ...

    def open_run(self, opening: JournalOpening, holder: LeaseHolder) -> None:
        """Take the run's lease for ``holder`` and check the journal's high-water mark
        against ``opening.position`` (storing the first snapshot if the backend has
        none), in one transaction."""
        ...

    def commit(self, state_id: str, holder: LeaseHolder, first: int, texts: list[str]) -> None:
        """Store the records (``texts``, encoded by :func:`._codec.dump_record` for their
        positions) at positions ``first``, ``first + 1``, ... and the new high-water
        mark, in one transaction, if ``holder`` still holds the lease."""
        ...

    def heartbeat(self, held: list[tuple[str, LeaseHolder]]) -> dict[str, StateError]:
        """Renew these leases; returns the errors of those lost to another writer."""
        ...

    def release(self, state_id: str, holder: LeaseHolder) -> None:
        """Give the lease up (nothing if ``holder`` no longer holds it)."""
        ...

    def writer_stopped(self) -> None:
        """The writer thread ends: release what it used (a connection)."""
        ...


class ThreadedJournal:
    """A :class:`~rh_agents.core.storage.RunJournal` served by a :class:`Writer` thread.

    State shared with the thread is guarded by the writer's condition.
    """

    def __init__(self, writer: Writer, opening: JournalOpening) -> None:
        self._writer = writer
        self._opening: JournalOpening | None = opening
        self._state_id = opening.state_id
        self._base = opening.position
        self._holder = new_holder()
        self._pending: list[str] = []  # encoded records (see append)
        self._appended = 0
        self._committed = 0
        self._opened = False
        self._closing = False
        self._closed = False
        self._error: StateError | None = None
        # (records committed that satisfy it, or None for "closed"; the future to wake)
        self._waiters: list[tuple[int | None, asyncio.Future[None]]] = []
        self._commits = 0
        self._commit_seconds = 0.0
        self._largest = 0

    def __repr__(self) -> str:
        return f"<run journal of {self._state_id!r} ({self._holder})>"

    @property
    def holder(self) -> LeaseHolder:
        return self._holder

    def append(self, record: dict[str, Any]) -> None:
        # Encoded here, on the caller's thread, while the record is fresh in its caches
        # (the thread then only writes); one caller appends to a journal, so the
        # position cannot change meanwhile.
        text = dump_record(self._state_id, self._base + self._appended + 1, record)
        with self._writer.cond:
            if self._error is not None:
                raise self._error
            if self._closing:
                raise LifecycleError(
                    f"The journal of state '{self._state_id}' is closed; a new one is "
                    "opened for the next records."
                )
            self._pending.append(text)
            self._appended += 1

    async def flush(self) -> None:
        await self._wait(closed=False)

    def close(self) -> None:
        with self._writer.cond:
            if not self._closing:
                self._closing = True
                self._writer.wake(self)

    async def wait_closed(self) -> None:
        await self._wait(closed=True)

    async def _wait(self, *, closed: bool) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        writer = self._writer
        with writer.cond:
            if self._error is not None:
                raise self._error
            if self._closed if closed else (self._opened and self._committed == self._appended):
                return
            self._waiters.append((None if closed else self._appended, future))
            writer._due[self] = None
        writer.kick_soon(loop)
        # A simulated clock holds time meanwhile, and wakes waiters in a fixed order.
        await outside(future)

    def statistics(self) -> JournalStatistics:
        with self._writer.cond:
            return JournalStatistics(
                records=self._committed,
                commits=self._commits,
                commit_seconds=self._commit_seconds,
                largest_commit=self._largest,
            )

    # -- on the writer thread (the methods below hold the condition)

    def _take(self) -> tuple[JournalOpening | None, list[str], int, bool] | None:
        """The work queued for the thread: (opening, records, first position, release)."""
        if self._closed:
            return None
        # Nothing appended yet: nothing to open the run for (closing releases nothing).
        opening = None if self._opened or not self._appended else self._opening
        records, self._pending = self._pending, []
        first = self._base + self._committed + 1
        return opening, records, first, self._closing

    def _done(
        self, opening: bool, records: int, release: bool, error: StateError | None, took: float
    ) -> list[tuple[asyncio.Future[None], StateError | None]]:
        """Record the outcome of a served batch; the waiters it wakes."""
        if error is not None:
            self._error = error
            self._pending = []
            self._closed = True
        else:
            if opening:
                self._opened, self._opening = True, None
            if records:
                self._committed += records
                self._commits += 1
                self._commit_seconds += took
                self._largest = max(self._largest, records)
            if release:
                self._closed = True
        woken: list[tuple[asyncio.Future[None], StateError | None]] = []
        kept: list[tuple[int | None, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if (
                error is not None
                or self._closed
                or (target is not None and self._opened and self._committed >= target)
            ):
                woken.append((future, error))
            else:
                kept.append((target, future))
        self._waiters = kept
        return woken

    def _busy(self) -> bool:
        return bool(self._waiters) or self._closing or (not self._opened and self._appended > 0)


class Writer:
    """The writer thread of one backend and the run journals it serves.

    The thread starts with the first open journal and ends when none is open. Records
    are committed in the order each journal queued them; the journals of one backend are
    served one after the other, so a journal opened after another was closed sees it
    closed.
    """

    def __init__(self, store: JournalStore, name: str) -> None:
        self.cond = threading.Condition(threading.Lock())  # not re-entrant: faster
        self._store = store
        self._name = name
        self._journals: list[ThreadedJournal] = []
        self._due: dict[ThreadedJournal, None] = {}
        self._thread: threading.Thread | None = None
        self._next_heartbeat = 0.0
        self._kick_pending = False
        _live_writers.add(self)

    def open_run(self, opening: JournalOpening) -> ThreadedJournal:
        journal = ThreadedJournal(self, opening)
        with self.cond:
            self._journals.append(journal)
            if self._thread is None:
                _register_exit_flush()
                self._thread = threading.Thread(
                    target=self._run, name=f"rh_agents journal writer ({self._name})", daemon=True
                )
                self._thread.start()
        return journal

    def wake(self, journal: ThreadedJournal) -> None:
        """Serve ``journal`` soon (the caller holds the condition)."""
        self._due[journal] = None
        self.cond.notify()

    def kick_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake the thread once the event loop has run what is ready now.

        Every task waiting in this iteration of the loop (a group's workers completing
        together) joins the same commit, and the thread commits while the loop waits,
        instead of taking the GIL back from a busy loop statement by statement.
        """
        if not self._kick_pending:
            self._kick_pending = True
            loop.call_soon(self._kick)

    def _kick(self) -> None:
        self._kick_pending = False
        with self.cond:
            self.cond.notify()

    def settle(self, state_id: str, timeout: float | None) -> None:
        """Wait until what this backend's journals of ``state_id`` queued is committed
        (and those closing are closed): a read of the run in this process then sees its
        own writes, e.g. the CANCELLED records a cancelled run queued just before.

        Waits at most ``timeout`` seconds (the storage lock timeout); blocking, like the
        synchronous read that calls it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                busy = [
                    j
                    for j in self._journals
                    if j._state_id == state_id
                    and not j._closed
                    # queued, or taken by the thread and being committed right now (a
                    # journal commits nothing before it is opened)
                    and (j._committed < j._appended or j._closing)
                ]
                if not busy or self._thread is threading.current_thread():
                    return
                for journal in busy:
                    self._due[journal] = None
                self.cond.notify_all()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                self.cond.wait(left)

    def close(self, timeout: float | None = None) -> bool:
        """Close every journal (committing what is queued, releasing the leases) and
        wait up to ``timeout`` seconds for the thread to end; False if it did not."""
        with self.cond:
            for journal in self._journals:
                journal._closing = True
                self._due[journal] = None
            self.cond.notify()
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # -- the thread

    def _run(self) -> None:
        try:
            while True:
                work = self._next_work()
                if work is None:
                    return
                for journal, job in work:
                    self._serve(journal, *job)
                self._heartbeat()
        except BaseException as exc:  # pragma: no cover - a bug: fail the runs, never hang them
            _log.exception("The journal writer of %s failed", self)
            error = StateStorageError(
                f"The journal writer of {self._name} failed ({type(exc).__name__}: {exc}); "
                "the runs recording into it stopped. Resume them."
            )
            woken = []
            with self.cond:
                for journal in self._journals:
                    woken += journal._done(False, 0, False, error, 0.0)
                self._journals = []
                self._stop()
            _wake(woken)
            raise

    def _stop(self) -> None:
        """End the thread's use of the store (the caller holds the condition, so a
        journal opened meanwhile starts a new thread only after this)."""
        self._thread = None
        try:
            self._store.writer_stopped()
        except Exception:  # pragma: no cover - closing a connection
            _log.exception("The journal writer of %s could not release its connection", self)

    def _next_work(
        self,
    ) -> list[tuple[ThreadedJournal, tuple[JournalOpening | None, list[Any], int, bool]]] | None:
        cond = self.cond
        with cond:
            while True:
                self._journals = [j for j in self._journals if not j._closed]
                if not self._journals:
                    self._stop()
                    return None
                lingering = any(j._pending for j in self._journals)
                if self._due or self._heartbeat_due():
                    break
                timeout = self._next_heartbeat - time.monotonic() if self._leased() else None
                if lingering:
                    timeout = LINGER if timeout is None else min(timeout, LINGER)
                if not cond.wait(timeout) and lingering:
                    for journal in self._journals:
                        if journal._pending:
                            self._due[journal] = None
            due = [j for j in self._due if not j._closed]
            self._due.clear()
            work = []
            for journal in due:
                job = journal._take()
                if job is not None:
                    work.append((journal, job))
            return work

    def _serve(
        self,
        journal: ThreadedJournal,
        opening: JournalOpening | None,
        records: list[str],
        first: int,
        release: bool,
    ) -> None:
        store, state_id, holder = self._store, journal._state_id, journal._holder
        error: StateError | None = None
        took = 0.0
        held = journal._opened
        try:
            if opening is not None:
                store.open_run(opening, holder)
                held = True
                self._first_lease()
            if records:
                started = time.perf_counter()
                store.commit(state_id, holder, first, records)
                took = time.perf_counter() - started
            if release:
                store.release(state_id, holder)
        except StateError as exc:
            error = exc
        except Exception as exc:  # a bug or a driver error the store did not translate
            error = StateStorageError(
                f"Could not record into the history of state '{state_id}' "
                f"({type(exc).__name__}: {exc}). Everything recorded before is intact; fix "
                "the storage (e.g. free disk space), then resume the run."
            )
            error.__cause__ = exc
        if error is not None and held:
            with contextlib.suppress(Exception):
                store.release(state_id, holder)  # the run stops: let another resume it
        with self.cond:
            woken = journal._done(opening is not None, len(records), release, error, took)
            if error is None and journal._busy() and not journal._closed:
                self._due[journal] = None  # more was queued (or a waiter came) meanwhile
            self.cond.notify_all()  # readers waiting in settle()
        _wake(woken)

    def _leased(self) -> bool:
        return self._store.lease_timeout is not None and any(
            j._opened and not j._closed for j in self._journals
        )

    def _first_lease(self) -> None:
        """Schedule the next heartbeat if no lease was held before this one."""
        timeout = self._store.lease_timeout
        if timeout is not None:
            with self.cond:
                now = time.monotonic()
                if self._next_heartbeat < now:
                    self._next_heartbeat = now + timeout / 3

    def _heartbeat_due(self) -> bool:
        return self._leased() and time.monotonic() >= self._next_heartbeat

    def _heartbeat(self) -> None:
        timeout = self._store.lease_timeout
        if timeout is None:
            return
        with self.cond:
            if not self._heartbeat_due():
                return
            held = [(j._state_id, j._holder) for j in self._journals if j._opened and not j._closed]
            self._next_heartbeat = time.monotonic() + timeout / 3
        try:
            lost = self._store.heartbeat(held)
        except Exception:
            # A failed heartbeat is not fatal: the next commit checks the lease anyway.
            _log.warning("Could not renew the run leases of %s", self, exc_info=True)
            return
        woken: list[tuple[asyncio.Future[None], StateError | None]] = []
        with self.cond:
            for journal in self._journals:
                error = lost.get(journal._state_id)
                if error is not None and journal._opened and not journal._closed:
                    woken += journal._done(False, 0, False, error, 0.0)
        _wake(woken)

    def __repr__(self) -> str:
        return f"<journal writer of {self._name}>"


def _wake(woken: list[tuple[asyncio.Future[None], StateError | None]]) -> None:
    """Resolve futures from the writer thread, one call per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], Any]]] = {}
    for future, error in woken:
        by_loop.setdefault(future.get_loop(), []).append((future, error))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[asyncio.Future[None], StateError | None]]) -> None:
    for future, error in items:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


# When the interpreter exits, queued records (CANCELLED statuses written in the
# background, ...) are committed and the leases released, within a bound.
_live_writers: weakref.WeakSet[Writer] = weakref.WeakSet()
_EXIT_FLUSH_SECONDS = 5.0
_registered = False


def _register_exit_flush() -> None:
    global _registered
    if not _registered:
        _registered = True
        atexit.register(_flush_at_exit)


def _flush_at_exit() -> None:
    deadline = time.monotonic() + _EXIT_FLUSH_SECONDS
    for writer in list(_live_writers):
        writer.close(max(0.0, deadline - time.monotonic()))
