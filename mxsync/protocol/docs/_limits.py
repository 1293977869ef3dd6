"""The numbers the document protocol fixes (docs/PROTOCOL.md, "Documents").

Owns the major version and payload encoding of version 1, the bounds on names,
payloads, chunk slices and inline state vectors, and the field lengths the
value objects and encoders check against. Nothing here has behaviour.
"""

from __future__ import annotations

from typing import Final

#: Major version of the document events. A reader refuses any other ``v``; minor
#: evolution happens by adding optional fields, which older readers ignore.
VERSION: Final = 1
#: The only payload encoding of version 1: Yjs v1 updates (``Y.encodeStateAsUpdate``).
ENCODING_YJS_V1: Final = "yjs-v1"
#: The same payloads, with updates in the short form (``{"d": name, "u": base64}``,
#: ``d`` left out for the document named ``DEFAULT_DOC``): declared by the documents
#: this version creates, so that readers that know only the long form refuse
#: them loudly (an unknown encoding) instead of skipping their updates silently.
ENCODING_YJS_V1_SHORT: Final = "yjs-v1-short"
#: The encodings this implementation reads.
SUPPORTED_ENCODINGS: Final = frozenset({ENCODING_YJS_V1, ENCODING_YJS_V1_SHORT})
#: The document a short-form update without ``d`` belongs to.
DEFAULT_DOC: Final = "default"
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
