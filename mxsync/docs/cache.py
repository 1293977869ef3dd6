"""A document's local cache: its two tables and the SQL over them.

It owns two tables in the client's store (created on first use)::

    mxsync_doc      (room_id, name) -> meta (JSON :class:`Meta`), state (full Yjs update)
    mxsync_doc_log  local diffs stored since ``state`` was written, oldest first

and the synchronous functions that read and change them; the document runs
each one inside ``Engine.run_sql`` / ``Engine.stage`` (one committed
transaction each). Writing a new ``state`` empties the log it includes.
"""

from __future__ import annotations

import sqlite3

import msgspec

__all__ = ["Meta", "create_tables", "decode_meta", "encode_meta", "forget", "load", "write"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mxsync_doc (
    room_id TEXT NOT NULL,
    name    TEXT NOT NULL,
    meta    BLOB NOT NULL,
    state   BLOB,
    PRIMARY KEY (room_id, name)
);
CREATE TABLE IF NOT EXISTS mxsync_doc_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    name    TEXT NOT NULL,
    data    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS mxsync_doc_log_doc ON mxsync_doc_log (room_id, name, id);
"""


class Meta(msgspec.Struct, kw_only=True):
    """What the cache keeps besides the state (one row per document)."""

    client_id: int
    local_clients: list[int] = []
    #: Clock up to which each local client's structs are in the outbox (or sent).
    sent: dict[int, int] = {}
    #: Local deletions may be in the log but not yet in the outbox.
    unsent_ds: bool = False
    declared: bool = False
    #: The room event up to which ``state`` holds every applied remote update.
    position: str | None = None
    #: The last update/snapshot event of this document applied (for snapshots).
    covers: str | None = None
    updates_since: int = 0
    bytes_since: int = 0


_meta_decoder = msgspec.json.Decoder(Meta)
_JSON = msgspec.json.Encoder()


def decode_meta(raw: bytes) -> Meta:
    return _meta_decoder.decode(raw)


def encode_meta(meta: Meta) -> bytes:
    return _JSON.encode(meta)


def create_tables(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def load(
    conn: sqlite3.Connection, room_id: str, name: str
) -> tuple[bytes | None, bytes | None, list[bytes]]:
    """(meta, state, log blobs oldest first); (None, None, []) if nothing is cached."""
    row = conn.execute(
        "SELECT meta, state FROM mxsync_doc WHERE room_id=? AND name=?", (room_id, name)
    ).fetchone()
    logs = conn.execute(
        "SELECT data FROM mxsync_doc_log WHERE room_id=? AND name=? ORDER BY id",
        (room_id, name),
    ).fetchall()
    if row is None:
        return None, None, []
    return bytes(row[0]), None if row[1] is None else bytes(row[1]), [bytes(r[0]) for r in logs]


def forget(conn: sqlite3.Connection, room_id: str, name: str) -> None:
    key = (room_id, name)
    conn.execute("DELETE FROM mxsync_doc_log WHERE room_id=? AND name=?", key)
    conn.execute("DELETE FROM mxsync_doc WHERE room_id=? AND name=?", key)


def write(
    conn: sqlite3.Connection,
    room_id: str,
    name: str,
    *,
    log: bytes | None,
    meta: bytes,
    state: bytes | None,
) -> None:
    """Store a full ``state`` (emptying the log), or else append ``log``; always ``meta``."""
    key = (room_id, name)
    if state is not None:
        conn.execute("DELETE FROM mxsync_doc_log WHERE room_id=? AND name=?", key)
        conn.execute(
            "INSERT INTO mxsync_doc(room_id, name, meta, state) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(room_id, name) DO UPDATE SET meta=excluded.meta, "
            "state=excluded.state",
            (*key, meta, state),
        )
        return
    if log is not None:
        conn.execute(
            "INSERT INTO mxsync_doc_log(room_id, name, data) VALUES (?, ?, ?)", (*key, log)
        )
    conn.execute(
        "INSERT INTO mxsync_doc(room_id, name, meta) VALUES (?, ?, ?) "
        "ON CONFLICT(room_id, name) DO UPDATE SET meta=excluded.meta",
        (*key, meta),
    )
