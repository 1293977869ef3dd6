"""The to-device messages of open documents: awareness, peer discovery, live updates.

Sans-I/O: contents go in as dicts, come out as frozen value objects and back.
This module owns the content of two to-device message types (normative text:
docs/PROTOCOL.md, section "Live channel"):

- ``org.mxsync.doc.awareness``: y-protocols awareness states of a document's
  open replicas, and the announcements (``op``) by which the devices that have
  a document open find each other: ``hello`` (just opened: answer me), ``here``
  (the answer), ``update`` (states changed or renewed), ``bye`` (closing).
- ``org.mxsync.doc.live``: one local update batch (Yjs v1), sent at once to the
  devices that have the document open; the timeline event that carries the
  same changes follows when the rate limit allows.

Invariants:
1. :func:`decode_message` raises nothing but :class:`~mxsync.errors.ProtocolError`,
   whatever it is given; what it returns names a room id, a document name of
   1..255 UTF-8 bytes, a device id, a known ``op`` and a non-empty payload of at
   most :data:`MAX_LIVE_BYTES` (awareness: :data:`MAX_AWARENESS_BYTES`).
2. Nothing here enters a document's history: these contents never travel as
   room events.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

import msgspec

from ..errors import ProtocolError
from .types import DOC_AWARENESS, DOC_LIVE

__all__ = [
    "VERSION",
    "MAX_LIVE_BYTES",
    "MAX_AWARENESS_BYTES",
    "Op",
    "AwarenessMessage",
    "LiveMessage",
    "Message",
    "decode_message",
    "encode_message",
]

#: Major version of both contents (a reader refuses others).
VERSION: Final = 1
#: Largest Yjs update sent live; a larger batch travels by the timeline alone.
#: (Synapse refuses a to-device request body above its ``max_request_size``; its
#: content must stay well under the 64 KiB a client may assume.)
MAX_LIVE_BYTES: Final = 32 * 1024
#: Largest awareness update (y-protocols encoding) in one message.
MAX_AWARENESS_BYTES: Final = 32 * 1024
_MAX_NAME_BYTES: Final = 255
_MAX_ID_CHARS: Final = 255

Op: TypeAlias = Literal["hello", "here", "update", "bye"]


class _Base(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    v: int = VERSION
    #: The room whose document this is about.
    room_id: str
    #: The document's name (the state_key of its ``org.mxsync.doc``).
    doc: str
    #: The sending device (to-device events name the sender's user only).
    device_id: str
    #: Sender's clock, milliseconds since the epoch (a hint: stale announcements
    #: queued for an offline device are not taken as presence).
    ts: int = 0

    def __post_init__(self) -> None:
        if self.v != VERSION:
            raise ProtocolError(f"unsupported version {self.v}")
        if not self.room_id.startswith("!") or len(self.room_id) > _MAX_ID_CHARS:
            raise ProtocolError("not a room id")
        try:
            name = self.doc.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError("document name is not valid Unicode") from None
        if not 1 <= len(name) <= _MAX_NAME_BYTES:
            raise ProtocolError("document name must be 1..255 bytes")
        if not self.device_id or len(self.device_id) > _MAX_ID_CHARS:
            raise ProtocolError("no device id")


class AwarenessMessage(_Base, frozen=True, kw_only=True, omit_defaults=True):
    """Content of ``org.mxsync.doc.awareness``."""

    op: Op
    #: A y-protocols awareness update (``encodeAwarenessUpdate``); may be empty
    #: for ``hello`` from a replica without states.
    awareness: bytes = b""

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.awareness) > MAX_AWARENESS_BYTES:
            raise ProtocolError("awareness update too large")
        if not self.awareness and self.op in ("update", "bye"):
            raise ProtocolError(f"{self.op} without awareness states")


class LiveMessage(_Base, frozen=True, kw_only=True, omit_defaults=True):
    """Content of ``org.mxsync.doc.live``."""

    #: A Yjs v1 update: one local batch.
    update: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.update:
            raise ProtocolError("empty update")
        if len(self.update) > MAX_LIVE_BYTES:
            raise ProtocolError("live update too large")


Message: TypeAlias = AwarenessMessage | LiveMessage

_TYPES: Final[dict[str, type[AwarenessMessage] | type[LiveMessage]]] = {
    DOC_AWARENESS: AwarenessMessage, DOC_LIVE: LiveMessage,
}


def decode_message(event_type: str, content: object) -> Message:
    """The value object of one received to-device content (invariant 1)."""
    cls = _TYPES.get(event_type)
    if cls is None:
        raise ProtocolError(f"not a document to-device type: {event_type!r}")
    if not isinstance(content, dict):
        raise ProtocolError("content is not an object")
    try:
        return msgspec.convert(content, cls)
    except ProtocolError:
        raise
    except (msgspec.ValidationError, ValueError, TypeError) as exc:
        raise ProtocolError(str(exc)) from None


def encode_message(msg: Message) -> tuple[str, dict[str, object]]:
    """(to-device type, content) of ``msg``."""
    etype = DOC_AWARENESS if isinstance(msg, AwarenessMessage) else DOC_LIVE
    content = msgspec.to_builtins(msg)
    assert isinstance(content, dict)
    content["v"] = VERSION  # omit_defaults would drop it; readers require it
    return etype, content
