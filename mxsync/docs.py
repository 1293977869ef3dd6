"""SyncedDoc: a ``pycrdt.Doc`` kept converged with every client that opens the same (room, name).

``async with client.open_doc(room_id, name) as sdoc:`` yields a SyncedDoc whose
``sdoc.doc`` is an ordinary ``pycrdt.Doc``. Local edits are sent, remote edits are
applied; the wire format is docs/PROTOCOL.md, section "Documents"
(``mxsync/protocol/docs.py``). This module owns the I/O around that protocol:
the local cache, batching, snapshots, loading and following a document.

Data path of a local edit: transaction observer (marks the document dirty) ->
writer task (at once when idle, at most ``batch_delay`` later in a burst) computes
the diff of this device's structs since the last batch
(``doc.get_update(baseline_sv)``) -> store (doc log and outbox, one SQLite
transaction) -> outbox -> homeserver. Remote events: sync loop -> ``room_events``
stream -> decode, check power level, validate -> apply in a transaction whose
origin is :data:`REMOTE`, which the observer ignores (no echo).

Invariants
----------
1. An edit is made (survives a crash) once the writer has stored it: in the doc
   log, and in the outbox when it is sent. The writer stores every edit at most
   ``batch_delay`` after it (plus one SQLite commit); ``await sdoc.persist()``
   waits for that, ``await sdoc.flush()`` until the homeserver has it.
2. At most one batch per document is in flight. While it is (or while the outbox
   waits out a rate limit or an outage), new edits are stored in the doc log and
   join the next batch, which is the diff since the last batch sent: 5,000 edits
   under a rate limit become a handful of events, and nothing is lost.
3. A batch holds only this device's structs (its Yjs client ids) and the
   deletions made by local transactions since the previous batch; remote content
   is never sent back. (After a restart that left deletions unsent, the first
   batch carries the document's whole delete set: correct, only larger.)
4. A remote update is applied only if it decodes, its sender may send its event
   type under the power levels in force at its place in the timeline, it passes
   :func:`~mxsync.protocol.docs.validate_update`, and ``apply_update`` does not
   raise. Anything else is skipped and logged once, with its event id; nothing
   a room member sends can stop the reader. An applied update whose structs wait
   for missing ones is kept (bounded) and applied again as the state advances.
5. The position a cache resumes from, and the ``covers`` of a snapshot, come
   before every update the state does not hold yet (incomplete chunk sets,
   pending updates: yrs leaves pending structs out of ``get_update()``).
6. A snapshot is taken only when every local change it holds is in the outbox
   ahead of it (same lane), so that every change also travels as an update.
7. The cache (full state, the position it covers, this device's Yjs client id and
   the clocks already sent) is written with the outbox rows it depends on, at most
   every ``cache_interval`` seconds, on snapshot and on close. The client id is
   reused on the next open: every struct it ever made is in the cache or was
   never seen by anyone, so no clock is issued twice.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Final

import anyio
import anyio.lowlevel
import msgspec
import pycrdt
from anyio.streams.memory import MemoryObjectReceiveStream

from .engine.authz import judge_state, power_level_allows, room_creators
from .engine.events import MessagesPage, RoomEvent
from .engine.http import Backoff
from .engine.outbox import OutboxEntry, SendHandle, Staging
from .engine.surface import Engine
from .engine.taskgroups import exit_stack
from .errors import (
    ConfigError,
    HomeserverUnavailable,
    MatrixError,
    MxsyncError,
    ProtocolError,
    TransientError,
)
from .protocol import docs as proto
from .protocol.api import Direction
from .protocol.types import DOC, DOC_SNAPSHOT, DOC_UPDATE
from .protocol.yjs import DeleteSet, encode_state_vector

__all__ = ["REMOTE", "SyncedDoc", "open_doc"]

log = logging.getLogger("mxsync.docs")

#: Origin of the transactions in which remote updates (and the cache) are applied.
#: The observer ignores them: what came from the room is never sent back.
REMOTE: Final = "mxsync.docs.remote"

ProgressCallback = Callable[[int, "int | None"], None]

_PL: Final = "m.room.power_levels"
_CREATE: Final = "m.room.create"
_LIVE_TYPES: Final = (DOC, _PL, _CREATE)  # prefixes: DOC also matches .update/.snapshot
_HISTORY_TYPES: Final = [DOC_UPDATE, DOC_SNAPSHOT, _PL]
#: Backward page sizes of a cold open: the newest snapshot is usually within the
#: last ~75 events (SnapshotPolicy), so small pages first.
_COLD_PAGES: Final = (64, 256)
_PAGE: Final = 1000
#: How far past a snapshot's ``covers`` a cold open reads to complete chunk sets.
_CHUNK_LOOKBACK: Final = 4096
#: A burst of edits closer than this is one batch (bounded by ``batch_delay``).
_QUIET: Final = 0.005
#: Event ids remembered to drop duplicates. The sync loop already deduplicates
#: live events; a document needs this only at the seam between its load (paged
#: from /messages) and the live events buffered meanwhile, which the stream buffer
#: bounds (_STREAM_BUFFER). Each id costs ~200 bytes for the life of the document,
#: so this is kept to the seam's size (the soak measured 50,000 here as ~10 MB).
_SEEN_MAX: Final = 2 * 4096
#: Updates applied but still waiting for structs they depend on, tracked at most.
_PENDING_MAX: Final = 4096
_PENDING_BYTES: Final = 32 * 1024 * 1024
_STREAM_BUFFER: Final = 4096
_JSON = msgspec.json.Encoder()

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

# Documents open per client: two SyncedDocs of one (room, name) on one client
# would share a Yjs client id and issue the same clocks twice.
_OPEN: weakref.WeakKeyDictionary[Engine, set[tuple[str, str]]] = weakref.WeakKeyDictionary()


def _is_panic(exc: BaseException) -> bool:
    # pyo3 turns a Rust panic into PanicException, a BaseException subclass.
    return type(exc).__name__ == "PanicException"


# ------------------------------------------------------------------------ cache


class _Meta(msgspec.Struct, kw_only=True):
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


_meta_decoder = msgspec.json.Decoder(_Meta)


def _create_tables(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


_Start = tuple[int, "str | None", "str | None"]


class _Step(msgspec.Struct):
    """What one writer step stores, in one SQLite transaction."""

    outbox: list[OutboxEntry]
    n_updates: int  # the first n_updates outbox rows are the batch, the rest a snapshot
    log: bytes | None
    meta: bytes
    state: bytes | None


# -------------------------------------------------------------------- SyncedDoc


class SyncedDoc:
    """A ``pycrdt.Doc`` (``.doc``) bound to the document ``name`` of a room.

    Use it as an async context manager (``client.open_doc`` builds one); it owns
    a task group with a reader (initial load, then live events) and a writer
    (batches, snapshots, cache). Edit ``.doc`` from the event loop's thread.
    """

    def __init__(
        self,
        client: Engine,
        room_id: str,
        name: str = "default",
        *,
        on_progress: ProgressCallback | None = None,
        batch_delay: float = 0.05,
        cache_interval: float = 5.0,
        policy: proto.SnapshotPolicy | None = None,
        assembler: proto.ChunkAssembler | None = None,
        read_only: bool = False,
    ) -> None:
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise ConfigError(f"not a room id: {room_id!r}")
        if not isinstance(name, str) or not 1 <= len(name.encode("utf-8", "replace")) <= 255:
            raise ConfigError("document name must be 1..255 bytes of UTF-8")
        if not batch_delay >= 0 or not cache_interval > 0:
            raise ConfigError("batch_delay must be >= 0 and cache_interval > 0")
        self.client = client
        self.room_id = room_id
        self.name = name
        self.read_only = read_only
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc()
        self._on_progress = on_progress
        self._batch_delay = batch_delay
        self._cache_interval = cache_interval
        identity = f"{client.user_id}|{client.device_id or ''}"
        self._policy = policy or proto.SnapshotPolicy(identity)
        self._asm = assembler or proto.ChunkAssembler()
        self._lane = f"doc:{name}"
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._subscription: pycrdt.Subscription | None = None
        # local side
        self._local_clients: set[int] = set()
        #: (state vector before, after) of runs of local transactions not yet
        #: folded into _local_clients.
        self._local_runs: list[tuple[bytes, bytes]] = []
        self._sent: dict[int, int] = {}
        self._persisted: dict[int, int] = {}
        self._ds_unsent = DeleteSet()
        self._ds_unpersisted = DeleteSet()
        self._full_ds = False
        self._edit_seq = 0
        self._persisted_seq = 0
        self._sent_seq = 0
        self._acked_seq = 0
        self._first_unpersisted: float | None = None
        self._last_batch = -math.inf
        self._flush_requested = False
        self._inflight = False
        self._send_error: MxsyncError | None = None
        self._may_snapshot = not read_only
        self._snapshot_wanted = False
        self._declared = False
        self._wake = anyio.Event()
        self._acked = anyio.Event()
        self._writer_stopped = False
        # remote side
        self._pl: dict[str, Any] | None = None
        self._creators: frozenset[str] = frozenset()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seq = 0
        self._position: str | None = None
        self._covers: str | None = None
        # Where an incomplete chunk set (by key) or a pending update (by event id)
        # started: (seq, position before it, covers before it).
        self._chunk_starts: dict[tuple[str, str], _Start] = {}
        self._chunk_first: dict[tuple[str, str], str] = {}  # set -> its first chunk's event
        self._pending: OrderedDict[str, tuple[_Start, bytes]] = OrderedDict()
        self._pending_bytes = 0
        self._backlog: list[RoomEvent] = []
        self._synced = anyio.Event()
        self._load_error: BaseException | None = None
        self._state_bytes = 0
        # cache
        self._base_position: str | None = None
        self._base_covers: str | None = None
        self._stale = False
        self._last_base = time.monotonic()
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "edits", "batches_sent", "update_events_sent", "bytes_sent", "payload_bytes_sent",
                "snapshots_sent", "snapshot_events_sent", "updates_applied", "bytes_applied",
                "snapshots_applied", "snapshots_covered", "own_echoes", "duplicates", "skipped",
                "forbidden",
                "load_events", "load_pages", "load_http_ms", "cache_writes", "log_writes",
            ),
            0,
        )
        self._load_ms: float | None = None

    def __repr__(self) -> str:
        return f"<SyncedDoc {self.name!r} in {self.room_id} for {self.client.user_id}>"

    # -- public API --------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """Whether the initial load is done."""
        return self._synced.is_set() and self._load_error is None

    async def wait_synced(self) -> None:
        """Return once the initial load is done (cache caught up, or snapshot + updates).

        Raises the load's error if the document cannot be loaded (for example its
        declaration is not one this implementation understands).
        """
        await self._synced.wait()
        if self._load_error is not None:
            raise self._load_error

    async def flush(self) -> None:
        """Return once every local change made before the call is on the homeserver.

        Raises the homeserver's refusal (e.g. ForbiddenError for a reader) if the
        changes can never be sent.
        """
        if self.read_only:
            raise ConfigError("this document was opened read-only")
        self._check_open()
        target = self._edit_seq
        if self._acked_seq < target:
            # Wake the writer once; it, and the task watching the batch in flight,
            # signal every step. Waking it again from here would make them spin.
            self._flush_requested = True
            self._wake.set()
        while self._acked_seq < target:
            if self._send_error is not None:
                raise self._send_error
            self._check_writer()
            await self._acked.wait()

    async def persist(self) -> None:
        """Store every local change made so far in the local store, without the network."""
        self._check_open()
        target = self._edit_seq
        if self._persisted_seq < target:
            self._flush_requested = True
            self._wake.set()
        while self._persisted_seq < target:
            self._check_writer()
            await self._acked.wait()

    def statistics(self) -> dict[str, Any]:
        """Counters since open: events sent and applied, load cost, skipped events."""
        return {
            **self._stats,
            "load_ms": self._load_ms,
            "pending_edits": self._edit_seq - self._acked_seq,
            "in_flight": self._inflight,
            "snapshot_pending": self._snapshot_wanted,
            "updates_since_snapshot": self._policy.updates_since,
            "chunks": msgspec.structs.asdict(self._asm.statistics()),
        }

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> SyncedDoc:
        key = (self.room_id, self.name)
        opened = _OPEN.setdefault(self.client, set())
        if key in opened:
            raise ConfigError(f"document {self.name!r} of {self.room_id} is already open "
                              "on this client")
        opened.add(key)
        try:
            async with AsyncExitStack() as stack:
                await self._restore()
                self._subscription = self.doc.observe(self._on_transaction)
                stack.callback(self._unobserve)
                recv = await stack.enter_async_context(
                    self.client.room_events(self.room_id, _LIVE_TYPES, buffer=_STREAM_BUFFER)
                )
                stack.push_async_callback(self._final_save)
                tg = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(tg.cancel_scope.cancel)
                self._tg = tg
                tg.start_soon(self._reader, recv)
                tg.start_soon(self._writer)
                self._stack = stack.pop_all()
        except BaseException:
            opened.discard(key)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                return await exit_stack(stack, exc_type, exc, tb)
            return None
        finally:
            self._tg = None
            _OPEN.get(self.client, set()).discard((self.room_id, self.name))

    def _check_writer(self) -> None:
        if self._writer_stopped:
            raise RuntimeError(
                f"document {self.name!r} stopped (its task group was cancelled); "
                "unsent edits stay in the store and go out when it is opened again"
            )

    def _check_open(self) -> None:
        if self._stack is None:
            raise RuntimeError("the document is not open; use `async with client.open_doc(...)`")

    def _unobserve(self) -> None:
        if self._subscription is not None:
            self.doc.unobserve(self._subscription)
            self._subscription = None

    # -- local edits ---------------------------------------------------------------

    def _on_transaction(self, event: Any) -> None:
        # ``event`` is a pycrdt.TransactionEvent; its stub lacks the attributes used
        # here (transaction, delete_set, before_state, after_state).
        if event.transaction.origin() == hash(REMOTE):
            return
        self._edit_seq += 1
        self._stats["edits"] += 1
        if self._first_unpersisted is None:
            self._first_unpersisted = time.monotonic()
        ds = event.delete_set
        if ds != b"\x00":
            self._ds_unsent.add(ds)
            self._ds_unpersisted.add(ds)
        before, after = event.before_state, event.after_state
        if before != after:
            # Usually only our own client id grows; an app may also apply updates
            # from elsewhere locally, and those must be sent as well. Which clients
            # grew is worked out per batch (_absorb_local_runs), not per edit:
            # decoding two state vectors on every keystroke cost ~10% of the CPU.
            # Consecutive local transactions form one run (before == last after).
            runs = self._local_runs
            if runs and runs[-1][1] == before:
                runs[-1] = (runs[-1][0], after)
            else:
                runs.append((before, after))
        self._wake.set()

    def _absorb_local_runs(self) -> None:
        """Add the clients whose clocks local transactions advanced to _local_clients."""
        for before_sv, after_sv in self._local_runs:
            before = proto.decode_state_vector(before_sv)
            after = proto.decode_state_vector(after_sv)
            self._local_clients.update(c for c, k in after.items() if before.get(c) != k)
        self._local_runs.clear()

    # -- restore and save ------------------------------------------------------------

    async def _restore(self) -> None:
        store = self.client
        await store.run_sql(_create_tables)

        def load(conn: sqlite3.Connection) -> tuple[bytes | None, bytes | None, list[bytes]]:
            row = conn.execute(
                "SELECT meta, state FROM mxsync_doc WHERE room_id=? AND name=?",
                (self.room_id, self.name),
            ).fetchone()
            logs = conn.execute(
                "SELECT data FROM mxsync_doc_log WHERE room_id=? AND name=? ORDER BY id",
                (self.room_id, self.name),
            ).fetchall()
            if row is None:
                return None, None, []
            return bytes(row[0]), None if row[1] is None else bytes(row[1]), [
                bytes(r[0]) for r in logs
            ]

        raw_meta, state, logs = await store.run_sql(load)
        meta: _Meta | None = None
        if raw_meta is not None:
            try:
                meta = _meta_decoder.decode(raw_meta)
                doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=meta.client_id)
                with doc.transaction(origin=REMOTE):
                    for blob in ([state] if state else []) + logs:
                        doc.apply_update(blob)
                self.doc = doc
            except Exception as exc:  # a damaged cache is rebuilt from the room
                log.error("cache of %r in %s is unreadable (%s); loading from the room",
                          self.name, self.room_id, exc)
                meta = None
                self.doc = pycrdt.Doc()
                await store.run_sql(self._forget_cache)
        if meta is None:
            self._local_clients = {self.doc.client_id}
            return
        self._local_clients = {self.doc.client_id, *meta.local_clients}
        self._sent = dict(meta.sent)
        sv = proto.decode_state_vector(self.doc.get_state())
        self._persisted = {c: sv[c] for c in self._local_clients if c in sv}
        self._declared = meta.declared
        self._position = self._base_position = meta.position
        self._covers = self._base_covers = meta.covers
        if meta.updates_since:
            for _ in range(meta.updates_since - 1):
                self._policy.observe_update(0)
            self._policy.observe_update(meta.bytes_since)
        unsent = any(sv.get(c, 0) > self._sent.get(c, 0) for c in self._local_clients)
        if unsent or meta.unsent_ds:
            # Edits of a previous run that never reached the outbox: send them.
            self._edit_seq = self._persisted_seq = 1
            self._full_ds = meta.unsent_ds
            log.info("%r in %s: resuming unsent local edits from the store", self.name,
                     self.room_id)
        self._state_bytes = len(state or b"")

    async def _final_save(self) -> None:
        if self._asm.pending_sets:
            for (sender, set_id), first in self._chunk_first.items():
                # Logged once, when it can no longer complete in this session.
                log.warning("%s: chunk set %s of %r from %s (first chunk %s) never "
                            "completed; nothing of it was applied", self.client.user_id,
                            set_id, self.name, sender, first)
        with anyio.CancelScope(shield=True):
            try:
                await self._step(closing=True)
            except RuntimeError as exc:  # the client (and its store) closed first
                log.error("could not save %r of %s on close: %s", self.name, self.room_id, exc)

    # -- writer ------------------------------------------------------------------------

    async def _writer(self) -> None:
        try:
            await self._write_forever()
        finally:
            # Whoever waits in flush()/persist() must learn that nothing will come.
            self._writer_stopped = True
            self._notify()

    async def _write_forever(self) -> None:
        while True:
            timeout = math.inf
            if self._stale:
                timeout = max(0.0, self._last_base + self._cache_interval - time.monotonic())
            if self._sendable() and self._edit_seq > self._sent_seq:
                # Edits wait for the outbox's next slot (rate limit): wake then.
                timeout = min(timeout, self._slot_wait())
            with anyio.move_on_after(timeout):
                await self._wake.wait()
            self._wake = anyio.Event()
            if (
                self._edit_seq > self._persisted_seq
                and time.monotonic() - self._last_batch < self._batch_delay
            ):
                # In a burst: let the edits that follow join this batch. An edit
                # made while idle goes out at once (latency).
                await self._debounce()
            await self._step()

    async def _debounce(self) -> None:
        first = self._first_unpersisted or time.monotonic()
        deadline = first + self._batch_delay
        while not self._flush_requested:
            now = time.monotonic()
            if now >= deadline:
                return
            seen = self._edit_seq
            await anyio.sleep(min(_QUIET, deadline - now))
            if self._edit_seq == seen:
                return

    def _diff(
        self, since: dict[int, int], ds: DeleteSet, *, full_ds: bool
    ) -> tuple[bytes | None, dict[int, int]]:
        """This device's changes since ``since`` as one Yjs v1 update, and the new clocks."""
        self._absorb_local_runs()
        sv_bytes = self.doc.get_state()
        sv = proto.decode_state_vector(sv_bytes)
        clocks = {c: sv[c] for c in self._local_clients if c in sv}
        baseline = dict(sv)
        fresh = False
        for c, clock in clocks.items():
            done = since.get(c, 0)
            fresh = fresh or clock > done
            if done:
                baseline[c] = done
            else:
                del baseline[c]
        if not fresh and not ds and not full_ds:
            return None, clocks
        full = self.doc.get_update(encode_state_vector(baseline))
        if full_ds:
            return full, clocks
        # get_update(sv) ends with the document's whole delete set, which is what
        # get_update(current sv) holds after its empty struct section (b"\x00").
        # Swap it for the deletions made locally since `since`.
        tail = self.doc.get_update(sv_bytes)
        if tail[:1] != b"\x00" or not full.endswith(tail[1:]):
            log.debug("unexpected update layout; sending the whole delete set")
            return full, clocks
        return full[: len(full) - len(tail) + 1] + ds.encode(), clocks

    def _meta(self, *, unsent_ds: bool) -> bytes:
        self._absorb_local_runs()
        return _JSON.encode(
            _Meta(
                client_id=self.doc.client_id,
                local_clients=sorted(self._local_clients),
                sent=self._sent,
                unsent_ds=unsent_ds,
                declared=self._declared,
                position=self._base_position,
                covers=self._base_covers,
                updates_since=self._policy.updates_since,
                bytes_since=self._policy.bytes_since,
            )
        )

    def _resume_position(self) -> str | None:
        """Where a later catch-up must start: before any incomplete chunk set and any
        update still pending (the state does not hold it yet)."""
        if not self._asm.pending_sets:
            self._chunk_starts.clear()
            self._chunk_first.clear()
        starts = [*self._chunk_starts.values(), *(p[0] for p in self._pending.values())]
        if starts:
            return min(starts, key=lambda v: v[0])[1]
        return self._position

    def _snapshot_covers(self) -> str | None:
        """The ``covers`` of a snapshot taken now.

        yrs leaves the structs of an update whose dependencies are missing out of
        ``get_update()`` (Yjs would include them): such an update must come after
        ``covers``, or a reader opening from the snapshot would never apply it.
        """
        if self._pending:
            return min((p[0] for p in self._pending.values()), key=lambda v: v[0])[2]
        return self._covers

    def _sendable(self, *, closing: bool = False) -> bool:
        """May a batch be sealed now, rate limits aside?"""
        return (
            self._declared
            and not self.read_only
            and self._send_error is None
            and (closing or not self._inflight)
        )

    def _slot_wait(self) -> float:
        """Seconds until the outbox expects a send to be accepted (0.0: now)."""
        return max(0.0, self.client.next_slot() - time.monotonic())

    def _allowed(self, event_type: str) -> bool:
        return power_level_allows(self._pl, self.client.user_id, event_type, state=False,
                                  creators=self._creators)

    async def _step(self, *, closing: bool = False) -> None:
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
        seq = self._edit_seq
        contents: list[tuple[str, dict[str, Any]]] = []
        update: bytes | None = None
        log_blob: bytes | None = None
        unsent_ds = self._full_ds or bool(self._ds_unsent)
        if can_send and seq > self._sent_seq:
            update, clocks = self._diff(self._sent, self._ds_unsent, full_ds=self._full_ds)
            if update is not None:
                try:
                    contents += [(DOC_UPDATE, c) for c in proto.encode_update(self.name, update)]
                except ConfigError as exc:  # over MAX_PAYLOAD_BYTES: no event can carry it
                    self._send_error = exc
                    log.error("%r in %s: a batch of %d bytes cannot be sent (%s); local "
                              "edits are kept but no longer sent", self.name, self.room_id,
                              len(update), exc)
            self._sent = dict(clocks)
            self._persisted = dict(clocks)
            self._ds_unsent.clear()
            self._ds_unpersisted.clear()
            self._full_ds = unsent_ds = False
            self._sent_seq = seq
            log_blob = update
        elif seq > self._persisted_seq:
            log_blob, clocks = self._diff(self._persisted, self._ds_unpersisted, full_ds=False)
            self._persisted = dict(clocks)
            self._ds_unpersisted.clear()
            unsent_ds = True
        self._persisted_seq = seq
        self._first_unpersisted = None
        if log_blob is not None:
            self._last_batch = time.monotonic()
            self._stale = True
        n_updates = len(contents)
        state: bytes | None = None
        if (
            can_send
            and not closing
            and self._snapshot_wanted
            and self._may_snapshot
            and self._synced.is_set()
            and self._allowed(DOC_SNAPSHOT)
        ):
            self._snapshot_wanted = False
            state = self.doc.get_update()
            self._state_bytes = len(state)
            if self._policy.should_snapshot(len(state)):
                try:
                    contents += [
                        (DOC_SNAPSHOT, c)
                        for c in proto.encode_snapshot(
                            self.name, state, self.doc.get_state(), self._snapshot_covers(),
                            updates_since=self._policy.updates_since,
                        )
                    ]
                except ConfigError as exc:
                    self._may_snapshot = False
                    log.error("%r in %s: no more snapshots: %s", self.name, self.room_id, exc)
                self._policy.observe_snapshot()
            else:
                state = None
        if state is None and self._stale and (
            closing or time.monotonic() - self._last_base >= self._cache_interval
        ):
            state = self.doc.get_update()
            self._state_bytes = len(state)
        if state is not None:
            self._base_position = self._resume_position()
            self._base_covers = self._snapshot_covers()
            self._stale = False
            self._last_base = time.monotonic()
        if contents or log_blob is not None or state is not None:
            rows = [self.client.new_entry(self.room_id, etype, c, lane=self._lane)
                    for etype, c in contents]
            step = _Step(rows, n_updates, log_blob, self._meta(unsent_ds=unsent_ds), state)
            with anyio.CancelScope(shield=True):
                _, handles = await self.client.stage(lambda tx: self._write(tx, step))
            self._stats["log_writes"] += log_blob is not None
            self._stats["cache_writes"] += state is not None
            if handles:
                upd, snap = handles[:n_updates], handles[n_updates:]
                self._stats["batches_sent"] += bool(upd)
                self._stats["update_events_sent"] += len(upd)
                self._stats["bytes_sent"] += sum(len(r.content) for r in rows[:n_updates])
                self._stats["payload_bytes_sent"] += len(update or b"")
                self._stats["snapshot_events_sent"] += len(snap)
                if not closing and self._tg is not None:
                    self._inflight = True
                    self._tg.start_soon(self._watch, upd, snap, seq)
        if not self._inflight and self._send_error is None:
            # Nothing in flight: every batch stored so far has been answered.
            self._acked_seq = max(self._acked_seq, self._sent_seq)
        self._notify()

    def _forget_cache(self, conn: sqlite3.Connection) -> None:
        key = (self.room_id, self.name)
        conn.execute("DELETE FROM mxsync_doc_log WHERE room_id=? AND name=?", key)
        conn.execute("DELETE FROM mxsync_doc WHERE room_id=? AND name=?", key)

    def _write(self, tx: Staging, step: _Step) -> None:
        for entry in step.outbox:
            tx.add(entry)
        conn = tx.conn
        key = (self.room_id, self.name)
        if step.state is not None:
            conn.execute("DELETE FROM mxsync_doc_log WHERE room_id=? AND name=?", key)
            conn.execute(
                "INSERT INTO mxsync_doc(room_id, name, meta, state) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(room_id, name) DO UPDATE SET meta=excluded.meta, "
                "state=excluded.state",
                (*key, step.meta, step.state),
            )
            return
        if step.log is not None:
            conn.execute(
                "INSERT INTO mxsync_doc_log(room_id, name, data) VALUES (?, ?, ?)",
                (*key, step.log),
            )
        conn.execute(
            "INSERT INTO mxsync_doc(room_id, name, meta) VALUES (?, ?, ?) "
            "ON CONFLICT(room_id, name) DO UPDATE SET meta=excluded.meta",
            (*key, step.meta),
        )

    async def _watch(self, updates: list[SendHandle], snapshot: list[SendHandle],
                     seq: int) -> None:
        try:
            for handle in updates:
                try:
                    await handle.wait()
                except MatrixError as exc:
                    self._send_error = exc
                    log.error("%s: the homeserver refused an update of %r in %s: %s; "
                              "local edits are kept but no longer sent",
                              self.client.user_id, self.name, self.room_id, exc)
                    return
            if self._send_error is None:
                self._acked_seq = max(self._acked_seq, seq)
            for handle in snapshot:
                try:
                    await handle.wait()
                except MatrixError as exc:
                    self._may_snapshot = False
                    log.warning("snapshot of %r refused (%s); not snapshotting any more",
                                self.name, exc)
                    return
            if snapshot:
                self._stats["snapshots_sent"] += 1
        finally:
            self._inflight = False
            self._notify()
            self._wake.set()

    def _notify(self) -> None:
        self._acked.set()
        self._acked = anyio.Event()

    # -- reader ------------------------------------------------------------------------

    async def _reader(self, recv: MemoryObjectReceiveStream[RoomEvent]) -> None:
        backoff = Backoff(base=0.5, cap=30.0)
        started = time.monotonic()
        while True:
            try:
                await self._load(recv)
                break
            except (HomeserverUnavailable, TransientError) as exc:
                delay = backoff.next_delay()
                log.warning("loading %r of %s failed (%s); retrying in %.1f s", self.name,
                            self.room_id, exc, delay)
                await anyio.sleep(delay)
            except (MatrixError, ProtocolError) as exc:
                log.error("cannot load %r of %s: %s", self.name, self.room_id, exc)
                self._load_error = exc
                self._synced.set()
                await recv.aclose()  # nothing will read it: do not hold up the sync loop
                return
        for ev in self._backlog:
            self._safe_process(ev, live=True)
        self._backlog.clear()
        self._state_bytes = len(self.doc.get_update())
        self._load_ms = (time.monotonic() - started) * 1000
        self._synced.set()
        self._wake.set()
        async for ev in recv:
            self._safe_process(ev, live=True)

    def _progress(self, done: int, total: int | None) -> None:
        if self._on_progress is None:
            return
        try:
            self._on_progress(done, total)
        except Exception:
            log.exception("progress callback failed")

    async def _load(self, recv: MemoryObjectReceiveStream[RoomEvent]) -> None:
        create = await self.client.state_event(self.room_id, _CREATE)
        self._creators = room_creators(create)
        await self._ensure_declared(recv)
        if self._position is not None:
            try:
                await self._catch_up(self._position)
                return
            except MatrixError as exc:
                log.warning("cannot page on from the cached position of %r (%s); "
                            "loading from the newest snapshot", self.name, exc)
        await self._cold_open()

    async def _ensure_declared(self, recv: MemoryObjectReceiveStream[RoomEvent]) -> None:
        if self._declared:
            return
        ev = await self.client.state_event(self.room_id, DOC, self.name)
        if ev is not None and ev.content and not await self._declared_by_writer(ev):
            ev = None
        if ev is not None and ev.content:
            self._check_declaration(ev.content)
        elif self.read_only:
            raise ProtocolError(f"document {self.name!r} is not declared in {self.room_id}")
        elif await self.client.may_send(self.room_id, self.client.user_id, DOC, state=True):
            await self.client.send(self.room_id, DOC, proto.encode_declaration(),
                                   state_key=self.name, lane=self._lane)
        else:
            log.info("waiting for %r to be declared in %s", self.name, self.room_id)
            async for ev in recv:
                if (ev.type == DOC and ev.state_key == self.name and ev.content
                        and await self._declared_by_writer(ev)):
                    self._check_declaration(ev.content)
                    break
                self._backlog.append(ev)
        self._declared = True
        self._wake.set()

    async def _declared_by_writer(self, ev: RoomEvent) -> bool:
        """Did the declaration's sender have the level for it where it stands
        (PROTOCOL §1.3)? One a homeserver let through from anyone else is ignored."""
        return bool(await judge_state(self.client, self.room_id, [ev], self._creators))

    def _check_declaration(self, content: dict[str, Any]) -> None:
        decl = proto.decode_doc_event(DOC, content)
        assert isinstance(decl, proto.DocDeclaration)
        if not decl.supported:
            raise ProtocolError(f"document {self.name!r} uses encoding {decl.encoding!r}")

    async def _messages(self, token: str | None, direction: Direction, limit: int,
                        types: list[str]) -> MessagesPage:
        started = time.perf_counter()
        try:
            return await self.client.messages(self.room_id, token, direction=direction,
                                              limit=limit, types=types)
        finally:
            self._stats["load_http_ms"] += round((time.perf_counter() - started) * 1000)

    async def _pl_before(self, token: str | None) -> dict[str, Any] | None:
        """The power levels in force just before ``token`` (paging backwards)."""
        if token is not None:
            page = await self._messages(token, "b", 1, [_PL])
            self._stats["load_events"] += len(page.events)
            for ev in page.events:
                if ev.state_key == "":
                    return ev.content
        # Nothing earlier is visible: judge by the current levels.
        return await self.client.get_state(self.room_id, _PL)

    async def _catch_up(self, position: str) -> None:
        """Page forwards from the cached position, applying everything after it."""
        token = await self.client.context_token(self.room_id, position)
        if token is None:
            raise MatrixError(200, "M_UNKNOWN", "no pagination token after the cached event")
        self._pl = await self._pl_before(token)
        read = 0
        while True:
            page = await self._messages(token, "f", _PAGE, _HISTORY_TYPES)
            self._stats["load_pages"] += 1
            self._stats["load_events"] += len(page.events)
            for i, ev in enumerate(page.events):
                self._safe_process(ev, live=False)
                if i % 256 == 255:
                    await anyio.lowlevel.checkpoint()
            read += len(page.events)
            self._progress(read, None)
            if not page.events or page.end is None or page.end == token:
                break
            token = page.end

    async def _cold_open(self) -> None:
        """Newest complete valid snapshot, then the updates after it (PROTOCOL.md)."""
        window: list[RoomEvent] = []  # newest first
        token: str | None = None
        sizes = list(_COLD_PAGES)
        scan = _BackwardScan(self.name)
        exhausted = False
        while True:
            while not exhausted and not scan.done():
                limit = sizes.pop(0) if sizes else _PAGE
                page = await self._messages(token, "b", limit, _HISTORY_TYPES)
                self._stats["load_pages"] += 1
                self._stats["load_events"] += len(page.events)
                for ev in page.events:
                    window.append(ev)
                    scan.see(ev, len(window) - 1)
                self._progress(len(window), None)
                if not page.events or page.end is None or page.end == token:
                    exhausted = True
                token = page.end
                await anyio.lowlevel.checkpoint()
            pl_before = await self._pl_before(None if exhausted else token)
            problem = self._snapshot_problem(window, scan, pl_before)
            if problem is None:
                break
            log.warning("%s: not opening %r from snapshot %s: %s", self.client.user_id,
                        self.name, scan.snapshot_event, problem)
            scan = scan.without_snapshot(window)
        forward = window[::-1]
        total = len(forward)
        self._pl = pl_before
        covers_at = -1
        snap = scan.snapshot
        if snap is not None:
            if scan.covers_index is not None:
                covers_at = total - 1 - scan.covers_index
            with self.doc.transaction(origin=REMOTE):
                self.doc.apply_update(snap.state)  # validated by _snapshot_problem
            self._stats["snapshots_applied"] += 1
            self._policy.observe_snapshot()
            self._covers = self._position = snap.covers
        for i, ev in enumerate(forward):
            self._safe_process(ev, live=False, covered=i <= covers_at)
            if i % 256 == 255:
                self._progress(i + 1, total)
                await anyio.lowlevel.checkpoint()
        self._progress(total, total)

    def _snapshot_problem(self, window: list[RoomEvent], scan: _BackwardScan,
                          pl: dict[str, Any] | None) -> str | None:
        """Why the scan's snapshot cannot be the base of this open, or None if it can."""
        if scan.snapshot is None:
            return None
        for ev in reversed(window[scan.snapshot_index:]):
            if ev.type == _PL and ev.state_key == "":
                pl = ev.content
        if not power_level_allows(pl, scan.snapshot_sender or "", DOC_SNAPSHOT, state=False,
                                  creators=self._creators):
            return f"{scan.snapshot_sender} may not send snapshots"
        if self.doc.get_state() != b"\x00":
            # Cached or local content: rule out a partial application on top of it.
            try:
                proto.validate_update(scan.snapshot.state, base=self.doc.get_update())
            except ProtocolError as exc:
                return str(exc)
        return None

    # -- processing one event -------------------------------------------------------------

    def _safe_process(self, ev: RoomEvent, *, live: bool, covered: bool = False) -> None:
        try:
            self._process(ev, live=live, covered=covered)
        except Exception as exc:
            self._skip(ev, f"{type(exc).__name__}: {exc}")
        except BaseException as exc:
            if not _is_panic(exc):
                raise
            self._skip(ev, f"pycrdt panicked: {exc}")

    def _skip(self, ev: RoomEvent, reason: str) -> None:
        self._stats["skipped"] += 1
        log.warning("%s: skipping event %s of %r in %s from %s: %s", self.client.user_id,
                    ev.event_id, self.name, self.room_id, ev.sender, reason)

    def _process(self, ev: RoomEvent, *, live: bool, covered: bool = False) -> None:
        if ev.event_id in self._seen:
            self._stats["duplicates"] += 1
            return
        self._seen[ev.event_id] = None
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        self._seq += 1
        start: _Start = (self._seq, self._position, self._covers)
        etype = ev.type
        if etype == _PL:
            if ev.state_key == "":
                self._pl = ev.content
            return
        if etype == _CREATE:
            self._creators = room_creators(ev)
            return
        if etype == DOC:
            if ev.state_key == self.name and not ev.content:
                log.warning("%r in %s is no longer declared (event %s)", self.name,
                            self.room_id, ev.event_id)
            return
        if etype not in (DOC_UPDATE, DOC_SNAPSHOT):
            return
        self._position = ev.event_id
        self._stale = True
        target = ev.content.get("doc")
        if target != self.name:
            if not isinstance(target, str):
                self._skip(ev, "no document name")
            return
        self._covers = ev.event_id
        try:
            decoded = proto.decode_doc_event(etype, ev.content)
        except ProtocolError as exc:
            self._skip(ev, str(exc))
            return
        if not power_level_allows(self._pl, ev.sender, etype, state=False,
                                  creators=self._creators):
            self._stats["forbidden"] += 1
            self._skip(ev, f"{ev.sender} may not send {etype}")
            return
        own = live and ev.txn_id is not None  # our own echo: already in the document
        large = False
        if isinstance(decoded, proto.DocChunk):
            info = decoded.chunk
            if own:
                if decoded.kind == "update" and info.index == info.count - 1:
                    self._observe_update(info.size)
                return
            key = (ev.sender, info.id)
            self._chunk_starts.setdefault(key, start)
            self._chunk_first.setdefault(key, ev.event_id)
            counts = self._asm.statistics()
            whole = self._asm.feed(ev.event_id, ev.sender, decoded)
            after = self._asm.statistics()
            if after.rejected > counts.rejected:
                self._skip(ev, f"chunk set announces {info.count} chunks of {info.size} bytes")
            elif after.discarded > counts.discarded:
                self._skip(ev, "chunk set discarded: digest or announcements disagree")
            if after.evicted > counts.evicted:
                log.warning("%s: an incomplete chunk set of %r was dropped to bound memory",
                            self.client.user_id, self.name)
            if after.rejected > counts.rejected or after.discarded > counts.discarded:
                self._chunk_starts.pop(key, None)
                self._chunk_first.pop(key, None)
            if whole is None:
                return
            self._chunk_first.pop(key, None)
            start = self._chunk_starts.pop(key, start)
            decoded = whole
            large = True
        if own:
            self._stats["own_echoes"] += 1
            if isinstance(decoded, proto.DocUpdate):
                self._observe_update(len(decoded.update))
            return
        if covered:
            return
        if isinstance(decoded, proto.DocUpdate):
            self._apply_update(ev, decoded.update, start, large=large)
        elif isinstance(decoded, proto.DocSnapshot):
            self._apply_snapshot(ev, decoded, start)

    def _observe_update(self, nbytes: int) -> None:
        self._policy.observe_update(nbytes)
        if (
            not self._snapshot_wanted
            and self._may_snapshot
            and self._policy.should_snapshot(self._state_bytes)
        ):
            self._snapshot_wanted = True
            self._wake.set()

    def _apply(self, ev: RoomEvent, payload: bytes, start: _Start) -> bool:
        before = self.doc.get_state()
        if not self._apply_raw(ev, payload):
            return False
        self._track_pending(ev.event_id, start, payload, before)
        return True

    def _apply_raw(self, ev: RoomEvent | None, payload: bytes) -> bool:
        try:
            with self.doc.transaction(origin=REMOTE):
                self.doc.apply_update(payload)
        except Exception as exc:
            if ev is not None:
                self._skip(ev, f"pycrdt refused it: {exc}")
            return False
        except BaseException as exc:
            if not _is_panic(exc):
                raise
            if ev is not None:
                self._skip(ev, f"pycrdt panicked: {exc}")
            return False
        return True

    def _track_pending(self, event_id: str, start: _Start, payload: bytes,
                       before: bytes) -> None:
        """Keep a copy of ``payload`` while its structs wait for ones it depends on,
        and apply the kept copies again whenever the state advances.

        yrs keeps such an update pending, but (0.28, measured) loses track of some
        when many arrive out of order: 2,000 updates shuffled within windows of 16
        leave 6 characters. Applying our copies again integrates all of them.
        Writers that follow this module never send out of order (one lane per
        document, and a Matrix timeline keeps causal order); others may.
        """

        def integrated(update: bytes, sv: bytes) -> bool:
            # What of the update the state lacks: no structs means all integrated.
            try:
                return pycrdt.get_update(update, sv)[:1] == b"\x00"
            except Exception:  # applied, yet not diffable: nothing to wait for
                return True

        sv = self.doc.get_state()
        if not integrated(payload, sv):
            self._pending[event_id] = (start, payload)
            self._pending_bytes += len(payload)
        progressed = sv != before
        while progressed and self._pending:
            progressed = False
            for key, (_, update) in list(self._pending.items()):
                sv = self.doc.get_state()
                if not integrated(update, sv):
                    if not self._apply_raw(None, update):
                        integrated_now = True  # it can never apply: stop waiting for it
                    else:
                        after = self.doc.get_state()
                        progressed = progressed or after != sv
                        integrated_now = integrated(update, after)
                    if not integrated_now:
                        continue
                del self._pending[key]
                self._pending_bytes -= len(update)
        while len(self._pending) > _PENDING_MAX or self._pending_bytes > _PENDING_BYTES:
            dropped, (_, update) = self._pending.popitem(last=False)
            self._pending_bytes -= len(update)
            log.warning("update %s of %r still misses structs it depends on; "
                        "no longer waiting for them", dropped, self.name)

    def _apply_update(self, ev: RoomEvent, update: bytes, start: _Start, *,
                      large: bool) -> None:
        try:
            # A reassembled (large) update is checked against the real state: it is
            # worth loading the document once to rule out a partial application.
            proto.validate_update(update, base=self.doc.get_update() if large else None)
        except ProtocolError as exc:
            self._skip(ev, str(exc))
            return
        if self._apply(ev, update, start):
            self._stats["updates_applied"] += 1
            self._stats["bytes_applied"] += len(update)
            self._observe_update(len(update))

    def _apply_snapshot(self, ev: RoomEvent, snap: proto.DocSnapshot, start: _Start) -> None:
        try:
            sv = snap.sv if snap.sv is not None else pycrdt.get_state(snap.state)
            covered = proto.state_vector_covers(self.doc.get_state(), sv)
        except (ProtocolError, ValueError) as exc:
            self._skip(ev, f"snapshot state vector: {exc}")
            return
        if covered:
            self._stats["snapshots_covered"] += 1
            self._policy.observe_snapshot()
            return
        # Someone has inserts we lack (an update we skipped, or ordered differently
        # on another homeserver): merge the snapshot; it repairs the gap.
        try:
            proto.validate_update(snap.state, base=self.doc.get_update())
        except ProtocolError as exc:
            self._skip(ev, str(exc))
            return
        if self._apply(ev, snap.state, start):
            self._stats["snapshots_applied"] += 1
            self._policy.observe_snapshot()


