"""A DevServer's own PostgreSQL cluster, in its state directory, on a unix socket.

:class:`PostgresCluster` owns ``STATE/postgres/`` (the cluster's data under
``data/``, and its socket) and the one ``postgres`` child serving it; the log
is ``STATE/postgres.log``. It uses the installed server binaries (Debian's
``postgresql`` package: ``/usr/lib/postgresql/N/bin``), never a system service.

Invariants:

- Run by root, every PostgreSQL binary runs as the ``postgres`` user (initdb
  and the server refuse root): the state directory is opened to that user's
  group for traversal only, and ``STATE/postgres/`` belongs to it.
- No TCP: ``listen_addresses=''``; the socket is in ``STATE/postgres/``.
- The cluster is made once (``initdb``, trust authentication: only the socket,
  in a directory no one else may enter, reaches it) and kept across runs; the
  ``synapse`` database is created when missing, with the encoding and collation
  Synapse insists on (UTF8, C, from template0).
- The server is our child like Synapse (own session, death signal); stopping is
  a fast shutdown (SIGINT), then SIGKILL of its process group after a grace period.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

import anyio

from ..errors import DevServerError
from .process import (
    LIVE_CHILDREN,
    STOP_GRACE_SECONDS,
    pid_alive,
    run_to_end,
    signal_group,
    spawn,
    wait_until,
)

__all__ = ["DB_NAME", "PG_DIR", "PG_LOG", "PostgresCluster", "find_bin_dir"]

log = logging.getLogger("mxsync.devserver")

PG_DIR = "postgres"
PG_LOG = "postgres.log"
DB_NAME = "synapse"
SUPERUSER = "postgres"
_SERVER_USER = "postgres"
_SOCKET_MAX = 100  # sun_path holds 108 bytes; ".s.PGSQL.5432" goes after the dir
_COMMAND_SECONDS = 60.0
_CREATE_DB = (
    f"SELECT 'CREATE DATABASE {DB_NAME} ENCODING ''UTF8'' LC_COLLATE=''C'' "
    f"LC_CTYPE=''C'' TEMPLATE template0' "
    f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DB_NAME}')\\gexec\n"
)


def find_bin_dir() -> Path:
    """The directory of ``initdb`` and ``postgres``: on PATH, else Debian's newest."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not versions:
        raise DevServerError(
            "PostgreSQL is not installed (no initdb): run scripts/ensure-system-packages "
            "or install Debian's postgresql package"
        )
    return versions[-1].parent


