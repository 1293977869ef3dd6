"""The state-dir lock: at most one DevServer per state directory.

An exclusive ``flock`` on ``devserver.lock``; the lock dies with its holder, so
a lock file left by a killed run is stale by construction and is replaced. The
file holds the owner's pids (and URL) as JSON, so that a refused caller learns
who holds it and a new owner learns which Synapse a dead one may have left.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import StateDirLocked

__all__ = ["StateDirLock"]

log = logging.getLogger("mxsync.devserver")

class StateDirLock:
    """An exclusive ``flock`` on ``devserver.lock`` with the owner's pids inside."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> dict[str, Any]:
        """Take the lock; return what a previous (dead) holder left in the file."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = self._read()
                raise StateDirLocked(
                    f"state dir {self.path.parent} is in use by another DevServer "
                    f"(pid {holder.get('pid', '?')}, synapse pid "
                    f"{holder.get('synapse_pid', '?')}, {holder.get('url', 'url unknown')}); "
                    "stop it or use another --state-dir"
                ) from None
            # A releasing holder unlinks the file before closing it: if we locked
            # an unlinked inode, start over on the new file.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                break
            os.close(fd)
        previous = self._read()
        if previous:
            log.info("removing stale lock of dead DevServer pid %s", previous.get("pid"))
        self.write(pid=os.getpid())
        return previous

    def holder(self) -> dict[str, Any] | None:
        """What the live holder wrote in the file, or None when nobody holds the lock."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            return self._read()
        finally:
            os.close(fd)  # also drops a shared lock we got: nobody held it
        return None

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, **info: Any) -> None:
        assert self._fd is not None
        raw = json.dumps(info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, raw, 0)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
