"""Files inside a history directory, never through a symbolic link (private).

A :class:`Directory` holds an open descriptor of one directory of a history and does
every file operation relative to it (``openat`` and friends) with ``O_NOFOLLOW``: a
symbolic link planted in the directory, or a subdirectory replaced by a link after it
was opened, is refused (:class:`~rh_agents.core.errors.StateCorruptedError`) instead of
followed to a file elsewhere. Where the platform has no ``dir_fd`` support (Windows),
paths are used and links are checked with ``lstat`` only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from pathlib import Path

from rh_agents.core.errors import StateCorruptedError, StateStorageError

__all__ = ["NOFOLLOW", "Directory", "read_all", "storage_error", "write_all"]

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_AT = os.open in os.supports_dir_fd and os.rename in os.supports_dir_fd


def storage_error(action: str, path: Path | str, exc: OSError) -> StateStorageError:
    return StateStorageError(
        f"Could not {action} at {path} ({exc}). Check that the disk is not full (free disk "
        "space) and that the directory is writable, then resume the run."
    )


def _link_refused(path: Path) -> StateCorruptedError:
    return StateCorruptedError(
        f"{path} is a symbolic link; rh_agents does not follow links inside a history "
        "(one planted there could make it read or overwrite a file elsewhere). Remove the "
        "link, restore the file from a backup, or point rh_agents at another directory."
    )


class Directory:
    """One directory of a history, opened once; its files are reached relative to it."""

    def __init__(self, path: Path, *, create: bool, follow: bool = False) -> None:
        self.path = path
        if create:
            try:
                path.mkdir(parents=follow, exist_ok=True)
            except FileExistsError:
                pass  # a link or a file in the way: reported below
            except OSError as exc:
                raise storage_error("create the history directory", path, exc) from exc
        if not follow and path.is_symlink():
            raise _link_refused(path)
        self.fd: int | None = None
        if _AT:
            try:
                self.fd = os.open(
                    path, os.O_RDONLY | _DIRECTORY | _CLOEXEC | (0 if follow else NOFOLLOW)
                )
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _link_refused(path) from exc
                raise storage_error("open the history directory", path, exc) from exc
        self._identity = self._stat_identity()

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def _stat_identity(self) -> tuple[int, int]:
        st = os.fstat(self.fd) if self.fd is not None else os.stat(self.path)
        return st.st_dev, st.st_ino

    def check_in_place(self, action: str) -> None:
        """Refuse to write when the directory was deleted, moved or replaced."""
        try:
            st = os.lstat(self.path)
            here = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            here = None
        if here != self._identity:
            what = "deleted" if here is None else "moved or replaced"
            raise StateStorageError(
                f"The history directory {self.path} was {what} after it was opened, so this "
                f"process could not {action}: what it wrote since then is lost with it. "
                "Restore it, or start the run again; never delete or replace a history "
                "while a process uses it."
            )

    def open(self, name: str, flags: int, mode: int = 0o644) -> int:
        """``openat`` of ``name`` with ``O_NOFOLLOW``; OSError as it comes, except links."""
        try:
            if self.fd is not None:
                return os.open(name, flags | NOFOLLOW | _CLOEXEC, mode, dir_fd=self.fd)
            full = self.path / name
            if full.is_symlink():
                raise OSError(errno.ELOOP, "symbolic link", str(full))
            return os.open(full, flags | _CLOEXEC, mode)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _link_refused(self.path / name) from exc
            raise

    def read(self, name: str) -> bytes | None:
        """The content of ``name``, or None when it does not exist."""
        try:
            fd = self.open(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return read_all(fd)
        finally:
            os.close(fd)

    def write_atomic(self, name: str, data: bytes, *, durable: bool = True) -> None:
        """Replace ``name`` with ``data`` so a reader sees the old or the new content."""
        temp = f".{name}.{uuid.uuid4().hex[:12]}.tmp"
        fd = self.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            try:
                write_all(fd, data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self.fd is not None:
                os.replace(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            else:
                os.replace(self.path / temp, self.path / name)
        except BaseException:
            with contextlib.suppress(OSError):
                self.unlink(temp)
            raise
        if durable:
            self.sync()

    def sync(self) -> None:
        """Make renames in the directory durable (POSIX; nothing elsewhere)."""
        with contextlib.suppress(OSError):
            if self.fd is not None:
                os.fsync(self.fd)

    def unlink(self, name: str) -> bool:
        try:
            if self.fd is not None:
                os.unlink(name, dir_fd=self.fd)
            else:
                os.unlink(self.path / name)
        except FileNotFoundError:
            return False
        return True

    def is_file(self, name: str) -> bool:
        st = self.lstat(name)
        return st is not None and stat.S_ISREG(st.st_mode)

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            if self.fd is not None:
                return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            return os.lstat(self.path / name)
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        return os.listdir(self.fd if self.fd is not None else self.path)


def read_all(fd: int) -> bytes:
    """Read ``fd`` from its current offset to the end."""
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` (``os.write`` may write fewer)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
