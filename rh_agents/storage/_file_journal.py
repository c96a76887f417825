"""The journals of a file-system history: lines, marks, leases (private).

:class:`FileJournals` writes and reads the ``journals/`` directory of a
:class:`~rh_agents.storage.filesystem.FileSystemStateBackend`, and is the
:class:`~rh_agents.storage._writer.JournalStore` its writer thread uses. A run's journal
is ``<id>.jsonl`` (line *n* is the record at position *n*, its checksum covering *n*),
``<id>.hwm`` holds the last line a commit wrote (written after the lines, so a crash
between the two leaves more lines than the mark, never fewer), and ``<id>.lock`` is the
lease: an advisory ``flock`` held while the run records, with the holder's identity.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rh_agents.core.errors import InvalidArgumentError, StateError, StateStorageError
from rh_agents.core.storage import (
    JournalOpening,
    LeaseHolder,
    history_exists,
    journal_conflict,
    lease_held,
    lease_lost,
)
from rh_agents.storage._codec import check_id, dump_record, journal_damage, parse_record
from rh_agents.storage._files import Directory, storage_error, write_all
from rh_agents.storage._lease import takeover_rule

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no operating-system lease
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from rh_agents.storage.filesystem import FileSystemStateBackend

__all__ = ["SAFE_ID", "FileJournals", "journal_name", "safe_file_id"]

_log = logging.getLogger("rh_agents.state_backends")

SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def safe_file_id(value: object, what: str) -> str:
    value = check_id(value, what)
    if not SAFE_ID.fullmatch(value):
        raise InvalidArgumentError(
            f"The {what} {value!r} cannot be used as a file name. Use 1 to 200 characters "
            "from A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit "
            "(no path separators, no leading dot)."
        )
    return value


def journal_name(state_id: str, suffix: str = ".jsonl") -> str:
    """The file name of a run's journal (or of its ``.hwm`` / ``.lock`` companion)."""
    return f"{safe_file_id(state_id, 'state_id')}{suffix}"


@dataclass
class _Run:
    """A run open for recording: its journal and its lease, held open."""

    owner: str
    fd: int
    lock_fd: int | None


