"""The loader: bringing a document up to date when it is opened.

It owns what a load needs and nothing else: the live events buffered while it
waits for the declaration (the backlog), the load's cost counters and the
read-ahead of a cold open's first page; where in the pages read a cold open
can start is :class:`~mxsync.docs.coldscan.BackwardScan`'s (pure). The ways in:

- the cache (:func:`restore`): full state, the doc log, this device's client ids;
- catch-up: page forwards from the cached position, applying everything after it;
- cold open: the newest complete, valid snapshot, then the updates after it
  (docs/PROTOCOL.md, section "Documents"). Its first page depends on nothing
  the declaration checks find, so :meth:`Loader.prefetch` reads it while they
  run: opening right after a snapshot then waits for one page, not for the
  checks and then the page.

Every event goes through the :class:`~mxsync.docs.replica.Replica`; history is
read through the engine's one page iterator (``Engine.pages`` and
:func:`~mxsync.engine.pages.paginate`), with the loads' own stops as ``break``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, Final

import anyio
import anyio.lowlevel
import pycrdt
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from ..engine.authz import judge_state, levels_for, power_level_allows, room_creators
from ..engine.events import MessagesPage, RoomEvent
from ..engine.pages import paginate
from ..engine.state_history import newest_valid
from ..engine.surface import Engine
from ..errors import ForbiddenError, MatrixError, ProtocolError
from ..protocol import docs as proto
from ..protocol.types import DOC, DOC_SNAPSHOT, DOC_UPDATE, MEMBER
from . import cache
from .coldscan import BackwardScan, writer_servers
from .replica import CREATE, PL, REMOTE, Replica

__all__ = ["Loader", "Restored", "declaration_delay", "restore"]

log = logging.getLogger("mxsync.docs")

ProgressCallback = Callable[[int, "int | None"], None]

_HISTORY_TYPES: Final = [DOC_UPDATE, DOC_SNAPSHOT, PL]
#: Backward page sizes of a cold open: the newest snapshot is usually within the
#: last ~75 events (SnapshotPolicy), so small pages first. The first one holds
#: what an open needs when the snapshot is the newest event (the snapshot, its
#: ``covers`` and the ``_BRANCH_QUIET_KNOWN`` updates below it: docs/coldscan.py),
#: so that opening right after a snapshot reads one page of 16 events.
_COLD_PAGES: Final = (16, 64, 256)
_PAGE: Final = 1000

COUNTERS: Final = ("load_events", "load_pages", "load_http_ms")


class _Prefetched:
    """One backward page read ahead in a task of its own; its outcome (the page
    or the exception) is kept for the load, which takes it at most once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._page: MessagesPage | None = None
        self._error: Exception | None = None

    async def run(self, fetch: Callable[[], Awaitable[MessagesPage]]) -> None:
        with self.scope:
            try:
                self._page = await fetch()
            except Exception as exc:  # raised where the page is taken, not in the task group
                self._error = exc
            finally:
                self._done.set()

    async def take(self) -> MessagesPage | None:
        """The page (None if the read was cancelled), or the read's exception."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._page


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
                 lane: str, read_only: bool, on_progress: ProgressCallback | None,
                 declare_timeout: float | None = 30.0) -> None:
        self.client = client
        #: How long to wait for someone else to declare the document (None: ever).
        self.declare_timeout = declare_timeout
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
        #: Whether the declaration asks for short-form updates (None: not read yet).
        self._short: bool | None = None
        #: A cold open's first page, read ahead (see :meth:`prefetch`).
        self._prefetched: _Prefetched | None = None

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
        if ev is not None and ev.content and await self._find_declaration(ev):
            return
        if self.read_only:
            raise ProtocolError(f"document {self.name!r} is not declared in {self.room_id}")
        elif await self.client.may_send(self.room_id, self.client.user_id, DOC, state=True):
            await self._declare_once()
        else:
            await self._await_declaration(recv)

    async def _declare_once(self) -> None:
        """Declare the document unless someone else just did; return once the
        declaration is in the room.

        There is no compare-and-set for state in Matrix, so two members opening a
        new document at once would both declare it. Against that: the state is
        read fresh from the homeserver (the sync cache may be behind), the members
        who may declare take turns (:func:`declaration_delay`: the first by a hash
        of the name goes at once, the next ones look again after their turn's
        delay), and the declaration has landed before the load goes on, so whoever
        opens after this one's ``wait_synced`` returned sees it.
        """
        for attempt in range(2):
            state = await self.client.room_state(self.room_id)
            found = next((ev for ev in state if ev.type == DOC and ev.state_key == self.name),
                         None)
            if found is not None and found.content and await self._declared_by_writer(found):
                self._check_declaration(found.content)
                return
            delay = declaration_delay(state, self.client.user_id, self.name)
            if attempt or not delay:
                break
            await anyio.sleep(delay)
        # New documents take the short form of updates (PROTOCOL.md, section 2).
        handle = await self.client.send(
            self.room_id, DOC, proto.encode_declaration(proto.ENCODING_YJS_V1_SHORT),
            state_key=self.name, lane=self.lane)
        await handle.wait()
        self._short = True

    async def _await_declaration(self, recv: MemoryObjectReceiveStream[RoomEvent]) -> None:
        """Wait (at most ``declare_timeout``) for a writer to declare the document;
        then raise ForbiddenError naming the power level it takes."""
        me = self.client.user_id
        have, needed = levels_for(await self.client.get_state(self.room_id, PL), me, DOC,
                                  state=True)
        why = (f"{me} may not declare it: declaring a document (state event {DOC}) "
               f"needs power level {needed}, {me} has {have}")
        limit = self.declare_timeout
        log.warning("waiting %s for %r to be declared in %s by a member who may, since %s",
                    "without a deadline" if limit is None else f"up to {limit:g} s",
                    self.name, self.room_id, why)
        with anyio.move_on_after(math.inf if limit is None else limit):
            async for ev in recv:
                if (ev.type == DOC and ev.state_key == self.name and ev.content
                        and await self._declared_by_writer(ev)):
                    try:
                        self._check_declaration(ev.content)
                        return
                    except ProtocolError as exc:
                        log.warning("skipping declaration %s of %r: %s", ev.event_id,
                                    self.name, exc)
                        continue
                self.backlog.append(ev)
        raise ForbiddenError(
            403, "M_FORBIDDEN",
            f"document {self.name!r} is not declared in {self.room_id} and {why}; have a "
            f"member with power level {needed} open it first, or raise {me}'s level",
        )

    async def _declared_by_writer(self, ev: RoomEvent) -> bool:
        """Did the declaration's sender have the level for it where it stands
        (PROTOCOL §1.3)? One a homeserver let through from anyone else is ignored."""
        return bool(await judge_state(self.client, self.room_id, [ev], self.replica.creators))

    async def short_form(self) -> bool:
        """Whether the document's declaration asks for short-form updates."""
        if self._short is not None:
            return self._short
        ev = await self.client.state_event(self.room_id, DOC, self.name)
        if ev is None or not ev.content:
            return False
        try:
            decl = proto.decode_doc_event(DOC, ev.content)
        except ProtocolError:
            return False
        return isinstance(decl, proto.DocDeclaration) and decl.short

    def _check_declaration(self, content: dict[str, Any]) -> None:
        decl = proto.decode_doc_event(DOC, content)
        assert isinstance(decl, proto.DocDeclaration)
        if not decl.supported:
            raise ProtocolError(f"document {self.name!r} uses encoding {decl.encoding!r}")
        self._short = decl.short

    async def _find_declaration(self, current: RoomEvent) -> bool:
        """Is the document declared, judging by ``current`` (the room's state) and,
        when that is malformed or refused, by the declarations it replaced
        (PROTOCOL §1.7)? Raises ProtocolError only for a document whose newest
        readable declaration by a writer names an encoding this reader lacks."""
        by_writer = False
        unsupported: str | None = None

        async def accept(ev: RoomEvent) -> proto.DocDeclaration | None:
            nonlocal by_writer, unsupported
            if not ev.content:
                return None  # removed at that point: look further back
            if not await self._declared_by_writer(ev):
                return None
            by_writer = True
            try:
                decl = proto.decode_doc_event(DOC, ev.content)
            except ProtocolError as exc:
                log.warning("skipping declaration %s of %r in %s: %s", ev.event_id,
                            self.name, self.room_id, exc)
                return None
            if not isinstance(decl, proto.DocDeclaration):
                return None
            if not decl.supported:
                if unsupported is None:
                    unsupported = decl.encoding
                log.warning("skipping declaration %s of %r in %s: encoding %r", ev.event_id,
                            self.name, self.room_id, decl.encoding)
                return None
            return decl

        if await newest_valid(self.client, self.room_id, current, accept) is not None:
            return True
        if unsupported is not None:
            raise ProtocolError(f"document {self.name!r} uses encoding {unsupported!r}")
        if by_writer:
            # Declared by a writer, but nothing readable left within reach: the
            # default declaration (yjs-v1) holds.
            log.warning("document %r in %s: no readable declaration, assuming %r",
                        self.name, self.room_id, proto.ENCODING_YJS_V1)
            return True
        return False

    # -- history ---------------------------------------------------------------------

    def prefetch(self, tg: TaskGroup) -> None:
        """Start reading a cold open's first page in ``tg`` now.

        Call it once the room's state is known (so that the page is newer than
        the power levels it is judged by) and before the declaration checks,
        whose requests then overlap with it. The page is as good as one read
        after them: every event newer than it comes through the live stream
        the document subscribed before (the backlog, or the reader after the
        load). :meth:`cancel_prefetch` once the load is over or failed.
        """
        self.cancel_prefetch()
        ahead = self._prefetched = _Prefetched(_COLD_PAGES[0])
        tg.start_soon(ahead.run, lambda: self._messages(None, ahead.limit, _HISTORY_TYPES))

    def cancel_prefetch(self) -> None:
        if self._prefetched is not None:
            self._prefetched.scope.cancel()
            self._prefetched = None

    async def _first_page(self, limit: int) -> MessagesPage:
        """A cold open's first page: the one read ahead if there is one."""
        ahead, self._prefetched = self._prefetched, None
        if ahead is not None and ahead.limit == limit:
            page = await ahead.take()
            if page is not None:
                return page
        return await self._messages(None, limit, _HISTORY_TYPES)

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

    async def _levels_before_window(self, window: list[RoomEvent],
                                    token: str | None) -> dict[str, Any] | None:
        """The power levels in force before the oldest event of a backward window
        read from the room's end. The window's filter lets ``m.room.power_levels``
        through, so when it holds none, the levels before it are the current ones
        and no request is needed."""
        if token is None or not any(ev.type == PL and ev.state_key == "" for ev in window):
            return await self.client.get_state(self.room_id, PL)
        return await self._pl_before(token)

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
            limit = sizes.pop(0) if sizes else _PAGE
            if token is None:
                return self._first_page(limit)
            return self._messages(token, limit, _HISTORY_TYPES)

        servers = writer_servers(await self.client.get_state(self.room_id, PL),
                                 self.replica.creators)
        scan = BackwardScan(self.name, servers=servers)
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
            pl_before = await self._levels_before_window(window, None if exhausted else token)
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


#: Turn length of members declaring a new document (see declaration_delay), and
#: the last turn: a member after the first few waits as long as the fourth.
_DECLARE_TURN: Final = 0.5
_DECLARE_TURNS: Final = 4


def declaration_delay(state: list[RoomEvent], user_id: str, name: str) -> float:
    """How long ``user_id`` waits before declaring document ``name``, given the
    room's current state: its turn among the joined members who may declare,
    ordered by SHA-256 of (name, user), times ``_DECLARE_TURN`` (capped)."""
    by_key = {(ev.type, ev.state_key): ev for ev in state if ev.state_key is not None}
    pl_ev = by_key.get((PL, ""))
    pl = pl_ev.content if pl_ev is not None else None
    creators = room_creators(by_key.get((CREATE, "")))
    members = {key for (kind, key), ev in by_key.items()
               if kind == MEMBER and ev.content.get("membership") == "join"}
    members.add(user_id)
    allowed = sorted((u for u in members
                      if power_level_allows(pl, u, DOC, state=True, creators=creators)),
                     key=lambda u: hashlib.sha256(f"{name}\0{u}".encode()).digest())
    turn = allowed.index(user_id) if user_id in allowed else 0
    return min(turn, _DECLARE_TURNS) * _DECLARE_TURN
