"""Gap repair: the events a ``limited`` sync left out, found by following the graph.

A room is a graph, not a line. /sync hands out events in arrival (stream)
order; /messages walks the graph in topological (depth) order. After a
federation heal a server may keep only the newest events it caught up on and
answer ``limited``; the rest come only when a client paginates /messages
*backwards* into that region, which makes the server backfill them. Backfilled
events never appear in /sync and are stored with negative stream positions,
so a ``to=<since token>`` bound would exclude exactly them. This module
therefore walks backwards from the timeline's ``prev_batch`` and stops on what
the client can see.

Invariants:
- Collect, then drain. The walk backwards spills every event it has not
  delivered before into the ``sync_gap`` table (room, order, event): memory
  holds one page, however long the gap. The drain reads it back oldest first
  (the reverse of the walk: topological order), one page at a time.
- Stop rules of the walk, first to hold: the server has no more (the page
  rule of :func:`~mxsync.engine.pages.paginate`); a non-empty page with
  nothing new (every event already delivered: the walk is past the part of
  the graph the client has seen); once a delivered event was met, a page with
  none (the walk went past the oldest event the client has seen: what is
  older is history from before it saw the room, and is dropped from the
  spill); ``max_events`` collected (the gap is then *truncated*: its newest
  events are delivered, the truncation logged). Reaching the last delivered
  event alone does not stop it: concurrent branches interleave by depth, so
  events of the other branch may sort before it, between delivered ones.
- Nothing twice. "Delivered before" is the in-memory LRU of the sync loop or
  the ``sync_seen`` table, which keeps the last ``keep_seen`` event ids
  delivered per room across restarts. Each drained page is marked delivered in
  ``sync_seen`` and deleted from ``sync_gap`` in one transaction, also when the
  drain is cancelled (shielded), so a drain that stops halfway resumes without
  repeats: a new walk skips what the drain delivered.
- Rechecks. A homeserver whose backwards page is already full locally
  backfills *in the background* (Synapse 1.163: it backfills at once only when
  the page shows a depth gap or comes back short), so what it fetches lands
  after the walk stopped and never reaches /sync. Each repaired gap is walked
  again from the same ``prev_batch`` after ``RECHECK_DELAYS`` (bounded; the
  last gap per room; in memory only), delivering the timeline events that
  appeared meanwhile (old state events found so would look current: the sync
  loop leaves them to the state /sync resolves).
  Those events come later than newer ones already delivered: features may not
  rely on the order of concurrent events (PROTOCOL.md 1.5, ordering).
- The tables are the sync loop's; nobody else reads or writes them.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

import anyio
import msgspec

from .events import MessagesPage, RoomEvent
from .pages import paginate
from .store import Store

__all__ = ["GapRepair", "GapScan", "Recheck", "create_tables", "mark_seen"]

#: Seconds after a gap fill at which its walk is repeated (see Rechecks).
RECHECK_DELAYS: Final = (1.0, 3.0, 8.0)

log = logging.getLogger("mxsync.sync")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sync_gap (
    room_id  TEXT NOT NULL,
    ord      INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    event    BLOB NOT NULL,
    PRIMARY KEY (room_id, event_id)
);
CREATE INDEX IF NOT EXISTS sync_gap_ord ON sync_gap(room_id, ord);
CREATE TABLE IF NOT EXISTS sync_seen (
    n        INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    UNIQUE (room_id, event_id)
);
CREATE INDEX IF NOT EXISTS sync_seen_room ON sync_seen(room_id, n);
"""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(RoomEvent).decode

Fetch = Callable[[str | None], Awaitable[MessagesPage]]


def create_tables(conn: sqlite3.Connection) -> None:
    for stmt in _SCHEMA.strip().split(";"):
        if stmt.strip():
            conn.execute(stmt)


def mark_seen(conn: sqlite3.Connection, pairs: Iterable[tuple[str, str]], keep: int) -> None:
    """Record delivered (room, event id) pairs, keeping the last ``keep`` per room."""
    pairs = list(pairs)
    conn.executemany("INSERT OR IGNORE INTO sync_seen(room_id, event_id) VALUES (?, ?)", pairs)
    for room_id in {r for r, _ in pairs}:
        conn.execute(
            "DELETE FROM sync_seen WHERE room_id=? AND n <= (SELECT n FROM sync_seen "
            "WHERE room_id=? ORDER BY n DESC LIMIT 1 OFFSET ?)", (room_id, room_id, keep))


def _known(conn: sqlite3.Connection, room_id: str, ids: list[str]) -> set[str]:
    marks = ",".join("?" * len(ids))
    rows = conn.execute(f"SELECT event_id FROM sync_seen WHERE room_id=? AND event_id IN ({marks})",
                        (room_id, *ids)).fetchall()
    return {r[0] for r in rows}


def _spill(conn: sqlite3.Connection, *, rows: list[tuple[str, int, str, bytes]]) -> set[str]:
    """Store the rows whose events ``sync_seen`` does not know; their ids."""
    known = _known(conn, rows[0][0], [r[2] for r in rows])
    todo = [r for r in rows if r[2] not in known]
    conn.executemany("INSERT OR IGNORE INTO sync_gap(room_id, ord, event_id, event) "
                     "VALUES (?, ?, ?, ?)", todo)
    return {r[2] for r in todo}


