"""Document contents across the trust boundary: decoding, encoding and chunking.

Owns the way in for untrusted content (:func:`decode_doc_event`: ProtocolError
and nothing else, invariant 2) and the way out (:func:`encode_declaration`,
:func:`encode_update`, :func:`encode_snapshot`), including the measure of a
content (:func:`content_size`) and the cutting of a payload too large for one
event into a chunk set of balanced slices (invariant 1).
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from typing import Any

import msgspec

from ...errors import ConfigError, ProtocolError
from .. import types
from ._limits import (
    _MAX_CHUNK_ID_CHARS,
    _MAX_ENCODING_CHARS,
    _MIN_WRITER_SLICE,
    DEFAULT_DOC,
    ENCODING_YJS_V1,
    MAX_INLINE_SV_BYTES,
    MAX_PAYLOAD_BYTES,
    VERSION,
)
from ._schema import (
    DocChunk,
    DocDeclaration,
    DocEvent,
    DocSnapshot,
    DocUpdate,
    _check_doc_name,
    _check_payload,
    _check_snapshot_fields,
    _DeclarationWire,
    _ShortUpdateWire,
    _SnapshotWire,
    _UpdateWire,
)

_JSON = msgspec.json.Encoder()


def content_size(content: dict[str, Any]) -> int:
    """Length in bytes of the compact UTF-8 JSON encoding of ``content``.

    This is the measure the ``MAX_CONTENT_BYTES`` budget applies to; it equals the
    length of the Matrix canonical JSON of the same content.
    """
    return len(_JSON.encode(content))


# ------------------------------------------------------------------------ decoding


def doc_of(content: object) -> object:
    """The document name a document event's content addresses (not checked: a
    caller compares it with its own name), in either form of an update."""
    if not isinstance(content, dict):
        return None
    if "doc" in content or "u" not in content:
        return content.get("doc")
    return content.get("d", DEFAULT_DOC)


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
            case types.DOC_UPDATE if (isinstance(content, dict) and "u" in content
                                      and "update" not in content):
                short = msgspec.convert(content, _ShortUpdateWire)
                _check_version(short.v)
                if "chunk" in content:
                    raise ProtocolError("a short-form update is never a chunk")
                return DocUpdate(doc=short.d, update=short.u)
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


def encode_update(
    doc: str, update: bytes, *, chunk_id: str | None = None,
    max_bytes: int = types.MAX_CONTENT_BYTES, short: bool = False,
) -> list[dict[str, Any]]:
    """Contents of the ``org.mxsync.doc.update`` events that carry ``update``.

    One content when it fits ``max_bytes`` (``MAX_CONTENT_BYTES``; in an
    encrypted room ``MAX_ENCRYPTED_CONTENT_BYTES``), else a chunk set, in index
    order. ``chunk_id`` fixes the set id (tests, examples); by default it is random.
    ``short`` (documents declared ``yjs-v1-short``) gives one content in the short
    form, ``{"d": doc, "u": base64}`` (no ``d`` for ``DEFAULT_DOC``), when it fits;
    chunk sets keep the long form.
    Persist the returned dicts before sending: a resend after a crash must reuse them.
    """
    _check_doc_name(doc, ConfigError)
    _check_payload(update, "update", ConfigError)
    if short:
        compact: dict[str, Any] = {} if doc == DEFAULT_DOC else {"d": doc}
        compact["u"] = _b64(update)
        if content_size(compact) <= max_bytes:
            return [compact]
    return _encode({"doc": doc}, "update", update, chunk_id, max_bytes)


def encode_snapshot(
    doc: str,
    state: bytes,
    sv: bytes,
    covers: str | None = None,
    *,
    updates_since: int | None = None,
    chunk_id: str | None = None,
    max_bytes: int = types.MAX_CONTENT_BYTES,
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
    return _encode(fields, "state", state, chunk_id, max_bytes)


def _encode(
    fields: dict[str, Any], key: str, payload: bytes, chunk_id: str | None, max_bytes: int
) -> list[dict[str, Any]]:
    if not 4 * _MIN_WRITER_SLICE <= max_bytes <= types.MAX_CONTENT_BYTES:
        raise ConfigError(f"max_bytes must be within {4 * _MIN_WRITER_SLICE}.."
                          f"{types.MAX_CONTENT_BYTES}, got {max_bytes!r}")
    whole = {"v": VERSION, **fields, key: _b64(payload)}
    if content_size(whole) <= max_bytes:
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
    room = max_bytes - content_size(chunk(size, size, ""))
    max_slice = room // 4 * 3
    if max_slice < _MIN_WRITER_SLICE:
        raise ConfigError(f"fixed fields leave {room} bytes per chunk; too little")
    count = math.ceil(size / max_slice)
    step = math.ceil(size / count)
    return [chunk(i, count, _b64(payload[i * step : (i + 1) * step])) for i in range(count)]
