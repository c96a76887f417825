"""The file system backends: JSON snapshot files, JSON-lines journals, artifact files."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

from rh_agents.core.errors import (
    ArtifactNotFoundError,
    InvalidArgumentError,
    SchemaVersionError,
    StateCorruptedError,
    StateStorageError,
)
from rh_agents.core.state_recovery import StateSnapshot, StateStatus
from rh_agents.storage._codec import (
    check_id,
    check_snapshot,
    dump_record,
    dump_snapshot,
    parse_record,
    parse_snapshot,
    status_filter,
)

__all__ = ["FileSystemArtifactBackend", "FileSystemStateBackend"]

# The logger keeps the name of the module the backends came from (users configure it).
_log = logging.getLogger("rh_agents.state_backends")

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def _safe_file_id(value: object, what: str) -> str:
    value = check_id(value, what)
    if not _SAFE_ID.fullmatch(value):
        raise InvalidArgumentError(
            f"The {what} {value!r} cannot be used as a file name. Use 1 to 200 characters "
            "from A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit "
            "(no path separators, no leading dot)."
        )
    return value


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new content, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _storage_error(action: str, path: Path | str, exc: OSError) -> StateStorageError:
    return StateStorageError(
        f"Could not {action} at {path} ({exc}). Check that the disk is not full and that "
        "the directory is writable, then retry."
    )


_FS_MARKER = "rh_agents_history.json"
_FS_APP = "rh_agents.history"
_FS_SCHEMA_VERSION = 1


class FileSystemStateBackend:
    """A :class:`StateBackend` and :class:`EventJournal` made of plain files.

    Layout under ``base_path``::

        rh_agents_history.json     marker: application and storage schema version
        states/<state_id>.json     one snapshot per run, replaced atomically
        journals/<state_id>.jsonl  one JSON record per line, appended

    Snapshots are written to a temporary file in the same directory, flushed, fsynced
    and renamed over the old file, so a crash leaves the old or the new snapshot. Each
    journal record is written with a single ``write`` on a file opened in append mode:
    once :meth:`append_event` returns, the record survives a crash of the process (not
    necessarily a power loss, like :class:`SQLiteStateBackend`). A record cut short by a
    crash (the unterminated last line) was never acknowledged: it is ignored with a
    logged warning when loading and removed before the next append. Any other damage
    raises :class:`~rh_agents.core.errors.StateCorruptedError`.

    State ids are file names: 1 to 200 characters from ``A-Z a-z 0-9 . _ -``, starting
    with a letter or digit. Other ids raise
    :class:`~rh_agents.core.errors.InvalidArgumentError`. One process at a time should
    append to a given run's journal.

    Example:
        >>> import tempfile
        >>> backend = FileSystemStateBackend(tempfile.mkdtemp())
        >>> backend.append_event("run-1", {"seq": 1})
        >>> backend.load_events("run-1")
        [{'seq': 1}]
    """

    def __init__(self, base_path: str | os.PathLike[str]) -> None:
        self._base = Path(base_path)
        self._states_dir = self._base / "states"
        self._journals_dir = self._base / "journals"
        self._lock = threading.Lock()
        try:
            self._states_dir.mkdir(parents=True, exist_ok=True)
            self._journals_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error("create the history directories", self._base, exc) from exc
        self._check_marker()

    @property
    def base_path(self) -> Path:
        """The directory this backend stores into."""
        return self._base

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._base)!r})"

    def _check_marker(self) -> None:
        marker = self._base / _FS_MARKER
        try:
            raw = marker.read_bytes()
        except FileNotFoundError:
            content = {"app": _FS_APP, "schema_version": _FS_SCHEMA_VERSION}
            try:
                _atomic_write(marker, json.dumps(content).encode())
            except OSError as exc:
                raise _storage_error("write the history marker", marker, exc) from exc
            return
        except OSError as exc:
            raise _storage_error("read the history marker", marker, exc) from exc
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or meta.get("app") != _FS_APP:
            raise StateCorruptedError(
                f"The marker file {marker} is damaged or does not belong to rh_agents, so "
                f"{self._base} is not a usable rh_agents history. Restore the marker from a "
                "backup, or point rh_agents at another directory."
            )
        version = meta.get("schema_version")
        if version != _FS_SCHEMA_VERSION:
            raise SchemaVersionError(
                f"The rh_agents history in {self._base} uses storage schema version "
                f"{version!r}, but this release reads only version {_FS_SCHEMA_VERSION}. "
                "Use the rh_agents release that wrote it, or another directory."
            )

    def _state_file(self, state_id: str) -> Path:
        return self._states_dir / f"{_safe_file_id(state_id, 'state_id')}.json"

    def _journal_file(self, state_id: str) -> Path:
        return self._journals_dir / f"{_safe_file_id(state_id, 'state_id')}.jsonl"

    # -- StateBackend

    def save_state(self, snapshot: StateSnapshot) -> bool:
        snapshot = check_snapshot(snapshot)
        path = self._state_file(snapshot.state_id)
        data = dump_snapshot(snapshot).encode("utf-8")
        try:
            _atomic_write(path, data)
        except OSError as exc:
            raise _storage_error("save the snapshot", path, exc) from exc
        return True

    def update_state(self, snapshot: StateSnapshot) -> bool:
        snapshot = check_snapshot(snapshot)
        if not self._state_file(snapshot.state_id).exists():
            return False
        return self.save_state(snapshot)

    def load_state(self, state_id: str) -> StateSnapshot | None:
        path = self._state_file(state_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _storage_error("read the snapshot", path, exc) from exc
        return parse_snapshot(state_id, data, str(path))

    def list_states(
        self, *, status: StateStatus | str | None = None, pipeline_name: str | None = None
    ) -> list[str]:
        wanted = status_filter(status)
        ids = self._ids_in(self._states_dir, ".json")
        if wanted is None and pipeline_name is None:
            return ids
        selected = []
        for state_id in ids:
            snapshot = self.load_state(state_id)
            if snapshot is None:  # deleted meanwhile
                continue
            if wanted is not None and snapshot.status != wanted:
                continue
            if pipeline_name is not None and snapshot.metadata.pipeline_name != pipeline_name:
                continue
            selected.append(state_id)
        return selected

    @staticmethod
    def _ids_in(directory: Path, suffix: str) -> list[str]:
        try:
            names = os.listdir(directory)
        except OSError as exc:
            raise _storage_error("list the directory", directory, exc) from exc
        return sorted(
            name[: -len(suffix)]
            for name in names
            if name.endswith(suffix) and _SAFE_ID.fullmatch(name[: -len(suffix)])
        )

    def delete_state(self, state_id: str) -> bool:
        deleted = False
        for path in (self._state_file(state_id), self._journal_file(state_id)):
            try:
                path.unlink()
                deleted = True
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _storage_error("delete", path, exc) from exc
        return deleted

    def exists(self, state_id: str) -> bool:
        return self._state_file(state_id).is_file()

    # -- EventJournal

    def append_event(self, state_id: str, record: dict[str, Any]) -> None:
        """Append one record as one line, written before this returns.

        Raises:
            StateStorageError: the write failed (disk full, I/O error); the record is
                not acknowledged.
            ResultSerializationError: the record is not JSON-serializable.
        """
        path = self._journal_file(state_id)
        line = (dump_record(state_id, record) + "\n").encode("ascii")
        with self._lock:
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    self._drop_torn_tail(fd, path)
                    view = memoryview(line)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                finally:
                    os.close(fd)
            except OSError as exc:
                raise _storage_error("append an event", path, exc) from exc

    @staticmethod
    def _drop_torn_tail(fd: int, path: Path) -> None:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        data = os.pread(fd, size, 0)
        keep = data.rfind(b"\n") + 1
        _log.warning(
            "Removing an unterminated last line (%d bytes) from the journal %s: a crash "
            "cut it short before it was acknowledged.",
            size - keep,
            path,
        )
        os.ftruncate(fd, keep)

    def load_events(self, state_id: str) -> list[dict[str, Any]]:
        """All records of ``state_id`` in append order.

        Raises:
            StateCorruptedError: a complete line is not a JSON object; the message names
                the state, the file and the line number.
        """
        path = self._journal_file(state_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _storage_error("read the journal", path, exc) from exc
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        if tail:
            _log.warning(
                "Ignoring an unterminated last line (%d bytes) in the journal %s: a crash cut "
                "it short before it was acknowledged.",
                len(tail),
                path,
            )
        return [
            parse_record(state_id, line, f"on line {number}", str(path))
            for number, line in enumerate(lines, start=1)
        ]

    def list_journals(self) -> list[str]:
        return self._ids_in(self._journals_dir, ".jsonl")

    def close(self) -> None:
        """Do nothing: no file stays open between calls."""


# --------------------------------------------------------------------------- artifacts

_ARTIFACT_REF_PREFIX = "artifact:"
_ARTIFACT_SUFFIXES = (".bin", ".txt", ".json")


class FileSystemArtifactBackend:
    """An :class:`ArtifactBackend` storing one file per artifact.

    ``bytes`` (and ``bytearray``/``memoryview``) are stored as they are in
    ``<id>.bin``, ``str`` as UTF-8 in ``<id>.txt``, and any other JSON-serializable value
    as JSON in ``<id>.json``; the suffix records the kind, so :meth:`load_artifact`
    returns ``bytes``, ``str`` or the JSON value. Writes are atomic. The returned
    reference is ``"artifact:<id>"``; every method accepts the reference or the bare id.

    Artifact ids are file names: 1 to 200 characters from ``A-Z a-z 0-9 . _ -``,
    starting with a letter or digit, so a path such as ``"../x"`` raises
    :class:`~rh_agents.core.errors.InvalidArgumentError`.

    Example:
        >>> import tempfile
        >>> artifacts = FileSystemArtifactBackend(tempfile.mkdtemp())
        >>> ref = artifacts.save_artifact("report", "hello")
        >>> ref, artifacts.load_artifact(ref)
        ('artifact:report', 'hello')
    """

    def __init__(self, base_path: str | os.PathLike[str]) -> None:
        self._base = Path(base_path)
        try:
            self._base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error("create the artifact directory", self._base, exc) from exc

    @property
    def base_path(self) -> Path:
        """The directory this backend stores into."""
        return self._base

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._base)!r})"

    @staticmethod
    def _artifact_id(ref_or_id: str) -> str:
        value = ref_or_id
        if isinstance(value, str) and value.startswith(_ARTIFACT_REF_PREFIX):
            value = value[len(_ARTIFACT_REF_PREFIX) :]
        return _safe_file_id(value, "artifact id")

    def _files(self, artifact_id: str) -> list[Path]:
        """The stored files of an artifact, newest first (normally zero or one)."""
        found: list[tuple[int, Path]] = []
        for suffix in _ARTIFACT_SUFFIXES:
            path = self._base / f"{artifact_id}{suffix}"
            try:
                found.append((path.stat().st_mtime_ns, path))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _storage_error("look up the artifact", path, exc) from exc
        return [path for _, path in sorted(found, key=lambda item: item[0], reverse=True)]

    def save_artifact(self, artifact_id: str, data: Any) -> str:
        """Store ``data`` and return its reference ``"artifact:<id>"``.

        Raises:
            InvalidArgumentError: the id is not a safe file name, or ``data`` is neither
                bytes, str nor JSON-serializable.
            StateStorageError: the write failed.
        """
        artifact_id = self._artifact_id(artifact_id)
        suffix, payload = self._encode(artifact_id, data)
        path = self._base / f"{artifact_id}{suffix}"
        try:
            _atomic_write(path, payload)
            # A save with another kind replaces the old file; if a crash leaves both,
            # load_artifact picks the newest.
            for other in _ARTIFACT_SUFFIXES:
                if other != suffix:
                    with contextlib.suppress(FileNotFoundError):
                        (self._base / f"{artifact_id}{other}").unlink()
        except OSError as exc:
            raise _storage_error("save the artifact", path, exc) from exc
        return _ARTIFACT_REF_PREFIX + artifact_id

    @staticmethod
    def _encode(artifact_id: str, data: Any) -> tuple[str, bytes]:
        if isinstance(data, bytes | bytearray | memoryview):
            return ".bin", bytes(data)
        if isinstance(data, str):
            try:
                return ".txt", data.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidArgumentError(
                    f"Artifact {artifact_id!r} is a string that cannot be encoded as UTF-8 "
                    f"({exc}). Store it as bytes instead."
                ) from exc
        try:
            return ".json", json.dumps(data).encode("ascii")
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(
                f"Artifact {artifact_id!r} of type {type(data).__name__} cannot be stored: it "
                f"is neither bytes, str nor JSON-serializable ({exc}). Convert it first, "
                "for example with model_dump(mode='json') for a pydantic model."
            ) from exc

    def load_artifact(self, ref_or_id: str) -> Any:
        """Return the stored value as ``bytes``, ``str`` or a JSON value.

        Raises:
            ArtifactNotFoundError: no such artifact (a ``KeyError``).
            StateCorruptedError: the stored text or JSON cannot be decoded.
        """
        artifact_id = self._artifact_id(ref_or_id)
        files = self._files(artifact_id)
        if not files:
            raise ArtifactNotFoundError(
                f"No artifact with id {artifact_id!r} exists in {self._base}. Check the "
                "reference, or save the artifact first."
            )
        path = files[0]
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            return self.load_artifact(artifact_id)  # replaced meanwhile
        except OSError as exc:
            raise _storage_error("read the artifact", path, exc) from exc
        try:
            if path.suffix == ".bin":
                return payload
            if path.suffix == ".txt":
                return payload.decode("utf-8")
            return json.loads(payload)
        except ValueError as exc:
            raise StateCorruptedError(
                f"The artifact file {path} is damaged and cannot be decoded ({exc}). "
                "Restore it from a backup, or save the artifact again."
            ) from exc

    def delete_artifact(self, ref_or_id: str) -> bool:
        artifact_id = self._artifact_id(ref_or_id)
        deleted = False
        for path in self._files(artifact_id):
            try:
                path.unlink()
                deleted = True
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _storage_error("delete the artifact", path, exc) from exc
        return deleted

    def exists(self, ref_or_id: str) -> bool:
        return bool(self._files(self._artifact_id(ref_or_id)))

    def list_artifacts(self) -> list[str]:
        try:
            names = os.listdir(self._base)
        except OSError as exc:
            raise _storage_error("list artifacts", self._base, exc) from exc
        ids = set()
        for name in names:
            stem, dot, suffix = name.rpartition(".")
            if dot and f".{suffix}" in _ARTIFACT_SUFFIXES and _SAFE_ID.fullmatch(stem):
                ids.add(stem)
        return sorted(ids)
