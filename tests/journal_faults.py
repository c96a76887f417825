"""Wrappers around backends for tests.

``FullDisk(backend, room)`` behaves like ``backend`` (it delegates everything), except
that the journals its runs record into accept ``room`` more records in total and then
fail every append like a full disk (``OSError`` 28), as a driver error reaches the core.
``Forwarding(backend)`` only delegates, through ``__getattr__``, as a user's logging
wrapper would. ``FailingCommit(backend)`` accepts every record but fails every commit
that a caller waits for (``flush``), as a disk error at commit time reaches the core.
"""

from __future__ import annotations

from typing import Any

from rh_agents.core.storage import JournalOpening, JournalStatistics, LeaseHolder, RunJournal

__all__ = ["FailingCommit", "Forwarding", "FullDisk"]


class Forwarding:
    """A wrapper that forwards everything to ``inner`` through ``__getattr__`` (what a
    user writes to add logging or faults around a backend)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class FullDisk:
    """``backend`` with room for ``room`` more run records."""

    def __init__(self, backend: Any, room: int) -> None:
        self.backend = backend
        self.room = room

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def open_run(self, opening: JournalOpening) -> RunJournal:
        return _FullRun(self, self.backend.open_run(opening))


class _FullRun:
    def __init__(self, disk: FullDisk, inner: RunJournal) -> None:
        self._disk = disk
        self._inner = inner

    @property
    def holder(self) -> LeaseHolder:
        return self._inner.holder

    def append(self, record: dict[str, Any]) -> None:
        if self._disk.room <= 0:
            raise OSError(28, "No space left on device")
        self._disk.room -= 1
        self._inner.append(record)

    async def flush(self) -> None:
        await self._inner.flush()

    def close(self) -> None:
        self._inner.close()

    async def wait_closed(self) -> None:
        await self._inner.wait_closed()

    def statistics(self) -> JournalStatistics:
        return self._inner.statistics()


class FailingCommit(Forwarding):
    """``inner`` whose runs fail every awaited commit with ``OSError`` 5."""

    def open_run(self, opening: JournalOpening) -> RunJournal:
        return _FailingRun(self.inner.open_run(opening))


class _FailingRun(Forwarding):
    async def flush(self) -> None:
        raise OSError(5, "Input/output error")
