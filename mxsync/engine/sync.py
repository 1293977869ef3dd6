"""The sync loop: one per client, the only place room events come in.

It long-polls /sync with a server-side filter reduced to mxsync's event types
and the state it needs, and hands every event to the consumers registered for
its room through bounded memory object streams (backpressure: a slow consumer
slows the loop, it does not grow a queue).

Invariants:
- Events reach consumers in one consistent order: the order /sync delivers,
  and for a gap the room's topological order. When a room's timeline comes
  back ``limited``, the loop first delivers the gap (state events of the gap
  in place, where they happened), then what of the ``state`` block the gap did
  not cover, then the timeline. The state block describes the state at the
  start of the timeline, after the gap, so delivering it first would put a
  change made in the gap (``m.room.power_levels``) before events that preceded it.
- No event is skipped: the gap is repaired by :mod:`mxsync.engine.gap`, which
  walks ``/messages`` *backwards* from ``prev_batch`` (what makes the server
  backfill events it caught up on only partly after a federation heal), spills
  what was not delivered yet to its store table and delivers it oldest first.
  It never bounds the walk with ``to=``: backfilled events have negative stream
  positions and a stream bound would exclude exactly them. It stops on what
  the client can see (a page with nothing new, or past the oldest event it
  delivered), bounded by ``max_gap_events``: the newest events of a larger gap
  are delivered, the truncation logged, and the state-block events are then
  delivered before it, as they happened before where it starts. The memory
  it takes is one page (``gap_page_events``), whatever the size of the gap.
  A server may backfill in the background after the walk stopped: each
  repaired gap is walked again a few times (bounded) before the next /syncs,
  and the timeline events it finds are delivered then (later than newer
  events: concurrent branches have no order features may rely on); state
  events it finds are not, as they would look current: the state the server
  resolves comes through /sync.
- No event is delivered twice: the delivered ids, the positions, the
  consumers and the state cache are :mod:`mxsync.engine.dispatch`'s (with
  the in-flight record a batch interrupted by a stop leaves); the loop keeps
  the last ``keep_seen`` ids per room in the store's ``sync_seen`` table,
  which the gap walk consults, and gap events delivered are marked there as
  they are handed out (shielded), so the retry's walk skips them.
- The since-token, the last delivered event per room and the ids of the
  batch's state-block and timeline events are persisted together, after the
  batch they cover has been handed to the consumers. History from
  before a client first saw a room is the features' job (they load snapshots
  and page /messages themselves): the very first sync of a new store (no
  since-token) only seeds the state cache and positions, it delivers nothing.
- It never spins: errors back off exponentially with jitter (capped), rate
  limits wait ``retry_after_ms``, and a server that answers an empty long-poll
  at once is polled at most ``1 / min_interval`` times a second (an answer
  with mxsync to-device events is not empty: live messages are not paced).
  The first sync
  of a run does not long-poll (timeout 0), so a returning client is live at
  once and ``wait_synced`` never waits out an empty poll. An error in the
  middle of a gap fill fails the batch; the retry walks the gap again and
  delivers only what was not delivered.
- It never sleeps through a recovery: a transient error is waited out on the
  client's shared :class:`~mxsync.engine.http.Liveness`, which probes a server
  that stopped answering and wakes the loop as soon as it answers again.
- A malformed event is skipped and logged; a malformed response is a transient
  error. Neither stops the loop.
- The state cache of a room is *complete* for the filter's state types
  (:meth:`SyncLoop.holds_state`) only once a sync handed its full state:
  the run's first sync without a since-token (every joined room), or, after
  one, the first sync that lists a room it did not (a room joined since: the
  server sends a newly joined room's full state). A run that starts from a
  saved since-token gets only changes, so its rooms are never complete (the
  engine reads their state from the server once); a room left is no longer.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from ..errors import MatrixError, RateLimitedError, TransientError
from ..protocol import api
from ..protocol.matrix_crdt import MCRDT_TYPES
from ..protocol.types import CREATE, ENCRYPTED, ENCRYPTION, NAMESPACE, POWER_LEVELS
from .crypto import HELD_NS, Cleartext, Crypto
from .dispatch import Batch, Dispatch
from .events import MessagesPage, RoomEvent, parse_events, parse_page
from .gap import GapRepair, create_tables, mark_seen
from .http import Backoff, Http
from .status import State, Status, SyncStatistics
from .store import Store
from .todevice import ToDevice

__all__ = ["SyncLoop", "Status", "SyncStatistics", "SYNC_TYPES"]

log = logging.getLogger("mxsync.sync")

#: Event types the sync filter lets through: mxsync's namespace, the state the engine
#: needs to judge permissions, encrypted rooms' events (decrypted before delivery),
#: and Matrix-CRDT's two types (documents opened with ``compat="matrix-crdt"``).
SYNC_TYPES: tuple[str, ...] = (f"{NAMESPACE}.*", POWER_LEVELS, CREATE, ENCRYPTION, ENCRYPTED,
                               *MCRDT_TYPES)

_NS = "sync"
_NS_LAST = "sync.last"


def _carried(event_type: str) -> bool:
    """Does the sync filter's ``state`` let ``event_type`` through (``SYNC_TYPES``;
    not the members an encrypting client adds: those are lazy-loaded, partial)?"""
    return any(event_type.startswith(t[:-1]) if t.endswith("*") else event_type == t
               for t in SYNC_TYPES)


def _synced_type(event_type: str) -> bool:
    """Would the sync filter (``SYNC_TYPES``, cleartext) let ``event_type`` through?"""
    if event_type == ENCRYPTED:  # pushed events are not decrypted
        return False
    return _carried(event_type)


class SyncLoop:
    """Owns the since-token and the gap repair; its :class:`Dispatch` the
    consumers, the delivered ids and the per-room state cache."""

    def __init__(
        self,
        http: Http,
        store: Store,
        *,
        timeline_limit: int = 50,
        timeout_ms: int = 30_000,
        min_interval: float = 0.2,
        backoff: Backoff | None = None,
        seen_per_room: int = 4_096,
        max_gap_events: int = 100_000,
        gap_page_events: int = 250,
        keep_seen: int = 16_384,
        crypto: Crypto | Cleartext | None = None,
        to_device: ToDevice | None = None,
    ) -> None:
        self._http = http
        #: Where the answers' to-device events go (after the Olm machine's turn).
        self.to_device = to_device
        self.crypto = crypto or Cleartext()
        self._store = store
        self.timeline_limit = timeline_limit
        self.timeout_ms = timeout_ms
        self.min_interval = min_interval
        self._backoff = backoff or Backoff(base=0.5, cap=30.0)
        #: The gap repair; ``max_gap_events`` bounds one gap (the newest events
        #: of a larger one are delivered and the truncation logged), ``keep_seen``
        #: the delivered ids remembered per room in the store.
        self._gap = GapRepair(store, max_events=max_gap_events,
                              page_events=gap_page_events, keep_seen=keep_seen)
        self._keep_seen = keep_seen
        self.dispatch = Dispatch(seen_per_room=seen_per_room)
        #: Rooms whose ``state`` holds every state event of the filter's types
        #: (see the module's invariants), and the joined rooms when known.
        self._complete: set[str] = set()
        self._joined: set[str] | None = None
        self.status = Status()
        self._synced = anyio.Event()
        #: Rooms newly joined or invited in the last sync (room ids).
        self.invites: set[str] = set()
        self.gap_fills = 0
        self.gap_events_fetched = 0
        self.gap_events_delivered = 0
        self.gap_pages = 0
        self.gaps_truncated = 0
        self.gap_rechecked = 0

    @property
    def state(self) -> dict[str, dict[tuple[str, str], RoomEvent]]:
        """room_id -> {(type, state_key): event} for the state this loop has seen."""
        return self.dispatch.state

    @property
    def gap_page_events(self) -> int:
        """Events per /messages page of a gap fill: the memory a gap fill holds."""
        return self._gap.page_events

    @gap_page_events.setter
    def gap_page_events(self, value: int) -> None:
        self._gap.page_events = value

    @property
    def max_gap_events(self) -> int:
        """The most events one gap fill delivers (its newest; the truncation is logged)."""
        return self._gap.max_events

    @max_gap_events.setter
    def max_gap_events(self, value: int) -> None:
        self._gap.max_events = value

    # -- consumers --------------------------------------------------------

    def subscribe(
        self, room_id: str | None, types: Iterable[str] = (), *, buffer: int = 1024
    ) -> AbstractAsyncContextManager[MemoryObjectReceiveStream[RoomEvent]]:
        """Receive the events of ``room_id`` (all rooms if None) whose type starts
        with one of ``types`` (all types if empty), from now on."""
        return self.dispatch.subscribe(room_id, types, buffer=buffer)

    async def wait_synced(self) -> None:
        await self._synced.wait()

    async def push(self, events: Iterable[RoomEvent]) -> int:
        """Deliver events that reached the client another way than /sync.

        An application service gets no /sync (Synapse refuses it): the
        homeserver pushes the events of its rooms in transactions instead
        (``mxsync.fleet.transactions``), which hand them here. Same dispatch as
        a sync batch: the types the sync filter would let through, the state
        cache kept current, no event delivered twice (the ids remembered per
        room). No position moves: a transaction the client has not
        acknowledged is pushed again, so there is no gap to repair. Returns
        how many were delivered. ``m.room.encrypted`` events are not
        delivered: an appservice has no keys to decrypt them with (the fleet's
        transaction endpoint counts and reports them).
        """
        batch = Batch(live=True)
        for ev in events:
            if _synced_type(ev.type):
                await self.dispatch.deliver(ev, batch, timeline=False, record=False)
        return batch.delivered

    def statistics(self) -> SyncStatistics:
        return SyncStatistics(state=self.status.state, syncs=self.status.syncs,
                              events=self.dispatch.events_delivered, gap_fills=self.gap_fills,
                              gap_events_fetched=self.gap_events_fetched,
                              gap_events_delivered=self.gap_events_delivered,
                              gap_pages=self.gap_pages, gaps_truncated=self.gaps_truncated,
                              gap_rechecked=self.gap_rechecked)

    def holds_state(self, room_id: str, event_type: str) -> bool:
        """Does the state cache hold ``room_id``'s current ``event_type`` state
        (or know there is none), with no request? Only for the types the sync
        filter carries, of a room whose full state a sync handed over."""
        return room_id in self._complete and _carried(event_type)

    def filter_json(self) -> str:
        types = [*SYNC_TYPES, *self.crypto.sync_types]
        room_filter = {
            "timeline": {"types": types, "limit": self.timeline_limit},
            "state": {"types": types, "lazy_load_members": True},
            "ephemeral": {"types": []},
            "account_data": {"types": []},
        }
        return json.dumps(
            {
                "presence": {"types": []},
                "account_data": {"types": []},
                "room": room_filter,
            },
            separators=(",", ":"),
        )

    def _messages_filter(self) -> str:
        return json.dumps({"types": list(SYNC_TYPES), "lazy_load_members": True})

    # -- the loop -----------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._load()
        task_status.started()
        try:
            while True:
                started = time.monotonic()
                try:
                    had_events = await self.sync_once()
                except RateLimitedError as exc:
                    self._set_state("backing_off", str(exc))
                    await anyio.sleep(max(0.1, (exc.retry_after_ms or 1000) / 1000))
                    continue
                except TransientError as exc:
                    self._set_state("backing_off", str(exc))
                    # Woken early once the server answers again after an outage.
                    await self._http.liveness.wait(self._backoff.next_delay())
                    continue
                except MatrixError as exc:
                    # A definite refusal from a live server: nothing to wake up for.
                    self._set_state("backing_off", str(exc))
                    await anyio.sleep(self._backoff.next_delay())
                    continue
                self._backoff.reset()
                self._set_state("synced", None)
                self._synced.set()
                if not had_events:
                    # A long-poll that comes back empty at once (a misbehaving server
                    # or proxy) must not turn this loop into a spin.
                    elapsed = time.monotonic() - started
                    if elapsed < self.min_interval:
                        await anyio.sleep(self.min_interval - elapsed)
        finally:
            self.status.state = "stopped"

    def _set_state(self, state: State, error: str | None) -> None:
        st = self.status
        if error is None:
            st.failures = 0
        else:
            st.failures += 1
        changed = st.state != state or (error is not None and st.last_error is None)
        st.state = state
        st.last_error = error if error is not None else None
        # Logged once per state change, not once per request.
        if changed:
            if error is None:
                log.info("sync: %s", state)
            else:
                log.warning("sync: %s (%s)", state, error)

    async def _load(self) -> None:
        await self._store.run(create_tables)
        since = await self._store.kv_get(_NS, "since")
        self.status.since = None if since is None else since.decode()
        for room_id, last in (await self._store.kv_items(_NS_LAST)).items():
            self.dispatch.room(room_id).last_event_id = last.decode()
        inflight = await self._store.kv_get(_NS, "inflight")
        if inflight is None:
            return
        self.dispatch.restore_inflight(inflight)

    async def sync_once(self, timeout_ms: int | None = None) -> bool:
        """One /sync round trip, dispatched and persisted. Returns whether it had events."""
        since = self.status.since
        if since is None or self.status.syncs == 0:  # the first of a run: no long-poll
            timeout = 0
        else:
            timeout = self.timeout_ms if timeout_ms is None else timeout_ms
        rechecked = await self._recheck_gaps()
        due = self._gap.next_due()
        if due is not None:
            # Do not long-poll past the next recheck of a repaired gap.
            timeout = min(timeout, max(0, int((due - time.monotonic()) * 1000)))
        resp = await self._http.call(api.sync(self.filter_json(), since, timeout),
                                     http_timeout=timeout / 1000 + 30)
        next_batch = resp.get("next_batch")
        if not isinstance(next_batch, str):
            raise TransientError("sync answer without next_batch")
        await self.crypto.receive_sync(resp)  # room keys first: this batch may need them
        # Ephemeral and never blocking: a stop before the since-token is saved
        # makes the server deliver them again (consumers are idempotent). An answer
        # with only to-device events is news, not an empty poll to pace.
        to_device = 0 if self.to_device is None else self.to_device.receive_sync(resp)
        rooms = resp.get("rooms") if isinstance(resp.get("rooms"), dict) else {}
        assert isinstance(rooms, dict)
        joined = rooms.get("join") if isinstance(rooms.get("join"), dict) else {}
        invited = rooms.get("invite") if isinstance(rooms.get("invite"), dict) else {}
        left = rooms.get("leave") if isinstance(rooms.get("leave"), dict) else {}
        assert isinstance(joined, dict) and isinstance(invited, dict) and isinstance(left, dict)
        listed = {r for r, room in joined.items() if isinstance(room, dict)}
        # Full state: every room of a first sync, a room new to a known joined set.
        full = listed if since is None else (
            set() if self._joined is None else listed - self._joined)
        for room_id in self.crypto.recoverable_rooms():
            # Keys arrived (to-device) for events held in a room with no news:
            # an empty entry makes _sync_room decrypt and deliver them.
            if room_id not in joined:
                joined = {**joined, room_id: {"timeline": {"events": []}}}
        self.invites |= set(invited)
        # The first sync of a client without a since-token returns recent
        # history, not news: it only seeds the state cache and positions.
        batch = Batch(live=since is not None)
        last_changed: dict[str, bytes] = {}
        try:
            for room_id, room in joined.items():
                if not isinstance(room, dict):
                    continue
                self.invites.discard(room_id)
                await self._sync_room(room_id, room, batch)
                mem = self.dispatch.rooms.get(room_id)
                if mem is not None and mem.last_event_id is not None:
                    last_changed[room_id] = mem.last_event_id.encode()
        except BaseException:
            # Stopped halfway through a batch: the since-token still points before
            # it, so the next start fetches it again. Remember how far it got so
            # that nothing is delivered twice. (After kill -9 nothing runs here;
            # consumers must then tolerate a repeat, see PROTOCOL.md.)
            if batch.delivered:
                record = self.dispatch.inflight_record(batch)
                with anyio.CancelScope(shield=True):
                    await self._store.kv_set(_NS, "inflight", record)
            raise

        held = self.crypto.held_rows()  # events held for a key, kept with the position

        def persist(conn: Any) -> None:
            if held is not None:
                conn.execute("DELETE FROM kv WHERE ns=?", (HELD_NS,))
                conn.executemany("INSERT INTO kv(ns, key, value) VALUES (?, ?, ?)",
                                 [(HELD_NS, k, v) for k, v in held])
            conn.execute(
                "INSERT INTO kv(ns, key, value) VALUES (?, 'since', ?) "
                "ON CONFLICT(ns, key) DO UPDATE SET value=excluded.value",
                (_NS, next_batch.encode()),
            )
            conn.executemany(
                "INSERT INTO kv(ns, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT(ns, key) DO UPDATE SET value=excluded.value",
                [(_NS_LAST, r, v) for r, v in last_changed.items()],
            )
            conn.execute("DELETE FROM kv WHERE ns=? AND key='inflight'", (_NS,))
            mark_seen(conn, [(r, i) for r, i in batch.ids], self._keep_seen)

        # Shielded: the batch has been handed out, so its position must be kept
        # even when the client is being stopped right now.
        with anyio.CancelScope(shield=True):
            await self._store.run(persist)
        if held is not None:
            self.crypto.held_written()
        self.status.since = next_batch
        self.status.syncs += 1
        if since is None:
            self._joined = set()
        if self._joined is not None:
            self._joined = (self._joined | listed) - set(left)
        self._complete = (self._complete | full) - set(left)
        await self.crypto.after_sync()  # key requests out, key requests answered
        return bool(batch.delivered) or bool(invited) or rechecked or bool(to_device)

    # -- one room of a batch --------------------------------------------------

    async def _sync_room(self, room_id: str, room: dict[str, Any], batch: Batch) -> None:
        """Deliver one room's part of a sync answer, in timeline order."""
        state = room.get("state") if isinstance(room.get("state"), dict) else {}
        timeline = room.get("timeline") if isinstance(room.get("timeline"), dict) else {}
        assert isinstance(state, dict) and isinstance(timeline, dict)
        raw_state = state.get("events") if isinstance(state.get("events"), list) else []
        raw_timeline = timeline.get("events") if isinstance(timeline.get("events"), list) else []
        assert isinstance(raw_state, list) and isinstance(raw_timeline, list)
        state_events = self.crypto.decrypt(room_id, parse_events(room_id, raw_state), hold=False)
        timeline_events = self.crypto.decrypt(room_id, parse_events(room_id, raw_timeline),
                                              hold=batch.live)  # the first sync delivers nothing
        mem = self.dispatch.rooms.get(room_id)
        prev_batch = timeline.get("prev_batch")
        if not (
            timeline.get("limited") is True
            and batch.live
            and mem is not None
            and mem.last_event_id is not None
            and isinstance(prev_batch, str)
        ):
            # Nothing to fill (or no position to fill from: a room new to us, the
            # first sync of a new store): the state block describes the start of
            # the timeline, so it comes first.
            for ev in state_events:
                await self.dispatch.deliver(ev, batch, timeline=False)
            for ev in timeline_events:
                await self.dispatch.deliver(ev, batch, timeline=True)
            return
        await self._fill_gap(
            room_id, prev_batch, mem.last_event_id, state_events, timeline_events, batch
        )
        for ev in timeline_events:
            await self.dispatch.deliver(ev, batch, timeline=True)

    # -- gap fill -------------------------------------------------------------

    async def _fill_gap(
        self,
        room_id: str,
        prev_batch: str,
        last_event_id: str,
        state_events: list[RoomEvent],
        timeline_events: list[RoomEvent],
        batch: Batch,
    ) -> None:
        """Deliver the events the timeline left out (:mod:`mxsync.engine.gap`),
        oldest first, and the state block in its place."""
        self.gap_fills += 1
        mem = self.dispatch.room(room_id)
        block = {ev.event_id: ev for ev in state_events}
        covered: set[str] = set()
        scan = await self._gap.collect(
            room_id, prev_batch, lambda t: self._messages(room_id, t, "b"),
            last_event_id=last_event_id, seen=lambda i: i in mem.seen,
            exclude={ev.event_id for ev in timeline_events},
        )
        self.gap_events_fetched += scan.fetched
        self.gap_pages += scan.pages
        if scan.truncated:
            self.gaps_truncated += 1
            # The fill starts later than our position: the state-block events it
            # does not reach happened before where it starts.
            for ev in state_events:
                if ev.event_id not in covered:
                    await self.dispatch.deliver(ev, batch, timeline=False)

        async def deliver(ev: RoomEvent) -> bool:
            in_block = ev.event_id in block
            if in_block:
                covered.add(ev.event_id)
            # A state-block event may come again with the same batch after a
            # stop, outside any gap: remember its id. Other gap events are
            # marked delivered by the drain.
            return await self.dispatch.deliver(ev, batch, timeline=True, record=in_block)

        count = await self._gap.drain(room_id, deliver)
        # State that changed without an event in the gap (a state reset), or
        # an old event: the block says it holds at the start of the timeline.
        for ev in state_events:
            if ev.event_id not in covered:
                await self.dispatch.deliver(ev, batch, timeline=False)
        self.gap_events_delivered += count
        if not scan.truncated:
            self._gap.schedule(room_id, prev_batch)
        log.info("filled a gap of %d event(s) in %s (%d fetched in %d page(s)%s)", count,
                 room_id, scan.fetched, scan.pages, ", truncated" if scan.truncated else "")

    async def _recheck_gaps(self) -> bool:
        """Walk due repaired gaps again (:mod:`mxsync.engine.gap`, "Rechecks") and
        deliver what the server backfilled since; whether anything came."""
        found = 0
        for r in self._gap.due():
            seen = self.dispatch.room(r.room_id).seen
            batch = Batch(live=True)
            await self._gap.collect(
                r.room_id, r.prev_batch, functools.partial(self._messages, r.room_id,
                                                           direction="b"),
                last_event_id=None, seen=seen.__contains__, exclude=set())

            async def deliver(ev: RoomEvent, batch: Batch = batch) -> bool:
                if ev.state_key is not None:
                    # Old state, found late: handed out now it would look current
                    # (levels, declarations). The state /sync resolves comes anyway.
                    return False
                # Not a position either: the timeline has moved on past it.
                return await self.dispatch.deliver(ev, batch, timeline=False, record=False)

            count = await self._gap.drain(r.room_id, deliver)
            if count:
                self.gap_rechecked += count
                log.info("a recheck of a gap in %s found %d more event(s)", r.room_id, count)
            found += count
        return bool(found)

    async def _messages(self, room_id: str, token: str | None,
                        direction: api.Direction) -> MessagesPage:
        """One /messages page of the sync filter's types (never bounded by ``to=``:
        backfilled events have negative stream positions, see DESIGN)."""
        answer = await self._http.call(api.room_messages(
            room_id, token, direction, self.gap_page_events,
            filter_json=self._messages_filter(),
        ))
        return self.crypto.decrypt_page(room_id, parse_page(room_id, answer), hold=True)
