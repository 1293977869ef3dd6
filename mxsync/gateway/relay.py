"""DocRelay: the y-websocket protocol between one document and its WebSocket peers.

Owns the set of peers of one document and what each may do; owns no socket
(the server hands it each binary frame and drains each peer's queue). The
message encoding is pycrdt's (``pycrdt._sync``: the y-protocols sync and
awareness messages that y-websocket speaks), not a copy of it.

Invariants:

1. Every transaction of the document (a peer's update, a remote update from
   Matrix, a local Python edit) is queued to every peer as one sync update.
2. A read-only peer's sync step 2 and updates are never applied (counted in
   ``refused``); it still gets the answer to its step 1 and every update.
3. A peer's awareness updates are applied to the document's ``Awareness`` with
   the peer as origin; every awareness change, whatever its origin, is queued
   to every peer. The client ids a peer announced are removed when it leaves
   (as the y-websocket server does), so the others see it go at once.
4. The relay never waits for a peer: each has a bounded queue, and a peer whose
   queue is full is marked ``dropped`` and gets nothing more (the server
   closes it; its provider reconnects and resyncs by state vector).
5. A frame that does not decode as a y-websocket message raises
   :class:`~mxsync.errors.ProtocolError` and changes nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

import anyio
import pycrdt
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pycrdt._sync import (
    Decoder,
    YMessageType,
    YSyncMessageType,
    create_sync_step2_message,
    create_update_message,
)

from ..errors import ProtocolError

__all__ = ["MESSAGE_AUTH", "MESSAGE_QUERY_AWARENESS", "DocRelay", "Peer"]

log = logging.getLogger("mxsync.gateway")

#: y-websocket's other message types (y-websocket/src/y-websocket.js).
MESSAGE_AUTH: Final = 2
MESSAGE_QUERY_AWARENESS: Final = 3
_EMPTY_UPDATE: Final = b"\x00\x00"


class Peer:
    """One WebSocket client of a document: its rights and its outgoing queue."""

    def __init__(self, label: str, *, read_only: bool, queue: int = 512) -> None:
        self.label = label
        self.read_only = read_only
        self._send: MemoryObjectSendStream[bytes]
        self.outgoing: MemoryObjectReceiveStream[bytes]
        self._send, self.outgoing = anyio.create_memory_object_stream[bytes](queue)
        #: Awareness client ids this peer announced (removed when it leaves).
        self.client_ids: set[int] = set()
        #: Updates refused because the peer is read-only.
        self.refused = 0
        #: Set when the queue overflowed: the peer must be closed.
        self.dropped = False

    def __repr__(self) -> str:
        return f"<Peer {self.label}{' read-only' if self.read_only else ''}>"

    def push(self, message: bytes) -> None:
        if self.dropped:
            return
        try:
            self._send.send_nowait(message)
        except anyio.WouldBlock:
            self.dropped = True
            self._send.close()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.dropped = True

    def close(self) -> None:
        self._send.close()


def _read_payload(dec: Decoder) -> bytes:
    payload = dec.read_message()
    if payload is None or dec.length != 0:
        raise ProtocolError("truncated or trailing bytes in a y-websocket message")
    return payload


def _awareness_entries(update: bytes) -> list[tuple[int, bool]]:
    """(client id, has a state) of each entry of an awareness update; checks it decodes."""
    dec = Decoder(update)
    entries = []
    for _ in range(dec.read_var_uint()):
        client_id = dec.read_var_uint()
        dec.read_var_uint()  # clock
        text = dec.read_var_string()
        state = json.loads(text) if text else None
        if state is not None and not isinstance(state, dict):
            raise ProtocolError("an awareness state is a JSON object or null")
        entries.append((client_id, state is not None))
    if dec.length != 0:
        raise ProtocolError("trailing bytes in an awareness update")
    return entries


class DocRelay:
    """Relays one ``pycrdt.Doc`` and its ``Awareness`` to y-websocket peers.

    ``with DocRelay(doc, awareness) as relay``: observes both while open;
    :meth:`join`, :meth:`receive` and :meth:`leave` for each peer.
    """

    def __init__(self, doc: pycrdt.Doc[Any], awareness: pycrdt.Awareness) -> None:
        self.doc = doc
        self.awareness = awareness
        self.peers: set[Peer] = set()
        self._doc_sub: pycrdt.Subscription | None = None
        self._aw_sub: str | None = None
        #: Messages received, and of them the updates applied.
        self.received = 0
        self.applied = 0

    def __enter__(self) -> DocRelay:
        self._doc_sub = self.doc.observe(self._on_transaction)
        self._aw_sub = self.awareness.observe(self._on_awareness)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._doc_sub is not None:
            self.doc.unobserve(self._doc_sub)
            self._doc_sub = None
        if self._aw_sub is not None:
            self.awareness.unobserve(self._aw_sub)
            self._aw_sub = None
        for peer in list(self.peers):
            peer.close()
        self.peers.clear()

    # -- peers -------------------------------------------------------------------

    def join(self, peer: Peer) -> None:
        """Add ``peer``: queue our sync step 1 and the awareness states known now."""
        self.peers.add(peer)
        peer.push(pycrdt.create_sync_message(self.doc))
        if self.awareness.states:
            peer.push(self._awareness_message(list(self.awareness.states)))

    def leave(self, peer: Peer) -> None:
        """Remove ``peer`` and the awareness states it announced."""
        self.peers.discard(peer)
        peer.close()
        if peer.client_ids:
            gone = [c for c in peer.client_ids if c != self.awareness.client_id]
            self.awareness.remove_awareness_states(gone, peer)

    def receive(self, peer: Peer, message: bytes) -> None:
        """Handle one binary frame of ``peer``; raises ProtocolError if it is not one."""
        self.received += 1
        try:
            self._receive(peer, message)
        except ProtocolError:
            raise
        except Exception as exc:  # decoding errors of pycrdt's readers and of yrs
            raise ProtocolError(f"undecodable y-websocket message: {exc!r}") from exc
        except BaseException as exc:
            # yrs panics surface as pyo3's PanicException, a BaseException.
            if type(exc).__name__ == "PanicException":
                raise ProtocolError(f"undecodable y-websocket message: {exc!r}") from exc
            raise

    def _receive(self, peer: Peer, message: bytes) -> None:
        dec = Decoder(message)
        kind = dec.read_var_uint()
        if kind == YMessageType.SYNC:
            step = dec.read_var_uint()
            payload = _read_payload(dec)
            if step == YSyncMessageType.SYNC_STEP1:
                peer.push(create_sync_step2_message(self.doc.get_update(payload)))
            elif step in (YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE):
                if peer.read_only:
                    if payload != _EMPTY_UPDATE:
                        peer.refused += 1
                        if peer.refused == 1:
                            log.info("%r: refusing updates of a read-only connection", peer)
                    return
                if payload != _EMPTY_UPDATE:
                    # No origin: for the SyncedDoc this is a local edit, to send to Matrix.
                    self.doc.apply_update(payload)
                    self.applied += 1
            else:
                raise ProtocolError(f"unknown sync message type {step}")
        elif kind == YMessageType.AWARENESS:
            update = _read_payload(dec)
            for client_id, present in _awareness_entries(update):
                if present:
                    peer.client_ids.add(client_id)
                else:
                    peer.client_ids.discard(client_id)
            self.awareness.apply_awareness_update(update, peer)
        elif kind == MESSAGE_QUERY_AWARENESS:
            peer.push(self._awareness_message(list(self.awareness.states)))
        elif kind == MESSAGE_AUTH:
            pass  # the server's to send (permission denied); a client's is ignored
        else:
            raise ProtocolError(f"unknown y-websocket message type {kind}")

    # -- broadcasts ------------------------------------------------------------------

    def _awareness_message(self, client_ids: list[int]) -> bytes:
        return pycrdt.create_awareness_message(
            self.awareness.encode_awareness_update(client_ids))

    def _broadcast(self, message: bytes) -> None:
        for peer in list(self.peers):
            peer.push(message)

    def _on_transaction(self, event: pycrdt.TransactionEvent) -> None:
        update = event.update
        if update and update != _EMPTY_UPDATE:
            self._broadcast(create_update_message(update))

    def _on_awareness(self, topic: str, change: tuple[dict[str, Any], Any]) -> None:
        if topic != "update" or not self.peers:
            return
        changes, _origin = change
        ids = changes["added"] + changes["updated"] + changes["removed"]
        if ids:
            self._broadcast(self._awareness_message(ids))
