"""Wire protocol of synced CRDT documents: schemas, codec, chunking, snapshot policy.

This module owns the content of three event types (normative text:
docs/PROTOCOL.md, section "Documents"):

- ``org.mxsync.doc`` (state event, state_key = document name) declares a document.
- ``org.mxsync.doc.update`` (timeline) carries one Yjs v1 update, or one chunk of one.
- ``org.mxsync.doc.snapshot`` (timeline) carries the full state of a document as a
  Yjs v1 update, with its state vector and the last event it covers, or one chunk.

It is sans-I/O: contents go in as dicts and come out as frozen value objects and
dicts; nothing here sends, sleeps, or reads a clock. pycrdt (which imports anyio)
is imported lazily by :func:`validate_update` only.

Invariants
----------
1. Every content dict :func:`encode_update` and :func:`encode_snapshot` return has a
   compact UTF-8 JSON encoding (:func:`content_size`) of at most
   ``MAX_CONTENT_BYTES``. A payload that does not fit one event is cut into a chunk
   set: ``n`` events of the same type, balanced slices of ``ceil(bytes / n)`` bytes
   (the last one shorter), each naming the set's id, its index, ``n``, the payload
   length and the payload's SHA-256.
2. :func:`decode_doc_event` raises nothing but :class:`~mxsync.errors.ProtocolError`,
   whatever it is given. Every value object it returns is valid (each one checks
   itself in ``__post_init__``): a supported major version, a document name of
   1..255 UTF-8 bytes, a non-empty payload, a chunk slice of exactly the length
   its announcement implies.
3. :class:`ChunkAssembler` yields a payload only when all ``n`` slices of one set
   (keyed by sender and set id) are present and the SHA-256 of their concatenation
   equals the announced digest. An incomplete set never yields; a set whose digest
   or announcements disagree is discarded and never yields.
4. :class:`ChunkAssembler` never holds more than ``max_pending_bytes`` bytes of
   slices nor more than ``max_pending_sets`` sets nor more than
   ``max_sets_per_sender`` sets of one sender. Over budget, it evicts the oldest
   set of the sender holding the most, so one sender's flood evicts its own sets
   first.
5. Decoding checks the schema, not the CRDT: a decoded update may still be garbage
   to Yjs. :func:`validate_update` is the check that costs a scratch ``pycrdt.Doc``.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from collections import OrderedDict
from typing import Any, Final, Literal, TypeAlias

import msgspec

from mxsync.errors import ConfigError, ProtocolError
from mxsync.protocol import types
from mxsync.protocol.yjs import decode_state_vector

__all__ = [
    "VERSION",
    "ENCODING_YJS_V1",
    "MAX_DOC_NAME_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MIN_CHUNK_SLICE",
    "MAX_INLINE_SV_BYTES",
    "ChunkInfo",
    "DocDeclaration",
    "DocUpdate",
    "DocSnapshot",
    "DocChunk",
    "DocEvent",
    "encode_declaration",
    "encode_update",
    "encode_snapshot",
    "decode_doc_event",
    "content_size",
    "validate_update",
    "decode_state_vector",
    "state_vector_covers",
    "AssemblerStatistics",
    "ChunkAssembler",
    "SnapshotPolicy",
]

#: Major version of the document events. A reader refuses any other ``v``; minor
#: evolution happens by adding optional fields, which older readers ignore.
VERSION: Final = 1
#: The only payload encoding of version 1: Yjs v1 updates (``Y.encodeStateAsUpdate``).
ENCODING_YJS_V1: Final = "yjs-v1"
#: Longest document name (the state_key of ``org.mxsync.doc``), in UTF-8 bytes.
MAX_DOC_NAME_BYTES: Final = 255
#: Largest payload (update or state) a writer may send, chunked; readers may refuse more.
MAX_PAYLOAD_BYTES: Final = 16 * 1024 * 1024
#: Every slice of a chunk set except the last is at least this long, so that ``n``
#: stays proportional to the payload.
MIN_CHUNK_SLICE: Final = 1024
#: A snapshot's state vector is put in its content only up to this size; a reader
#: can always compute it from the state.
MAX_INLINE_SV_BYTES: Final = 8192

_MAX_CHUNK_ID_CHARS: Final = 64
_MAX_EVENT_ID_CHARS: Final = 255
_MAX_ENCODING_CHARS: Final = 64
_SHA256_HEX_CHARS: Final = 64
_HEX_DIGITS: Final = frozenset("0123456789abcdef")
# A writer refuses to chunk when the fixed fields leave less room than this per slice.
_MIN_WRITER_SLICE: Final = 8192
# Yjs v1 varints never exceed 64 bits; 10 bytes of 7 bits hold them.

_JSON = msgspec.json.Encoder()


def content_size(content: dict[str, Any]) -> int:
    """Length in bytes of the compact UTF-8 JSON encoding of ``content``.

    This is the measure the ``MAX_CONTENT_BYTES`` budget applies to; it equals the
    length of the Matrix canonical JSON of the same content.
    """
    return len(_JSON.encode(content))


# --------------------------------------------------------------------------- checks


def _check_doc_name(name: str, exc: type[Exception]) -> None:
    if not name:
        raise exc("document name is empty")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise exc("document name is not valid Unicode") from None
    if len(encoded) > MAX_DOC_NAME_BYTES:
        raise exc(f"document name longer than {MAX_DOC_NAME_BYTES} bytes")


def _check_payload(payload: bytes, what: str, exc: type[Exception]) -> None:
    if not payload:
        raise exc(f"{what} is empty")


def _check_event_id(event_id: str, exc: type[Exception]) -> None:
    if not event_id.startswith("$") or len(event_id) > _MAX_EVENT_ID_CHARS:
        raise exc(f"not an event id: {event_id[:80]!r}")


def _check_count(value: int, what: str, exc: type[Exception]) -> None:
    if not 0 <= value <= types.MAX_SAFE_INT:
        raise exc(f"{what} out of range: {value}")


def _slice_length(size: int, count: int, index: int) -> int:
    step = -(-size // count)
    return step if index < count - 1 else size - step * (count - 1)


# -------------------------------------------------------------------- value objects


class _Value(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of the public value objects: immutable, keyword-only, valid once built."""