def _server_user() -> str | None:
    """Who runs the cluster: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_SERVER_USER)
    except KeyError:
        raise DevServerError(
            f"running as root, PostgreSQL needs the {_SERVER_USER!r} user "
            "(Debian's postgresql package creates it)"
        ) from None
    return _SERVER_USER


def _open_path_to(user: str, state_dir: Path) -> None:
    """Let ``user`` reach ``state_dir``: its group may traverse it, and every parent."""
    entry = pwd.getpwnam(user)
    st = state_dir.stat()
    if st.st_gid != entry.pw_gid:
        os.chown(state_dir, -1, entry.pw_gid)
    os.chmod(state_dir, stat.S_IMODE(st.st_mode) | stat.S_IXGRP)
    for parent in state_dir.parents:
        pst = parent.stat()
        ok = pst.st_mode & stat.S_IXOTH or (
            pst.st_mode & stat.S_IXGRP and pst.st_gid == entry.pw_gid
        ) or pst.st_uid == entry.pw_uid
        if not ok:
            raise DevServerError(
                f"user {user} cannot reach {state_dir}: {parent} is mode "
                f"{stat.filemode(pst.st_mode)}; use a state dir under a path others may "
                "traverse (or chmod o+x it)"
            )


class PostgresCluster:
    """The cluster in ``state_dir/postgres``; :meth:`start`, then :meth:`stop`."""

    def __init__(self, state_dir: Path, *, startup_timeout: float = 60.0) -> None:
        self.state_dir = state_dir
        self.dir = state_dir / PG_DIR
        self.data_dir = self.dir / "data"
        self.log_path = state_dir / PG_LOG
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._user: str | None = None
        self._bin: Path | None = None

    @property
    def socket_dir(self) -> Path:
        return self.dir

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def synapse_database(self) -> dict[str, Any]:
        """Synapse's ``database`` section for this cluster."""
        return {
            "name": "psycopg2",
            "args": {"user": SUPERUSER, "database": DB_NAME, "host": str(self.socket_dir),
                     "cp_min": 1, "cp_max": 5},
        }

    def psql_argv(self, *args: str) -> list[str]:
        """A ``psql`` command line on this cluster's socket, as its superuser."""
        assert self._bin is not None
        return [str(self._bin / "psql"), "-X", "-q", "-h", str(self.socket_dir),
                "-U", SUPERUSER, "-d", DB_NAME, *args]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("PostgresCluster already started")
        self._bin = find_bin_dir()
        self._user = _server_user()
        if len(str(self.socket_dir)) > _SOCKET_MAX:
            raise DevServerError(f"state dir path too long for a unix socket: {self.dir}")
        self._prepare_dir()
        await self._wait_for_orphan()
        with self.log_path.open("ab") as out:
            if not (self.data_dir / "PG_VERSION").exists():
                await self._run(out, "initdb", "-D", str(self.data_dir), "-A", "trust",
                                "-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync")
            self._proc = spawn(self._server_argv(), out, cwd=self.dir, user=self._user)
        LIVE_CHILDREN.add(self._proc)
        try:
            await self._wait_ready()
            script = self.dir / "create-database.sql"
            script.write_text(_CREATE_DB)
            with self.log_path.open("ab") as out:
                await self._run(out, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h",
                                str(self.socket_dir), "-U", SUPERUSER, "-d", "postgres",
                                "-f", str(script))
        except BaseException:
            await self.stop()
            raise
        log.info("postgres pid %s ready on %s", self.pid, self.socket_dir)

    def _prepare_dir(self) -> None:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        if self._user is not None:
            _open_path_to(self._user, self.state_dir)
            entry = pwd.getpwnam(self._user)
            for path in (self.dir, *self.dir.rglob("*")):
                if path.lstat().st_uid != entry.pw_uid:
                    os.lchown(path, entry.pw_uid, entry.pw_gid)

    def _server_argv(self) -> list[str]:
        assert self._bin is not None
        return [
            str(self._bin / "postgres"), "-D", str(self.data_dir),
            "-k", str(self.socket_dir), "-c", "listen_addresses=",
            # A dev server: losing the last commits to an OS crash is fine, waiting on
            # every one of them on a shared disk is not (no corruption either way).
            "-c", "synchronous_commit=off",
        ]

    async def _run(self, out: Any, name: str, *args: str) -> None:
        assert self._bin is not None
        argv = [str(self._bin / name), *args]
        try:
            code = await run_to_end(argv, out, _COMMAND_SECONDS, cwd=self.dir,
                                    user=self._user if name != "psql" else None)
        except TimeoutError as exc:
            raise DevServerError(f"{name}: {exc}; see {self.log_path}") from None
        if code != 0:
            raise DevServerError(f"{name} exited with code {code}; see {self.log_path}")

    def _postmaster_pid(self) -> tuple[int | None, str]:
        """The pid and status line in ``postmaster.pid`` ("ready" once it serves)."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None, ""
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
        return pid, lines[7].strip() if len(lines) > 7 else ""

    async def _wait_for_orphan(self) -> None:
        """A cluster whose DevServer was killed may still be shutting down."""
        pid, _ = self._postmaster_pid()
        if pid is None or not pid_alive(pid):
            return
        log.warning("postgres pid %s of a dead DevServer still runs; waiting for it", pid)
        if not await wait_until(lambda: not pid_alive(pid), STOP_GRACE_SECONDS * 2, 0.1):
            raise DevServerError(f"postgres pid {pid} still serves {self.data_dir}")

    async def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None

        def ready() -> bool:
            pid, status = self._postmaster_pid()
            return proc.poll() is not None or (pid == proc.pid and status == "ready")

        await wait_until(ready, self._startup_timeout, 0.05)
        if proc.poll() is not None:
            raise DevServerError(f"postgres exited with code {proc.returncode}; "
                                 f"see {self.log_path}")
        if not ready():
            raise DevServerError(f"postgres not ready within {self._startup_timeout:g} s; "
                                 f"see {self.log_path}")

    async def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL of the group after a grace period."""
        proc = self._proc
        if proc is None:
            return
        with anyio.CancelScope(shield=True):
            exited = lambda: proc.poll() is not None  # noqa: E731
            if not exited():
                proc.send_signal(signal.SIGINT)
                if not await wait_until(exited, STOP_GRACE_SECONDS * 2):
                    log.warning("postgres pid %s ignored SIGINT; killing it", proc.pid)
            # Also reaps any backend the postmaster left in its group.
            signal_group(proc, signal.SIGKILL, even_if_exited=True)
            await wait_until(exited, STOP_GRACE_SECONDS)
            if exited():
                LIVE_CHILDREN.discard(proc)
            self._proc = None
