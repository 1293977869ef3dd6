"""The live channel: local update batches sent at once to the peers, over to-device.

Under Synapse's default ``rc_message`` (0.2 events/s) a timeline batch may wait
seconds for its slot; to-device messages are not held to it. This module owns
the updates of local transactions not yet sent live (one observer of the
document, separate from :mod:`mxsync.docs.local`, which feeds the timeline),
the one live send in flight, and applying the live updates peers send.

Invariants:
- The timeline stays the durable record: a live update is sent *besides* the
  timeline batch that carries the same changes, never instead of it. Losing
  every live message changes nothing but latency.
- A local change is sent live only once it is stored (the writer's ``persist``):
  this device's Yjs client id and clocks are reused after a crash (invariant 7
  of :mod:`mxsync.docs`), so a struct a peer has seen must never be lost
  locally, or its clock would be issued again with other content.
- The timeline batch that carries a change waits for the live send of that
  change (:meth:`LiveUpdates.pending_send`, the outbox's bounded ``hold``):
  one homeserver handles the to-device first, and the isolated edit's latency
  is that of the to-device alone (docs/benchmarks.md). Every live batch taken
  resolves its event, sent or not, so nothing waits past the bound.
- Local transactions are sent as soon as the previous live send returned;
  those made meanwhile go together as one merged update (coalescing, at most
  one send in flight per document). Nothing is sent when there are no peers,
  above ``Peers.max_devices`` peers, in an encrypted room (``Peers.allowed``),
  for a read-only document, or for an update above
  :data:`~mxsync.protocol.live.MAX_LIVE_BYTES`. Without peers no update is even
  encoded; the unsent updates held never exceed ``_MAX_PENDING_BYTES`` (beyond,
  that batch goes by the timeline alone).
- Received updates are applied only once the document's initial load is done
  (before, the load's snapshot and history judge the state by its state
  vector; what arrived live earlier comes again by the timeline).
- A received update is applied only if its sender is a joined member whose
  power level allows ``org.mxsync.doc.update`` now; it is applied with origin
  :data:`~mxsync.docs.replica.REMOTE`, so it is never sent back and never
  counted as a local edit; applying it again (its timeline event) is a no-op
  (Yjs updates are idempotent). Anything that fails the scratch check
  (``validate_update``) or that pycrdt refuses is skipped and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
import pycrdt

from ..errors import ProtocolError
from ..protocol import docs as proto
from ..protocol import live as wire
from ..protocol.types import DOC_UPDATE
from .peers import Peers
from .replica import REMOTE, Replica, is_panic

__all__ = ["LiveUpdates"]

log = logging.getLogger("mxsync.docs.live")

#: Bytes of unsent transaction updates beyond which a batch is not merged nor sent
#: live (a paste, or a burst while a send hangs): the memory this module holds.
_MAX_PENDING_BYTES: Final = 4 * wire.MAX_LIVE_BYTES


class LiveUpdates:
    """One document's live channel (see the module docstring)."""

    def __init__(self, replica: Replica, peers: Peers, *, send: bool = True,
                 persist: Callable[[], Awaitable[None]] | None = None,
                 ready: Callable[[], bool] = lambda: True) -> None:
        self.replica = replica
        self.peers = peers
        self.may_send = send
        self._persist = persist
        self._ready = ready
        self.early = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._wake = anyio.Event()
        #: Set once the batch now pending, and the one being sent, have been sent
        #: live (or given up).
        self._pending_done: anyio.Event | None = None
        self._sending_done: anyio.Event | None = None
        self._sub: pycrdt.Subscription | None = None
        self._stopped = False  # the writer stopped: the document is closing
        self.sent = 0
        self.bytes_sent = 0
        self.not_sent = 0
        self.applied = 0
        self.skipped = 0

    # -- local side -------------------------------------------------------------

    def observe(self) -> None:
        self._sub = self.replica.doc.observe(self._on_transaction)

    def close(self) -> None:
        if self._sub is not None:
            self.replica.doc.unobserve(self._sub)
            self._sub = None

    def _on_transaction(self, event: Any) -> None:
        if (not self.may_send or not self.peers.any()
                or event.transaction.origin() == hash(REMOTE)):
            return  # no peers: not even the update is encoded
        if self._pending_bytes > _MAX_PENDING_BYTES:
            return  # this batch is past sending live; the timeline carries it
        update = event.update
        if update and update != b"\x00\x00":  # an empty update: no structs, no deletions
            self._pending.append(update)
            self._pending_bytes += len(update)
            if self._pending_done is None:
                self._pending_done = anyio.Event()
            self._wake.set()

    def pending_send(self) -> anyio.Event | None:
        """What the writer holds its timeline batch behind: set once the live send
        in progress returned, or else the one of the changes not yet taken (sent or
        given up); None when there is neither."""
        return self._sending_done or self._pending_done

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            batch, self._pending = self._pending, []
            size, self._pending_bytes = self._pending_bytes, 0
            done, self._pending_done = self._pending_done, None
            self._sending_done = done
            try:
                await self._send_batch(batch, size)
            finally:
                self._sending_done = None
                if done is not None:
                    done.set()
            if self._stopped:
                return

    async def _send_batch(self, batch: list[bytes], size: int) -> None:
        if not batch:
            return
        targets = self.peers.live_targets()
        if not targets or size > _MAX_PENDING_BYTES:
            self.not_sent += 1  # not worth merging: the timeline carries it
            return
        update = batch[0] if len(batch) == 1 else pycrdt.merge_updates(*batch)
        if len(update) > wire.MAX_LIVE_BYTES:
            self.not_sent += 1
            return
        if self._persist is not None:
            try:
                await self._persist()  # stored before any peer sees it
            except RuntimeError:
                self._stopped = True
                return
        if await self.peers.send(self.peers.live_message(update), to=targets):
            self.sent += 1
            self.bytes_sent += len(update)

    # -- remote side -------------------------------------------------------------------

    async def receive(self, sender: str, msg: wire.LiveMessage) -> None:
        self.peers.heard(sender, msg.device_id, msg.ts)
        if not self._ready():
            self.early += 1
            return
        if not self.replica.allows(sender, DOC_UPDATE):
            self.skipped += 1
            log.warning("%r: a live update from %s, who may not send updates: skipped",
                        self.replica.name, sender)
            return
        try:
            proto.validate_update(msg.update)  # the scratch check (PROTOCOL 2, "Validating")
        except ProtocolError as exc:
            self.skipped += 1
            log.warning("%r: skipping a live update from %s: %s", self.replica.name, sender, exc)
            return
        doc = self.replica.doc
        try:
            with doc.transaction(origin=REMOTE):
                doc.apply_update(msg.update)
        except Exception as exc:
            self.skipped += 1
            log.warning("%r: skipping a live update from %s: %s", self.replica.name, sender, exc)
            return
        except BaseException as exc:
            if not is_panic(exc):
                raise
            self.skipped += 1
            log.warning("%r: a live update from %s made pycrdt panic: %s", self.replica.name,
                        sender, exc)
            return
        self.applied += 1
