"""Who a lease holder is, and whether it is provably dead: shared by the backends."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rh_agents.core.storage import LeaseHolder, lease_held

__all__ = [
    "HOST",
    "check_takeover",
    "holder_from_row",
    "holder_is_dead",
    "new_holder",
    "process_start",
    "self_start",
    "takeover_rule",
]

_log = logging.getLogger("rh_agents.state_backends")

HOST = socket.gethostname()
"""This host's name, as lease rows record it."""


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot; Linux), or None if unknown.

    Stored with a lease, so a pid reused by a later process is not taken for the holder.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode("ascii") if len(fields) > 19 else None


_SELF_PID = os.getpid()
_SELF_START = process_start(_SELF_PID)


def new_holder() -> LeaseHolder:
    """A holder identity for a journal opened by this process now."""
    return LeaseHolder(host=HOST, pid=os.getpid(), since=datetime.now(UTC), owner=uuid.uuid4().hex)


def self_start() -> str | None:
    """This process's start time (see :func:`process_start`); recomputed after a fork."""
    global _SELF_START, _SELF_PID
    if _SELF_PID != os.getpid():
        _SELF_PID, _SELF_START = os.getpid(), process_start(os.getpid())
    return _SELF_START


def holder_is_dead(host: str, pid: int, started: str | None) -> bool:
    """Whether a holder is provably dead: it ran on this host and its process is gone
    (or the pid now belongs to a process that started at another time)."""
    if host != HOST or pid <= 0:
        return False
    if pid == os.getpid():
        return started is not None and started != self_start()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        pass
    if started is None:
        return False
    now = process_start(pid)
    return now is not None and now != started


def takeover_rule(lease_timeout: float | None) -> str:
    """How a dead holder's lease is taken over (the end of every lease error)."""
    if lease_timeout is None:
        return (
            "The lease is released when its holder process ends, however it ends "
            "(an operating-system lock)."
        )
    return (
        "A holder that died is taken over automatically: at once on the same host, and "
        f"after {lease_timeout:g} s without a heartbeat from another host."
    )


def holder_from_row(row: Sequence[Any]) -> LeaseHolder:
    """The holder of a lease row ``(owner, host, pid, process_start, since, ...)``."""
    try:
        since = datetime.fromisoformat(str(row[4]))
    except ValueError:
        since = datetime.fromtimestamp(0, UTC)
    return LeaseHolder(host=str(row[1]), pid=int(row[2]), since=since, owner=str(row[0]))


def check_takeover(state_id: str, row: Sequence[Any], silent: float, lease_timeout: float) -> None:
    """Refuse to take the lease of row ``(owner, host, pid, process_start, since, ...)``
    from a live holder, heard from ``silent`` seconds ago; log a takeover otherwise.

    Raises:
        StateLockedError: the holder is alive and its heartbeat is recent.
    """
    current = holder_from_row(row)
    dead = holder_is_dead(str(row[1]), int(row[2]), row[3])
    if not dead and silent <= lease_timeout:
        raise lease_held(state_id, current, takeover_rule(lease_timeout))
    _log.warning(
        "Taking over the lease of state %r from %s: %s.",
        state_id,
        current,
        "its process is gone" if dead else f"no heartbeat for {silent:.0f} s",
    )
