"""Wire protocol of synced CRDT documents: schemas, codec, chunking, snapshot policy.

This package owns the content of three event types (normative text:
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

Layout (imports flow down this list, never up):

- ``_limits``: the numbers the spec fixes (version, encoding, sizes, lengths);
- ``_schema``: the value objects, the checks that make one valid, and the wire
  structs of the three contents;
- ``_codec``: :func:`decode_doc_event`, the encoders, chunking and
  :func:`content_size`;
- ``_crdt``: :func:`state_vector_covers` and :func:`validate_update`, the checks
  that consult Yjs (``decode_state_vector`` comes from ``protocol.yjs``);
- ``_assembler``: :class:`ChunkAssembler` and :class:`AssemblerStatistics`;
- ``_policy``: :class:`SnapshotPolicy`, which imports none of the above.
"""

from __future__ import annotations

from ..yjs import decode_state_vector as decode_state_vector
from ._assembler import AssemblerStatistics as AssemblerStatistics
from ._assembler import ChunkAssembler as ChunkAssembler
from ._codec import content_size as content_size
from ._codec import decode_doc_event as decode_doc_event
from ._codec import doc_of as doc_of
from ._codec import encode_declaration as encode_declaration
from ._codec import encode_snapshot as encode_snapshot
from ._codec import encode_update as encode_update
from ._crdt import state_vector_covers as state_vector_covers
from ._crdt import validate_update as validate_update
from ._limits import DEFAULT_DOC as DEFAULT_DOC
from ._limits import ENCODING_YJS_V1 as ENCODING_YJS_V1
from ._limits import ENCODING_YJS_V1_SHORT as ENCODING_YJS_V1_SHORT
from ._limits import MAX_DOC_NAME_BYTES as MAX_DOC_NAME_BYTES
from ._limits import MAX_INLINE_SV_BYTES as MAX_INLINE_SV_BYTES
from ._limits import MAX_PAYLOAD_BYTES as MAX_PAYLOAD_BYTES
from ._limits import MIN_CHUNK_SLICE as MIN_CHUNK_SLICE
from ._limits import VERSION as VERSION
from ._policy import SnapshotPolicy as SnapshotPolicy
from ._schema import ChunkInfo as ChunkInfo
from ._schema import DocChunk as DocChunk
from ._schema import DocDeclaration as DocDeclaration
from ._schema import DocEvent as DocEvent
from ._schema import DocSnapshot as DocSnapshot
from ._schema import DocUpdate as DocUpdate

__all__ = [
    "VERSION",
    "ENCODING_YJS_V1",
    "ENCODING_YJS_V1_SHORT",
    "DEFAULT_DOC",
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
    "doc_of",
    "content_size",
    "validate_update",
    "decode_state_vector",
    "state_vector_covers",
    "AssemblerStatistics",
    "ChunkAssembler",
    "SnapshotPolicy",
]
