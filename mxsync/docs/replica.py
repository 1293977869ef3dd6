"""The replica: a document's remote side as a state machine, with no I/O and no event loop.

It owns the ``pycrdt.Doc`` and everything that follows from the room's events:
the power levels and room creators in force, the event ids already seen, the
position (last document event read) and ``covers`` (last event of this
document applied), the chunk sets being assembled (a
:class:`~mxsync.protocol.docs.ChunkAssembler`) and the updates applied but
still waiting for structs they depend on. Events go in (:meth:`Replica.process`),
the document changes in transactions whose origin is :data:`REMOTE`.

Invariants (numbers as in :mod:`mxsync.docs`)
---------------------------------------------
4. A remote update is applied only if it decodes, its sender may send its event
   type under the power levels in force at its place in the timeline, it passes
   :func:`~mxsync.protocol.docs.validate_update`, and ``apply_update`` does not
   raise. Anything else is skipped and logged once, with its event id; nothing
   a room member sends can stop the reader. An applied update whose structs wait
   for missing ones is kept (bounded) and applied again as the state advances.
5. :meth:`Replica.resume_position` and :meth:`Replica.snapshot_covers` come
   before every update the state does not hold yet (incomplete chunk sets,
   pending updates: yrs leaves pending structs out of ``get_update()``).
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

import pycrdt

from ..engine.authz import power_level_allows, room_creators
from ..engine.events import RoomEvent
from ..errors import ProtocolError
from ..protocol import docs as proto
from ..protocol.types import DOC, DOC_SNAPSHOT, DOC_UPDATE

__all__ = ["PL", "REMOTE", "Replica", "is_panic"]

log = logging.getLogger("mxsync.docs")

#: Origin of the transactions in which remote updates (and the cache) are applied.
#: The observer ignores them: what came from the room is never sent back.
REMOTE: Final = "mxsync.docs.remote"

PL: Final = "m.room.power_levels"
CREATE: Final = "m.room.create"
#: Event ids remembered to drop duplicates. The sync loop already deduplicates
#: live events; a document needs this only at the seam between its load (paged
#: from /messages) and the live events buffered meanwhile, which the stream buffer
#: bounds (_STREAM_BUFFER). Each id costs ~200 bytes for the life of the document,
#: so this is kept to the seam's size (the soak measured 50,000 here as ~10 MB).
_SEEN_MAX: Final = 2 * 4096
#: Updates applied but still waiting for structs they depend on, tracked at most.
_PENDING_MAX: Final = 4096
_PENDING_BYTES: Final = 32 * 1024 * 1024
#: How much older than the newest snapshot (origin_server_ts) an update it lacks
#: must be to count as a concurrent branch rather than a send racing the snapshot.
_CONCURRENT_MS: Final = 2_000

#: Where an incomplete chunk set or a pending update started:
#: (seq, position before it, covers before it).
Start = tuple[int, "str | None", "str | None"]

COUNTERS: Final = (
    "updates_applied", "bytes_applied", "snapshots_applied", "snapshots_covered",
    "own_echoes", "duplicates", "skipped", "forbidden", "repaired", "uncovered",
    "concurrent_merges",
)


def is_panic(exc: BaseException) -> bool:
    # pyo3 turns a Rust panic into PanicException, a BaseException subclass.
    return type(exc).__name__ == "PanicException"


def _deletes(update: bytes) -> bool:
    # A Yjs v1 update ends with its delete set, which is one zero byte when empty;
    # otherwise it ends with a range length (a canonical varuint >= 1).
    return update[-1:] != b"\x00"


def _integrated(update: bytes, sv: bytes) -> bool:
    # What of the update the state lacks: no structs means all integrated.
    try:
        return pycrdt.get_update(update, sv)[:1] == b"\x00"
    except Exception:  # applied, yet not diffable: nothing to wait for
        return True


class Replica:
    """The document ``name`` as the room's events make it (see the module docstring).

    ``policy`` is told of every update and snapshot seen; ``on_update`` is called
    after each update it was told of (the writer decides whether to snapshot).
    ``user_id`` and ``room_id`` only label log messages.
    """

    def __init__(
        self,
        name: str,
        *,
        policy: proto.SnapshotPolicy,
        assembler: proto.ChunkAssembler | None = None,
        user_id: str = "",
        room_id: str = "",
        on_update: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        # A 32-bit client id, as Yjs draws them (pycrdt's are 53-bit): each
        # struct and origin of an update then takes 5 bytes instead of 8.
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=secrets.randbits(32))
        self.policy = policy
        self.asm = assembler or proto.ChunkAssembler()
        self.user_id = user_id
        self.room_id = room_id
        self.on_update = on_update
        self.pl: dict[str, Any] | None = None
        self.creators: frozenset[str] = frozenset()
        self.position: str | None = None
        self.covers: str | None = None
        #: Document events read that moved ``position`` (the cache is stale when it grows).
        self.moves = 0
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seq = 0
        self._chunk_starts: dict[tuple[str, str], Start] = {}
        self._chunk_first: dict[tuple[str, str], str] = {}  # set -> its first chunk's event
        self._pending: OrderedDict[str, tuple[Start, bytes]] = OrderedDict()
        self._pending_bytes = 0
        #: (origin_server_ts, state vector) of the newest whole snapshot seen.
        self.newest_snapshot: tuple[int, bytes] | None = None
        #: Called when an update of a concurrent branch was merged (the writer
        #: then posts a fresh snapshot soon).
        self.on_concurrent: Callable[[], None] = lambda: None

    @property
    def pending(self) -> int:
        """Updates applied whose structs still wait for ones they depend on."""
        return len(self._pending)

    def allows(self, sender: str, event_type: str) -> bool:
        """May ``sender`` send ``event_type`` under the power levels in force now?"""
        return power_level_allows(self.pl, sender, event_type, state=False,
                                  creators=self.creators)

    # -- one event --------------------------------------------------------------

    def safe_process(self, ev: RoomEvent, *, live: bool, covered: bool = False) -> None:
        """:meth:`process`, with anything it raises skipped and logged (invariant 4)."""
        try:
            self.process(ev, live=live, covered=covered)
        except Exception as exc:
            self.skip(ev, f"{type(exc).__name__}: {exc}")
        except BaseException as exc:
            if not is_panic(exc):
                raise
            self.skip(ev, f"pycrdt panicked: {exc}")

    def skip(self, ev: RoomEvent, reason: str) -> None:
        self.counts["skipped"] += 1
        log.warning("%s: skipping event %s of %r in %s from %s: %s", self.user_id,
                    ev.event_id, self.name, self.room_id, ev.sender, reason)

    def process(self, ev: RoomEvent, *, live: bool, covered: bool = False) -> None:
        """Take one room event in timeline order. ``live``: from the sync loop (an
        event with our transaction id is our own echo); ``covered``: already in
        the snapshot the document was opened from."""
        if ev.event_id in self._seen:
            self.counts["duplicates"] += 1
            return
        self._seen[ev.event_id] = None
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        self._seq += 1
        start: Start = (self._seq, self.position, self.covers)
        etype = ev.type
        if etype == PL:
            if ev.state_key == "":
                self.pl = ev.content
            return
        if etype == CREATE:
            self.creators = room_creators(ev)
            return
        if etype == DOC:
            if ev.state_key == self.name and not ev.content:
                log.warning("%r in %s is no longer declared (event %s)", self.name,
                            self.room_id, ev.event_id)
            return
        if etype not in (DOC_UPDATE, DOC_SNAPSHOT):
            return
        self.position = ev.event_id
        self.moves += 1
        target = proto.doc_of(ev.content)
        if target != self.name:
            if not isinstance(target, str):
                self.skip(ev, "no document name")
            return
        self.covers = ev.event_id
        try:
            decoded = proto.decode_doc_event(etype, ev.content)
        except ProtocolError as exc:
            self.skip(ev, str(exc))
            return
        if not self.allows(ev.sender, etype):
            self.counts["forbidden"] += 1
            self.skip(ev, f"{ev.sender} may not send {etype}")
            return
        own = live and ev.txn_id is not None  # our own echo: already in the document
        self._note_snapshot(ev, decoded)
        large = False
        if isinstance(decoded, proto.DocChunk):
            if own:
                info = decoded.chunk
                if decoded.kind == "update" and info.index == info.count - 1:
                    self._observe_update(info.size)
                return
            assembled = self._feed_chunk(ev, decoded, start)
            if assembled is None:
                return
            decoded, start = assembled
            large = True
        if own:
            self.counts["own_echoes"] += 1
            if isinstance(decoded, proto.DocUpdate):
                self._observe_update(len(decoded.update))
            return
        if covered:
            # Before the snapshot's ``covers`` in the timeline, yet maybe not in the
            # snapshot: positions interleave concurrent branches (PROTOCOL.md,
            # "Ordering"). Judged by content: applying what the state holds is a
            # no-op, so apply it; only what it lacked counts.
            if isinstance(decoded, proto.DocUpdate):
                self._apply_covered(ev, decoded.update, start)
            return
        if isinstance(decoded, proto.DocUpdate):
            self._apply_update(ev, decoded.update, start, large=large)
        elif isinstance(decoded, proto.DocSnapshot):
            self._apply_snapshot(ev, decoded, start)

    def _note_snapshot(self, ev: RoomEvent, decoded: object) -> None:
        sv: bytes | None = None
        if isinstance(decoded, proto.DocSnapshot):
            sv = decoded.sv if decoded.sv is not None else pycrdt.get_state(decoded.state)
        elif isinstance(decoded, proto.DocChunk) and decoded.kind == "snapshot":
            sv = decoded.sv  # large snapshots: when their writer included it
        if sv is not None and (self.newest_snapshot is None
                               or ev.origin_server_ts >= self.newest_snapshot[0]):
            self.newest_snapshot = (ev.origin_server_ts, sv)

    def _feed_chunk(
        self, ev: RoomEvent, chunk: proto.DocChunk, start: Start
    ) -> tuple[proto.DocUpdate | proto.DocSnapshot, Start] | None:
        """Add a chunk to its set: the whole update or snapshot once it completes."""
        info = chunk.chunk
        key = (ev.sender, info.id)
        self._chunk_starts.setdefault(key, start)
        self._chunk_first.setdefault(key, ev.event_id)
        counts = self.asm.statistics()
        whole = self.asm.feed(ev.event_id, ev.sender, chunk)
        after = self.asm.statistics()
        if after.rejected > counts.rejected:
            self.skip(ev, f"chunk set announces {info.count} chunks of {info.size} bytes")
        elif after.discarded > counts.discarded:
            self.skip(ev, "chunk set discarded: digest or announcements disagree")
        if after.evicted > counts.evicted:
            log.warning("%s: an incomplete chunk set of %r was dropped to bound memory",
                        self.user_id, self.name)
        if after.rejected > counts.rejected or after.discarded > counts.discarded:
            self._chunk_starts.pop(key, None)
            self._chunk_first.pop(key, None)
        if whole is None:
            return None
        self._chunk_first.pop(key, None)
        return whole, self._chunk_starts.pop(key, start)

    def _observe_update(self, nbytes: int) -> None:
        self.policy.observe_update(nbytes)
        self.on_update()

    # -- applying ------------------------------------------------------------------

    def _apply(self, ev: RoomEvent, payload: bytes, start: Start) -> bool:
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
                self.skip(ev, f"pycrdt refused it: {exc}")
            return False
        except BaseException as exc:
            if not is_panic(exc):
                raise
            if ev is not None:
                self.skip(ev, f"pycrdt panicked: {exc}")
            return False
        return True

    def _track_pending(self, event_id: str, start: Start, payload: bytes,
                       before: bytes) -> None:
        """Keep a copy of ``payload`` while its structs wait for ones it depends on,
        and apply the kept copies again whenever the state advances.

        yrs keeps such an update pending, but (0.28, measured) loses track of some
        when many arrive out of order: 2,000 updates shuffled within windows of 16
        leave 6 characters. Applying our copies again integrates all of them.
        Writers that follow this module never send out of order (one lane per
        document, and a Matrix timeline keeps causal order); others may.
        """
        sv = self.doc.get_state()
        if not _integrated(payload, sv):
            self._pending[event_id] = (start, payload)
            self._pending_bytes += len(payload)
        progressed = sv != before
        while progressed and self._pending:
            progressed = False
            for key, (_, update) in list(self._pending.items()):
                sv = self.doc.get_state()
                if not _integrated(update, sv):
                    if not self._apply_raw(None, update):
                        integrated_now = True  # it can never apply: stop waiting for it
                    else:
                        after = self.doc.get_state()
                        progressed = progressed or after != sv
                        integrated_now = _integrated(update, after)
                    if not integrated_now:
                        continue
                del self._pending[key]
                self._pending_bytes -= len(update)
        while len(self._pending) > _PENDING_MAX or self._pending_bytes > _PENDING_BYTES:
            dropped, (_, update) = self._pending.popitem(last=False)
            self._pending_bytes -= len(update)
            log.warning("update %s of %r still misses structs it depends on; "
                        "no longer waiting for them", dropped, self.name)

    def _apply_update(self, ev: RoomEvent, update: bytes, start: Start, *,
                      large: bool) -> None:
        try:
            # A reassembled (large) update is checked against the real state: it is
            # worth loading the document once to rule out a partial application.
            proto.validate_update(update, base=self.doc.get_update() if large else None)
        except ProtocolError as exc:
            self.skip(ev, str(exc))
            return
        newest = self.newest_snapshot
        concurrent = (newest is not None and ev.origin_server_ts < newest[0] - _CONCURRENT_MS
                      and not _integrated(update, newest[1]))
        if self._apply(ev, update, start):
            self.counts["updates_applied"] += 1
            self.counts["bytes_applied"] += len(update)
            self._observe_update(len(update))
            if concurrent:
                # Made before the newest snapshot, yet not in it: a concurrent
                # branch (another homeserver during a partition) merged here.
                # Readers opening from that snapshot must read far back for it:
                # a fresh snapshot lets them open cheaply again.
                self.counts["concurrent_merges"] += 1
                self.on_concurrent()

    def _apply_covered(self, ev: RoomEvent, update: bytes, start: Start) -> None:
        sv = self.doc.get_state()
        if _integrated(update, sv) and not _deletes(update):
            return
        try:
            proto.validate_update(update)
        except ProtocolError as exc:
            self.skip(ev, str(exc))
            return
        if self._apply(ev, update, start):
            self.counts["uncovered"] += 1

    def _apply_snapshot(self, ev: RoomEvent, snap: proto.DocSnapshot, start: Start) -> None:
        try:
            sv = snap.sv if snap.sv is not None else pycrdt.get_state(snap.state)
            covered = proto.state_vector_covers(self.doc.get_state(), sv)
        except (ProtocolError, ValueError) as exc:
            self.skip(ev, f"snapshot state vector: {exc}")
            return
        if covered:
            self.counts["snapshots_covered"] += 1
            self.policy.observe_snapshot()
            return
        # Someone has inserts we lack (an update we skipped, or ordered differently
        # on another homeserver): merge the snapshot; it repairs the gap.
        try:
            proto.validate_update(snap.state, base=self.doc.get_update())
        except ProtocolError as exc:
            self.skip(ev, str(exc))
            return
        if self._apply(ev, snap.state, start):
            self.counts["snapshots_applied"] += 1
            self.policy.observe_snapshot()

    # -- repairing a hole --------------------------------------------------------------

    def repair(self, ev: RoomEvent) -> bool:
        """Apply an older event found by looking back for what pending updates
        miss (out of timeline order: it moves neither ``position`` nor ``covers``).

        Only whole updates and snapshots of this document whose content the state
        lacks are applied; the sender is judged by the levels in force now (its
        place in the timeline is not known here). True if it was applied.
        """
        if (ev.event_id in self._seen or ev.type not in (DOC_UPDATE, DOC_SNAPSHOT)
                or proto.doc_of(ev.content) != self.name
                or not self.allows(ev.sender, ev.type)):
            return False
        try:
            decoded = proto.decode_doc_event(ev.type, ev.content)
        except ProtocolError:
            return False
        if isinstance(decoded, proto.DocUpdate):
            payload = decoded.update
        elif isinstance(decoded, proto.DocSnapshot):
            payload = decoded.state
        else:
            return False  # a chunk: its set is assembled in timeline order only
        if _integrated(payload, self.doc.get_state()):
            return False
        try:
            proto.validate_update(payload, base=self.doc.get_update())
        except ProtocolError as exc:
            self.skip(ev, str(exc))
            return False
        self._seen[ev.event_id] = None
        # Where a catch-up must start stays where the oldest pending update put it.
        starts = [p[0] for p in self._pending.values()]
        start = min(starts) if starts else (self._seq, self.position, self.covers)
        if not self._apply(ev, payload, start):
            return False
        self.counts["repaired"] += 1
        return True

    # -- opening from a snapshot ------------------------------------------------------

    def snapshot_problem(self, snapshot: proto.DocSnapshot, sender: str,
                         pl: dict[str, Any] | None) -> str | None:
        """Why ``snapshot`` (sent by ``sender`` under ``pl``) cannot be the base of
        this open, or None if it can."""
        if not power_level_allows(pl, sender, DOC_SNAPSHOT, state=False,
                                  creators=self.creators):
            return f"{sender} may not send snapshots"
        if self.doc.get_state() != b"\x00":
            # Cached or local content: rule out a partial application on top of it.
            try:
                proto.validate_update(snapshot.state, base=self.doc.get_update())
            except ProtocolError as exc:
                return str(exc)
        return None

    def apply_base(self, snapshot: proto.DocSnapshot) -> None:
        """Open from ``snapshot`` (checked by :meth:`snapshot_problem`)."""
        with self.doc.transaction(origin=REMOTE):
            self.doc.apply_update(snapshot.state)  # validated by snapshot_problem
        self.counts["snapshots_applied"] += 1
        self.policy.observe_snapshot()
        self.covers = self.position = snapshot.covers

    # -- where a cache or a snapshot may stand ---------------------------------------------

    def resume_position(self) -> str | None:
        """Where a later catch-up must start: before any incomplete chunk set and any
        update still pending (the state does not hold it yet)."""
        if not self.asm.pending_sets:
            self._chunk_starts.clear()
            self._chunk_first.clear()
        starts = [*self._chunk_starts.values(), *(p[0] for p in self._pending.values())]
        if starts:
            return min(starts, key=lambda v: v[0])[1]
        return self.position

    def snapshot_covers(self) -> str | None:
        """The ``covers`` of a snapshot taken now.

        yrs leaves the structs of an update whose dependencies are missing out of
        ``get_update()`` (Yjs would include them): such an update must come after
        ``covers``, or a reader opening from the snapshot would never apply it.
        """
        if self._pending:
            return min((p[0] for p in self._pending.values()), key=lambda v: v[0])[2]
        return self.covers

    def incomplete_sets(self) -> list[tuple[str, str, str]]:
        """(sender, set id, first chunk's event) of every chunk set not completed."""
        if not self.asm.pending_sets:
            return []
        return [(sender, set_id, first)
                for (sender, set_id), first in self._chunk_first.items()]
