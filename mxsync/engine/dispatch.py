"""Handing the sync loop's events to their consumers, each event once.

:class:`Dispatch` is the half of the :class:`~mxsync.engine.sync.SyncLoop`
that owns what was delivered: the consumers registered through
``room_events`` (a room, type prefixes, a bounded stream each), per room the
ids delivered (a bounded LRU) and the position (the last timeline or gap
event delivered, where a gap fill starts from), the state cache (the newest
state event per ``(type, state_key)`` seen), and the in-flight record of a
batch a stop interrupted. The loop decides what to fetch and when, and
persists the since-token; every event it takes in goes through
:meth:`Dispatch.deliver`.

Invariants:
- No event is delivered twice: event ids are remembered per room (a bounded
  LRU in memory; the loop keeps the last ``keep_seen`` per room in the
  store's ``sync_seen`` table, which the gap walk consults). A batch
  interrupted by a stop leaves an in-flight record (:meth:`inflight_record`),
  its size bounded by the size of the sync answer, not of the gap: the
  position reached in each room and the ids of the state-block and timeline
  events already delivered.
- An event counts as delivered only once every consumer that wants it took
  it: a stop while one was still to take it leaves it to the next start.
- Consumers are slowed down, never skipped: ``send`` waits on a full stream
  (backpressure on the sync loop); a consumer whose stream is closed is dropped.
- Only timeline and gap events move a room's position: a state block may hold
  old events.
- The first sync of a new store (a batch that is not ``live``) seeds the
  state cache and the positions and hands nothing out.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .events import RoomEvent
from .fanout import registered

__all__ = ["Batch", "Dispatch", "RoomMemory"]

log = logging.getLogger("mxsync.sync")


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
class RoomMemory:
    """What one room has delivered: recent ids, and the position."""

    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    last_event_id: str | None = None


@dataclass
class Batch:
    """What one sync batch has handed out so far (its in-flight record on a stop)."""

    live: bool
    #: [room_id, event_id] of delivered events that fetching the batch again could
    #: return outside a gap fill: state-block and timeline events. Gap events are
    #: covered by the position instead, so this stays as small as the sync answer.
    ids: list[list[str]] = field(default_factory=list)
    #: Rooms whose position (last delivered timeline or gap event) moved.
    moved: set[str] = field(default_factory=set)
    delivered: int = 0


class Dispatch:
    """Consumers, delivered ids and positions, and the state cache of one sync loop."""

    def __init__(self, *, seen_per_room: int) -> None:
        self._seen_per_room = seen_per_room
        self._consumers: list[_Consumer] = []
        self.rooms: dict[str, RoomMemory] = {}
        #: room_id -> {(type, state_key): event} for the state this loop has seen.
        self.state: dict[str, dict[tuple[str, str], RoomEvent]] = {}
        self._state_changed = anyio.Event()
        #: Events handed out to consumers (live batches).
        self.events_delivered = 0

    def room(self, room_id: str) -> RoomMemory:
        """The memory of ``room_id`` (made empty the first time)."""
        return self.rooms.setdefault(room_id, RoomMemory())

    def subscribe(
        self, room_id: str | None, types: Iterable[str] = (), *, buffer: int = 1024
    ) -> AbstractAsyncContextManager[MemoryObjectReceiveStream[RoomEvent]]:
        """Receive the events of ``room_id`` (all rooms if None) whose type starts
        with one of ``types`` (all types if empty), from now on."""
        prefixes = tuple(types)
        return registered(self._consumers, lambda send: _Consumer(room_id, prefixes, send),
                          buffer)

    def remember(self, mem: RoomMemory, event_id: str) -> None:
        mem.seen[event_id] = None
        mem.seen.move_to_end(event_id)
        while len(mem.seen) > self._seen_per_room:
            mem.seen.popitem(last=False)

    async def deliver(
        self, ev: RoomEvent, batch: Batch, *, timeline: bool, record: bool = True
    ) -> bool:
        """Hand ``ev`` to the consumers that want it, unless it was delivered
        already; whether it was new. ``record``: keep its id in the batch's
        in-flight record; ``timeline``: it moves the room's position."""
        mem = self.room(ev.room_id)
        if ev.event_id in mem.seen:
            return False
        if ev.state_key is not None:
            self.state.setdefault(ev.room_id, {})[(ev.type, ev.state_key)] = ev
            self._state_changed.set()
            self._state_changed = anyio.Event()
        if batch.live:
            self.events_delivered += 1
            for consumer in list(self._consumers):
                if not consumer.wants(ev):
                    continue
                try:
                    await consumer.stream.send(ev)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    if consumer in self._consumers:
                        self._consumers.remove(consumer)
        # Handed out: only now does it count as delivered. A stop while a consumer
        # was still to take it leaves it to the next start.
        self.remember(mem, ev.event_id)
        batch.delivered += 1
        if record:
            batch.ids.append([ev.room_id, ev.event_id])
        if timeline:
            # Only timeline (and gap) events mark our position: the state block may
            # hold old events.
            mem.last_event_id = ev.event_id
            batch.moved.add(ev.room_id)
        return True

    # -- the in-flight record -----------------------------------------------------

    def inflight_record(self, batch: Batch) -> bytes:
        """The record of ``batch``, stopped halfway: ids delivered, positions moved."""
        record = {
            "ids": batch.ids,
            "last": {
                r: self.rooms[r].last_event_id
                for r in sorted(batch.moved)
                if self.rooms[r].last_event_id is not None
            },
        }
        return json.dumps(record).encode()

    def restore_inflight(self, raw: bytes) -> None:
        """Take in the record a stopped batch left (:meth:`inflight_record`)."""
        try:
            record = json.loads(raw)
            # Older versions wrote a bare list of [room_id, event_id] pairs.
            pairs = record if isinstance(record, list) else record["ids"]
            moved = {} if isinstance(record, list) else record["last"]
            for room_id, event_id in pairs:
                if isinstance(room_id, str) and isinstance(event_id, str):
                    self.remember(self.room(room_id), event_id)
            for room_id, event_id in moved.items():
                if isinstance(event_id, str):
                    # The batch got this far: a gap fill resumes from here.
                    self.room(room_id).last_event_id = event_id
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("ignoring an unreadable in-flight record in the store")
