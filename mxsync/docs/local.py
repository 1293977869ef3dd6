"""Local changes: what this device changed in the document and has not yet stored or sent.

It owns the transaction observer's bookkeeping: the edit counter, the Yjs
client ids whose structs count as local (this device's, and any an app applied
locally), the runs of state vectors of local transactions not yet folded into
them, the clocks already sent and already stored, and the delete sets of local
transactions not yet sent / not yet stored. From these it computes a batch:
the diff of the local structs since a set of clocks plus the local deletions
(:meth:`LocalChanges.diff`).

Invariant 3 (numbering of :mod:`mxsync.docs`): a batch holds only this
device's structs (its Yjs client ids) and the deletions made by local
transactions since the previous batch; remote content is never sent back.
(After a restart that left deletions unsent, the first batch carries the
document's whole delete set: correct, only larger.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pycrdt

from ..protocol import docs as proto
from ..protocol.yjs import DeleteSet, encode_state_vector
from .replica import REMOTE

__all__ = ["LocalChanges"]

log = logging.getLogger("mxsync.docs")


class LocalChanges:
    """Local change tracking of one document (see the module docstring)."""

    def __init__(self, doc: pycrdt.Doc[Any], on_edit: Callable[[], None]) -> None:
        self.doc = doc
        self._on_edit = on_edit
        self.clients: set[int] = {doc.client_id}
        #: (state vector before, after) of runs of local transactions not yet
        #: folded into clients.
        self._runs: list[tuple[bytes, bytes]] = []
        self.sent: dict[int, int] = {}
        self._persisted: dict[int, int] = {}
        self._ds_unsent = DeleteSet()
        self._ds_unpersisted = DeleteSet()
        self.full_ds = False
        #: Local transactions since open (restored unsent edits count as one).
        self.edit_seq = 0
        self.edits = 0
        self.first_unpersisted: float | None = None

    def restore(self, doc: pycrdt.Doc[Any], clients: list[int], sent: dict[int, int],
                *, unsent_ds: bool) -> bool:
        """Take the cached state; True if it holds edits that never reached the outbox."""
        self.doc = doc
        self.clients = {doc.client_id, *clients}
        self.sent = dict(sent)
        sv = proto.decode_state_vector(doc.get_state())
        self._persisted = {c: sv[c] for c in self.clients if c in sv}
        unsent = any(sv.get(c, 0) > self.sent.get(c, 0) for c in self.clients)
        if unsent or unsent_ds:
            self.edit_seq = 1
            self.full_ds = unsent_ds
            return True
        return False

    @property
    def unsent_ds(self) -> bool:
        """Local deletions may be stored but not yet in the outbox."""
        return self.full_ds or bool(self._ds_unsent)

    def on_transaction(self, event: Any) -> None:
        # ``event`` is a pycrdt.TransactionEvent; its stub lacks the attributes used
        # here (transaction, delete_set, before_state, after_state).
        if event.transaction.origin() == hash(REMOTE):
            return
        self.edit_seq += 1
        self.edits += 1
        if self.first_unpersisted is None:
            self.first_unpersisted = time.monotonic()
        ds = event.delete_set
        if ds != b"\x00":
            self._ds_unsent.add(ds)
            self._ds_unpersisted.add(ds)
        before, after = event.before_state, event.after_state
        if before != after:
            # Usually only our own client id grows; an app may also apply updates
            # from elsewhere locally, and those must be sent as well. Which clients
            # grew is worked out per batch (_absorb_runs), not per edit:
            # decoding two state vectors on every keystroke cost ~10% of the CPU.
            # Consecutive local transactions form one run (before == last after).
            runs = self._runs
            if runs and runs[-1][1] == before:
                runs[-1] = (runs[-1][0], after)
            else:
                runs.append((before, after))
        self._on_edit()

    def _absorb_runs(self) -> None:
        """Add the clients whose clocks local transactions advanced to clients."""
        for before_sv, after_sv in self._runs:
            before = proto.decode_state_vector(before_sv)
            after = proto.decode_state_vector(after_sv)
            self.clients.update(c for c, k in after.items() if before.get(c) != k)
        self._runs.clear()

    def local_clients(self) -> list[int]:
        self._absorb_runs()
        return sorted(self.clients)

    def take_batch(self) -> bytes | None:
        """The changes not yet sent, now marked sent and stored (None: nothing new)."""
        update, clocks = self.diff(self.sent, self._ds_unsent, full_ds=self.full_ds)
        self.sent = dict(clocks)
        self._persisted = dict(clocks)
        self._ds_unsent.clear()
        self._ds_unpersisted.clear()
        self.full_ds = False
        return update

    def take_log(self) -> bytes | None:
        """The changes not yet stored, now marked stored (still unsent)."""
        blob, clocks = self.diff(self._persisted, self._ds_unpersisted, full_ds=False)
        self._persisted = dict(clocks)
        self._ds_unpersisted.clear()
        return blob

    def diff(
        self, since: dict[int, int], ds: DeleteSet, *, full_ds: bool
    ) -> tuple[bytes | None, dict[int, int]]:
        """This device's changes since ``since`` as one Yjs v1 update, and the new clocks."""
        self._absorb_runs()
        sv_bytes = self.doc.get_state()
        sv = proto.decode_state_vector(sv_bytes)
        clocks = {c: sv[c] for c in self.clients if c in sv}
        baseline = dict(sv)
        fresh = False
        for c, clock in clocks.items():
            done = since.get(c, 0)
            fresh = fresh or clock > done
            if done:
                baseline[c] = done
            else:
                del baseline[c]
        if not fresh and not ds and not full_ds:
            return None, clocks
        full = self.doc.get_update(encode_state_vector(baseline))
        if full_ds:
            return full, clocks
        # get_update(sv) ends with the document's whole delete set, which is what
        # get_update(current sv) holds after its empty struct section (b"\x00").
        # Swap it for the deletions made locally since `since`.
        tail = self.doc.get_update(sv_bytes)
        if tail[:1] != b"\x00" or not full.endswith(tail[1:]):
            log.debug("unexpected update layout; sending the whole delete set")
            return full, clocks
        return full[: len(full) - len(tail) + 1] + ds.encode(), clocks
