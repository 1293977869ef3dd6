"""SyncedDoc: the public facade of a document and its lifecycle.

It owns the lifecycle (the exit stack, the task group with the reader and
the writer, the observer's subscription), the load's outcome (synced, its
error, how long it took) and the parts, each owning its own state: the
:class:`~mxsync.docs.replica.Replica` (remote side, pure), the
:class:`~mxsync.docs.local.LocalChanges`, the
:class:`~mxsync.docs.writer.Writer` and the :class:`~mxsync.docs.loader.Loader`.
"""

from __future__ import annotations

import logging
import time
import weakref
from contextlib import AsyncExitStack
from typing import Any, Final, Literal, Self, overload

import anyio
import msgspec
import pycrdt
from anyio.streams.memory import MemoryObjectReceiveStream

from ..engine.authz import room_creators
from ..engine.events import RoomEvent
from ..engine.http import Backoff
from ..engine.pages import look_back_retrying
from ..engine.surface import Engine
from ..engine.taskgroups import StackOwner
from ..errors import ConfigError, HomeserverUnavailable, MatrixError, ProtocolError, TransientError
from ..protocol import docs as proto
from ..protocol.types import DOC, DOC_REQUEST, DOC_SNAPSHOT, DOC_UPDATE
from .channel import Channel, ChannelStatistics
from .compat import MatrixCrdtDoc
from .loader import Loader, ProgressCallback, restore
from .local import LocalChanges
from .replica import CREATE, PL, Replica
from .writer import Writer

__all__ = ["DocStatistics", "SyncedDoc", "open_doc"]

log = logging.getLogger("mxsync.docs")

_LIVE_TYPES: Final = (DOC, PL, CREATE)  # prefixes: DOC also matches .update/.snapshot
_STREAM_BUFFER: Final = 4096
#: Waits before each look-back for what pending updates depend on (seconds), and
#: how far back each looks: a hole still open after them is reported.
_REPAIR_DELAYS: Final = (1.0, 2.0, 4.0, 8.0, 16.0)
_REPAIR_EVENTS: Final = 20_000
_HOLE_TYPES: Final = (DOC_UPDATE, DOC_SNAPSHOT)

# Documents open per client: two SyncedDocs of one (room, name) on one client
# would share a Yjs client id and issue the same clocks twice.
_OPEN: weakref.WeakKeyDictionary[Engine, set[tuple[str, str]]] = weakref.WeakKeyDictionary()


class DocStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a :class:`SyncedDoc` since it was opened."""

    #: Local transactions (edits) made.
    edits: int
    #: Batches of local edits handed to the outbox.
    batches_sent: int
    #: Update events (chunks count one each) handed to the outbox.
    update_events_sent: int
    #: Bytes of the update events' contents.
    bytes_sent: int
    #: Bytes of the Yjs updates they carry.
    payload_bytes_sent: int
    #: Snapshots the homeserver accepted.
    snapshots_sent: int
    #: Snapshot events (chunks count one each) handed to the outbox.
    snapshot_events_sent: int
    #: Remote updates applied.
    updates_applied: int
    #: Bytes of the remote updates applied.
    bytes_applied: int
    #: Snapshots applied (the base of a cold open, or merged to repair a gap).
    snapshots_applied: int
    #: Snapshots seen that the state already covered.
    snapshots_covered: int
    #: Our own events seen again in the timeline.
    own_echoes: int
    #: Events seen twice (at the seam between the load and the live events).
    duplicates: int
    #: Events skipped and logged (undecodable, forbidden, invalid, refused by pycrdt).
    skipped: int
    #: Of the skipped events, those whose sender lacked the power level.
    forbidden: int
    #: Older updates applied by looking back for what pending ones depend on.
    repaired: int
    #: Remote updates applied whose structs still wait for ones they depend on.
    pending_updates: int
    #: Look-backs that ended with updates still pending (each is logged).
    unrepaired: int
    #: Updates before a snapshot's ``covers`` applied when opening from it because
    #: the snapshot may lack them (inserts its state vector lacks, or deletions,
    #: which state vectors do not show): judged by content, not position.
    uncovered: int
    #: Updates of a concurrent branch merged (made before the newest snapshot,
    #: not in it); each makes the writer post a fresh snapshot soon.
    concurrent_merges: int
    #: Events read while loading.
    load_events: int
    #: /messages pages read while loading.
    load_pages: int
    #: Milliseconds spent waiting for /messages while loading.
    load_http_ms: int
    #: Full states written to the cache.
    cache_writes: int
    #: Diffs appended to the cache's log.
    log_writes: int
    #: Milliseconds the initial load took (None until it is done).
    load_ms: float | None
    #: Local edits the homeserver has not acknowledged yet.
    pending_edits: int
    #: Whether a batch is in flight.
    in_flight: bool
    #: Whether the writer wants to send a snapshot.
    snapshot_pending: bool
    #: Updates seen since the last snapshot (the snapshot policy's count).
    updates_since_snapshot: int
    #: The chunk assembler's counters.
    chunks: proto.AssemblerStatistics


class SyncedDoc(StackOwner):
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
        declare_timeout: float | None = 30.0,
        snapshots: bool = True,
        live: bool = True,
        awareness_timeout: float = 30.0,
        awareness_rate: float = 5.0,
        max_live_devices: int = 8,
    ) -> None:
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise ConfigError(f"not a room id: {room_id!r}")
        if not isinstance(name, str) or not 1 <= len(name.encode("utf-8", "replace")) <= 255:
            raise ConfigError("document name must be 1..255 bytes of UTF-8")
        if not batch_delay >= 0 or not cache_interval > 0:
            raise ConfigError("batch_delay must be >= 0 and cache_interval > 0")
        if not awareness_timeout > 0 or not awareness_rate > 0 or max_live_devices < 0:
            raise ConfigError("awareness_timeout and awareness_rate must be > 0, "
                              "max_live_devices >= 0")
        self.client = client
        self.room_id = room_id
        self.name = name
        self.read_only = read_only
        identity = f"{client.user_id}|{client.device_id or ''}"
        self._replica = Replica(name, policy=policy or proto.SnapshotPolicy(identity),
                                assembler=assembler, user_id=client.user_id, room_id=room_id)
        self._local = LocalChanges(self._replica.doc, self._wake)
        self._writer = Writer(client, room_id, name, replica=self._replica, local=self._local,
                              batch_delay=batch_delay, cache_interval=cache_interval,
                              read_only=read_only)
        if not snapshots:
            self._writer.may_snapshot = False
        self._replica.on_update = self._writer.consider_snapshot
        self._replica.on_concurrent = self._writer.fresh_snapshot
        self._loader = Loader(client, room_id, name, replica=self._replica,
                              lane=self._writer.lane, read_only=read_only,
                              on_progress=on_progress, declare_timeout=declare_timeout)
        self._subscription: pycrdt.Subscription | None = None
        self._synced = anyio.Event()
        self._load_error: BaseException | None = None
        self._load_ms: float | None = None
        self._repairing = False
        self._unrepaired = 0
        self._awareness: pycrdt.Awareness | None = None
        self._live = live and not read_only
        self._awareness_timeout = awareness_timeout
        self._awareness_rate = awareness_rate
        self._max_live_devices = max_live_devices
        self._channel: Channel | None = None

    def __repr__(self) -> str:
        return f"<SyncedDoc {self.name!r} in {self.room_id} for {self.client.user_id}>"

    def _wake(self) -> None:
        self._writer.wake()

    # -- public API --------------------------------------------------------------

    @property
    def doc(self) -> pycrdt.Doc[Any]:
        """The document: an ordinary ``pycrdt.Doc``."""
        return self._replica.doc

    @property
    def awareness(self) -> pycrdt.Awareness:
        """The document's ``pycrdt.Awareness`` (presence, cursors: never in the document),
        kept in step with the other replicas over to-device while the document is open
        (docs/PROTOCOL.md, "Live channel"). Bound to :attr:`doc`'s client id."""
        if self._awareness is None or self._awareness.client_id != self.doc.client_id:
            self._awareness = pycrdt.Awareness(
                self.doc, outdated_timeout=int(self._awareness_timeout * 1000))
        return self._awareness

    def channel_statistics(self) -> ChannelStatistics | None:
        """Counters of the to-device channel (awareness, live updates); None before the
        document was first opened (after a close: the counts at the close)."""
        return None if self._channel is None else self._channel.statistics()

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
        await self._writer.flush()

    async def persist(self) -> None:
        """Store every local change made so far in the local store, without the network."""
        self._check_open()
        await self._writer.persist()

    def statistics(self) -> DocStatistics:
        """Counters since open: events sent and applied, load cost, skipped events."""
        writer = self._writer
        return DocStatistics(
            edits=self._local.edits,
            **writer.counts,
            **self._replica.counts,
            **self._loader.counts,
            pending_updates=self._replica.pending,
            unrepaired=self._unrepaired,
            load_ms=self._load_ms,
            pending_edits=self._local.edit_seq - writer.acked_seq,
            in_flight=writer.inflight,
            snapshot_pending=writer.snapshot_wanted,
            updates_since_snapshot=writer.policy.updates_since,
            chunks=self._replica.asm.statistics(),
        )

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        key = (self.room_id, self.name)
        opened = _OPEN.setdefault(self.client, set())
        if key in opened:
            raise ConfigError(f"document {self.name!r} of {self.room_id} is already open "
                              "on this client")
        opened.add(key)
        try:
            return await super().__aenter__()
        except BaseException:
            opened.discard(key)
            raise

    async def _setup(self, stack: AsyncExitStack) -> None:
        await self._restore()
        self._writer.max_bytes = await self.client.content_budget(self.room_id)
        self._subscription = self.doc.observe(self._local.on_transaction)
        stack.callback(self._unobserve)
        recv = await stack.enter_async_context(
            self.client.room_events(self.room_id, _LIVE_TYPES, buffer=_STREAM_BUFFER)
        )
        stack.push_async_callback(self._writer.final_save)
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        self._writer.tg = tg
        tg.start_soon(self._reader, recv)
        tg.start_soon(self._writer.run)
        self._channel = Channel(
            self.client, self._replica, self.awareness, self.room_id, self.name,
            live=self._live, timeout=self._awareness_timeout,
            rate=self._awareness_rate, max_devices=self._max_live_devices,
            persist=self._writer.persist, ready=self._synced.is_set,
            loaded=self._synced.wait)
        self._writer.hold = self._channel.live.pending_send
        await self._channel.start(stack, tg)
        stack.push_async_callback(self._channel.close)  # before the tasks stop

    def _closed(self) -> None:
        self._writer.tg = None
        _OPEN.get(self.client, set()).discard((self.room_id, self.name))

    def _check_open(self) -> None:
        if self._stack is None:
            raise RuntimeError("the document is not open; use `async with client.open_doc(...)`")

    def _unobserve(self) -> None:
        if self._subscription is not None:
            self.doc.unobserve(self._subscription)
            self._subscription = None

    async def _restore(self) -> None:
        restored = await restore(self.client, self.room_id, self.name)
        if restored is None:
            return
        meta, writer, replica = restored.meta, self._writer, self._replica
        replica.doc = restored.doc
        if self._local.restore(restored.doc, meta.local_clients, meta.sent,
                               unsent_ds=meta.unsent_ds):
            # Edits of a previous run that never reached the outbox: send them.
            writer.persisted_seq = 1
            log.info("%r in %s: resuming unsent local edits from the store", self.name,
                     self.room_id)
        writer.declared = meta.declared
        replica.position = writer.base_position = meta.position
        replica.covers = writer.base_covers = meta.covers
        if meta.updates_since:
            for _ in range(meta.updates_since - 1):
                writer.policy.observe_update(0)
            writer.policy.observe_update(meta.bytes_since)
        writer.state_bytes = restored.state_bytes

    # -- reader ------------------------------------------------------------------------

    def _safe_process(self, ev: RoomEvent, *, live: bool) -> None:
        if ev.type == DOC_REQUEST:
            self._writer.snapshot_requested(ev)
            return
        self._replica.safe_process(ev, live=live)

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
                # Also raised by wait_synced (and so said by whoever waits).
                log.error("cannot load %r of %s: %s", self.name, self.room_id, exc)
                self._load_error = exc
                self._loaded()
                await recv.aclose()  # nothing will read it: do not hold up the sync loop
                return
        for ev in self._loader.backlog:
            self._safe_process(ev, live=True)
        self._loader.backlog.clear()
        self._writer.state_bytes = len(self.doc.get_update())
        self._load_ms = (time.monotonic() - started) * 1000
        self._loaded()
        self._wake()
        self._check_holes()
        async for ev in recv:
            self._safe_process(ev, live=True)
            self._check_holes()

    # -- holes ---------------------------------------------------------------------------

    def _check_holes(self) -> None:
        """Updates wait for ones never seen: look back for them (one task at a time)."""
        tg = self._writer.tg
        if self._replica.pending and not self._repairing and tg is not None:
            self._repairing = True
            tg.start_soon(self._repair_holes)

    async def _repair_holes(self) -> None:
        """Page the room backwards (bounded, with backoff) until no update is pending.

        The sync loop's gap repair normally brings every event; this covers what
        a server could not backfill yet (the other server unreachable or in
        backoff right after a heal) and writers that send out of order.
        """
        replica = self._replica

        def visit(ev: RoomEvent) -> bool:
            replica.repair(ev)
            return not replica.pending

        try:
            outcome = await look_back_retrying(
                self.client, self.room_id, _HOLE_TYPES, delays=_REPAIR_DELAYS,
                max_events=_REPAIR_EVENTS, visit=visit, done=lambda: not replica.pending,
                log=log, what=f"{self.name!r} in {self.room_id}",
            )
            if outcome == "found":
                log.info("%r in %s: the updates pending ones depend on were found",
                         self.name, self.room_id)
                self._wake()
            if outcome != "missing":
                return
            self._unrepaired += 1
            log.warning("%r in %s: %d update(s) still wait for ones they depend on, "
                        "not found in the last %d events", self.name, self.room_id,
                        self._replica.pending, _REPAIR_EVENTS)
        finally:
            self._repairing = False

    def _loaded(self) -> None:
        self._synced.set()
        self._writer.loaded = True

    async def _load(self, recv: MemoryObjectReceiveStream[RoomEvent]) -> None:
        create = await self.client.state_event(self.room_id, CREATE)
        self._replica.creators = room_creators(create)
        tg = self._writer.tg
        if self._replica.position is None and tg is not None:
            # The room's state is known now: a cold open's first page is read
            # while the declaration is checked (PROTOCOL.md, "Opening").
            self._loader.prefetch(tg)
        try:
            # Declared before this open: someone may have written it already.
            existed = await self.client.state_event(self.room_id, DOC, self.name) is not None
            if not self._writer.declared:
                await self._loader.declare(recv)
                self._writer.short = await self._loader.short_form()
                self._writer.declared = True
                self._wake()
            else:
                self._writer.short = await self._loader.short_form()
            await self._loader.history()
        finally:
            self._loader.cancel_prefetch()
        await self._ask_if_unreadable(existed)

    async def _ask_if_unreadable(self, existed: bool) -> None:
        """In an encrypted room, history sent before this device joined cannot be
        decrypted: if the load met such events, ask the writers for a snapshot
        (docs/PROTOCOL.md, late joiners). Also when a document declared before
        loaded empty: under history visibility "joined" the server shows a
        newcomer no earlier event at all, not even undecryptable ones."""
        empty = self.doc.get_state() == b"\x00"
        if not (self._loader.unreadable or (existed and empty)):
            return
        if not await self.client.is_encrypted(self.room_id):
            return
        try:
            await self.client.send(self.room_id, DOC_REQUEST, {"v": proto.VERSION,
                                                               "doc": self.name})
        except MatrixError as exc:
            log.warning("%r in %s: cannot ask for a snapshot: %s", self.name, self.room_id, exc)


