"""The sync loop: one per client, the only place room events come in.

It long-polls /sync with a server-side filter reduced to mxsync's event types
and the state it needs, and hands every event to the consumers registered for
its room through bounded memory object streams (backpressure: a slow consumer
slows the loop, it does not grow a queue).

Invariants:
- No event is skipped: when a room's timeline comes back ``limited``, the loop
  pages /messages backwards from ``prev_batch`` to the last event it delivered
  in that room and delivers the gap, oldest first, before the timeline.
- No event is delivered twice: event ids are remembered per room (bounded LRU;
  it only has to span one batch and its gap fill, which never overlap, plus
  the in-flight record of a batch interrupted by a stop).
- The since-token and the last delivered event per room are persisted together,
  after the batch they cover has been handed to the consumers. History from
  before a client first saw a room is the features' job (they load snapshots
  and page /messages themselves): the very first sync of a new store (no
  since-token) only seeds the state cache and positions, it delivers nothing.
- It never spins: errors back off exponentially with jitter (capped), rate
  limits wait ``retry_after_ms``, and a server that answers an empty long-poll
  at once is polled at most ``1 / min_interval`` times a second.
- It never sleeps through a recovery: a transient error is waited out on the
  client's shared :class:`~mxsync.engine.http.Liveness`, which probes a server
  that stopped answering and wakes the loop as soon as it answers again.
- A malformed event is skipped and logged; a malformed response is a transient
  error. Neither stops the loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import MatrixError, RateLimitedError
from ..protocol.types import NAMESPACE
from .events import RoomEvent, parse_event
from .http import Backoff, Http, TransientError, q
from .store import Store

__all__ = ["SyncLoop", "Status", "SYNC_TYPES"]

log = logging.getLogger("mxsync.sync")

#: Event types the sync filter lets through: mxsync's namespace plus the
#: state the engine needs to judge permissions.
SYNC_TYPES: tuple[str, ...] = (f"{NAMESPACE}.*", "m.room.power_levels", "m.room.create")

_NS = "sync"
_NS_LAST = "sync.last"

State = Literal["connecting", "synced", "backing_off", "stopped"]


@dataclass
class Status:
    """What the sync loop is doing; ``last_error`` stays set until the next success."""

    state: State = "connecting"
    last_error: str | None = None
    failures: int = 0
    syncs: int = 0
    since: str | None = None


@dataclass(eq=False)
class _Consumer:
    room_id: str | None
    prefixes: tuple[str, ...]
    stream: MemoryObjectSendStream[RoomEvent]

    def wants(self, ev: RoomEvent) -> bool:
        if self.room_id is not None and ev.room_id != self.room_id:
            return False
        return not self.prefixes or ev.type.startswith(self.prefixes)


@dataclass
class _RoomMemory:
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    last_event_id: str | None = None


class SyncLoop:
    """Owns the since-token, the event dispatch and the per-room state cache."""

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
        max_gap_events: int = 1_000_000,
    ) -> None:
        self._http = http
        self._store = store
        self.timeline_limit = timeline_limit
        self.timeout_ms = timeout_ms
        self.min_interval = min_interval
        self._backoff = backoff or Backoff(base=0.5, cap=30.0)
        self._seen_per_room = seen_per_room
        self._max_gap_events = max_gap_events
        self._consumers: list[_Consumer] = []
        self._rooms: dict[str, _RoomMemory] = {}
        #: room_id -> {(type, state_key): event} for the state this loop has seen.
        self.state: dict[str, dict[tuple[str, str], RoomEvent]] = {}
        self.status = Status()
        self._synced = anyio.Event()
        self._state_changed = anyio.Event()
        #: Rooms newly joined or invited in the last sync (room ids).
        self.invites: set[str] = set()
        self.events_delivered = 0
        self.gap_fills = 0

    # -- consumers --------------------------------------------------------

    @asynccontextmanager
    async def subscribe(
        self, room_id: str | None, types: Iterable[str] = (), *, buffer: int = 1024
    ) -> AsyncIterator[MemoryObjectReceiveStream[RoomEvent]]:
        """Receive the events of ``room_id`` (all rooms if None) whose type starts
        with one of ``types`` (all types if empty), from now on."""
        send, recv = anyio.create_memory_object_stream[RoomEvent](buffer)
        consumer = _Consumer(room_id, tuple(types), send)
        self._consumers.append(consumer)
        try:
            async with recv:
                yield recv
        finally:
            if consumer in self._consumers:
                self._consumers.remove(consumer)
            send.close()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def filter_json(self) -> str:
        types = list(SYNC_TYPES)
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
        since = await self._store.kv_get(_NS, "since")
        self.status.since = None if since is None else since.decode()
        for room_id, last in (await self._store.kv_items(_NS_LAST)).items():
            self._rooms.setdefault(room_id, _RoomMemory()).last_event_id = last.decode()
        inflight = await self._store.kv_get(_NS, "inflight")
        if inflight is not None:
            try:
                pairs = json.loads(inflight)
                for room_id, event_id in pairs:
                    self._rooms.setdefault(room_id, _RoomMemory()).seen[event_id] = None
            except (ValueError, TypeError):
                log.warning("ignoring an unreadable in-flight record in the store")

    async def sync_once(self, timeout_ms: int | None = None) -> bool:
        """One /sync round trip, dispatched and persisted. Returns whether it had events."""
        since = self.status.since
        query: dict[str, Any] = {
            "filter": self.filter_json(),
            "timeout": 0 if since is None else (self.timeout_ms if timeout_ms is None
                                                 else timeout_ms),
        }
        if since is not None:
            query["since"] = since
        http_timeout = query["timeout"] / 1000 + 30
        resp = await self._http.request(
            "GET", "/_matrix/client/v3/sync", query=query, http_timeout=http_timeout
        )
        next_batch = resp.get("next_batch")
        if not isinstance(next_batch, str):
            raise TransientError("sync answer without next_batch")
        rooms = resp.get("rooms") if isinstance(resp.get("rooms"), dict) else {}
        assert isinstance(rooms, dict)
        joined = rooms.get("join") if isinstance(rooms.get("join"), dict) else {}
        invited = rooms.get("invite") if isinstance(rooms.get("invite"), dict) else {}
        assert isinstance(joined, dict) and isinstance(invited, dict)
        self.invites |= set(invited)
        delivered: list[list[str]] = []
        last_changed: dict[str, bytes] = {}
        try:
            for room_id, room in joined.items():
                if not isinstance(room, dict):
                    continue
                self.invites.discard(room_id)
                state_events, timeline_events = await self._room_events(
                    room_id, room, resumed=since is not None
                )
                # The first sync of a client without a since-token returns recent
                # history, not news: it only seeds the state cache and positions.
                live = since is not None
                for ev in state_events:
                    if await self._deliver(ev, timeline=False, dispatch=live):
                        delivered.append([room_id, ev.event_id])
                for ev in timeline_events:
                    if await self._deliver(ev, timeline=True, dispatch=live):
                        delivered.append([room_id, ev.event_id])
                mem = self._rooms.get(room_id)
                if mem is not None and mem.last_event_id is not None:
                    last_changed[room_id] = mem.last_event_id.encode()
        except BaseException:
            # Stopped halfway through a batch: the since-token still points before
            # it, so the next start fetches it again. Remember what was already
            # delivered so that it is not delivered twice. (After kill -9 nothing
            # runs here; consumers must then tolerate a repeat, see PROTOCOL.md.)
            if delivered:
                with anyio.CancelScope(shield=True):
                    await self._store.kv_set(
                        _NS, "inflight", json.dumps(delivered).encode()
                    )
            raise

        def persist(conn: Any) -> None:
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

        # Shielded: the batch has been handed out, so its position must be kept
        # even when the client is being stopped right now.
        with anyio.CancelScope(shield=True):
            await self._store.run(persist)
        self.status.since = next_batch
        self.status.syncs += 1
        return bool(delivered) or bool(invited)

    async def _room_events(
        self, room_id: str, room: dict[str, Any], *, resumed: bool
    ) -> tuple[list[RoomEvent], list[RoomEvent]]:
        """The room's state block, and its timeline with any gap before it filled."""
        state = room.get("state") if isinstance(room.get("state"), dict) else {}
        timeline = room.get("timeline") if isinstance(room.get("timeline"), dict) else {}
        assert isinstance(state, dict) and isinstance(timeline, dict)
        raw_state = state.get("events") if isinstance(state.get("events"), list) else []
        raw_timeline = timeline.get("events") if isinstance(timeline.get("events"), list) else []
        assert isinstance(raw_state, list) and isinstance(raw_timeline, list)
        out: list[RoomEvent] = []
        mem = self._rooms.get(room_id)
        prev_batch = timeline.get("prev_batch")
        if (
            timeline.get("limited") is True
            and resumed
            and mem is not None
            and mem.last_event_id is not None
            and isinstance(prev_batch, str)
        ):
            out.extend(await self._fill_gap(room_id, prev_batch, mem.last_event_id))
        out.extend(self._parse_all(room_id, raw_timeline))
        return self._parse_all(room_id, raw_state), out

    def _parse_all(self, room_id: str, raws: list[Any]) -> list[RoomEvent]:
        out = []
        for raw in raws:
            ev = parse_event(room_id, raw)
            if ev is None:
                log.warning("skipping a malformed event in %s: %.200r", room_id, raw)
                continue
            out.append(ev)
        return out

    async def _fill_gap(self, room_id: str, start: str, stop_at: str) -> list[RoomEvent]:
        """Page /messages backwards from ``start`` until ``stop_at``; oldest first."""
        self.gap_fills += 1
        collected: list[RoomEvent] = []
        token: str | None = start
        path = f"/_matrix/client/v3/rooms/{q(room_id)}/messages"
        while token is not None:
            page = await self._http.request(
                "GET",
                path,
                query={"from": token, "dir": "b", "limit": 1000, "filter": self._messages_filter()},
            )
            chunk = page.get("chunk") if isinstance(page.get("chunk"), list) else []
            assert isinstance(chunk, list)
            found = False
            for raw in chunk:
                if isinstance(raw, dict) and raw.get("event_id") == stop_at:
                    found = True
                    break
                ev = parse_event(room_id, raw)
                if ev is not None:
                    collected.append(ev)
            if found or not chunk:
                break
            end = page.get("end")
            token = end if isinstance(end, str) and end != token else None
            if len(collected) >= self._max_gap_events:
                log.error(
                    "gap in %s larger than %d events; delivering the newest only",
                    room_id, self._max_gap_events,
                )
                break
        collected.reverse()
        log.debug("filled a gap of %d event(s) in %s", len(collected), room_id)
        return collected

    async def _deliver(self, ev: RoomEvent, *, timeline: bool, dispatch: bool = True) -> bool:
        mem = self._rooms.setdefault(ev.room_id, _RoomMemory())
        if ev.event_id in mem.seen:
            return False
        mem.seen[ev.event_id] = None
        if len(mem.seen) > self._seen_per_room:
            mem.seen.popitem(last=False)
        if timeline:
            # Only timeline events mark our position: the state block may hold old events.
            mem.last_event_id = ev.event_id
        if ev.state_key is not None:
            self.state.setdefault(ev.room_id, {})[(ev.type, ev.state_key)] = ev
            self._state_changed.set()
            self._state_changed = anyio.Event()
        if not dispatch:
            return True
        self.events_delivered += 1
        for consumer in list(self._consumers):
            if not consumer.wants(ev):
                continue
            try:
                await consumer.stream.send(ev)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                if consumer in self._consumers:
                    self._consumers.remove(consumer)
        return True
