"""The writer: sealing batches and snapshots, pacing, storing, and watching what is sent.

It owns the writer's progress (edits stored, sent, acknowledged), the batch in
flight and the send error that stopped sending, the snapshot decision
(``SnapshotPolicy`` is told by the replica; the writer decides and seals), the
cache's bookkeeping (the position and ``covers`` the stored state stands at,
when it was written, whether it is stale) and the events that wake the writer
task and the callers of ``flush``/``persist``. It reads the local changes
(:class:`~mxsync.docs.local.LocalChanges`) and the replica; it writes through
``Engine.stage`` (outbox entries and cache rows in one SQLite transaction).

Invariants (numbers as in :mod:`mxsync.docs`)
---------------------------------------------
1. An edit is made (survives a crash) once the writer has stored it: in the doc
   log, and in the outbox when it is sent. The writer stores every edit at most
   ``batch_delay`` after it (plus one SQLite commit).
2. At most one batch per document is in flight. While it is (or while the outbox
   waits out a rate limit or an outage), new edits are stored in the doc log and
   join the next batch, which is the diff since the last batch sent.
6. A snapshot is taken only when every local change it holds is in the outbox
   ahead of it (same lane), so that every change also travels as an update.
7. The cache is written with the outbox rows it depends on, at most every
   ``cache_interval`` seconds, on snapshot and on close.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Final

import anyio
import anyio.abc
import msgspec

from ..engine.events import RoomEvent
from ..engine.outbox import OutboxEntry, SendHandle, Staging
from ..engine.surface import Engine
from ..errors import ConfigError, MatrixError, MxsyncError
from ..protocol import docs as proto
from ..protocol.types import DOC_SNAPSHOT, DOC_UPDATE, MAX_CONTENT_BYTES
from . import cache
from .local import LocalChanges
from .replica import Replica

__all__ = ["Writer"]

log = logging.getLogger("mxsync.docs")

#: A burst of edits closer than this is one batch (bounded by ``batch_delay``).
_QUIET: Final = 0.005

COUNTERS: Final = (
    "batches_sent", "update_events_sent", "bytes_sent", "payload_bytes_sent",
    "snapshots_sent", "snapshot_events_sent", "cache_writes", "log_writes",
)


class _Step(msgspec.Struct):
    """What one writer step stores, in one SQLite transaction."""

    outbox: list[OutboxEntry]
    n_updates: int  # the first n_updates outbox rows are the batch, the rest a snapshot
    log: bytes | None
    meta: bytes
    state: bytes | None


class Writer:
    """Stores and sends one document's local changes (see the module docstring)."""

    def __init__(
        self,
        client: Engine,
        room_id: str,
        name: str,
        *,
        replica: Replica,
        local: LocalChanges,
        batch_delay: float,
        cache_interval: float,
        read_only: bool,
    ) -> None:
        self.client = client
        self.room_id = room_id
        self.name = name
        self.lane = f"doc:{name}"
        self.replica = replica
        self.local = local
        self.policy = replica.policy
        self.read_only = read_only
        self._batch_delay = batch_delay
        self._cache_interval = cache_interval
        self.tg: anyio.abc.TaskGroup | None = None
        self.persisted_seq = 0
        self._sent_seq = 0
        self.acked_seq = 0
        self._last_batch = -math.inf
        self._flush_requested = False
        self.inflight = False
        self.send_error: MxsyncError | None = None
        self.may_snapshot = not read_only
        self.snapshot_wanted = False
        #: A concurrent branch was merged: the next snapshot is due whatever the policy.
        self._fresh = False
        #: The declaration is in the room (set by the load, or from the cache).
        self.declared = False
        #: Updates go in the short form (the declaration says ``yjs-v1-short``).
        self.short = False
        #: The initial load is done (snapshots wait for it).
        self.loaded = False
        self._wake = anyio.Event()
        self._acked = anyio.Event()
        self.stopped = False
        self.state_bytes = 0
        # cache
        self.base_position: str | None = None
        self.base_covers: str | None = None
        self._dirty = False  # a log entry was stored since the last state
        self._cached_moves = 0  # replica.moves when the last state was taken
        self._last_base = time.monotonic()
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        #: JSON bytes per event content; the document lowers it in an encrypted room.
        self.max_bytes = MAX_CONTENT_BYTES
        #: What a timeline batch waits for before it is sent (the live channel's
        #: send of the same changes; set by the document, see mxsync.docs.live).
        self.hold: Callable[[], anyio.Event | None] = lambda: None
        #: A member asked for a snapshot (a late joiner of an encrypted room):
        #: the next one goes out whatever the policy says.
        self._snapshot_asked = False

    def wake(self) -> None:
        self._wake.set()

    @property
    def _stale(self) -> bool:
        """Has the document moved since the cached state was written?"""
        return self._dirty or self.replica.moves != self._cached_moves

    # -- waiting -------------------------------------------------------------------

    def check_running(self) -> None:
        if self.stopped:
            raise RuntimeError(
                f"document {self.name!r} stopped (its task group was cancelled); "
                "unsent edits stay in the store and go out when it is opened again"
            )

    async def flush(self) -> None:
        target = self.local.edit_seq
        if self.acked_seq < target:
            # Wake the writer once; it, and the task watching the batch in flight,
            # signal every step. Waking it again from here would make them spin.
            self._flush_requested = True
            self._wake.set()
        while self.acked_seq < target:
            if self.send_error is not None:
                raise self.send_error
            self.check_running()
            await self._acked.wait()

    async def persist(self) -> None:
        target = self.local.edit_seq
        if self.persisted_seq < target:
            self._flush_requested = True
            self._wake.set()
        while self.persisted_seq < target:
            self.check_running()
            await self._acked.wait()

    def _notify(self) -> None:
        self._acked.set()
        self._acked = anyio.Event()

    def fresh_snapshot(self) -> None:
        """A concurrent branch was merged: post a snapshot soon, whatever the policy
        counts, unless a newer snapshot seen by then already covers the state."""
        if self.may_snapshot:
            self._fresh = True
            self.snapshot_wanted = True
            self._wake.set()

    def consider_snapshot(self) -> None:
        """After an update was seen: want a snapshot if the policy says so."""
        if (
            not self.snapshot_wanted
            and self.may_snapshot
            and self.policy.should_snapshot(self.state_bytes)
        ):
            self.snapshot_wanted = True
            self._wake.set()

    def snapshot_requested(self, ev: RoomEvent) -> None:
        """A member who cannot read the history asked for this document: answer
        with a snapshot, encrypted in a session the newcomer has."""
        if ev.content.get("doc") != self.name or ev.txn_id is not None:  # or our own echo
            return
        if self.read_only or not self.may_snapshot or self.replica.doc.get_state() == b"\x00":
            return  # nothing to give
        log.info("%r in %s: %s asked for a snapshot", self.name, self.room_id, ev.sender)
        self.snapshot_wanted = self._snapshot_asked = True
        self._wake.set()

    # -- the task ------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._write_forever()
        finally:
            # Whoever waits in flush()/persist() must learn that nothing will come.
            self.stopped = True
            self._notify()

    async def _write_forever(self) -> None:
        while True:
            timeout = math.inf
            if self._stale:
                timeout = max(0.0, self._last_base + self._cache_interval - time.monotonic())
            if self._sendable() and self.local.edit_seq > self._sent_seq:
                # Edits wait for the outbox's next slot (rate limit): wake then.
                timeout = min(timeout, self._slot_wait())
            with anyio.move_on_after(timeout):
                await self._wake.wait()
            self._wake = anyio.Event()
            if (
                self.local.edit_seq > self.persisted_seq
                and time.monotonic() - self._last_batch < self._batch_delay
            ):
                # In a burst: let the edits that follow join this batch. An edit
                # made while idle goes out at once (latency).
                await self._debounce()
            await self.step()

    async def _debounce(self) -> None:
        first = self.local.first_unpersisted or time.monotonic()
        deadline = first + self._batch_delay
        while not self._flush_requested:
            now = time.monotonic()
            if now >= deadline:
                return
            seen = self.local.edit_seq
            await anyio.sleep(min(_QUIET, deadline - now))
            if self.local.edit_seq == seen:
                return

    async def final_save(self) -> None:
        for sender, set_id, first in self.replica.incomplete_sets():
            # Logged once, when it can no longer complete in this session.
            log.warning("%s: chunk set %s of %r from %s (first chunk %s) never "
                        "completed; nothing of it was applied", self.client.user_id,
                        set_id, self.name, sender, first)
        with anyio.CancelScope(shield=True):
            try:
                await self.step(closing=True)
            except RuntimeError as exc:  # the client (and its store) closed first
                log.error("could not save %r of %s on close: %s", self.name, self.room_id, exc)

    # -- one step --------------------------------------------------------------------

    def _sendable(self, *, closing: bool = False) -> bool:
        """May a batch be sealed now, rate limits aside?"""
        return (
            self.declared
            and not self.read_only
            and self.send_error is None
            and (closing or not self.inflight)
        )

    def _slot_wait(self) -> float:
        """Seconds until the outbox expects a send to be accepted (0.0: now)."""
        return max(0.0, self.client.next_slot() - time.monotonic())

    async def step(self, *, closing: bool = False) -> None:
        """Store (and maybe send) what changed: one SQLite transaction, shielded."""
        self._flush_requested = False
        # Under a rate limit the next batch is sealed when the outbox expects it
        # to be accepted, so that it holds every edit made while waiting; sealed
        # at once it would wait behind a 429 with only the first ones
        # (docs/benchmarks.md: typing latency under the default limits).
        if closing:
            can_send = self._sendable(closing=True)
        else:
            can_send = self._sendable() and self._slot_wait() == 0.0
        seq = self.local.edit_seq
        contents: list[tuple[str, dict[str, Any]]] = []
        update, log_blob, unsent_ds = self._seal_batch(can_send, seq, contents)
        self.persisted_seq = seq
        self.local.first_unpersisted = None
        if log_blob is not None:
            self._last_batch = time.monotonic()
            self._dirty = True
        n_updates = len(contents)
        state = None
        if can_send and not closing:
            state = self._seal_snapshot(contents)
        if state is None and self._stale and (
            closing or time.monotonic() - self._last_base >= self._cache_interval
        ):
            state = self.replica.doc.get_update()
            self.state_bytes = len(state)
        if state is not None:
            self.base_position = self.replica.resume_position()
            self.base_covers = self.replica.snapshot_covers()
            self._dirty = False
            self._cached_moves = self.replica.moves
            self._last_base = time.monotonic()
        if contents or log_blob is not None or state is not None:
            rows = [self.client.new_entry(self.room_id, etype, c, lane=self.lane)
                    for etype, c in contents]
            step = _Step(rows, n_updates, log_blob, self._meta(unsent_ds=unsent_ds), state)
            await self._store(step, len(update or b""), seq, closing=closing)
        if not self.inflight and self.send_error is None:
            # Nothing in flight: every batch stored so far has been answered.
            self.acked_seq = max(self.acked_seq, self._sent_seq)
        self._notify()

    def _seal_batch(
        self, can_send: bool, seq: int, contents: list[tuple[str, dict[str, Any]]]
    ) -> tuple[bytes | None, bytes | None, bool]:
        """Add the batch's events to ``contents``: (update, log blob, deletions unsent)."""
        unsent_ds = self.local.unsent_ds
        if can_send and seq > self._sent_seq:
            update = self.local.take_batch()
            if update is not None:
                try:
                    contents += [(DOC_UPDATE, c) for c in proto.encode_update(
                        self.name, update, max_bytes=self.max_bytes, short=self.short)]
                except ConfigError as exc:  # over MAX_PAYLOAD_BYTES: no event can carry it
                    self.send_error = exc
                    log.error("%r in %s: a batch of %d bytes cannot be sent (%s); local "
                              "edits are kept but no longer sent", self.name, self.room_id,
                              len(update), exc)
            self._sent_seq = seq
            return update, update, False
        if seq > self.persisted_seq:
            return None, self.local.take_log(), True
        return None, None, unsent_ds

    def _seal_snapshot(self, contents: list[tuple[str, dict[str, Any]]]) -> bytes | None:
        """Add a snapshot's events to ``contents`` if one is due: its state, or None."""
        if not (
            self.snapshot_wanted
            and self.may_snapshot
            and self.loaded
            and self.replica.allows(self.client.user_id, DOC_SNAPSHOT)
        ):
            return None
        self.snapshot_wanted = False
        doc = self.replica.doc
        state = doc.get_update()
        self.state_bytes = len(state)
        fresh, self._fresh = self._fresh, False
        newest = self.replica.newest_snapshot
        if fresh and newest is not None and proto.state_vector_covers(newest[1],
                                                                      doc.get_state()):
            fresh = False  # someone posted one that holds every insert we have
        # A late joiner that cannot decrypt the history asked for one.
        asked, self._snapshot_asked = self._snapshot_asked, False
        if not fresh and not asked and not self.policy.should_snapshot(len(state)):
            return None
        try:
            contents += [
                (DOC_SNAPSHOT, c)
                for c in proto.encode_snapshot(
                    self.name, state, doc.get_state(), self.replica.snapshot_covers(),
                    updates_since=self.policy.updates_since, max_bytes=self.max_bytes,
                )
            ]
        except ConfigError as exc:
            self.may_snapshot = False
            log.error("%r in %s: no more snapshots: %s", self.name, self.room_id, exc)
        self.policy.observe_snapshot()
        return state

    def _meta(self, *, unsent_ds: bool) -> bytes:
        return cache.encode_meta(
            cache.Meta(
                client_id=self.replica.doc.client_id,
                local_clients=self.local.local_clients(),
                sent=self.local.sent,
                unsent_ds=unsent_ds,
                declared=self.declared,
                position=self.base_position,
                covers=self.base_covers,
                updates_since=self.policy.updates_since,
                bytes_since=self.policy.bytes_since,
            )
        )

    async def _store(self, step: _Step, payload: int, seq: int, *, closing: bool) -> None:
        def write(tx: Staging) -> None:
            for entry in step.outbox:
                tx.add(entry)
            cache.write(tx.conn, self.room_id, self.name, log=step.log, meta=step.meta,
                        state=step.state)

        hold = None if closing or not step.n_updates else self.hold()
        with anyio.CancelScope(shield=True):
            _, handles = await self.client.stage(write, hold=hold)
        n_updates = step.n_updates
        self.counts["log_writes"] += step.log is not None
        self.counts["cache_writes"] += step.state is not None
        if handles:
            upd, snap = handles[:n_updates], handles[n_updates:]
            self.counts["batches_sent"] += bool(upd)
            self.counts["update_events_sent"] += len(upd)
            self.counts["bytes_sent"] += sum(len(r.content) for r in step.outbox[:n_updates])
            self.counts["payload_bytes_sent"] += payload
            self.counts["snapshot_events_sent"] += len(snap)
            if not closing and self.tg is not None:
                self.inflight = True
                self.tg.start_soon(self._watch, upd, snap, seq)

    async def _watch(self, updates: list[SendHandle], snapshot: list[SendHandle],
                     seq: int) -> None:
        try:
            for handle in updates:
                try:
                    await handle.wait()
                except MatrixError as exc:
                    self.send_error = exc
                    log.error("%s: the homeserver refused an update of %r in %s: %s; "
                              "local edits are kept but no longer sent",
                              self.client.user_id, self.name, self.room_id, exc)
                    return
            if self.send_error is None:
                self.acked_seq = max(self.acked_seq, seq)
            for handle in snapshot:
                try:
                    await handle.wait()
                except MatrixError as exc:
                    self.may_snapshot = False
                    log.warning("snapshot of %r refused (%s); not snapshotting any more",
                                self.name, exc)
                    return
            if snapshot:
                self.counts["snapshots_sent"] += 1
        finally:
            self.inflight = False
            self._notify()
            self._wake.set()
