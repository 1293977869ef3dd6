"""The outbox: every event a client sends leaves through here.

Invariants:
- An event is in the store (committed) before ``enqueue`` returns; it leaves
  the store only once the homeserver has answered with an event id.
- Its transaction id is fixed at enqueue time and reused on every retry, in
  this process or after a restart, so the homeserver deduplicates the retries
  of a send that may or may not have landed (PUT /send/{type}/{txnId} is
  idempotent per device). The client keeps its device id in the store for
  that reason.
- Events of one *lane* (room, lane) go out strictly one after the other, in
  enqueue order; different lanes of a room run concurrently, at most
  ``per_room`` at once.
- A rate limit (M_LIMIT_EXCEEDED) pauses every lane until ``retry_after_ms``
  has passed (the limit is per user, not per lane). The outbox also learns the
  pace the server allows (``next_slot``) so that a feature that coalesces
  changes (documents) can seal its next batch when it can actually go out,
  instead of sealing it at once and having it wait, frozen, behind a 429.
- A network error or 5xx backs the lane off exponentially, cut short when the
  client's shared :class:`~mxsync.engine.http.Liveness` sees the server answer
  again after an outage (never a rate limit's wait). Neither drops anything.
- A definite refusal (M_FORBIDDEN, M_TOO_LARGE, M_BAD_JSON, ...) can never
  succeed: the event is removed, logged and its handle raises the error.
- A caller may *hold* what it stages behind an ``anyio.Event`` (``stage(fn,
  hold=...)``): the entries wait for it, at most :data:`HOLD_MAX` seconds,
  before their first attempt. A hint, in memory only (after a restart the
  entries go at once): a document holds its timeline batch while the same
  changes go to its peers over to-device, so that the homeserver handles the
  fast path first (docs/benchmarks.md, the isolated edit).
- In an encrypted room a timeline event is encrypted at send time (by
  :mod:`~mxsync.engine.crypto`), never in the store: each attempt encrypts it
  again, under the same transaction id. State events are sent as they are.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from ..errors import ConfigError, MatrixError, RateLimitedError, TransientError
from ..protocol import api
from .crypto import Crypto
from .http import Backoff, Http
from .store import Store

__all__ = ["HOLD_MAX", "Outbox", "OutboxEntry", "OutboxStatistics", "OutgoingEvent",
           "SendHandle", "Staging"]

T = TypeVar("T")

#: Pacing hint: the longest interval learned from 429s (Synapse's default
#: rc_message allows one event per 5 s after its burst; a mislearnt pace costs
#: at most this much latency), how fast it decays per send that is not
#: refused, and below what it is forgotten.
_PACE_CAP = 10.0
_PACE_DECAY = 0.95
_PACE_FLOOR = 0.05
#: The longest an entry waits for the hold it was staged with (see ``stage``):
#: the durable path is delayed by at most this much.
HOLD_MAX = 0.05

log = logging.getLogger("mxsync.outbox")
#: Every rate-limit pause, at INFO: the ``mxsync`` command shows them.
rate_log = logging.getLogger("mxsync.ratelimit")
_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """What to send: a timeline event, or a state event when ``state_key`` is set."""

    room_id: str
    event_type: str
    content: dict[str, Any]
    state_key: str | None = None
    lane: str = "default"


class OutboxEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One event in the outbox, as stored in its table. ``txn_id`` is fixed when
    the entry is made (:meth:`new`) and reused by every retry."""

    room_id: str
    event_type: str
    #: The content, already encoded as JSON (sent as it is).
    content: bytes
    #: Set for a state event (possibly ``""``).
    state_key: str | None = None
    lane: str = "default"
    txn_id: str
    created_ms: int
    #: The row id; 0 until the entry is stored.
    id: int = 0
    #: An application service sends as this user of its namespace (``?user_id=``).
    as_user: str | None = None
    #: An application service's timestamp for the event (``?ts=``, ms).
    ts_ms: int | None = None

    @classmethod
    def new(
        cls,
        room_id: str,
        event_type: str,
        content: dict[str, Any] | bytes,
        *,
        state_key: str | None = None,
        lane: str = "default",
    ) -> OutboxEntry:
        """An entry for ``content`` with a fresh transaction id (not stored yet)."""
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise ConfigError(f"not a room id: {room_id!r}")
        return cls(
            room_id=room_id,
            event_type=event_type,
            content=content if isinstance(content, bytes) else _json.encode(content),
            state_key=state_key,
            lane=lane,
            txn_id=new_txn_id(),
            created_ms=int(time.time() * 1000),
        )

    def request(self) -> api.Request:
        if self.state_key is None:
            req = api.send_event(self.room_id, self.event_type, self.txn_id, self.content)
        else:
            # State PUTs have no txn id, but are idempotent: the same content again
            # yields the same state.
            req = api.put_state(self.room_id, self.event_type, self.state_key, self.content)
        return api.as_appservice(req, self.as_user, self.ts_ms)


