"""The loader: bringing a document up to date when it is opened.

It owns what a load needs and nothing else: the live events buffered while it
waits for the declaration (the backlog), the load's cost counters and the
backward scan of a cold open (:class:`BackwardScan`). The ways in:

- the cache (:func:`restore`): full state, the doc log, this device's client ids;
- catch-up: page forwards from the cached position, applying everything after it;
- cold open: the newest complete, valid snapshot, then the updates after it
  (docs/PROTOCOL.md, section "Documents").

Every event goes through the :class:`~mxsync.docs.replica.Replica`; history is
read through the engine's one page iterator (``Engine.pages`` and
:func:`~mxsync.engine.pages.paginate`), with the loads' own stops as ``break``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, Final

import anyio
import anyio.lowlevel
import pycrdt
from anyio.streams.memory import MemoryObjectReceiveStream

from ..engine.authz import judge_state
from ..engine.events import MessagesPage, RoomEvent
from ..engine.pages import paginate
from ..engine.surface import Engine
from ..errors import MatrixError, ProtocolError
from ..protocol import docs as proto
from ..protocol.types import DOC, DOC_SNAPSHOT, DOC_UPDATE
from . import cache
from .replica import PL, REMOTE, Replica

__all__ = ["BackwardScan", "Loader", "Restored", "restore"]

log = logging.getLogger("mxsync.docs")

ProgressCallback = Callable[[int, "int | None"], None]

_HISTORY_TYPES: Final = [DOC_UPDATE, DOC_SNAPSHOT, PL]
#: Backward page sizes of a cold open: the newest snapshot is usually within the
#: last ~75 events (SnapshotPolicy), so small pages first.
_COLD_PAGES: Final = (64, 256)
_PAGE: Final = 1000
#: How far past a snapshot's ``covers`` a cold open reads to complete chunk sets.
_CHUNK_LOOKBACK: Final = 4096

COUNTERS: Final = ("load_events", "load_pages", "load_http_ms")


class Restored:
    """What the cache held: the document and its meta, and the size of its state."""

    def __init__(self, doc: pycrdt.Doc[Any], meta: cache.Meta, state_bytes: int) -> None:
        self.doc = doc
        self.meta = meta
        self.state_bytes = state_bytes


async def restore(client: Engine, room_id: str, name: str) -> Restored | None:
    """The cached document, or None (nothing cached, or the cache was unreadable)."""
    await client.run_sql(cache.create_tables)
    raw_meta, state, logs = await client.run_sql(lambda c: cache.load(c, room_id, name))
    if raw_meta is None:
        return None
    try:
        meta = cache.decode_meta(raw_meta)
        doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=meta.client_id)
        with doc.transaction(origin=REMOTE):
            for blob in ([state] if state else []) + logs:
                doc.apply_update(blob)
    except Exception as exc:  # a damaged cache is rebuilt from the room
        log.error("cache of %r in %s is unreadable (%s); loading from the room",
                  name, room_id, exc)
        await client.run_sql(lambda c: cache.forget(c, room_id, name))
        return None
    return Restored(doc, meta, len(state or b""))


class Loader:
    """Loads one document into its replica (see the module docstring)."""

    def __init__(self, client: Engine, room_id: str, name: str, *, replica: Replica,
                 lane: str, read_only: bool, on_progress: ProgressCallback | None) -> None:
        self.client = client
        self.room_id = room_id
        self.name = name
        self.replica = replica
        self.lane = lane
        self.read_only = read_only
        self._on_progress = on_progress
        #: Live events that came while waiting for the declaration, in order.
        self.backlog: list[RoomEvent] = []
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        #: Encrypted history events this load could not decrypt (a late joiner).
        self.unreadable = 0

    def _progress(self, done: int, total: int | None) -> None:
        if self._on_progress is None:
            return
        try:
            self._on_progress(done, total)
        except Exception:
            log.exception("progress callback failed")

    # -- the declaration -------------------------------------------------------------

    async def declare(self, recv: MemoryObjectReceiveStream[RoomEvent]) -> None:
        """Return once the document is declared: found, declared by us, or awaited."""
        ev = await self.client.state_event(self.room_id, DOC, self.name)
        if ev is not None and ev.content and not await self._declared_by_writer(ev):
            ev = None
        if ev is not None and ev.content:
            self._check_declaration(ev.content)
        elif self.read_only:
            raise ProtocolError(f"document {self.name!r} is not declared in {self.room_id}")
        elif await self.client.may_send(self.room_id, self.client.user_id, DOC, state=True):
            await self.client.send(self.room_id, DOC, proto.encode_declaration(),
                                   state_key=self.name, lane=self.lane)
        else:
            log.info("waiting for %r to be declared in %s", self.name, self.room_id)
            async for ev in recv:
                if (ev.type == DOC and ev.state_key == self.name and ev.content
                        and await self._declared_by_writer(ev)):
                    self._check_declaration(ev.content)
                    break
                self.backlog.append(ev)

    async def _declared_by_writer(self, ev: RoomEvent) -> bool:
        """Did the declaration's sender have the level for it where it stands
        (PROTOCOL §1.3)? One a homeserver let through from anyone else is ignored."""
        return bool(await judge_state(self.client, self.room_id, [ev], self.replica.creators))

    def _check_declaration(self, content: dict[str, Any]) -> None:
        decl = proto.decode_doc_event(DOC, content)
        assert isinstance(decl, proto.DocDeclaration)
        if not decl.supported:
            raise ProtocolError(f"document {self.name!r} uses encoding {decl.encoding!r}")

    # -- history ---------------------------------------------------------------------

    async def history(self) -> None:
        """Catch up from the cached position, or else open cold."""
        position = self.replica.position
        if position is not None:
            try:
                await self._catch_up(position)
                return
            except MatrixError as exc:
                log.warning("cannot page on from the cached position of %r (%s); "
                            "loading from the newest snapshot", self.name, exc)
        await self._cold_open()

    async def _timed(
        self, pages: AsyncIterator[MessagesPage]
    ) -> AsyncGenerator[MessagesPage, None]:
        """``pages``, counting the time spent waiting for each in ``load_http_ms``."""
        while True:
            started = time.perf_counter()
            try:
                page = await anext(pages)
            except StopAsyncIteration:
                return
            finally:
                self.counts["load_http_ms"] += round((time.perf_counter() - started) * 1000)
            self.counts["load_pages"] += 1
            self.counts["load_events"] += len(page.events)
            self.unreadable += page.undecryptable
            yield page

    async def _messages(self, token: str | None, limit: int, types: list[str]) -> MessagesPage:
        """One backward page, timed."""
        started = time.perf_counter()
        try:
            return await self.client.messages(self.room_id, token, direction="b",
                                              limit=limit, types=types)
        finally:
            self.counts["load_http_ms"] += round((time.perf_counter() - started) * 1000)

    async def _pl_before(self, token: str | None) -> dict[str, Any] | None:
        """The power levels in force just before ``token`` (paging backwards)."""
        if token is not None:
            page = await self._messages(token, 1, [PL])
            self.counts["load_events"] += len(page.events)
            for ev in page.events:
                if ev.state_key == "":
                    return ev.content
        # Nothing earlier is visible: judge by the current levels.
        return await self.client.get_state(self.room_id, PL)

    async def _catch_up(self, position: str) -> None:
        """Page forwards from the cached position, applying everything after it."""
        token = await self.client.context_token(self.room_id, position)
        if token is None:
            raise MatrixError(200, "M_UNKNOWN", "no pagination token after the cached event")
        self.replica.pl = await self._pl_before(token)
        read = 0
        pages = self.client.pages(self.room_id, token, direction="f", limit=_PAGE,
                                  types=_HISTORY_TYPES)
        async with aclosing(self._timed(pages)) as timed:
            async for page in timed:
                for i, ev in enumerate(page.events):
                    self.replica.safe_process(ev, live=False)
                    if i % 256 == 255:
                        await anyio.lowlevel.checkpoint()
                read += len(page.events)
                self._progress(read, None)
                if not page.events and not page.undecryptable:
                    break

    async def _cold_open(self) -> None:
        """Newest complete valid snapshot, then the updates after it (PROTOCOL.md)."""
        window: list[RoomEvent] = []  # newest first
        sizes = list(_COLD_PAGES)

        def fetch(token: str | None) -> Awaitable[MessagesPage]:
            return self._messages(token, sizes.pop(0) if sizes else _PAGE, _HISTORY_TYPES)

        scan = BackwardScan(self.name)
        token: str | None = None
        exhausted = False
        pages = paginate(fetch, None)  # nothing to clean up: it waits at a yield
        while True:
            while not exhausted and not scan.done():
                page = await anext(pages)
                self.counts["load_pages"] += 1
                self.counts["load_events"] += len(page.events)
                self.unreadable += page.undecryptable
                for ev in page.events:
                    window.append(ev)
                    scan.see(ev, len(window) - 1)
                self._progress(len(window), None)
                # The page rule's stop (no end, or one that does not move), and
                # an empty page: the walk is over.
                empty = not page.events and not page.undecryptable
                if empty or page.end is None or page.end == token:
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
        await self._apply_window(window, scan, pl_before)

    async def _apply_window(self, window: list[RoomEvent], scan: BackwardScan,
                            pl: dict[str, Any] | None) -> None:
        """Apply the scan's snapshot, then every event of ``window`` after it, oldest first."""
        forward = window[::-1]
        total = len(forward)
        self.replica.pl = pl
        covers_at = -1
        snap = scan.snapshot
        if snap is not None:
            if scan.covers_index is not None:
                covers_at = total - 1 - scan.covers_index
            self.replica.apply_base(snap)
        for i, ev in enumerate(forward):
            self.replica.safe_process(ev, live=False, covered=i <= covers_at)
            if i % 256 == 255:
                self._progress(i + 1, total)
                await anyio.lowlevel.checkpoint()
        self._progress(total, total)

    def _snapshot_problem(self, window: list[RoomEvent], scan: BackwardScan,
                          pl: dict[str, Any] | None) -> str | None:
        """Why the scan's snapshot cannot be the base of this open, or None if it can."""
        if scan.snapshot is None:
            return None
        for ev in reversed(window[scan.snapshot_index:]):
            if ev.type == PL and ev.state_key == "":
                pl = ev.content
        return self.replica.snapshot_problem(scan.snapshot, scan.snapshot_sender or "", pl)


class BackwardScan:
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

    def without_snapshot(self, window: list[RoomEvent]) -> BackwardScan:
        assert self.snapshot_event is not None
        scan = BackwardScan(self.name, self.rejected | {self.snapshot_event})
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
            if self._candidate(ev, decoded, index):
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

    def _candidate(self, ev: RoomEvent, decoded: Any, index: int) -> bool:
        """Take ``ev`` as the snapshot if it is a whole, valid one; True if taken."""
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
        if candidate is None:
            return False
        self.snapshot = candidate
        self.snapshot_event = ev.event_id
        self.snapshot_sender = ev.sender
        self.snapshot_index = index
        return True
