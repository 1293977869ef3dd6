"""The msgspec schemas of the document events, and what makes one valid.

Owns the public value objects (:class:`ChunkInfo`, :class:`DocDeclaration`,
:class:`DocUpdate`, :class:`DocSnapshot`, :class:`DocChunk`, the
:data:`DocEvent` union), each checking itself in ``__post_init__``
(invariant 2), the ``_check_*`` rules shared with the encoders (raising
whichever error the caller names: ProtocolError for received content,
ConfigError for arguments), and the ``_*Wire`` structs of the contents as
they travel.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

from ...errors import ProtocolError
from .. import types
from ..yjs import decode_state_vector
from ._limits import (
    _HEX_DIGITS,
    _MAX_CHUNK_ID_CHARS,
    _MAX_ENCODING_CHARS,
    _MAX_EVENT_ID_CHARS,
    _SHA256_HEX_CHARS,
    DEFAULT_DOC,
    ENCODING_YJS_V1,
    ENCODING_YJS_V1_SHORT,
    MAX_DOC_NAME_BYTES,
    MIN_CHUNK_SLICE,
)

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
        return self.encoding in (ENCODING_YJS_V1, ENCODING_YJS_V1_SHORT)

    @property
    def short(self) -> bool:
        """Whether writers send this document's updates in the short form."""
        return self.encoding == ENCODING_YJS_V1_SHORT


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


class _ShortUpdateWire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The short form of an unchunked update: ``{"d": name, "u": base64}``."""

    u: bytes
    d: str = DEFAULT_DOC
    v: int = 1


class _SnapshotWire(_Wire, frozen=True, kw_only=True, omit_defaults=True):
    doc: str
    state: bytes
    sv: bytes | None = None
    covers: str | None = None
    updates_since: int | None = None
    chunk: ChunkInfo | None = None
