"""ChunkAssembler: chunks in any order in, whole updates and snapshots out.

Owns the reassembly of chunk sets keyed by (sender, chunk id), the digest check
that gates every payload it yields (invariant 3), the memory budget and its
eviction order (invariant 4), and :class:`AssemblerStatistics`, its counters.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, TypeAlias

import msgspec

from ...errors import ConfigError
from ._limits import MAX_PAYLOAD_BYTES
from ._schema import DocChunk, DocSnapshot, DocUpdate


class AssemblerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a :class:`ChunkAssembler` since it was created."""

    pending_sets: int
    pending_bytes: int
    #: Sets reassembled with a matching digest and handed out.
    completed: int
    #: Chunks ignored: an index or event already held, or a set already finished.
    duplicates: int
    #: Chunks refused for announcing more than the limits allow.
    rejected: int
    #: Sets dropped for a digest mismatch or chunks that disagree on the set.
    discarded: int
    #: Sets dropped, incomplete, to stay within the memory limits.
    evicted: int


class _PendingSet:
    __slots__ = ("sender", "header", "slices", "held", "event_ids")

    def __init__(self, sender: str, header: tuple[Any, ...]) -> None:
        self.sender = sender
        self.header = header
        self.slices: dict[int, bytes] = {}
        self.held = 0
        self.event_ids: set[str] = set()


_SetKey: TypeAlias = tuple[str, str]


class ChunkAssembler:
    """Reassembles chunk sets fed in any order, within fixed memory.

    Feed every :class:`DocChunk` :func:`decode_doc_event` returns, with the event's
    id and sender. Sets are keyed by (sender, chunk id), so a sender can only ever
    spoil its own sets. Invariants 3 and 4 of this package hold after every call.
    """

    def __init__(
        self,
        *,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        max_chunks: int = 4096,
        max_pending_bytes: int = 2 * MAX_PAYLOAD_BYTES,
        max_pending_sets: int = 64,
        max_sets_per_sender: int = 4,
        remember_finished: int = 4096,
    ) -> None:
        if min(max_payload_bytes, max_chunks, max_pending_sets, max_sets_per_sender) < 1:
            raise ConfigError("ChunkAssembler limits must be positive")
        if max_payload_bytes > max_pending_bytes:
            raise ConfigError("max_payload_bytes must not exceed max_pending_bytes")
        self.max_payload_bytes = max_payload_bytes
        self.max_chunks = max_chunks
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_sets = max_pending_sets
        self.max_sets_per_sender = max_sets_per_sender
        self._remember = remember_finished
        self._sets: dict[_SetKey, _PendingSet] = {}  # insertion order = age
        self._bytes_of: dict[str, int] = {}
        self._sets_of: dict[str, int] = {}
        self._finished: OrderedDict[_SetKey, None] = OrderedDict()
        self._pending_bytes = 0
        self._completed = self._duplicates = self._rejected = 0
        self._discarded = self._evicted = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of slices held for incomplete sets."""
        return self._pending_bytes

    @property
    def pending_sets(self) -> int:
        """Number of incomplete sets held."""
        return len(self._sets)

    def statistics(self) -> AssemblerStatistics:
        return AssemblerStatistics(
            pending_sets=len(self._sets),
            pending_bytes=self._pending_bytes,
            completed=self._completed,
            duplicates=self._duplicates,
            rejected=self._rejected,
            discarded=self._discarded,
            evicted=self._evicted,
        )

    def feed(self, event_id: str, sender: str, chunk: DocChunk) -> DocUpdate | DocSnapshot | None:
        """Take one chunk; return the whole update or snapshot when this completes its set."""
        info = chunk.chunk
        key = (sender, info.id)
        if key in self._finished:
            self._duplicates += 1
            return None
        if info.count > self.max_chunks or info.size > self.max_payload_bytes:
            self._rejected += 1
            return None
        header = (chunk.kind, chunk.doc, info.count, info.size, info.sha256) + (
            chunk.sv,
            chunk.covers,
            chunk.updates_since,
        )
        pending = self._sets.get(key)
        if pending is None:
            pending = self._sets[key] = _PendingSet(sender, header)
            self._sets_of[sender] = self._sets_of.get(sender, 0) + 1
            self._bytes_of.setdefault(sender, 0)
            self._limit_sets(key)
        elif pending.header != header:
            self._drop(key)
            self._finish(key)
            self._discarded += 1
            return None
        if info.index in pending.slices or event_id in pending.event_ids:
            self._duplicates += 1
            return None
        self._make_room(len(chunk.data), keep=key)
        pending.slices[info.index] = chunk.data
        pending.event_ids.add(event_id)
        pending.held += len(chunk.data)
        self._bytes_of[sender] += len(chunk.data)
        self._pending_bytes += len(chunk.data)
        if len(pending.slices) < info.count:
            return None
        payload = b"".join(pending.slices[i] for i in range(info.count))
        self._drop(key)
        self._finish(key)
        if hashlib.sha256(payload).hexdigest() != info.sha256:
            self._discarded += 1
            return None
        self._completed += 1
        if chunk.kind == "update":
            return DocUpdate(doc=chunk.doc, update=payload)
        return DocSnapshot(
            doc=chunk.doc,
            state=payload,
            sv=chunk.sv,
            covers=chunk.covers,
            updates_since=chunk.updates_since,
        )

    def clear(self) -> None:
        """Forget every pending set (the finished-set memory is kept)."""
        for key in list(self._sets):
            self._drop(key)

    def _limit_sets(self, new: _SetKey) -> None:
        sender = new[0]
        while self._sets_of[sender] > self.max_sets_per_sender:
            self._evict(next(k for k in self._sets if k[0] == sender and k != new))
        while len(self._sets) > self.max_pending_sets:
            self._evict(self._victim(new, by_sets=True))

    def _make_room(self, nbytes: int, keep: _SetKey) -> None:
        # max_payload_bytes <= max_pending_bytes: the kept set alone always fits.
        while self._pending_bytes + nbytes > self.max_pending_bytes:
            self._evict(self._victim(keep, by_sets=False))

    def _victim(self, keep: _SetKey, *, by_sets: bool) -> _SetKey:
        """The oldest set of the sender holding the most, other than ``keep``."""

        def weight(sender: str) -> tuple[int, int]:
            held = (self._bytes_of[sender], self._sets_of[sender])
            return held[::-1] if by_sets else held

        senders = {k[0] for k in self._sets if k != keep}
        heaviest = max(senders, key=weight)
        return next(k for k in self._sets if k[0] == heaviest and k != keep)

    def _evict(self, key: _SetKey) -> None:
        self._drop(key)
        self._evicted += 1

    def _drop(self, key: _SetKey) -> None:
        pending = self._sets.pop(key)
        self._pending_bytes -= pending.held
        self._bytes_of[pending.sender] -= pending.held
        self._sets_of[pending.sender] -= 1
        if not self._sets_of[pending.sender]:
            del self._sets_of[pending.sender], self._bytes_of[pending.sender]

    def _finish(self, key: _SetKey) -> None:
        self._finished[key] = None
        while len(self._finished) > self._remember:
            self._finished.popitem(last=False)