# -- the outbox table: SQL as functions over a connection ----------------------


def insert_entries(conn: sqlite3.Connection, entries: Sequence[OutboxEntry]) -> list[OutboxEntry]:
    """Store ``entries`` inside the caller's transaction; returns them with their ids."""
    out = []
    for e in entries:
        cur = conn.execute(
            "INSERT INTO outbox(room_id, event_type, state_key, content, txn_id, lane, "
            "created_ms, as_user, ts_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (e.room_id, e.event_type, e.state_key, e.content, e.txn_id, e.lane, e.created_ms,
             e.as_user, e.ts_ms),
        )
        out.append(msgspec.structs.replace(e, id=int(cur.lastrowid or 0)))
    return out


def pending_entries(conn: sqlite3.Connection) -> list[OutboxEntry]:
    rows = conn.execute(
        "SELECT id, room_id, event_type, state_key, content, txn_id, lane, created_ms, "
        "as_user, ts_ms FROM outbox ORDER BY id"
    ).fetchall()
    return [
        OutboxEntry(id=r[0], room_id=r[1], event_type=r[2], state_key=r[3], content=bytes(r[4]),
                    txn_id=r[5], lane=r[6], created_ms=r[7], as_user=r[8], ts_ms=r[9])
        for r in rows
    ]


def delete_entry(conn: sqlite3.Connection, entry_id: int) -> None:
    conn.execute("DELETE FROM outbox WHERE id=?", (entry_id,))


class Staging:
    """A feature's store transaction and the outbox entries staged in it.

    Handed to the function given to ``Outbox.stage``: ``conn`` for the feature's
    own tables, :meth:`add` for entries that must be committed with them (a
    document's cache and its update, a publisher's sealed batch moving to the
    outbox). They are scheduled once the transaction has committed.
    """

    __slots__ = ("conn", "_entries")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._entries: list[OutboxEntry] = []

    def add(self, entry: OutboxEntry) -> OutboxEntry:
        """Store ``entry`` in this transaction; returns it with its row id."""
        (stored,) = insert_entries(self.conn, [entry])
        self._entries.append(stored)
        return stored


class OutboxStatistics(msgspec.Struct, frozen=True):
    """What the outbox has done since the client started."""

    #: Events in the outbox now (stored, not yet answered).
    pending: int
    #: Events the homeserver accepted.
    sent: int
    #: Events the homeserver refused for good (dropped, their handle raised).
    failed: int
    #: 429 answers (each retried after ``retry_after_ms``).
    rate_limited: int
    #: Transient failures (network, 5xx, 401) retried with backoff.
    retries: int


class SendHandle:
    """Tells when one enqueued event has been stored by the homeserver."""

    __slots__ = ("row_id", "txn_id", "event_id", "error", "_done")

    def __init__(self, row_id: int, txn_id: str) -> None:
        self.row_id = row_id
        self.txn_id = txn_id
        self.event_id: str | None = None
        self.error: BaseException | None = None
        self._done = anyio.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> str:
        """Return the event id once sent; raise the homeserver's refusal if it was refused."""
        await self._done.wait()
        if self.error is not None:
            raise self.error
        assert self.event_id is not None
        return self.event_id

    def _resolve(self, event_id: str | None, error: BaseException | None = None) -> None:
        self.event_id = event_id
        self.error = error
        self._done.set()


def new_txn_id() -> str:
    return f"mxs{uuid.uuid4().hex}"