@overload
def open_doc(client: Engine, room_id: str, name: str = ..., *, compat: None = None,
             **kw: Any) -> SyncedDoc: ...
@overload
def open_doc(client: Engine, room_id: str, name: str = ..., *,
             compat: Literal["matrix-crdt"], **kw: Any) -> MatrixCrdtDoc: ...
def open_doc(client: Engine, room_id: str, name: str = "default", *,
             compat: str | None = None, **kw: Any) -> SyncedDoc | MatrixCrdtDoc:
    """``async with open_doc(client, room, name) as sdoc``: see :class:`SyncedDoc`.

    ``compat="matrix-crdt"`` opens the room's document in the Matrix-CRDT 0.2 wire
    format instead (:class:`~mxsync.docs.compat.MatrixCrdtDoc`; one document per
    room, so ``name`` must be left as it is; ``batch_delay`` and ``snapshots``
    apply).

    Keyword arguments: ``on_progress(done, total_or_None)`` (long loads: events read
    with ``total=None`` while paging, then events applied of ``total``),
    ``batch_delay`` (default 0.05 s: the longest an edit waits before its batch),
    ``cache_interval`` (default 5 s), ``policy`` (a SnapshotPolicy), ``assembler``
    (a ChunkAssembler with other limits), ``read_only``, ``snapshots`` (False: this
    client never posts snapshots), ``declare_timeout`` (default 30 s: how long a
    member who may not declare the document waits for one who may; then
    :meth:`SyncedDoc.wait_synced` raises ForbiddenError naming the level it takes;
    None waits for ever, with a warning in the log); the to-device channel
    (docs/PROTOCOL.md, "Live channel"): ``live`` (default True: local batches
    also go at once to the peers' devices), ``awareness_timeout`` (default 30 s,
    as y-protocols), ``awareness_rate`` (awareness sends a second, default 5),
    ``max_live_devices`` (default 8: above it, the timeline alone).
    """
    if compat == "matrix-crdt":
        if name != "default":
            raise ConfigError("a Matrix-CRDT room holds one document: open it without a name")
        return MatrixCrdtDoc(client, room_id, **kw)
    if compat is not None:
        raise ConfigError(f"unknown compat mode {compat!r}; known: 'matrix-crdt'")
    return SyncedDoc(client, room_id, name, **kw)