class FileJournals:
    """Reads and writes the journals of one file-system history (see the module doc)."""

    lease_timeout: float | None = None  # the lease is an operating-system lock

    def __init__(self, backend: FileSystemStateBackend, journals: Directory) -> None:
        self._backend = backend
        self._dir = journals
        self._lock = threading.Lock()
        # (size, lines) of each journal as last seen, to number appended lines
        self._lengths: dict[str, tuple[int, int]] = {}
        self._open: dict[str, _Run] = {}

    def _where(self, name: str) -> str:
        return str(self._dir.path / name)

    # -- lines and marks (the caller holds the lock)

    def _measure(self, state_id: str, fd: int) -> tuple[int, int]:
        """(size, complete lines) of the open journal ``fd``, its torn tail removed; lines
        are counted again only when the size differs from the last one seen."""
        size = os.fstat(fd).st_size
        known = self._lengths.get(state_id)
        if known is not None and known[0] == size:
            return known
        data = os.pread(fd, size, 0) if size else b""
        keep = data.rfind(b"\n") + 1
        if keep != size:
            _log.warning(
                "Removing an unterminated last line (%d bytes) from the journal %s: a crash "
                "cut it short before it was acknowledged.",
                size - keep,
                self._where(journal_name(state_id)),
            )
            os.ftruncate(fd, keep)
        measured = (keep, data.count(b"\n", 0, keep))
        self._lengths[state_id] = measured
        return measured

    def _write(self, state_id: str, fd: int, first: int, texts: list[str]) -> int:
        """Write records (encoded for their lines) at lines ``first``... of the open
        journal, then the mark."""
        data = "".join(text + "\n" for text in texts).encode("utf-8", "surrogatepass")
        size, lines = self._measure(state_id, fd)
        if lines != first - 1:
            raise journal_conflict(state_id, lines, first - 1)
        try:
            write_all(fd, data)
        finally:
            self._lengths.pop(state_id, None)
        last = first + len(texts) - 1
        self._lengths[state_id] = (size + len(data), last)
        self._dir.write_atomic(journal_name(state_id, ".hwm"), str(last).encode(), durable=False)
        return last

    def read_mark(self, state_id: str) -> int:
        name = journal_name(state_id, ".hwm")
        raw = self._dir.read(name)
        if raw is None:
            return 0
        try:
            return int(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise journal_damage(
                state_id, self._where(name), f"its high-water mark is unreadable ({raw[:20]!r})"
            ) from None

    def append(self, state_id: str, record: dict[str, Any]) -> None:
        """Append one record at the next line (the backend's ``append_event``)."""
        name = journal_name(state_id)
        dump_record(state_id, 1, record)  # refuse what cannot be stored before writing
        with self._lock:
            try:
                self._dir.check_in_place("append an event")
                fd = self._dir.open(name, os.O_RDWR | os.O_APPEND | os.O_CREAT)
                try:
                    _, lines = self._measure(state_id, fd)
                    self._write(state_id, fd, lines + 1, [dump_record(state_id, lines + 1, record)])
                finally:
                    os.close(fd)
            except OSError as exc:
                raise storage_error("append an event", self._where(name), exc) from exc

    def forget(self, state_id: str) -> None:
        with self._lock:
            self._lengths.pop(state_id, None)

    # -- reading

    def iter_events(self, state_id: str) -> Iterator[dict[str, Any]]:
        name = journal_name(state_id)
        where = self._where(name)
        try:
            # The mark first: a commit writes its lines before the mark, so the lines
            # read after it are at least as many, even while a writer commits.
            mark = self.read_mark(state_id)
            data = self._dir.read(name)
        except OSError as exc:
            raise storage_error("read the journal", where, exc) from exc
        return _lines(state_id, data or b"", mark, where)

    def length(self, state_id: str) -> int:
        name = journal_name(state_id)
        try:
            data = self._dir.read(name)
        except OSError as exc:
            raise storage_error("read the journal", self._where(name), exc) from exc
        return 0 if not data else data.count(b"\n")

    # -- JournalStore (on the writer thread)

    def open_run(self, opening: JournalOpening, holder: LeaseHolder) -> None:
        state_id = opening.state_id
        name = journal_name(state_id)
        with self._lock:
            try:
                self._dir.check_in_place("open the run for recording")
                lock_fd = self._lease(state_id, holder)
                fd = -1
                try:
                    fd = self._dir.open(name, os.O_RDWR | os.O_APPEND | os.O_CREAT)
                    self._check_position(opening, fd)
                    self._open[state_id] = _Run(holder.owner, fd, lock_fd)
                except BaseException:
                    _close(fd, lock_fd)
                    raise
            except OSError as exc:
                raise storage_error("open the run for recording", self._where(name), exc) from exc
        if opening.snapshot is not None and not self._backend.exists(state_id):
            self._backend.save_state(opening.snapshot)

    def _check_position(self, opening: JournalOpening, fd: int) -> None:
        state_id = opening.state_id
        _, stored = self._measure(state_id, fd)
        if opening.position == 0 and stored:
            raise history_exists(self._backend, state_id)
        if stored != opening.position:
            raise journal_conflict(state_id, stored, opening.position)

    def _lease(self, state_id: str, holder: LeaseHolder) -> int | None:
        if fcntl is None:  # pragma: no cover - Windows
            return None
        fd = self._dir.open(journal_name(state_id, ".lock"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            current = _read_holder(fd)
            os.close(fd)
            raise lease_held(state_id, current, takeover_rule(None)) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        info = {"host": holder.host, "pid": holder.pid, "since": holder.since.isoformat()}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return fd

    def commit(self, state_id: str, holder: LeaseHolder, first: int, texts: list[str]) -> None:
        name = journal_name(state_id)
        with self._lock:
            run = self._open.get(state_id)
            if run is None or run.owner != holder.owner:
                raise lease_lost(state_id, holder)
            try:
                self._dir.check_in_place("append events")
                self._check_file(name, run.fd)
                self._write(state_id, run.fd, first, texts)
            except OSError as exc:
                raise storage_error("append events", self._where(name), exc) from exc

    def _check_file(self, name: str, fd: int) -> None:
        """Refuse to append to a journal that was deleted or replaced under the run."""
        here = self._dir.lstat(name)
        mine = os.fstat(fd)
        if here is None or (here.st_dev, here.st_ino) != (mine.st_dev, mine.st_ino):
            what = "deleted" if here is None else "replaced by another file"
            raise StateStorageError(
                f"The journal {self._where(name)} was {what} while a run recorded into it, "
                "so its next records could not be written: what it wrote since then is "
                "lost with the old file. Restore it, or start the run again; never delete "
                "or replace a history while a process uses it."
            )

    def heartbeat(self, held: list[tuple[str, LeaseHolder]]) -> dict[str, StateError]:
        return {}

    def release(self, state_id: str, holder: LeaseHolder) -> None:
        with self._lock:
            run = self._open.get(state_id)
            if run is None or run.owner != holder.owner:
                return
            del self._open[state_id]
        _close(run.fd, run.lock_fd)

    def writer_stopped(self) -> None:
        """Nothing: runs keep their files until released."""


def _close(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None and fd >= 0:
            os.close(fd)


def _read_holder(fd: int) -> LeaseHolder:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return LeaseHolder(
            host=str(info["host"]),
            pid=int(info["pid"]),
            since=datetime.fromisoformat(str(info["since"])),
            owner="",
        )
    except (ValueError, KeyError, TypeError):
        return LeaseHolder(host="unknown", pid=0, since=datetime.fromtimestamp(0, UTC), owner="")


def _lines(state_id: str, data: bytes, mark: int, where: str) -> Iterator[dict[str, Any]]:
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    if tail:
        _log.warning(
            "Ignoring an unterminated last line (%d bytes) in the journal %s: a crash cut "
            "it short before it was acknowledged.",
            len(tail),
            where,
        )
    if len(lines) < mark:
        raise journal_damage(
            state_id,
            where,
            f"it ends after line {len(lines)}, but {mark} were committed (a missing tail)",
        )
    for number, line in enumerate(lines, start=1):
        yield parse_record(state_id, number, line, f"{where} (line {number})")
