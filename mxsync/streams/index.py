"""A local index of a stream room's batches by reading time, kept in the client's store.

Owns the tables ``mxsync_batch_index`` (one row per batch event and sensor: its
first and last reading time, and the batch's sender, device, session, seq and
server time) and ``mxsync_index_meta`` (per room: whether the index is
complete, and up to which event), their SQL as plain functions over a
connection (run inside ``Engine.run_sql``), the one backwards walk that fills
the index, and the queries that answer ``history``/``window`` from it.

Why: a device that buffered through an outage uploads readings hours or days
after their time. A scan by the events' server times (``history_lag``) misses
them; the index knows each batch by the times of the readings *in* it, so a
query for a range fetches exactly the batches that hold readings of it,
whenever they were uploaded.

Invariants:

1. Only batches the subscriber trusts are indexed: live ones it took (power
   levels where they stand, valid content), and those of the walk, judged by
   ``levels_backwards``. A fetched batch is decoded again before use.
2. The index of a room is *complete* from ``frontier`` back to the retention
   bound: the walk runs once per Subscriber (at the first query), from the
   room's end backwards until it meets the frontier a previous run left, or
   events stored before the retention bound. Only then does this run's live
   stream move the frontier (each live readings or levels event), so a run
   that stops before its walk is done leaves the previous frontier, and the
   next run walks back to it: the time the client was not running is covered.
3. Retention (``history_retention``): rows whose last reading is older than
   ``now - retention`` are dropped; a query that starts before that bound is
   answered by the timestamp scan (``streams.history.read_history``) instead.
4. A query fetches each batch it needs once (``/context``), keeps the
   decoded readings in a bounded LRU (``MAX_CACHED_READINGS``), and makes no
   ``/messages`` request once the walk is done: a repeated query of the same
   range makes no request at all while its batches are cached.
5. Each batch counts once per ``(sender, device, session, seq)`` even when the
   room holds it twice.

Known limit: the walk follows ``/messages`` backwards (topological order); an
event that a homeserver backfilled *behind* the frontier after a federation
partition is indexed only if it also came live.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import anyio

from ..engine.authz import levels_backwards
from ..engine.events import RoomEvent
from ..engine.surface import Engine
from ..errors import ProtocolError
from ..protocol.readings import Reading, parse_batch
from ..protocol.types import POWER_LEVELS, READINGS
from .history import BatchReader, HistoryProgress, by_time

__all__ = ["BatchIndex", "MAX_CACHED_READINGS", "create_tables"]

log = logging.getLogger("mxsync.streams")

#: Decoded readings a BatchIndex keeps in memory for repeated queries.
MAX_CACHED_READINGS: Final = 200_000

_PAGE: Final = 100
#: Batches noted between two prunes of rows past the retention.
_PRUNE_EVERY: Final = 1000


def create_tables(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS mxsync_batch_index (room TEXT NOT NULL, "
                 "event_id TEXT NOT NULL, sensor TEXT NOT NULL, t_min INTEGER NOT NULL, "
                 "t_max INTEGER NOT NULL, sender TEXT NOT NULL, device TEXT NOT NULL, "
                 "session INTEGER, seq INTEGER NOT NULL, ts INTEGER NOT NULL, "
                 "PRIMARY KEY (room, event_id, sensor))")
    conn.execute("CREATE INDEX IF NOT EXISTS mxsync_batch_index_by_time ON "
                 "mxsync_batch_index (room, sensor, t_max)")
    conn.execute("CREATE TABLE IF NOT EXISTS mxsync_index_meta (room TEXT PRIMARY KEY, "
                 "frontier TEXT)")


Row = tuple[str, str, str, int, int, str, str, int | None, int, int]


#: Per sensor of a batch: its first and last reading time.
Spans = dict[str, tuple[int, int]]


def spans_of(readings: list[Reading]) -> Spans:
    """The first and last reading time of each sensor in ``readings``."""
    spans: Spans = {}
    for r in readings:
        lo, hi = spans.get(r.sensor, (r.t_ms, r.t_ms))
        spans[r.sensor] = (min(lo, r.t_ms), max(hi, r.t_ms))
    return spans


def rows_of(ev: RoomEvent, device: str, session: int | None, seq: int,
            readings: list[Reading] | Spans) -> list[Row]:
    """The index rows of one batch: per sensor, its first and last reading time
    (from its readings, or from their spans when the caller has them)."""
    spans = readings if isinstance(readings, dict) else spans_of(readings)
    return [(ev.room_id, ev.event_id, s, lo, hi, ev.sender, device, session, seq,
             ev.origin_server_ts) for s, (lo, hi) in spans.items()]


def _insert(conn: sqlite3.Connection, rows: list[Row]) -> None:
    conn.executemany("INSERT OR IGNORE INTO mxsync_batch_index VALUES "
                     "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def _frontier(conn: sqlite3.Connection, room: str) -> str | None:
    row = conn.execute("SELECT frontier FROM mxsync_index_meta WHERE room = ?",
                       (room,)).fetchone()
    return None if row is None else row[0]


def _set_frontier(conn: sqlite3.Connection, room: str, event_id: str) -> None:
    conn.execute("INSERT INTO mxsync_index_meta (room, frontier) VALUES (?, ?) "
                 "ON CONFLICT (room) DO UPDATE SET frontier = excluded.frontier",
                 (room, event_id))


def _query(conn: sqlite3.Connection, room: str, sensor: str, start_ms: int,
           end_ms: int) -> list[tuple[str, str, str, int | None, int]]:
    return conn.execute(
        "SELECT event_id, sender, device, session, seq FROM mxsync_batch_index "
        "WHERE room = ? AND sensor = ? AND t_max >= ? AND t_min < ? ORDER BY ts, event_id",
        (room, sensor, start_ms, end_ms)).fetchall()


def _prune(conn: sqlite3.Connection, room: str, before_ms: int) -> None:
    conn.execute("DELETE FROM mxsync_batch_index WHERE room = ? AND t_max < ?",
                 (room, before_ms))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class BatchIndex:
    """The batch index of one room, as one Subscriber fills and queries it."""

    def __init__(self, client: Engine, room_id: str, reader: BatchReader, *,
                 retention_ms: int, skew_ms: int, creators: frozenset[str]) -> None:
        self._client = client
        self._room = room_id
        self._reader = reader
        self.retention_ms = retention_ms
        self._skew_ms = skew_ms
        self._creators = creators
        self._walked = False
        self._lock = anyio.Lock()
        #: The frontier a previous run left (invariant 2), read at open.
        self._previous: str | None = None
        self._cache: OrderedDict[str, list[Reading]] = OrderedDict()
        self._cached = 0
        #: Batches fetched for queries; events the walk read.
        self.fetched = 0
        self.walked_events = 0
        self._notes = 0

    async def open(self) -> None:
        def load(c: sqlite3.Connection) -> str | None:
            create_tables(c)
            return _frontier(c, self._room)
        self._previous = await self._client.run_sql(load)

    # -- filling -----------------------------------------------------------------

    async def note(self, ev: RoomEvent, device: str, session: int | None, seq: int,
                   readings: list[Reading] | Spans) -> None:
        """A batch the subscriber took (live, repaired or replayed): its readings,
        or their spans per sensor (:func:`spans_of`)."""
        rows = rows_of(ev, device, session, seq, readings)
        if not rows:
            return
        self._notes += 1
        prune = self._notes % _PRUNE_EVERY == 0
        before = _now_ms() - self.retention_ms

        def store(c: sqlite3.Connection) -> None:
            _insert(c, rows)
            if prune:  # invariant 3, while a subscriber runs for long
                _prune(c, self._room, before)
        await self._client.run_sql(store)

    async def seen_live(self, ev: RoomEvent) -> None:
        """An event of the live stream: the frontier moves once the walk is done."""
        if self._walked and ev.type in (READINGS, POWER_LEVELS):
            await self._client.run_sql(lambda c: _set_frontier(c, self._room, ev.event_id))

    async def ensure(self) -> None:
        """Walk the room backwards once (invariant 2)."""
        async with self._lock:
            if self._walked:
                return
            await self._walk()
            self._walked = True

    async def _walk(self) -> None:
        bound = _now_ms() - self.retention_ms - self._skew_ms
        newest: str | None = None
        stop = False
        async for page in self._client.pages(self._room, None, direction="b", limit=_PAGE,
                                             types=[READINGS, POWER_LEVELS]):
            levels = await levels_backwards(self._client, self._room, page, self._creators)
            rows: list[Row] = []
            for ev, lv in zip(page.events, levels, strict=True):
                if newest is None:
                    newest = ev.event_id
                if ev.event_id == self._previous or ev.origin_server_ts < bound:
                    stop = True
                    break
                self.walked_events += 1
                batch = self._reader.batch(ev, lv)
                if batch is None:
                    continue
                readings = self._reader.readings(ev, batch)
                if readings is not None:
                    rows += rows_of(ev, batch.device, batch.session, batch.seq, readings)
            if rows:
                await self._client.run_sql(functools.partial(_insert, rows=rows))
            if stop:
                break
        prune_before = _now_ms() - self.retention_ms

        def finish(c: sqlite3.Connection) -> None:
            _prune(c, self._room, prune_before)
            if newest is not None:
                _set_frontier(c, self._room, newest)
        await self._client.run_sql(finish)

    # -- queries -------------------------------------------------------------------

    def covers(self, start_ms: int) -> bool:
        """Does the index answer a query starting at ``start_ms`` (invariant 3)?"""
        return start_ms >= _now_ms() - self.retention_ms

    async def history(
        self, sensor: str, start_ms: int, end_ms: int,
        progress: Callable[[HistoryProgress], object] | None = None,
    ) -> list[Reading]:
        """The readings of ``sensor`` in ``[start_ms, end_ms)``, by time, from the
        batches the index names (invariants 4 and 5). ``progress`` is called
        after each batch (``events``: batches looked at, ``fraction``: of those
        the index named)."""
        await self.ensure()
        hits = await self._client.run_sql(
            lambda c: _query(c, self._room, sensor, start_ms, end_ms))
        seen: set[tuple[str, str, int | None, int]] = set()
        found: list[Reading] = []
        for i, (event_id, sender, device, session, seq) in enumerate(hits):
            key = (sender, device, session, seq)
            readings = None if key in seen else await self._readings(event_id)
            if readings is not None:
                seen.add(key)
                found.extend(r for r in readings
                             if r.sensor == sensor and start_ms <= r.t_ms < end_ms)
            if progress is not None:
                progress(HistoryProgress(
                    events=i + 1, batches=len(seen), readings=len(found),
                    position_ms=max((r.t_ms for r in found), default=start_ms),
                    fraction=(i + 1) / len(hits)))
        if progress is not None and not hits:
            progress(HistoryProgress(events=0, batches=0, readings=0, position_ms=end_ms,
                                     fraction=1.0))
        found.sort(key=by_time)
        return found

    async def _readings(self, event_id: str) -> list[Reading] | None:
        cached = self._cache.get(event_id)
        if cached is not None:
            self._cache.move_to_end(event_id)
            return cached
        self.fetched += 1
        ev, _ = await self._client.context(self._room, event_id)
        if ev is None:
            return None
        try:
            batch = parse_batch(ev.content)  # judged when it was indexed (invariant 1)
        except ProtocolError as exc:
            self._reader.bad(ev, exc)
            return None
        readings = self._reader.readings(ev, batch, identity=True)
        if readings is None:
            return None
        self._cache[event_id] = readings
        self._cached += len(readings)
        while self._cached > MAX_CACHED_READINGS and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)
        return readings

