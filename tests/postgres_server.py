"""A private PostgreSQL cluster for the tests: ``initdb`` + ``pg_ctl`` in a temporary folder.

The binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<N>/bin``;
``.ci/run`` installs it). The cluster listens on a free loopback port (and a socket in
its own folder), with ``fsync`` off (the tests kill processes, not the machine; commits stay
synchronous, so a server killed with ``pg_ctl restart -m immediate`` loses none).
PostgreSQL refuses to run as root: as root the cluster is created and started as the
``postgres`` system user. The server is stopped (``pg_ctl stop -m immediate``) and the
folder removed at the end, however the tests end.

``PostgresCluster.restart()`` restarts it (``pg_ctl restart``) on the same port;
``new_database()`` creates an empty database and returns its DSN.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

SUPERUSER = "rh_agents"

BIN_DIR_VARIABLE = "RH_AGENTS_TEST_PG_BIN"
"""Names the folder of ``initdb`` and ``pg_ctl`` instead of the newest Debian one (the
tests of the skip message point it at a folder without them)."""


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<N>/bin`` holding ``initdb``, or None."""
    chosen = os.environ.get(BIN_DIR_VARIABLE)
    if chosen is not None:
        return Path(chosen) if (Path(chosen) / "initdb").exists() else None
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """A running private cluster (see the module docstring)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="rh_agents_pg_"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.sockets.mkdir()
        if self._as:
            pw = pwd.getpwnam("postgres")
            os.chown(self.sockets, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}): {result.stderr}\n{log[-2000:]}"
            )

    def start(self) -> PostgresCluster:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sockets}'\nfsync = off\n"
                "full_page_writes = off\nmax_connections = 200\n"
                "shared_buffers = 32MB\n"
            )
        self._pg_ctl("start")
        return self

    def _pg_ctl(self, command: str) -> None:
        extra = ["-m", "immediate"] if command in ("stop", "restart") else []
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            *extra,
            command,
        )

    def restart(self) -> None:
        """``pg_ctl restart -m immediate``: every connection is cut, the server recovers."""
        self._pg_ctl("restart")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg_ctl("stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> Any:
        """An autocommit psycopg connection to the ``postgres`` database (close it)."""
        import psycopg

        return psycopg.connect(self.dsn(), autocommit=True)

    def new_database(self) -> str:
        """A new empty database; its DSN."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)
