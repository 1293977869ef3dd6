"""Where a cold open can start: the backward scan of a room's history (pure).

:class:`BackwardScan` is fed a room's document events newest first, as a
cold open of :class:`~mxsync.docs.loader.Loader` reads them, and says when it
has read enough: the newest complete, valid snapshot of the document, its
``covers`` event, the rest of every update chunk set that straddles
``covers``, and enough updates older than ``covers`` to be sure that no
concurrent branch the snapshot lacks hides further down (PROTOCOL.md,
"Ordering"). It does no I/O and keeps no event loop: the loader pages, the
scan judges; :func:`writer_servers` names the homeservers whose updates it
must have seen. A snapshot the replica refuses is dropped with
:meth:`BackwardScan.without_snapshot`, which scans the same window again.
"""

from __future__ import annotations

from typing import Any, Final

import pycrdt

from ..engine.authz import power_level_allows
from ..engine.events import RoomEvent
from ..errors import ProtocolError
from ..protocol import docs as proto
from ..protocol.types import DOC_SNAPSHOT, DOC_UPDATE

__all__ = ["BackwardScan", "writer_servers"]

#: How far past a snapshot's ``covers`` a cold open reads to complete chunk sets.
_CHUNK_LOOKBACK: Final = 4096
#: How many document updates in a row, older than a snapshot's ``covers``, must
#: be contained in its state vector before a cold open stops reading back: the
#: timeline is in depth order, and a concurrent branch (another homeserver's
#: edits during a partition) interleaves with ``covers``'s side down to the fork.
_BRANCH_QUIET: Final = 64
#: The same when the writers' homeservers are known: a contained update from each
#: is the proof (see BackwardScan.servers); a short run only rules out a chunk
#: set or two of the snapshot writer's own side.
_BRANCH_QUIET_KNOWN: Final = 8


def writer_servers(pl: dict[str, Any] | None, creators: frozenset[str]) -> frozenset[str] | None:
    """The homeservers of the users the power levels let send document updates,
    or None when anyone may (``users_default`` high enough: not enumerable)."""
    if power_level_allows(pl, "@nobody:nowhere.invalid", DOC_UPDATE, state=False):
        return None
    users = (pl or {}).get("users")
    names = [u for u in users if isinstance(u, str)] if isinstance(users, dict) else []
    return frozenset(u.partition(":")[2] for u in [*names, *creators]
                     if power_level_allows(pl, u, DOC_UPDATE, state=False, creators=creators))


class BackwardScan:
    """Reads a room's history newest first and finds where a cold open can start.

    That is the first snapshot of the document that completes and validates, its
    ``covers`` event, the completion of every update chunk set with a chunk
    after ``covers`` (within ``_CHUNK_LOOKBACK`` events), and, judged by content,
    the updates older than ``covers`` that the snapshot's state vector lacks: it
    reads on until it has seen a contained update from each writer's homeserver
    (and ``_BRANCH_QUIET_KNOWN`` in a row), or, when anyone may write,
    ``_BRANCH_QUIET`` updates in a row contained in it (at most
    ``_CHUNK_LOOKBACK`` events past ``covers``). A snapshot's position is never
    trusted alone (PROTOCOL.md, "Ordering").
    """

    def __init__(self, name: str, rejected: frozenset[str] = frozenset(), *,
                 servers: frozenset[str] | None = None) -> None:
        self.name = name
        self.rejected = rejected
        #: Homeservers of the document's writers (None: anyone may write). The
        #: scan reads back past ``covers`` until it saw an update the snapshot
        #: contains from each: that one is from before any partition the
        #: snapshot's writer was on the other side of, and the graph puts every
        #: later update of that server above it.
        self.servers = servers
        self.reached: set[str] = set()
        self.asm = proto.ChunkAssembler()
        self.snapshot: proto.DocSnapshot | None = None
        self.snapshot_event: str | None = None
        self.snapshot_sender: str | None = None
        self.snapshot_index = -1
        self.covers_index: int | None = None
        self.open_sets: dict[tuple[str, str], set[int]] = {}
        self.past_covers = 0
        #: Updates in a row past ``covers`` contained in the snapshot's state vector.
        self.quiet = 0
        #: Updates past ``covers`` the snapshot's state vector lacks.
        self.uncovered = 0
        self._sv: bytes | None = None

    def without_snapshot(self, window: list[RoomEvent]) -> BackwardScan:
        assert self.snapshot_event is not None
        scan = BackwardScan(self.name, self.rejected | {self.snapshot_event},
                            servers=self.servers)
        for i, ev in enumerate(window):
            scan.see(ev, i)
        return scan

    def done(self) -> bool:
        if self.snapshot is None or self.snapshot.covers is None or self.covers_index is None:
            return False
        if self.past_covers > _CHUNK_LOOKBACK:
            return True
        if self.open_sets:
            return False
        if self.servers is None:
            return self.quiet >= _BRANCH_QUIET
        return self.quiet >= _BRANCH_QUIET_KNOWN and self.servers <= self.reached

    def see(self, ev: RoomEvent, index: int) -> None:
        if ev.type not in (DOC_UPDATE, DOC_SNAPSHOT) or proto.doc_of(ev.content) != self.name:
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
        elif (self.covers_index is not None and isinstance(decoded, proto.DocUpdate)
              and decoded.update[:1] != b"\x00"):
            # (An update of deletions only says nothing either way: the state
            # vector does not show deletions. The open applies it anyway.)
            if self._contained(decoded.update):
                self.quiet += 1
                self.reached.add(ev.sender.partition(":")[2])
            else:
                self.quiet = 0
                self.uncovered += 1
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

    def _contained(self, update: bytes) -> bool:
        """Are the update's structs in the snapshot's state vector? (Deletions are
        not counted by state vectors: the open applies these updates anyway.)"""
        assert self.snapshot is not None
        if self._sv is None:
            self._sv = self.snapshot.sv or pycrdt.get_state(self.snapshot.state)
        try:
            return pycrdt.get_update(update, self._sv)[:1] == b"\x00"
        except Exception:
            return True  # not a diffable update: the replica will judge it

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
