"""Awareness over Matrix: a document's ``pycrdt.Awareness`` kept in step with its peers.

It owns the binding of one ``pycrdt.Awareness`` (cursors, selections, who is
here; y-protocols) to the to-device channel: the client ids whose changes are
still to be sent (coalesced), the pace (at most ``rate`` sends a second), the
client ids this replica speaks for (its own, and those an app or gateway set
on this object), and the expiry task (``pycrdt.Awareness.start``: renews the
local state every ``timeout / 2``, drops remote states not renewed for
``timeout`` seconds, as y-protocols does).

Invariants:
- Awareness never enters the document: no transaction, no room event; it
  travels as ``org.mxsync.doc.awareness`` to-device messages only
  (:mod:`mxsync.protocol.live`).
- Changes with origin :data:`MATRIX` (applied from a peer) and removals by
  timeout are never sent on: every replica hears each peer itself and expires
  states on its own clock. Everything else on the object (the local state, a
  gateway's browser states) is sent.
- Changes within ``1 / rate`` seconds are sent as one message holding the
  latest states of every client id that changed.
- On close, the states this replica speaks for are sent once more as removed
  (``bye``), so peers drop them at once rather than after ``timeout``.
- A malformed awareness update from a peer is skipped and logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
import anyio.abc
import pycrdt

from ..protocol import live as wire
from .peers import Peers

__all__ = ["AwarenessSync", "MATRIX", "encode_states"]

log = logging.getLogger("mxsync.docs.awareness")

#: Origin of awareness changes applied from a Matrix peer.
MATRIX: Final = "mxsync.awareness.matrix"
_TIMEOUT_ORIGIN: Final = "timeout"


def encode_states(awareness: pycrdt.Awareness, client_ids: list[int], *,
                  removed: bool = False) -> bytes:
    """The y-protocols awareness update of ``client_ids`` (``removed``: as null states,
    at their current clock, which makes a receiver drop them)."""
    enc = pycrdt.Encoder()
    ids = [c for c in client_ids if c in awareness.meta]
    enc.write_var_uint(len(ids))
    for client_id in ids:
        state = None if removed else awareness.states.get(client_id)
        enc.write_var_uint(client_id)
        enc.write_var_uint(int(awareness.meta[client_id]["clock"]))
        enc.write_var_string(json.dumps(state, separators=(",", ":")))
    return enc.to_bytes()


class AwarenessSync:
    """Sends and applies one document's awareness over to-device (module docstring)."""

    def __init__(self, awareness: pycrdt.Awareness, peers: Peers, *, rate: float = 5.0) -> None:
        self.awareness = awareness
        self.peers = peers
        self.interval = 1.0 / rate
        self._dirty: set[int] = set()
        #: Client ids whose states this replica sends (local, or set by an app/gateway).
        self.own: set[int] = {awareness.client_id}
        self._wake = anyio.Event()
        self._sub = awareness.observe(self._on_change)
        self.sent = 0
        self.applied = 0
        self.skipped = 0

    def close(self) -> None:
        self.awareness.unobserve(self._sub)

    def _on_change(self, topic: str, change: tuple[dict[str, Any], Any]) -> None:
        if topic != "update":
            return
        what, origin = change
        if origin in (MATRIX, _TIMEOUT_ORIGIN):
            return
        ids = [*what.get("added", ()), *what.get("updated", ()), *what.get("removed", ())]
        if not ids:
            return
        self.own.update(ids)
        self._dirty.update(ids)
        self._wake.set()

    # -- tasks ------------------------------------------------------------------------

    async def run(self, tg: anyio.abc.TaskGroup,
                  before_hello: Callable[[], Awaitable[None]] | None = None) -> None:
        """Announce (once ``before_hello`` returned), then send changes at the pace,
        for as long as the document is open."""
        await tg.start(self.awareness.start)
        tg.start_soon(self._announce, before_hello)
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            ids, self._dirty = sorted(self._dirty), set()
            if ids:
                states = encode_states(self.awareness, ids)
                if len(states) <= wire.MAX_AWARENESS_BYTES:
                    await self.peers.send(self.peers.awareness_message("update", states))
                    self.sent += 1
                else:
                    log.warning("awareness states of %d clients too large to send", len(ids))
            await anyio.sleep(self.interval)

    async def _announce(self, before: Callable[[], Awaitable[None]] | None = None) -> None:
        if before is not None:
            await before()
        states = encode_states(self.awareness, sorted(self.own))
        await self.peers.announce(self.peers.awareness_message("hello", states))

    async def bye(self) -> None:
        """Tell the peers this replica's states are gone (bounded, on close)."""
        ids = sorted(c for c in self.own if c in self.awareness.meta)
        if not ids or not self.peers.devices():
            return
        states = encode_states(self.awareness, ids, removed=True)
        await self.peers.send(self.peers.awareness_message("bye", states))

    # -- receiving ------------------------------------------------------------------------

    async def receive(self, sender: str, msg: wire.AwarenessMessage) -> None:
        """Apply a peer's states; answer a ``hello`` with ours."""
        if msg.op == "bye":
            self.peers.gone(sender, msg.device_id)
        else:
            self.peers.heard(sender, msg.device_id, msg.ts)
        if msg.awareness:
            try:
                self.awareness.apply_awareness_update(msg.awareness, MATRIX)
                self.applied += 1
            except Exception as exc:  # y-protocols decoding of a peer's bytes
                self.skipped += 1
                log.warning("skipping an awareness update from %s/%s: %s", sender,
                            msg.device_id, exc)
        if msg.op == "hello":
            states = encode_states(self.awareness, sorted(self.own))
            await self.peers.send(self.peers.awareness_message("here", states),
                                  to=[(sender, msg.device_id)])