class ChunkInfo(_Value, frozen=True, kw_only=True, omit_defaults=True):
    """The announcement every chunk of a set carries (wire object ``chunk``)."""

    #: Chunk set id, chosen at random by the writer; unique per sender.
    id: str
    #: Index of this slice, ``0 <= index < count``.
    index: int = msgspec.field(name="i")
    #: Number of chunks in the set.
    count: int = msgspec.field(name="n")
    #: Length of the whole payload in bytes.
    size: int = msgspec.field(name="bytes")
    #: Lower-case hex SHA-256 of the whole payload.
    sha256: str

    def __post_init__(self) -> None:
        if not 1 <= len(self.id) <= _MAX_CHUNK_ID_CHARS:
            raise ProtocolError(f"chunk id must have 1..{_MAX_CHUNK_ID_CHARS} characters")
        _check_count(self.count, "chunk count", ProtocolError)
        _check_count(self.size, "chunk set size", ProtocolError)
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ProtocolError(f"chunk index {self.index} of {self.count}")
        if self.size < self.count:
            raise ProtocolError(f"{self.size} bytes cannot fill {self.count} chunks")
        if self.count > 1:
            if -(-self.size // self.count) < MIN_CHUNK_SLICE:
                raise ProtocolError(f"chunk slices shorter than {MIN_CHUNK_SLICE} bytes")
            if _slice_length(self.size, self.count, self.count - 1) < 1:
                raise ProtocolError(f"{self.size} bytes leave the last of {self.count} empty")
        if len(self.sha256) != _SHA256_HEX_CHARS or not _HEX_DIGITS.issuperset(self.sha256):
            raise ProtocolError("sha256 must be 64 lower-case hex digits")

    @property
    def slice_length(self) -> int:
        """The exact length the slice at ``index`` must have."""
        return _slice_length(self.size, self.count, self.index)


class DocDeclaration(_Value, frozen=True, kw_only=True, omit_defaults=True):
    """Content of ``org.mxsync.doc``: a document exists under its state_key."""

    encoding: str = ENCODING_YJS_V1

    def __post_init__(self) -> None:
        if not 1 <= len(self.encoding) <= _MAX_ENCODING_CHARS:
            raise ProtocolError("encoding must be a non-empty short string")

    @property
    def supported(self) -> bool:
        """Whether this implementation can read the document's payloads."""
        return self.encoding == ENCODING_YJS_V1


class DocUpdate(_Value, frozen=True, kw_only=True, omit_defaults=True):
    """One Yjs v1 update of document ``doc``."""

    doc: str
    update: bytes

    def __post_init__(self) -> None:
        _check_doc_name(self.doc, ProtocolError)
        _check_payload(self.update, "update", ProtocolError)


class DocSnapshot(_Value, frozen=True, kw_only=True, omit_defaults=True):
    """The full state of document ``doc`` as one Yjs v1 update.

    ``covers`` is the id of the last document event its writer had applied: a reader
    opening the document applies this state, then every update after ``covers``.
    """

    doc: str
    state: bytes
    #: Yjs v1 state vector of ``state``; ``None`` when the writer left it out
    #: (over ``MAX_INLINE_SV_BYTES``): compute it from ``state`` then.
    sv: bytes | None = None
    covers: str | None = None
    #: Number of update events the writer counted since the previous snapshot.
    updates_since: int | None = None

    def __post_init__(self) -> None:
        _check_snapshot_fields(self.doc, self.sv, self.covers, self.updates_since, ProtocolError)
        _check_payload(self.state, "state", ProtocolError)


class DocChunk(_Value, frozen=True, kw_only=True, omit_defaults=True):
    """One chunk of an update (``kind="update"``) or a snapshot (``kind="snapshot"``).

    A snapshot chunk repeats the snapshot's ``sv``, ``covers`` and ``updates_since``
    so that every chunk describes its set on its own.
    """

    kind: Literal["update", "snapshot"]
    doc: str
    chunk: ChunkInfo
    data: bytes
    sv: bytes | None = None
    covers: str | None = None
    updates_since: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "update":
            _check_doc_name(self.doc, ProtocolError)
            if (self.sv, self.covers, self.updates_since) != (None, None, None):
                raise ProtocolError("an update chunk has no snapshot fields")
        else:
            _check_snapshot_fields(
                self.doc, self.sv, self.covers, self.updates_since, ProtocolError
            )
        if len(self.data) != self.chunk.slice_length:
            raise ProtocolError(
                f"chunk {self.chunk.index}/{self.chunk.count} holds {len(self.data)} bytes,"
                f" its announcement implies {self.chunk.slice_length}"
            )

    @property
    def event_type(self) -> str:
        return types.DOC_UPDATE if self.kind == "update" else types.DOC_SNAPSHOT


def _check_snapshot_fields(
    doc: str,
    sv: bytes | None,
    covers: str | None,
    updates_since: int | None,
    exc: type[Exception],
) -> None:
    _check_doc_name(doc, exc)
    if sv is not None:
        try:
            decode_state_vector(sv)
        except ProtocolError as e:
            raise exc(f"sv: {e}") from None
    if covers is not None:
        _check_event_id(covers, exc)
    if updates_since is not None:
        _check_count(updates_since, "updates_since", exc)


#: What :func:`decode_doc_event` returns; dispatch with ``match``.
DocEvent: TypeAlias = DocDeclaration | DocUpdate | DocSnapshot | DocChunk


# ------------------------------------------------------------------------ wire forms


class _Wire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    v: int


class _DeclarationWire(_Wire, frozen=True, kw_only=True, omit_defaults=True):
    encoding: str


class _UpdateWire(_Wire, frozen=True, kw_only=True, omit_defaults=True):
    doc: str
    update: bytes
    chunk: ChunkInfo | None = None


class _SnapshotWire(_Wire, frozen=True, kw_only=True, omit_defaults=True):
    doc: str
    state: bytes
    sv: bytes | None = None
    covers: str | None = None
    updates_since: int | None = None
    chunk: ChunkInfo | None = None


def decode_doc_event(event_type: str, content: object) -> DocEvent:
    """Decode the content of a document event; raise ProtocolError if it is malformed.

    Unknown fields are ignored (minor evolution); a ``v`` other than ``VERSION`` is
    refused (major change). The payload is checked for form only, not as Yjs.
    """
    try:
        match event_type:
            case types.DOC:
                decl = msgspec.convert(content, _DeclarationWire)
                _check_version(decl.v)
                return DocDeclaration(encoding=decl.encoding)
            case types.DOC_UPDATE:
                upd = msgspec.convert(content, _UpdateWire)
                _check_version(upd.v)
                if upd.chunk is not None:
                    return DocChunk(kind="update", doc=upd.doc, chunk=upd.chunk, data=upd.update)
                return DocUpdate(doc=upd.doc, update=upd.update)
            case types.DOC_SNAPSHOT:
                snap = msgspec.convert(content, _SnapshotWire)
                _check_version(snap.v)
                fields: dict[str, Any] = {
                    "doc": snap.doc,
                    "sv": snap.sv,
                    "covers": snap.covers,
                    "updates_since": snap.updates_since,
                }
                if snap.chunk is not None:
                    return DocChunk(kind="snapshot", chunk=snap.chunk, data=snap.state, **fields)
                return DocSnapshot(state=snap.state, **fields)
            case _:
                raise ProtocolError(f"not a document event type: {event_type!r:.80}")
    except msgspec.ValidationError as e:
        # Checks in __post_init__ reach us wrapped by msgspec; keep only the message.
        raise ProtocolError(f"{event_type!s:.80}: {e}") from None


def _check_version(v: int) -> None:
    if v != VERSION:
        raise ProtocolError(f"unsupported major version v={v} (this reader knows {VERSION})")


# -------------------------------------------------------------------------- encoding


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_declaration(encoding: str = ENCODING_YJS_V1) -> dict[str, Any]:
    """Content of the ``org.mxsync.doc`` state event (state_key = document name)."""
    if not 1 <= len(encoding) <= _MAX_ENCODING_CHARS:
        raise ConfigError("encoding must be a non-empty short string")
    return {"v": VERSION, "encoding": encoding}


def encode_update(doc: str, update: bytes, *, chunk_id: str | None = None) -> list[dict[str, Any]]:
    """Contents of the ``org.mxsync.doc.update`` events that carry ``update``.

    One content when it fits ``MAX_CONTENT_BYTES``, else a chunk set, in index
    order. ``chunk_id`` fixes the set id (tests, examples); by default it is random.
    Persist the returned dicts before sending: a resend after a crash must reuse them.
    """
    _check_doc_name(doc, ConfigError)
    _check_payload(update, "update", ConfigError)
    return _encode({"doc": doc}, "update", update, chunk_id)


def encode_snapshot(
    doc: str,
    state: bytes,
    sv: bytes,
    covers: str | None = None,
    *,
    updates_since: int | None = None,
    chunk_id: str | None = None,
) -> list[dict[str, Any]]:
    """Contents of the ``org.mxsync.doc.snapshot`` events that carry a full state.

    ``state`` is ``doc.get_update()``, ``sv`` is ``doc.get_state()`` from the same
    moment, ``covers`` the id of the last document event applied before it. ``sv``
    is left out when longer than ``MAX_INLINE_SV_BYTES``.
    """
    _check_snapshot_fields(doc, sv, covers, updates_since, ConfigError)
    _check_payload(state, "state", ConfigError)
    fields: dict[str, Any] = {"doc": doc}
    if len(sv) <= MAX_INLINE_SV_BYTES:
        fields["sv"] = _b64(sv)
    if covers is not None:
        fields["covers"] = covers
    if updates_since is not None:
        fields["updates_since"] = updates_since
    return _encode(fields, "state", state, chunk_id)


def _encode(
    fields: dict[str, Any], key: str, payload: bytes, chunk_id: str | None
) -> list[dict[str, Any]]:
    whole = {"v": VERSION, **fields, key: _b64(payload)}
    if content_size(whole) <= types.MAX_CONTENT_BYTES:
        return [whole]
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ConfigError(f"{key} of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES} bytes")
    cid = secrets.token_urlsafe(12) if chunk_id is None else chunk_id
    if not 1 <= len(cid) <= _MAX_CHUNK_ID_CHARS:
        raise ConfigError(f"chunk id must have 1..{_MAX_CHUNK_ID_CHARS} characters")
    size = len(payload)
    digest = hashlib.sha256(payload).hexdigest()

    def chunk(i: int, n: int, data: str) -> dict[str, Any]:
        info = {"id": cid, "i": i, "n": n, "bytes": size, "sha256": digest}
        return {"v": VERSION, **fields, "chunk": info, key: data}

    # i and n never have more digits than size: the probe bounds every chunk's overhead.
    room = types.MAX_CONTENT_BYTES - content_size(chunk(size, size, ""))
    max_slice = room // 4 * 3
    if max_slice < _MIN_WRITER_SLICE:
        raise ConfigError(f"fixed fields leave {room} bytes per chunk; too little")
    count = math.ceil(size / max_slice)
    step = math.ceil(size / count)
    return [chunk(i, count, _b64(payload[i * step : (i + 1) * step])) for i in range(count)]


# ---------------------------------------------------------------------------- Yjs


def state_vector_covers(sv_a: bytes, sv_b: bytes) -> bool:
    """Whether state vector ``a`` includes every struct state vector ``b`` includes.

    State vectors count inserted structs, not deletions: a state covering another's
    state vector can still miss a deletion. Use it to skip a snapshot that brings no
    new inserts, not to prove that two documents are equal.
    """
    a = decode_state_vector(sv_a)
    return all(a.get(client, 0) >= clock for client, clock in decode_state_vector(sv_b).items())


def validate_update(update: bytes, *, base: bytes | None = None) -> None:
    """Raise ProtocolError unless ``update`` applies cleanly as a Yjs v1 update.

    The update is applied to a scratch ``pycrdt.Doc``, never to a real one. With
    ``base`` (the full state of the document it is meant for, ``doc.get_update()``)
    the scratch starts from that state, which also catches the updates that decode
    but fail to integrate against it (pycrdt raises RuntimeError then, *after*
    applying part of the update). Measured costs and pycrdt's behaviour with garbage:
    docs/PROTOCOL.md, "Validating payloads".
    """
    if not update:
        raise ProtocolError("update is empty")
    import pycrdt  # lazy: pycrdt imports anyio, and most of this module needs neither

    scratch: pycrdt.Doc[Any] = pycrdt.Doc()
    if base is not None:
        try:
            scratch.apply_update(base)
        except Exception as e:
            raise ConfigError(f"base is not a valid Yjs update: {e}") from None
    try:
        scratch.apply_update(update)
    except Exception as e:
        raise ProtocolError(f"not a valid Yjs v1 update: {e}") from None
    except BaseException as e:
        # pyo3 turns a Rust panic into PanicException, a BaseException: garbage, too.
        if type(e).__name__ != "PanicException":
            raise
        raise ProtocolError(f"Yjs update made pycrdt panic: {e}") from None


# ------------------------------------------------------------------- chunk assembly


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
    spoil its own sets. Invariants 3 and 4 of this module hold after every call.
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


# ------------------------------------------------------------------ snapshot policy


class SnapshotPolicy:
    """Decides when this client posts a snapshot of one document.

    Counts the update events of the document since the last complete snapshot seen
    in the room, from any client including this one. A snapshot costs ``k`` events
    (one per chunk); the policy asks for one when the updates since the last one
    reach ``every_updates * k`` events or ``max(every_bytes, state size)`` bytes.
    So snapshots never take more than about 1/``every_updates`` of the events sent,
    and a reader opening the document replays a bounded number of events and bytes.

    Each threshold is multiplied by a factor in [1, 1 + ``jitter``) derived from
    ``identity`` (the user id, or user id and device id): the client with the lowest
    factor snapshots first and the others, seeing its snapshot, reset and stand down.
    """

    #: Payload bytes one chunk carries, near enough, to count a snapshot's events.
    CHUNK_PAYLOAD: Final = 42_000

    def __init__(
        self,
        identity: str,
        *,
        every_updates: int = 50,
        every_bytes: int = 256 * 1024,
        jitter: float = 0.5,
    ) -> None:
        if every_updates < 1 or every_bytes < 1 or not 0 <= jitter <= 4:
            raise ConfigError("every_updates and every_bytes must be >= 1, jitter in [0, 4]")
        digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).digest()
        self.factor = 1 + jitter * int.from_bytes(digest[:8], "big") / 2**64
        self.every_updates = every_updates
        self.every_bytes = every_bytes
        self._updates = 0
        self._bytes = 0

    @property
    def updates_since(self) -> int:
        """Update events seen since the last snapshot."""
        return self._updates

    @property
    def bytes_since(self) -> int:
        """Payload bytes of those updates."""
        return self._bytes

    def observe_update(self, nbytes: int) -> None:
        """An update event of this document (from anyone) was applied."""
        self._updates += 1
        self._bytes += nbytes

    def observe_snapshot(self) -> None:
        """A complete, valid snapshot of this document (from anyone) was seen or sent."""
        self._updates = 0
        self._bytes = 0

    def thresholds(self, state_bytes: int = 0) -> tuple[int, int]:
        """(update events, update bytes) at which :meth:`should_snapshot` turns true."""
        events = max(1, math.ceil(state_bytes / self.CHUNK_PAYLOAD))
        return (
            math.ceil(self.every_updates * events * self.factor),
            math.ceil(max(self.every_bytes, state_bytes) * self.factor),
        )

    def should_snapshot(self, state_bytes: int = 0) -> bool:
        """Whether to post a snapshot now; ``state_bytes`` is ``len(doc.get_update())``."""
        if not self._updates:
            return False
        max_updates, max_bytes = self.thresholds(state_bytes)
        return self._updates >= max_updates or self._bytes >= max_bytes
