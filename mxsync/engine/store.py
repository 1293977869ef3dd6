"""The client's local store: one SQLite file per client.

It owns every byte a client must not lose: its session (device id, access
token), the sync token, the outbox's table (its rows and their SQL are
:mod:`mxsync.engine.outbox`'s), and the features' tables (document caches,
publisher buffers), each feature owning the SQL of its own.

Invariants:
- A write method returns only after its transaction is committed; callers may
  treat a change as made once the ``await`` returns.
- All SQLite work runs in one dedicated thread per store (one connection,
  also guarded by a lock), so the event loop never blocks on disk. Dedicated,
  not a pool: glibc gives each thread that allocates its own malloc arena, and
  SQLite's pages and rows spread over a pool's threads fragment several arenas
  whose free memory the others cannot reuse. The soak measured the client's
  RSS growing ~3x faster than its live heap that way (docs/soak.md).
- The file is created with mode 0600: it holds an access token.
- ``store_path=None`` keeps everything in memory (tests, throwaway clients).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import anyio

__all__ = ["Store"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    ns    TEXT NOT NULL,
    key   TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ns, key)
);
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key  TEXT,
    content    BLOB NOT NULL,
    txn_id     TEXT NOT NULL UNIQUE,
    lane       TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    as_user    TEXT,
    ts_ms      INTEGER
);
"""


class Store:
    """Async facade over one SQLite connection (WAL mode, worker thread)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the store's thread and wait for it, even when the
        caller is cancelled meanwhile (like ``anyio.to_thread.run_sync``): a
        transaction that started is seen to its end."""
        if self._thread is None:
            raise RuntimeError("store is closed")
        fut = asyncio.get_running_loop().run_in_executor(
            self._thread, functools.partial(fn, *args)
        )
        with anyio.CancelScope(shield=True):
            result = await fut
        return result

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="mxsync-store")
        await self._call(self._open_sync)

    def _open_sync(self) -> None:
        if self.path is None:
            conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                # Create it 0600 before SQLite touches it: it will hold an access token.
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            os.chmod(self.path, 0o600)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit survives power loss, not only a process crash.
            conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        # Stores made before the appservice columns (as_user, ts_ms) get them now.
        columns = {r[1] for r in conn.execute("PRAGMA table_info(outbox)")}
        for column, kind in (("as_user", "TEXT"), ("ts_ms", "INTEGER")):
            if column not in columns:
                conn.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")
        self._conn = conn
        if self.path is not None:
            for suffix in ("-wal", "-shm"):
                side = Path(str(self.path) + suffix)
                if side.exists():
                    os.chmod(side, 0o600)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._call(self._close_sync, conn)
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False)  # idle by now: it exits at once

    def _close_sync(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            conn.close()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in the worker thread inside one committed transaction.

        For features that keep tables of their own. ``fn`` must not block on
        anything but SQLite.
        """
        return await self._call(self._run_sync, fn)

    def _run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError("store is closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    # -- key/value -------------------------------------------------------

    async def kv_get(self, ns: str, key: str) -> bytes | None:
        def q(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT value FROM kv WHERE ns=? AND key=?", (ns, key)).fetchone()
            return None if row is None else bytes(row[0])

        return await self.run(q)

    async def kv_items(self, ns: str) -> dict[str, bytes]:
        def q(conn: sqlite3.Connection) -> dict[str, bytes]:
            rows = conn.execute("SELECT key, value FROM kv WHERE ns=?", (ns,)).fetchall()
            return {k: bytes(v) for k, v in rows}

        return await self.run(q)

    async def kv_set(self, ns: str, key: str, value: bytes) -> None:
        await self.kv_set_many(ns, {key: value})

    async def kv_set_many(self, ns: str, items: dict[str, bytes]) -> None:
        def q(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO kv(ns, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT(ns, key) DO UPDATE SET value=excluded.value",
                [(ns, k, v) for k, v in items.items()],
            )

        await self.run(q)

    async def kv_delete(self, ns: str, key: str) -> None:
        await self.run(lambda c: c.execute("DELETE FROM kv WHERE ns=? AND key=?", (ns, key)))
