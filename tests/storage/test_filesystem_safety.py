"""The file-system backend follows no symbolic link and notices files changed under a run.

A link planted in ``journals/`` or ``states/`` (or one of those directories replaced by
a link) could make a history write into, or read from, a file elsewhere. Every file is
opened relative to its directory with ``O_NOFOLLOW``: the link is reported as damage and
the file it points to is left untouched.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from rh_agents.core.actors import Tool
from rh_agents.core.errors import StateCorruptedError, StateStorageError
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import ExecutionState
from rh_agents.core.state_recovery import StateSnapshot
from rh_agents.storage import FileSystemStateBackend

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX links and O_NOFOLLOW")

LINK_REFUSED = "is a symbolic link; rh_agents does not follow links inside a history"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def test_a_link_planted_as_a_journal_is_neither_written_nor_read(
    tmp_path: Path, victim: Path
) -> None:
    backend = FileSystemStateBackend(tmp_path / "history")
    os.symlink(victim, tmp_path / "history" / "journals" / "run-1.jsonl")
    with pytest.raises(StateCorruptedError, match=LINK_REFUSED) as info:
        backend.append_event("run-1", {"seq": 1})
    assert "journals/run-1.jsonl" in str(info.value)
    with pytest.raises(StateCorruptedError, match=LINK_REFUSED):
        backend.load_events("run-1")
    assert victim.read_text() == "precious\n"


async def test_a_run_refuses_a_link_planted_as_its_journal(tmp_path: Path, victim: Path) -> None:
    backend = FileSystemStateBackend(tmp_path / "history")
    state = ExecutionState(state_id="run-1", state_backend=backend)
    os.symlink(victim, tmp_path / "history" / "journals" / "run-1.jsonl")

    async def handler(data: Any, extra: Any, state: ExecutionState) -> int:
        return 1

    with pytest.raises(StateCorruptedError, match=LINK_REFUSED):
        await ExecutionEvent(actor=Tool(name="t", handler=handler))(None, {}, state)
    with pytest.raises(StateCorruptedError, match=LINK_REFUSED):  # and a new state of it
        ExecutionState(state_id="run-1", state_backend=backend)
    backend.close()
    assert await asyncio.to_thread(victim.read_text) == "precious\n"


def test_a_link_planted_as_a_snapshot_is_neither_written_nor_read(
    tmp_path: Path, victim: Path
) -> None:
    backend = FileSystemStateBackend(tmp_path / "history")
    os.symlink(victim, tmp_path / "history" / "states" / "run-1.json")
    with pytest.raises(StateCorruptedError, match=LINK_REFUSED):
        backend.load_state("run-1")
    assert not backend.exists("run-1")
    backend.save_state(StateSnapshot(state_id="run-1"))  # replaces the link, not its target
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "history" / "states" / "run-1.json").is_symlink()


@pytest.mark.parametrize("directory", ["states", "journals"])
def test_a_history_whose_directory_is_a_link_is_refused(tmp_path: Path, directory: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = tmp_path / "history"
    FileSystemStateBackend(base).close()
    shutil.rmtree(base / directory)
    os.symlink(elsewhere, base / directory)
    with pytest.raises(StateCorruptedError, match=LINK_REFUSED):
        FileSystemStateBackend(base)
    assert list(elsewhere.iterdir()) == []


async def test_a_journal_deleted_under_a_running_state_is_reported(tmp_path: Path) -> None:
    backend = FileSystemStateBackend(tmp_path / "history")
    journal = tmp_path / "history" / "journals" / "run-1.jsonl"

    async def handler(data: int, extra: Any, state: ExecutionState) -> int:
        journal.unlink()
        return data

    state = ExecutionState(state_id="run-1", state_backend=backend)
    with pytest.raises(StateStorageError) as info:
        await ExecutionEvent(actor=Tool(name="t", handler=handler))(1, {}, state)
    assert f"The journal {journal} was deleted while a run recorded into it" in str(info.value)
    backend.close()


def test_the_lease_names_its_holder_and_ends_with_its_process(tmp_path: Path) -> None:
    """The lease is an operating-system lock: a second writer is refused while the
    first holds it, and takes it as soon as the first releases it."""
    from rh_agents.core.errors import StateLockedError
    from rh_agents.core.storage import JournalOpening

    backend = FileSystemStateBackend(tmp_path / "history")
    other = FileSystemStateBackend(tmp_path / "history")  # another handle on the files

    async def scenario() -> None:
        first = backend.open_run(JournalOpening("run-1"))
        first.append({"seq": 1})
        await first.flush()
        second = other.open_run(JournalOpening("run-1", position=1))
        second.append({"seq": 2})
        with pytest.raises(StateLockedError, match=rf"pid {os.getpid()}, since "):
            await second.flush()
        first.close()
        await first.wait_closed()
        third = other.open_run(JournalOpening("run-1", position=1))
        third.append({"seq": 2})
        await third.flush()
        third.close()
        await third.wait_closed()

    asyncio.run(scenario())
    assert [r["seq"] for r in backend.load_events("run-1")] == [1, 2]
    backend.close()
    other.close()