class _BackwardScan:
    """Reads a room's history newest first and finds where a cold open can start.

    That is the first snapshot of the document that completes and validates, its
    ``covers`` event, and the completion of every update chunk set with a chunk
    after ``covers`` (within ``_CHUNK_LOOKBACK`` events).
    """

    def __init__(self, name: str, rejected: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.rejected = rejected
        self.asm = proto.ChunkAssembler()
        self.snapshot: proto.DocSnapshot | None = None
        self.snapshot_event: str | None = None
        self.snapshot_sender: str | None = None
        self.snapshot_index = -1
        self.covers_index: int | None = None
        self.open_sets: dict[tuple[str, str], set[int]] = {}
        self.past_covers = 0

    def without_snapshot(self, window: list[RoomEvent]) -> _BackwardScan:
        assert self.snapshot_event is not None
        scan = _BackwardScan(self.name, self.rejected | {self.snapshot_event})
        for i, ev in enumerate(window):
            scan.see(ev, i)
        return scan

    def done(self) -> bool:
        if self.snapshot is None or self.snapshot.covers is None or self.covers_index is None:
            return False
        return not self.open_sets or self.past_covers > _CHUNK_LOOKBACK

    def see(self, ev: RoomEvent, index: int) -> None:
        if ev.type not in (DOC_UPDATE, DOC_SNAPSHOT) or ev.content.get("doc") != self.name:
            return
        if self.covers_index is not None:
            self.past_covers += 1
        try:
            decoded = proto.decode_doc_event(ev.type, ev.content)
        except ProtocolError:
            return
        if self.snapshot is None:
            candidate: proto.DocSnapshot | None = None
            if isinstance(decoded, proto.DocSnapshot):
                candidate = decoded
            elif isinstance(decoded, proto.DocChunk) and decoded.kind == "snapshot":
                whole = self.asm.feed(ev.event_id, ev.sender, decoded)
                candidate = whole if isinstance(whole, proto.DocSnapshot) else None
            if candidate is not None and ev.event_id not in self.rejected:
                try:
                    proto.validate_update(candidate.state)
                except ProtocolError:
                    candidate = None
            if candidate is not None:
                self.snapshot = candidate
                self.snapshot_event = ev.event_id
                self.snapshot_sender = ev.sender
                self.snapshot_index = index
                return
        elif self.covers_index is None and ev.event_id == self.snapshot.covers:
            self.covers_index = index
        if isinstance(decoded, proto.DocChunk) and decoded.kind == "update":
            key = (ev.sender, decoded.chunk.id)
            if self.covers_index is None:
                seen = self.open_sets.setdefault(key, set())
            elif key in self.open_sets:
                seen = self.open_sets[key]
            else:
                return
            seen.add(decoded.chunk.index)
            if len(seen) >= decoded.chunk.count:
                del self.open_sets[key]


def open_doc(client: Engine, room_id: str, name: str = "default", **kw: Any) -> SyncedDoc:
    """``async with open_doc(client, room, name) as sdoc``: see :class:`SyncedDoc`.

    Keyword arguments: ``on_progress(done, total_or_None)`` (long loads: events read
    with ``total=None`` while paging, then events applied of ``total``),
    ``batch_delay`` (default 0.05 s: the longest an edit waits before its batch),
    ``cache_interval`` (default 5 s), ``policy`` (a SnapshotPolicy), ``assembler``
    (a ChunkAssembler with other limits), ``read_only``.
    """
    return SyncedDoc(client, room_id, name, **kw)
