"""The Matrix-CRDT 0.2 wire format (docs/PROTOCOL.md, section 5), sans I/O.

Owns the two event types of Matrix-CRDT (npm ``matrix-crdt`` 0.2.0, the Yjs
provider over Matrix), their contents in both directions, and the rules its
reader and writer follow, as read in its source (``dist/matrix-crdt.js``:
``MatrixCRDTEventTranslator``, ``MatrixReader``, ``ThrottledMatrixWriter``):

- ``matrix-crdt.doc_update`` ``{"update": base64}``: one Yjs v1 update (its
  writer merges what was typed in 500 ms with ``Y.mergeUpdates``);
- ``matrix-crdt.doc_snapshot`` ``{"update": base64, "last_event_id": id}``: the
  whole document (``Y.encodeStateAsUpdate``), holding every update up to and
  including the event ``last_event_id``;
- no state events, no document names: one document per room;
- a client posts a snapshot when an update event it receives live is the 30th
  (``snapshotInterval``) since the last snapshot it saw and is its own
  (:class:`SnapshotCounter`);
- a reader opening the room pages ``/messages`` backwards, keeps every update
  and snapshot until it meets the update whose id is the ``last_event_id`` of
  the snapshot it saw last (going back), and applies what it kept
  (:class:`BackwardCollector`).

Base64 is Node's ``Buffer`` base64 (standard alphabet, padded); Matrix-CRDT's
reader accepts unpadded too, so this decoder does as well.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Final

from ..errors import ProtocolError

__all__ = [
    "MCRDT_SNAPSHOT",
    "MCRDT_TYPES",
    "MCRDT_UPDATE",
    "SNAPSHOT_INTERVAL",
    "BackwardCollector",
    "McrdtSnapshot",
    "McrdtUpdate",
    "SnapshotCounter",
    "decode",
    "encode_snapshot",
    "encode_update",
]

MCRDT_UPDATE: Final = "matrix-crdt.doc_update"
MCRDT_SNAPSHOT: Final = "matrix-crdt.doc_snapshot"
MCRDT_TYPES: Final = (MCRDT_UPDATE, MCRDT_SNAPSHOT)
#: Matrix-CRDT's ``snapshotInterval``: updates between snapshots.
SNAPSHOT_INTERVAL: Final = 30


@dataclass(frozen=True)
class McrdtUpdate:
    update: bytes


@dataclass(frozen=True)
class McrdtSnapshot:
    state: bytes
    last_event_id: str


def _b64decode(value: object) -> bytes:
    if not isinstance(value, str) or not value:
        raise ProtocolError("update must be a non-empty base64 string")
    try:
        data = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("update is not base64") from None
    if not data:
        raise ProtocolError("update is empty")
    return data


def decode(event_type: str, content: object) -> McrdtUpdate | McrdtSnapshot:
    """Decode a Matrix-CRDT event; ProtocolError (only) if it is malformed."""
    if not isinstance(content, dict):
        raise ProtocolError("content is not an object")
    data = _b64decode(content.get("update"))
    if event_type == MCRDT_UPDATE:
        return McrdtUpdate(data)
    if event_type == MCRDT_SNAPSHOT:
        last = content.get("last_event_id")
        if not isinstance(last, str) or not last.startswith("$") or len(last) > 255:
            raise ProtocolError("snapshot without a valid last_event_id")
        return McrdtSnapshot(data, last)
    raise ProtocolError(f"not a Matrix-CRDT event type: {event_type!r:.80}")


def encode_update(update: bytes) -> dict[str, Any]:
    """Content of a ``matrix-crdt.doc_update`` event."""
    return {"update": base64.b64encode(update).decode("ascii")}


def encode_snapshot(state: bytes, last_event_id: str) -> dict[str, Any]:
    """Content of a ``matrix-crdt.doc_snapshot`` event."""
    return {"update": base64.b64encode(state).decode("ascii"), "last_event_id": last_event_id}


@dataclass
class SnapshotCounter:
    """When to post a snapshot, as Matrix-CRDT's reader decides it: count the
    update events received live; a snapshot resets the count; the client whose
    own update is the ``SNAPSHOT_INTERVAL``-th posts one (``last_event_id`` that
    update's id)."""

    user_id: str
    since: int = 0

    def see_update(self, sender: str) -> bool:
        """An update event arrived; True if this client should post a snapshot now."""
        self.since += 1
        return self.since % SNAPSHOT_INTERVAL == 0 and sender == self.user_id

    def see_snapshot(self) -> None:
        self.since = 0


@dataclass
class BackwardCollector:
    """The events a cold open applies, fed newest first (``/messages`` backwards).

    Keeps every update and snapshot until the update named by the
    ``last_event_id`` of the last snapshot met (that update and what is older
    are in the snapshot); ``done`` then. :meth:`forward` gives what was kept,
    oldest first. Malformed events are counted and left out.
    """

    kept: list[tuple[str, str, McrdtUpdate | McrdtSnapshot]] = field(default_factory=list)
    target: str | None = None
    done: bool = False
    skipped: int = 0
    #: Updates kept newer than the newest snapshot (the snapshot count to start from).
    since_snapshot: int = 0
    _snapshot_seen: bool = False

    def see(self, event_id: str, event_type: str, content: object) -> None:
        if self.done or event_type not in MCRDT_TYPES:
            return
        if event_type == MCRDT_UPDATE and self.target is not None and event_id == self.target:
            self.done = True
            return
        try:
            decoded = decode(event_type, content)
        except ProtocolError:
            self.skipped += 1
            return
        if isinstance(decoded, McrdtSnapshot):
            self.target = decoded.last_event_id
            self._snapshot_seen = True
        elif not self._snapshot_seen:
            self.since_snapshot += 1
        self.kept.append((event_id, event_type, decoded))

    def forward(self) -> list[tuple[str, str, McrdtUpdate | McrdtSnapshot]]:
        return self.kept[::-1]
