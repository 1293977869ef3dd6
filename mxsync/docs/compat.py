"""A document in a Matrix-CRDT room: ``open_doc(room, compat="matrix-crdt")``.

Owns one room's document in the Matrix-CRDT 0.2 wire format
(:mod:`mxsync.protocol.matrix_crdt`, docs/PROTOCOL.md section 5), so that a
Python service and a Matrix-CRDT JS app edit the same room: the ``pycrdt.Doc``,
the cold open (``/messages`` backwards to the newest snapshot's
``last_event_id``), the live stream, the local batches (each transaction's
update, merged with ``pycrdt.merge_updates`` as Matrix-CRDT's writer does, sent
through the outbox: persisted first, fixed transaction ids) and the snapshots
Matrix-CRDT's rule asks of this client.

What it does not do, because the format cannot carry it: chunking (a batch or
snapshot over the event size limit is refused by the homeserver, as it is for
Matrix-CRDT: it is logged and counted in ``too_large``, the edit stays in the
local document), document names (one document per room), declarations and the
power-level judgement of section 1.3 (the format has no declaration; the
homeserver's own checks apply), a local cache (every open is a cold open, as
Matrix-CRDT's).
"""

from __future__ import annotations

import logging
import secrets
import time
from contextlib import AsyncExitStack
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
import pycrdt
from anyio.streams.memory import MemoryObjectReceiveStream

from ..engine.events import RoomEvent
from ..engine.surface import Engine
from ..engine.taskgroups import StackOwner
from ..errors import ConfigError, MatrixError
from ..protocol import docs as proto
from ..protocol import matrix_crdt as wire
from ..protocol.types import MAX_CONTENT_BYTES
from .replica import REMOTE, is_panic

__all__ = ["MatrixCrdtDoc", "MatrixCrdtStatistics"]

log = logging.getLogger("mxsync.docs.compat")

#: Backward page size of the cold open (Matrix-CRDT reads 30 at a time).
_PAGE: Final = 100


class MatrixCrdtStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a :class:`MatrixCrdtDoc` since it was opened."""

    #: Update events handed to the outbox.
    updates_sent: int
    #: Bytes of their contents.
    bytes_sent: int
    #: Snapshots handed to the outbox.
    snapshots_sent: int
    #: Remote updates and snapshots applied.
    updates_applied: int
    snapshots_applied: int
    #: Events skipped and logged (malformed, refused by pycrdt).
    skipped: int
    #: Batches or snapshots too large for one event (the format has no chunks).
    too_large: int
    #: Events read by the cold open.
    load_events: int
    #: Update events counted towards the next snapshot (Matrix-CRDT's rule).
    updates_since_snapshot: int
    #: Milliseconds the open took (None until done).
    load_ms: float | None


class MatrixCrdtDoc(StackOwner):
    """A ``pycrdt.Doc`` (``.doc``) kept in sync with a Matrix-CRDT room.

    ``async with client.open_doc(room, compat="matrix-crdt") as mdoc``; edit
    ``mdoc.doc`` from the event loop's thread. ``batch_delay`` (default 0.05 s)
    bounds how long an edit waits for the ones after it; ``snapshots=False``
    keeps this client from posting snapshots.
    """

    def __init__(self, client: Engine, room_id: str, *, batch_delay: float = 0.05,
                 snapshots: bool = True) -> None:
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise ConfigError(f"not a room id: {room_id!r}")
        if not batch_delay >= 0:
            raise ConfigError("batch_delay must be >= 0")
        self.client = client
        self.room_id = room_id
        self.batch_delay = batch_delay
        self.may_snapshot = snapshots
        # A 32-bit client id, as Yjs draws them: Yjs < lib0 0.2.52 truncates larger ones.
        self._doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=secrets.randbits(32))
        self._lane = f"mcrdt:{secrets.token_hex(4)}"
        self._counter = wire.SnapshotCounter(client.user_id)
        self._pending: list[bytes] = []
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._synced = anyio.Event()
        self._load_error: BaseException | None = None
        self._load_ms: float | None = None
        self._seen: set[str] = set()
        self._subscription: pycrdt.Subscription | None = None
        self._handles: list[Any] = []
        self.counts = dict.fromkeys(("updates_sent", "bytes_sent", "snapshots_sent",
                                     "updates_applied", "snapshots_applied", "skipped",
                                     "too_large", "load_events"), 0)

    def __repr__(self) -> str:
        return f"<MatrixCrdtDoc in {self.room_id} for {self.client.user_id}>"

    # -- public API ------------------------------------------------------------------

    @property
    def doc(self) -> pycrdt.Doc[Any]:
        return self._doc

    @property
    def synced(self) -> bool:
        return self._synced.is_set() and self._load_error is None

    async def wait_synced(self) -> None:
        """Return once the cold open is done (snapshot and the updates after it)."""
        await self._synced.wait()
        if self._load_error is not None:
            raise self._load_error

    async def flush(self) -> None:
        """Return once every edit made before the call is in the room."""
        while self._pending or not self._idle.is_set():
            self._wake.set()
            await self._idle.wait()
            await anyio.lowlevel.checkpoint()
        for handle in list(self._handles):
            await handle.wait()

    def statistics(self) -> MatrixCrdtStatistics:
        return MatrixCrdtStatistics(**self.counts, load_ms=self._load_ms,
                                    updates_since_snapshot=self._counter.since)

    # -- lifecycle -------------------------------------------------------------------

    async def _setup(self, stack: AsyncExitStack) -> None:
        self._subscription = self._doc.observe(self._on_transaction)
        stack.callback(self._unobserve)
        recv = await stack.enter_async_context(
            self.client.room_events(self.room_id, wire.MCRDT_TYPES, buffer=4096))
        stack.push_async_callback(self._final_send)
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        tg.start_soon(self._reader, recv)
        tg.start_soon(self._writer)

    async def _final_send(self) -> None:
        """On close: hand what is still pending to the outbox (it persists it)."""
        with anyio.CancelScope(shield=True):
            if self._pending and self._synced.is_set():
                try:
                    await self._send_batch()
                except (MatrixError, RuntimeError) as e:
                    log.error("%s: edits not sent on close: %s", self.room_id, e)

    def _unobserve(self) -> None:
        if self._subscription is not None:
            self._doc.unobserve(self._subscription)
            self._subscription = None

    # -- local edits -----------------------------------------------------------------

    def _on_transaction(self, event: Any) -> None:
        # ``event`` is a pycrdt.TransactionEvent (its stub lacks ``transaction``).
        if event.transaction.origin() == hash(REMOTE):
            return
        update = event.update
        if update and update != b"\x00\x00":
            self._pending.append(update)
            self._idle = anyio.Event() if self._idle.is_set() else self._idle
            self._wake.set()

    async def _writer(self) -> None:
        await self._synced.wait()
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            if self.batch_delay and self._pending:
                # A burst: let the edits right after this one join its batch.
                deadline = time.monotonic() + self.batch_delay
                while time.monotonic() < deadline:
                    seen = len(self._pending)
                    await anyio.sleep(min(0.005, deadline - time.monotonic()))
                    if len(self._pending) == seen:
                        break
            await self._send_batch()

    async def _send_batch(self) -> None:
        if not self._pending:
            self._idle.set()
            return
        updates, self._pending = self._pending, []
        update = updates[0] if len(updates) == 1 else pycrdt.merge_updates(*updates)
        content = wire.encode_update(update)
        if proto.content_size(content) > MAX_CONTENT_BYTES:
            self.counts["too_large"] += 1
            log.error("%s: a batch of %d bytes is too large for one Matrix-CRDT event (the "
                      "format has no chunks); it stays in the local document only",
                      self.room_id, len(update))
        else:
            handle = await self.client.send(self.room_id, wire.MCRDT_UPDATE, content,
                                            lane=self._lane)
            self._track(handle)
            self.counts["updates_sent"] += 1
            self.counts["bytes_sent"] += proto.content_size(content)
        if not self._pending:
            self._idle.set()

    def _track(self, handle: Any) -> None:
        self._handles = [h for h in self._handles if not h.done] + [handle]

    # -- remote events ---------------------------------------------------------------

    async def _reader(self, recv: MemoryObjectReceiveStream[RoomEvent]) -> None:
        started = time.perf_counter()
        try:
            await self._cold_open()
        except Exception as exc:
            self._load_error = exc
            self._synced.set()
            raise
        self._load_ms = (time.perf_counter() - started) * 1000
        self._synced.set()
        self._wake.set()
        async for ev in recv:
            if ev.event_id in self._seen:
                continue
            self._seen.add(ev.event_id)
            await self._live(ev)

    async def _cold_open(self) -> None:
        collector = wire.BackwardCollector()
        async for page in self.client.pages(self.room_id, None, direction="b", limit=_PAGE,
                                            types=list(wire.MCRDT_TYPES)):
            self.counts["load_events"] += len(page.events)
            for ev in page.events:
                collector.see(ev.event_id, ev.type, ev.content)
                if collector.done:
                    break
                self._seen.add(ev.event_id)
            if collector.done or not page.events:
                break
        self.counts["skipped"] += collector.skipped
        for event_id, _etype, decoded in collector.forward():
            self._apply(event_id, decoded)
        self._counter.since = collector.since_snapshot

    async def _live(self, ev: RoomEvent) -> None:
        try:
            decoded = wire.decode(ev.type, ev.content)
        except Exception as exc:
            self.counts["skipped"] += 1
            log.warning("%s: skipping Matrix-CRDT event %s: %s", self.room_id, ev.event_id, exc)
            return
        if isinstance(decoded, wire.McrdtSnapshot):
            self._counter.see_snapshot()
        elif self._counter.see_update(ev.sender) and self.may_snapshot:
            await self._snapshot(ev.event_id)
        if ev.sender != self.client.user_id or ev.txn_id is None:
            self._apply(ev.event_id, decoded)

    def _apply(self, event_id: str, decoded: wire.McrdtUpdate | wire.McrdtSnapshot) -> None:
        payload = decoded.update if isinstance(decoded, wire.McrdtUpdate) else decoded.state
        try:
            with self._doc.transaction(origin=REMOTE):
                self._doc.apply_update(payload)
        except BaseException as exc:
            if not (isinstance(exc, (ValueError, RuntimeError)) or is_panic(exc)):
                raise
            self.counts["skipped"] += 1
            log.warning("%s: skipping Matrix-CRDT event %s: pycrdt refused it: %s",
                        self.room_id, event_id, exc)
            return
        key = "updates_applied" if isinstance(decoded, wire.McrdtUpdate) else "snapshots_applied"
        self.counts[key] += 1

    async def _snapshot(self, last_event_id: str) -> None:
        """Post the whole document as the snapshot Matrix-CRDT's rule asks of us."""
        content = wire.encode_snapshot(self._doc.get_update(), last_event_id)
        if proto.content_size(content) > MAX_CONTENT_BYTES:
            self.counts["too_large"] += 1
            log.error("%s: the document is too large for one Matrix-CRDT snapshot",
                      self.room_id)
            return
        try:
            self._track(await self.client.send(self.room_id, wire.MCRDT_SNAPSHOT, content,
                                               lane=self._lane))
        except MatrixError as exc:
            log.warning("%s: cannot post a snapshot: %s", self.room_id, exc)
            return
        self.counts["snapshots_sent"] += 1

