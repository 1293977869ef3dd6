"""A durable subscriber's position: what its consumer has acknowledged, kept in the store.

Owns the table ``mxsync_durable`` (one row per room and durable name), its SQL
as plain functions over a connection (run inside ``Engine.run_sql``), and the
replay that brings a restarted durable subscriber back to where its consumer
stopped (PROTOCOL is unchanged: this is local state only).

Invariants:

1. The position is ``(event_id, done)``: the ``org.mxsync.readings`` event the
   consumer was in, and how many of that batch's readings, in the order the
   subscriber hands them out (sorted by time, stable, after the sensor
   filter), it has acknowledged. Everything before that event in the
   timeline is acknowledged.
2. The position moves only on ``Subscriber.ack()`` and is committed before
   ``ack()`` returns: a crash or ``kill -9`` after it never hands those
   readings out again; anything handed out but not acknowledged is handed out
   again after a restart (at-least-once). A sink that keeps each reading's
   identity (``Reading.identity``: device, session, seq, index) unique gets
   each exactly once.
3. The replay starts at the position's event (its readings after ``done``),
   then pages the timeline forwards from there, before any live event; live
   events it has already seen are duplicates by ``seq`` and skipped.
4. The same durable name must be used with the same sensor filter: ``done``
   counts readings after the filter.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable

import msgspec

from ..engine.events import RoomEvent
from ..engine.surface import Engine
from ..errors import ConfigError, MatrixError
from ..protocol.types import POWER_LEVELS, READINGS

__all__ = ["Position", "validate_name", "create_table", "load", "save", "replay",
           "replay_from_start"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_PAGE = 100


class Position(msgspec.Struct, frozen=True):
    """Where a durable consumer stands (invariant 1)."""

    #: The readings event the consumer was in.
    event_id: str
    #: Readings of that event it has acknowledged, in delivery order.
    done: int


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"durable must be a name of 1-128 characters [A-Za-z0-9_.:-], "
                          f"starting with a letter or digit, got {name!r}")
    return name


def create_table(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS mxsync_durable (room TEXT NOT NULL, "
                 "name TEXT NOT NULL, event_id TEXT NOT NULL, done INTEGER NOT NULL, "
                 "PRIMARY KEY (room, name))")


def load(conn: sqlite3.Connection, room: str, name: str) -> Position | None:
    create_table(conn)
    row = conn.execute("SELECT event_id, done FROM mxsync_durable WHERE room = ? AND name = ?",
                       (room, name)).fetchone()
    return None if row is None else Position(row[0], row[1])


def save(conn: sqlite3.Connection, room: str, name: str, pos: Position) -> None:
    conn.execute("INSERT INTO mxsync_durable (room, name, event_id, done) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (room, name) DO UPDATE SET event_id = excluded.event_id, "
                 "done = excluded.done", (room, name, pos.event_id, pos.done))


async def replay(
    engine: Engine,
    room_id: str,
    pos: Position,
    first: Callable[[RoomEvent, str | None], Awaitable[None]],
    on_event: Callable[[RoomEvent], Awaitable[None]],
) -> int:
    """Hand the position's own event to ``first`` (with the token after it), then
    every readings and power-levels event after it, in timeline order, to
    ``on_event`` (invariant 3); the number of events replayed. An event the
    server no longer has ends the replay with an error in the log: the
    subscriber then goes on live."""
    try:
        ev, token = await engine.context(room_id, pos.event_id)
    except MatrixError as exc:
        log.error("durable position %s in %s cannot be found (%s): going on live; "
                  "readings between it and now are not replayed", pos.event_id, room_id, exc)
        return 0
    if ev is None or token is None:
        log.error("durable position %s in %s is not readable: going on live",
                  pos.event_id, room_id)
        return 0
    await first(ev, token)
    n = 0
    async for page in engine.pages(room_id, token, direction="f", limit=_PAGE,
                                   types=[READINGS, POWER_LEVELS]):
        for e in page.events:
            n += 1
            await on_event(e)
    return n


async def replay_from_start(
    engine: Engine, room_id: str, on_event: Callable[[RoomEvent], Awaitable[None]]
) -> int:
    """Every readings and power-levels event of the room from its first visible
    one, in timeline order, to ``on_event`` (``start="earliest"`` with no
    position yet); the number of events replayed."""
    n = 0
    async for page in engine.pages(room_id, None, direction="f", limit=_PAGE,
                                   types=[READINGS, POWER_LEVELS]):
        for e in page.events:
            n += 1
            await on_event(e)
    return n
