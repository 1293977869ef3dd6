"""The publisher's persistent buffer: readings that are not yet in the outbox.

It owns three tables in the client's store (created on first use)::

    stream_device   (room_id, device) -> session, next_seq
    stream_chunk    write-behind readings, oldest first (msgpack rows)
    stream_sealed   encoded org.mxsync.readings contents waiting for the outbox

and the synchronous functions that change them; the publisher runs each one
inside ``Engine.run_sql`` / ``Engine.stage`` (one committed transaction each).

Invariants:
- A reading is in exactly one of these places at every commit: a chunk, a
  sealed batch, the outbox, or the homeserver. Sealing (chunks -> sealed) and
  sending (sealed -> outbox) are each one transaction.
- ``next_seq`` is raised in the transaction that seals the batches numbered
  below it, so a ``seq`` never names two different batches of one session,
  across restarts too.
- Rows are tuples ``(sensor, t_ms, value, unit, precision)`` of readings that
  were validated by ``Publisher.publish``; msgpack keeps int, float, bool and
  str apart, so they come back with the same type.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass, field
from typing import TypeAlias

import msgspec

from ..engine.outbox import OutboxEntry, Staging
from ..protocol.readings import Value
from ..protocol.types import MAX_SAFE_INT

__all__ = [
    "Row",
    "SealedRow",
    "Loaded",
    "encode_rows",
    "decode_rows",
    "load",
    "append_chunk",
    "seal",
    "to_outbox",
    "drop_sealed",
    "set_next_seq",
]

#: One buffered reading: (sensor, t_ms, value, unit, precision).
Row: TypeAlias = tuple[str, int, Value, str | None, int | None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stream_device (
    room_id  TEXT NOT NULL,
    device   TEXT NOT NULL,
    session  INTEGER NOT NULL,
    next_seq INTEGER NOT NULL,
    PRIMARY KEY (room_id, device)
);
CREATE TABLE IF NOT EXISTS stream_chunk (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    device  TEXT NOT NULL,
    n       INTEGER NOT NULL,
    data    BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_sealed (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    device  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    content BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS stream_chunk_dev ON stream_chunk(room_id, device, id);
CREATE INDEX IF NOT EXISTS stream_sealed_dev ON stream_sealed(room_id, device, id);
"""

_pack = msgspec.msgpack.Encoder()
_unpack = msgspec.msgpack.Decoder()


@dataclass(slots=True)
class SealedRow:
    """An encoded batch waiting for the outbox. ``start`` and ``end`` are the
    publisher's in-memory indexes of its first reading and just past its last
    (-1 and 0 for batches restored from a previous run: older than all)."""

    id: int
    seq: int
    n: int
    content: bytes
    end: int = 0
    start: int = -1


@dataclass(slots=True)
class Loaded:
    session: int
    next_seq: int
    #: (chunk id, rows), oldest first.
    chunks: list[tuple[int, list[Row]]] = field(default_factory=list)
    sealed: list[SealedRow] = field(default_factory=list)


def encode_rows(rows: list[Row]) -> bytes:
    return _pack.encode(rows)


def decode_rows(data: bytes) -> list[Row]:
    raw = _unpack.decode(data)
    return [(r[0], r[1], r[2], r[3], r[4]) for r in raw]


def _schema(conn: sqlite3.Connection) -> None:
    for stmt in _SCHEMA.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def load(conn: sqlite3.Connection, room_id: str, device: str) -> Loaded:
    """The publisher identity and everything a previous run left unsent.

    Creates the tables, and the identity with a new random session if there is none.
    """
    _schema(conn)
    row = conn.execute(
        "SELECT session, next_seq FROM stream_device WHERE room_id=? AND device=?",
        (room_id, device),
    ).fetchone()
    if row is None:
        session = secrets.randbelow(MAX_SAFE_INT)
        conn.execute(
            "INSERT INTO stream_device(room_id, device, session, next_seq) VALUES (?, ?, ?, 0)",
            (room_id, device, session),
        )
        loaded = Loaded(session, 0)
    else:
        loaded = Loaded(int(row[0]), int(row[1]))
    for cid, data in conn.execute(
        "SELECT id, data FROM stream_chunk WHERE room_id=? AND device=? ORDER BY id",
        (room_id, device),
    ):
        loaded.chunks.append((int(cid), decode_rows(bytes(data))))
    for sid, seq, n, content in conn.execute(
        "SELECT id, seq, n, content FROM stream_sealed WHERE room_id=? AND device=? ORDER BY id",
        (room_id, device),
    ):
        loaded.sealed.append(SealedRow(int(sid), int(seq), int(n), bytes(content)))
    return loaded


def append_chunk(conn: sqlite3.Connection, room_id: str, device: str, rows: list[Row]) -> int:
    cur = conn.execute(
        "INSERT INTO stream_chunk(room_id, device, n, data) VALUES (?, ?, ?, ?)",
        (room_id, device, len(rows), encode_rows(rows)),
    )
    return int(cur.lastrowid or 0)


def seal(
    conn: sqlite3.Connection,
    room_id: str,
    device: str,
    batches: list[tuple[int, int, bytes]],
    delete_chunks: list[int],
    rewrite: tuple[int, list[Row]] | None,
    next_seq: int,
) -> list[int]:
    """Replace chunks by sealed batches ``(seq, n, content)``; returns their row ids.

    ``rewrite`` keeps the unsealed tail of a chunk that the batches cut through.
    """
    ids = []
    for seq, n, content in batches:
        cur = conn.execute(
            "INSERT INTO stream_sealed(room_id, device, seq, n, content) VALUES (?, ?, ?, ?, ?)",
            (room_id, device, seq, n, content),
        )
        ids.append(int(cur.lastrowid or 0))
    conn.executemany("DELETE FROM stream_chunk WHERE id=?", [(i,) for i in delete_chunks])
    if rewrite is not None:
        cid, rows = rewrite
        conn.execute(
            "UPDATE stream_chunk SET n=?, data=? WHERE id=?", (len(rows), encode_rows(rows), cid)
        )
    set_next_seq(conn, room_id, device, next_seq)
    return ids


def set_next_seq(conn: sqlite3.Connection, room_id: str, device: str, next_seq: int) -> None:
    conn.execute(
        "UPDATE stream_device SET next_seq=max(next_seq, ?) WHERE room_id=? AND device=?",
        (next_seq, room_id, device),
    )


def to_outbox(tx: Staging, sealed_id: int, entry: OutboxEntry) -> None:
    """Move one sealed batch into the outbox, in one transaction."""
    tx.conn.execute("DELETE FROM stream_sealed WHERE id=?", (sealed_id,))
    tx.add(entry)


def drop_sealed(conn: sqlite3.Connection, ids: list[int]) -> None:
    conn.executemany("DELETE FROM stream_sealed WHERE id=?", [(i,) for i in ids])