class Outbox:
    """Persistent send queue with per-lane ordering and a shared rate-limit gate."""

    def __init__(
        self, http: Http, store: Store, *, per_room: int = 8, crypto: Crypto | None = None
    ) -> None:
        if per_room < 1:
            raise ConfigError(f"per_room must be >= 1, got {per_room!r}")
        self._http = http
        self._crypto = crypto
        self._store = store
        self._per_room = per_room
        self._handles: dict[int, SendHandle] = {}
        self._lanes: dict[tuple[str, str], deque[OutboxEntry]] = {}
        self._active_lanes: set[tuple[str, str]] = set()
        self._room_limits: dict[str, anyio.Semaphore] = {}
        self._resume_at = 0.0  # monotonic time before which nothing is sent (429)
        # Pacing hint (see next_slot): the interval the server last imposed between
        # sends, decayed by every send that went through without a 429.
        self._pace = 0.0
        self._last_sent_at = -math.inf
        self._tg: TaskGroup | None = None
        self._backlog: list[OutboxEntry] = []
        self._holds: dict[int, anyio.Event] = {}
        #: Counters for statistics() and tests.
        self.sent = 0
        self.failed = 0
        self.rate_limited = 0
        self.retries = 0

    # -- enqueue ----------------------------------------------------------

    async def enqueue(self, event: OutgoingEvent) -> SendHandle:
        return (await self.enqueue_many([event]))[0]

    async def enqueue_many(self, events: Sequence[OutgoingEvent]) -> list[SendHandle]:
        """Persist ``events`` in one transaction, then schedule them; order is kept per lane."""
        entries = [
            OutboxEntry.new(ev.room_id, ev.event_type, ev.content, state_key=ev.state_key,
                            lane=ev.lane)
            for ev in events
        ]
        stored = await self._store.run(lambda c: insert_entries(c, entries))
        return self._schedule(stored)

    async def stage(self, fn: Callable[[Staging], T], *, hold: anyio.Event | None = None
                    ) -> tuple[T, list[SendHandle]]:
        """Run ``fn`` in one store transaction with a :class:`Staging`; the entries it
        adds are committed with the rest of that transaction, then scheduled, each
        to wait for ``hold`` (at most :data:`HOLD_MAX`) before it is first sent."""

        def work(conn: sqlite3.Connection) -> tuple[T, list[OutboxEntry]]:
            staging = Staging(conn)
            return fn(staging), staging._entries

        result, entries = await self._store.run(work)
        if hold is not None and not hold.is_set():
            self._holds.update((row.id, hold) for row in entries)
        return result, self._schedule(entries)

    def _schedule(self, rows: Sequence[OutboxEntry]) -> list[SendHandle]:
        """Schedule entries already committed to the store."""
        handles = []
        for row in rows:
            handle = self._handles.get(row.id)
            if handle is None:
                handle = self._handles[row.id] = SendHandle(row.id, row.txn_id)
                if self._tg is None:
                    self._backlog.append(row)
                else:
                    self._push(row)
            handles.append(handle)
        return handles

    @property
    def pending(self) -> int:
        return len(self._handles)

    def pending_in_lane(self, room_id: str, lane: str) -> list[SendHandle]:
        """Handles of the entries of lane ``(room_id, lane)`` in the outbox now
        (stored, not yet answered), in send order, those a previous process
        left in the store included (scheduled when the outbox started)."""
        key = (room_id, lane)
        rows = [*self._lanes.get(key, ()),
                *(r for r in self._backlog if (r.room_id, r.lane) == key)]
        return [h for r in rows if (h := self._handles.get(r.id)) is not None and not h.done]

    async def flush(self) -> None:
        """Wait until every event enqueued before this call is sent or refused."""
        for handle in list(self._handles.values()):
            await handle._done.wait()

    # -- running ----------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Send until cancelled; first reload what a previous process left in the store."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            restored = await self._store.run(pending_entries)
            if restored:
                log.info("outbox: resuming %d unsent event(s) from the store", len(restored))
            self._schedule(restored)
            backlog, self._backlog = self._backlog, []
            for row in backlog:
                self._push(row)
            task_status.started()
            await anyio.sleep_forever()

    def _push(self, row: OutboxEntry) -> None:
        key = (row.room_id, row.lane)
        self._lanes.setdefault(key, deque()).append(row)
        if key not in self._active_lanes:
            self._active_lanes.add(key)
            assert self._tg is not None
            self._tg.start_soon(self._drain_lane, key)

    async def _drain_lane(self, key: tuple[str, str]) -> None:
        queue = self._lanes[key]
        limit = self._room_limits.setdefault(key[0], anyio.Semaphore(self._per_room))
        try:
            while queue:
                row = queue[0]
                hold = self._holds.pop(row.id, None)
                if hold is not None:
                    with anyio.move_on_after(HOLD_MAX):
                        await hold.wait()
                async with limit:
                    await self._send_until_answered(row)
                queue.popleft()
        finally:
            self._active_lanes.discard(key)
            if not queue:
                self._lanes.pop(key, None)

    async def _send_until_answered(self, row: OutboxEntry) -> None:
        backoff = Backoff(base=0.5, cap=30.0)
        handle = self._handles[row.id]
        throttled = False
        while True:
            wait = self._resume_at - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            try:
                event_id = await self._send_once(row)
            except RateLimitedError as exc:
                self.rate_limited += 1
                delay = (exc.retry_after_ms or 1000) / 1000
                if self._resume_at <= time.monotonic():  # once per pause, not per lane
                    rate_log.info("rate limited by the homeserver, next send in %.1f s "
                                  "(%d event(s) waiting)", delay, self.pending)
                self._resume_at = max(self._resume_at, time.monotonic() + delay)
                self._pace = min(max(self._pace, delay), _PACE_CAP)
                throttled = True
                continue
            except TransientError as exc:
                self.retries += 1
                delay = backoff.next_delay()
                log.debug("send %s to %s failed (%s); retry in %.1fs", row.txn_id, row.room_id,
                          exc, delay)
                # Woken early once the server answers again after an outage.
                await self._http.liveness.wait(delay)
                continue
            except MatrixError as exc:
                if exc.status == 401:
                    # The session broke (token revoked?): keep the event, retry slowly.
                    self.retries += 1
                    log.warning("send refused with 401 (%s); keeping the event", exc.errcode)
                    await anyio.sleep(backoff.next_delay())
                    continue
                self.failed += 1
                log.error(
                    "homeserver refused %s in %s for good: %s; event dropped from the outbox",
                    row.event_type, row.room_id, exc,
                )
                await self._store.run(lambda c: delete_entry(c, row.id))
                self._handles.pop(row.id, None)
                handle._resolve(None, exc)
                return
            self._sent_paced(throttled)
            await self._store.run(lambda c: delete_entry(c, row.id))
            self.sent += 1
            self._handles.pop(row.id, None)
            handle._resolve(event_id)
            return

    def _sent_paced(self, throttled: bool) -> None:
        now = time.monotonic()
        idle, self._last_sent_at = now - self._last_sent_at, now
        if throttled:
            # Accepted only after a 429: the time since the previous accepted send
            # is the interval the server allows (a Retry-After alone is shorter
            # when the bucket had partly refilled).
            if idle != math.inf:
                self._pace = min(max(self._pace, idle), _PACE_CAP)
            return
        if idle >= 2 * self._pace:
            # Quiet for a while: the server's bucket has refilled; relearn on a 429.
            self._pace = 0.0
        else:
            # Went straight through: the limit may have eased. Decay slowly, since a
            # batch sealed too early waits behind a 429 with the edits it holds.
            self._pace = 0.0 if self._pace < _PACE_FLOOR else self._pace * _PACE_DECAY

    def next_slot(self) -> float:
        """When (``time.monotonic()``) a send will probably be accepted: now, unless
        a 429 pause is running or the server has recently imposed a pace.

        A hint, never a gate: the outbox itself sends as soon as it may. Under
        Synapse's default ``rc_message`` (0.2/s after a burst of 10) a send right
        after another is refused for ~5 s; a document that waits for the slot
        puts the edits of those 5 s into the batch instead of a frozen one.
        """
        return max(self._resume_at, self._last_sent_at + self._pace)

    async def _send_once(self, row: OutboxEntry) -> str:
        req = None
        if self._crypto is not None and row.state_key is None:
            req = await self._crypto.send_request(row.room_id, row.event_type, row.txn_id,
                                                  row.content)
        answer = await self._http.call(req or row.request())
        event_id = answer.get("event_id")
        if not isinstance(event_id, str):
            raise TransientError(f"send answer without event_id: {answer!r:.200}")
        return event_id

    def statistics(self) -> OutboxStatistics:
        return OutboxStatistics(
            pending=self.pending,
            sent=self.sent,
            failed=self.failed,
            rate_limited=self.rate_limited,
            retries=self.retries,
        )