def _trim(conn: sqlite3.Connection, *, room_id: str, older_than: int | None) -> int:
    """Drop a room's spilled events (those with ``ord < older_than`` if given)."""
    if older_than is None:
        return conn.execute("DELETE FROM sync_gap WHERE room_id=?", (room_id,)).rowcount
    return conn.execute("DELETE FROM sync_gap WHERE room_id=? AND ord < ?",
                        (room_id, older_than)).rowcount


@dataclass
class GapScan:
    """What the walk backwards found."""

    #: Events spilled to be delivered (new ones).
    new: int = 0
    #: Events the walk fetched (new or not).
    fetched: int = 0
    #: /messages pages fetched.
    pages: int = 0
    #: The walk passed the last delivered event.
    passed_last: bool = False
    #: Stopped by ``max_events``: older events of the gap are not delivered.
    truncated: bool = False


@dataclass
class Recheck:
    """A repaired gap to walk again: where from, when, and how often still."""

    room_id: str
    prev_batch: str
    due: float
    #: Index into RECHECK_DELAYS of the next wait.
    step: int = 0


class GapRepair:
    """Walks one gap backwards into the store, then hands it out oldest first."""

    def __init__(self, store: Store, *, max_events: int, page_events: int,
                 keep_seen: int) -> None:
        self._store = store
        self.max_events = max_events
        self.page_events = page_events
        self.keep_seen = keep_seen
        self._rechecks: dict[str, Recheck] = {}

    # -- rechecks -------------------------------------------------------------------

    def schedule(self, room_id: str, prev_batch: str) -> None:
        """Walk this gap again later (the newest gap of a room replaces an older one)."""
        self._rechecks[room_id] = Recheck(room_id, prev_batch,
                                          time.monotonic() + RECHECK_DELAYS[0])

    def due(self) -> list[Recheck]:
        """The rechecks due now, each moved to its next time (or dropped after the last)."""
        now = time.monotonic()
        out = [r for r in self._rechecks.values() if r.due <= now]
        for r in out:
            r.step += 1
            if r.step >= len(RECHECK_DELAYS):
                del self._rechecks[r.room_id]
            else:
                r.due = now + RECHECK_DELAYS[r.step]
        return out

    def next_due(self) -> float | None:
        """When (``time.monotonic()``) the next recheck is due, if any."""
        return min((r.due for r in self._rechecks.values()), default=None)

    async def collect(
        self,
        room_id: str,
        prev_batch: str,
        fetch: Fetch,
        *,
        last_event_id: str | None,
        seen: Callable[[str], bool],
        exclude: set[str],
    ) -> GapScan:
        """Walk backwards from ``prev_batch``, spilling what was not delivered yet.

        ``seen(event_id)``: delivered, as far as memory knows; ``exclude``: ids
        to leave out (the timeline, delivered right after the gap).
        """
        await self._store.run(functools.partial(_trim, room_id=room_id, older_than=None))
        scan = GapScan()
        #: Walk position of the oldest event seen that was delivered before.
        oldest_known: int | None = None
        async for page in paginate(fetch, prev_batch):
            scan.pages += 1
            base = scan.fetched
            scan.fetched += len(page.events)
            if last_event_id is not None and any(e.event_id == last_event_id
                                                 for e in page.events):
                scan.passed_last = True
            # The walk's position orders the drain: newest 0, older more negative.
            rows = [(room_id, -(base + i), ev.event_id, _encode(ev))
                    for i, ev in enumerate(page.events)
                    if not seen(ev.event_id) and ev.event_id not in exclude]
            added = await self._store.run(functools.partial(_spill, rows=rows)) if rows else set()
            known = [base + i for i, ev in enumerate(page.events)
                     if ev.event_id not in added and ev.event_id not in exclude]
            scan.new += len(added)
            if oldest_known is not None and not known:
                break  # older than anything this client has seen (see _trim)
            if known:
                oldest_known = max(known)
            if page.events and not added:
                break  # nothing new: past what this client has seen
            if scan.new >= self.max_events:
                scan.truncated = True
                log.error("%s: a gap of more than %d events; delivering its newest only",
                          room_id, scan.new)
                return scan
        if oldest_known is not None:
            # Events older than every event this client delivered are history from
            # before it first saw the room (the features' job), not part of a gap;
            # new events *between* known ones are another branch, interleaved.
            scan.new -= await self._store.run(
                functools.partial(_trim, room_id=room_id, older_than=-oldest_known))
        return scan

    async def drain(self, room_id: str, deliver: Callable[[RoomEvent], Awaitable[bool]]) -> int:
        """Hand the spilled events out oldest first, a page at a time; returns how many."""
        count = 0
        while True:
            rows = await self._store.run(lambda c: c.execute(
                "SELECT event_id, event FROM sync_gap WHERE room_id=? ORDER BY ord "
                "LIMIT ?", (room_id, self.page_events)).fetchall())
            if not rows:
                return count
            done: list[str] = []
            try:
                for event_id, blob in rows:
                    await deliver(_decode(blob))
                    done.append(event_id)
                    count += 1
            finally:
                # Shielded: what was handed out must be marked even on a stop.
                with anyio.CancelScope(shield=True):
                    await self._store.run(functools.partial(self._done, room_id=room_id,
                                                            ids=done))

    def _done(self, conn: sqlite3.Connection, *, room_id: str, ids: list[str]) -> None:
        conn.executemany("DELETE FROM sync_gap WHERE room_id=? AND event_id=?",
                         [(room_id, i) for i in ids])
        mark_seen(conn, [(room_id, i) for i in ids], self.keep_seen)
